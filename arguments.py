"""Command-line settings: the task table, every setting declared once, and the config each run gets.

TASKS says what each task is: its phases, whether it trains adapters, its
study settings (its defaults). Every "which kind of task is this" question
reads it. Each setting is one dataclass field whose metadata holds its help,
its flag and the tasks it applies to, after SimCSE's arguments; the parser is
built from those declarations. A training task gets a Config, and predict,
export and serve get a UseConfig, so a serving flag is no setting of any
training run. Derived values (run name, output paths, implied defaults) are
computed once here.
"""
import argparse
import dataclasses
import hashlib
import os
from typing import NamedTuple

from fileio import UserError
from readers import FORMATS, SPLITS, massive_columns


class Task(NamedTuple):
    help: str
    defaults: dict  # the study's settings for this task (../shared/SPEC.md), over each setting's own default
    trains: bool = True  # False: the task uses a trained checkpoint
    phases: tuple = ("classify",)  # in order; "contrastive" trains on two dropout views before classifying
    supervised: bool = False  # the contrastive phase's positives: same-label sentences (SupCon), else the other view
    adapter: bool = False  # LoRA adapters on the encoder; the heads train fully
    recipe: bool = False  # takes the accuracy recipe's flags; its runs are named by their LLRD and warmup
    checkpoint: bool = False  # uses a trained checkpoint (--checkpoint)


