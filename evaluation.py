"""`--task evaluate`: score a trained checkpoint on any labelled data, the counterpart of `rasa test nlu`.

    python main.py --task evaluate --checkpoint checkpoints/<run name> --data examples/assistant.yml --split test

The data is read in any format (readers.py). Data with splits is scored on
its test split (--split chooses another); data without splits on every
example, unless --split names one: then it is drawn as the checkpoint's
training drew it (data.scored_split), so the numbers equal those training
reported for its best checkpoint. The metrics are training's: intent accuracy
and macro-F1, and with a slot head seqeval's slot F1 and exact match; beside
them per-intent and per-slot precision, recall, F1 and support, and the most
frequent confusions. A label or slot type the model does not know is counted
wrong and listed. Writes evaluate-<run>-<data>-<split>.json under --out-dir,
which plots.py draws (a confusion matrix and per-slot F1), and beside it
errors.jsonl: every utterance it got wrong, with the gold and predicted
intent and spans.
"""
import collections
import json
import logging
import os

import numpy as np

from data import describe_data, scored_split, word_names, word_tags
from fileio import UserError, atomic_write, write_json
from inference import Predictor
from readers import data_name, word_offsets
from slots import slot_metrics, spans, to_bio
from utils import macro_f1

log = logging.getLogger("evaluate")
CONFUSIONS = 10  # the most frequent (gold, predicted) intent pairs reported


def prf(tp, predicted, gold):
    """Precision, recall and F1 from true positives and the predicted and gold counts."""
    p, r = tp / predicted if predicted else 0.0, tp / gold if gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": gold}


def per_intent(gold, pred):
    names = sorted(set(gold) | set(pred))
    tp = collections.Counter(g for g, p in zip(gold, pred) if g == p)
    g, p = collections.Counter(gold), collections.Counter(pred)
    return {n: prf(tp[n], p[n], g[n]) for n in names}


def per_slot(gold_bio, pred_bio):
    from seqeval.metrics import classification_report

    report = classification_report(gold_bio, pred_bio, output_dict=True, zero_division=0)
    return {name: {"precision": float(r["precision"]), "recall": float(r["recall"]), "f1": float(r["f1-score"]),
                   "support": int(r["support"])} for name, r in report.items() if not name.endswith(" avg")}


def gold_spans(x):
    return [{"slot": slot, "value": x.text[s:e], "start": s, "end": e} for s, e, slot in x.spans]


def evaluate(cfg):
    """--task evaluate: the numbers, printed and returned; the report and errors.jsonl written."""
    predictor = Predictor(cfg.checkpoint, base_model=cfg.model)
    trained = predictor.meta["config"]
    label = trained["label"]
    examples, split = scored_split(cfg.data, cfg.data_format, trained, cfg.split)
    missing = next((x for x in examples if label not in x.labels), None)
    if missing:
        raise UserError(f"{missing.where}: no '{label}' label, which {predictor.name} predicts")
    texts, gold = [x.text for x in examples], [x.labels[label] for x in examples]
    logits, words = predictor.outputs(texts, cfg.batch_size)
    pred = [predictor.labels[i] for i in logits.argmax(1)]
    index = {name: i for i, name in enumerate(predictor.labels)}
    unknown = sorted(set(gold) - set(index))
    right = [g == p for g, p in zip(gold, pred)]
    report = {"kind": "evaluation", "run_name": predictor.name, "data": describe_data(cfg.data), "split": split,
              "examples": len(examples), "intent_accuracy": float(np.mean(right)),
              "intent_macro_f1": macro_f1([index[p] for p in pred], [index.get(g, -1) for g in gold],
                                          len(predictor.labels)),
              "per_intent": per_intent(gold, pred), "unknown_labels": unknown,
              "confusions": [[g, p, n] for (g, p), n in collections.Counter(
                  (g, p) for g, p in zip(gold, pred) if g != p).most_common(CONFUSIONS)],
              # plots.py's confusion matrix: the model's labels, then those only the data has
              "labels": predictor.labels + unknown,
              "test_labels": [index[g] if g in index else len(index) + unknown.index(g) for g in gold],
              "test_predictions": [index[p] for p in pred]}
    exact = right
    if predictor.slots and words is not None:
        bio = any(name.startswith(("B-", "I-")) for name in predictor.slots)
        gold_words = [(word_tags if bio else word_names)(x.text, x.spans) for x in examples]
        predicted = [names for names, _ in words]
        m = slot_metrics(gold_words, predicted, right)
        exact = m["exact_match_correct"]
        known = {s.split("-", 1)[-1] for s in predictor.slots}
        report.update(slot_f1=m["slot_f1"], exact_match=m["exact_match"],
                      per_slot=per_slot([to_bio(g) for g in gold_words], [to_bio(p) for p in predicted]),
                      test_slot_f1_per_type=m["slot_f1_per_type"],
                      unknown_slot_types=sorted({s for x in examples for _, _, s in x.spans} - known))
    stem = os.path.join(cfg.out_dir, f"evaluate-{predictor.name}-{data_name(cfg.data) if cfg.data else 'massive'}-"
                                     f"{split}")
    errors = [{"text": x.text, "where": x.where, "gold_intent": g, "predicted_intent": p,
               "gold_slots": gold_spans(x),
               "predicted_slots": spans(x.text, *words[i], word_offsets(x.text)) if words else []}
              for i, (x, g, p, ok) in enumerate(zip(examples, gold, pred, exact)) if not ok]
    lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
    atomic_write(stem + "-errors.jsonl", lambda f: f.write(lines.encode()))
    write_json(stem + ".json", report)
    show(report, stem, len(errors))
    return report


def show(report, stem, n_errors):
    numbers = [f"intent accuracy {report['intent_accuracy']:.4f}", f"macro-F1 {report['intent_macro_f1']:.4f}"]
    if "slot_f1" in report:
        numbers += [f"slot F1 {report['slot_f1']:.4f}", f"exact match {report['exact_match']:.4f}"]
    print(f"{report['run_name']} on {report['data']['file']} ({report['split']}, {report['examples']} utterances): "
          + ", ".join(numbers))
    for kind in ("unknown_labels", "unknown_slot_types"):
        if report.get(kind):
            print(f"{kind.replace('_', ' ')} (counted wrong): {', '.join(report[kind])}")
    if report["confusions"]:
        print("most frequent confusions: " + "; ".join(f"{g} -> {p} ({n})" for g, p, n in report["confusions"]))
    print(f"wrote {stem}.json and {n_errors} wrong utterances to {stem}-errors.jsonl")
