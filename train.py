"""The one training loop of every task, and the one evaluate().

A task is a list of phases (arguments.TASKS); a Phase is its name, loss step,
epochs and learning rate, and it trains every head of model.HEADS that
belongs to it. baseline, custom and lora have one classification phase
(custom adds LLRD and warmup, lora wraps the encoder in adapters); supcon and
simclr first train with the contrastive loss on two dropout views, then drop
the projection head and classify.

The model returns named outputs and a classification step sums named loss
terms (LOSS_TERMS); evaluate() scores each output the model gives. So a new
head adds a model output, a loss term and its metrics, and leaves the epoch
loop, resume and the results record as they are.

The same loop runs data-parallel under torchrun or accelerate launch (one
process per GPU, or CPU processes over gloo): accelerate splits each global
batch of --batch-size over the processes and each phase's model is wrapped in DDP.
"""
import dataclasses
import json
import logging
import os
import random
import time
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object
from scipy.special import softmax
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from arguments import TASKS, complete_config, recorded_config, settings
from continuation import init_from
from data import load_dataset, slot_labels
from dataloader import make_loader, token_slot_labels
from fileio import UserError, atomic_write, write_json
from loss import crf_token_loss, distill_loss, slot_distill_loss, supcon_loss, symmetric_kl, token_cross_entropy
from model import (HEADS, LR_SCALES, apply_lora, build_model, count_parameters, cpu_dropout, load_tokenizer, model_name,
                   resolve_model, save_checkpoint, weights_sha256)
from recipe import other_labels, scenario_from_intent, teacher_probabilities
from metrics import score
from slots import word_slots
from spelling import word_counts
from stats import ece, fit_temperature, nll
from optim import build_optimizer, build_param_groups
from utils import autocast, cpu_attention, environment, fast_process_settings, set_seed, use_bf16

log = logging.getLogger("train")
EVAL_BATCH = 128  # sorted by length; on a 2-core CPU larger batches fall out of cache and run slower


# ---- loss steps: (model, batch, cfg) -> (loss, number of correct predictions or None) ----

def label_term(out, batch, cfg):
    """Cross-entropy on the utterance label (with the recipe's label smoothing)."""
    return F.cross_entropy(out["logits"], batch["labels"], label_smoothing=cfg.label_smoothing)


def rdrop_term(out, batch, cfg):
    """R-Drop: the batch's two dropout views (its halves) pulled together."""
    return cfg.rdrop * symmetric_kl(*out["logits"].chunk(2)) if cfg.rdrop else None


def aux_term(out, batch, cfg):
    """The second head's cross-entropy on the other label."""
    if not cfg.aux_weight:
        return None
    return cfg.aux_weight * F.cross_entropy(out["aux_logits"], batch["aux_labels"], label_smoothing=cfg.label_smoothing)


def slot_term(out, batch, cfg):
    """Slot filling: token cross-entropy at each word's first sub-token (or with --crf the likelihood of the
    words' slot sequence), weighted by --slot-weight."""
    if not cfg.slots:
        return None
    if cfg.crf:
        return cfg.slot_weight * crf_token_loss(out["slot_logits"], batch["slot_labels"], out["slot_crf"])
    return cfg.slot_weight * token_cross_entropy(out["slot_logits"], batch["slot_labels"], cfg.label_smoothing)


LOSS_TERMS = (label_term, rdrop_term, aux_term, slot_term)  # summed in this order; None: the term is off


def classify_step(model, batch, cfg):
    """The classification phase: the sum of LOSS_TERMS, mixed with distillation from teachers where given (of
    the intent, and with --slots of the slots too).

    With R-Drop every per-example tensor of the batch goes through twice, in one pass.
    """
    n = batch["labels"].shape[0]
    if cfg.rdrop:
        batch = {k: v.repeat(2, *[1] * (v.dim() - 1)) for k, v in batch.items()}
    out = {k: v.float() for k, v in model(batch["input_ids"], batch["attention_mask"]).items()}
    loss = None
    for term in LOSS_TERMS:
        value = term(out, batch, cfg)
        if value is not None:
            loss = value if loss is None else loss + value
    if cfg.teachers:
        soft = distill_loss(out["logits"], batch["teacher_probs"], cfg.distill_temperature)
        if cfg.slots:  # the slots' distillation weighed against the intent's as their cross-entropies are
            soft = soft + cfg.slot_weight * slot_distill_loss(out["slot_logits"], batch["teacher_slot_probs"],
                                                              batch["slot_labels"], out.get("slot_crf"),
                                                              cfg.distill_temperature)
        loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * soft
    return loss, (out["logits"][:n].argmax(-1) == batch["labels"][:n]).sum()


