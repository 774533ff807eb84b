"""Labelled data, one way: a DataSource (the data, its split settings) -> Examples per split -> Rows with every label
column -> tokenized features, cached -> the label column a run learns.

`source_of` resolves --data, --data-format, --val-data and --test-data once,
with the split settings; every reader is in readers.py. Splits are the data's
own, or drawn (seeded, stratified by intent) where it names none. Each
example becomes a Row with all of its labels (intent, and scenario or any
other column the data has) and its word labels: MASSIVE's word names, one per
word of text.split(), "Other" outside spans, or BIO tags where spans of one
type touch (the slot scheme, recorded in info and in checkpoints). The model
labels each word at its first sub-token; a word whose first sub-token left
truncation cut away (or that gives no token at all) has no position and counts
as predicted `Other`.

Tokenized features are pickled under `assets/cache/` with a key that covers
everything they depend on (data bytes, tokenizer vocabulary, max length, the
split settings), so a changed input never reuses a stale cache, and a cache
that fails its checks is rebuilt. One cache serves every label column and
runs with or without slots. Training batches them (dataloader.py); what uses
a trained model reads and tokenizes with this module alone.
"""
import bisect
import functools
import gzip
import hashlib
import json
import logging
import os
import pickle
import random
from typing import NamedTuple

import readers
from fileio import UserError, atomic_write
from readers import SPLITS, word_offsets
from slots import OUTSIDE

log = logging.getLogger(__name__)

CACHE_VERSION = 3


class DataSource(NamedTuple):
    """The labelled data of a command, resolved once: the data, what replaces its validation and test splits, and
    how a split is drawn for data without one."""
    data: readers.Source
    validation: readers.Source | None  # --val-data
    test: readers.Source | None  # --test-data
    val_fraction: float
    test_fraction: float
    split_seed: int

    def record(self):
        """The data as results and reports record it: its name and sha256, never a machine path."""
        return {"file": self.data.file, "sha256": self.data.sha256}


def source_of(cfg):
    """cfg's DataSource; UserError when a file is missing or its format cannot be told."""
    return DataSource(readers.source(cfg.data, cfg.data_format),
                      cfg.val_data and readers.source(cfg.val_data), cfg.test_data and readers.source(cfg.test_data),
                      cfg.val_fraction, cfg.test_fraction, cfg.split_seed)


def word_labels(text, spans, scheme):
    """The gold word labels of a text, one per word of text.split(): what training learns, and evaluate and export
    score. With scheme "names" MASSIVE's (the type of the first span a word overlaps, "Other" outside; consecutive
    words of one name read as one span), with "bio" BIO tags (each span opens with B-, so two touching spans of one
    type stay two)."""
    out, previous = [], None
    for start, end in word_offsets(text):
        span = next((sp for sp in spans if sp[0] < end and start < sp[1]), None)
        if scheme == "names":
            out.append(OUTSIDE if span is None else span[2])
        else:
            out.append("O" if span is None else ("I-" if span is previous else "B-") + span[2])
        previous = span
    return out


def touching_spans(examples):
    """Whether any example has two spans of one type with no word between them (ATIS has them): such data trains on
    BIO tags, which keep them apart; other data on MASSIVE's word names, which would merge them."""
    return any(a[2] == b[2] and not x.text[a[1]:b[0]].strip() for x in examples for a, b in zip(x.spans, x.spans[1:]))


def read_data(src, data=None, required=SPLITS):
    """(the Dataset of src.data; {split: [Example]}): the data's own splits, a seeded split stratified by intent where
    it has none (draw_split), and src.validation / src.test in place of theirs; UserError where a required split is
    empty. data: src.data's Dataset where it was read already."""
    data = data or readers.read(src.data)
    replaced = {s: readers.read(other) for s, other in (("validation", src.validation), ("test", src.test)) if other}
    given = {x.split for x in data.examples}
    if given == {None}:
        fractions = {s: 0.0 if s in replaced else f for s, f in (("validation", src.val_fraction),
                                                                   ("test", src.test_fraction))}
        splits = draw_split(data.examples, fractions, src.split_seed)
    elif None in given:
        where = next(x.where for x in data.examples if x.split is None)
        raise UserError(f"{where}: no split, where other examples of the data name theirs")
    else:
        splits = {s: [x for x in data.examples if x.split == s] for s in SPLITS}
    for s, other in replaced.items():
        splits[s] = other.examples
        data = data._replace(synonyms={**other.synonyms, **data.synonyms}, files=data.files + other.files)
    for s in required:
        if not splits[s]:
            raise UserError(f"the {s} split is empty" + ("" if s == "train" else
                                                         f"; give --{'val' if s == 'validation' else s}-data PATH"))
    return data, splits


