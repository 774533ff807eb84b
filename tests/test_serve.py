"""Inference, export and serving with a checkpoint of the tiny model trained on the toy set."""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import main as cli
from arguments import parse_args
from conftest import wait_until_healthy
from fileio import UserError
from inference import Predictor
from serve import create_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """A confident checkpoint: the tiny model fitted to the toy set (so int8 keeps its top-1)."""
    from tiny import write_massive

    tmp = tmp_path_factory.mktemp("trained")
    data = write_massive(tmp / "en-US.jsonl")
    args = ["--model", tiny_model, "--data", str(data), "--epochs", "15", "--lr", "3e-3", "--batch-size", "4",
            "--cache-dir", str(tmp / "cache"), "--out-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp / "ck")]
    results = cli.main(args)
    return parse_args(args).run_dir, str(data), results


def test_calibration_is_fitted_on_validation_and_stored(trained):
    run_dir, _, results = trained
    cal = results["calibration"]
    assert cal["temperature"] > 0 and cal["test_nll_calibrated"] <= cal["test_nll"] + 0.05
    meta = json.load(open(os.path.join(run_dir, "best", "meta.json")))
    assert meta["temperature"] == cal["temperature"]
    p = Predictor(run_dir)
    probs = p.probabilities(["wake me up at five am", "play some jazz"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1)
    # calibrated = softmax(logits / T): the same ranking as the raw logits
    assert (probs.argmax(1) == p.logits(["wake me up at five am", "play some jazz"]).argmax(1)).all()


def test_predict_abstains_below_min_confidence(trained):
    run_dir, _, _ = trained
    p = Predictor(run_dir)
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2]])
    assert p.rank(["a", "b"], probs, k=2, min_confidence=0.6) == [[], [{"label": "music", "score": 0.7},
                                                                       {"label": "weather", "score": 0.2}]]
    records = cli.main(["--task", "predict", "--checkpoint", run_dir, "--min-confidence", "0.0", "play some jazz"])
    assert len(records[0]["predictions"]) == 3
    with pytest.raises(SystemExit):
        cli.main(["--task", "predict", "--checkpoint", run_dir, "--min-confidence", "1.5", "play some jazz"])


@pytest.fixture
def fp32_torch(monkeypatch):
    """The torch backend in fp32 on any CPU: where it would hold bf16 weights, it differs from fp32 ONNX by ~1e-2."""
    import utils

    monkeypatch.setattr(utils, "use_bf16", lambda device: False)


def test_export_passes_the_gate_and_onnx_backends_agree(trained, fp32_torch):
    run_dir, data, _ = trained
    report = cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    best = os.path.join(run_dir, "best")
    assert os.path.isfile(os.path.join(best, "model.onnx")) and os.path.isfile(os.path.join(best, "model.int8.onnx"))
    assert report["onnx"]["passed"] and report["onnx-int8"]["passed"]
    assert json.load(open(os.path.join(best, "export.json")))["onnx"]["agreement"] == report["onnx"]["agreement"]
    texts = ["wake me up at five am", "is it raining today", "turn up the music", "x " * 500]  # batch and length vary
    ref = Predictor(run_dir).probabilities(texts)
    for backend in ("onnx", "onnx-int8"):
        got = Predictor(run_dir, backend).probabilities(texts)
        assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(Predictor(run_dir, "onnx").probabilities(texts), ref, atol=1e-4)


def test_export_gates_against_the_fp32_model_on_a_bf16_cpu(trained, monkeypatch):
    """Where the torch backend runs in bf16, the gate's reference is still the fp32 model, as trained and exported;
    the bf16 backend's agreement with it is reported beside."""
    import utils

    monkeypatch.setattr(utils, "use_bf16", lambda device: True)  # as on a CPU with native bf16
    import export

    monkeypatch.setattr(export, "use_bf16", lambda device: True)
    run_dir, data, _ = trained
    report = cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    assert report["onnx"]["agreement"] == 1.0  # fp32 graph against fp32 torch
    assert "agreement" in report["torch-bf16"] and report["torch-bf16"]["accuracy"] > 0