def contrastive_step(model, batch, cfg):
    """SupCon (supcon) or SimCLR (simclr) on two dropout views: the batch goes through twice in one pass."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    z = model(ids.repeat(2, 1), mask.repeat(2, 1), project=True)["projection"].float()  # (2B, H): views differ by dropout
    features = torch.stack(z.chunk(2), dim=1)  # (B, 2, H)
    labels = batch["labels"] if TASKS[cfg.task].supervised else None
    anchors = None
    if dist.is_initialized() and dist.get_world_size() > 1:
        # this process's examples are anchors against the candidates of all processes. The gather must carry
        # gradient: its backward sums every process's gradient into the features they came from (a plain
        # all_gather with the local tensor put back would give 1/N of it).
        # Gathered as (B, 2H) rows: the gradient that reaches the gather is then contiguous. The gather's backward
        # on gloo scatters into empty_like(gradient), which keeps a transposed gradient's strides, and the
        # scatter fills it as if it were contiguous (found by tests/test_distributed.py).
        b, rank = features.shape[0], dist.get_rank()
        features = torch.cat(dist_nn.all_gather(features.flatten(1))).view(-1, *features.shape[1:])  # (N*B, 2, H)
        if labels is not None:
            gathered = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        anchors = slice(rank * b, (rank + 1) * b)
    return supcon_loss(features, labels, cfg.temperature, anchors), None


class Phase(NamedTuple):
    name: str  # "contrastive" or "classify": it trains the heads of model.HEADS that belong to it
    step: Callable  # (model, batch, cfg) -> (loss, number of correct predictions or None)
    epochs: int
    lr: float


def phases(cfg):
    """The task's phases (arguments.TASKS) that have epochs, in order."""
    known = {"contrastive": Phase("contrastive", contrastive_step, cfg.contrastive_epochs, cfg.contrastive_lr),
             "classify": Phase("classify", classify_step, cfg.epochs, cfg.lr)}
    return [known[name] for name in TASKS[cfg.task].phases if known[name].epochs]


# ---- evaluation ----

def summary(metrics):
    """The numbers of an evaluation that history rows and results record: numbers and tables of numbers, not the
    per-utterance lists and arrays."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, np.ndarray))}


@torch.inference_mode()
def evaluate(model, loader, device, amp, accel=None):
    """Loss and metrics of every output the model gives, on an evaluation loader, in the split's original order.

    Returns loss, accuracy and macro-F1 (numbers) and per utterance its
    prediction (a list) and logits (an array); with a slot head also slot F1,
    exact match and per-slot F1, and per utterance its word slots (read as
    slots.word_slots does, by Viterbi with a CRF) and exact-match
    correctness (slots.slot_metrics). With several processes
    (accel: the Accelerator of a data-parallel run), each evaluates its share
    of every batch and all of them get every prediction exactly once
    (gather_for_metrics drops the samples repeated to even out the last batch).
    """
    was_training = model.training
    model.eval()
    loss, all_logits, all_slots, crf = torch.zeros((), device=device), [], [], None
    with autocast(device, amp):
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["input_ids"], batch["attention_mask"])
            logits, labels = out["logits"].float(), batch["labels"]
            slots = out["slot_logits"].float() if "slot_logits" in out else None  # (B, T, S)
            crf = out.get("slot_crf")
            if accel is not None and accel.num_processes > 1:
                if slots is not None:
                    slots = accel.pad_across_processes(slots, dim=1)
                    logits, labels, slots = accel.gather_for_metrics((logits, labels, slots))
                else:
                    logits, labels = accel.gather_for_metrics((logits, labels))
            loss += F.cross_entropy(logits, labels, reduction="sum")
            all_logits.append(logits)  # moved off the device once, at the end: no sync per batch
            all_slots.append(slots)
    model.train(was_training)
    order = torch.tensor(loader.dataset.indices)  # evaluation loaders may sort rows by length
    data = loader.dataset.dataset
    logits = in_order(torch.cat(all_logits), order)
    preds, words = logits.argmax(-1).tolist(), None
    if all_slots and all_slots[0] is not None:
        width = max(s.shape[1] for s in all_slots)
        token_logits = in_order(torch.cat([F.pad(s, (0, 0, 0, width - s.shape[1])) for s in all_slots]), order)
        crf = crf.float().cpu().numpy() if crf is not None else None
        words = (data.slot_words, [word_slots(t, pos, data.slot_names, crf)
                                   for t, pos in zip(token_logits.numpy(), data.slot_positions)])
    scores = score(preds, data.labels, logits.shape[-1], words, data.slot_scheme)
    return {"loss": loss.item() / len(data.labels), "accuracy": scores.pop("accuracy"),
            "macro_f1": scores.pop("macro_f1"), "predictions": preds, "logits": logits.numpy(), **scores}


def in_order(rows, order):
    """rows (N, ...) of a loader that visited the split in `order`, back in the split's order, on the CPU."""
    rows = rows.cpu()
    out = torch.empty_like(rows)
    out[order] = rows
    return out


