"""Serving the parser: /parse, /predict from a joint checkpoint, export with slots, and Ray Serve replicas."""
import json
import os
import subprocess
import sys

import pytest

import main as cli
from arguments import parse_args
from dataloader import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_serve_answers_predict_from_a_joint_checkpoint(run_args, tmp_path):
    import threading

    from fastapi.testclient import TestClient

    from inference import Predictor
    from serve import create_app

    args = [*run_args, "--label", "intent", "--slots", "--checkpoint-dir", str(tmp_path / "ckpt")]
    cli.main(args)
    run_dir, model = parse_args(args).run_dir, parse_args(args).model
    app = create_app(lambda: Predictor(run_dir, base_model=model), max_batch=8, max_wait_ms=0, max_inputs=8,
                     max_queue=16)
    with TestClient(app) as c:
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        got = c.post("/predict", json={"inputs": ["wake me up at five am"], "top_k": 2})
    assert got.status_code == 200
    assert got.json() == Predictor(run_dir).top_k(["wake me up at five am"], 2)


@pytest.fixture(scope="module")
def joint_server(tmp_path_factory, tiny_model):
    """A client of the app serving a joint checkpoint of the tiny model, once loaded."""
    import threading

    from fastapi.testclient import TestClient

    from conftest import write_massive
    from inference import Predictor
    from serve import create_app

    tmp = tmp_path_factory.mktemp("joint")
    args = ["--model", tiny_model, "--data", str(write_massive(tmp / "en-US.jsonl")), "--epochs", "15", "--lr", "3e-3",
            "--batch-size", "4", "--label", "intent", "--slots", "--cache-dir", str(tmp / "c"), "--out-dir",
            str(tmp / "r"), "--checkpoint-dir", str(tmp / "ck")]
    cli.main(args)
    app = create_app(lambda: Predictor(parse_args(args).run_dir), max_batch=8, max_wait_ms=0, max_inputs=4,
                     max_queue=16)
    with TestClient(app) as c:
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        yield c, Predictor(parse_args(args).run_dir)


def test_parse_answers_as_rasa_does_with_offsets_into_the_text_as_sent(joint_server):
    c, predictor = joint_server
    text = "  wake me up at  five am"
    one = c.post("/parse", content=json.dumps({"text": text, "top_k": 2}).encode(),
                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert one.status_code == 200
    got = one.json()
    assert set(got) == {"text", "intent", "intent_ranking", "slots"} and got["text"] == text
    assert got["intent"] == got["intent_ranking"][0] and len(got["intent_ranking"]) == 2
    (top, found), = predictor.parse([text], 2)
    assert got["intent"]["name"] == top[0]["label"]
    assert [(s["slot"], s["value"]) for s in got["slots"]] == [(s["slot"], s["value"]) for s in found]
    assert got["slots"] and all(text[s["start"]:s["end"]] == s["value"] for s in got["slots"])
    long = "x " * 50_000 + "wake me up at five am"  # 100 kB: truncated from the left, its end still parsed
    answer = c.post("/parse", json={"text": long, "top_k": 1})
    assert answer.status_code == 200 and all(long[x["start"]:x["end"]] == x["value"] for x in answer.json()["slots"])
    controls = c.post("/parse", json={"text": "wake\x00 me\x1b up\u202e at five"})
    assert controls.status_code == 200 and controls.json()["text"] == "wake\x00 me\x1b up\u202e at five"
    assert c.post("/parse", content=b'{"text": "\xff wake"}').status_code == 422
    assert c.post("/parse", content=b'["wake me up"]').status_code == 422
    many = c.post("/parse", json={"texts": ["play some jazz", ""], "min_confidence": 1.0}).json()
    assert [m["intent"] for m in many] == [None, None] and many[1]["slots"] == []  # abstention, empty text
    assert "time" in c.get("/info").json()["slots"]


@pytest.mark.parametrize("body, status", [
    ({}, 422), ({"text": "a", "texts": ["b"]}, 422), ({"texts": []}, 422), ({"text": ["a"]}, 422),
    ({"texts": [{"a": 1}]}, 422), ({"text": "a", "top_k": 0}, 422), ({"texts": ["a"] * 5}, 413),
])
def test_parse_refuses_bad_requests(joint_server, body, status):
    c, _ = joint_server
    answer = c.post("/parse", json=body)
    assert answer.status_code == status and answer.json()["detail"]


def test_export_writes_both_outputs_and_gates_the_slots(joint_server, monkeypatch, tmp_path):
    import export
    from inference import Predictor

    _, predictor = joint_server
    run_dir = os.path.dirname(predictor.path)
    data = os.path.join(os.path.dirname(os.path.dirname(run_dir)), "en-US.jsonl")
    report = cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    assert {"accuracy", "slot_f1", "exact_match"} == set(report["torch"])
    assert report["onnx"]["slot_f1"] == pytest.approx(report["torch"]["slot_f1"], abs=1e-9) and report["onnx-int8"]
    texts = ["wake me up at five am", "play some jazz", "will it snow tomorrow"]
    onnx = Predictor(run_dir, "onnx").parse(texts)
    assert [slots for _, slots in onnx] == [slots for _, slots in predictor.parse(texts)]
    # a gate the slots fail leaves the graphs of the last export, and says so
    monkeypatch.setattr(export, "GATE_SLOT_DROP", -1.0)
    with pytest.raises(UserError, match="failed the accuracy gate"):
        cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    assert json.load(open(os.path.join(predictor.path, "export.json")))["onnx"]["passed"] is False


def test_ray_serve_replicas_answer_parse_and_shut_down_cleanly(run_args, tmp_path):
    import signal
    import socket
    import time
    import urllib.error
    import urllib.request

    args = [*run_args, "--label", "intent", "--slots", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ckpt")]
    cli.main(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--task", "serve", "--checkpoint",
                             parse_args(args).run_dir, "--replicas", "2", "--threads", "1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        request = urllib.request.Request(url + "/parse", data=b'{"texts": ["wake me up at five am", "play jazz"]}')
        for _ in range(120):  # a replica still loading its model answers 503, as a single process does
            try:
                answers = json.loads(urllib.request.urlopen(request, timeout=60).read())
                break
            except urllib.error.HTTPError as e:
                assert e.code == 503, e.read()
                time.sleep(0.5)
        assert [a["text"] for a in answers] == ["wake me up at five am", "play jazz"]
        assert all(a["text"][s["start"]:s["end"]] == s["value"] for a in answers for s in a["slots"])
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-2000:]
    assert "2 replicas ready" in out and "shutting down the replicas" in out
