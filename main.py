"""Fine-tune an encoder on MASSIVE with one of five strategies, in one training loop.

A task is a list of phases; a phase is (loss step, trainable parameters,
epochs, learning rate). baseline, custom and lora have one cross-entropy phase
(custom adds LLRD and warmup, lora wraps the encoder in adapters); supcon and
simclr first train with the contrastive loss on two dropout views, then drop
the projection head and fine-tune with cross-entropy.

The same loop runs data-parallel under torchrun or accelerate launch (one
process per GPU, or CPU processes over gloo): accelerate splits each global
batch of --batch-size over the processes and wraps each phase's model in DDP.

    python main.py --task baseline --data ../shared/data/massive/en-US.jsonl
    python main.py --task predict --checkpoint checkpoints/<run name> "wake me up at seven"
"""
import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object
from scipy.special import softmax
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from arguments import IO_KEYS, complete_config, parse_args, recorded_config
from dataloader import UserError, atomic_write, describe_data, load_features, make_loader
from inference import Predictor
from loss import distill_loss, supcon_loss, symmetric_kl
from model import (apply_lora, build_model, count_parameters, load_tokenizer, model_name, resolve_model,
                   save_checkpoint, weights_sha256)
from spelling import word_counts
from stats import ece, fit_temperature, nll
from utils import (build_optimizer, build_param_groups, coarse_accuracy, cpu_attention, environment,
                   fast_process_settings, macro_f1, set_seed, setup_logging, write_json)

log = logging.getLogger("main")
EVAL_BATCH = 128  # sorted by length; on a 2-core CPU larger batches fall out of cache and run slower


def ce_step(model, batch, cfg):
    """Cross-entropy on the classifier; returns (loss, number of correct predictions).

    With the custom task's recipe: label smoothing; R-Drop (the batch goes
    through twice, in one pass, and the two dropout views are pulled together);
    a second head on the other label; distillation from teachers' probabilities.
    """
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    views = 2 if cfg.rdrop else 1
    if views > 1:
        ids, mask, labels = ids.repeat(2, 1), mask.repeat(2, 1), labels.repeat(2)
    logits = model(ids, mask, aux=True) if cfg.aux_weight else model(ids, mask)
    if cfg.aux_weight:
        logits, aux_logits = logits
    logits = logits.float()
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if cfg.rdrop:
        loss = loss + cfg.rdrop * symmetric_kl(*logits.chunk(2))
    if cfg.aux_weight:
        aux_labels = batch["aux_labels"].repeat(views)
        loss = loss + cfg.aux_weight * F.cross_entropy(aux_logits.float(), aux_labels,
                                                       label_smoothing=cfg.label_smoothing)
    if cfg.teachers:
        soft = distill_loss(logits, batch["teacher_probs"].repeat(views, 1), cfg.distill_temperature)
        loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * soft
    n = batch["labels"].shape[0]
    return loss, (logits[:n].argmax(-1) == batch["labels"]).sum()


def contrastive_step(model, batch, cfg):
    """SupCon (supcon) or SimCLR (simclr) on two dropout views: the batch goes through twice in one pass."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    z = model(ids.repeat(2, 1), mask.repeat(2, 1), project=True).float()  # (2B, H), views differ only by dropout
    features = torch.stack(z.chunk(2), dim=1)  # (B, 2, H)
    labels = batch["labels"] if cfg.task == "supcon" else None
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


def other_labels(cfg, tokenizer, features):
    """The other label's names and its id for every training utterance (intent for scenario, and back)."""
    other = dataclasses.replace(cfg, label="intent" if cfg.label == "scenario" else "scenario")
    names, other_features = load_features(other, tokenizer)
    assert other_features["train"]["texts"] == features["train"]["texts"]  # one file, read in one order
    return names, other_features["train"]["labels"]


def scenario_from_intent(cfg, tokenizer, features, probs):
    """Scenario test accuracy of this intent model, each scenario's probability the sum of its intents'."""
    _, scenario = load_features(dataclasses.replace(cfg, label="scenario"), tokenizer)
    parent = np.full(probs.shape[1], -1)
    parent[features["train"]["labels"]] = scenario["train"]["labels"]  # training pairs: which scenario owns an intent
    acc = coarse_accuracy(probs, parent, scenario["test"]["labels"])
    log.info("scenario accuracy of this intent model (intent probabilities summed per scenario): %.4f", acc)
    return acc