# ---- one epoch ----

class Optim(NamedTuple):
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped after every optimizer step


def train_epoch(model, loader, step, optim, run, desc):
    """One pass over the training loader with a phase's loss step; returns mean loss and accuracy (None for
    contrastive steps).

    run: what every step needs besides its batch (cfg, device, amp: bf16
    autocast, ema: an AveragedModel updated after every step or None, show:
    whether this process draws the progress bar). Under data parallelism the
    numbers cover the batches of all processes.
    """
    model.train()
    device = run.device
    total_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None if run.show else True)
    for i, batch in enumerate(bar):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, run.amp):
            loss, n_correct = step(model, batch, run.cfg)
        loss.backward()
        optim.optimizer.step()
        optim.scheduler.step()
        optim.optimizer.zero_grad(set_to_none=True)
        if run.ema is not None:
            run.ema.update_parameters(model)
        n = batch["labels"].shape[0]
        total_loss += loss.detach() * n
        if n_correct is not None:  # contrastive steps have no accuracy
            correct += n_correct
        seen += n
        if i % 50 == 0:  # reading the loss forces a device sync, so not every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if dist.is_initialized() and dist.get_world_size() > 1:  # the epoch's numbers over all processes
        totals = torch.stack([total_loss, correct.float(), torch.tensor(float(seen), device=device)])
        dist.all_reduce(totals)
        total_loss, correct, seen = totals[0], totals[1], totals[2].item()
    acc = correct.item() / seen if n_correct is not None else None
    return total_loss.item() / seen, acc


# ---- the run: set up once, shared by every step below ----

class Data(NamedTuple):
    tokenizer: object
    labels: list  # the label names, sorted
    features: dict  # {split: tokenized columns} (data.tokenize)
    extras: dict  # per training example beside its label: the other label, token slot labels, teachers' outputs
    aux_names: list | None  # the other label's names, with --aux-weight
    slots: list | None  # the slot head's names, None without one
    info: dict  # what the data says of itself: format, split, slot scheme, synonyms (data.load_dataset)
    cached: dict  # every label column of every split (data.Loaded.cached)


class Models(NamedTuple):
    net: torch.nn.Module  # the Classifier
    model: torch.nn.Module  # what the optimizer trains: the Classifier, or its LoRA wrapper
    ema: AveragedModel | None
    encoder: dict  # name and weights' sha256
    parameters: tuple  # (total, trainable)


