"""Command-line settings: one Config, each task's study settings as its defaults.

A flag left unset takes its task's default from TASK_DEFAULTS (the study's
settings, ../shared/SPEC.md); derived values (run name, output paths) are
computed once here.
"""
import argparse
import dataclasses
import os

TASKS = ("baseline", "custom", "supcon", "simclr", "lora", "predict", "export", "serve")
USE_TASKS = ("predict", "export", "serve")  # tasks that use a trained checkpoint instead of training

# The study's settings; lora's lr is ours (adapters want a larger step, as in PEFT's examples).
TASK_DEFAULTS = {
    "baseline": dict(lr=2e-5, dropout=0.1, batch_size=16),
    "custom": dict(lr=5e-5, dropout=0.1, batch_size=16, llrd=0.8, warmup_ratio=0.1),
    "supcon": dict(lr=5e-5, dropout=0.3, batch_size=16, temperature=0.07, contrastive_epochs=10, contrastive_lr=1e-4),
    "simclr": dict(lr=5e-5, dropout=0.2, batch_size=32, temperature=0.1, contrastive_epochs=10, contrastive_lr=1e-4),
    "lora": dict(lr=3e-4, dropout=0.1, batch_size=16, lora_rank=8),
    "predict": dict(lr=0.0, dropout=0.0, batch_size=128),  # batch: utterances per forward pass
    "export": dict(lr=0.0, dropout=0.0, batch_size=128),
    "serve": dict(lr=0.0, dropout=0.0, batch_size=64),  # batch: most utterances per dynamically batched pass
}
# The accuracy recipe's techniques (custom only), all off. Results and checkpoints written before they existed
# lack them, and mean these values.
RECIPE_DEFAULTS = dict(pooling="cls", label_smoothing=0.0, rdrop=0.0, ema=0.0, aux_weight=0.0, teachers=None,
                       distill_weight=0.0, distill_temperature=1.0, augment=0.0)
# Slot filling, off (no slot head, so no slot-loss weight). Results written before it existed lack these keys.
SLOT_DEFAULTS = dict(slots=False, slot_weight=None, crf=False)
COMMON_DEFAULTS = dict(llrd=1.0, warmup_ratio=0.0, temperature=None, contrastive_epochs=0, contrastive_lr=None,
                       lora_rank=None, lora_targets="query-value", **RECIPE_DEFAULTS, **SLOT_DEFAULTS)
# Flags that only mean something for some tasks; elsewhere they are an error, not silently ignored.
TASK_ONLY = {"temperature": ("supcon", "simclr"), "contrastive_epochs": ("supcon", "simclr"),
             "contrastive_lr": ("supcon", "simclr"), "lora_rank": ("lora",), "lora_alpha": ("lora",),
             "lora_targets": ("lora",), "checkpoint": USE_TASKS, "input": ("predict",), "top_k": ("predict",),
             "format": ("predict",), "texts": ("predict",), "backend": ("predict", "serve"),
             "min_confidence": ("predict", "serve"), "spelling": ("predict", "serve"), "host": ("serve",),
             "port": ("serve",), "max_wait_ms": ("serve",), "max_inputs": ("serve",), "max_queue": ("serve",),
             "threads": ("serve",), "streams": ("serve",), "replicas": ("serve",), "address": ("serve",),
             **{k: ("custom",) for k in RECIPE_DEFAULTS}}


@dataclasses.dataclass
class Config:
    task: str
    data: str | None
    label: str
    model: str | None
    max_length: int
    epochs: int
    lr: float
    eps: float
    weight_decay: float
    batch_size: int
    dropout: float
    seed: int
    llrd: float
    warmup_ratio: float
    temperature: float | None
    contrastive_epochs: int
    contrastive_lr: float | None
    lora_rank: int | None
    lora_alpha: int | None
    lora_targets: str
    pooling: str
    label_smoothing: float
    rdrop: float
    ema: float
    aux_weight: float
    teachers: list | None
    distill_weight: float
    distill_temperature: float
    augment: float
    slots: bool
    slot_weight: float | None
    crf: bool
    fast: bool
    bf16: bool
    cache_dir: str
    out_dir: str
    save: bool
    checkpoint_dir: str
    resume: bool
    checkpoint: str | None
    texts: list | None
    input: str | None
    top_k: int | None
    format: str | None
    backend: str | None
    min_confidence: float | None
    spelling: bool | None
    host: str | None
    port: int | None
    max_wait_ms: float | None
    max_inputs: int | None
    max_queue: int | None
    threads: int | None
    streams: int | None
    replicas: int | None
    address: str | None
    run_name: str = ""

    @property
    def results_path(self):
        return os.path.join(self.out_dir, f"{self.run_name}.json")

    @property
    def run_dir(self):
        return os.path.join(self.checkpoint_dir, self.run_name)


