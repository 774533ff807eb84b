"""`check --find-label-errors`: the examples whose label is most probably wrong, by confident learning.

Every example gets a probability for each label from a model that never saw
it: the examples are dealt into FOLDS folds, stratified by label, and for each
fold the one training loop trains on the other folds (which also pick the
epoch), with the settings small data gets. Then confident learning
(Northcutt et al., 2021, as cleanlab's `confident_learning` filter): a label's
threshold is the mean probability the models give it on the examples labelled
so; an example is an issue when the label it is most probably, among those over
their threshold, is not the one it has, and neither is its most probable label
overall. Issues are ranked by the probability of their given label, lowest
first (cleanlab's self-confidence). The few lines are written here
rather than taken from cleanlab, which is AGPL-3.0; bench/labelerrors.py
measures both on planted flips. Slot spans are not checked.
"""
import json
import logging
import os
import random
import tempfile

import numpy as np

log = logging.getLogger("labelerrors")
FOLDS = 5


def deal(labels, folds, seed=0):
    """A fold for every example, each label's examples dealt round-robin after a seeded shuffle."""
    rng, out = random.Random(seed), [0] * len(labels)
    by_label = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    for y in sorted(by_label):
        group = by_label[y]
        rng.shuffle(group)
        for k, i in enumerate(group):
            out[i] = k % folds
    return out


def out_of_fold(texts, labels, column, flags=(), folds=FOLDS):
    """(the label names, probabilities (N, C) of every example from a model trained without its fold). flags: more
    main.py flags for every fold's run (the encoder, or a test's tiny settings)."""
    import main as cli  # lazily: checking data imports nothing of training unless asked to train
    from arguments import parse_args
    from inference import Predictor, calibrated

    names = sorted(set(labels))
    fold = deal(labels, folds)
    probs = np.zeros((len(texts), len(names)))
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(folds):
            path = os.path.join(tmp, f"fold{k}.jsonl")
            # the other folds train, and validate too: a held-out validation fold would pick an early epoch of
            # near-uniform probabilities wherever it is already predicted right, and the fold scored has no say
            rows = [(t, y, p) for t, y, f in zip(texts, labels, fold)
                    for p in (("test",) if f == k else ("train", "dev"))]
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"utt": t, column: y, "intent": y, "partition": p}, ensure_ascii=False) + "\n"
                             for t, y, p in rows)
            args = ["--data", path, "--label", column, *flags, "--out-dir", os.path.join(tmp, "results"),
                    "--checkpoint-dir", os.path.join(tmp, "ckpt"), "--cache-dir", os.path.join(tmp, "cache")]
            log.info("fold %d of %d: training without it", k + 1, folds)
            cli.main(args)
            held = [i for i in range(len(texts)) if fold[i] == k]
            predictor = Predictor(parse_args(args).run_dir)
            columns = [names.index(n) for n in predictor.labels]
            # the raw softmax: each fold's temperature, fitted on its own small validation fold, would flatten or
            # sharpen its examples apart from the others', and the thresholds are taken across folds
            probs[np.ix_(held, columns)] = calibrated(predictor.logits([texts[i] for i in held]), 1.0)
    return names, probs


def label_issues(probs, given):
    """The indices of the examples whose given label (ids (N,)) is probably wrong, most probably first, and for each
    the label it more probably is: confident learning on out-of-fold probabilities (N, C)."""
    probs, given = np.asarray(probs), np.asarray(given)
    thresholds = np.array([probs[given == j, j].mean() if np.any(given == j) else np.inf
                           for j in range(probs.shape[1])])
    confident = np.where(probs >= thresholds, probs, -1.0)  # each label's probability where it is over its threshold
    likely = confident.argmax(1)
    rows = np.arange(len(given))
    # as cleanlab: an example whose most probable label overall is its own is no issue, whatever the thresholds say
    issue = (confident[rows, likely] >= 0) & (likely != given) & (probs.argmax(1) != given)
    # the least probable given label first (cleanlab's self-confidence): 64.4% of planted flips at N against 58.3%
    # ranked by how much more probable the other label is (bench/labelerrors.py)
    ranked = [int(i) for i in np.argsort(probs[rows, given], kind="stable") if issue[i]]
    return ranked, likely[ranked]


def find(examples, column, flags=(), folds=FOLDS):
    """check's finding: the examples of a data set whose `column` label is probably wrong, with the label each more
    probably is, as {"kind", "message", "items"}."""
    texts, labels = [x.text for x in examples], [x.labels[column] for x in examples]
    names, probs = out_of_fold(texts, labels, column, flags, folds)
    given = np.array([names.index(y) for y in labels])
    ranked, likely = label_issues(probs, given)
    items = [f'{examples[i].where} "{texts[i]}": {labels[i]} -> {names[j]} ({probs[i, given[i]]:.2f} against '
             f'{probs[i, j]:.2f})' for i, j in zip(ranked, likely)]
    return {"kind": "label_error", "message": f"{len(items)} example(s) whose {column} is probably wrong (out-of-fold "
                                              f"models, confident learning), most probably first", "items": items,
            "ranked": [{"where": examples[i].where, "text": texts[i], "given": labels[i], "suggested": names[j],
                        "given_probability": float(probs[i, given[i]]), "suggested_probability": float(probs[i, j])}
                       for i, j in zip(ranked, likely)]}
