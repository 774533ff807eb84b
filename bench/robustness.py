"""How much test accuracy a checkpoint loses on text as users type it (noise.py's kinds of perturbation).

    python bench/robustness.py --data ../shared/data/massive/en-US.jsonl checkpoints/<run name> ...

For each checkpoint: accuracy on the clean test split and on one perturbed copy
per kind (upper case, sentence case with final punctuation, extra spaces,
filler words, one misspelled word), the copies the same for every checkpoint,
and the share of test predictions each kind changes; for a joint checkpoint
also slot F1 and exact match (the word slot names follow the noise: a
misspelled word keeps its slot, an added filler word is Other). --spelling measures
the checkpoints with spelling correction (spelling.py, the words of the
file's training split), as `predict --spelling` and `serve --spelling` run.
Writes robustness-<run name>[-spelling].json per checkpoint into --out-dir (results/bench),
then robustness.md there: the drop per kind in points, mean ± std over the
seeds of each experiment, over every robustness file there.
"""
import argparse
import glob
import json
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from arguments import BACKENDS  # noqa: E402
from data import read_rows  # noqa: E402
from inference import Predictor  # noqa: E402
from noise import KINDS, perturbed_copies  # noqa: E402
from metrics import score  # noqa: E402
from spelling import Speller, whole_words  # noqa: E402
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402

SEED = 0  # of the perturbed copies


def measure(checkpoint, data, backend, out_dir, spelling=False):
    predictor = Predictor(checkpoint, backend)
    joint = predictor.slots is not None
    rows = read_rows(data)
    if spelling:  # the words a checkpoint trained on this file saves, so older checkpoints can be measured too
        predictor.speller = Speller.from_texts([r.text for r in rows["train"]], whole_words(predictor.tokenizer))
    texts, names = [r.text for r in rows["test"]], [r.words for r in rows["test"]]
    gold = np.array([predictor.labels.index(r.labels[predictor.meta["config"]["label"]]) for r in rows["test"]])
    copies = {"clean": (texts, names), **perturbed_copies(texts, SEED, names)} if joint else \
        {kind: (copy, None) for kind, copy in {"clean": list(texts), **perturbed_copies(texts, SEED)}.items()}
    accuracy, changed, slot_f1, exact_match, clean = {}, {}, {}, {}, None
    for kind, (copy, gold_names) in copies.items():
        logits, predicted_names = predictor.outputs(copy, slots=joint)
        pred = logits.argmax(1)
        clean = pred if clean is None else clean
        accuracy[kind], changed[kind] = float(np.mean(pred == gold)), float(np.mean(pred != clean))
        if joint:
            metrics = score(pred, gold, len(predictor.labels), (gold_names, [n for n, _ in predicted_names]),
                            predictor.slot_scheme)
            slot_f1[kind], exact_match[kind] = metrics["slot_f1"], metrics["exact_match"]
    suffix = "-spelling" if spelling else ""
    print(f"{predictor.name}{suffix}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracy.items()))
    # the torch backend runs bf16 weights where the CPU does bf16 natively, which moves the clean numbers a little
    precision = "int8" if backend == "onnx-int8" else "bf16" if getattr(predictor, "bf16", False) else "fp32"
    result = {"run": predictor.name, "backend": backend, "precision": precision, "cpu": cpu_model(),
              "spelling": spelling, "perturbation_seed": SEED,
              "test_accuracy": accuracy,
              "drop_points": {k: 100 * (accuracy["clean"] - accuracy[k]) for k in KINDS},
              "predictions_changed": {k: changed[k] for k in KINDS}}
    if joint:
        print(f"{predictor.name}{suffix}: exact match " + ", ".join(f"{k} {100 * v:.2f}" for k, v in exact_match.items()))
        result.update({"test_slot_f1": slot_f1, "test_exact_match": exact_match,
                       "slot_f1_drop_points": {k: 100 * (slot_f1["clean"] - slot_f1[k]) for k in KINDS},
                       "exact_match_drop_points": {k: 100 * (exact_match["clean"] - exact_match[k]) for k in KINDS}})
    write_json(os.path.join(out_dir, f"robustness-{predictor.name}{suffix}.json"), result)


def cell(values):
    """mean ± std over seeds, as a table cell."""
    return f"{np.mean(values):.2f}" + (f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else "")


def table(out_dir):
    """Markdown: per experiment (runs that differ by seed), the clean accuracy and the drop per kind; for joint
    checkpoints a second table of exact match and slot F1."""
    groups = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "robustness-*.json"))):
        with open(path) as f:
            r = json.load(f)
        name = re.sub(r"-s\d+$", "", r["run"]) + (" + --spelling" if r.get("spelling") else "")
        groups.setdefault(name, []).append(r)
    lines = ["| experiment | seeds | clean accuracy | " + " | ".join(f"drop: {k}" for k in KINDS) + " |",
             "|---|---|---|" + "---|" * len(KINDS)]
    for name, rs in groups.items():
        clean = cell([100 * r["test_accuracy"]["clean"] for r in rs])
        drops = [cell([r["drop_points"][k] for r in rs]) for k in KINDS]
        lines.append(f"| {name} | {len(rs)} | {clean}% | " + " | ".join(drops) + " |")
    joint = {name: rs for name, rs in groups.items() if "test_exact_match" in rs[0]}
    if joint:
        lines += ["", "Joint checkpoints: exact match / slot F1 on the clean test split, and the drop per kind in "
                  "points.", "", "| experiment | seeds | clean | " + " | ".join(f"drop: {k}" for k in KINDS) + " |",
                  "|---|---|---|" + "---|" * len(KINDS)]
    for name, rs in joint.items():
        clean = " / ".join(cell([100 * r[f"test_{f}"]["clean"] for r in rs]) for f in ("exact_match", "slot_f1"))
        drops = [" / ".join(cell([r[f"{f}_drop_points"][k] for r in rs]) for f in ("exact_match", "slot_f1"))
                 for k in KINDS]
        lines.append(f"| {name} | {len(rs)} | {clean} | " + " | ".join(drops) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", help="checkpoint folders to measure (none: only rebuild the table)")
    p.add_argument("--data", required=True, help="MASSIVE release file")
    p.add_argument("--backend", default="torch", choices=tuple(BACKENDS))
    p.add_argument("--spelling", action="store_true", help="with spelling correction, as predict/serve --spelling")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "results", "bench"))
    args = p.parse_args(argv)
    for checkpoint in args.checkpoints:
        measure(checkpoint, args.data, args.backend, args.out_dir, args.spelling)
    md = table(args.out_dir)
    with open(os.path.join(args.out_dir, "robustness.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
