"""Slot filling's conventions, as MASSIVE's official code fixes them: word slot names to BIO, the metrics
(with seqeval, the library that defines them), and word predictions to spans of the text as typed.

Words are `text.split()`; each has one slot name, "Other" outside spans.
Consecutive words with the same name form one span (MASSIVE's BIO
conversion), so "B-" starts a span where the name changes. Slot F1 is
seqeval's micro F1 in its default mode; an utterance is an exact match when
its intent is right and its whole BIO sequence equals the gold one.
"""
import numpy as np

OUTSIDE = "Other"


def to_bio(names):
    """["Other", "time", "time", "date"] -> ["O", "B-time", "I-time", "B-date"]."""
    out, previous = [], OUTSIDE
    for name in names:
        out.append("O" if name == OUTSIDE else ("I-" if name == previous else "B-") + name)
        previous = name
    return out


def word_predictions(token_preds, positions, names):
    """The predicted slot name of each word: the prediction at its first sub-token, "Other" where it has none.

    token_preds: (T,) slot ids of one utterance; positions: first_subtokens' positions (-1: none).
    """
    return [names[token_preds[p]] if p >= 0 else OUTSIDE for p in positions]


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


def spans(text, names, scores, word_offsets):
    """The predicted slots of one utterance as {"slot", "value", "start", "end", "score"}, with character offsets
    into text (text[start:end] == value) and the mean probability of the span's words.

    names, scores: per word of text.split(); word_offsets: their (start, end) in text.
    """
    out, i = [], 0
    while i < len(names):
        j = i
        while j + 1 < len(names) and names[j + 1] == names[i]:
            j += 1
        if names[i] != OUTSIDE:
            start, end = word_offsets[i][0], word_offsets[j][1]
            out.append({"slot": names[i], "value": text[start:end], "start": start, "end": end,
                        "score": round(float(np.mean(scores[i:j + 1])), 4)})
        i = j + 1
    return out
