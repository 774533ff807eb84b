"""`--task evaluate`: score a trained checkpoint on any labelled data, the counterpart of `rasa test nlu`.

    python main.py --task evaluate --checkpoint checkpoints/<run name> --data examples/assistant.yml --split test

The data is read in any format (readers.py). Data with splits is scored on
its test split (--split chooses another); data without splits on every
example, unless --split names one: then it is drawn as the checkpoint's
training drew it (data.scored_split), so the numbers equal those training
reported for its best checkpoint. The metrics are training's, from the same
scorer (metrics.score): intent accuracy and macro-F1, and with a slot head
seqeval's slot F1 and exact match; beside them per-intent and per-slot
precision, recall, F1 and support, and the most frequent confusions. A label
or slot type the model does not know is counted wrong and listed. Writes evaluate-<run>-<data>-<split>.json under --out-dir,
which plots.py draws (a confusion matrix and per-slot F1), and beside it
errors.jsonl: every utterance it got wrong, with the gold and predicted
intent and spans.
"""
import collections
import json
import logging
import os

from arguments import complete_config
from data import scored_split, word_labels
from fileio import UserError, atomic_write, write_json
from inference import Predictor
from metrics import score

log = logging.getLogger("evaluate")
CONFUSIONS = 10  # the most frequent (gold, predicted) intent pairs reported


def gold_spans(x):
    return [{"slot": slot, "value": x.text[s:e], "start": s, "end": e} for s, e, slot in x.spans]


def gold_of(predictor, examples):
    """(texts, gold label ids, the names of those ids, gold word labels or None) of examples for a checkpoint: a
    gold label the model does not know gets an id after the model's own; UserError when an example lacks the
    checkpoint's label column."""
    label = predictor.meta["config"]["label"]
    missing = next((x for x in examples if label not in x.labels), None)
    if missing:
        raise UserError(f"{missing.where}: no '{label}' label, which {predictor.name} predicts")
    gold = [x.labels[label] for x in examples]
    names = predictor.labels + sorted(set(gold) - set(predictor.labels))
    index = {name: i for i, name in enumerate(names)}
    words = [word_labels(x.text, x.spans, predictor.slot_scheme) for x in examples] if predictor.slots else None
    return [x.text for x in examples], [index[g] for g in gold], names, words


def evaluate(cfg):
    """--task evaluate: the numbers, printed and returned; the report and errors.jsonl written."""
    predictor = Predictor(cfg.checkpoint, base_model=cfg.model)
    examples, split = scored_split(cfg.source, complete_config(predictor.meta["config"]), cfg.split)
    texts, gold, names, gold_word_labels = gold_of(predictor, examples)
    logits, words = predictor.outputs(texts, cfg.batch_size)
    pred = logits.argmax(1).tolist()
    slots = words is not None and gold_word_labels is not None
    scores = score(pred, gold, len(predictor.labels), (gold_word_labels, [n for n, _ in words]) if slots else None,
                   predictor.slot_scheme, names)
    unknown = names[len(predictor.labels):]
    report = {"kind": "evaluation", "run_name": predictor.name, "data": cfg.source.record(), "split": split,
              "examples": len(examples), "intent_accuracy": scores["accuracy"], "intent_macro_f1": scores["macro_f1"],
              "per_intent": scores["per_label"], "unknown_labels": unknown,
              "confusions": [[names[g], names[p], n] for (g, p), n in collections.Counter(
                  (g, p) for g, p in zip(gold, pred) if g != p).most_common(CONFUSIONS)],
              # plots.py's confusion matrix: the model's labels, then those only the data has
              "labels": names, "gold_labels": gold, "predictions": pred}
    exact = [g == p for g, p in zip(gold, pred)]
    if slots:
        exact = scores["exact_match_correct"]
        known = {s[2:] if predictor.slot_scheme == "bio" else s for s in predictor.slots}
        report.update(slot_f1=scores["slot_f1"], exact_match=scores["exact_match"], per_slot=scores["per_slot"],
                      slot_f1_per_type=scores["slot_f1_per_type"],
                      unknown_slot_types=sorted({s for x in examples for _, _, s in x.spans} - known))
    stem = os.path.join(cfg.out_dir, f"evaluate-{predictor.name}-{cfg.source.data.name}-{split}")
    errors = [{"text": x.text, "where": x.where, "gold_intent": names[g], "predicted_intent": names[p],
               "gold_slots": gold_spans(x), "predicted_slots": predictor.spans(x.text, *words[i]) if words else []}
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
