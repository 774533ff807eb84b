"""Serving the parser: /parse, /predict from a joint checkpoint, export with slots, and Ray Serve replicas."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import main as cli
from fileio import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def joint_server(joint_checkpoint):
    """A client of the app serving the tiny joint checkpoint, once loaded."""
    from fastapi.testclient import TestClient

    from conftest import wait_until_healthy
    from inference import Predictor
    from serve import create_app

    app = create_app(lambda: Predictor(joint_checkpoint), max_batch=8, max_wait_ms=0, max_inputs=4, max_queue=16)
    with TestClient(app) as c:
        wait_until_healthy(c)
        yield c, Predictor(joint_checkpoint)


def test_serve_answers_predict_from_a_joint_checkpoint(joint_server):
    c, predictor = joint_server
    got = c.post("/predict", json={"inputs": ["wake me up at five am"], "top_k": 2})
    assert got.status_code == 200
    assert got.json() == predictor.top_k(["wake me up at five am"], 2)


def test_the_curl_commands_of_the_readme_and_docs_work_as_written(joint_server):
    c, _ = joint_server
    commands = [cmd for doc in ("README.md", "docs/serving.md") for cmd in
                re.findall(r"curl -s localhost:8000(/\w+) -d '([^']*)'", open(os.path.join(ROOT, doc)).read())]
    assert {path for path, _ in commands} == {"/parse", "/predict"} and len(commands) >= 6
    for path, body in commands:  # curl -d declares application/x-www-form-urlencoded
        answer = c.post(path, content=body.encode(), headers={"content-type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 200, (path, body, answer.text)


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
    # abstention needs a top probability below the threshold: where bf16 weights saturate one utterance's to 1.0,
    # take the least sure of a few
    candidates = ["play some jazz", "is it", "the thing", "hmm okay"]
    top = predictor.probabilities(candidates).max(1)
    assert top.min() < 1.0
    many = c.post("/parse", json={"texts": [candidates[int(top.argmin())], ""], "min_confidence": 1.0}).json()
    assert [m["intent"] for m in many] == [None, None] and many[1]["slots"] == []  # abstention, empty text
    assert "time" in c.get("/info").json()["slots"]


@pytest.mark.parametrize("body, status", [
    ({}, 422), ({"text": "a", "texts": ["b"]}, 422), ({"texts": []}, 422), ({"text": ""}, 422), ({"text": ["a"]}, 422),
    ({"texts": [{"a": 1}]}, 422), ({"text": "a", "top_k": 0}, 422), ({"texts": ["a"] * 5}, 413),
])
def test_parse_refuses_bad_requests(joint_server, body, status):
    c, _ = joint_server
    answer = c.post("/parse", json=body)
    assert answer.status_code == status and answer.json()["detail"]


def test_export_writes_both_outputs_and_gates_the_slots(joint_server, monkeypatch):
    import export
    from inference import Predictor

    _, predictor = joint_server
    run_dir = os.path.dirname(predictor.path)
    data = os.path.join(os.path.dirname(os.path.dirname(run_dir)), "en-US.jsonl")
    report = cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    assert {"accuracy", "slot_f1", "exact_match"} == set(report["torch"])
    assert report["onnx"]["slot_f1"] == pytest.approx(report["torch"]["slot_f1"], abs=1e-9) and report["onnx-int8"]
    # int8 is block-wise in the encoder, and the slot head, whose scores feed the CRF, stays fp32
    import onnx

    nodes = {n.name: n.op_type for n in onnx.load(os.path.join(predictor.path, "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in nodes.values() and "DynamicQuantizeLinear" not in nodes.values()
    assert {op for name, op in nodes.items() if "slot_head" in name} == {"MatMul", "Add"}
    texts = ["wake me up at five am", "play some jazz", "will it snow tomorrow"]
    onnx, fp32 = Predictor(run_dir, "onnx").parse(texts), Predictor(run_dir, fp32=True).parse(texts)
    spans = [[{k: v for k, v in s.items() if k != "score"} for s in slots] for _, slots in fp32]
    assert [[{k: v for k, v in s.items() if k != "score"} for s in slots] for _, slots in onnx] == spans
    assert [s["score"] for _, slots in onnx for s in slots] == pytest.approx(
        [s["score"] for _, slots in fp32 for s in slots], abs=2e-4)
    # a gate the slots fail leaves the graphs of the last export, and says so
    monkeypatch.setattr(export, "GATE_SLOT_DROP", -1.0)
    with pytest.raises(UserError, match="failed the accuracy gate"):
        cli.main(["--task", "export", "--checkpoint", run_dir, "--data", data])
    assert json.load(open(os.path.join(predictor.path, "export.json")))["onnx"]["passed"] is False


def test_quantization_bench_scores_each_choice_on_validation(joint_checkpoint, tmp_path):
    data = os.path.join(os.path.dirname(os.path.dirname(joint_checkpoint)), "en-US.jsonl")
    out = tmp_path / "quantization.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quantization.py"), "--checkpoint", joint_checkpoint,
                    "--data", data, "--out", str(out)], check=True, capture_output=True)
    report = json.load(open(out))
    rows = {r["variant"]: r for r in report["rows"]}
    assert report["split"] == "validation" and set(report["fp32"]) == {"accuracy", "slot_f1", "exact_match"}
    assert rows["fp32 ONNX"]["agreement"] == 1 and len(rows) == 7
    size = {k.split(",")[-1].strip(): r["megabytes"] for k, r in rows.items() if k.startswith("block-wise, 32")}
    assert size["embeddings int8 too"] < size["32 rows (export)"] < rows["fp32 ONNX"]["megabytes"]
    assert all(0 <= r["agreement"] <= 1 and abs(r["slot_f1_drop_points"]) <= 100 and r["utterances_per_second"] > 0
               and r["single_ms_median"] > 0 for r in rows.values())


def test_backends_bench_times_every_backend_of_an_exported_checkpoint(joint_checkpoint, tmp_path):
    data = os.path.join(os.path.dirname(os.path.dirname(joint_checkpoint)), "en-US.jsonl")
    cli.main(["--task", "export", "--checkpoint", joint_checkpoint, "--data", data])
    out = tmp_path / "backends.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "backends.py"), "--checkpoint", joint_checkpoint,
                    "--data", data, "--threads", "1", "--single", "3", "--out", str(out)], check=True,
                   capture_output=True)
    report = json.load(open(out))
    assert [r["backend"] for r in report["rows"]] == ["torch", "onnx", "onnx-int8"] and report["cpu"]
    assert all(r["utterances_per_second"] > 0 and r["single_ms_median"] > 0 and 0 <= r["test_accuracy"] <= 1
               for r in report["rows"])


def test_serve_load_bench_measures_the_server_against_the_model_alone(joint_checkpoint, tmp_path):
    data = os.path.join(os.path.dirname(os.path.dirname(joint_checkpoint)), "en-US.jsonl")
    out = tmp_path / "serve.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "serve.py"), "--checkpoint", joint_checkpoint,
                    "--data", data, "--endpoint", "parse", "--concurrency", "1,4", "--requests", "20", "--streams", "2",
                    "--threads", "1", "--out", str(out)], check=True, capture_output=True, timeout=300)
    report = json.load(open(out))
    before, after = report["model_alone_before_and_after"]
    assert report["model_alone_utterances_per_second"] == pytest.approx((before + after) / 2)
    rows = report["rows"]
    assert [(r["batching"], r["concurrency"]) for r in rows] == [(True, 1), (True, 4), (False, 1), (False, 4)]
    assert all(r["errors"] == 0 and r["requests"] == 20 and r["p50_ms"] <= r["p99_ms"] for r in rows)
    assert all(r["of_model_alone"] == pytest.approx(r["requests_per_second"] / (before + after) * 2) for r in rows)
    assert (report["streams"], report["threads"]) == (2, 1)


def test_ray_serve_replicas_answer_parse_and_shut_down_cleanly(joint_checkpoint, tmp_path):
    import signal
    import time
    import urllib.error
    import urllib.request

    from conftest import free_port

    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:  # a file, not a pipe: Ray's start-up logs would fill a pipe nobody reads yet
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--task", "serve", "--checkpoint",
                                 joint_checkpoint, "--replicas", "2", "--threads", "1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(url + "/parse", data=b'{"texts": ["wake me up at five am", "play jazz"]}')
    try:
        deadline, answers = time.time() + 300, None  # Ray's start takes a minute on a busy 2-core machine
        while answers is None and time.time() < deadline and proc.poll() is None:
            try:
                answers = json.loads(urllib.request.urlopen(request, timeout=60).read())
            except urllib.error.HTTPError as e:  # 404: the proxy is up, the app not yet deployed; 503: Serve has
                assert e.code in (404, 503), e.read()  # no replica running yet
                time.sleep(0.5)
            except (urllib.error.URLError, TimeoutError):  # not listening yet, or a replica still busy starting
                time.sleep(0.5)
        assert answers is not None, log.read_text()[-2000:]
        assert [a["text"] for a in answers] == ["wake me up at five am", "play jazz"]
        assert all(a["text"][s["start"]:s["end"]] == s["value"] for a in answers for s in a["slots"])
        while "replicas ready" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)  # the first replica may answer before the second has loaded its model
        assert "2 replicas ready" in log.read_text(), log.read_text()[-2000:]
        # once ready, no replica is still loading: every request, whichever replica it reaches, is answered
        assert all(urllib.request.urlopen(url + "/health", timeout=10).status == 200 for _ in range(6))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    out = log.read_text()
    assert proc.returncode == 0, out[-2000:]
    assert "shutting down the replicas" in out


def test_one_predictor_parses_on_threads_at_once(joint_checkpoint):
    # the server's model streams share one Predictor: the same answers from threads at once, its fast tokenizer's
    # truncation switching between calls (slots read untruncated offsets)
    import concurrent.futures

    from inference import Predictor

    predictor = Predictor(joint_checkpoint)
    texts = ["wake me up at five am", "play some jazz", "what is the weather like in paris tomorrow"] * 4
    want = predictor.outputs(texts, 2)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: predictor.outputs(texts, 2), range(40)))
    for logits, words in got:
        np.testing.assert_allclose(logits, want[0], atol=1e-5)
        assert words == want[1]