# Where a run reads and writes, or how the machine executes it, not what it computes: results and checkpoints do
# not record these as settings (a run's environment records whether bf16 autocast was used).
IO_KEYS = ("cache_dir", "out_dir", "save", "checkpoint_dir", "resume", "checkpoint", "texts", "input", "top_k",
           "format", "backend", "min_confidence", "spelling", "host", "port", "max_wait_ms", "max_inputs", "max_queue",
           "threads", "streams", "replicas", "address", "bf16", "run_name")


def recorded_config(cfg):
    """The settings that define a run, as results and checkpoints record them: no machine paths.

    The data file and a local encoder folder are recorded by name; their
    contents are identified by the sha256 values in the results' environment.
    """
    c = {k: v for k, v in vars(cfg).items() if k not in IO_KEYS}
    c["data"] = cfg.data and os.path.basename(cfg.data)
    c["model"] = cfg.model and (os.path.basename(os.path.normpath(cfg.model)) if os.path.isdir(cfg.model) else cfg.model)
    c["teachers"] = cfg.teachers and [os.path.basename(os.path.normpath(t)) for t in cfg.teachers]
    return c


def complete_config(recorded):
    """A recorded config with the recipe's and slot filling's off values filled in where it predates them."""
    return {**RECIPE_DEFAULTS, **SLOT_DEFAULTS, **recorded}


