"""Label errors on MASSIVE: planted intent flips found by `check --find-label-errors`'s confident learning, beside
cleanlab's on the same out-of-fold probabilities, and the top suspects of the real labels.

    python bench/labelerrors.py --data ../shared/data/massive/en-US.jsonl [--rate 0.05] [--flags "--epochs 2"]
    python bench/labelerrors.py --data ../shared/data/massive/en-US.jsonl --rate 0   # the real labels' suspects

A seeded 5% of MASSIVE's train intents are flipped: half to another intent of the same scenario (a plausible
confusion), half to any other intent. labelerrors.out_of_fold then trains FOLDS models on the flipped train
partition (each scores the fold it did not see; --flags are passed to every fold's run, since the study's 10 epochs
on 9,000 utterances take long), and both rankings are read at N = the number planted: precision and recall of the
planted flips in their top N. cleanlab (PyPI, AGPL-3.0, installed for this bench only) ranks by its
`find_label_issues` with the same filter. The examples ranked highest that were not flipped are the real labels'
suspects: the top 30 go to the report for a person's verdict; with --rate 0 nothing is flipped and the report holds
only the suspects, found by models that trained on the labels as released. Writes
results/bench/labelerrors[-rate0].json.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fileio import write_json  # noqa: E402
from labelerrors import FOLDS, label_issues, out_of_fold  # noqa: E402
from utils import cpu_model  # noqa: E402


def plant(rows, rate, seed=0):
    """{index: flipped intent} for a seeded `rate` of rows: half to another intent of the row's scenario, half to
    any other intent."""
    rng = random.Random(seed)
    scenario = {r["intent"]: r["scenario"] for r in rows}
    intents = sorted(scenario)
    chosen = rng.sample(range(len(rows)), round(rate * len(rows)))
    flips = {}
    for k, i in enumerate(chosen):
        own = rows[i]["intent"]
        near = [x for x in intents if scenario[x] == scenario[own] and x != own]
        pool = near if k % 2 == 0 and near else [x for x in intents if x != own]
        flips[i] = rng.choice(pool)
    return flips


def scored(ranked, flips, n):
    top = set(ranked[:n])
    found = len(top & set(flips))
    return {"precision": found / max(len(top), 1), "recall": found / len(flips), "listed": len(ranked)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MASSIVE release file (en-US.jsonl)")
    p.add_argument("--rate", type=float, default=0.05)
    p.add_argument("--flags", default="", help="main.py flags for every fold's run, e.g. \"--epochs 2\"")
    p.add_argument("--probs", default=None,
                   help="the out-of-fold probabilities: read where this file exists (the same flips), else trained "
                        "and written, so that rankings can be compared without training again (default: "
                        "checkpoints/labelerrors-probs-rate<rate>.npz)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.probs = args.probs or os.path.join(ROOT, "checkpoints", f"labelerrors-probs-rate{args.rate:g}.npz")
    args.out = args.out or os.path.join(ROOT, "results", "bench",
                                        f"labelerrors{'-rate0' if args.rate == 0 else ''}.json")
    with open(args.data, encoding="utf-8") as f:
        rows = [r for r in map(json.loads, filter(str.strip, f)) if r["partition"] == "train"]
    flips = plant(rows, args.rate)
    labels = [flips.get(i, r["intent"]) for i, r in enumerate(rows)]
    read = os.path.exists(args.probs)
    if read:
        saved = np.load(args.probs)
        names, probs = list(saved["names"]), saved["probs"]
        seconds = float(saved["seconds"]) if "seconds" in saved else None  # of the run that trained them
    else:
        t = time.perf_counter()
        names, probs = out_of_fold([r["utt"] for r in rows], labels, "intent", args.flags.split())
        seconds = time.perf_counter() - t
        os.makedirs(os.path.dirname(os.path.abspath(args.probs)), exist_ok=True)
        np.savez(args.probs, names=np.array(names), probs=probs, seconds=seconds)
    given = np.array([names.index(y) for y in labels])
    ours, likely = label_issues(probs, given)
    report = {"cpu": cpu_model(), "train": len(rows), "planted": len(flips), "folds": FOLDS, "flags": args.flags,
              "seconds": seconds, "probabilities_read_from_file": read,
              "listed": len(ours)}
    if flips:
        from cleanlab.filter import find_label_issues

        theirs = [int(i) for i in find_label_issues(given, probs, filter_by="confident_learning",
                                                    return_indices_ranked_by="self_confidence")]
        n = len(flips)
        scenario = {r["intent"]: r["scenario"] for r in rows}
        near = {i for i in flips if scenario[rows[i]["intent"]] == scenario[flips[i]]}
        report.update(planted_within_scenario=len(near), ours=scored(ours, flips, n),
                      cleanlab=scored(theirs, flips, n),
                      ours_within_scenario_recall=len(set(ours[:n]) & near) / max(len(near), 1),
                      ours_any_recall=len(set(ours[:n]) & (set(flips) - near)) / max(n - len(near), 1))
    report["suspects"] = [{"id": rows[i]["id"], "text": rows[i]["utt"], "given": rows[i]["intent"],
                            "suggested": names[j], "given_probability": float(probs[i, given[i]]),
                            "suggested_probability": float(probs[i, j])}
                          for i, j in zip(ours, likely) if i not in flips][:30]
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "suspects"}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
