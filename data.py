"""MASSIVE (English) data: read the release file or the hub, tokenize once, cache.

The official release is JSON lines with `partition` (train/dev/test), `utt`,
`scenario`, `intent` and `annot_utt` (the utterance with its slot spans,
`wake me up at [time : five am]`); `dev` becomes `validation`. With slots,
every word of `utt.split()` gets one slot name, `Other` outside spans, as
MASSIVE's own code reads it; the model labels each word at its first
sub-token, and a word whose first sub-token left truncation cut away (or that
gives no token at all) has no position and counts as predicted `Other`.

Tokenized features are pickled under `assets/cache/` with a key that covers
everything they depend on (data bytes, tokenizer vocabulary, max length, label
column, slots or not), so a changed input never reuses a stale cache, and a
cache that fails its checks is rebuilt. Training batches them (dataloader.py);
what uses a trained model reads and tokenizes with this module alone.
"""
import bisect
import gzip
import hashlib
import json
import logging
import os
import pickle
import random
import types
from typing import NamedTuple

import readers
from fileio import UserError, atomic_write, file_sha256
from readers import word_offsets
from slots import OUTSIDE

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
HUB_ID, HUB_CONFIG = "AmazonScience/massive", "en-US"
CACHE_VERSION = 2


def word_names(text, spans):
    """MASSIVE's word slot names of a text: one per word of text.split(), the type of the first span it overlaps,
    "Other" outside spans. Consecutive words of one name read as one span."""
    out = []
    for start, end in word_offsets(text):
        out.append(next((slot for s, e, slot in spans if s < end and start < e), OUTSIDE))
    return out


def word_tags(text, spans):
    """BIO tags of a text's words: each span opens with B-, so two touching spans of one type stay two."""
    out, previous = [], None
    for start, end in word_offsets(text):
        span = next((sp for sp in spans if sp[0] < end and start < sp[1]), None)
        out.append("O" if span is None else ("I-" if span is previous else "B-") + span[2])
        previous = span
    return out


def touching_spans(examples):
    """Whether any example has two spans of one type with no word between them (ATIS has them): such data trains on
    BIO tags, which keep them apart; other data on MASSIVE's word names, which would merge them."""
    return any(a[2] == b[2] and not x.text[a[1]:b[0]].strip() for x in examples for a, b in zip(x.spans, x.spans[1:]))


def word_slots(utt, annot):
    """MASSIVE's word slot names of a row (utt, annot_utt); ValueError when they disagree on the words."""
    plain, spans = readers.parse_massive(annot)
    if len(plain.split()) != len(utt.split()):
        raise ValueError(f"annot_utt has {len(plain.split())} words, utt has {len(utt.split())}")
    return word_names(plain, spans)


def hub_dataset():
    """MASSIVE en-US from the Hugging Face hub (needs `datasets` and a network), as readers.Dataset."""
    try:
        import datasets  # lazily: machines without it can still train from a file

        try:
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG)
        except RuntimeError:  # datasets >= 4 runs no loading scripts; the hub's parquet conversion needs none
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, revision="refs/convert/parquet")
    except Exception as e:
        raise UserError(f"could not load {HUB_ID} ({HUB_CONFIG}) from the hub ({type(e).__name__}); "
                        "offline, pass --data PATH/en-US.jsonl (the MASSIVE release file) or set MASSIVE_DATA") from None
    names = {k: ds["train"].features[k].names for k in ("intent", "scenario")}  # the hub stores ClassLabel ids
    examples = []
    for split in SPLITS:
        for n, r in enumerate(ds[split]):
            row = {"utt": r["utt"], "annot_utt": r["annot_utt"]}
            where = f"hub:{HUB_ID}/{HUB_CONFIG}/{split}:{n}"
            examples.append(readers.Example(r["utt"], {k: names[k][r[k]] for k in names},
                                            readers.massive_spans(row, where), split, where))
    return readers.Dataset(examples, {}, "massive", [])