def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune a BERT-family encoder on MASSIVE (English) intents.")
    p.add_argument("--task", choices=TASKS, default="baseline", help="fine-tuning strategy")
    p.add_argument("--data", default=os.environ.get("MASSIVE_DATA"),
                   help="MASSIVE release file (en-US.jsonl); default $MASSIVE_DATA, else the hub")
    p.add_argument("--label", choices=("scenario", "intent"), default="scenario", help="18 scenarios or 60 intents")
    p.add_argument("--model", default=None,
                   help="hub id or folder of the encoder (default: bundled all-MiniLM-L6-v2); for predict, the base "
                        "encoder of a LoRA checkpoint trained from a local folder")
    p.add_argument("--max-length", type=int, default=128, help="tokens kept, truncating from the left")
    p.add_argument("--epochs", type=int, default=10, help="cross-entropy epochs (phase 2 of supcon/simclr)")
    p.add_argument("--lr", type=float, help="peak learning rate (top layer under LLRD); task default")
    p.add_argument("--eps", type=float, default=1e-8, help="AdamW epsilon")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases/LayerNorm)")
    p.add_argument("--batch-size", type=int, help="training batch size; task default")
    p.add_argument("--dropout", type=float, help="dropout on [CLS] before the head; task default")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--llrd", type=float, help="layer-wise LR decay factor per layer going down (1 = off)")
    p.add_argument("--warmup-ratio", type=float, help="fraction of steps of linear warmup (0 = off)")
    p.add_argument("--temperature", type=float, help="contrastive temperature (supcon/simclr)")
    p.add_argument("--contrastive-epochs", type=int, help="phase-1 epochs (supcon/simclr)")
    p.add_argument("--contrastive-lr", type=float, help="phase-1 learning rate (supcon/simclr)")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (lora)")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default: 2 x rank)")
    p.add_argument("--lora-targets", choices=("query-value", "all-linear"),
                   help="encoder layers that get adapters (lora)")
    r = p.add_argument_group("the accuracy recipe (--task custom; all off by default)")
    r.add_argument("--pooling", choices=("cls", "mean"),
                   help="sentence vector: [CLS] (the study) or the mean over tokens")
    r.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    r.add_argument("--rdrop", type=float, help="R-Drop weight: symmetric KL between two dropout passes")
    r.add_argument("--ema", type=float, help="decay of an exponential moving average of the weights, which is "
                                             "evaluated and saved (0 = off)")
    r.add_argument("--aux-weight", type=float, help="weight of a second head trained on the other label "
                                                    "(intent for scenario, scenario for intent)")
    r.add_argument("--teachers", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated checkpoint folders whose mean prediction the model is distilled from "
                        "(with --slots, joint checkpoints: their slots too)")
    r.add_argument("--distill-weight", type=float, help="weight of the distillation loss against cross-entropy "
                                                        "(default 0.5 with --teachers)")
    r.add_argument("--distill-temperature", type=float, help="softmax temperature of distillation")
    r.add_argument("--augment", type=float, help="probability that a training utterance gets one kind of typing noise")
    p.add_argument("--slots", action="store_true", default=None,
                   help="also train a slot-filling head (MASSIVE's joint task: intent + slots); for predict, require "
                        "the checkpoint's slots")
    p.add_argument("--slot-weight", type=float, help="weight of the slot loss beside the label's (default 1, with --slots)")
    p.add_argument("--crf", action="store_true", default=None,
                   help="with --slots: a linear-chain CRF over the words' slot scores, trained on the sequence's "
                        "likelihood and decoded by Viterbi")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic padding, length-grouped batches, bf16 autocast, fused AdamW; "
                        "--no-fast is the study's way (pad to max length, fp32)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast in training on CPUs with native bf16 that a timed matmul finds faster; "
                        "--no-bf16 trains in fp32 there, to replicate runs from CPUs without it")
    p.add_argument("--cache-dir", default="assets/cache", help="where tokenized features are cached")
    p.add_argument("--out-dir", default="results", help="where results/<run name>.json goes")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=True,
                   help="save the best-validation model and a per-epoch resume state under --checkpoint-dir")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="runs are saved in CHECKPOINT_DIR/<run name>/")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last completed epoch")
    g = p.add_argument_group("using a trained model (--task predict, export, serve)")
    g.add_argument("texts", nargs="*", default=None, help="utterances to classify")
    g.add_argument("--checkpoint", help="a run's checkpoint folder (CHECKPOINT_DIR/<run name>)")
    g.add_argument("--backend", choices=("torch", "onnx", "onnx-int8"),
                   help="what runs the model (default torch; onnx backends need --task export first)")
    g.add_argument("--min-confidence", type=float, help="abstain (no label) below this calibrated probability")
    g.add_argument("--spelling", action="store_true", default=None,
                   help="correct words unknown to the model to the nearest training word first (spelling.py)")
    g.add_argument("--host", help="serve: address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="serve: port (default 8000)")
    g.add_argument("--max-wait-ms", type=float,
                   help="serve: longest a pass waits for more requests once the queued ones are in "
                        "(default 0: a pass takes what queued while the last one ran)")
    g.add_argument("--max-inputs", type=int, help="serve: most utterances in one request (default 256)")
    g.add_argument("--max-queue", type=int, help="serve: most utterances waiting before requests get 503 (default 4096)")
    g.add_argument("--threads", type=int, help="serve: each stream's intra-op threads (default: the cores shared out "
                                               "over the streams and replicas)")
    g.add_argument("--streams", type=int, help="serve: forward passes run at once, each on its own model thread "
                                               "(default: one per core on a CPU, one on a GPU)")
    g.add_argument("--replicas", type=int, help="serve: run the app as a Ray Serve deployment of this many replicas, "
                                                "each with its own batching (default: one plain uvicorn process)")
    g.add_argument("--address", help="serve --replicas: join the Ray cluster at HOST:PORT (default: a local instance)")
    g.add_argument("--input", help="file with one utterance per line ('-' for standard input)")
    g.add_argument("--top-k", type=int, help="labels shown per utterance (default 3)")
    g.add_argument("--format", choices=("text", "jsonl"), help="output format (default text)")
    return p


def run_name(cfg):
    model = os.path.basename(os.path.normpath(cfg.model)) if cfg.model else "minilm"
    parts = [cfg.task, cfg.label, model, f"lr{cfg.lr:g}", f"bs{cfg.batch_size}", f"e{cfg.epochs}"]
    if cfg.task == "custom":
        parts.append(f"llrd{cfg.llrd:g}-wu{cfg.warmup_ratio:g}")
        recipe = {"mean": cfg.pooling == "mean", f"ls{cfg.label_smoothing:g}": cfg.label_smoothing,
                  f"rdrop{cfg.rdrop:g}": cfg.rdrop, f"ema{cfg.ema:g}": cfg.ema,
                  f"aux{cfg.aux_weight:g}": cfg.aux_weight,
                  f"kd{len(cfg.teachers or [])}x{cfg.distill_weight:g}t{cfg.distill_temperature:g}": cfg.teachers,
                  f"aug{cfg.augment:g}": cfg.augment}
        parts += [name for name, on in recipe.items() if on]
    if cfg.task in ("supcon", "simclr"):
        parts.append(f"t{cfg.temperature:g}-ce{cfg.contrastive_epochs}-clr{cfg.contrastive_lr:g}")
    if cfg.task == "lora":
        parts.append(f"r{cfg.lora_rank}-{cfg.lora_targets}")
    if cfg.slots:
        parts.append(f"slots{cfg.slot_weight:g}" + ("-crf" if cfg.crf else ""))
    if not cfg.fast:
        parts.append("slow")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def parse_args(argv=None):
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    args["texts"] = args["texts"] or None
    for k, tasks in TASK_ONLY.items():
        if args[k] is not None and args["task"] not in tasks:
            what = "utterances apply" if k == "texts" else f"--{k.replace('_', '-')} applies"
            parser.error(f"{what} only to --task {'/'.join(tasks)}")
    if args["teachers"] and args["distill_weight"] is None:
        args["distill_weight"] = 0.5
    for k, v in {**COMMON_DEFAULTS, **TASK_DEFAULTS[args["task"]]}.items():
        if args.get(k) is None:
            args[k] = v
    if args["slots"] and args["slot_weight"] is None and args["task"] not in USE_TASKS:
        args["slot_weight"] = 1.0
    if args["task"] == "lora" and args["lora_alpha"] is None:
        args["lora_alpha"] = 2 * args["lora_rank"]
    cfg = Config(**args)

    def check(ok, msg):
        if not ok:
            parser.error(msg)

    if cfg.task in USE_TASKS:
        check(cfg.checkpoint, f"--task {cfg.task} needs --checkpoint DIR")
        check(cfg.task == "predict" or not cfg.slots, "--slots applies only to training tasks and --task predict")
        check(cfg.slot_weight is None and not cfg.crf, "--slot-weight and --crf apply only to training tasks")
        check(cfg.address is None or cfg.replicas, "--address applies only with --replicas")
        check(not (cfg.texts and cfg.input), "give utterances or --input, not both")
        defaults = dict(top_k=3, format="text", backend="torch", host="127.0.0.1", port=8000, max_wait_ms=0.0,
                        max_inputs=256, max_queue=4096)
        for k, v in defaults.items():
            if getattr(cfg, k) is None:  # not `or`: 0 is a value (--max-wait-ms 0: no waiting)
                setattr(cfg, k, v)
        check(cfg.top_k >= 1, "--top-k must be at least 1")
        check(cfg.min_confidence is None or 0 <= cfg.min_confidence <= 1, "--min-confidence must be in [0, 1]")
        check(0 < cfg.port < 65536 and cfg.max_wait_ms >= 0 and cfg.max_inputs >= 1 and cfg.max_queue >= 1
              and (cfg.threads is None or cfg.threads >= 1) and (cfg.streams is None or cfg.streams >= 1)
              and (cfg.replicas is None or cfg.replicas >= 1)
              and cfg.batch_size >= 1,
              "--port, --max-wait-ms, --max-inputs, --max-queue, --threads, --streams, --replicas and --batch-size must be "
              "positive")
        return cfg

    check(cfg.epochs >= 1, "--epochs must be at least 1")
    check(cfg.batch_size >= 2, "--batch-size must be at least 2")
    check(cfg.max_length >= 2, "--max-length must be at least 2")
    check(cfg.lr > 0 and cfg.eps > 0 and cfg.weight_decay >= 0, "--lr and --eps must be positive, --weight-decay >= 0")
    check(0 <= cfg.dropout < 1, "--dropout must be in [0, 1)")
    check(0 < cfg.llrd <= 1, "--llrd must be in (0, 1]")
    check(0 <= cfg.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)")
    if cfg.task in ("supcon", "simclr"):
        check(cfg.temperature > 0, "--temperature must be positive")
        check(cfg.contrastive_epochs >= 0 and cfg.contrastive_lr > 0,
              "--contrastive-epochs must be >= 0 and --contrastive-lr positive")
    check(0 <= cfg.label_smoothing < 1 and 0 <= cfg.ema < 1 and 0 <= cfg.augment <= 1,
          "--label-smoothing and --ema must be in [0, 1), --augment in [0, 1]")
    check(cfg.rdrop >= 0 and cfg.aux_weight >= 0 and cfg.distill_temperature > 0,
          "--rdrop and --aux-weight must be >= 0, --distill-temperature positive")
    check(0 <= cfg.distill_weight <= 1 and (cfg.teachers or not cfg.distill_weight),
          "--distill-weight must be in [0, 1] and needs --teachers")
    check(cfg.slots or (cfg.slot_weight is None and not cfg.crf), "--slot-weight and --crf apply only with --slots")
    check(cfg.slot_weight is None or cfg.slot_weight > 0, "--slot-weight must be positive")
    if cfg.task == "lora":
        check(cfg.lora_rank >= 1 and cfg.lora_alpha >= 1, "--lora-rank and --lora-alpha must be at least 1")
    cfg.run_name = run_name(cfg)
    return cfg