def teacher_probabilities(cfg, labels, train):
    """The teachers' mean probability (N, C) at the distillation temperature, for each training utterance."""
    probs = []
    for path in cfg.teachers:
        teacher = Predictor(path)
        if teacher.labels != labels:
            raise UserError(f"teacher {path} was trained on other labels than this run's --label {cfg.label}")
        probs.append(softmax(teacher.logits(train["texts"]) / cfg.distill_temperature, axis=1))
        log.info("teacher %s: train accuracy %.4f", teacher.name, np.mean(probs[-1].argmax(1) == train["labels"]))
    mean = np.mean(probs, axis=0)
    log.info("teachers' ensemble: train accuracy %.4f", np.mean(mean.argmax(1) == train["labels"]))
    return mean.astype(np.float32).tolist()


def phases(cfg):
    """(name, step, epochs, lr, prefix of the module the phase does not train)."""
    classify = ("classify", ce_step, cfg.epochs, cfg.lr, "projection")
    if cfg.task in ("supcon", "simclr") and cfg.contrastive_epochs:
        return [("contrastive", contrastive_step, cfg.contrastive_epochs, cfg.contrastive_lr, "head"), classify]
    return [classify]


def autocast(device, enabled):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def use_bf16(device):
    """bf16 autocast only on CPUs that do bf16 natively (emulated bf16 is slower than fp32).

    Not on a GPU: a step of 16 short utterances there is bound by kernel
    launches, not by matmuls, and autocast's extra cast kernels made steps 3-4x
    slower (bench/speed.py on an H200); the GPU fast path uses TF32 instead.
    """
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


@torch.inference_mode()
def evaluate(model, loader, device, amp, accel=None):
    """Loss, accuracy, macro-F1 and predictions (in the split's original order) on an evaluation loader.

    With several processes (accel: the Accelerator of a data-parallel run), each
    evaluates its share of every batch and all of them get every prediction
    exactly once (gather_for_metrics drops the samples repeated to even out the
    last batch).
    """
    was_training = model.training
    model.eval()
    loss, preds, all_logits = torch.zeros((), device=device), [], []
    with autocast(device, amp):
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch["input_ids"], batch["attention_mask"]).float()
            if accel is not None and accel.num_processes > 1:
                logits, labels = accel.gather_for_metrics((logits, batch["labels"]))
                batch = {"labels": labels}
            loss += F.cross_entropy(logits, batch["labels"], reduction="sum")
            preds.append(logits.argmax(-1))
            all_logits.append(logits)  # moved off the device once, at the end: no sync per batch
    model.train(was_training)
    order = loader.dataset.indices  # evaluation loaders may sort rows by length
    sorted_preds = torch.cat(preds).tolist()
    out = [0] * len(order)
    for i, p in zip(order, sorted_preds):
        out[i] = p
    labels = loader.dataset.dataset.labels
    n_classes = logits.shape[-1]
    acc = sum(p == y for p, y in zip(out, labels)) / len(labels)
    ordered_logits = torch.empty(len(order), n_classes)
    ordered_logits[torch.tensor(order)] = torch.cat(all_logits).cpu()
    return {"loss": loss.item() / len(labels), "accuracy": acc, "macro_f1": macro_f1(out, labels, n_classes),
            "predictions": out, "logits": ordered_logits.numpy()}


def train_epoch(model, loader, optimizer, scheduler, step, cfg, device, amp, desc, show=True, ema=None):
    """One pass over the training loader; returns mean loss and accuracy (None for contrastive steps).

    Under data parallelism they cover the batches of all processes. ema: an
    AveragedModel updated after every step.
    """
    model.train()
    total_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None if show else True)
    for i, batch in enumerate(bar):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, amp):
            loss, n_correct = step(model, batch, cfg)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
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