@dataclasses.dataclass(kw_only=True)
class Run:
    cfg: object
    accel: Accelerator
    backend: str | None  # the process group's, None for one process
    amp: bool  # bf16 autocast
    resume: dict | None  # last.pt's state when resuming
    data: Data
    models: Models
    loaders: dict  # train, validation, test
    generator: torch.Generator  # orders each training epoch; a resumed run restores it
    select: str  # the validation metric that picks the best epoch

    device = property(lambda self: self.accel.device)
    world = property(lambda self: self.accel.num_processes)
    show = property(lambda self: self.accel.is_main_process)  # one process draws progress bars and writes files
    net = property(lambda self: self.models.net)
    model = property(lambda self: self.models.model)
    ema = property(lambda self: self.models.ema)

    @property
    def scored(self):
        """What is evaluated and saved: the moving average of the weights where there is one."""
        return self.ema.module if self.ema else self.model


def start_processes():
    """The Accelerator of this run: one process, or one of several launched by torchrun / accelerate launch.

    Without a GPU it is told so (cpu=True): otherwise accelerate treats a CPU
    launch of several processes as one process, and each would train alone.
    """
    accel = Accelerator(cpu=not torch.cuda.is_available(),
                        dataloader_config=DataLoaderConfiguration(split_batches=True))
    if not accel.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)  # one process speaks for the run
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    backend = dist.get_backend() if dist.is_initialized() else None
    if launched != accel.num_processes:
        log.warning("LAUNCHED AS %d PROCESSES BUT RUNNING AS %d: each process would train alone", launched,
                    accel.num_processes)
    log.info("world size %d (%s), this is process %d, device %s", accel.num_processes, backend or "no process group",
             accel.process_index, accel.device)
    return accel, backend


def load_data(cfg):
    """The run's Data: tokenizer, labels, features and the training-only columns beside them."""
    try:
        tokenizer = load_tokenizer(cfg.model)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load encoder '{resolve_model(cfg.model)}': {str(e).splitlines()[0]}") from None
    labels, features, info, cached = load_dataset(cfg, tokenizer, slots=cfg.slots)
    for i in (0, 1):
        ids = features["train"]["input_ids"][i]
        log.info("example: %r -> %s", tokenizer.decode(ids), labels[features["train"]["labels"][i]])
    extras, aux_names, slots = {}, None, None
    if cfg.aux_weight:
        aux_names, extras["aux_labels"] = other_labels(cfg, cached)
    if cfg.slots:
        slots = slot_labels(features)
        extras["slot_labels"] = token_slot_labels(features["train"], slots)
        log.info("%d slot names: %s", len(slots), " ".join(slots))
    if cfg.teachers:
        extras["teacher_probs"], teacher_slots = teacher_probabilities(cfg, labels, features["train"], slots)
        if teacher_slots is not None:
            extras["teacher_slot_probs"] = teacher_slots
    return Data(tokenizer, labels, features, extras, aux_names, slots, info, cached)


def build(cfg, data, device):
    """The run's Models: the Classifier, what trains it, its moving average, the encoder's identity and size."""
    task = TASKS[cfg.task]
    net = build_model(cfg.model, len(data.labels), cfg.dropout, projection="contrastive" in task.phases,
                      attention=cpu_attention(device, cfg.fast), pooling=cfg.pooling,
                      aux_classes=len(data.aux_names) if data.aux_names else None,
                      slot_classes=len(data.slots) if data.slots else None, crf=cfg.crf)
    if cfg.init_from:  # the checkpoint's encoder, and its rows for what it knows
        init_from(cfg.init_from, net, data.tokenizer, data.labels, data.slots, data.features["train"])
    encoder = {"name": model_name(cfg.model), "weights_sha256": weights_sha256(net.encoder)}
    if cfg.freeze_embeddings:  # a batch touches a few hundred of the table's rows; its gradient would be dense
        net.encoder.get_input_embeddings().requires_grad_(False)
    if cfg.fast and device.type == "cpu":
        cpu_dropout(net)
    model = apply_lora(net, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) if task.adapter else net
    model.to(device)
    # the moving average is what gets evaluated and saved; the optimizer trains the model underneath
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema else None
    return Models(net, model, ema, encoder, count_parameters(model))


