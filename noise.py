"""Text as users type it: the perturbations behind --augment and the robustness test sets.

MASSIVE utterances are lower case, without punctuation and with single spaces.
Users type capitals, punctuation, stray spaces, filler words and typos. Each
kind is one function of (text, rng), rng a random.Random or the random module.
"""
import random
import string

FILLERS_BEFORE = ("hey", "please", "um", "ok so", "hey there")
FILLERS_AFTER = ("please", "thanks", "thank you", "now")
QUESTION_WORDS = ("what", "whats", "what's", "when", "where", "who", "how", "why", "which", "is", "are", "do", "does",
                  "can", "could", "will", "would", "should", "did")


def upper(text, rng):
    return text.upper()


def sentence(text, rng):
    """Sentence case with final punctuation: '?' after a question word, else '.'."""
    text = text.strip()
    if not text:
        return text
    words = text.split()
    end = "?" if words[0].lower() in QUESTION_WORDS else "."
    return text[0].upper() + text[1:] + ("" if text[-1] in ".?!" else end)


def spaces(text, rng):
    """Two to four spaces between some words, and a space before or after."""
    words = text.split()
    out = words[:1]
    for w in words[1:]:
        out.append(" " * (rng.randint(2, 4) if rng.random() < 0.5 else 1) + w)
    return rng.choice(("", " ")) + "".join(out) + rng.choice(("", " ", "  "))


def filler(text, rng):
    if rng.random() < 0.5:
        return f"{rng.choice(FILLERS_BEFORE)} {text}"
    return f"{text} {rng.choice(FILLERS_AFTER)}"


def typo(text, rng):
    """One misspelled word (of 3+ letters): two letters swapped, one dropped, doubled or replaced."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 3 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(len(w) - 1)
    edit = rng.choice(("swap", "drop", "double", "replace"))
    if edit == "swap":
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif edit == "drop":
        w = w[:j] + w[j + 1:]
    elif edit == "double":
        w = w[:j] + w[j] + w[j:]
    else:
        w = w[:j] + rng.choice([c for c in string.ascii_lowercase if c != w[j]]) + w[j + 1:]
    words[i] = w
    return " ".join(words)


KINDS = {"upper": upper, "sentence": sentence, "spaces": spaces, "filler": filler, "typo": typo}


def perturb(text, kind=None, rng=random):
    """text changed by one kind of noise (a random kind when None)."""
    kind = kind or rng.choice(tuple(KINDS))
    return KINDS[kind](text, rng)


def perturb_slots(text, names, kind=None, rng=random):
    """(text changed as perturb changes it, the slot name of each of its words): every word keeps its slot,
    a misspelled one too, and the words a filler adds are Other."""
    noisy = perturb(text, kind, rng)
    added = ["Other"] * (len(noisy.split()) - len(names))  # only a filler adds words, before or after
    return noisy, (added + list(names) if added and noisy.endswith(text) else list(names) + added)


def perturbed_copies(texts, seed=0, slots=None):
    """{kind: the texts with that kind of noise}, the same for the same seed. With slots (each text's word slot
    names): {kind: (the texts, their word slot names)}, the names following the words as perturb_slots keeps them,
    and the texts the same as without."""
    copies = {}
    for kind in KINDS:
        rng = random.Random(f"{seed}-{kind}")
        if slots is None:
            copies[kind] = [perturb(t, kind, rng) for t in texts]
        else:
            pairs = [perturb_slots(t, names, kind, rng) for t, names in zip(texts, slots)]
            copies[kind] = ([t for t, _ in pairs], [names for _, names in pairs])
    return copies
