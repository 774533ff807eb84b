"""Hostile and broken input: files that would grow, loop or crash a reader, requests that would stall the server,
runs that would overwrite another data set's, and names and text that would reach a terminal, a markdown table or
the page as something other than text. Each gets one line, a non-zero exit, and nothing written."""
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

import main as cli
from arguments import parse_args
from conftest import wait_until_healthy
from fileio import UserError
from readers import read, source
from tiny import write_massive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NLU = 'version: "3.1"\nnlu:\n- intent: greet\n  examples: |\n    - hi\n    - hello\n'


def read_path(path):
    return read(source(str(path)))


def test_a_yaml_alias_bomb_is_refused_at_once_with_its_line(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 strings if expanded
    (tmp_path / "bomb.yml").write_text("\n".join(lines) + "\nnlu:\n- intent: *a9\n  examples: |\n    - hi\n")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"bomb\.yml:\d+: a YAML alias"):
        read_path(tmp_path / "bomb.yml")
    assert time.perf_counter() - start < 5


def test_a_folder_linked_to_itself_is_read_once(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "nlu.yml").write_text(NLU)
    os.symlink(".", data / "again")  # a link back into the folder
    os.symlink(data / "b", data / "a")  # and two that point at each other
    os.symlink(data / "a", data / "b")
    os.symlink(tmp_path / "elsewhere.yml", data / "out.yml")  # a file out of the folder
    (tmp_path / "elsewhere.yml").write_text(NLU)
    got = read_path(data)
    assert [x.text for x in got.examples] == ["hi", "hello"] and got.files == [str(data / "nlu.yml")]
    assert "4 symbolic link(s) not followed" in caplog.text


def test_an_empty_folder_is_one_line_and_exit_1(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--task", "check", "--data", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {tmp_path}: no data found")


@pytest.mark.parametrize("name, content, message", [
    ("big.csv", "text,intent\n" + "x" * 200_000 + ",greet\n", r"big\.csv:2: not CSV \(field larger than field limit"),
    ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", r"deep\.jsonl:1: malformed JSON \(nested too deeply\)"),
    ("null.yml", "nlu:\n- intent: null\n  examples: |\n    - hi\n", r"null\.yml:2: 'intent:' must name it with text"),
    ("list.yml", "nlu:\n- intent: [a, b]\n  examples: |\n    - hi\n", r"list\.yml:2: 'intent:' must name it with text"),
    ("syntax.yml", "nlu:\n- intent: greet\n  examples: |\n    - hi\n  bad: [unclosed\n",
     r"syntax\.yml:\d+: not YAML \("),
    ("nul.csv", "text,intent\n\0,greet\n", r"nul\.csv:2: empty text or intent"),
])
def test_hostile_files_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_path(tmp_path / name)


def test_a_run_of_another_data_set_of_the_same_name_is_not_overwritten(run_args, tmp_path):
    first = cli.main(run_args)
    cfg = parse_args(run_args)
    before = open(cfg.results_path).read(), open(os.path.join(cfg.run_dir, "best", "meta.json")).read()
    other = tmp_path / "other" / "en-US.jsonl"  # another data set with the same file name
    other.parent.mkdir()
    write_massive(other, {"train": 4, "dev": 1, "test": 1})
    changed = [*run_args[:3], str(other), *run_args[4:]]
    assert parse_args(changed).run_name == cfg.run_name
    with pytest.raises(UserError, match=r"holds a run of another en-US\.jsonl .* give --overwrite"):
        cli.main(changed)
    assert (open(cfg.results_path).read(), open(os.path.join(cfg.run_dir, "best", "meta.json")).read()) == before
    assert cli.main(run_args)["test_accuracy"] == first["test_accuracy"]  # the same data: a rerun replaces it
    replaced = cli.main([*changed, "--overwrite"])
    assert replaced["environment"]["data"]["sha256"] != first["environment"]["data"]["sha256"]