def make_loaders(cfg, data, accel):
    """{split: loader} (training batches of cfg.batch_size, split over the processes) and the training generator."""
    loaders = {"train": make_loader(data.features["train"], data.tokenizer, cfg.batch_size, True, cfg.seed, cfg.fast,
                                    cfg.max_length, data.extras, cfg.augment, data.slots)}
    for split in ("validation", "test"):
        loaders[split] = make_loader(data.features[split], data.tokenizer, EVAL_BATCH, False, cfg.seed, cfg.fast,
                                     cfg.max_length, slot_names=data.slots, slot_scheme=data.info["slot_scheme"])
    generator = loaders["train"].generator
    if accel.num_processes > 1:  # accelerate splits each batch of the plain sampler's order: no second sharding
        loaders = {split: accel.prepare_data_loader(x) for split, x in loaders.items()}
    return loaders, generator


def refuse_other_data(cfg):
    """UserError where this run's results file or checkpoint holds a run of other data under the same name (two
    data sets of one file name), unless --overwrite: checked before anything is written."""
    ours = cfg.source.data.sha256
    if cfg.overwrite or ours is None:
        return
    for path, where in ((cfg.results_path, ("environment", "data", "sha256")),
                        (os.path.join(cfg.run_dir, "best", "meta.json"), ("data", "sha256"))):
        try:
            with open(path) as f:
                theirs = json.load(f)
            for key in where:
                theirs = theirs[key]
        except (OSError, ValueError, KeyError, TypeError):  # absent, unreadable, or from before data was recorded
            continue
        if theirs != ours:
            raise UserError(f"{path} holds a run of another {cfg.source.data.file} (sha256 {theirs[:12]}, this one "
                            f"{ours[:12]}): give --overwrite to replace it, or --out-dir and --checkpoint-dir elsewhere")


def set_up(cfg):
    """Processes, data, model and loaders of a run (and last.pt's state when resuming), in a Run."""
    refuse_other_data(cfg)
    if cfg.chosen:
        log.info("settings chosen for small data: %s", cfg.chosen)
    set_seed(cfg.seed)
    accel, backend = start_processes()
    if cfg.batch_size % accel.num_processes:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch: it must split evenly over "
                        f"{accel.num_processes} processes")
    amp = cfg.fast and cfg.bf16 and use_bf16(accel.device)
    if accel.num_processes > 1:  # a timing decides it, which could differ by process: the main process's holds
        amp = broadcast_object_list([amp])[0]
    if cfg.fast:
        fast_process_settings(accel.device)
    resume = load_resume_state(cfg, accel.num_processes) if cfg.resume else None
    data = load_data(cfg)
    models = build(cfg, data, accel.device)
    if accel.num_processes > 1:  # the same initial weights everywhere (DDP broadcasts them), each its own dropout
        torch.manual_seed(cfg.seed + accel.process_index)
    loaders, generator = make_loaders(cfg, data, accel)
    run = Run(cfg=cfg, accel=accel, backend=backend, amp=amp, resume=resume, data=data, models=models,
              loaders=loaders, generator=generator, select="exact_match" if data.slots else "accuracy")
    log.info("run %s: %d train / %d val / %d test examples, %d classes, global batch %d (%d per process), %d steps "
             "per epoch, device %s, bf16 autocast %s, fp32 matmul precision %s", cfg.run_name,
             len(loaders["train"].dataset), len(data.features["validation"]["labels"]),
             len(data.features["test"]["labels"]), len(data.labels), cfg.batch_size, cfg.batch_size // run.world,
             len(loaders["train"]), run.device, amp, torch.get_float32_matmul_precision())
    log.info("parameters: %d total, %d trainable (%.2f%%)", *models.parameters,
             100 * models.parameters[1] / models.parameters[0])
    return run


# ---- resume state: written after every epoch, read back by --resume ----

class Mark(NamedTuple):
    """Where an epoch ended: last.pt records it, and a resumed run continues after it."""
    phase_index: int
    phase: str
    epoch: int


def rng_state(generator):
    """This process's random states; generator: the training sampler's, which orders each epoch."""
    # dropout on a GPU draws from the CUDA generators, not the CPU one
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(), "numpy": np.random.get_state(),
            "loader": generator.get_state()}


def set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():  # absent in runs saved before it was kept, or on a CPU
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    generator.set_state(state["loader"])


