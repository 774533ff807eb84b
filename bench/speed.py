"""Side-by-side speed benchmark: the study's way of training vs ours, lever by lever.

Times training steps on batches spread evenly over the sizes of one epoch's
batches in each configuration (so per-epoch time = mean step time x steps per
epoch), each timing in a fresh process (what a process did before, e.g. how far
its heap has grown, changes its speed); then the study's way and ours back to
back in a few rounds, whose median ratio is the speed-up; then evaluation passes
over the test split with tokenization included.
Reports tokens per second and the fraction of this machine's measured matmul
peak. Exits non-zero if any path fails.

    python bench/speed.py --data ../shared/data/massive/en-US.jsonl
    python bench/speed.py --data ... --model bert-base-uncased --random-init   # bert-base shapes, no weights needed
    python bench/speed.py --data ... --slots   # also what the joint task's slot head costs per step
    python bench/speed.py --data ... --slots --crf   # ... with a CRF over the slot scores

Beyond the default path it times the levers that change the method or only
pay in some places: the word-embedding table frozen (--freeze-embeddings, the
recommended fast setting), a sparse gradient with lazy Adam moments on that
table instead, and torch.compile of the model (its compile time counted in the
warm-up column).
"""
import argparse
import logging
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModel, DataCollatorWithPadding

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from arguments import parse_args, recorded_config  # noqa: E402
from data import load_features, slot_labels  # noqa: E402
from dataloader import Features, make_loader, token_slot_labels  # noqa: E402
from inference import Predictor  # noqa: E402
from train import EVAL_BATCH, Optim, classify_step, evaluate, train_epoch  # noqa: E402
from model import (LR_SCALES, Classifier, build_model, cpu_dropout, load_tokenizer, model_name,  # noqa: E402
                   resolve_model, save_checkpoint)
from fileio import write_json  # noqa: E402
from optim import build_optimizer, build_param_groups  # noqa: E402
from utils import (cpu_attention, cpu_model, fast_process_settings, keep_freed_memory, set_seed,  # noqa: E402
                   setup_logging, use_bf16, use_tf32)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype, device, n=2048, reps=5, tries=3, tf32=False):
    """Best of `tries` timings of large matmuls: a peak, so the least disturbed try counts."""
    n = 8192 if device.type == "cuda" else n
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = 0.0
    for _ in range(tries):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
    torch.set_float32_matmul_precision("highest")
    return best


