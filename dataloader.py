"""MASSIVE (English) data: read the release file or the hub, tokenize once, cache, batch.

The official release is JSON lines with `partition` (train/dev/test), `utt`,
`scenario` and `intent`; `dev` becomes `validation`. Tokenized features are
pickled under `assets/cache/` with a key that covers everything they depend on
(data bytes, tokenizer vocabulary, max length, label column), so a changed input
never reuses a stale cache, and a cache that fails its checks is rebuilt.
"""
import hashlib
import json
import logging
import os
import pickle
import random
import tempfile

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

import noise

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
PARTITIONS = {"train": "train", "dev": "validation", "test": "test"}
HUB_ID, HUB_CONFIG = "AmazonScience/massive", "en-US"
CACHE_VERSION = 1


class UserError(Exception):
    """A bad input the user can fix; main() prints it as one line and exits non-zero."""


def read_jsonl(path, label):
    """Read a MASSIVE release file into {split: [(text, label_name), ...]}."""
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path}")
    splits = {s: [] for s in SPLITS}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object")
            for field in ("partition", "utt", label):
                if not isinstance(row.get(field), str):
                    raise UserError(f"{path}:{n}: missing or non-text field '{field}'")
            if row["partition"] not in PARTITIONS:
                raise UserError(f"{path}:{n}: unknown partition '{row['partition']}' (expected train, dev or test)")
            splits[PARTITIONS[row["partition"]]].append((row["utt"], row[label]))
    return splits


def read_hub(label):
    """The same data from the Hugging Face hub (needs `datasets` and a network)."""
    try:
        import datasets  # lazily: machines without it can still train from a file

        try:
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG)
        except RuntimeError:  # datasets >= 4 runs no loading scripts; the hub's parquet conversion needs none
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, revision="refs/convert/parquet")
    except Exception as e:
        raise UserError(f"could not load {HUB_ID} ({HUB_CONFIG}) from the hub ({type(e).__name__}); "
                        "offline, pass --data PATH/en-US.jsonl (the MASSIVE release file) or set MASSIVE_DATA") from None
    names = ds["train"].features[label].names  # the hub stores labels as ClassLabel ids
    return {s: [(r["utt"], names[r[label]]) for r in ds[s]] for s in SPLITS}


def build_labels(splits):
    """Sorted label names of train; a validation/test label unseen in train is an error."""
    for s in SPLITS:
        if not splits[s]:
            raise UserError(f"the {s} split is empty")
    labels = sorted({y for _, y in splits["train"]})
    known = set(labels)
    for s in ("validation", "test"):
        unseen = sorted({y for _, y in splits[s]} - known)
        if unseen:
            raise UserError(f"{s} has labels that train lacks: {', '.join(unseen[:5])}")
    return labels


def tokenizer_fingerprint(tokenizer):
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, tokenizer.do_lower_case
                                      if hasattr(tokenizer, "do_lower_case") else None, vocab]).encode()).hexdigest()


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_data(path):
    """The data as results record it: file name and sha256, never a machine path."""
    if path is None:
        return {"file": f"hub:{HUB_ID}/{HUB_CONFIG}", "sha256": None}
    return {"file": os.path.basename(path), "sha256": file_sha256(path)}


def cache_key(source, tokenizer, max_length, label):
    if os.path.isfile(source):
        source = file_sha256(source)
    parts = [CACHE_VERSION, source, tokenizer_fingerprint(tokenizer), max_length, label]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def tokenize(splits, labels, tokenizer, max_length):
    """{split: {"input_ids": [[int]], "labels": [int], "texts": [str]}}, unpadded."""
    tokenizer.truncation_side = "left"  # the study keeps the end of long utterances
    index = {y: i for i, y in enumerate(labels)}
    out = {}
    for s in SPLITS:
        texts = [t for t, _ in splits[s]]
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        out[s] = {"input_ids": ids, "labels": [index[y] for _, y in splits[s]], "texts": texts}
    return out


def load_cache(path, key):
    """The cached features, or None (with a warning) when the file is missing, corrupt or foreign."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f)
        if not (isinstance(blob, dict) and blob.get("key") == key and set(blob["features"]) == set(SPLITS)):
            raise ValueError("key or layout mismatch")
        return blob
    except Exception as e:
        log.warning("ignoring cache %s (%s); rebuilding it", path, e)
        return None


def atomic_write(path, write):
    """Write via a temporary file and rename, so readers never see a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_features(cfg, tokenizer):
    """Labels and tokenized splits for cfg.data (a release file, or the hub when None), cached."""
    source = cfg.data or f"hub:{HUB_ID}/{HUB_CONFIG}"
    key = cache_key(source, tokenizer, cfg.max_length, cfg.label)
    path = os.path.join(cfg.cache_dir, f"massive-{cfg.label}-{key[:16]}.pkl")
    blob = load_cache(path, key)
    if blob is None:
        splits = read_jsonl(cfg.data, cfg.label) if cfg.data else read_hub(cfg.label)
        labels = build_labels(splits)
        blob = {"key": key, "labels": labels, "features": tokenize(splits, labels, tokenizer, cfg.max_length)}
        atomic_write(path, lambda f: pickle.dump(blob, f))
        log.info("cached tokenized features in %s", path)
    else:
        log.info("loaded tokenized features from %s", path)
    return blob["labels"], blob["features"]


class Features(torch.utils.data.Dataset):
    """Tokenized utterances with their labels, and any extra per-example columns (extras: {name: list}).

    augment(text) -> token ids, with probability p: the utterance is perturbed and tokenized anew. Its
    random draws come from the `random` module, whose state a resumed run restores.
    """

    def __init__(self, split, extras=None, augment=None, p=0.0):
        self.ids, self.labels, self.texts = split["input_ids"], split["labels"], split.get("texts")
        self.extras, self.augment, self.p = extras or {}, augment, p

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.augment(self.texts[i]) if self.augment and random.random() < self.p else self.ids[i]
        return {"input_ids": ids, "labels": self.labels[i], **{k: v[i] for k, v in self.extras.items()}}


def make_loader(split, tokenizer, batch_size, train, seed=0, fast=True, max_length=128, extras=None, augment=0.0):
    """Batches of padded tensors (extras: further per-example columns, as tensors under their names).

    fast: pad each batch to its longest member; training batches are grouped by
    length (random mega-batches, re-drawn every epoch) and evaluation batches are
    sorted by length. Otherwise the study's way: every row padded to max_length
    and plain random batches. augment: the probability that a training
    utterance gets one kind of typing noise (noise.py).
    """
    def noisy_ids(text):
        tokenizer.truncation_side = "left"  # as the cached features were made
        return tokenizer(noise.perturb(text), truncation=True, max_length=max_length)["input_ids"]

    data = Features(split, extras, noisy_ids if augment else None, augment)
    if fast:
        collate = DataCollatorWithPadding(tokenizer)
    else:
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(x) for x in data.ids]
    if train and fast:
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
        # the loader holds the generator too, so a resumed run can restore the epoch order
        return DataLoader(data, batch_size=batch_size, sampler=sampler, generator=generator, collate_fn=collate)
    if train:
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)
    order = sorted(range(len(data)), key=lengths.__getitem__) if fast else list(range(len(data)))
    return DataLoader(torch.utils.data.Subset(data, order), batch_size=batch_size, collate_fn=collate)