def draw_split(examples, fractions, seed):
    """{split: [Example]} drawn from data without splits, each split in the data's order: per intent, a seeded
    shuffle of its examples gives round(n x fraction) to validation and to test and the rest to train. An intent
    with too few examples for one in each stays in train, with a warning that names it. Depends only on the
    examples, the fractions and the seed."""
    rng = random.Random(seed)
    by_intent = {}
    for i, x in enumerate(examples):
        by_intent.setdefault(x.labels["intent"], []).append(i)
    where, kept = ["train"] * len(examples), []
    for intent in sorted(by_intent):
        group = by_intent[intent]
        rng.shuffle(group)
        counts = {s: int(len(group) * f + 0.5) for s, f in fractions.items()}
        if any(f and not counts[s] for s, f in fractions.items()) or sum(counts.values()) >= len(group):
            kept.append(intent)
            continue
        for s in ("validation", "test"):
            for i in group[:counts[s]]:
                where[i] = s
            group = group[counts[s]:]
    if kept:
        log.warning("%d intent(s) with too few examples to split stay in train: %s", len(kept), ", ".join(kept))
    return {s: [x for x, w in zip(examples, where) if w == s] for s in SPLITS}


def scored_split(src, trained, split=None):
    """(examples, split name) that a trained model is scored on: the data's own split `split` (default test), or,
    for data without splits, every example ("all") unless split is named: then the split is drawn as the run
    whose recorded config is `trained` (arguments.complete_config's) drew it. Only the scored split must hold
    examples."""
    data = readers.read(src.data)
    if {x.split for x in data.examples} == {None} and split is None:
        return data.examples, "all"
    split = split or "test"
    # a split that training read from --val-data or --test-data was drawn with no share of the data
    drawn = src._replace(validation=None, test=None, split_seed=trained["split_seed"],
                         **{f"{s}_fraction": 0.0 if trained[f"{s}_data"] else trained[f"{s}_fraction"]
                            for s in ("val", "test")})
    return read_data(drawn, data, required=(split,))[1][split], split
def split_record(splits):
    """The split as results record it: examples per split and a sha256 of which text went where."""
    digest = hashlib.sha256(json.dumps({s: [x.text for x in splits[s]] for s in SPLITS}).encode()).hexdigest()
    return {**{s: len(splits[s]) for s in SPLITS}, "sha256": digest}


class Row(NamedTuple):
    """One example as features hold it: every label column, the word labels in the data's slot scheme."""
    text: str
    labels: dict  # {column: label name}
    words: list  # one label per word of text.split()
    where: str  # "file:line", for messages


def as_rows(splits, scheme):
    """{split: [Row]}, word labels in the slot scheme."""
    return {s: [Row(x.text, x.labels, word_labels(x.text, x.spans, scheme), x.where) for x in splits[s]]
            for s in SPLITS}


@functools.lru_cache(maxsize=4)
def split_once(src):
    """read_data(src), once per process: the settings that follow the data's size and the features read the same
    examples."""
    return read_data(src)


def train_size(src):
    """The number of training examples of a DataSource, as its split gives them."""
    return len(split_once(src)[1]["train"])


def rows_of(src):
    """(the Dataset, {split: [Example]}, {split: [Row]}, the slot scheme) of a DataSource, read and split once."""
    data, splits = split_once(src)
    scheme = "bio" if touching_spans(x for xs in splits.values() for x in xs) else "names"
    return data, splits, as_rows(splits, scheme), scheme


def read_rows(path):
    """{split: [Row]} of a labelled file or folder with splits of its own (MASSIVE's release file), as training reads
    it: what the benches score on. UserError for data without splits: nothing is drawn here."""
    return rows_of(DataSource(readers.source(path), None, None, 0.0, 0.0, 0))[2]


def build_labels(names):
    """Sorted label names of train ({split: [name]}); a validation/test label that train lacks is scored as wrong
    (the model cannot predict it), with one warning that lists them."""
    labels = sorted(set(names["train"]))
    known = set(labels)
    for s in ("validation", "test"):
        unseen = sorted(set(names[s]) - known)
        if unseen:
            log.warning("%s has %d label(s) that train lacks, scored as wrong: %s", s, len(unseen), ", ".join(unseen))
    return labels


def label_ids(features, column):
    """(the column's sorted label names in train, {split: [label id]}), -100 for a label train lacks: the model
    cannot predict it, so it is scored as wrong. UserError when an example lacks the column."""
    for s in SPLITS:
        names = features[s]["columns"].get(column)
        missing = next((i for i, name in enumerate(names or []) if name is None), None)
        if names is None or missing is not None:
            where = features[s]["where"][missing or 0]
            columns = sorted({c for f in features.values() for c in f["columns"]})
            raise UserError(f"{where}: no '{column}' label; --label chooses from: {', '.join(columns)}")
    names = {s: features[s]["columns"][column] for s in SPLITS}
    labels = build_labels(names)
    index = {y: i for i, y in enumerate(labels)}
    return labels, {s: [index.get(name, -100) for name in names[s]] for s in SPLITS}


def tokenizer_fingerprint(tokenizer):
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, tokenizer.do_lower_case
                                      if hasattr(tokenizer, "do_lower_case") else None, vocab]).encode()).hexdigest()


