import random

import pytest

import noise

TEXTS = ["wake me up at five am", "what is the weather like", "play some jazz", "hi"]


def test_each_kind_changes_text_as_documented():
    rng = random.Random(0)
    assert noise.upper("play some jazz", rng) == "PLAY SOME JAZZ"
    assert noise.sentence("what is the weather like", rng) == "What is the weather like?"
    assert noise.sentence("play some jazz", rng) == "Play some jazz."
    for _ in range(20):
        spaced = noise.spaces("wake me up at five am", rng)
        assert spaced.split() == "wake me up at five am".split()
        filled = noise.filler("play some jazz", rng)
        added = filled.replace("play some jazz", "").strip()
        assert filled != "play some jazz" and added in noise.FILLERS_BEFORE + noise.FILLERS_AFTER


def test_typo_misspells_exactly_one_long_word():
    rng = random.Random(1)
    for _ in range(50):
        out = noise.typo("wake me up at five am", rng).split(" ")
        changed = [(a, b) for a, b in zip("wake me up at five am".split(), out) if a != b]
        assert len(out) == 6 and len(changed) <= 1  # a swap of two equal letters changes nothing
        for a, b in changed:
            assert len(a) >= 3 and abs(len(a) - len(b)) <= 1
    assert noise.typo("hi at", rng) == "hi at"  # no word long enough to misspell


def test_perturbed_copies_are_reproducible():
    a, b = noise.perturbed_copies(TEXTS, seed=3), noise.perturbed_copies(TEXTS, seed=3)
    assert a == b and set(a) == set(noise.KINDS)
    assert all(len(v) == len(TEXTS) for v in a.values())
    assert a != noise.perturbed_copies(TEXTS, seed=4)


def test_perturbed_copies_with_slots_are_the_same_texts_with_their_names_aligned():
    names = [["Other"] * len(t.split()) for t in TEXTS]
    names[0][-1] = "time"
    with_slots = noise.perturbed_copies(TEXTS, seed=3, slots=names)
    for kind, texts in noise.perturbed_copies(TEXTS, seed=3).items():
        noisy, noisy_names = with_slots[kind]
        assert noisy == texts
        assert [len(t.split()) for t in noisy] == [len(n) for n in noisy_names]
        assert sum(n.count("time") for n in noisy_names) == 1  # the slot word stays, misspelled or not


@pytest.mark.parametrize("kind", list(noise.KINDS))
def test_empty_text_survives(kind):
    assert isinstance(noise.perturb("", kind, random.Random(0)), str)


@pytest.mark.parametrize("kind", sorted(noise.KINDS))
def test_slot_names_follow_the_words_of_every_kind(kind):
    text, names = "wake me at five am", ["Other", "Other", "Other", "time", "time"]
    rng = random.Random(2)
    for _ in range(20):
        noisy, noisy_names = noise.perturb_slots(text, names, kind, rng)
        words = noisy.split()
        assert len(noisy_names) == len(words)
        values = [w.lower().strip(".?") for w, n in zip(words, noisy_names) if n == "time"]
        assert len(values) == 2 and (kind == "typo" or values == ["five", "am"])
        assert all(n == "Other" for w, n in zip(words, noisy_names) if w.lower() in ("hey", "please", "thanks", "now"))


def test_perturb_slots_draws_as_perturb_does():
    names = ["Other"] * 5
    for seed in range(10):
        assert noise.perturb_slots(TEXTS[0], names, rng=random.Random(seed))[0] == \
            noise.perturb(TEXTS[0], rng=random.Random(seed))