def read_data(cfg, data=None):
    """(the Dataset of cfg.data, or of the hub without it; {split: [Example]}): the data's own splits, a seeded
    split stratified by intent where it has none (draw_split), and --val-data / --test-data in place of theirs.
    data: the Dataset of cfg.data where it was read already."""
    if data is None:
        data = readers.read(cfg.data, cfg.data_format) if cfg.data else hub_dataset()
    replaced = {s: readers.read(p) for s, p in (("validation", cfg.val_data), ("test", cfg.test_data)) if p}
    given = {x.split for x in data.examples}
    if given == {None}:
        fractions = {s: 0.0 if s in replaced else f for s, f in (("validation", cfg.val_fraction),
                                                                   ("test", cfg.test_fraction))}
        splits = draw_split(data.examples, fractions, cfg.split_seed)
    elif None in given:
        where = next(x.where for x in data.examples if x.split is None)
        raise UserError(f"{where}: no split, where other examples of the data name theirs")
    else:
        splits = {s: [x for x in data.examples if x.split == s] for s in SPLITS}
    for s, other in replaced.items():
        splits[s] = other.examples
        data = data._replace(synonyms={**other.synonyms, **data.synonyms}, files=data.files + other.files)
    for s in SPLITS:
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


def scored_split(path, data_format, trained, split=None):
    """(examples, split name) that a trained model is scored on: the data's own split `split` (default test), or,
    for data without splits, every example ("all") unless split is named: then the split is drawn as the run
    whose recorded config is `trained` drew it."""
    data = readers.read(path, data_format) if path else hub_dataset()
    if {x.split for x in data.examples} == {None} and split is None:
        return data.examples, "all"
    spec = types.SimpleNamespace(data=path, data_format=data_format, val_data=None, test_data=None,
                                 val_fraction=trained.get("val_fraction", 0.1),
                                 test_fraction=trained.get("test_fraction", 0.1),
                                 split_seed=trained.get("split_seed", 0))
    return read_data(spec, data)[1][split or "test"], split or "test"


def split_record(splits):
    """The split as results record it: examples per split and a sha256 of which text went where."""
    digest = hashlib.sha256(json.dumps({s: [x.text for x in splits[s]] for s in SPLITS}).encode()).hexdigest()
    return {**{s: len(splits[s]) for s in SPLITS}, "sha256": digest}


def as_rows(splits, label, slots, bio):
    """{split: [(text, label name)]}, with slots (text, label name, word labels): MASSIVE's word names, or BIO tags
    where bio. UserError when an example lacks the label column."""
    rows = {}
    for s in SPLITS:
        rows[s] = []
        for x in splits[s]:
            if label not in x.labels:
                columns = sorted({c for xs in splits.values() for y in xs for c in y.labels})
                raise UserError(f"{x.where}: no '{label}' label; --label chooses from: {', '.join(columns)}")
            row = (x.text, x.labels[label])
            rows[s].append(row + ((word_tags if bio else word_names)(x.text, x.spans),) if slots else row)
    return rows


def read_jsonl(path, label, slots=False):
    """A MASSIVE release file as {split: [(text, label name)]}, with slots (text, label name, word names)."""
    return as_rows(split_by_partition(readers.read_massive(path)), label, slots, bio=False)


def split_by_partition(data):
    return {s: [x for x in data.examples if x.split == s] for s in SPLITS}


def build_labels(splits):
    """Sorted label names of train; a validation/test label that train lacks is scored as wrong (the model cannot
    predict it), with one warning that lists them."""
    labels = sorted({x[1] for x in splits["train"]})
    known = set(labels)
    for s in ("validation", "test"):
        unseen = sorted({x[1] for x in splits[s]} - known)
        if unseen:
            log.warning("%s has %d label(s) that train lacks, scored as wrong: %s", s, len(unseen), ", ".join(unseen))
    return labels


def tokenizer_fingerprint(tokenizer):
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, tokenizer.do_lower_case
                                      if hasattr(tokenizer, "do_lower_case") else None, vocab]).encode()).hexdigest()


def describe_data(path):
    """The data as results record it: its name and a sha256 over the files it holds, never a machine path."""
    if path is None:
        return {"file": f"hub:{HUB_ID}/{HUB_CONFIG}", "sha256": None}
    return {"file": os.path.basename(os.path.normpath(path)), "sha256": data_sha256(path)}