def cache_key(src, tokenizer, max_length):
    """Everything the features depend on: each data file's bytes and format, the split's settings, the tokenizer and
    the max length."""
    sources = [[src.data.format, src.data.sha256] if src.data.path else src.data.file,
               *([s.format, s.sha256] if s else None for s in (src.validation, src.test))]
    parts = [CACHE_VERSION, sources, src.val_fraction, src.test_fraction, src.split_seed,
             tokenizer_fingerprint(tokenizer), max_length]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def first_subtokens(tokenizer, texts, max_length):
    """For each text, the position of each word's first sub-token in its left-truncated token ids, or -1 where
    truncation cut that sub-token away or the word gives no token.

    Positions come from the untruncated encoding's character offsets: left
    truncation keeps [CLS], the last max_length - 2 tokens and [SEP].
    """
    if not tokenizer.is_fast:
        raise UserError("slot filling needs a fast tokenizer (character offsets of each token)")
    full = tokenizer(texts, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, full["offset_mapping"]):
        starts = [s for s, _ in word_offsets(text)]
        positions, cut = [-1] * len(starts), max(0, len(offsets) - max_length)
        seen = set()
        for pos, (s, e) in enumerate(offsets):
            if s == e:  # a special token
                continue
            word = bisect.bisect_right(starts, s) - 1
            if word not in seen:  # the word's first sub-token: kept unless it lies in the cut
                seen.add(word)
                positions[word] = pos - cut if pos - cut >= 1 else -1
        out.append(positions)
    return out


def tokenize(rows, tokenizer, max_length):
    """{split: {"input_ids": [[int]], "texts": [str], "columns": {column: [label name or None]}, "where": [str],
    "slot_words": [[word label]]}}, unpadded; with a fast tokenizer also "slot_positions" (first_subtokens)."""
    tokenizer.truncation_side = "left"  # the study keeps the end of long utterances
    columns = sorted({c for rs in rows.values() for r in rs for c in r.labels})
    out = {}
    for s in SPLITS:
        texts = [r.text for r in rows[s]]
        out[s] = {"input_ids": tokenizer(texts, truncation=True, max_length=max_length)["input_ids"], "texts": texts,
                  "columns": {c: [r.labels.get(c) for r in rows[s]] for c in columns},
                  "where": [r.where for r in rows[s]], "slot_words": [r.words for r in rows[s]]}
        if tokenizer.is_fast:
            out[s]["slot_positions"] = first_subtokens(tokenizer, texts, max_length)
    return out


def slot_labels(features):
    """The sorted slot names of the training words, "Other" among them."""
    return sorted({name for words in features["train"]["slot_words"] for name in words})


def load_cache(path, key, fields):
    """A cached blob (a dict with "key" and fields; gzip-compressed where path ends in .gz), or None (with a
    warning) when the file is missing, corrupt or foreign."""
    if not os.path.exists(path):
        return None
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            blob = pickle.load(f)
        if not (isinstance(blob, dict) and blob.get("key") == key and all(k in blob for k in fields)
                and ("features" not in fields or set(blob["features"]) == set(SPLITS))):
            raise ValueError("key or layout mismatch")
        return blob
    except Exception as e:
        log.warning("ignoring cache %s (%s); rebuilding it", path, e)
        return None


class Loaded(NamedTuple):
    labels: list  # the sorted label names of train
    features: dict  # {split: tokenized columns of the run: input_ids, texts, labels (ids), with slots their words}
    info: dict  # the data's format, split record (split_record), slot scheme, label columns and synonyms
    cached: dict  # {split: every cached column (tokenize)}: every label column the data has, for label_ids


def load_dataset(cfg, tokenizer, slots=False):
    """Labels, tokenized splits and what the data says of itself for cfg.source (any format readers.py reads),
    cached; with slots, each split also has its word labels and their first sub-tokens."""
    src = cfg.source
    key = cache_key(src, tokenizer, cfg.max_length)
    path = os.path.join(cfg.cache_dir, f"{src.data.name}-{key[:16]}.pkl")
    blob = load_cache(path, key, ("features", "info"))
    if blob is None:
        data, splits, rows, scheme = rows_of(src)
        columns = set.intersection(*(set(x.labels) for xs in splits.values() for x in xs))
        info = {"format": src.data.format, "split": split_record(splits), "slot_scheme": scheme,
                "label_columns": sorted(columns), "synonyms": data.synonyms}
        blob = {"key": key, "features": tokenize(rows, tokenizer, cfg.max_length), "info": info}
        atomic_write(path, lambda f: pickle.dump(blob, f))
        log.info("cached tokenized features in %s", path)
    else:
        log.info("loaded tokenized features from %s", path)
    cached = blob["features"]
    labels, ids = label_ids(cached, cfg.label)
    if slots and "slot_positions" not in cached["train"]:
        raise UserError("slot filling needs a fast tokenizer (character offsets of each token)")
    features = {s: {"input_ids": cached[s]["input_ids"], "labels": ids[s], "texts": cached[s]["texts"],
                    **({k: cached[s][k] for k in ("slot_words", "slot_positions")} if slots else {})} for s in SPLITS}
    return Loaded(labels, features, blob["info"], cached)


def load_features(cfg, tokenizer, slots=False):
    """load_dataset's labels and tokenized splits."""
    return load_dataset(cfg, tokenizer, slots)[:2]
