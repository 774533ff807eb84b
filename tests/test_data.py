import json
import logging
import os
import pickle

import pytest
import torch

from tiny import write_massive
from arguments import parse_args
from data import build_labels, load_features, read_rows
from dataloader import make_loader
from fileio import UserError
from model import load_tokenizer
from readers import read_hub, read_massive


def cfg_for(data, tmp_path, *flags):
    return parse_args(["--data", str(data), "--cache-dir", str(tmp_path / "c"), *flags])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def test_reads_release_format(data_file):
    rows = read_rows(data_file)
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [36, 12, 12]
    first = rows["validation"][0]
    assert (first.text, first.labels["scenario"], first.words) == ("wake me up at five am", "alarm",
                                                                   ["Other"] * 4 + ["time", "time"])
    assert build_labels({s: [r.labels["scenario"] for r in rows[s]] for s in rows}) == ["alarm", "music", "weather"]
    assert build_labels({s: [r.labels["intent"] for r in rows[s]] for s in rows})[0] == "alarm_query"


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: malformed JSON"),
    ('{"partition": "train", "intent": "alarm_set"}', r"bad\.jsonl:2: missing or non-text field 'utt'"),
    ('{"partition": "train", "utt": "hi"}', r"bad\.jsonl:2: missing or non-text field 'intent'"),
    ('{"partition": "holdout", "utt": "hi", "intent": "alarm_set"}', r"unknown partition 'holdout'"),
    ('[1, 2]', r"bad\.jsonl:2: expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"partition": "train", "utt": "hi", "scenario": "alarm", "intent": "alarm_set"})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        read_massive(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="data not found"):
        cfg_for(tmp_path / "nope.jsonl", tmp_path)


def test_a_missing_label_column_or_split_is_one_line(tmp_path, tok):
    path = write_massive(tmp_path / "a.jsonl", {"train": 1, "test": 1})
    with pytest.raises(UserError, match="validation split is empty; give --val-data PATH"):
        load_features(cfg_for(path, tmp_path), tok)
    path = tmp_path / "no-scenario.jsonl"
    path.write_text("".join(json.dumps({"partition": p, "utt": "hi", "intent": "greet"}) + "\n"
                            for p in ("train", "dev", "test")))
    with pytest.raises(UserError, match=r"no-scenario\.jsonl:1: no 'scenario' label; --label chooses from: intent"):
        load_features(cfg_for(path, tmp_path, "--label", "scenario"), tok)
    assert cfg_for(path, tmp_path).label == "intent"  # the default where the data has no scenario column


def test_a_label_train_lacks_is_scored_as_wrong_with_one_warning(tmp_path, tok, caplog):
    path = write_massive(tmp_path / "b.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"partition": "test", "utt": "order a pizza", "scenario": "takeaway",
                            "intent": "takeaway_order"}) + "\n")
    labels, feats = load_features(cfg_for(path, tmp_path), tok)
    assert "takeaway" not in labels and feats["test"]["labels"][-1] == -100  # no class can match it
    assert "test has 1 label(s) that train lacks, scored as wrong: takeaway" in caplog.text


def test_left_truncation_keeps_the_end(tmp_path, tok):
    path = tmp_path / "long.jsonl"
    write_massive(path)
    with open(path, "a") as f:
        f.write(json.dumps({"partition": "train", "utt": "one two three four five six seven eight", "scenario": "alarm",
                            "intent": "alarm_set"}) + "\n")
    labels, feats = load_features(cfg_for(path, tmp_path, "--max-length", "5"), tok)
    ids = feats["train"]["input_ids"][-1]
    assert len(ids) == 5
    assert tok.decode(ids) == "[CLS] six seven eight [SEP]"


def test_cache_reused_and_keyed(tmp_path, tok, data_file, caplog):
    caplog.set_level(logging.INFO)
    cfg = cfg_for(data_file, tmp_path)
    labels, feats = load_features(cfg, tok)
    files = os.listdir(cfg.cache_dir)
    assert len(files) == 1
    assert load_features(cfg, tok)[1] == feats
    assert "loaded tokenized features" in caplog.text
    # every input the features depend on gives a different cache file; one file serves every label column
    load_features(cfg_for(data_file, tmp_path, "--max-length", "8"), tok)
    intent = cfg_for(data_file, tmp_path, "--label", "intent")
    assert load_features(intent, tok, slots=True)[0][0] == "alarm_query" and len(os.listdir(cfg.cache_dir)) == 2
    with open(data_file, "a") as f:
        f.write(json.dumps({"partition": "train", "utt": "snooze", "scenario": "alarm", "intent": "alarm_set"}) + "\n")
    assert len(load_features(cfg_for(data_file, tmp_path), tok)[1]["train"]["labels"]) == 37
    assert len(os.listdir(cfg.cache_dir)) == 3


@pytest.mark.parametrize("garbage", [b"not a pickle", pickle.dumps({"key": "someone else's", "features": {}}),
                                     pickle.dumps([1, 2, 3])])
def test_corrupt_or_foreign_cache_is_rebuilt(tmp_path, tok, data_file, caplog, garbage):
    cfg = cfg_for(data_file, tmp_path)
    labels, feats = load_features(cfg, tok)
    (path,) = [os.path.join(cfg.cache_dir, f) for f in os.listdir(cfg.cache_dir)]
    with open(path, "wb") as f:
        f.write(garbage)
    assert load_features(cfg, tok) == (labels, feats)
    assert "ignoring cache" in caplog.text
    with open(path, "rb") as f:  # repaired on disk
        assert pickle.load(f)["features"]["train"]["input_ids"] == feats["train"]["input_ids"]


def test_dynamic_padding_and_length_grouping(tmp_path, tok, data_file):
    _, feats = load_features(cfg_for(data_file, tmp_path), tok)
    lengths = [len(x) for x in feats["train"]["input_ids"]]
    loader = make_loader(feats["train"], tok, 4, train=True, seed=0)
    batches = list(loader)
    assert sum(len(b["labels"]) for b in batches) == 36
    for b in batches:
        assert b["input_ids"].shape == b["attention_mask"].shape
        assert b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max())  # padded to the longest only
    assert max(b["input_ids"].shape[1] for b in batches) == max(lengths)
    epoch2 = list(loader)
    assert [b["labels"].tolist() for b in batches] != [b["labels"].tolist() for b in epoch2]  # reshuffled


def test_study_way_pads_to_max_length(tmp_path, tok, data_file):
    _, feats = load_features(cfg_for(data_file, tmp_path), tok)
    for train in (True, False):
        batch = next(iter(make_loader(feats["train"], tok, 4, train=train, fast=False, max_length=32)))
        assert batch["input_ids"].shape == (4, 32)


def test_eval_loader_is_sorted_and_complete(tmp_path, tok, data_file):
    _, feats = load_features(cfg_for(data_file, tmp_path), tok)
    loader = make_loader(feats["test"], tok, 5, train=False)
    widths = [b["input_ids"].shape[1] for b in loader]
    assert widths == sorted(widths)
    assert sorted(loader.dataset.indices) == list(range(12))
    assert torch.cat([b["labels"] for b in loader]).tolist() == [feats["test"]["labels"][i] for i in loader.dataset.indices]


def test_offline_without_file_says_how_to_point_at_one(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="pass --data PATH/en-US.jsonl"):
        read_hub()
