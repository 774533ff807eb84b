"""One scorer: a model's predictions against gold, by the definitions training reports, `--task evaluate` prints
and the export gate judges.

Intent accuracy and macro-F1 over the model's labels; with slots, MASSIVE's
slot metrics computed with seqeval, the library that defines them: word labels
become BIO (slots.to_bio), slot F1 is seqeval's micro F1 in its default mode,
and an utterance is an exact match when its intent is right and its whole BIO
sequence equals the gold one. Per-label and per-slot precision, recall and F1
come from the same counts, in one pass each.
"""
import collections

import numpy as np

from slots import to_bio


def macro_f1(preds, labels, n_classes):
    """Unweighted mean F1 over the classes 0..n_classes-1 present in labels or preds."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    f1s = []
    for c in range(n_classes):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def prf(tp, predicted, gold):
    """Precision, recall and F1 from true positives and the predicted and gold counts."""
    p, r = tp / predicted if predicted else 0.0, tp / gold if gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": gold}


def per_label(preds, gold, names):
    """{name: precision, recall, F1 and support} of every label that gold or the predictions hold."""
    tp = collections.Counter(g for g, p in zip(gold, preds) if g == p)
    g, p = collections.Counter(gold), collections.Counter(preds)
    return {names[n]: prf(tp[n], p[n], g[n]) for n in sorted(set(gold) | set(preds), key=lambda n: names[n])}


def score(preds, gold, n_classes, words=None, scheme="names", names=None):
    """The scores of predicted label ids against gold ones, both (N,); a gold id outside 0..n_classes-1 is a label
    the model cannot predict, counted wrong.

    Returns accuracy and macro_f1. words: (gold, predicted) word labels per
    utterance in the slot scheme; adds slot_f1, exact_match, slot_f1_per_type
    ({type: f1, support}), and per utterance exact_match_correct and
    slot_predictions. names: the name of every id (the model's labels, then
    those only gold has): adds the reports per_label and, with words,
    per_slot ({name: precision, recall, f1, support}).
    """
    preds, gold = [int(p) for p in preds], [int(y) for y in gold]
    correct = [p == y for p, y in zip(preds, gold)]
    out = {"accuracy": sum(correct) / len(correct), "macro_f1": macro_f1(preds, gold, n_classes)}
    if names is not None:
        out["per_label"] = per_label(preds, gold, names)
    if words is None:
        return out
    from seqeval.metrics import classification_report, f1_score

    gold_words, predicted = words
    gold_bio, pred_bio = [to_bio(g, scheme) for g in gold_words], [to_bio(p, scheme) for p in predicted]
    report = classification_report(gold_bio, pred_bio, output_dict=True, zero_division=0)
    per_slot = {name: {"precision": float(r["precision"]), "recall": float(r["recall"]), "f1": float(r["f1-score"]),
                       "support": int(r["support"])} for name, r in report.items() if not name.endswith(" avg")}
    exact = [ok and g == p for ok, g, p in zip(correct, gold_bio, pred_bio)]
    out.update(slot_f1=float(f1_score(gold_bio, pred_bio)), exact_match=float(np.mean(exact)),
               slot_f1_per_type={n: {"f1": r["f1"], "support": r["support"]} for n, r in per_slot.items()},
               exact_match_correct=exact, slot_predictions=predicted)
    if names is not None:
        out["per_slot"] = per_slot
    return out
