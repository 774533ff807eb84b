"""Few-shot: the default command on k training utterances per intent, beside SetFit on the same samples.

    python bench/fewshot.py --data ../shared/data/massive/en-US.jsonl --per-intent 8 --samples 0,1,2 [--setfit] [--slots]

Each sample draws k training utterances per intent from MASSIVE's train partition (seeded; an intent with fewer
keeps them all) and keeps the full validation and test partitions: a small data set like any other. On it runs
`main.py --task baseline --label intent --data SAMPLE` with no other flag (the settings it chooses are recorded),
and with --setfit SetFit (PyPI `setfit`) on the bundled encoder's body with its paper's setting: 20 pairs per
utterance, 1 epoch, batch 16, a logistic-regression head. Both report test intent accuracy (ours: the checkpoint,
the best validation epoch) and wall time; with --slots the default command is `--slots` too (joint intent and slots, no SetFit: it has no
slots) and reports slot F1 and exact match. Results go to results/bench/fewshot-k<k>[-slots].json.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402


def sample(rows, per_intent, seed):
    """The rows with k training rows per intent drawn by seed (all of a smaller intent), every dev and test row."""
    rng = random.Random(seed)
    by_intent = {}
    for r in rows:
        if r["partition"] == "train":
            by_intent.setdefault(r["intent"], []).append(r)
    kept = [r for intent in sorted(by_intent) for r in rng.sample(by_intent[intent], min(per_intent,
                                                                                          len(by_intent[intent])))]
    return kept + [r for r in rows if r["partition"] != "train"]


def ours(path, folder, slots=False):
    """{test numbers of the default command's checkpoint (intent accuracy; with slots slot F1 and exact match),
    seconds, the settings it chose}."""
    t = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--label", "intent", *(["--slots"] if slots else []),
                    "--data", path,
                    "--out-dir", os.path.join(folder, "results"), "--checkpoint-dir", os.path.join(folder, "ckpt"),
                    "--cache-dir", os.path.join(folder, "cache")], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    (name,) = os.listdir(os.path.join(folder, "results"))
    with open(os.path.join(folder, "results", name)) as f:
        r = json.load(f)
    out = {"ours_accuracy": r["best_test_accuracy"], "ours_seconds": seconds, "ours_settings": r.get("settings_chosen")}
    if slots:
        out.update(ours_slot_f1=r["best_test_slot_f1"], ours_exact_match=r["best_test_exact_match"])
    return out


def setfit(rows, threads):
    """(test intent accuracy of SetFit on the bundled body, seconds of its training)."""
    import torch
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from model import resolve_model

    torch.set_num_threads(threads)
    split = {p: [r for r in rows if r["partition"] == p] for p in ("train", "test")}
    model = SetFitModel.from_pretrained(resolve_model(None))
    data = Dataset.from_dict({"text": [r["utt"] for r in split["train"]], "label": [r["intent"] for r in split["train"]]})
    trainer = Trainer(model=model, train_dataset=data,
                      args=TrainingArguments(batch_size=16, num_epochs=1, num_iterations=20, seed=0))
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    predicted = model.predict([r["utt"] for r in split["test"]])
    return sum(p == r["intent"] for p, r in zip(predicted, split["test"])) / len(split["test"]), seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MASSIVE release file (en-US.jsonl)")
    p.add_argument("--per-intent", type=int, default=8)
    p.add_argument("--samples", default="0,1,2", help="the samples' seeds")
    p.add_argument("--setfit", action="store_true", help="SetFit beside ours on each sample (pip install setfit)")
    p.add_argument("--slots", action="store_true", help="ours with --slots: slot F1 and exact match too")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="SetFit's torch threads")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = args.out or os.path.join(ROOT, "results", "bench",
                                   f"fewshot-k{args.per_intent}{'-slots' if args.slots else ''}.json")
    report = {"cpu": cpu_model(), "per_intent": args.per_intent, "slots": args.slots, "threads": args.threads,
              "samples": []}
    for seed in map(int, args.samples.split(",")):
        kept = sample(rows, args.per_intent, seed)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"massive-k{args.per_intent}-s{seed}.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            row = {"sample": seed, "train": sum(r["partition"] == "train" for r in kept)}
            row.update(ours(path, folder, args.slots))
            if args.setfit:
                row["setfit_accuracy"], row["setfit_seconds"] = setfit(kept, args.threads)
        report["samples"].append(row)
        print(json.dumps(row), flush=True)
        write_json(out, report)  # after every sample: a long bench keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