def save_resume_state(run, mark, optim, progress):
    """last.pt after an epoch: everything an interrupted run needs to continue exactly as if it never stopped.

    restore_resume_state reads it back.
    """
    rngs = gather_object([rng_state(run.generator)])  # every process's, in process order
    state = {"config": vars(run.cfg), **mark._asdict(), "model": run.model.state_dict(),
             "optimizer": optim.optimizer.state_dict(), "scheduler": optim.scheduler.state_dict(),
             "ema": run.ema and run.ema.state_dict(), "rng": rngs, "world_size": run.world, **progress}
    if run.show:
        atomic_write(os.path.join(run.cfg.run_dir, "last.pt"), lambda f: torch.save(state, f))


def restore_resume_state(run, state, optim):
    """The mirror of save_resume_state within the phase it was saved in; returns the epoch to continue with."""
    run.model.load_state_dict(state["model"])
    optim.optimizer.load_state_dict(state["optimizer"])
    optim.scheduler.load_state_dict(state["scheduler"])
    if run.ema:
        run.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"][run.accel.process_index], run.generator)
    return state["epoch"] + 1


def load_resume_state(cfg, world):
    """last.pt of this run, checked against this run's settings and world size; UserError if it cannot continue."""
    path = os.path.join(cfg.run_dir, "last.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume: nothing to resume in {cfg.run_dir} (no last.pt: the run finished or never started)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:
        raise UserError(f"--resume: {path} is unreadable ({type(e).__name__}); delete it to start over") from None
    mine, written = settings(cfg), complete_config(state["config"])  # what the run computes, not where it writes
    if {k: written.get(k) for k in mine} != mine:
        raise UserError(f"--resume: {path} was written with other settings")
    source = state["config"].get("source")  # absent in a last.pt from before the data source was recorded
    if source is not None and source.data.sha256 != cfg.source.data.sha256:
        raise UserError(f"--resume: {path} was written on other data ({source.data.file}, sha256 "
                        f"{(source.data.sha256 or 'none')[:12]}); resume on the data it trained on")
    if isinstance(state["rng"], dict):  # a last.pt from before data-parallel training: one process
        state["rng"], state["world_size"] = [state["rng"]], 1
    if state["world_size"] != world:
        raise UserError(f"--resume: {path} was written by {state['world_size']} process(es), this run has {world}; "
                        f"resume with {state['world_size']} (the batches and random streams depend on it)")
    log.info("resuming %s after %s epoch %d", cfg.run_name, state["phase"], state["epoch"])
    return state


# ---- the phases ----

def run_phases(run):
    """Every phase's epochs, continuing where last.pt left off; returns the progress: before, history and best."""
    resume = run.resume
    if resume:
        progress = {k: resume[k] for k in ("before", "history", "best")}
    else:
        before = evaluate(run.scored, run.loaders["test"], run.device, run.amp, run.accel)
        log.info("before training: test loss %.4f, test accuracy %.4f", before["loss"], before["accuracy"])
        progress = {"before": before, "history": [], "best": {"score": -1.0}}
    for index, phase in enumerate(phases(run.cfg)):
        if resume and index < resume["phase_index"]:
            continue
        run_phase(run, index, phase, progress, resume if resume and index == resume["phase_index"] else None)
    return progress


def run_phase(run, index, phase, progress, resume=None):
    """One phase: its optimizer and schedule over the parameters it trains (model.HEADS says which heads are its
    own), then its epochs."""
    cfg, net, model = run.cfg, run.net, run.model
    heads = net.heads()
    if phase.name == "classify":  # the contrastive phase's heads (the projection) serve only that phase
        for name in heads:
            if HEADS[name].phase == "contrastive":
                setattr(net, name, None)
    resting = [m for name, m in heads.items() if HEADS[name].phase != phase.name and getattr(net, name) is not None]
    for module in resting:  # out of the optimizer, and out of DDP's gradient bookkeeping
        module.requires_grad_(False)
    optim = phase_optim(run, phase)
    first = restore_resume_state(run, resume, optim) if resume else 1
    # each phase wraps only what it trains, so DDP never waits for gradients of an idle module
    trained = model if run.world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    for epoch in range(first, phase.epochs + 1):
        run_epoch(run, trained, phase, epoch, optim, progress)
        if cfg.save:
            save_resume_state(run, Mark(index, phase.name, epoch), optim, progress)
    del trained  # a DDP wrapper left alive would keep reducing gradients in the next phase
    for module in resting:
        module.requires_grad_(True)


def phase_optim(run, phase):
    """A phase's AdamW over what trains in it, with layer-wise lr decay and model.HEADS' lr scales, and its
    schedule over the phase's steps."""
    cfg = run.cfg
    groups = build_param_groups(list(run.model.named_parameters()), phase.lr, cfg.weight_decay, cfg.llrd,
                                run.net.encoder.config.num_hidden_layers, LR_SCALES)
    return Optim(*build_optimizer(groups, cfg.eps, cfg.fast, phase.epochs * len(run.loaders["train"]),
                                  cfg.warmup_ratio))


def run_epoch(run, trained, phase, epoch, optim, progress):
    """One epoch of training, then (in a classification phase) validation, keeping the best epoch's weights.

    Appends the epoch's row to progress["history"].
    """
    desc = f"{phase.name} {epoch}/{phase.epochs}"
    t0 = time.perf_counter()
    train_loss, train_acc = train_epoch(trained, run.loaders["train"], phase.step, optim, run, desc)
    seconds = time.perf_counter() - t0
    row = {"phase": phase.name, "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
           "lr": optim.scheduler.get_last_lr()[0], "seconds": seconds}
    if phase.name == "classify":
        val = evaluate(run.scored, run.loaders["validation"], run.device, run.amp, run.accel)
        row.update({f"val_{k}": v for k, v in summary(val).items()})
        if val[run.select] > progress["best"]["score"]:
            state = {k: v.detach().clone() for k, v in run.scored.state_dict().items()}
            progress["best"] = {"score": val[run.select], "epoch": epoch, "val": summary(val), "state": state}
    progress["history"].append(row)
    numbers = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in row.items()
                        if k.startswith(("train_", "val_")) and isinstance(v, float))
    log.info("%s: %s, %.1fs", desc, numbers, seconds)