# lora's lr is ours: adapters want a larger step than full fine-tuning, as in PEFT's examples
TASKS = {
    "baseline": Task("cross-entropy fine-tuning of encoder + head", dict(lr=2e-5, dropout=0.1, batch_size=16)),
    "custom": Task("baseline + layer-wise LR decay + linear warmup, and the accuracy recipe's flags",
                   dict(lr=5e-5, dropout=0.1, batch_size=16, llrd=0.8, warmup_ratio=0.1), recipe=True),
    "supcon": Task("supervised contrastive pre-training (SupCon), then cross-entropy",
                   dict(lr=5e-5, dropout=0.3, batch_size=16, temperature=0.07, contrastive_epochs=10,
                        contrastive_lr=1e-4), phases=("contrastive", "classify"), supervised=True),
    "simclr": Task("unsupervised contrastive pre-training (SimCSE-style SimCLR), then cross-entropy",
                   dict(lr=5e-5, dropout=0.2, batch_size=32, temperature=0.1, contrastive_epochs=10,
                        contrastive_lr=1e-4), phases=("contrastive", "classify")),
    "lora": Task("LoRA adapters on the encoder, the heads trained fully",
                 dict(lr=3e-4, dropout=0.1, batch_size=16, lora_rank=8), adapter=True),
    "predict": Task("top-k labels and slots of utterances", dict(batch_size=128), trains=False, checkpoint=True),
    "export": Task("ONNX graphs (fp32, int8) behind an accuracy gate", dict(batch_size=128), trains=False,
                   checkpoint=True),
    "serve": Task("HTTP /parse and /predict with a try-it page", dict(batch_size=64), trains=False, checkpoint=True),
    "check": Task("validate a data set before training", dict(out_dir="results/reports"), trains=False),
    "evaluate": Task("score a trained checkpoint on labelled data", dict(batch_size=128, out_dir="results/reports"),
                     trains=False, checkpoint=True),
    "suggest": Task("the unlabelled utterances most worth labelling next, pre-annotated",
                    dict(batch_size=128, out_dir="results/reports"), trains=False, checkpoint=True),
}
TRAINING = tuple(name for name, t in TASKS.items() if t.trains)
CONTRASTIVE = tuple(name for name, t in TASKS.items() if "contrastive" in t.phases)
ADAPTER = tuple(name for name, t in TASKS.items() if t.adapter)
RECIPE = tuple(name for name, t in TASKS.items() if t.recipe)
CHECKPOINTED = tuple(name for name, t in TASKS.items() if t.checkpoint)
READS_DATA = (*TRAINING, "export", "evaluate", "check", "suggest")  # the tasks that read a labelled data set
SPLITS_DATA = (*TRAINING, "check")  # the tasks that split it; export and evaluate split as the checkpoint's run did
BACKENDS = {"torch": None, "onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # what runs a model: its file
# Small data: the study's lr 2e-5 and 10 epochs are tuned for MASSIVE's 11,514 training utterances and underfit a few
# hundred (30% test intent accuracy at 8 per intent). Under SMALL_DATA training utterances, --task baseline without
# --lr, --batch-size, --epochs or --pooling takes SMALL_DATA_SETTINGS, chosen on validation (docs/fewshot.md): the
# mean over tokens is the sentence vector the bundled encoder was trained to give, and few examples cannot retrain
# [CLS] into one.
SMALL_DATA = 2000
SMALL_DATA_SETTINGS = dict(lr=3e-4, batch_size=16, epochs=30, pooling="mean")
# Continuing (--init-from) on small data: at lr 3e-4 the first epoch undoes much of what the checkpoint knew (in the
# MASSIVE loop, validation fell 4-9 points below it and the run never beat one from scratch); a tenth of the lr for a
# third of the epochs starts where the checkpoint was and ends above the run from scratch (docs/fewshot.md).
SMALL_DATA_CONTINUED = dict(SMALL_DATA_SETTINGS, lr=3e-5, epochs=10)


def setting(default=None, help="", tasks=None, group=None, recorded=True, env=None, implied=None, positional=False,
            **flag):
    """One setting: its default, help and parser group; the tasks it applies to (None: every task of its config);
    whether results record it (not where a run reads and writes, nor how the machine runs it); an environment
    variable that overrides its default; implied: (setting, value from it, what to say) for a default that follows
    from another setting when that one is on; and its flag's argparse keywords (type, choices, action, ...)."""
    return dataclasses.field(default=default, metadata=dict(help=help, tasks=tasks, group=group, recorded=recorded,
                                                            env=env, implied=implied, positional=positional, flag=flag))


RECIPE_GROUP = "the accuracy recipe (--task custom; all off by default)"
USE_GROUP = "using a trained model (--task predict, export, serve)"


@dataclasses.dataclass
class Common:
    """The settings of every task."""
    task: str = setting("baseline", "what to do: " + "; ".join(f"{k}: {t.help}" for k, t in TASKS.items()),
                        choices=tuple(TASKS))
    data: str | None = setting(None, "labelled utterances: a file or folder of MASSIVE JSON lines, Rasa NLU YAML, "
                                     "CSV/TSV or BIO folders (default $MASSIVE_DATA, else MASSIVE from the hub)",
                               tasks=READS_DATA, env="MASSIVE_DATA")
    data_format: str | None = setting(None, "the format of --data (default: from its extension and layout)",
                                      tasks=READS_DATA, choices=FORMATS)
    val_data: str | None = setting(None, "labelled utterances (any format) that replace the validation split",
                                   tasks=SPLITS_DATA)
    test_data: str | None = setting(None, "labelled utterances (any format) that replace the test split",
                                    tasks=SPLITS_DATA)
    val_fraction: float = setting(0.1, "share of each intent drawn for validation, for data without splits",
                                  tasks=SPLITS_DATA, type=float)
    test_fraction: float = setting(0.1, "share of each intent drawn for test, for data without splits",
                                   tasks=SPLITS_DATA, type=float)
    split_seed: int = setting(0, "seed of the drawn split (apart from --seed: every training seed sees one split)",
                              tasks=SPLITS_DATA, type=int)
    label: str | None = setting(None, "the label column to learn (default: scenario for MASSIVE data, as the study; "
                                      "intent for other data)", tasks=(*TRAINING, "check"))
    max_length: int = setting(128, "tokens kept, truncating from the left", tasks=(*TRAINING, "check"), type=int)
    out_dir: str = setting("results", "where results/<run name>.json goes (check, evaluate and suggest: their "
                                      "reports)", tasks=(*TRAINING, "check", "evaluate", "suggest"), recorded=False)
    model: str | None = setting(None, "hub id or folder of the encoder (default: bundled all-MiniLM-L6-v2); for "
                                      "predict, export and serve, the base encoder of a LoRA checkpoint trained from "
                                      "a local folder")
    batch_size: int = setting(None, "training batch size; for predict, export and evaluate, utterances per forward "
                                    "pass; for serve, the most utterances of one dynamically batched pass", type=int,
                              tasks=tuple(t for t in TASKS if t != "check"))
    slots: bool = setting(False, "also train a slot-filling head (MASSIVE's joint task: intent + slots); for "
                                 "predict, require the checkpoint's slots", tasks=(*TRAINING, "predict"),
                          action="store_true")
    source: object = dataclasses.field(default=None, metadata=dict(recorded=False))  # data.source_of(), once


@dataclasses.dataclass
class Config(Common):
    """A training run: what it computes, where it reads and writes, and its name."""
    epochs: int = setting(10, "cross-entropy epochs (phase 2 of supcon/simclr)", type=int)
    lr: float = setting(None, "peak learning rate (top layer under LLRD)", type=float)
    eps: float = setting(1e-8, "AdamW epsilon", type=float)
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases/LayerNorm)", type=float)
    dropout: float = setting(None, "dropout on [CLS] before the head", type=float)
    seed: int = setting(42, "seed of every random stream", type=int)
    llrd: float = setting(1.0, "layer-wise LR decay factor per layer going down (1 = off)", type=float)
    warmup_ratio: float = setting(0.0, "fraction of steps of linear warmup (0 = off)", type=float)
    temperature: float | None = setting(None, "contrastive temperature", tasks=CONTRASTIVE, type=float)
    contrastive_epochs: int = setting(0, "phase-1 epochs", tasks=CONTRASTIVE, type=int)
    contrastive_lr: float | None = setting(None, "phase-1 learning rate", tasks=CONTRASTIVE, type=float)
    lora_rank: int | None = setting(None, "LoRA rank", tasks=ADAPTER, type=int)
    lora_alpha: int | None = setting(None, "LoRA alpha", tasks=ADAPTER, type=int,
                                     implied=("lora_rank", lambda rank: 2 * rank, "2 x rank"))
    lora_targets: str = setting("query-value", "encoder layers that get adapters", tasks=ADAPTER,
                                choices=("query-value", "all-linear"))
    pooling: str = setting("cls", "sentence vector: [CLS] (the study) or the mean over tokens (small data's "
                           "default)", tasks=("baseline", *RECIPE), group=RECIPE_GROUP, choices=("cls", "mean"))
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", tasks=RECIPE, group=RECIPE_GROUP,
                                     type=float)
    rdrop: float = setting(0.0, "R-Drop weight: symmetric KL between two dropout passes", tasks=RECIPE,
                           group=RECIPE_GROUP, type=float)
    ema: float = setting(0.0, "decay of an exponential moving average of the weights, which is evaluated and saved "
                              "(0 = off)", tasks=RECIPE, group=RECIPE_GROUP, type=float)
    aux_weight: float = setting(0.0, "weight of a second head trained on the other label (intent for scenario, "
                                     "scenario for intent)", tasks=RECIPE, group=RECIPE_GROUP, type=float)
    teachers: list | None = setting(None, "comma-separated checkpoint folders whose mean prediction the model is "
                                          "distilled from (with --slots, joint checkpoints: their slots too)",
                                    tasks=RECIPE, group=RECIPE_GROUP, type=lambda s: [x for x in s.split(",") if x])
    distill_weight: float = setting(0.0, "weight of the distillation loss against cross-entropy", tasks=RECIPE,
                                    group=RECIPE_GROUP, type=float, implied=("teachers", lambda _: 0.5, "0.5"))
    distill_temperature: float = setting(1.0, "softmax temperature of distillation", tasks=RECIPE,
                                         group=RECIPE_GROUP, type=float)
    augment: float = setting(0.0, "probability that a training utterance gets one kind of typing noise",
                             tasks=RECIPE, group=RECIPE_GROUP, type=float)
    slot_weight: float | None = setting(None, "weight of the slot loss beside the label's", type=float,
                                        implied=("slots", lambda _: 1.0, "1"))
    crf: bool = setting(False, "with --slots: a linear-chain CRF over the words' slot scores, trained on the "
                               "sequence's likelihood and decoded by Viterbi", action="store_true")
    init_from: str | None = setting(None, "start from this trained checkpoint (a run folder): its encoder, and its "
                                          "heads' rows for the labels and slot types it knows; new ones start from the "
                                          "mean of their examples (continuation.py)")
    freeze_embeddings: bool = setting(False, "keep the word-embedding table as pre-trained (position and type "
                                             "embeddings and the LayerNorm still train): a step then skips the "
                                             "table's dense gradient and AdamW update", action="store_true")
    fast: bool = setting(True, "dynamic padding, length-grouped batches, bf16 autocast, fused AdamW, dropout masks "
                               "from numpy on a CPU; --no-fast is the study's way (pad to max length, fp32)",
                         action=argparse.BooleanOptionalAction)
    bf16: bool = setting(True, "bf16 autocast in training on CPUs with native bf16 that a timed matmul finds faster; "
                               "--no-bf16 trains in fp32 there, to replicate runs from CPUs without it",
                         recorded=False, action=argparse.BooleanOptionalAction)
    cache_dir: str = setting("assets/cache", "where tokenized features are cached", recorded=False)
    save: bool = setting(True, "save the best-validation model and a per-epoch resume state under --checkpoint-dir",
                         recorded=False, action=argparse.BooleanOptionalAction)
    checkpoint_dir: str = setting("checkpoints", "runs are saved in CHECKPOINT_DIR/<run name>/", recorded=False)
    resume: bool = setting(False, "continue an interrupted run from its last completed epoch", recorded=False,
                           action="store_true")
    overwrite: bool = setting(False, "replace a run of the same name that was trained on other data (two data sets "
                                     "of one file name): without it such a run is refused", recorded=False,
                              action="store_true")
    chosen: str | None = dataclasses.field(default=None, metadata=dict(recorded=False))  # small_data(): why
    experiment: str | None = setting(None, "the name of the experiment this run belongs to, written into its results "
                                           "(study.py names each run's)", recorded=False)
    run_name: str = dataclasses.field(default="", metadata=dict(recorded=False))  # run_name(), once valid

    @property
    def results_path(self):
        return os.path.join(self.out_dir, f"{self.run_name}.json")

    @property
    def run_dir(self):
        return os.path.join(self.checkpoint_dir, self.run_name)

    def problem(self):
        """The first thing wrong with these settings, as one line, or None."""
        checks = [
            *data_checks(self),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 2, "--batch-size must be at least 2"),
            (self.max_length >= 2, "--max-length must be at least 2"),
            (self.lr > 0 and self.eps > 0 and self.weight_decay >= 0,
             "--lr and --eps must be positive, --weight-decay >= 0"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (0 < self.llrd <= 1, "--llrd must be in (0, 1]"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.task not in CONTRASTIVE or self.temperature > 0, "--temperature must be positive"),
            (self.task not in CONTRASTIVE or (self.contrastive_epochs >= 0 and self.contrastive_lr > 0),
             "--contrastive-epochs must be >= 0 and --contrastive-lr positive"),
            (0 <= self.label_smoothing < 1 and 0 <= self.ema < 1 and 0 <= self.augment <= 1,
             "--label-smoothing and --ema must be in [0, 1), --augment in [0, 1]"),
            (self.rdrop >= 0 and self.aux_weight >= 0 and self.distill_temperature > 0,
             "--rdrop and --aux-weight must be >= 0, --distill-temperature positive"),
            (0 <= self.distill_weight <= 1 and (self.teachers or not self.distill_weight),
             "--distill-weight must be in [0, 1] and needs --teachers"),
            (self.slots or (self.slot_weight is None and not self.crf),
             "--slot-weight and --crf apply only with --slots"),
            (self.slot_weight is None or self.slot_weight > 0, "--slot-weight must be positive"),
            (self.task not in ADAPTER or (self.lora_rank >= 1 and self.lora_alpha >= 1),
             "--lora-rank and --lora-alpha must be at least 1"),
        ]
        return next((message for ok, message in checks if not ok), None)