def train_flops_per_token(config):
    """Forward matmul FLOPs per token (2 per weight, plus attention over ~L keys), x3 for forward + backward."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 3 * layers * (2 * (4 * h * h + 2 * h * i))


def quiet_logging():
    setup_logging()
    logging.getLogger("utils").setLevel(logging.WARNING)  # param-group lines, once per configuration


def make_model(cfg, n_classes, attention, random_init, device, slot_classes=None):
    if not random_init:
        return build_model(cfg.model, n_classes, cfg.dropout, attention=attention, slot_classes=slot_classes,
                           crf=cfg.crf).to(device)
    config = AutoConfig.from_pretrained(resolve_model(cfg.model))  # the architecture alone: no weights to download
    encoder = AutoModel.from_config(config, attn_implementation=attention, dtype=torch.float32)
    return Classifier(encoder, n_classes, cfg.dropout, slot_classes=slot_classes, crf=cfg.crf).to(device)


class Levers(NamedTuple):
    """How a configuration trains: bf16 autocast, fused AdamW, the attention kernel (None: transformers' choice),
    whether glibc keeps freed memory, TF32 matmuls, dropout masks from numpy (model.CPUDropout), the word-embedding
    table ("train", "frozen", or "sparse": a sparse gradient updated by lazy Adam) and torch.compile of the model."""
    bf16: bool = False
    fused: bool = False
    attention: str | None = None
    keep: bool = False
    tf32: bool = False
    cpu_dropout: bool = False
    embeddings: str = "train"
    compile: bool = False


class Optimizers:
    """AdamW over the model and SparseAdam over the word-embedding table, stepped as one optimizer."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none=True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def optimizer(cfg, model, levers, steps):
    """train_epoch's Optim for these levers: AdamW as main.py builds it, with the word-embedding table frozen, or
    left to a SparseAdam of its own (lazy moments: a step updates the rows its batch touched)."""
    table = model.encoder.get_input_embeddings()
    if levers.embeddings == "frozen":
        table.requires_grad_(False)
    named = [(n, p) for n, p in model.named_parameters() if not (levers.embeddings == "sparse" and p is table.weight)]
    groups = build_param_groups(named, cfg.lr, cfg.weight_decay, 1.0, model.encoder.config.num_hidden_layers,
                                LR_SCALES)
    adamw, schedule = build_optimizer(groups, cfg.eps, levers.fused, total_steps=10 * steps, warmup_ratio=0)
    if levers.embeddings != "sparse":
        return Optim(adamw, schedule)
    table.sparse = True
    return Optim(Optimizers(adamw, torch.optim.SparseAdam([table.weight], lr=cfg.lr, eps=cfg.eps)), schedule)


def time_steps(cfg, n_classes, batches, levers, random_init, slot_classes=None):
    """Seconds per training step, seconds of the untimed warm-up steps (compilation included), real and padded
    tokens per step; run in a fresh process."""
    quiet_logging()
    if levers.keep:
        keep_freed_memory()
    if levers.tf32:
        use_tf32()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(cfg.seed)
    model = make_model(cfg, n_classes, levers.attention, random_init, device, slot_classes)
    if levers.cpu_dropout:
        cpu_dropout(model)
    optim = optimizer(cfg, model, levers, len(batches))
    if levers.compile:
        model.compile(dynamic=True)  # one graph for every batch length
    context = types.SimpleNamespace(cfg=cfg, device=device, amp=levers.bf16, ema=None, show=True)  # train_epoch's run
    # Untimed warm-up: the first steps of a process grow its heap and create kernels for each new shape. The study's
    # batches all have one shape; ours meet a new length every few steps, so they get more.
    warmup = 3 if len({b["input_ids"].shape for b in batches}) == 1 else WARM_UP_STEPS
    t = time.perf_counter()
    train_epoch(model, batches[:warmup], classify_step, optim, context, "warm-up")
    sync(device)
    warm_seconds = time.perf_counter() - t
    t = time.perf_counter()
    train_epoch(model, batches, classify_step, optim, context, "timed")
    sync(device)
    seconds = (time.perf_counter() - t) / len(batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    padded = sum(b["input_ids"].numel() for b in batches) / len(batches)
    return seconds, warm_seconds, real, padded


WARM_UP_STEPS = 10


class Bench:
    """What every measurement shares: the options, the baseline's config, tokenizer and features, the device, the
    fresh-process pool's context, and a seeded sampler of batches."""

    def __init__(self, args):
        self.args = args
        argv = ["--task", "baseline"] + (["--data", args.data] if args.data else []) + (
            ["--model", args.model] if args.model else [])
        self.cfg = parse_args(argv)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = load_tokenizer(self.cfg.model)
        self.labels, self.feats = load_features(self.cfg, self.tok)
        self.steps_per_epoch = (len(self.feats["train"]["labels"]) + self.cfg.batch_size - 1) // self.cfg.batch_size
        self.bf16 = use_bf16(self.device)
        self.rng = random.Random(0)
        # Fresh processes forked from a server that has only imported the project: no training history, and not
        # 4 s of imports per configuration.
        self.fresh = multiprocessing.get_context("forkserver")
        self.fresh.set_forkserver_preload(["train"])

    def sample(self, loader, k):
        """k of an epoch's batches spread evenly over their sizes (padded tokens), in random order: their mean size is
        the epoch's, so s/step x steps per epoch estimates an epoch better than k batches drawn at random."""
        batches = sorted(loader, key=lambda b: b["input_ids"].numel())
        picked = [batches[int((i + 0.5) * len(batches) / k)] for i in range(k)]
        self.rng.shuffle(picked)
        return picked

    def timed(self, config, cfg=None, slot_classes=None):
        """time_steps of one configuration (name, batches, Levers) in a fresh process."""
        _, batches, levers = config
        with ProcessPoolExecutor(1, mp_context=self.fresh) as pool:
            return pool.submit(time_steps, cfg or self.cfg, len(self.labels), batches, levers, self.args.random_init,
                               slot_classes).result()


def training_configs(b):
    """(name, batches, Levers) per row. Up to main.py's fast path on this device (DEFAULT_ROW) each row adds one
    lever to the last; then the word-embedding table frozen (the recommended fast settings), and two alternatives
    to the frozen row: a sparse table with lazy Adam, and torch.compile."""
    cfg, tok, train, steps = b.cfg, b.tok, b.feats["train"], b.args.steps
    random_dynamic = DataLoader(Features(train), cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                                collate_fn=DataCollatorWithPadding(tok))
    study = make_loader(train, tok, cfg.batch_size, True, 0, fast=False, max_length=cfg.max_length)
    grouped = b.sample(make_loader(train, tok, cfg.batch_size, True, 0, fast=True), steps)
    configs = [
        ("study: pad to 128, fp32, foreach AdamW", b.sample(study, b.args.study_steps), Levers()),
        ("+ dynamic padding", b.sample(random_dynamic, steps), Levers()),
        ("+ batches grouped by length", grouped, Levers()),
    ]
    if b.device.type == "cpu":
        configs += [("+ bf16 autocast", grouped, Levers(bf16=b.bf16)),
                    ("+ fused AdamW", grouped, Levers(bf16=b.bf16, fused=True)),
                    ("+ glibc keeps freed memory", grouped, Levers(bf16=b.bf16, fused=True, keep=True)),
                    ("+ eager attention", grouped, Levers(bf16=b.bf16, fused=True, attention="eager", keep=True)),
                    ("+ dropout masks from numpy", grouped,
                     Levers(bf16=b.bf16, fused=True, attention="eager", keep=True, cpu_dropout=True))]
    else:  # bf16 autocast is left out on a GPU: see utils.use_bf16
        configs += [("+ fused AdamW", grouped, Levers(fused=True)),
                    ("+ TF32 matmuls", grouped, Levers(fused=True, tf32=True))]
    ours = configs[DEFAULT_ROW][2]
    frozen = ours._replace(embeddings="frozen")
    return configs + [("+ word embeddings frozen", grouped, frozen),
                      ("  sparse embeddings + lazy Adam, not frozen", grouped, ours._replace(embeddings="sparse")),
                      ("  frozen + torch.compile", grouped, frozen._replace(compile=True))]


DEFAULT_ROW, FROZEN_ROW = -4, -3  # of training_configs: main.py's default, and with --freeze-embeddings


def machine_peaks(b):
    """The matmul peaks each row is measured against, printed with the machine; returns (machine, peaks, training
    FLOPs per token)."""
    on_cpu = b.device.type == "cpu"
    # emulated bf16 matmuls (a CPU without AVX512-BF16) take minutes at this size, and no row uses them there
    peaks = {"fp32": matmul_peak(torch.float32, b.device),
             "bf16": matmul_peak(torch.bfloat16, b.device) if b.bf16 or not on_cpu else None,
             "tf32": None if on_cpu else matmul_peak(torch.float32, b.device, tf32=True)}
    flops_tok = train_flops_per_token(AutoConfig.from_pretrained(resolve_model(b.cfg.model)))
    machine = torch.cuda.get_device_name() if not on_cpu else cpu_model()
    print(f"machine: {machine}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          f"bf16 autocast: {b.bf16}; encoder: {model_name(b.cfg.model)}{' (random init)' if b.args.random_init else ''}")
    bf16_peak = f"{peaks['bf16'] / 1e9:.0f} GFLOP/s" if peaks["bf16"] else "not measured"
    tf32 = f", TF32 {peaks['tf32'] / 1e9:.0f} GFLOP/s" if peaks["tf32"] else ""
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {bf16_peak}"
          f"{'' if on_cpu else tf32}; "
          f"training FLOPs per token {flops_tok / 1e6:.1f} M")
    return machine, peaks, flops_tok


def training_rows(b, configs, peaks, flops_tok):
    """Each configuration's step time, epoch estimate, speed-up over the first row and share of the matmul peak."""
    print(f"{'configuration (our default: row ' + str(len(configs) + DEFAULT_ROW + 1) + ')':44s} {'ms/step':>7s} "
          f"{'warm-up':>7s} {'s/epoch':>7s} {'speed-up':>8s} {'tok/s':>6s} {'% peak':>6s}")
    rows = []
    for name, batches, levers in configs:
        try:
            sec, warm, real, padded = b.timed((name, batches, levers))
        except Exception as e:  # torch.compile needs a C++ compiler and a supported platform; the rest must run
            if not levers.compile:
                raise
            print(f"{name:44s} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            rows.append({"name": name, "error": f"{type(e).__name__}: {e}", **levers._asdict()})
            continue
        tok_s = real / sec
        peak = peaks["bf16"] if levers.bf16 else peaks["tf32"] if levers.tf32 else peaks["fp32"]
        warm_steps = 3 if len({x["input_ids"].shape for x in batches}) == 1 else WARM_UP_STEPS
        # an epoch as a run has it: the warm-up steps (compilation included) then the rest at the timed pace
        epoch = warm + sec * (b.steps_per_epoch - warm_steps)
        rows.append({"name": name, "seconds_per_step": sec, "warm_up_seconds": warm, "warm_up_steps": warm_steps,
                     "seconds_per_epoch": epoch, "real_tokens_per_step": real, "padded_tokens_per_step": padded,
                     "tokens_per_second": tok_s, "fraction_of_peak": tok_s * flops_tok / peak,
                     **{k: v for k, v in levers._asdict().items()}})
        r = rows[-1]
        print(f"{name:44s} {1000 * sec:7.1f} {warm:6.1f}s {epoch:7.1f} {rows[0]['seconds_per_step'] / sec:7.1f}x "
              f"{tok_s:6.0f} {100 * r['fraction_of_peak']:5.1f}%")
    return rows


def head_to_head(b, configs):
    """Rounds of the study's way, ours and ours with the word embeddings frozen, back to back: this shared machine's
    speed drifts by +-15% over tens of seconds, more than the rows are apart, and rounds see the same machine; their
    median ratios are the speed-ups."""
    rounds = []
    for _ in range(b.args.rounds):
        study, ours, frozen = (b.timed(configs[i])[0] for i in (0, DEFAULT_ROW, FROZEN_ROW))
        rounds.append({"study_seconds_per_step": study, "ours_seconds_per_step": ours,
                       "frozen_seconds_per_step": frozen, "ratio": study / ours, "frozen_ratio": study / frozen})
    print("head to head, s/step the study's way vs ours vs ours frozen: " + ", ".join(
        f"{r['study_seconds_per_step']:.3f} vs {r['ours_seconds_per_step']:.3f} ({r['ratio']:.1f}x) vs "
        f"{r['frozen_seconds_per_step']:.3f} ({r['frozen_ratio']:.1f}x)" for r in rounds))
    return rounds


def joint_rounds(b, ours, frozen):
    """Rounds of our default step against the same step with a slot head and its loss, on the same batches
    (with their slot labels), then that joint step with the word embeddings frozen: what the joint task costs, and
    what freezing gains there."""
    args = b.args
    joint_cfg = parse_args(["--task", "baseline", "--slots", *(["--crf"] if args.crf else []),
                            *(["--data", args.data] if args.data else []),
                            *(["--model", args.model] if args.model else [])])
    _, feats = load_features(joint_cfg, b.tok, slots=True)
    slots = slot_labels(feats)
    extras = {"slot_labels": token_slot_labels(feats["train"], slots)}
    batches = b.sample(make_loader(feats["train"], b.tok, b.cfg.batch_size, True, 0, fast=True, extras=extras),
                       args.steps)
    config = ("ours", batches, ours[2])
    rounds = []
    for _ in range(args.rounds):
        base = b.timed(config)[0]
        slot = b.timed(config, joint_cfg, len(slots))[0]
        slot_frozen = b.timed(("frozen", batches, frozen[2]), joint_cfg, len(slots))[0]
        rounds.append({"ours_seconds_per_step": base, "joint_seconds_per_step": slot, "ratio": slot / base,
                       "joint_frozen_seconds_per_step": slot_frozen, "frozen_gain": slot / slot_frozen})
    print("joint task, s/step ours vs ours with the slot head vs that frozen: " + ", ".join(
        f"{r['ours_seconds_per_step']:.3f} vs {r['joint_seconds_per_step']:.3f} ({r['ratio']:.2f}x) vs "
        f"{r['joint_frozen_seconds_per_step']:.3f} ({r['frozen_gain']:.2f}x faster)" for r in rounds))
    return {"crf": joint_cfg.crf, "rounds": rounds, "ratio": statistics.median(r["ratio"] for r in rounds),
            "frozen_gain": statistics.median(r["frozen_gain"] for r in rounds)}


def evaluation_speed(b, net, fast, amp, bs, n, passes, warm_n):
    """Utterances per second over `passes` evaluate() calls on test texts[:n], tokenization included, after a
    warm-up call on texts[:warm_n]."""
    texts, gold, cfg = b.feats["test"]["texts"], b.feats["test"]["labels"], b.cfg
    seconds = []
    for i in range(passes + 1):
        k = warm_n if i == 0 else n
        t = time.perf_counter()
        ids = b.tok(texts[:k], truncation=True, max_length=cfg.max_length)["input_ids"]
        split = {"input_ids": ids, "labels": gold[:k]}
        evaluate(net, make_loader(split, b.tok, bs, False, fast=fast, max_length=cfg.max_length), b.device, amp)
        seconds.append(time.perf_counter() - t)
    n = len(split["labels"])
    return {"utterances": n, "seconds": seconds[1:], "utterances_per_second": n * passes / sum(seconds[1:]),
            "warm_up_utterances_per_second": len(texts[:warm_n]) / seconds[0]}


def evaluation_speeds(b):
    """Evaluation the study's way and ours, and inference as `main.py --task predict` runs it.

    Speed does not depend on the weights, so these models are untrained. The
    study's way gets one pass over a slice of the test split (all of it would
    take minutes); its batches all have one shape, so two batches warm it up,
    where ours get a whole pass.
    """
    cfg, n_classes = b.cfg, len(b.labels)
    evals = {"study": evaluation_speed(b, make_model(cfg, n_classes, None, b.args.random_init, b.device), False, False,
                                       16, 320, 1, 32)}
    fast_process_settings(b.device)  # as a training process does (train.py)
    model = make_model(cfg, n_classes, cpu_attention(b.device, fast=True), b.args.random_init, b.device)
    evals["fast"] = evaluation_speed(b, model, True, b.bf16, EVAL_BATCH, None, b.args.eval_passes, None)
    for key, label in (("study", "the study's way"), ("fast", "ours")):
        e = evals[key]
        print(f"evaluation ({label}): {e['utterances']} utterances, {e['utterances_per_second']:.0f} utterances/s "
              f"(tokenization included; mean of {len(e['seconds'])} passes after a warm-up pass at "
              f"{e['warm_up_utterances_per_second']:.0f}/s)")
    texts = b.feats["test"]["texts"]
    with tempfile.TemporaryDirectory() as ckpt:
        meta = {"run_name": "bench", "labels": b.labels, "config": recorded_config(cfg), "max_length": cfg.max_length,
                "adapter": False, "heads": ["head"]}
        save_checkpoint(model, b.tok, meta, ckpt)
        predictor = Predictor(ckpt)
        predictor.logits(texts, EVAL_BATCH)  # warm-up
        t = time.perf_counter()
        predictor.logits(texts, EVAL_BATCH)
        sec = time.perf_counter() - t
    evals["predict"] = {"utterances_per_second": len(texts) / sec, "seconds": sec}
    print(f"inference (predict path, {'bf16' if b.bf16 else 'fp32'} weights): {len(texts)} utterances in {sec:.2f}s "
          f"= {len(texts) / sec:.0f} utterances/s (tokenization included)")
    return evals


def parse_options():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("MASSIVE_DATA"), help="MASSIVE release file")
    p.add_argument("--model", default=None, help="encoder (hub id or folder); default: the bundled MiniLM")
    p.add_argument("--random-init", action="store_true",
                   help="random weights in --model's architecture: its config.json and tokenizer are all it needs")
    p.add_argument("--steps", type=int, default=16, help="timed steps per fast configuration")
    p.add_argument("--study-steps", type=int, default=4, help="timed steps for the study's way (slow)")
    p.add_argument("--rounds", type=int, default=3,
                   help="head-to-head rounds of the study's way then ours; the speed-up is the median round's")
    p.add_argument("--eval-passes", type=int, default=2, help="timed evaluation passes, after one warm-up pass")
    p.add_argument("--out", default=None, help="results JSON (default: results/bench/speed-<cpu|cuda>.json)")
    p.add_argument("--slots", action="store_true",
                   help="also time the joint task (a slot head and its loss) against our default, in rounds")
    p.add_argument("--crf", action="store_true", help="with --slots: the slot head with a CRF (--crf of main.py)")
    args = p.parse_args()
    if args.crf and not args.slots:
        p.error("--crf times the slot head's CRF: it needs --slots")
    return args


def main():
    args = parse_options()
    quiet_logging()
    b = Bench(args)
    configs = training_configs(b)
    machine, peaks, flops_tok = machine_peaks(b)
    rows = training_rows(b, configs, peaks, flops_tok)
    rounds = head_to_head(b, configs)
    joint = joint_rounds(b, configs[DEFAULT_ROW], configs[FROZEN_ROW]) if args.slots else None
    evals = evaluation_speeds(b)
    ratio = statistics.median(r["ratio"] for r in rounds)
    frozen_ratio = statistics.median(r["frozen_ratio"] for r in rounds)
    print(f"training speed-up over the study's way (median round): ours {ratio:.1f}x, with the word embeddings "
          f"frozen {frozen_ratio:.1f}x; evaluation speed-up: "
          f"{evals['fast']['utterances_per_second'] / evals['study']['utterances_per_second']:.1f}x")
    out = args.out or f"results/bench/speed-{b.device.type}.json"
    write_json(out, {"machine": machine, "device": b.device.type, "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "encoder": model_name(b.cfg.model), "random_init": args.random_init,
                     "peak_flops": peaks, "train_flops_per_token": flops_tok, "steps_per_epoch": b.steps_per_epoch,
                     "training": rows, "head_to_head": rounds, "evaluation": evals, "training_speedup": ratio,
                     "frozen_training_speedup": frozen_ratio,
                     "joint": joint})
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a failed path must fail the benchmark, with the reason on one line
        sys.exit(f"benchmark failed: {type(e).__name__}: {e}")
