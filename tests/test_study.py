"""study.py: a small grid on a local Ray instance, skipping, failures, --list and bad input."""
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import experiments
import main
import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def grid(tiny_model, data_file, tmp_path):
    """study.py arguments for a 2 x 2 grid of 1-epoch runs with the tiny encoder, everything under tmp_path."""
    return ["--experiments", "baseline,lora-r4", "--seeds", "1,2", "--data", data_file, "--logs", str(tmp_path / "logs"),
            "--report-dir", str(tmp_path / "plots"), "--cpus-per-run", "1", "--retries", "0",
            "--model", tiny_model, "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "checkpoints")]


def run_study(args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "study.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_grid_runs_then_skips_and_reports(grid, tmp_path):
    first = run_study(grid)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "study: 4 ran, 0 skipped, 0 busy elsewhere, 0 failed, in " in first.stderr and " h wall time" in first.stderr
    results = sorted(os.listdir(tmp_path / "results"))
    assert len(results) == 4 and {r.split("-s")[-1] for r in results} == {"1.json", "2.json"}
    for name in results:
        r = json.load(open(tmp_path / "results" / name))
        assert r["config"]["epochs"] == 1 and str(tmp_path) not in json.dumps(r)  # no machine paths
        assert r["environment"]["data"]["file"] == "en-US.jsonl" and len(r["environment"]["data"]["sha256"]) == 64
    assert len(os.listdir(tmp_path / "logs")) >= 4
    table = (tmp_path / "plots" / "table.md").read_text()
    # ", cpu, bf16" on a CPU with native bf16: the report keeps those runs apart from fp32 ones
    assert re.search(r"\| LoRA r=4, 1 epoch \[scenario, tiny-bert\d+(, cpu, bf16)?\] \| 2 \|", table)
    assert "paired seeds" in table

    # a study of one experiment skips its finished runs and still reports every run in the results folder
    os.remove(tmp_path / "plots" / "table.md")
    again = run_study([*grid, "--experiments", "lora-r4"])
    assert again.returncode == 0
    assert "2 already done, 0 to run" in again.stderr
    table = (tmp_path / "plots" / "table.md").read_text()
    assert re.search(r"\| baseline, 1 epoch \[scenario, tiny-bert\d+(, cpu, bf16)?\] \| 2 \|", table)
    assert re.search(r"\| LoRA r=4, 1 epoch \[[^]]*\] \| baseline, 1 epoch \[[^]]*\] \| 2 \|", table)


def test_changed_settings_under_an_existing_name_are_refused(grid, run_args, tmp_path):
    main.main([*run_args, "--seed", "1", "--epochs", "1"])  # the grid's baseline seed 1, run by hand
    (before,) = os.listdir(tmp_path / "results")
    kept = (tmp_path / "results" / before).read_bytes()
    same = run_study([*grid, "--experiments", "baseline", "--seeds", "1", "--no-report"])
    assert same.returncode == 0 and "1 already done, 0 to run" in same.stderr
    clash = run_study([*grid, "--experiments", "baseline", "--seeds", "1", "--weight-decay", "0.1"])
    assert clash.returncode != 0 and "exists with other settings" in clash.stderr
    assert (tmp_path / "results" / before).read_bytes() == kept


def test_a_failing_run_is_named_and_the_exit_is_non_zero(grid, tmp_path):
    res = run_study([*grid, "--experiments", "baseline", "--seeds", "1", "--no-report",
                     "--model", str(tmp_path / "no-such-encoder")])
    assert res.returncode == 1
    assert "FAILED baseline-scenario-no-such-encoder-" in res.stderr and ".log" in res.stderr
    assert not os.path.exists(tmp_path / "results")


def test_list_prints_commands_that_run(grid, tmp_path):
    res = run_study([*grid, "--list"])
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and len(lines) == 4 and all(line.startswith("python main.py --task ") for line in lines)
    assert not os.path.exists(tmp_path / "logs")  # listing runs nothing
    # the listed commands assume the activated environment; here its interpreter is the one running the tests
    argv = shlex.split(lines[0])
    ran = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert len(os.listdir(tmp_path / "results")) == 1


@pytest.mark.parametrize("extra, message", [
    (["--experiments", "baseline,bogus"], "unknown experiment bogus"),
    (["--seeds", "42,x"], "--seeds '42,x' does not parse"),
    (["--seeds", "1,1"], "distinct"),
    (["--data", "/no/such/file.jsonl"], "data not found"),
    (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
    (["--lora-rank", "4"], "baseline: --lora-rank applies only to --task lora"),
])
def test_bad_input_is_one_line_before_any_run(grid, tmp_path, extra, message):
    res = run_study([*grid, *extra])
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: ")
    assert message in res.stderr
    assert not os.path.exists(tmp_path / "results")


def test_a_run_held_by_another_study_is_not_run_twice(tmp_path):
    lock = tmp_path / "run.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert study.run_one(["--epochs", "1"], str(tmp_path / "run.log"), str(lock), str(tmp_path / "last.pt")) == "busy"
    assert not os.path.exists(tmp_path / "run.log")


def test_default_grid_is_the_study_and_recipe_candidates_are_selectable():
    args = study.build_parser().parse_args(["--data", ""])
    assert [name for name, *_ in study.plan(args, [])][::3] == experiments.STUDY_GRID and len(experiments.STUDY_GRID) == 9
    args = study.build_parser().parse_args(["--experiments", "mean-pooling,augment", "--seeds", "42"])
    cfgs = [cfg for *_, cfg in study.plan(args, [])]
    assert [(c.task, c.pooling, c.augment) for c in cfgs] == [("custom", "mean", 0.0), ("custom", "cls", 0.3)]


def test_recipe_ablation_drops_exactly_one_technique():
    names = ["recipe", *(f"recipe-no-{n}" for n in experiments.RECIPE)]
    args = study.build_parser().parse_args(["--experiments", ",".join(names), "--seeds", "42"])
    cfgs = {name: cfg for name, _, _, cfg in study.plan(args, [])}
    full = cfgs["recipe"]
    assert (full.pooling, full.label_smoothing, full.ema, full.aux_weight, full.augment) == ("mean", 0.1, 0.999, 0.5, 0.3)
    for n in experiments.RECIPE:
        ablated = cfgs[f"recipe-no-{n}"]
        differ = [k for k in ("pooling", "label_smoothing", "ema", "aux_weight", "augment")
                  if getattr(ablated, k) != getattr(full, k)]
        assert len(differ) == 1 and ablated.llrd == full.llrd and ablated.warmup_ratio == full.warmup_ratio
    assert len({c.run_name for c in cfgs.values()}) == len(cfgs)


def test_custom_without_llrd_and_warmup_trains_as_the_baseline(run_args):
    """What joint-lr1e-4-slots4-augment relies on to add --augment (a custom flag) to the baseline."""
    common = [*run_args, "--label", "intent", "--slots", "--lr", "1e-3", "--batch-size", "8"]
    baseline = main.main(["--task", "baseline", *common])
    custom = main.main(["--task", "custom", "--llrd", "1", "--warmup-ratio", "0", *common])
    same = lambda r: {k: v for k, v in r.items() if k not in ("run_name", "task", "config", "seconds_per_epoch")}
    assert [dict(h, seconds=0) for h in baseline["history"]] == [dict(h, seconds=0) for h in custom["history"]]
    assert same({**baseline, "history": None}) == same({**custom, "history": None})