@dataclasses.dataclass
class UseConfig(Common):
    """check, evaluate, predict, export or serve: a data set, or a trained checkpoint and how to use it."""
    checkpoint: str | None = setting(None, "a run's checkpoint folder (CHECKPOINT_DIR/<run name>)", group=USE_GROUP,
                                     tasks=CHECKPOINTED)
    split: str | None = setting(None, "the split to score (default: test where the data has splits, else every "
                                      "example)", tasks=("evaluate",), group=USE_GROUP,
                                choices=SPLITS)
    texts: list | None = setting(None, "utterances to classify", tasks=("predict",), group=USE_GROUP,
                                 positional=True, nargs="*")
    input: str | None = setting(None, "file with one utterance per line ('-' for standard input); for suggest also "
                                      "serve's request log", tasks=("predict", "suggest"), group=USE_GROUP)
    count: int = setting(50, "utterances suggested", tasks=("suggest",), group=USE_GROUP, type=int)
    find_label_errors: bool = setting(False, "also list the examples whose label is probably wrong: out-of-fold "
                                             "models and confident learning (labelerrors.py; trains 5 models)",
                                      tasks=("check",), action="store_true")
    top_k: int = setting(3, "labels shown per utterance", tasks=("predict",), group=USE_GROUP, type=int)
    format: str = setting("text", "output format", tasks=("predict",), group=USE_GROUP, choices=("text", "jsonl"))
    backend: str = setting("torch", "what runs the model (onnx backends need --task export first)",
                           tasks=("predict", "serve"), group=USE_GROUP, choices=tuple(BACKENDS))
    min_confidence: float | None = setting(None, "abstain (no label) below this calibrated probability",
                                           tasks=("predict", "serve"), group=USE_GROUP, type=float)
    spelling: bool = setting(False, "correct words unknown to the model to the nearest training word first "
                                    "(spelling.py)", tasks=("predict", "serve"), group=USE_GROUP, action="store_true")
    host: str = setting("127.0.0.1", "address to listen on", tasks=("serve",), group=USE_GROUP)
    port: int = setting(8000, "port", tasks=("serve",), group=USE_GROUP, type=int)
    max_wait_ms: float = setting(0.0, "longest a pass waits for more requests once the queued ones are in (0: a pass "
                                      "takes what queued while the last one ran)", tasks=("serve",), group=USE_GROUP,
                                 type=float)
    max_inputs: int = setting(256, "most utterances in one request", tasks=("serve",), group=USE_GROUP, type=int)
    max_queue: int = setting(4096, "most utterances waiting before requests get 503", tasks=("serve",),
                             group=USE_GROUP, type=int)
    max_body_bytes: int = setting(2**20, "largest request body (413 above it, read no further)", tasks=("serve",),
                                  group=USE_GROUP, type=int)
    threads: int | None = setting(None, "each stream's intra-op threads (default: the cores shared out over the "
                                        "streams and replicas)", tasks=("serve",), group=USE_GROUP, type=int)
    streams: int | None = setting(None, "forward passes run at once, each on its own model thread (default: one per "
                                        "core on a CPU, one on a GPU)", tasks=("serve",), group=USE_GROUP, type=int)
    replicas: int | None = setting(None, "run the app as a Ray Serve deployment of this many replicas, each with its "
                                         "own batching (default: one plain uvicorn process)", tasks=("serve",),
                                   group=USE_GROUP, type=int)
    address: str | None = setting(None, "with --replicas: join the Ray cluster at HOST:PORT (default: a local "
                                        "instance)", tasks=("serve",), group=USE_GROUP)
    log_requests: str | None = setting(None, "append one JSON line per answered /parse to this file (text, intent, "
                                             "confidence, slots, time): it holds what users said; off by default",
                                       tasks=("serve",), group=USE_GROUP)
    log_max_mb: float = setting(100.0, "with --log-requests: the log rotates to FILE.1 .. FILE.5 at this size",
                                tasks=("serve",), group=USE_GROUP, type=float)
    resolve: bool = setting(True, "resolve slot values: dates, times, durations and numbers by Duckling, synonyms to "
                                  "their canonical value (--no-resolve: the words only)", tasks=("predict", "serve"),
                            group=USE_GROUP, action=argparse.BooleanOptionalAction)
    keep_past_times: bool = setting(False, "keep a time of day that Duckling puts earlier today as it is (default: "
                                           "the next such time, unless the utterance speaks of the past)",
                                    tasks=("predict", "serve"), group=USE_GROUP, action="store_true")
    reference_time: str | None = setting(None, "the time relative expressions resolve against, ISO 8601 (default: "
                                               "now)", tasks=("predict",), group=USE_GROUP)
    timezone: str | None = setting(None, "IANA time zone of the reference time (default: the machine's)",
                                   tasks=("predict", "serve"), group=USE_GROUP)
    slot_dims: str | None = setting(None, "JSON {slot type: [Duckling dimensions]} (or CSV slot,dimension) over "
                                          "the built-in map of MASSIVE's types", tasks=("predict", "serve"),
                                    group=USE_GROUP)
    synonyms: str | None = setting(None, "CSV text,canonical value (or a JSON object) over the checkpoint's "
                                         "synonyms", tasks=("predict", "serve"), group=USE_GROUP)

    def problem(self):
        """The first thing wrong with these settings, as one line, or None."""
        positive = [self.max_inputs, self.max_queue, self.max_body_bytes, self.batch_size, self.threads, self.streams,
                    self.replicas]
        checks = [
            *data_checks(self),
            (self.checkpoint or not TASKS[self.task].checkpoint, f"--task {self.task} needs --checkpoint DIR"),
            (self.input or self.task != "suggest", "--task suggest needs --input FILE (utterances, or a request log)"),
            (self.count >= 1, "--count must be at least 1"),
            (self.address is None or self.replicas, "--address applies only with --replicas"),
            (self.log_requests is None or not self.replicas, "--log-requests applies without --replicas (one process "
                                                             "writes the log)"),
            (self.log_max_mb > 0, "--log-max-mb must be positive"),
            (not (self.texts and self.input), "give utterances or --input, not both"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.min_confidence is None or 0 <= self.min_confidence <= 1, "--min-confidence must be in [0, 1]"),
            (0 < self.port < 65536 and self.max_wait_ms >= 0 and all(v is None or v >= 1 for v in positive),
             "--port, --max-wait-ms, --max-inputs, --max-queue, --max-body-bytes, --threads, --streams, --replicas "
             "and --batch-size must be positive"),
        ]
        return next((message for ok, message in checks if not ok), None)


