"""Shared fixtures: a tiny random BERT with the bundled tokenizer, and a small MASSIVE-format file."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "bench"))  # the tiny data set and the format writers (after the project: bench/readers.py)
from tiny import write_massive  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised 2-layer BERT saved with the bundled tokenizer: loads like any hub model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from model import resolve_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def data_file(tmp_path):
    return str(write_massive(tmp_path / "en-US.jsonl"))


@pytest.fixture
def run_args(tiny_model, data_file, tmp_path):
    """Arguments for a seconds-long end-to-end run into tmp_path."""
    return ["--model", tiny_model, "--data", data_file, "--epochs", "2", "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "checkpoints")]


def interrupt_at_epoch(monkeypatch, n):
    """Make the n-th training epoch die as it starts (a KeyboardInterrupt, as Ctrl-C would), the run's other epochs
    unchanged."""
    import train

    real, calls = train.train_epoch, []

    def dies(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train, "train_epoch", dies)
    return real


def wait_until_healthy(client):
    """Poll an app's /health through a TestClient until its model is loaded (at most 10 s)."""
    import time

    for _ in range(200):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the app did not become healthy within 10 s")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def joint_checkpoint(tmp_path_factory, tiny_model):
    """A joint (intent + slots) checkpoint of the tiny model fitted to the toy set: its run folder."""
    import main as cli
    from arguments import parse_args

    tmp = tmp_path_factory.mktemp("joint")
    args = ["--model", tiny_model, "--data", str(write_massive(tmp / "en-US.jsonl")), "--epochs", "15", "--lr", "3e-3",
            "--batch-size", "4", "--label", "intent", "--slots", "--cache-dir", str(tmp / "c"), "--out-dir",
            str(tmp / "r"), "--checkpoint-dir", str(tmp / "ck")]
    cli.main(args)
    return parse_args(args).run_dir