def load_resume_state(cfg, world):
    path = os.path.join(cfg.run_dir, "last.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume: nothing to resume in {cfg.run_dir} (no last.pt: the run finished or never started)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:
        raise UserError(f"--resume: {path} is unreadable ({type(e).__name__}); delete it to start over") from None
    settings = [k for k in vars(cfg) if k not in IO_KEYS]  # what the run computes, not where it reads and writes
    written = complete_config(state["config"])
    if {k: written.get(k) for k in settings} != {k: getattr(cfg, k) for k in settings}:
        raise UserError(f"--resume: {path} was written with other settings")
    if isinstance(state["rng"], dict):  # a last.pt from before data-parallel training: one process
        state["rng"], state["world_size"] = [state["rng"]], 1
    if state["world_size"] != world:
        raise UserError(f"--resume: {path} was written by {state['world_size']} process(es), this run has {world}; "
                        f"resume with {state['world_size']} (the batches and random streams depend on it)")
    log.info("resuming %s after %s epoch %d", cfg.run_name, state["phase"], state["epoch"])
    return state


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


def train(cfg):
    set_seed(cfg.seed)
    accel, backend = start_processes()
    device, world = accel.device, accel.num_processes
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch: it must split evenly over {world} "
                        "processes")
    amp = cfg.fast and cfg.bf16 and use_bf16(device)
    if cfg.fast:
        fast_process_settings(device)
    resume = load_resume_state(cfg, world) if cfg.resume else None

    try:
        tokenizer = load_tokenizer(cfg.model)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load encoder '{resolve_model(cfg.model)}': {str(e).splitlines()[0]}") from None
    labels, features = load_features(cfg, tokenizer)
    for i in (0, 1):
        ids = features["train"]["input_ids"][i]
        log.info("example: %r -> %s", tokenizer.decode(ids), labels[features["train"]["labels"][i]])

    extras = {}  # per training example, beside its label
    if cfg.aux_weight:
        aux_names, extras["aux_labels"] = other_labels(cfg, tokenizer, features)
    if cfg.teachers:
        extras["teacher_probs"] = teacher_probabilities(cfg, labels, features["train"])

    net = build_model(cfg.model, len(labels), cfg.dropout, projection=cfg.task in ("supcon", "simclr"),
                      attention=cpu_attention(device, cfg.fast), pooling=cfg.pooling,
                      aux_classes=len(aux_names) if cfg.aux_weight else None)
    n_layers = net.encoder.config.num_hidden_layers
    encoder = {"name": model_name(cfg.model), "weights_sha256": weights_sha256(net.encoder)}
    model = apply_lora(net, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) if cfg.task == "lora" else net
    model.to(device)
    total, trainable = count_parameters(model)
    # the moving average is what gets evaluated and saved; the optimizer trains the model underneath
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)) if cfg.ema else None
    scored = ema.module if ema else model
    if world > 1:  # the same initial weights everywhere (DDP broadcasts them), but each process its own dropout
        torch.manual_seed(cfg.seed + accel.process_index)

    def loader(split, train):
        if train:
            return make_loader(features[split], tokenizer, cfg.batch_size, True, cfg.seed, cfg.fast, cfg.max_length,
                               extras, cfg.augment)
        return make_loader(features[split], tokenizer, EVAL_BATCH, False, cfg.seed, cfg.fast, cfg.max_length)

    train_loader, val_loader, test_loader = loader("train", True), loader("validation", False), loader("test", False)
    generator = train_loader.generator  # orders each epoch; a resumed run restores it
    if world > 1:  # accelerate splits each batch of the plain sampler's order over the processes: no second sharding
        train_loader, val_loader, test_loader = (accel.prepare_data_loader(x) for x in (train_loader, val_loader,
                                                                                       test_loader))
    log.info("run %s: %d train / %d val / %d test examples, %d classes, global batch %d (%d per process), %d steps "
             "per epoch, device %s, bf16 autocast %s, fp32 matmul precision %s", cfg.run_name,
             len(train_loader.dataset), len(features["validation"]["labels"]), len(features["test"]["labels"]),
             len(labels), cfg.batch_size, cfg.batch_size // world, len(train_loader), device, amp,
             torch.get_float32_matmul_precision())
    log.info("parameters: %d total, %d trainable (%.2f%%)", total, trainable, 100 * trainable / total)

    if resume:
        before, history, best = resume["before"], resume["history"], resume["best"]
    else:
        before, history, best = evaluate(scored, test_loader, device, amp, accel), [], {"val_accuracy": -1.0}
        log.info("before training: test loss %.4f, test accuracy %.4f", before["loss"], before["accuracy"])

    for phase_index, (phase, step, epochs, lr, frozen) in enumerate(phases(cfg)):
        if resume and phase_index < resume["phase_index"]:
            continue
        if phase == "classify" and net.projection is not None:
            net.projection = None  # the projection head serves only the contrastive phase
        resting = getattr(net, frozen, None)  # the module this phase does not train
        if resting is not None:  # out of the optimizer, and out of DDP's gradient bookkeeping
            resting.requires_grad_(False)
        groups = build_param_groups(list(model.named_parameters()), lr, cfg.weight_decay, cfg.llrd, n_layers)
        total_steps = epochs * len(train_loader)
        optimizer, scheduler = build_optimizer(groups, cfg.eps, cfg.fast, total_steps, cfg.warmup_ratio)
        first_epoch = 1
        if resume and phase_index == resume["phase_index"]:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if ema:
                ema.load_state_dict(resume["ema"])
            set_rng_state(resume["rng"][accel.process_index], generator)
            first_epoch = resume["epoch"] + 1
        # each phase wraps only what it trains, so DDP never waits for gradients of an idle module
        trained = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        for epoch in range(first_epoch, epochs + 1):
            t0 = time.perf_counter()
            train_loss, train_acc = train_epoch(trained, train_loader, optimizer, scheduler, step, cfg, device, amp,
                                                f"{phase} {epoch}/{epochs}", show=accel.is_main_process, ema=ema)
            seconds = time.perf_counter() - t0
            row = {"phase": phase, "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                   "lr": scheduler.get_last_lr()[0], "seconds": seconds}
            if phase == "classify":
                val = evaluate(scored, val_loader, device, amp, accel)
                row.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_macro_f1=val["macro_f1"])
                if val["accuracy"] > best["val_accuracy"]:
                    state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
                    best = {"val_accuracy": val["accuracy"], "epoch": epoch, "state": state}
            history.append(row)
            log.info("%s epoch %d/%d: train loss %.4f%s%s, %.1fs", phase, epoch, epochs, train_loss,
                     f", train acc {train_acc:.4f}" if train_acc is not None else "",
                     f", val loss {row['val_loss']:.4f}, val acc {row['val_accuracy']:.4f}" if "val_loss" in row else "",
                     seconds)
            if cfg.save:  # everything an interrupted run needs to continue exactly as if it never stopped
                rngs = gather_object([rng_state(generator)])  # every process's, in process order
                state = {"config": vars(cfg), "phase_index": phase_index, "phase": phase, "epoch": epoch,
                         "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "ema": ema and ema.state_dict(), "rng": rngs,
                         "world_size": world, "history": history, "best": best, "before": before}
                if accel.is_main_process:
                    atomic_write(os.path.join(cfg.run_dir, "last.pt"), lambda f: torch.save(state, f))
        del trained  # a DDP wrapper left alive would keep reducing gradients in the next phase
        if resting is not None:
            resting.requires_grad_(True)

    test = evaluate(scored, test_loader, device, amp, accel)
    model.load_state_dict(best["state"])
    best_test = evaluate(model, test_loader, device, amp, accel)
    # temperature scaling of the saved (best) model, fitted on validation only
    temperature = fit_temperature(evaluate(model, val_loader, device, amp, accel)["logits"],
                                  features["validation"]["labels"])
    y_test = features["test"]["labels"]
    raw, scaled = softmax(best_test["logits"], axis=1), softmax(best_test["logits"] / temperature, axis=1)
    calibration = {"temperature": temperature, "test_nll": nll(best_test["logits"], y_test),
                   "test_nll_calibrated": nll(best_test["logits"], y_test, temperature),
                   "test_ece": ece(raw, y_test), "test_ece_calibrated": ece(scaled, y_test),
                   # per test utterance, for reliability diagrams: the best model's top probability, and if it was right
                   "test_confidence": raw.max(1).round(5).tolist(),
                   "test_confidence_calibrated": scaled.max(1).round(5).tolist(),
                   "test_correct": (raw.argmax(1) == np.array(y_test)).tolist()}
    log.info("calibration: temperature %.3f; test NLL %.4f -> %.4f, ECE %.4f -> %.4f", temperature,
             calibration["test_nll"], calibration["test_nll_calibrated"], calibration["test_ece"],
             calibration["test_ece_calibrated"])
    log.info("test: loss %.4f, accuracy %.4f, macro-F1 %.4f (final); accuracy %.4f at the best validation epoch %d",
             test["loss"], test["accuracy"], test["macro_f1"], best_test["accuracy"], best["epoch"])

    seconds = {ph: [r["seconds"] for r in history if r["phase"] == ph] for ph in ("contrastive", "classify")}
    results = {
        "run_name": cfg.run_name,
        "task": cfg.task,
        "config": recorded_config(cfg),
        "environment": {**environment(device), "encoder": encoder, "data": describe_data(cfg.data), "bf16": amp,
                        "world_size": world, "backend": backend,
                        "parameters_total": total, "parameters_trainable": trainable,
                        "trainable_percent": 100 * trainable / total},
        "labels": labels,
        "before_test_loss": before["loss"],
        "before_test_accuracy": before["accuracy"],
        "history": history,
        "seconds_per_epoch": sum(seconds["classify"]) / len(seconds["classify"]),
        "contrastive_seconds_per_epoch": (sum(seconds["contrastive"]) / len(seconds["contrastive"])
                                          if seconds["contrastive"] else None),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "best_test_loss": best_test["loss"],
        "best_test_accuracy": best_test["accuracy"],
        "best_test_macro_f1": best_test["macro_f1"],
        "calibration": calibration,
        **({"best_test_scenario_accuracy_from_intent": scenario_from_intent(cfg, tokenizer, features,
                                                                            softmax(best_test["logits"], axis=1))}
           if cfg.label == "intent" else {}),
        "test_predictions": test["predictions"],
        "test_labels": features["test"]["labels"],
    }
    if not accel.is_main_process:
        return results
    if cfg.save:  # the best-validation model, which is what the model now holds
        meta = {"run_name": cfg.run_name, "labels": labels, "config": results["config"], "best_epoch": best["epoch"],
                "best_test_accuracy": best_test["accuracy"], "max_length": cfg.max_length,
                "temperature": temperature}
        save_checkpoint(model, tokenizer, meta, os.path.join(cfg.run_dir, "best"),
                        words=word_counts(features["train"]["texts"]))
        os.remove(os.path.join(cfg.run_dir, "last.pt"))  # finished: nothing left to resume
        log.info("saved the best-validation model (epoch %d) in %s", best["epoch"], os.path.join(cfg.run_dir, "best"))
    write_json(cfg.results_path, results)
    log.info("wrote %s", cfg.results_path)
    return results