def data_sha256(path, data_format=None):
    """sha256 of a data file, or over the names (relative to it) and bytes of the files a folder holds."""
    if not os.path.isdir(path):
        return file_sha256(path)
    h = hashlib.sha256()
    for f in readers.files_of(path, data_format):
        h.update(os.path.relpath(f, path).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def cache_key(cfg, tokenizer, slots=False):
    """Everything the features depend on: each data file's bytes and format, the split's settings, the tokenizer,
    the max length, the label column, slots or not."""
    def source(path, data_format):
        if path and not os.path.exists(path):
            raise UserError(f"data not found: {path}")
        return [data_format or readers.detect(path), data_sha256(path, data_format)] if path else None

    sources = [source(cfg.data, cfg.data_format) if cfg.data else f"hub:{HUB_ID}/{HUB_CONFIG}",
               source(cfg.val_data, None), source(cfg.test_data, None)]
    parts = [CACHE_VERSION, sources, cfg.val_fraction,
             cfg.test_fraction, cfg.split_seed, tokenizer_fingerprint(tokenizer), cfg.max_length, cfg.label, slots]
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


def tokenize(splits, labels, tokenizer, max_length):
    """{split: {"input_ids": [[int]], "labels": [int], "texts": [str]}}, unpadded; with slots also
    "slot_words" (the slot name of each word) and "slot_positions" (first_subtokens)."""
    tokenizer.truncation_side = "left"  # the study keeps the end of long utterances
    index = {y: i for i, y in enumerate(labels)}
    out = {}
    for s in SPLITS:
        texts = [x[0] for x in splits[s]]
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        # a label train lacks is -100: the model cannot predict it, so it is scored as wrong
        out[s] = {"input_ids": ids, "labels": [index.get(x[1], -100) for x in splits[s]], "texts": texts}
        if splits[s] and len(splits[s][0]) == 3:
            out[s]["slot_words"] = [x[2] for x in splits[s]]
            out[s]["slot_positions"] = first_subtokens(tokenizer, texts, max_length)
    return out


def slot_labels(features):
    """The sorted slot names of the training words, "Other" among them."""
    return sorted({name for words in features["train"]["slot_words"] for name in words})


def load_cache(path, key, fields=("labels", "features")):
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
    features: dict  # {split: tokenized columns} (tokenize)
    info: dict  # the data's format, split record (split_record), slot scheme and synonyms


def load_dataset(cfg, tokenizer, slots=False):
    """Labels, tokenized splits and what the data says of itself for cfg.data (any format readers.py reads, or the
    hub when None), cached; with slots, each split also has its word labels and their first sub-tokens."""
    key = cache_key(cfg, tokenizer, slots)
    name = os.path.splitext(os.path.basename(os.path.normpath(cfg.data)))[0] if cfg.data else "massive"
    path = os.path.join(cfg.cache_dir, f"{name}-{cfg.label}{'-slots' if slots else ''}-{key[:16]}.pkl")
    blob = load_cache(path, key, ("labels", "features", "info"))
    if blob is None:
        data, splits = read_data(cfg)
        bio = touching_spans(x for xs in splits.values() for x in xs)
        rows = as_rows(splits, cfg.label, slots, bio)
        labels = build_labels(rows)
        columns = set.intersection(*(set(x.labels) for xs in splits.values() for x in xs))
        info = {"format": data.format, "split": split_record(splits), "slot_scheme": "bio" if bio else "names",
                "label_columns": sorted(columns), "synonyms": data.synonyms}
        blob = {"key": key, "labels": labels, "features": tokenize(rows, labels, tokenizer, cfg.max_length),
                "info": info}
        atomic_write(path, lambda f: pickle.dump(blob, f))
        log.info("cached tokenized features in %s", path)
    else:
        log.info("loaded tokenized features from %s", path)
    return Loaded(blob["labels"], blob["features"], blob["info"])


def load_features(cfg, tokenizer, slots=False):
    """load_dataset's labels and tokenized splits."""
    return load_dataset(cfg, tokenizer, slots)[:2]
