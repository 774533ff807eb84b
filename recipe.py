"""The accuracy recipe's helpers beside the loop: the other label's targets, the teachers' probabilities, and
scenario accuracy from an intent model (one intent-to-scenario map, for training and bench/ensemble.py alike)."""
import dataclasses
import logging

import numpy as np
from scipy.special import softmax

from dataloader import UserError, load_features
from inference import Predictor

log = logging.getLogger("recipe")


def other_labels(cfg, tokenizer, features):
    """The other label's names and its id for every training utterance (intent for scenario, and back)."""
    other = dataclasses.replace(cfg, label="intent" if cfg.label == "scenario" else "scenario")
    names, other_features = load_features(other, tokenizer)
    assert other_features["train"]["texts"] == features["train"]["texts"]  # one file, read in one order
    return names, other_features["train"]["labels"]


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


def scenario_from_intent(cfg, tokenizer, intents, features, probs):
    """Scenario test accuracy of an intent model (intents: its labels; probs: (N, F) on test), each scenario's
    probability the sum of its intents'."""
    scenarios, scenario = load_features(dataclasses.replace(cfg, label="scenario"), tokenizer)
    pairs = [(intents[i], scenarios[s]) for i, s in zip(features["train"]["labels"], scenario["train"]["labels"])]
    acc = coarse_accuracy(probs, scenario_of_intents(pairs, intents, scenarios), scenario["test"]["labels"])
    log.info("scenario accuracy of this intent model (intent probabilities summed per scenario): %.4f", acc)
    return acc
