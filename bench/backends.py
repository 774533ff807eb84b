"""torch, ONNX fp32 and ONNX int8 side by side: throughput, single-utterance latency and test accuracy.

    python bench/backends.py --checkpoint checkpoints/<run name> --data ../shared/data/massive/en-US.jsonl

Needs `--task export` first. Throughput is the test split in batches of 128
(tokenization included, best of 2 passes after a warm-up pass); latency is the
median of 200 single-utterance calls. Writes results/bench/backends-<run name>.json
(or --out).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import read_rows  # noqa: E402
from arguments import BACKENDS  # noqa: E402
from inference import Predictor  # noqa: E402
from fileio import write_json  # noqa: E402
from utils import cpu_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="MASSIVE release file")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--single", type=int, default=200, help="single-utterance calls timed")
    p.add_argument("--out", default=None, help="results JSON (default: results/bench/backends-<run name>.json)")
    args = p.parse_args()
    rows, name = [], None
    for backend in BACKENDS:
        predictor = Predictor(args.checkpoint, backend, threads=args.threads)
        name = predictor.name
        test, label = read_rows(args.data)["test"], predictor.meta["config"]["label"]
        index = {y: i for i, y in enumerate(predictor.labels)}
        texts, gold = [r.text for r in test], np.array([index[r.labels[label]] for r in test])
        predictor.logits(texts)  # warm-up
        passes = []
        for _ in range(2):
            t = time.perf_counter()
            logits = predictor.logits(texts)
            passes.append(time.perf_counter() - t)
        single = []
        for i in range(args.single):
            t = time.perf_counter()
            predictor.logits([texts[i]])
            single.append(time.perf_counter() - t)
        weights = ("bf16" if next(predictor.model.parameters()).dtype == torch.bfloat16 else "fp32") \
            if backend == "torch" else backend
        rows.append({"backend": backend, "weights": weights, "utterances_per_second": len(texts) / min(passes),
                     "single_ms_median": 1000 * statistics.median(single),
                     "test_accuracy": float((logits.argmax(1) == gold).mean())})
        r = rows[-1]
        print(f"{backend:10s} ({weights}): {r['utterances_per_second']:7.0f} utterances/s, one utterance "
              f"{r['single_ms_median']:5.1f} ms, test accuracy {100 * r['test_accuracy']:.2f}%")
    out = args.out or os.path.join(ROOT, "results", "bench", f"backends-{name}.json")
    write_json(out, {"run": name, "cpu": cpu_model(), "threads": args.threads, "cpus": os.cpu_count(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