def data_checks(cfg):
    return [(0 <= cfg.val_fraction < 1 and 0 <= cfg.test_fraction < 1 and cfg.val_fraction + cfg.test_fraction < 1,
             "--val-fraction and --test-fraction must be in [0, 1) and leave some data to train on")]


def default_label(cfg):
    """scenario for MASSIVE data that has it (the study's label), intent for data in any other format or without a
    scenario column."""
    src = cfg.source and cfg.source.data
    if src is None or src.format == "hub":
        return "scenario"
    return "scenario" if src.format == "massive" and "scenario" in massive_columns(src.path) else "intent"


def declarations():
    """{name: (field, the config class that declares it)} of every setting once, in the order --help lists them:
    those of every task, of training, of using a model."""
    out = {}
    for kind in (Common, Config, UseConfig):
        for f in dataclasses.fields(kind):
            if "help" in f.metadata and f.name not in out:
                out[f.name] = (f, kind)
    return out


def tasks_of(f, kind):
    """The tasks a setting applies to: as declared, else every task of the config class that declares it."""
    if f.metadata["tasks"]:
        return f.metadata["tasks"]
    return tuple(t for t in TASKS if kind is Common or TASKS[t].trains == (kind is Config))


def shown(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(f, kind):
    """The declared help, with where the default comes from: the task table, another setting, or the declaration."""
    per_task = [f"{t} {shown(TASKS[t].defaults[f.name])}" for t in tasks_of(f, kind) if f.name in TASKS[t].defaults]
    implied, default = f.metadata["implied"], f.default
    if per_task:
        others = [t for t in tasks_of(f, kind) if f.name not in TASKS[t].defaults]
        if default is not None and others:
            per_task.append(f"otherwise {shown(default)}")
        return f"{f.metadata['help']} (default: {', '.join(per_task)})"
    if implied:
        return f"{f.metadata['help']} (default {implied[2]} with --{implied[0].replace('_', '-')})"
    if default not in (None, False, True) and not f.metadata["positional"]:
        return f"{f.metadata['help']} (default {default})"
    return f.metadata["help"]


def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune a BERT-family encoder on MASSIVE (English) intents and slots, "
                                            "or use a trained one.")
    groups = {None: p}
    for name, (f, kind) in declarations().items():
        group = groups.get(f.metadata["group"]) or groups.setdefault(f.metadata["group"],
                                                                      p.add_argument_group(f.metadata["group"]))
        flag = name if f.metadata["positional"] else "--" + name.replace("_", "-")
        group.add_argument(flag, default=None, help=help_text(f, kind), **f.metadata["flag"])
    return p


