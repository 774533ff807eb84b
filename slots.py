"""Slot filling's conventions, as MASSIVE's official code fixes them: word slot labels to BIO, the metrics
(with seqeval, the library that defines them), and word predictions to spans of the text as typed.

Words are `text.split()`; each has one label. MASSIVE's data labels a word
with its slot name, "Other" outside spans, and consecutive words with the same
name form one span (MASSIVE's BIO conversion), so "B-" starts a span where the
name changes. Data whose spans of one type can touch (ATIS) labels words with
BIO tags instead ("B-city", "I-city", "O"), which keep such spans apart; an
"I-" tag after "O" or after another type opens a span, as seqeval reads it.
Slot F1 is seqeval's micro F1 in its default mode; an utterance is an exact
match when its intent is right and its whole BIO sequence equals the gold one.
"""
import numpy as np

OUTSIDE = "Other"


def to_bio(labels):
    """Word labels as BIO: names ["Other", "time", "time", "date"] -> ["O", "B-time", "I-time", "B-date"]; BIO tags
    stay as they are ("Other", a word cut by truncation, becomes "O")."""
    if any(label == "O" or label.startswith(("B-", "I-")) for label in labels):
        return ["O" if label == OUTSIDE else label for label in labels]
    out, previous = [], OUTSIDE
    for name in labels:
        out.append("O" if name == OUTSIDE else ("I-" if name == previous else "B-") + name)
        previous = name
    return out


def viterbi(emissions, scores):
    """The best slot sequence (W,) of a linear-chain CRF: argmax_y s(x, y), s as in loss.crf_nll.

    emissions: (W, S) slot scores of each word; scores: (S + 2, S), rows start,
    transitions (S rows), end.
    """
    start, transitions, end = scores[0], scores[1:-1], scores[-1]
    if len(emissions) == 0:
        return np.zeros(0, dtype=np.int64)
    best, back = start + emissions[0], []
    for e in emissions[1:]:
        total = best[:, None] + transitions  # (S, S): the best path into slot j through slot i
        back.append(total.argmax(0))
        best = total.max(0) + e
    path = [int((best + end).argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return np.array(path[::-1])


def word_predictions(token_logits, positions, names, crf=None):
    """Each word's predicted slot name and its probability: read at the word's first sub-token, by argmax or, with
    a CRF, by Viterbi over the words; "Other" (probability 1) for a word without one (cut by truncation).

    token_logits: (T, S) slot scores of one utterance; positions: first_subtokens' positions (-1: none);
    crf: the CRF's (S + 2, S) scores or None. The probability is the softmax of the word's own scores at the
    chosen slot.
    """
    at = [p for p in positions if p >= 0]
    emissions = np.asarray(token_logits, dtype=np.float64)[at]  # (W, S), the words that kept a sub-token
    probs = np.exp(emissions - emissions.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ids = viterbi(emissions, crf) if crf is not None else probs.argmax(-1)
    chosen = iter(zip(ids, probs[np.arange(len(ids)), ids]))
    words = [next(chosen) if p >= 0 else None for p in positions]
    return ([names[w[0]] if w else OUTSIDE for w in words], [float(w[1]) if w else 1.0 for w in words])


def slot_metrics(gold, predicted, intent_correct):
    """Slot micro-F1, exact match and per-slot F1 of word slot names (lists of lists), and per utterance its
    exact-match correctness. A gold slot type the model cannot predict simply scores as missed."""
    from seqeval.metrics import classification_report, f1_score

    gold_bio, pred_bio = [to_bio(g) for g in gold], [to_bio(p) for p in predicted]
    exact = [bool(ok) and g == p for ok, g, p in zip(intent_correct, gold_bio, pred_bio)]
    report = classification_report(gold_bio, pred_bio, output_dict=True, zero_division=0)
    per_type = {name: {"f1": float(r["f1-score"]), "support": int(r["support"])} for name, r in report.items()
                if not name.endswith(" avg")}
    return {"slot_f1": float(f1_score(gold_bio, pred_bio)), "exact_match": float(np.mean(exact)),
            "slot_f1_per_type": per_type, "exact_match_correct": exact, "slot_predictions": predicted}


def spans(text, labels, scores, word_offsets):
    """The predicted slots of one utterance as {"slot", "value", "start", "end", "score"}, with character offsets
    into text (text[start:end] == value) and the mean probability of the span's words.

    labels, scores: per word of text.split() (names or BIO tags); word_offsets: their (start, end) in text.
    """
    out, tags, i = [], to_bio(labels), 0
    while i < len(tags):
        if tags[i] == "O":
            i += 1
            continue
        slot, j = tags[i][2:], i
        while j + 1 < len(tags) and tags[j + 1] == f"I-{slot}":
            j += 1
        start, end = word_offsets[i][0], word_offsets[j][1]
        out.append({"slot": slot, "value": text[start:end], "start": start, "end": end,
                    "score": round(float(np.mean(scores[i:j + 1])), 4)})
        i = j + 1
    return out
