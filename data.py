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

from fileio import UserError, atomic_write, file_sha256

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
PARTITIONS = {"train": "train", "dev": "validation", "test": "test"}
HUB_ID, HUB_CONFIG = "AmazonScience/massive", "en-US"
CACHE_VERSION = 1


def parse_annotation(annot):
    """The slot name of each word of an annotated utterance (MASSIVE's annot_utt), "Other" outside spans.

    "wake me up at [time : five am]" -> ["Other"] * 4 + ["time"] * 2. ValueError
    on unbalanced brackets, a span without " : ", or a span with no words.
    """
    names, rest = [], annot
    while rest:
        start = rest.find("[")
        outside = rest if start < 0 else rest[:start]
        if "]" in outside:
            raise ValueError("unbalanced brackets: ']' without '['")
        names += ["Other"] * len(outside.split())
        if start < 0:
            break
        end = rest.find("]", start)
        if end < 0:
            raise ValueError("unbalanced brackets: '[' without ']'")
        span = rest[start + 1:end]
        if "[" in span:
            raise ValueError("unbalanced brackets: '[' inside a span")
        if " : " not in span:
            raise ValueError(f"span '[{span}]' has no ' : ' between slot and value")
        slot, value = span.split(" : ", 1)
        if not slot.strip() or not value.split():
            raise ValueError(f"span '[{span}]' has an empty slot name or value")
        names += [slot.strip()] * len(value.split())
        rest = rest[end + 1:]
    return names


def word_slots(utt, annot):
    """parse_annotation(annot), checked to give one name per word of utt.split(); ValueError otherwise."""
    names = parse_annotation(annot)
    if len(names) != len(utt.split()):
        raise ValueError(f"annot_utt has {len(names)} words, utt has {len(utt.split())}")
    return names


def read_jsonl(path, label, slots=False):
    """Read a MASSIVE release file into {split: [(text, label_name), ...]}; with slots, (text, label_name, the
    slot name of each word)."""
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
            for field in ("partition", "utt", label, *(("annot_utt",) if slots else ())):
                if not isinstance(row.get(field), str):
                    raise UserError(f"{path}:{n}: missing or non-text field '{field}'")
            if row["partition"] not in PARTITIONS:
                raise UserError(f"{path}:{n}: unknown partition '{row['partition']}' (expected train, dev or test)")
            example = (row["utt"], row[label])
            if slots:
                try:
                    example += (word_slots(row["utt"], row["annot_utt"]),)
                except ValueError as e:
                    raise UserError(f"{path}:{n}: malformed annot_utt: {e}") from None
            splits[PARTITIONS[row["partition"]]].append(example)
    return splits


def read_hub(label, slots=False):
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
    splits = {s: [(r["utt"], names[r[label]]) for r in ds[s]] for s in SPLITS}
    if slots:
        try:
            for s in SPLITS:
                splits[s] = [(*x, word_slots(r["utt"], r["annot_utt"])) for x, r in zip(splits[s], ds[s])]
        except ValueError as e:
            raise UserError(f"{HUB_ID} ({HUB_CONFIG}): malformed annot_utt: {e}") from None
    return splits


def build_labels(splits):
    """Sorted label names of train; a validation/test label unseen in train is an error."""
    for s in SPLITS:
        if not splits[s]:
            raise UserError(f"the {s} split is empty")
    labels = sorted({x[1] for x in splits["train"]})
    known = set(labels)
    for s in ("validation", "test"):
        unseen = sorted({x[1] for x in splits[s]} - known)
        if unseen:
            raise UserError(f"{s} has labels that train lacks: {', '.join(unseen[:5])}")
    return labels


def tokenizer_fingerprint(tokenizer):
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, tokenizer.do_lower_case
                                      if hasattr(tokenizer, "do_lower_case") else None, vocab]).encode()).hexdigest()


def describe_data(path):
    """The data as results record it: file name and sha256, never a machine path."""
    if path is None:
        return {"file": f"hub:{HUB_ID}/{HUB_CONFIG}", "sha256": None}
    return {"file": os.path.basename(path), "sha256": file_sha256(path)}


def cache_key(source, tokenizer, max_length, label, slots=False):
    if os.path.isfile(source):
        source = file_sha256(source)
    parts = [CACHE_VERSION, source, tokenizer_fingerprint(tokenizer), max_length, label] + (["slots"] if slots else [])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def word_spans(text):
    """(start, end) character offsets of the words of text.split(), in order."""
    spans, start = [], None
    for i, c in enumerate(text):
        if c.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


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
        starts = [s for s, _ in word_spans(text)]
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
        out[s] = {"input_ids": ids, "labels": [index[x[1]] for x in splits[s]], "texts": texts}
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


def load_features(cfg, tokenizer, slots=False):
    """Labels and tokenized splits for cfg.data (a release file, or the hub when None), cached; with slots, each
    split also has its word slots and their first sub-tokens (tokenize)."""
    source = cfg.data or f"hub:{HUB_ID}/{HUB_CONFIG}"
    key = cache_key(source, tokenizer, cfg.max_length, cfg.label, slots)
    path = os.path.join(cfg.cache_dir, f"massive-{cfg.label}{'-slots' if slots else ''}-{key[:16]}.pkl")
    blob = load_cache(path, key)
    if blob is None:
        splits = read_jsonl(cfg.data, cfg.label, slots) if cfg.data else read_hub(cfg.label, slots)
        labels = build_labels(splits)
        blob = {"key": key, "labels": labels, "features": tokenize(splits, labels, tokenizer, cfg.max_length)}
        atomic_write(path, lambda f: pickle.dump(blob, f))
        log.info("cached tokenized features in %s", path)
    else:
        log.info("loaded tokenized features from %s", path)
    return blob["labels"], blob["features"]
