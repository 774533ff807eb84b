"""How much an ensemble of trained checkpoints gains on validation: the ceiling distillation can aim at.

    python bench/ensemble.py --data ../shared/data/massive/en-US.jsonl checkpoints/<run name> ...

Each checkpoint's validation accuracy, then the accuracy of their mean
probability, which is what `--teachers` distils into one student. A student
rarely beats its teachers' ensemble, so an ensemble no better than its members
says distillation is not worth its cost. Validation only: this is a selection
step, and the test split stays untouched. Writes ensemble-<label>.json into
--out-dir (results/bench).

--scenario scores every checkpoint on scenario, an intent checkpoint by summing
its intents' probabilities per scenario, so that intent and scenario models
compare (and ensemble) on one footing; it writes
ensemble-scenario-with-intent.json.
"""
import argparse
import os
import sys

import numpy as np
from scipy.special import softmax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import build_labels, read_rows  # noqa: E402
from fileio import UserError  # noqa: E402
from inference import Predictor  # noqa: E402
from recipe import coarse_probabilities, scenario_of_intents  # noqa: E402
from fileio import write_json  # noqa: E402


def training_pairs(rows):
    """(intent, scenario) of every training utterance."""
    return [(r.labels["intent"], r.labels["scenario"]) for r in rows["train"]]


def measure(checkpoints, data, scenario=False):
    """{member run name: validation accuracy} and the mean-probability ensemble's accuracy."""
    members, probs, labels, label, rows = {}, [], None, None, read_rows(data)
    for checkpoint in checkpoints:
        predictor = Predictor(checkpoint)
        own = predictor.meta["config"]["label"]
        if labels is None:
            label = "scenario" if scenario else own
            labels = (build_labels({s: [r.labels["scenario"] for r in rs] for s, rs in rows.items()}) if scenario
                      else predictor.labels)
            texts, gold = [r.text for r in rows["validation"]], [r.labels[label] for r in rows["validation"]]
            gold = np.array([labels.index(y) for y in gold])
        member = softmax(predictor.logits(list(texts)), axis=1)
        if scenario and own == "intent":
            member = coarse_probabilities(member, scenario_of_intents(training_pairs(rows), predictor.labels, labels),
                                          len(labels))
        elif predictor.labels != labels:
            raise UserError(f"{checkpoint} was trained on other labels than {checkpoints[0]}"
                            + ("" if scenario else " (--scenario compares intent and scenario models)"))
        probs.append(member)
        members[predictor.name] = float(np.mean(member.argmax(1) == gold))
        print(f"{predictor.name}: validation {label} {members[predictor.name]:.4f}")
    ensemble = float(np.mean(np.mean(probs, axis=0).argmax(1) == gold))
    return label, members, ensemble


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoint folders of one label")
    p.add_argument("--data", required=True, help="MASSIVE release file")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "results", "bench"))
    p.add_argument("--scenario", action="store_true", help="score on scenario, intent models by their summed intents")
    args = p.parse_args(argv)
    try:
        if len(args.checkpoints) < 2:
            raise UserError("an ensemble needs two or more checkpoints")
        label, members, ensemble = measure(args.checkpoints, args.data, args.scenario)
    except UserError as e:
        sys.exit(f"error: {e}")
    best, mean = max(members.values()), float(np.mean(list(members.values())))
    print(f"ensemble of {len(members)}: validation {ensemble:.4f} "
          f"(members: mean {mean:.4f}, best {best:.4f}; gain over the mean {100 * (ensemble - mean):+.2f} points)")
    name = "scenario-with-intent" if args.scenario else label  # keeps the plain scenario ensemble's file
    write_json(os.path.join(args.out_dir, f"ensemble-{name}.json"),
               {"label": label, "split": "validation", "members": members, "member_mean": mean,
                "member_best": best, "ensemble": ensemble})


if __name__ == "__main__":
    main()