# ---- the end: final and best-epoch test, calibration, the results record, the checkpoint ----

def calibration_report(logits, labels, temperature):
    """NLL and ECE on test before and after temperature scaling, and per utterance the top probability and whether
    it was right (for reliability diagrams)."""
    raw, scaled = softmax(logits, axis=1), softmax(logits / temperature, axis=1)
    known = np.array(labels) >= 0  # a label train lacks has no likelihood; it counts as wrong in ECE
    return {"temperature": temperature, "test_nll": nll(logits[known], np.array(labels)[known]),
            "test_nll_calibrated": nll(logits[known], np.array(labels)[known], temperature),
            "test_ece": ece(raw, labels), "test_ece_calibrated": ece(scaled, labels),
            "test_confidence": raw.max(1).round(5).tolist(),
            "test_confidence_calibrated": scaled.max(1).round(5).tolist(),
            "test_correct": (raw.argmax(1) == np.array(labels)).tolist()}


def final_evaluation(run, best):
    """Test of the final weights; then the best epoch's weights loaded, tested and calibrated on validation."""
    device, amp, accel, loaders = run.device, run.amp, run.accel, run.loaders
    test = evaluate(run.scored, loaders["test"], device, amp, accel)
    run.model.load_state_dict(best["state"])
    best_test = evaluate(run.model, loaders["test"], device, amp, accel)
    val_logits, val_labels = (evaluate(run.model, loaders["validation"], device, amp, accel)["logits"],
                              np.array(run.data.features["validation"]["labels"]))
    temperature = fit_temperature(val_logits[val_labels >= 0], val_labels[val_labels >= 0])
    calibration = calibration_report(best_test["logits"], run.data.features["test"]["labels"], temperature)
    log.info("calibration: temperature %.3f; test NLL %.4f -> %.4f, ECE %.4f -> %.4f", temperature,
             calibration["test_nll"], calibration["test_nll_calibrated"], calibration["test_ece"],
             calibration["test_ece_calibrated"])
    log.info("test (final): %s; at the best validation epoch %d: %s", numbers_line(test), best["epoch"],
             numbers_line(best_test))
    return {"test": test, "best_test": best_test, "calibration": calibration}


def numbers_line(metrics):
    return ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in summary(metrics).items() if isinstance(v, float))


