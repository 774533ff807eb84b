"""Side-by-side speed benchmark: the study's way of training vs ours, lever by lever.

Times the same number of training steps on batches drawn at random from one
epoch of each configuration (so per-epoch time = mean step time x steps per
epoch), then an evaluation pass over the test split with tokenization included.
Reports tokens per second and the fraction of this machine's measured matmul
peak. Exits non-zero if any path fails.

    python bench/speed.py --data ../shared/data/massive/en-US.jsonl
"""
import argparse
import copy
import os
import platform
import random
import sys
import time

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from arguments import parse_args  # noqa: E402
from dataloader import Features, load_features, make_loader  # noqa: E402
from main import EVAL_BATCH, ce_step, classify, evaluate, train_epoch, use_bf16  # noqa: E402
from model import build_model, load_tokenizer  # noqa: E402
from utils import build_optimizer, build_param_groups, set_seed, setup_logging, write_json  # noqa: E402


def matmul_peak(dtype, n=2048, reps=10):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def train_flops_per_token(config):
    """Forward matmul FLOPs per token (2 per weight, plus attention over ~L keys), x3 for forward + backward."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 3 * layers * (2 * (4 * h * h + 2 * h * i))


def time_steps(cfg, batches, n_classes, bf16, fused):
    set_seed(cfg.seed)
    model = build_model(cfg.model, n_classes, cfg.dropout)
    groups = build_param_groups(model.named_parameters(), cfg.lr, cfg.weight_decay, 1.0,
                                model.encoder.config.num_hidden_layers)
    opt, sched = build_optimizer(groups, cfg.eps, fused, total_steps=10 * len(batches), warmup_ratio=0)
    device = torch.device("cpu")
    train_epoch(model, batches[:2], opt, sched, ce_step, cfg, device, bf16, "warm-up")
    t = time.perf_counter()
    train_epoch(model, batches, opt, sched, ce_step, cfg, device, bf16, "timed")
    seconds = (time.perf_counter() - t) / len(batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    padded = sum(b["input_ids"].numel() for b in batches) / len(batches)
    return seconds, real, padded, model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("MASSIVE_DATA"), help="MASSIVE release file")
    p.add_argument("--steps", type=int, default=40, help="timed steps per fast configuration")
    p.add_argument("--study-steps", type=int, default=10, help="timed steps for the study's way (slow)")
    p.add_argument("--out", default="results/bench/speed-cpu.json")
    args = p.parse_args()
    setup_logging()
    import logging
    logging.getLogger("utils").setLevel(logging.WARNING)  # param-group lines, once per configuration

    cfg = parse_args(["--task", "baseline", "--data", args.data] if args.data else ["--task", "baseline"])
    tok = load_tokenizer(cfg.model)
    labels, feats = load_features(cfg, tok)
    train = feats["train"]
    steps_per_epoch = (len(train["labels"]) + cfg.batch_size - 1) // cfg.batch_size
    rng = random.Random(0)

    def sample(loader, k):
        batches = list(loader)
        return [batches[i] for i in rng.sample(range(len(batches)), k)]

    data = Features(train)
    g = torch.Generator().manual_seed(0)
    random_dynamic = DataLoader(data, cfg.batch_size, shuffle=True, generator=g,
                                collate_fn=DataCollatorWithPadding(tok))
    study = make_loader(train, tok, cfg.batch_size, True, 0, fast=False, max_length=cfg.max_length)
    grouped = make_loader(train, tok, cfg.batch_size, True, 0, fast=True)
    bf16 = use_bf16(torch.device("cpu"))
    grouped_batches = sample(grouped, args.steps)
    configs = [  # (name, batches, bf16, fused AdamW)
        ("study: pad to 128, fp32, foreach AdamW", sample(study, args.study_steps), False, False),
        ("+ dynamic padding", sample(random_dynamic, args.steps), False, False),
        ("+ batches grouped by length", grouped_batches, False, False),
        ("+ bf16 autocast", grouped_batches, bf16, False),
        ("+ fused AdamW (our default)", grouped_batches, bf16, True),
    ]
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    model = build_model(cfg.model, len(labels), cfg.dropout)
    flops_tok = train_flops_per_token(model.encoder.config)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; bf16 autocast available: {bf16}")
    print(f"matmul peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s; "
          f"training FLOPs per token {flops_tok / 1e6:.1f} M")
    print(f"{'configuration':40s} {'s/step':>7s} {'s/epoch':>8s} {'speed-up':>8s} {'tok/s':>7s} {'% peak':>7s}")
    rows = []
    for name, batches, use16, fused in configs:
        sec, real, padded, model = time_steps(cfg, batches, len(labels), use16, fused)
        tok_s = real / sec
        peak = peak16 if use16 else peak32
        rows.append({"name": name, "seconds_per_step": sec, "seconds_per_epoch": sec * steps_per_epoch,
                     "real_tokens_per_step": real, "padded_tokens_per_step": padded, "tokens_per_second": tok_s,
                     "fraction_of_peak": tok_s * flops_tok / peak, "bf16": use16, "fused_adamw": fused})
        r = rows[-1]
        print(f"{name:40s} {sec:7.3f} {r['seconds_per_epoch']:8.1f} {rows[0]['seconds_per_step'] / sec:7.1f}x "
              f"{tok_s:7.0f} {100 * r['fraction_of_peak']:6.1f}%")

    model.eval()
    evals = {}
    # the study's way gets a slice of the test split: all of it would take minutes
    for name, fast, amp, bs, n in (("study", False, False, 16, 480), ("fast", True, bf16, EVAL_BATCH, None)):
        texts, gold = feats["test"]["texts"][:n], feats["test"]["labels"][:n]
        t = time.perf_counter()
        ids = tok(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        split = {"input_ids": ids, "labels": gold}
        m = evaluate(model, make_loader(split, tok, bs, False, fast=fast, max_length=cfg.max_length),
                     torch.device("cpu"), amp)
        sec = time.perf_counter() - t
        evals[name] = {"utterances_per_second": len(texts) / sec, "seconds": sec, "accuracy": m["accuracy"]}
        print(f"evaluation ({name}): {len(texts)} utterances in {sec:.2f}s = {len(texts) / sec:.0f} utterances/s "
              f"(tokenization included)")
    # inference as `main.py --task predict` runs it: raw text in, bf16 weights where the CPU has bf16
    infer = copy.deepcopy(model).to(torch.bfloat16 if bf16 else torch.float32)
    texts = feats["test"]["texts"]
    t = time.perf_counter()
    classify(infer, tok, texts, cfg.max_length, EVAL_BATCH, torch.device("cpu"))
    sec = time.perf_counter() - t
    evals["predict"] = {"utterances_per_second": len(texts) / sec, "seconds": sec}
    print(f"inference (predict path, {'bf16' if bf16 else 'fp32'} weights): {len(texts)} utterances in {sec:.2f}s = "
          f"{len(texts) / sec:.0f} utterances/s (tokenization included)")
    ratio = rows[0]["seconds_per_step"] / rows[-1]["seconds_per_step"]
    print(f"training speed-up, ours vs the study's way: {ratio:.1f}x; evaluation speed-up: "
          f"{evals['fast']['utterances_per_second'] / evals['study']['utterances_per_second']:.1f}x")
    write_json(args.out, {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "peak_flops": {"fp32": peak32, "bf16": peak16},
                          "train_flops_per_token": flops_tok, "steps_per_epoch": steps_per_epoch,
                          "training": rows, "evaluation": evals, "training_speedup": ratio})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a failed path must fail the benchmark, with the reason on one line
        sys.exit(f"benchmark failed: {type(e).__name__}: {e}")