def run_name(cfg):
    task = TASKS[cfg.task]
    model = os.path.basename(os.path.normpath(cfg.model)) if cfg.model else "minilm"
    # MASSIVE en-US, the study's data, goes unnamed: its run names stay as they were
    data = [cfg.source.data.name] if cfg.source.data.path and cfg.source.data.name != "en-US" else []
    parts = [cfg.task, cfg.label, *data, model, f"lr{cfg.lr:g}", f"bs{cfg.batch_size}", f"e{cfg.epochs}"]
    if task.recipe:
        parts.append(f"llrd{cfg.llrd:g}-wu{cfg.warmup_ratio:g}")
        recipe = {"mean": cfg.pooling == "mean", f"ls{cfg.label_smoothing:g}": cfg.label_smoothing,
                  f"rdrop{cfg.rdrop:g}": cfg.rdrop, f"ema{cfg.ema:g}": cfg.ema,
                  f"aux{cfg.aux_weight:g}": cfg.aux_weight,
                  f"kd{len(cfg.teachers or [])}x{cfg.distill_weight:g}t{cfg.distill_temperature:g}": cfg.teachers,
                  f"aug{cfg.augment:g}": cfg.augment}
        parts += [name for name, on in recipe.items() if on]
    elif cfg.pooling == "mean":  # the baseline's, small data's default
        parts.append("mean")
    if "contrastive" in task.phases:
        parts.append(f"t{cfg.temperature:g}-ce{cfg.contrastive_epochs}-clr{cfg.contrastive_lr:g}")
    if task.adapter:
        parts.append(f"r{cfg.lora_rank}-{cfg.lora_targets}")
    if cfg.slots:
        parts.append(f"slots{cfg.slot_weight:g}" + ("-crf" if cfg.crf else ""))
    if cfg.freeze_embeddings:
        parts.append("frozen-emb")
    if cfg.init_from:
        parts.append(f"from-{checkpoint_digest(cfg.init_from)}")
    if not cfg.fast:
        parts.append("slow")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def checkpoint_digest(path):
    """8 hex digits of the sha256 of a checkpoint's meta.json (a run folder or its best/): what the run names of runs
    that continue from it hold; UserError where there is no checkpoint."""
    for folder in (os.path.join(path, "best"), path):
        if os.path.isfile(os.path.join(folder, "meta.json")):
            with open(os.path.join(folder, "meta.json"), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()[:8]
    raise UserError(f"--init-from {path}: no checkpoint there (no meta.json in it or in its best/)")


def who(tasks):
    """The tasks a flag applies to, as its error message names them."""
    rest = [t for t in tasks if t not in TRAINING]
    if set(TRAINING) <= set(tasks):
        return "training tasks" + (f" and --task {'/'.join(rest)}" if rest else "")
    return f"--task {'/'.join(tasks)}"


def parse_args(argv=None):
    """The Config of a training task or the UseConfig of predict/export/serve; a bad flag exits with one line."""
    parser = build_parser()
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v not in (None, [])}
    name = given.get("task", "baseline")
    task, kind = TASKS[name], Config if TASKS[name].trains else UseConfig
    for key, (f, owner) in declarations().items():
        if key in given and name not in tasks_of(f, owner):
            what = "utterances apply" if key == "texts" else f"--{key.replace('_', '-')} applies"
            parser.error(f"{what} only to {who(tasks_of(f, owner))}")
    values = {}
    for f in dataclasses.fields(kind):
        if "help" not in f.metadata:
            continue
        env = f.metadata["env"] and os.environ.get(f.metadata["env"])
        values[f.name] = given.get(f.name, task.defaults.get(f.name, env or f.default))
    for f in dataclasses.fields(kind):  # defaults that follow from another setting that is on
        implied = f.metadata.get("implied")
        if implied and f.name not in given and values[implied[0]]:
            values[f.name] = implied[1](values[implied[0]])
    cfg = kind(**values)
    problem = cfg.problem()
    if problem:
        parser.error(problem)
    if name in READS_DATA:
        from data import source_of  # lazily: hashing the data's files is no part of building the parser

        cfg.source = source_of(cfg)
    if cfg.label is None:
        cfg.label = default_label(cfg)
    if name == "baseline" and not set(SMALL_DATA_SETTINGS) & set(given):
        small_data(cfg)
    if task.trains:
        cfg.run_name = run_name(cfg)
    return cfg


