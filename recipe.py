"""The accuracy recipe's helpers beside the loop: the other label's targets, the teachers' probabilities (cached), and
scenario accuracy from an intent model (one intent-to-scenario map, for training and bench/ensemble.py alike)."""
import gzip
import hashlib
import json
import logging
import os
import pickle

import numpy as np
import torch
from scipy.special import softmax

from data import label_ids, load_cache
from fileio import UserError, atomic_write
from inference import Predictor, checkpoint_folder
from model import HEADS
from slots import OUTSIDE, crf_log_marginals

log = logging.getLogger("recipe")


def other_labels(cfg, cached):
    """The other label's names and its id for every training utterance (intent for scenario, and back), from the
    cached features of every label column (data.Loaded.cached)."""
    names, ids = label_ids(cached, "intent" if cfg.label == "scenario" else "scenario")
    return names, ids["train"]


def teacher_probabilities(cfg, labels, train, slots=None):
    """The teachers' mean probability (N, C) at the distillation temperature, for each training utterance; with
    slots (the run's slot names) also, per utterance, (T, S) float16: at each word's first sub-token the teachers'
    mean slot distribution of that word (word_distributions), zero elsewhere (else None).

    Cached under --cache-dir, keyed by the teachers' trained heads, the training texts, the temperature and the slot
    names: each teacher reads the training texts once, not once per student.
    """
    folders = [checkpoint_folder(path) for path in cfg.teachers]
    digest = hashlib.sha256(json.dumps([train["texts"], cfg.distill_temperature, slots]).encode())
    for path, folder in zip(cfg.teachers, folders):
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        if meta["labels"] != labels:
            raise UserError(f"teacher {path} was trained on other labels than this run's --label {cfg.label}")
        if slots and meta.get("slots") != slots:
            raise UserError(f"teacher {path} has {'other slot names' if meta.get('slots') else 'no slot head'}: "
                            f"a run with --slots distils from joint teachers trained on the same data")
        for name in ("meta.json", *(f"{head}.pt" for head, h in HEADS.items() if h.saved)):  # new with every training
            if os.path.exists(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(f.read())
    key = digest.hexdigest()
    # compressed: a confident teacher's slot distributions are mostly zeros (9 MB of float16 for en-US)
    path = os.path.join(cfg.cache_dir, f"teachers-{key[:16]}.pkl.gz")
    blob = load_cache(path, key, ("probs", "slot_words"))
    if blob is None:
        # loading a teacher initialises its heads from the global random stream before its weights replace them:
        # forked, so that the student's initial weights do not depend on whether this cache existed
        with torch.random.fork_rng():
            blob = {"key": key, **dict(zip(("probs", "slot_words"), teachers_on(cfg, folders, train, slots)))}
        atomic_write(path, lambda f: f.write(gzip.compress(pickle.dumps(blob), compresslevel=6)))
        log.info("cached the teachers' probabilities in %s", path)
    else:
        log.info("loaded the teachers' probabilities from %s", path)
    if not slots:
        return blob["probs"].tolist(), None
    tables = []  # each word's distribution at its first sub-token
    for words, ids, positions in zip(blob["slot_words"], train["input_ids"], train["slot_positions"]):
        table = np.zeros((len(ids), len(slots)), dtype=np.float16)
        kept = [w for w, pos in enumerate(positions) if pos >= 0]
        table[[positions[w] for w in kept]] = words[kept]
        tables.append(table)
    return blob["probs"].tolist(), tables


def teachers_on(cfg, folders, train, slots):
    """The teachers' mean probability (N, C) and, with slots, per utterance their mean (W, S) float16 over its words
    (else None), computed: each teacher reads the training texts once."""
    probs, words = [], []
    for folder in folders:
        teacher = Predictor(folder)
        logits, (token_logits, positions) = teacher.forward_texts(train["texts"], slots=bool(slots))
        probs.append(softmax(logits / cfg.distill_temperature, axis=1))
        log.info("teacher %s: train accuracy %.4f", teacher.name, np.mean(probs[-1].argmax(1) == train["labels"]))
        if slots:
            words.append(word_distributions(teacher, token_logits, positions, cfg.distill_temperature))
    mean = np.mean(probs, axis=0).astype(np.float32)
    log.info("teachers' ensemble: train accuracy %.4f", np.mean(mean.argmax(1) == train["labels"]))
    if not slots:
        return mean, None
    index = {name: i for i, name in enumerate(slots)}
    per_word = [np.mean([w[i] for w in words], axis=0).astype(np.float16) for i in range(len(train["texts"]))]
    right = sum(int(d.argmax() == index[g]) for dist, gold in zip(per_word, train["slot_words"]) for d, g in zip(dist, gold))
    log.info("teachers' ensemble: train word slot accuracy (each word's most probable slot) %.4f",
             right / sum(map(len, train["slot_words"])))
    return mean, per_word


def word_distributions(teacher, token_logits, positions, temperature=1.0):
    """For each utterance of a teacher's slot scores (W, S) (Predictor.forward_texts): each word's probability of
    each slot at the temperature, the CRF's marginals where there is one (slots.crf_log_marginals), else the softmax
    of the word's scores; a word without a first sub-token is Other for certain, as predictions have it."""
    crf = None if teacher.crf is None else torch.from_numpy(teacher.crf).float() / temperature
    other = np.eye(len(teacher.slots), dtype=np.float32)[teacher.slots.index(OUTSIDE)]
    out = []
    for t, p in zip(token_logits, positions):
        at = [q for q in p if q >= 0]
        e = torch.from_numpy(np.asarray(t, dtype=np.float32)[at]) / temperature  # (words kept, S)
        if crf is None:
            probs = torch.softmax(e, -1)
        else:
            probs = crf_log_marginals(e[None], torch.ones(1, len(at), dtype=torch.bool), crf)[0].exp()
        rows = iter(probs.numpy())
        out.append(np.array([next(rows) if q >= 0 else other for q in p], dtype=np.float32).reshape(-1, len(other)))
    return out


def scenario_of_intents(pairs, intents, scenarios):
    """(F,) the index in `scenarios` of each intent's scenario, as (intent, scenario) name pairs of training
    utterances say (-1: an intent no pair names)."""
    owner = dict(pairs)
    return np.array([scenarios.index(owner[i]) if i in owner else -1 for i in intents])


def coarse_probabilities(probs, parent, n_coarse):
    """Coarse-label probabilities (N, n_coarse) of a fine-label model: each the sum of its fine labels'.

    probs: (N, F) fine-label probabilities; parent: (F,) the coarse label of each fine
    label (-1: none seen). E.g. MASSIVE intents (<scenario>_<action>) summed into
    their scenario.
    """
    probs, parent = np.asarray(probs), np.asarray(parent)
    coarse = np.zeros((len(probs), n_coarse))
    for f in np.flatnonzero(parent >= 0):
        coarse[:, parent[f]] += probs[:, f]
    return coarse


def coarse_accuracy(probs, parent, coarse_labels):
    """Accuracy on gold coarse labels (N,) of a fine-label model, by coarse_probabilities."""
    n = max(int(np.max(parent)) + 1, int(np.max(coarse_labels)) + 1)
    return float(np.mean(coarse_probabilities(probs, parent, n).argmax(1) == np.asarray(coarse_labels)))


def scenario_from_intent(intents, features, cached, probs):
    """Scenario test accuracy of an intent model (intents: its labels; features: its run's; probs: (N, F) on test),
    each scenario's probability the sum of its intents'; cached: every label column (data.Loaded.cached)."""
    scenarios, scenario = label_ids(cached, "scenario")
    pairs = [(intents[i], scenarios[s]) for i, s in zip(features["train"]["labels"], scenario["train"])]
    acc = coarse_accuracy(probs, scenario_of_intents(pairs, intents, scenarios), scenario["test"])
    log.info("scenario accuracy of this intent model (intent probabilities summed per scenario): %.4f", acc)
    return acc
