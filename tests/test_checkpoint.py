import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import main as cli
import train as loop
from arguments import parse_args
from data import load_features
from dataloader import make_loader
from fileio import UserError
from inference import Predictor
from model import load_checkpoint
from utils import cpu_attention, use_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def strip_seconds(results):
    out = dict(results, history=[{k: v for k, v in r.items() if k != "seconds"} for r in results["history"]])
    out.pop("seconds_per_epoch")
    out.pop("contrastive_seconds_per_epoch")
    out["config"] = dict(out["config"], resume=None)
    return out


@pytest.mark.parametrize("task, extra, crash_at", [
    ("baseline", ["--epochs", "3"], 2),                                # mid-way through epoch 2
    ("supcon", ["--contrastive-epochs", "1", "--epochs", "2"], 2),     # in the first cross-entropy epoch
    ("custom", ["--epochs", "3", "--ema", "0.9", "--augment", "0.5", "--rdrop", "1", "--aux-weight", "0.5"], 2),
])
def test_resume_after_a_crash_gives_the_same_run(run_args, tmp_path, monkeypatch, task, extra, crash_at):
    args = ["--task", task, *run_args, *extra, "--checkpoint-dir", str(tmp_path / "ckpt")]
    cfg = parse_args(args)
    real_train_epoch, calls = loop.train_epoch, []

    def crashing(model, loader, *a, **kw):
        calls.append(1)
        if len(calls) == crash_at:
            real_train_epoch(model, list(loader)[:1], *a, **kw)  # some updates of the epoch happen, then it dies
            raise KeyboardInterrupt
        return real_train_epoch(model, loader, *a, **kw)

    monkeypatch.setattr(loop, "train_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert not os.path.exists(cfg.results_path)
    assert os.path.exists(os.path.join(cfg.run_dir, "last.pt"))
    monkeypatch.setattr(loop, "train_epoch", real_train_epoch)
    resumed = cli.main(args + ["--resume"])
    shutil.rmtree(cfg.run_dir)
    uninterrupted = cli.main(args)
    assert strip_seconds(resumed) == strip_seconds(uninterrupted)
    assert not os.path.exists(os.path.join(cfg.run_dir, "last.pt"))  # finished runs leave no resume state


def test_resume_without_state_is_a_user_error(run_args, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        cli.main([*run_args, "--checkpoint-dir", str(tmp_path / "none"), "--resume"])


@pytest.mark.parametrize("task, extra", [
    ("baseline", []), ("lora", []), ("custom", ["--pooling", "mean", "--ema", "0.9", "--aux-weight", "1"]),
])
def test_checkpoint_reproduces_recorded_test_accuracy(run_args, tmp_path, task, extra):
    args = ["--task", task, *run_args, *extra, "--checkpoint-dir", str(tmp_path / "ckpt")]
    results = cli.main(args)
    cfg = parse_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where main() trained and evaluated
    # meta.json names a local base encoder by its folder name only, so a LoRA reload is told where it is
    model, tokenizer, meta = load_checkpoint(os.path.join(cfg.run_dir, "best"), cpu_attention(device, fast=True),
                                             base_model=cfg.model)
    assert meta["labels"] == results["labels"]
    assert meta["config"]["model"] == os.path.basename(cfg.model) and cfg.model not in json.dumps(meta)
    _, feats = load_features(cfg, tokenizer)
    loader = make_loader(feats["test"], tokenizer, loop.EVAL_BATCH, False)
    test = loop.evaluate(model.to(device), loader, device, use_bf16(device))
    assert test["accuracy"] == results["best_test_accuracy"]
    assert test["loss"] == pytest.approx(results["best_test_loss"], rel=1e-6)
    saved = os.listdir(os.path.join(cfg.run_dir, "best"))
    assert ("adapter" in saved) == (task == "lora") and ("encoder" in saved) == (task != "lora")


@pytest.fixture
def checkpoint(run_args, tmp_path):
    args = [*run_args, "--checkpoint-dir", str(tmp_path / "ckpt")]
    cli.main(args)
    return parse_args(args).run_dir


def run_predict(*args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--task", "predict", *args],
                          capture_output=True, text=True, input=stdin)


def test_predict_texts_file_and_stdin(checkpoint, tmp_path, capsys):
    records = cli.main(["--task", "predict", "--checkpoint", checkpoint, "--top-k", "2", "wake me up at five am",
                        "WHAT IS THE WEATHER?!"])
    assert [len(r["predictions"]) for r in records] == [2, 2]
    for r in records:
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert {p["label"] for p in r["predictions"]} <= {"alarm", "music", "weather"}
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("wake me up at five am\t")
    lines = ["play jazz", "", "¿qué tiempo hace? 天気 🌧", "very long " * 300]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_predict("--checkpoint", checkpoint, "--input", str(path), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["text"] for o in out] == lines  # one record per input line, in order
    assert out[1]["predictions"] == [] and all(len(o["predictions"]) == 3 for o in out if o["text"])
    proc = run_predict("--checkpoint", os.path.join(checkpoint, "best"), "--input", "-", stdin="play jazz\n")
    assert proc.returncode == 0 and proc.stdout.startswith("play jazz\t")


def test_library_load_reports_no_missing_weights(checkpoint):
    # a checkpoint holds no pooler, so none is built and then reported missing (the CLI mutes transformers; a
    # library user does not)
    code = f"from inference import Predictor; Predictor({checkpoint!r}).top_k(['play jazz'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "MISSING" not in proc.stderr


def test_predict_is_batched_and_order_preserving(checkpoint):
    texts = [f"play song number {i}" + " please" * (i % 7) for i in range(600)]
    records = cli.main(["--task", "predict", "--checkpoint", checkpoint, "--format", "jsonl", *texts])
    assert [r["text"] for r in records] == texts
    one = cli.main(["--task", "predict", "--checkpoint", checkpoint, "--format", "jsonl", texts[5]])
    assert one[0]["predictions"][0]["label"] == records[5]["predictions"][0]["label"]


def test_predict_with_spelling_correction(checkpoint, tmp_path):
    with open(os.path.join(checkpoint, "best", "words.json")) as f:
        words = json.load(f)
    assert words["wake"] >= 1 and all(w == w.lower() and n >= 1 for w, n in words.items())  # the training words
    misspelled, right = "wake me up at fivve am", "wake me up at five am"
    assert "fivve" not in words and "five" in words
    plain, spelled = Predictor(checkpoint), Predictor(checkpoint, spelling=True)
    assert np.array_equal(spelled.logits([misspelled]), plain.logits([right]))
    assert not np.array_equal(plain.logits([misspelled]), plain.logits([right]))  # so the correction did that
    records = cli.main(["--task", "predict", "--checkpoint", checkpoint, "--spelling", misspelled])
    assert records[0]["text"] == misspelled and records[0]["predictions"][0]["label"] == plain.top_k([right])[0][0]["label"]
    old = tmp_path / "old"
    shutil.copytree(os.path.join(checkpoint, "best"), old)
    os.remove(old / "words.json")
    proc = run_predict("--checkpoint", str(old), "--spelling", "hello")
    assert proc.returncode != 0 and "words.json not found: this checkpoint predates spelling correction" in proc.stderr
    assert run_predict("--checkpoint", str(old), "hello").returncode == 0


def test_predict_bad_checkpoints(checkpoint, tmp_path):
    proc = run_predict("--checkpoint", str(tmp_path / "nope"), "hello")
    assert proc.returncode != 0 and proc.stderr.strip() == f"error: checkpoint folder not found: {tmp_path / 'nope'}"
    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(checkpoint, "best"), broken)
    os.remove(broken / "head.pt")
    proc = run_predict("--checkpoint", str(broken), "hello")
    assert proc.returncode != 0 and "is incomplete: missing head.pt" in proc.stderr
    assert "Traceback" not in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_predict("--checkpoint", str(empty), "hello")
    assert proc.returncode != 0 and "no checkpoint in" in proc.stderr
    proc = run_predict("hello")
    assert proc.returncode == 2 and "--task predict needs --checkpoint DIR" in proc.stderr
    proc = run_predict("--checkpoint", checkpoint, "--input", str(tmp_path / "missing.txt"))
    assert proc.returncode != 0 and f"{tmp_path / 'missing.txt'}: cannot read it" in proc.stderr