@pytest.mark.parametrize("int8_only", [True, False])
def test_export_puts_in_place_only_the_graphs_that_pass(trained, monkeypatch, int8_only):
    import export

    run_dir, data, _ = trained
    best = os.path.join(run_dir, "best")
    for name in ("model.onnx", "model.int8.onnx"):
        if os.path.exists(os.path.join(best, name)):
            os.remove(os.path.join(best, name))
    real, calls = export.gate, []

    def gate(*args):  # onnx is gated first, then onnx-int8
        calls.append(1)
        return real(*args) and int8_only and len(calls) == 1

    monkeypatch.setattr(export, "gate", gate)
    with pytest.raises(UserError, match="failed the accuracy gate"):
        cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    assert not os.path.exists(os.path.join(best, ".export"))
    assert os.path.exists(os.path.join(best, "model.onnx")) == int8_only  # fp32 is written when only int8 fails
    assert not os.path.exists(os.path.join(best, "model.int8.onnx"))
    assert json.load(open(os.path.join(best, "export.json")))["onnx-int8"]["passed"] is False


def test_the_gate_weighs_a_small_test_split_by_its_uncertainty():
    import numpy as np

    import export

    def judged(n, flipped):
        """A backend that disagrees with the reference on `flipped` of n utterances, each time to its cost."""
        ref = {"top1": np.zeros(n, int), "right": np.ones(n, bool), "exact": None}
        mine = {"top1": np.r_[np.ones(flipped, int), np.zeros(n - flipped, int)],
                "right": np.r_[np.zeros(flipped, bool), np.ones(n - flipped, bool)], "exact": None}
        row = {"accuracy": 1 - flipped / n}
        return export.gate(row, {"accuracy": 1.0}, mine, ref), row

    ok, row = judged(50, 1)  # 98% agreement and a 2-point drop: within one utterance's noise on 50
    assert ok and row["agreement_p"] > 0.05 and row["accuracy_drop_points"] == 2.0
    ok, row = judged(3000, 90)  # 97% agreement on 3,000: clearly below 98.5%
    assert not ok and row["agreement_p"] < 0.05 and row["accuracy_drop_lower_bound"] > export.GATE_DROP
    assert judged(3000, 3)[0]  # 99.9% agreement, a 0.1-point drop: passes


@pytest.fixture
def client(trained):
    run_dir, _, _ = trained
    release = threading.Event()

    def load():
        release.wait(30)
        return Predictor(run_dir)

    app = create_app(load, max_batch=64, max_wait_ms=30, max_inputs=8, max_queue=16)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 503  # still loading
        release.set()
        wait_until_healthy(c)
        yield c, app


def test_a_replica_app_starts_only_once_its_model_is_loaded(trained):
    # a Ray Serve replica is routed to once its start-up ends: that start-up must include the load
    run_dir, _, _ = trained
    loads = []

    def load():
        time.sleep(0.5)
        loads.append(1)
        return Predictor(run_dir)

    with TestClient(create_app(load, max_batch=8, load_before_start=True)) as c:
        assert loads == [1] and c.get("/health").status_code == 200
    with TestClient(create_app(lambda: 1 / 0, load_before_start=True)) as c:  # a failed load still starts, to say why
        health = c.get("/health")
        assert health.status_code == 503 and "division by zero" in health.json()["detail"]


def test_serve_predict_info_and_errors(client):
    c, _ = client
    one = c.post("/predict", json={"inputs": "wake me up at five am", "top_k": 2})
    assert one.status_code == 200 and len(one.json()) == 2 and one.json()[0]["label"] == "alarm"
    many = c.post("/predict", json={"inputs": ["play some jazz", "", "very long " * 400]})
    assert many.status_code == 200 and [len(x) for x in many.json()] == [3, 0, 3]
    info = c.get("/info").json()
    assert info["labels"] == ["alarm", "music", "weather"] and info["backend"] == "torch" and info["temperature"] > 0
    assert info["spelling"] is False and info["streams"] == 1
    assert c.post("/predict", json={"inputs": []}).status_code == 422
    assert c.post("/predict", json={"inputs": ""}).status_code == 422
    assert c.post("/predict", json={"text": "hi"}).status_code == 422
    assert c.post("/predict", json={"inputs": 5}).status_code == 422
    assert c.post("/predict", json={"inputs": "hi", "top_k": 0}).status_code == 422
    assert c.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    too_many = c.post("/predict", json={"inputs": ["hi"] * 9})
    assert too_many.status_code == 413 and "at most 8" in too_many.json()["detail"]


