"""--task suggest: the most unsure utterances first, no near-copies, nothing the data holds, written pre-annotated in
a file the readers take back; the request log as its input; bad input as one line."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import main as cli
from fileio import UserError
from readers import read, source
from conftest import ROOT
from suggest import diverse, uncertainty


def test_the_most_unsure_comes_first_and_near_copies_are_left_out():
    probs = np.array([[0.9, 0.1], [0.51, 0.49], [0.7, 0.3], [0.52, 0.48]])
    unsure, margin, slots = uncertainty(probs, None)
    assert [int(i) for i in np.argsort(-unsure)] == [1, 3, 2, 0] and slots is None  # the intent margin alone
    assert margin[1] == pytest.approx(0.02) and unsure[1] == pytest.approx(0.98)
    words = [(["Other", "time"], [0.99, 0.6]), (["Other"], [0.99]), (["time"], [0.2]), (["Other"], [0.99])]
    unsure, margin, slots = uncertainty(probs, words)
    # the probability that the whole parse is right: a sure intent with an unsure slot (0.7 x 0.2) comes first,
    # and every word counts (0.9 x 0.99 x 0.6 is less sure than a sure intent with sure words)
    assert [int(i) for i in np.argsort(-unsure)] == [2, 1, 3, 0]
    assert unsure[2] == pytest.approx(1 - 0.7 * 0.2) and slots[0] == pytest.approx(0.99 * 0.6)
    assert unsure[0] == pytest.approx(1 - 0.9 * 0.99 * 0.6)
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.01, 1.0]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert diverse([1, 3, 2, 0], lambda ids: vectors[ids], 3) == [1, 2, 0]  # 3 nearly repeats 1
    assert diverse([1, 3, 2, 0], lambda ids: vectors[ids], 3, chunk=1) == [1, 2, 0]  # asked for piece by piece


@pytest.fixture
def pool(tmp_path):
    texts = ["wake me up at five am", "play some jazz", "Play  some jazz", "", "is it raining today",
             "what is the weather like", "turn up the music", "set an alarm for noon please", "order a pizza"]
    path = tmp_path / "pool.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


def test_suggest_writes_new_utterances_pre_annotated_in_the_datas_format(joint_checkpoint, tiny_model, tmp_path, pool):
    data = tmp_path / "nlu.yml"  # the data already holds "what is the weather like"
    data.write_text('nlu:\n- intent: weather_query\n  examples: |\n    - what is the weather like\n'
                    '- intent: alarm_set\n  examples: |\n    - wake me up at [seven](time)\n')
    report = cli.main(["--task", "suggest", "--checkpoint", joint_checkpoint, "--model", tiny_model, "--input",
                       str(pool), "--data", str(data), "--count", "4", "--out-dir", str(tmp_path / "out")])
    assert report["read"] == 9 and report["candidates"] == 6  # blank, repeated and known ones left out
    # the tiny random encoder finds most sentences alike: near-copies are left out, so fewer than 4 may come back
    assert 1 <= len(report["chosen"]) <= 4 and report["format"] == "rasa"
    assert [c["uncertainty"] for c in report["chosen"]] == sorted((c["uncertainty"] for c in report["chosen"]),
                                                                  reverse=True)
    suggested = read(source(str(tmp_path / "out" / report["file"])))  # a file the readers take back
    assert sorted(x.text for x in suggested.examples) == sorted(c["text"] for c in report["chosen"])
    assert "what is the weather like" not in [x.text for x in suggested.examples]
    assert {x.labels["intent"] for x in suggested.examples} == {c["intent"] for c in report["chosen"]}
    csv = tmp_path / "data.csv"
    csv.write_text("text,intent\nwhat is the weather like,weather_query\n")
    report = cli.main(["--task", "suggest", "--checkpoint", joint_checkpoint, "--model", tiny_model, "--input",
                       str(pool), "--data", str(csv), "--count", "2", "--out-dir", str(tmp_path / "csv")])
    assert report["file"].endswith(".csv")
    assert len(read(source(str(tmp_path / "csv" / report["file"]))).examples) == len(report["chosen"]) <= 2


def test_the_request_log_round_trips_into_suggest(joint_checkpoint, tiny_model, tmp_path, caplog):
    log = tmp_path / "requests.jsonl"
    lines = [json.dumps({"time": "2026-12-07T10:00:00.000+00:00", "text": t, "intent": "x", "confidence": 0.5,
                         "slots": []}) for t in ("wake me up at five am", "play some jazz", "turn up the music")]
    log.write_text("\n".join(lines) + "\nnot json\n" + lines[0][:25] + "\n")  # a broken line, then one cut short
    with caplog.at_level(logging.WARNING):
        report = cli.main(["--task", "suggest", "--checkpoint", joint_checkpoint, "--model", tiny_model, "--input",
                           str(log), "--out-dir", str(tmp_path)])
    assert report["read"] == 3 and report["candidates"] == 3 and report["chosen"]
    assert f"2 line(s) of the request log are not JSON with a text, skipped: {log}:4, {log}:5" in caplog.text


def test_suggest_bad_input_is_one_line(joint_checkpoint, tiny_model, tmp_path, pool):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no utterance to suggest"):
        cli.main(["--task", "suggest", "--checkpoint", joint_checkpoint, "--model", tiny_model, "--input", str(empty),
                  "--out-dir", str(tmp_path)])
    other = tmp_path / "other.csv"
    other.write_text("text,intent\nbook a table,restaurant_book\n")
    with pytest.raises(UserError, match="knows none of the labels of other.csv"):
        cli.main(["--task", "suggest", "--checkpoint", joint_checkpoint, "--model", tiny_model, "--input", str(pool),
                  "--data", str(other), "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["--task", "suggest", "--checkpoint", joint_checkpoint])  # no --input
    assert not list(tmp_path.glob("suggest-*"))


def test_loop_bench_runs_both_chains_and_a_continued_joint_round(tiny_model, data_file, tmp_path):
    rows = [json.loads(line) for line in open(data_file)]
    for r in rows:  # each text once: suggest leaves out a text the labelled data holds
        r["utt"], r["annot_utt"] = f"{r['utt']} {r['id']}", f"{r['annot_utt']} {r['id']}"
    data_file = tmp_path / "unique.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "loop-joint.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "loop.py"), "--data", str(data_file), "--seeds", "0",
                    "--per-intent", "2", "--per-round", "4", "--rounds", "1", "--slots", "--continued",
                    "--main-flags", f"--model {tiny_model} --epochs 1", "--work", str(tmp_path / "work"),
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
    report = json.loads(out.read_text())
    held = {s: set(json.loads((tmp_path / "work" / "joint" / "s0" / s / "r1" / "picks.json").read_text()))
            for s in ("random", "suggest")}
    # the tiny random encoder finds most sentences alike: suggest's near-copy filter may keep fewer than 4
    assert len(held["random"]) == 4 and 1 <= len(held["suggest"]) <= 4
    assert [(e["strategy"], e["round"], e["labelled"]) for e in report["runs"]] == [
        ("random", 0, 12), ("random", 1, 16), ("suggest", 0, 12), ("suggest", 1, 12 + len(held["suggest"]))]
    for e in report["runs"]:
        assert set(e["picked"]) == (held[e["strategy"]] if e["round"] else set())
    (continued,) = report["continued"]
    assert continued["init_from_round"] == 0 and "-from-" in continued["run_name"]
    assert {"test_slot_f1", "test_exact_match", "val_exact_match"} <= set(continued)
    assert all("val_exact_match" in h for h in continued["history"])


def test_auroc_counts_ties_half():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from suggest_scores import auroc

    wrong = np.array([True, False, False, True])
    assert auroc(np.array([0.9, 0.1, 0.5, 0.7]), wrong) == 1.0  # every mistake above every right one
    assert auroc(np.array([0.1, 0.9, 0.5, 0.7]), wrong) == 0.25
    assert auroc(np.full(4, 0.3), wrong) == 0.5
    assert auroc(np.array([0.1, 0.2]), np.array([True, True])) is None  # nothing to tell apart


def test_suggest_scores_bench_judges_each_score_on_validation(joint_checkpoint, run_args, data_file, tmp_path):
    from arguments import parse_args

    crf_args = run_args + ["--label", "intent", "--slots", "--crf", "--epochs", "1"]
    cli.main(crf_args)
    out = tmp_path / "scores.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "suggest_scores.py"), "--data", data_file,
                    "--checkpoints", joint_checkpoint, parse_args(crf_args).run_dir, "--top", "3", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    report = json.loads(out.read_text())
    plain, crf = report["checkpoints"]
    assert report["split"] == "validation" and report["utterances"] > 0 and plain["slots"] and crf["slots"]
    own = "1 - best intent probability x slots by each word's own softmax"
    assert own in crf["scores"] and own not in plain["scores"]  # the CRF's alternative: each word's own softmax
    for entry in report["checkpoints"]:
        assert max(entry["intent_mistakes"], entry["slot_mistakes"]) <= entry["mistakes"] <= report["utterances"]
        assert {"suggest", "1 - intent margin", "1 - min(intent margin, least sure slot)"} <= set(entry["scores"])
        for s in entry["scores"].values():  # no AUROC where every utterance, or none, is a mistake
            assert (s["auroc"] is None) == (entry["mistakes"] in (0, report["utterances"]))
            assert s["auroc"] is None or 0 <= s["auroc"] <= 1
            assert s["slot_mistakes_in_top"] <= s["mistakes_in_top"] <= 3
