"""A simulated labelling loop: `--task suggest` against random picks, on MASSIVE, round by round.

    python bench/loop.py --data ../shared/data/massive/en-US.jsonl --seeds 0,1,2 [--slots] [--continued] [--workers 2]

Each seed starts from k training utterances per intent (bench/fewshot.py's sample); the rest of the train
partition is the pool, its labels hidden. Every round adds --per-round utterances from the pool, picked by
`main.py --task suggest` on the last round's checkpoint or at random (seeded), gives them their gold labels, and
trains anew with the default command (`main.py --label intent --data ROUND` and --slots if asked); the full
validation and test partitions stay as they are. Round 0 is shared by both strategies of a seed. With
--continued, the last round of the suggest chain is trained once more with `--init-from` the round before (the
time to equal validation accuracy is read from the two runs' histories).

Runs live under --work (checkpoints/loop by default) and are reused when their results exist, so a loop cut short
continues. Chains run --workers at a time, each on one thread. Every run's test numbers and the picked utterances'
MASSIVE ids go to results/bench/loop-<label>.json, written after each run.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fewshot import sample  # noqa: E402
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402

STRATEGIES = ("random", "suggest")


def cli(args, log):
    """main.py with args on one thread; its output appended to log."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "a") as f:
        subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], check=True, cwd=ROOT, env=env,
                       stdout=f, stderr=subprocess.STDOUT)