def test_serve_reads_json_whatever_the_content_type_and_rejects_bad_bodies(client):
    c, _ = client
    # curl -d, as the README's commands send it, declares application/x-www-form-urlencoded
    form = {"content-type": "application/x-www-form-urlencoded"}
    curl = c.post("/predict", content=b'{"inputs": "wake me up at seven", "top_k": 2}', headers=form)
    assert curl.status_code == 200 and len(curl.json()) == 2
    assert c.post("/predict", content=b'{"inputs": ["play jazz", "what is the weather"], "min_confidence": 0.5}',
                  headers=form).status_code == 200
    assert c.post("/predict", json={"inputs": "wake\x00 me\x1b up \u202e at five"}).status_code == 200
    bad_utf8 = c.post("/predict", content=b'{"inputs": "wake me \xff\xfe up"}', headers=form)
    assert bad_utf8.status_code == 422 and "utf-8" in bad_utf8.text.lower()
    for body in (b'["wake me up"]', b'{"inputs": {"nested": "x"}}', b'{"inputs": [["a"]]}', b'{"inputs": "x", '
                 b'"top_k": "2x"}', b""):
        answer = c.post("/predict", content=body, headers=form)
        assert answer.status_code == 422 and answer.json()["detail"], body
    assert c.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_serve_batches_concurrent_requests(client):
    c, app = client
    batcher = app.state.serving.batcher
    before = batcher.passes
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: c.post("/predict", json={"inputs": f"play song {i}"}), range(16)))
    assert all(a.status_code == 200 for a in answers)
    assert batcher.passes - before < 16  # requests shared forward passes


def test_two_streams_run_passes_side_by_side_with_the_answers_of_one(trained):
    run_dir = trained[0]
    predictor = Predictor(run_dir)
    both = threading.Barrier(2, timeout=10)
    forward = predictor.outputs

    def outputs(*args, **kwargs):  # each pass waits until the other has started too: only two streams get past
        both.wait()
        return forward(*args, **kwargs)

    predictor.outputs = outputs
    app = create_app(lambda: predictor, max_batch=1, max_wait_ms=0, max_inputs=8, max_queue=64, streams=2)
    texts = [f"play song number {i} please" for i in range(8)]
    with TestClient(app) as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
        wait_until_healthy(c)
        assert c.get("/info").json()["streams"] == 2
        answers = list(pool.map(lambda t: c.post("/predict", json={"inputs": t, "top_k": 2}), texts))
    assert all(a.status_code == 200 for a in answers) and not both.broken
    assert [a.json() for a in answers] == Predictor(run_dir).top_k(texts, 2)


def test_serve_overloaded_queue_answers_503(client):
    c, app = client
    batcher = app.state.serving.batcher
    batcher.waiting = 16  # as if 16 utterances were queued
    try:
        r = c.post("/predict", json={"inputs": "hi"})
    finally:
        batcher.waiting = 0
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_serve_bad_checkpoint_is_one_line(trained, tmp_path):
    with pytest.raises(UserError, match="checkpoint folder not found"):
        cli.main(["--task", "serve", "--checkpoint", str(tmp_path / "nope")])
    old = tmp_path / "old"
    shutil.copytree(os.path.join(trained[0], "best"), old)
    os.remove(old / "words.json")
    with pytest.raises(UserError, match="predates spelling correction"):  # before the server starts
        cli.main(["--task", "serve", "--checkpoint", str(old), "--spelling"])