def small_data(cfg):
    """SMALL_DATA_SETTINGS (SMALL_DATA_CONTINUED with --init-from) in cfg where its data has fewer than SMALL_DATA
    training utterances, and cfg.chosen says so (the run prints it and its results record it); MASSIVE's full data
    keeps the study's settings."""
    from data import train_size  # lazily: only a default baseline run counts its data

    if cfg.source.data.path is None:  # the hub's MASSIVE: the study's data
        return
    n = train_size(cfg.source)
    if n < SMALL_DATA:
        chosen = SMALL_DATA_CONTINUED if cfg.init_from else SMALL_DATA_SETTINGS
        for key, value in chosen.items():
            setattr(cfg, key, value)
        cfg.chosen = (f"{n:,} training utterances, under {SMALL_DATA:,}"
                      + (", continuing from a checkpoint: " if cfg.init_from else ": ")
                      + ", ".join(f"--{k.replace('_', '-')} {v if isinstance(v, str) else format(v, 'g')}"
                                  for k, v in chosen.items())
                      + " instead of the study's (give any of them to choose yourself)")


def settings(cfg):
    """{name: value} of the settings that define what a training run computes, as given (paths as they are)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata["recorded"]}


def recorded_config(cfg):
    """The settings that define a run, as results and checkpoints record them: no machine paths.

    The data file and a local encoder folder are recorded by name; their
    contents are identified by the sha256 values in the results' environment.
    """
    c, src = settings(cfg), cfg.source
    for key, located in (("data", src.data), ("val_data", src.validation), ("test_data", src.test)):
        c[key] = located and located.path and located.file
    c["model"] = cfg.model and (os.path.basename(os.path.normpath(cfg.model)) if os.path.isdir(cfg.model) else cfg.model)
    c["teachers"] = cfg.teachers and [os.path.basename(os.path.normpath(t)) for t in cfg.teachers]
    c["init_from"] = cfg.init_from and os.path.basename(os.path.normpath(cfg.init_from))
    return c


def complete_config(recorded):
    """A recorded config with each setting it predates (the recipe's, slot filling's) at the default its task gets,
    which is that setting's off value."""
    names = [f.name for f in dataclasses.fields(Config) if f.metadata["recorded"]]
    return {**{name: default(name, recorded["task"]) for name in names}, **recorded}


def default(name, task="baseline"):
    """A setting's default for a task, as parse_args gives it."""
    return TASKS[task].defaults.get(name, declarations()[name][0].default)


def implied(name, on=True):
    """The default a setting takes when the setting it follows is on with the value `on` (--slot-weight's with
    --slots: 1)."""
    return declarations()[name][0].metadata["implied"][1](on)


# The accuracy recipe's settings at their off values: which techniques a recorded run turned on.
RECIPE_SETTINGS = {f.name: f.default for f in dataclasses.fields(Config) if f.metadata.get("group") == RECIPE_GROUP}