def train(folder, rows, flags, init_from=None):
    """The results of the default command on rows (trained unless folder already holds them), and its checkpoint."""
    os.makedirs(folder, exist_ok=True)
    results = os.path.join(folder, "results")
    if not (os.path.isdir(results) and os.listdir(results)):
        path = os.path.join(folder, "data.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        t = time.perf_counter()
        cli(["--data", path, *flags, *(["--init-from", init_from] if init_from else []), "--out-dir", results,
             "--checkpoint-dir", os.path.join(folder, "ckpt"), "--cache-dir", os.path.join(folder, "cache")],
            os.path.join(folder, "log.txt"))
        with open(os.path.join(folder, "seconds.json"), "w") as f:
            json.dump(time.perf_counter() - t, f)
    (name,) = os.listdir(results)
    with open(os.path.join(results, name)) as f:
        r = json.load(f)
    with open(os.path.join(folder, "seconds.json")) as f:
        r["wall_seconds"] = json.load(f)
    return r, os.path.join(folder, "ckpt", name[:-len(".json")])


def picks(folder, strategy, pool, rows, checkpoint, count, seed):
    """The MASSIVE ids of count pool rows, chosen by strategy (kept in folder/picks.json once chosen)."""
    saved = os.path.join(folder, "picks.json")
    if os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    if strategy == "random":
        chosen = [r["id"] for r in random.Random(seed).sample(pool, count)]
    else:
        texts, data = os.path.join(folder, "pool.txt"), os.path.join(folder, "labelled.jsonl")
        with open(texts, "w", encoding="utf-8") as f:
            f.writelines(r["utt"] + "\n" for r in pool)
        with open(data, "w", encoding="utf-8") as f:  # what suggest leaves out as already labelled
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        cli(["--task", "suggest", "--checkpoint", checkpoint, "--input", texts, "--data", data, "--count",
             str(count), "--out-dir", folder], os.path.join(folder, "log.txt"))
        (report,) = [n for n in os.listdir(folder) if n.startswith("suggest-") and n.endswith(".json")]
        with open(os.path.join(folder, report)) as f:
            wanted = [c["text"] for c in json.load(f)["chosen"]]
        by_text = {}
        for r in pool:
            by_text.setdefault(r["utt"], r["id"])
        chosen = [by_text[t] for t in wanted]
    with open(saved, "w") as f:
        json.dump(chosen, f)
    return chosen


def curve(r):
    """Each epoch's training seconds and the validation numbers that pick the best epoch (exact match with slots)."""
    return [{k: h[k] for k in ("epoch", "seconds", "val_accuracy", "val_exact_match") if k in h} for h in r["history"]]


def scores(r):
    """The best epoch's validation and test numbers of a run's results."""
    out = {"test_accuracy": r["best_test_accuracy"], "val_accuracy": r["best_val_accuracy"]}
    if r.get("best_test_slot_f1") is not None:
        out.update(test_slot_f1=r["best_test_slot_f1"], test_exact_match=r["best_test_exact_match"],
                   val_exact_match=r["best_val_exact_match"])
    return out


def entry(r, seed, strategy, k, labelled, picked):
    return {"seed": seed, "strategy": strategy, "round": k, "labelled": labelled, "run_name": r["run_name"],
            **scores(r), "best_epoch": r["best_epoch"], "wall_seconds": r["wall_seconds"], "history": curve(r),
            "picked": picked}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MASSIVE release file (en-US.jsonl)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--per-intent", type=int, default=8)
    p.add_argument("--per-round", type=int, default=240)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--slots", action="store_true", help="joint intent and slots (--slots)")
    p.add_argument("--continued", action="store_true", help="the suggest chain's last round with --init-from too")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--main-flags", default="", help="more main.py flags for every run, e.g. \"--model DIR\"")
    p.add_argument("--work", default=os.path.join(ROOT, "checkpoints", "loop"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    label = "joint" if args.slots else "intent"
    flags = ["--label", "intent"] + (["--slots"] if args.slots else []) + args.main_flags.split()
    out = args.out or os.path.join(ROOT, "results", "bench", f"loop-{label}.json")
    work = os.path.join(args.work, label)
    report = {"kind": "labelling_loop", "cpu": cpu_model(), "threads_per_run": 1, "workers": args.workers, "per_intent": args.per_intent,
              "per_round": args.per_round, "label": label, "runs": [], "continued": []}
    lock = threading.Lock()

    def record(key, item):
        with lock:
            report[key].append(item)
            report[key].sort(key=lambda e: (e["seed"], e["strategy"], e.get("round", 0)))
            write_json(out, report)
            print(json.dumps({k: v for k, v in item.items() if k not in ("picked", "history")}), flush=True)

    by_id = {r["id"]: r for r in rows}
    starts = {seed: sample(rows, args.per_intent, seed) for seed in map(int, args.seeds.split(","))}

    def first(seed):
        r, ckpt = train(os.path.join(work, f"s{seed}", "r0"), starts[seed], flags)
        for strategy in STRATEGIES:
            record("runs", entry(r, seed, strategy, 0, sum(x["partition"] == "train" for x in starts[seed]), []))
        return ckpt

    def chain(seed, strategy, start):
        ckpt, labelled = start.result(), starts[seed]
        held = {r["id"] for r in labelled}
        for k in range(1, args.rounds + 1):
            folder = os.path.join(work, f"s{seed}", strategy, f"r{k}")
            pool = [r for r in rows if r["partition"] == "train" and r["id"] not in held]
            picked = picks(folder, strategy, pool, labelled, ckpt, args.per_round, seed * 1000 + k)
            held |= set(picked)
            labelled = labelled + [by_id[i] for i in picked]
            before = ckpt
            r, ckpt = train(folder, labelled, flags)
            n = sum(x["partition"] == "train" for x in labelled)
            record("runs", entry(r, seed, strategy, k, n, picked))
        if args.continued and strategy == "suggest":
            r, _ = train(os.path.join(work, f"s{seed}", strategy, f"r{args.rounds}-continued"), labelled, flags,
                         init_from=before)
            record("continued", {"seed": seed, "strategy": strategy, "round": args.rounds, "init_from_round":
                                 args.rounds - 1, "run_name": r["run_name"], **scores(r), "best_epoch": r["best_epoch"],
                                 "wall_seconds": r["wall_seconds"], "history": curve(r)})

    with ThreadPoolExecutor(args.workers) as pool:
        starts_done = {seed: pool.submit(first, seed) for seed in starts}
        jobs = [pool.submit(chain, seed, s, starts_done[seed]) for seed in starts for s in STRATEGIES]
        for j in jobs:
            j.result()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
