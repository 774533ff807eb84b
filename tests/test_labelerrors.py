"""check --find-label-errors: confident learning finds a planted flip, on hand-built probabilities and end to end."""
import json

import numpy as np

import main as cli
from labelerrors import deal, find, label_issues
from readers import read_massive
from tiny import write_massive


def test_confident_learning_ranks_a_planted_flip_first():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.7, 0.3, 0.0],  # labelled 0
                      [0.1, 0.8, 0.1], [0.2, 0.7, 0.1],                   # labelled 1
                      [0.85, 0.05, 0.1],                                  # labelled 2, but the models say 0
                      [0.0, 0.2, 0.8], [0.3, 0.3, 0.4]])                  # labelled 2: the last is unsure, not wrong
    given = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    ranked, likely = label_issues(probs, given)
    assert ranked == [5] and likely.tolist() == [0]


def test_issues_rank_the_least_probable_given_label_first_and_skip_an_overall_argmax():
    probs = np.array([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1],                      # labelled 0: threshold 0.8
                      [0.1, 0.8, 0.1], [0.1, 0.8, 0.1],                      # labelled 1: threshold 0.415 with
                      [0.95, 0.05, 0.0],                                     # this flip, 0.9 ahead of its label,
                      [0.81, 0.01, 0.18],                                    # and this, 0.8 ahead but less probable
                      [0.1, 0.1, 0.8],                                       # labelled 2: threshold 0.675, and
                      [0.0, 0.45, 0.55]])                                    # 1 is over its threshold, yet 2 leads
    given = np.array([0, 0, 1, 1, 1, 1, 2, 2])
    ranked, likely = label_issues(probs, given)
    assert ranked == [5, 4] and likely.tolist() == [0, 0]


def test_folds_are_stratified_and_seeded():
    labels = ["a"] * 10 + ["b"] * 5
    fold = deal(labels, 5)
    assert fold == deal(labels, 5) and sorted(fold[:10]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(fold[10:]) == [0, 1, 2, 3, 4]


def test_out_of_fold_models_find_a_planted_flip_in_a_tiny_case(tmp_path, tiny_model):
    path = write_massive(tmp_path / "flipped.jsonl", {"train": 6, "dev": 2, "test": 2})  # 120: a fold has 24
    rows = [json.loads(line) for line in open(path)]
    rows[0]["scenario"] = "music"  # "wake me up at five am", an alarm
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = read_massive(str(path)).examples
    found = find(examples, "scenario", ["--model", tiny_model, "--epochs", "10", "--lr", "3e-3", "--batch-size", "4"],
                 folds=3)
    assert found["ranked"][0]["where"] == f"{path}:1" and found["ranked"][0]["suggested"] == "alarm"
    assert found["items"][0].startswith(f'{path}:1 "wake me up at five am": music -> alarm')


def test_check_lists_label_errors_with_file_and_line(tmp_path, monkeypatch):
    import labelerrors

    path = write_massive(tmp_path / "data.jsonl")
    n = sum(1 for _ in open(path))
    probs = np.tile([0.9, 0.05, 0.05], (n, 1))  # every utterance an alarm, say the folds' models
    monkeypatch.setattr(labelerrors, "out_of_fold", lambda texts, labels, column, flags, folds: (
        sorted(set(labels)), probs))
    report = cli.main(["--task", "check", "--data", str(path), "--label", "scenario", "--find-label-errors",
                       "--out-dir", str(tmp_path / "out")])
    (found,) = [w for w in report["warnings"] if w["kind"] == "label_error"]
    assert found["ranked"][0]["suggested"] == "alarm" and found["ranked"][0]["where"].startswith(f"{path}:")
    assert all(r["given"] != "alarm" for r in found["ranked"])  # the alarms are not listed