def environment_record(run):
    total, trainable = run.models.parameters
    data = {**run.cfg.source.record(), "format": run.data.info["format"], "split": run.data.info["split"]}
    return {**environment(run.device), "encoder": run.models.encoder, "data": data, "bf16": run.amp,
            "world_size": run.world, "backend": run.backend, "parameters_total": total,
            "parameters_trainable": trainable, "trainable_percent": 100 * trainable / total}


def timing_record(history):
    seconds = {ph: [r["seconds"] for r in history if r["phase"] == ph] for ph in ("contrastive", "classify")}
    return {"seconds_per_epoch": sum(seconds["classify"]) / len(seconds["classify"]),
            "contrastive_seconds_per_epoch": (sum(seconds["contrastive"]) / len(seconds["contrastive"])
                                              if seconds["contrastive"] else None)}


def results_record(run, progress, final):
    """The results file's record, from its pieces: settings, environment, history, final test, best-epoch test,
    calibration, and per test utterance the final model's outputs (docs/results-format.md)."""
    cfg, best, test, best_test = run.cfg, progress["best"], final["test"], final["best_test"]
    per_utterance = {k: v for k, v in test.items() if isinstance(v, list)}  # not the logits
    scenario = {}
    if cfg.label == "intent" and "scenario" in run.data.info["label_columns"]:
        scenario["best_test_scenario_accuracy_from_intent"] = scenario_from_intent(
            run.data.labels, run.data.features, run.data.cached, softmax(best_test["logits"], axis=1))
    return {
        "run_name": cfg.run_name,
        **({"experiment": cfg.experiment} if cfg.experiment else {}),
        **({"settings_chosen": cfg.chosen} if cfg.chosen else {}),
        "task": cfg.task,
        "config": recorded_config(cfg),
        "environment": environment_record(run),
        "labels": run.data.labels,
        "before_test_loss": progress["before"]["loss"],
        "before_test_accuracy": progress["before"]["accuracy"],
        "history": progress["history"],
        **timing_record(progress["history"]),
        **{f"test_{k}": v for k, v in summary(test).items()},
        "best_epoch": best["epoch"],
        **{f"best_val_{k}": best["val"][k] for k in dict.fromkeys(["accuracy", run.select])},
        **{f"best_test_{k}": v for k, v in summary(best_test).items()},
        "calibration": final["calibration"],
        **scenario,
        **{f"test_{k}": v for k, v in per_utterance.items()},
        "test_labels": run.data.features["test"]["labels"],
    }


def save(run, results):
    """The best-validation model (which the model now holds) as the run's checkpoint, and the results file."""
    cfg = run.cfg
    if cfg.save:
        meta = {"run_name": cfg.run_name, "labels": run.data.labels, "config": results["config"],
                "best_epoch": results["best_epoch"], "best_test_accuracy": results["best_test_accuracy"],
                "max_length": cfg.max_length, "temperature": results["calibration"]["temperature"],
                "adapter": TASKS[cfg.task].adapter, "heads": [n for n in run.net.heads() if HEADS[n].saved],
                "data": cfg.source.record(),
                **({"slots": run.data.slots, "slot_scheme": run.data.info["slot_scheme"]} if run.data.slots else {}),
                **({"synonyms": run.data.info["synonyms"]} if run.data.info["synonyms"] else {})}
        save_checkpoint(run.model, run.data.tokenizer, meta, os.path.join(cfg.run_dir, "best"),
                        words=word_counts(run.data.features["train"]["texts"]))
        os.remove(os.path.join(cfg.run_dir, "last.pt"))  # finished: nothing left to resume
        log.info("saved the best-validation model (epoch %d) in %s", results["best_epoch"],
                 os.path.join(cfg.run_dir, "best"))
    write_json(cfg.results_path, results)
    log.info("wrote %s", cfg.results_path)


def train(cfg):
    """Train, test and save one run as cfg says; returns its results record."""
    run = set_up(cfg)  # processes, data, model, loaders
    progress = run_phases(run)  # every phase's epochs, resuming where last.pt says
    final = final_evaluation(run, progress["best"])  # test, and calibration of the best epoch's weights
    results = results_record(run, progress, final)
    if run.show:
        save(run, results)
    return results