def read_utterances(cfg):
    if cfg.texts:
        return cfg.texts
    if cfg.input and cfg.input != "-":
        try:
            with open(cfg.input, encoding="utf-8", errors="replace") as f:
                return f.read().splitlines()
        except OSError as e:
            raise UserError(f"cannot read --input {cfg.input}: {e.strerror}") from None
    if cfg.input is None and sys.stdin.isatty():
        raise UserError("nothing to classify: give utterances, --input FILE, or pipe lines into standard input")
    return sys.stdin.read().splitlines()


def predict(cfg):
    """Top-k labels with calibrated probabilities for each utterance, from a saved checkpoint; returns the records."""
    predictor = Predictor(cfg.checkpoint, cfg.backend, base_model=cfg.model, spelling=cfg.spelling)
    texts = read_utterances(cfg)
    records = []
    for text, top in zip(texts, predictor.top_k(texts, cfg.top_k, cfg.min_confidence, cfg.batch_size)):
        records.append({"text": text, "predictions": [{"label": t["label"], "probability": t["score"]} for t in top]})
        if cfg.format == "jsonl":
            print(json.dumps(records[-1], ensure_ascii=False))
        else:
            cells = [f"{t['label']} {t['score']:.3f}" for t in top] or ["(empty)" if not text.strip() else "(abstain)"]
            print("\t".join([text] + cells))
    return records


def main(argv=None):
    cfg = parse_args(argv)
    setup_logging()
    if cfg.task == "export":
        from export import export  # onnx and onnxruntime only where they are used

        return export(cfg)
    if cfg.task == "serve":
        from serve import serve

        return serve(cfg)
    return predict(cfg) if cfg.task == "predict" else train(cfg)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