def test_plots_draws_the_reliability_diagram(trained, tmp_path):
    import plots

    run_dir, _, results = trained
    path = os.path.join(os.path.dirname(os.path.dirname(run_dir)), "results", f"{results['run_name']}.json")
    assert plots.main([path, "--out-dir", str(tmp_path)]) == 0
    assert os.path.getsize(tmp_path / f"{results['run_name']}-reliability.png") > 1000


def test_export_merges_lora_adapters(tiny_model, data_file, tmp_path, monkeypatch, fp32_torch):
    import export

    args = ["--task", "lora", "--lora-rank", "4", "--model", tiny_model, "--data", data_file, "--epochs", "2",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "results"),
            "--checkpoint-dir", str(tmp_path / "ck")]
    cli.main(args)
    monkeypatch.setattr(export, "GATE_AGREEMENT", 0.0)  # the barely trained tiny model is near-uniform: no gate
    monkeypatch.setattr(export, "GATE_DROP", 100.0)
    run_dir = parse_args(args).run_dir
    report = cli.main(["--task", "export", "--model", tiny_model, "--checkpoint", run_dir, "--data", data_file])
    assert report["onnx"]["agreement"] == 1.0  # the merged graph computes what the adapter model computes
    texts = ["wake me up at five am", "play some jazz please"]
    np.testing.assert_allclose(Predictor(run_dir, "onnx").logits(texts),
                               Predictor(run_dir, base_model=tiny_model).logits(texts), atol=1e-4)


def test_serve_answers_match_the_predictor_in_request_order(client):
    c, app = client
    texts = ["play some jazz", "wake me up at five am on friday please", "is it raining", "turn it up",
             "what is the weather like in paris tomorrow morning", "hi", "set an alarm", "next song"]
    got = c.post("/predict", json={"inputs": texts, "top_k": 2}).json()
    want = app.state.serving.predictor.top_k(texts, 2)  # one padded batch; the server sorts into smaller ones
    assert [[x["label"] for x in row] for row in got] == [[x["label"] for x in row] for row in want]
    assert [x["score"] for row in got for x in row] == pytest.approx([x["score"] for row in want for x in row],
                                                                       abs=2e-4)


def test_serve_with_spelling_correction(trained):
    run_dir = trained[0]
    app = create_app(lambda: Predictor(run_dir, spelling=True), max_batch=8, max_wait_ms=0, max_inputs=8,
                     max_queue=16)
    with TestClient(app) as c:
        wait_until_healthy(c)
        assert c.get("/info").json()["spelling"] is True
        got = c.post("/predict", json={"inputs": ["wake me up at fivve am"], "top_k": 3}).json()
    assert got == Predictor(run_dir).top_k(["wake me up at five am"], 3)


def test_the_request_log_keeps_each_parse_as_a_json_line_and_rotates(trained, tmp_path):
    from serve import RequestLog

    run_dir, _, _ = trained
    path = tmp_path / "requests.jsonl"
    log = RequestLog(str(path), max_bytes=600)
    with TestClient(create_app(lambda: Predictor(run_dir), log=log)) as c:
        wait_until_healthy(c)
        assert c.post("/parse", content=json.dumps({"texts": ["wake me up at seven", "play jazz"]})).status_code == 200
        for _ in range(5):
            c.post("/parse", content=json.dumps({"text": "what is the weather like today"}))
        c.post("/predict", content=json.dumps({"inputs": "not logged"}))  # only /parse answers are logged
    lines = [json.loads(line) for f in sorted(tmp_path.glob("requests.jsonl*"), reverse=True) for line in open(f)]
    assert [x["text"] for x in lines] == ["wake me up at seven", "play jazz"] + ["what is the weather like today"] * 5
    assert {"time", "intent", "confidence", "slots"} <= set(lines[0]) and lines[0]["intent"] in ("alarm", "music",
                                                                                                 "weather")
    assert len(list(tmp_path.glob("requests.jsonl*"))) > 1 and os.path.getsize(path) <= 600  # rotated by size


def test_a_request_log_that_cannot_be_written_is_one_line(trained, tmp_path):
    run_dir, _, _ = trained
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--task", "serve", "--checkpoint", run_dir,
                           "--log-requests", str(tmp_path / "no" / "such" / "folder.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: --log-requests ")