def test_predict_escapes_control_characters_and_reads_only_utf8(joint_checkpoint, tiny_model, tmp_path):
    run = [sys.executable, os.path.join(ROOT, "main.py"), "--task", "predict", "--checkpoint", joint_checkpoint,
           "--model", tiny_model, "--no-resolve"]
    lines = "wake\x1b]0;owned\x07 me\x1b[2J up\n\0\n\n".encode()  # on standard input: argv holds no NUL
    shown = subprocess.run(run, input=lines, capture_output=True, check=True).stdout.decode().splitlines()
    assert shown[0].startswith("wake\\x1b]0;owned\\x07 me\\x1b[2J up\t") and "\x1b" not in "".join(shown)
    assert shown[1:] == ["\\x00\t(empty)", "\t(empty)"]  # a NUL alone is as empty as nothing
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    proc = subprocess.run([*run, "--input", str(latin)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {latin}: not UTF-8 (invalid continuation byte " \
                                                           "at byte 3)"


def test_per_class_scores_show_label_names_as_text(tmp_path):
    import plots

    labels = ["<img src=x onerror=alert(1)>", "a|b", "$x$"]
    plots.per_class_report(labels, [0, 1, 2], [0, 2, 2], str(tmp_path), "hostile", "hostile labels")
    table = (tmp_path / "hostile-per-class.md").read_text()
    assert "<img" not in table and "&lt;img src=x onerror=alert(1)&gt;" in table and "| a\\|b |" in table


def test_evaluate_draws_a_split_without_demanding_the_others(tmp_path, joint_checkpoint, tiny_model):
    path = tmp_path / "small.csv"  # 4 examples of one intent: drawn at the checkpoint's 10%, they all stay in train
    path.write_text("text,intent\n" + "".join(f"wake me up {i},alarm_set\n" for i in range(4)))
    with pytest.raises(UserError, match="the test split is empty"):
        cli.main(["--task", "evaluate", "--checkpoint", joint_checkpoint, "--model", tiny_model, "--data", str(path),
                  "--split", "test", "--out-dir", str(tmp_path)])
    path.write_text("text,intent\n" + "".join(f"wake me up {i},alarm_set\n" for i in range(10)))
    report = cli.main(["--task", "evaluate", "--checkpoint", joint_checkpoint, "--model", tiny_model,
                       "--data", str(path), "--split", "test", "--out-dir", str(tmp_path)])
    assert report["split"] == "test" and report["examples"] == 1


@pytest.fixture
def served(joint_checkpoint):
    from inference import Predictor
    from serve import create_app

    app = create_app(lambda: Predictor(joint_checkpoint), max_inputs=4, max_body=4096)
    with TestClient(app) as c:
        wait_until_healthy(c)
        yield c, app


def test_a_body_over_the_limit_gets_413_unread(served):
    c, _ = served
    big = c.post("/parse", content=json.dumps({"text": "x" * 10_000}))
    assert big.status_code == 413 and big.json()["detail"] == "the body is over 4,096 bytes"
    assert c.post("/parse", content=json.dumps({"text": "wake me up"})).status_code == 200


def test_the_page_sends_a_strict_content_security_policy(served):
    c, _ = served
    headers = c.get("/").headers
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["script-src"].startswith("'sha256-") and "unsafe" not in headers["content-security-policy"]


def test_health_answers_while_a_parse_resolves(served, monkeypatch):
    c, app = served
    predictor, started = app.state.serving.predictor, threading.Event()
    real = predictor.postprocess

    def slow(*args, **kwargs):  # a resolution that takes a second, as a long text's once took minutes
        started.set()
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "postprocess", slow)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        parsing = pool.submit(c.post, "/parse", content=json.dumps({"text": "wake me up at five am"}))
        assert started.wait(10)
        t = time.perf_counter()
        assert c.get("/health").status_code == 200
        assert time.perf_counter() - t < 0.5 and not parsing.done()
        assert parsing.result().status_code == 200


def test_a_long_text_is_resolved_in_bounded_pieces(monkeypatch):
    import resolver

    lengths = []
    real = resolver.parsed
    monkeypatch.setattr(resolver, "parsed", lambda d, text, ctx, dims, **kw: lengths.append(len(text)) or real(
        d, text, ctx, dims, **kw))
    text = "remind me at five pm " * 5000  # 105,000 characters
    slots = [{"slot": "time", "value": "five pm", "start": i, "end": i + 7} for i in range(13, len(text), 21)]
    start = time.perf_counter()
    found = resolver.Resolver()(text, slots, resolver.context("2026-12-05T10:00:00+01:00", "Europe/Berlin"))
    assert len(found) == len(slots) and time.perf_counter() - start < 10
    if resolver.engine() is not None:
        assert len(lengths) <= resolver.MAX_WINDOWS and max(lengths) <= resolver.WINDOW
        assert found[0]["resolved"]["value"].startswith("2026-12-05T17:00")
    assert resolver.windows(200, slots[:1]) == [(0, 200)]  # an utterance is read whole, as before


def test_evaluate_redraws_the_test_split_as_a_run_with_val_data_drew_it(tmp_path):
    from arguments import complete_config
    from data import draw_split, scored_split, source_of

    path = tmp_path / "data.csv"
    path.write_text("text,intent\n" + "".join(f"utterance {i},intent_{i % 3}\n" for i in range(60)))
    src = source_of(parse_args(["--task", "check", "--data", str(path)]))
    examples = read(src.data).examples
    trained = complete_config({"task": "baseline", "val_data": "val.csv"})  # validation came from its own file
    test, split = scored_split(src, trained, "test")
    assert split == "test" and test == draw_split(examples, {"validation": 0.0, "test": 0.1}, 0)["test"]
    assert test != draw_split(examples, {"validation": 0.1, "test": 0.1}, 0)["test"]
