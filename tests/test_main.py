import json
import os
import subprocess
import sys

import pytest
import torch

import main as cli
from arguments import parse_args
from fileio import UserError
from utils import cpu_model, use_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_KEYS = {"run_name", "task", "config", "environment", "labels", "before_test_loss", "before_test_accuracy",
            "history", "seconds_per_epoch", "contrastive_seconds_per_epoch", "test_loss", "test_accuracy",
            "test_macro_f1", "best_epoch", "best_val_accuracy", "best_test_loss", "best_test_accuracy",
            "best_test_macro_f1", "test_predictions", "test_labels"}
ROW_KEYS = {"phase", "epoch", "train_loss", "train_accuracy", "lr", "seconds"}


@pytest.mark.parametrize("task, extra", [
    ("baseline", []), ("custom", []), ("supcon", ["--contrastive-epochs", "1"]),
    ("simclr", ["--contrastive-epochs", "1"]), ("lora", ["--lora-rank", "4"]),
])
def test_end_to_end(run_args, task, extra):
    results = cli.main(["--task", task, *run_args, *extra])
    path = parse_args(["--task", task, *run_args, *extra]).results_path
    with open(path) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert TOP_KEYS <= set(saved)
    assert saved["labels"] == ["alarm", "music", "weather"]
    assert len(saved["test_predictions"]) == 12
    assert 0 <= saved["test_accuracy"] <= 1 and saved["test_loss"] > 0
    classify = [r for r in saved["history"] if r["phase"] == "classify"]
    assert [r["epoch"] for r in classify] == [1, 2]
    for r in classify:
        assert ROW_KEYS | {"val_loss", "val_accuracy", "val_macro_f1"} <= set(r)
    contrastive = [r for r in saved["history"] if r["phase"] == "contrastive"]
    assert len(contrastive) == (1 if task in ("supcon", "simclr") else 0)
    env = saved["environment"]
    assert env["parameters_trainable"] <= env["parameters_total"]
    if task == "lora":
        assert env["trainable_percent"] < 10
    else:
        assert env["parameters_trainable"] == env["parameters_total"]


def test_same_command_same_numbers(run_args):
    a = cli.main(["--task", "supcon", "--contrastive-epochs", "1", *run_args])
    b = cli.main(["--task", "supcon", "--contrastive-epochs", "1", *run_args])
    strip = lambda r: [{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]]
    assert strip(a) == strip(b)
    assert a["test_predictions"] == b["test_predictions"] and a["test_loss"] == b["test_loss"]


def test_no_bf16_trains_in_fp32_under_the_same_settings(run_args):
    auto = cli.main(["--task", "baseline", *run_args, "--epochs", "1"])
    fp32 = cli.main(["--task", "baseline", *run_args, "--epochs", "1", "--no-bf16"])
    assert auto["environment"]["bf16"] == use_bf16(torch.device("cpu")) and fp32["environment"]["bf16"] is False
    # precision is how a machine runs the settings, not one of them: study.py treats both as the same run
    assert fp32["config"] == auto["config"] and "bf16" not in fp32["config"]
    if not auto["environment"]["bf16"]:  # on a CPU without native bf16 both ran in fp32: the same numbers
        assert fp32["test_predictions"] == auto["test_predictions"] and fp32["test_loss"] == auto["test_loss"]


def test_frozen_word_embeddings_stay_as_pretrained_while_the_rest_trains(run_args, tiny_model):
    from safetensors.torch import load_file

    res = cli.main(["--task", "baseline", *run_args, "--epochs", "1", "--freeze-embeddings", "--lr", "1e-3"])
    assert res["run_name"].endswith("-frozen-emb-s42") and res["config"]["freeze_embeddings"] is True
    env = res["environment"]
    assert env["parameters_total"] - env["parameters_trainable"] == 30522 * 32  # the table alone: vocab x hidden
    before = load_file(os.path.join(tiny_model, "model.safetensors"))
    cfg = parse_args(["--task", "baseline", *run_args, "--epochs", "1", "--freeze-embeddings", "--lr", "1e-3"])
    after = load_file(os.path.join(cfg.run_dir, "best", "encoder", "model.safetensors"))
    key = next(k for k in after if k.endswith("word_embeddings.weight"))
    assert torch.equal(after[key], before[key])
    position = next(k for k in after if k.endswith("position_embeddings.weight"))
    assert not torch.equal(after[position], before[position])


def test_learns_on_a_separable_toy_set(run_args):
    res = cli.main(["--task", "baseline", *run_args, "--epochs", "15", "--lr", "3e-3", "--batch-size", "4"])
    assert res["test_accuracy"] > res["before_test_accuracy"]
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]


def test_run_names_and_task_defaults():
    assert parse_args([]).run_name == "baseline-scenario-minilm-lr2e-05-bs16-e10-s42"
    cfg = parse_args(["--task", "custom", "--warmup-ratio", "0"])
    assert (cfg.lr, cfg.llrd, cfg.warmup_ratio) == (5e-5, 0.8, 0.0)
    cfg = parse_args(["--task", "simclr"])
    assert (cfg.temperature, cfg.batch_size, cfg.dropout, cfg.contrastive_lr) == (0.1, 32, 0.2, 1e-4)
    cfg = parse_args(["--task", "lora", "--lora-rank", "16"])
    assert (cfg.lora_alpha, cfg.lr) == (32, 3e-4) and "r16" in cfg.run_name
    cfg = parse_args(["--task", "serve", "--checkpoint", "x", "--max-wait-ms", "0"])
    assert (cfg.max_wait_ms, cfg.port, cfg.backend, cfg.max_inputs) == (0, 8000, "torch", 256)  # 0 means no wait


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "invalid choice"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--dropout", "1.5"], "--dropout must be in"),
    (["--temperature", "0.1"], "--temperature applies only to --task supcon/simclr"),
    (["--task", "supcon", "--temperature", "0"], "--temperature must be positive"),
    (["--lora-rank", "4"], "--lora-rank applies only to --task lora"),
    (["--lr", "abc"], "invalid float value"),
    (["--task", "serve", "--checkpoint", "x", "--port", "0"], "--port, --max-wait-ms"),
    (["--task", "serve", "--checkpoint", "x", "--max-inputs", "0"], "--port, --max-wait-ms"),
    (["--task", "serve", "--checkpoint", "x", "--streams", "0"], "--threads, --streams, --replicas"),
    (["--task", "predict", "--checkpoint", "x", "--streams", "2"], "--streams applies only to --task serve"),
    (["--task", "predict", "--checkpoint", "x", "--min-confidence", "2"], "--min-confidence must be in [0, 1]"),
    (["--task", "export"], "--task export needs --checkpoint DIR"),
    (["--port", "8000"], "--port applies only to --task serve"),
    (["--spelling"], "--spelling applies only to --task predict/serve"),
    (["--task", "supcon", "--pooling", "mean"], "--pooling applies only to --task baseline/custom"),
    (["--task", "supcon", "--ema", "0.9"], "--ema applies only to --task custom"),
    (["--task", "custom", "--label-smoothing", "1"], "--label-smoothing and --ema must be in [0, 1)"),
    (["--task", "custom", "--augment", "1.5"], "--augment in [0, 1]"),
    (["--task", "custom", "--rdrop", "-1"], "--rdrop and --aux-weight must be >= 0"),
    (["--task", "custom", "--distill-weight", "0.5"], "needs --teachers"),
    (["--task", "custom", "--teachers", "a", "--distill-temperature", "0"], "--distill-temperature positive"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_model_is_a_user_error(run_args, tmp_path):
    with pytest.raises(UserError, match="could not load encoder"):
        cli.main([*run_args, "--model", str(tmp_path / "no-such-model")])


def test_cli_bad_data_is_one_line_and_leaves_results_alone(tmp_path, run_args):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"partition": "train", "utt": "hi", "scenario": "alarm", "intent": "alarm_set"}\n{oops\n')
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    (results / "keep.json").write_text("{}")
    args = [a if a != run_args[3] else str(bad) for a in run_args]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == f"error: {bad}:2: malformed JSON (Expecting property name enclosed in double quotes)"
    assert "Traceback" not in proc.stderr
    assert os.listdir(results) == ["keep.json"]


def test_cpu_model_names_the_instruction_sets_speeds_depend_on(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                    "flags\t\t: fpu avx512f avx512_vnni avx512_bf16 amx_int8\n")
    assert cpu_model(str(info)) == "Intel(R) Xeon(R) Processor (avx512_vnni, avx512_bf16, amx_int8)"
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2\n")
    assert cpu_model(str(info)) == "AMD EPYC (no VNNI, bf16 or AMX)"


def test_bf16_autocast_only_where_the_cpu_does_bf16_faster(monkeypatch):
    import utils

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(utils, "bf16_matmul_speedup", lambda: 2.3)  # AMD EPYC with AVX512-BF16
    assert use_bf16(cpu) is True
    monkeypatch.setattr(utils, "bf16_matmul_speedup", lambda: 0.6)  # Intel Xeon with AVX512-BF16, no AMX
    assert use_bf16(cpu) is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(utils, "bf16_matmul_speedup", lambda: pytest.fail("emulated bf16 needs no timing"))
    assert use_bf16(cpu) is False
    assert use_bf16(torch.device("meta")) is False  # not a CPU: the GPU path uses TF32 instead


def test_the_bf16_timing_leaves_the_seeded_random_stream_alone():
    import utils

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert utils.bf16_matmul_speedup.__wrapped__(n=32, reps=1, tries=1) > 0
    assert torch.equal(torch.rand(3), expected)  # so a run's initial weights do not depend on the CPU kind


def test_small_data_gets_settings_that_train_it_and_says_so(tmp_path, tiny_model):
    from arguments import SMALL_DATA, SMALL_DATA_SETTINGS
    from tiny import write_massive

    small = write_massive(tmp_path / "small.jsonl")  # 36 training utterances
    cfg = parse_args(["--data", str(small), "--label", "intent"])
    assert {k: getattr(cfg, k) for k in SMALL_DATA_SETTINGS} == SMALL_DATA_SETTINGS
    assert cfg.chosen.startswith("36 training utterances, under 2,000: --lr 0.0003, --batch-size 16, --epochs 30, "
                                 "--pooling mean")
    assert cfg.run_name == "baseline-intent-small-minilm-lr0.0003-bs16-e30-mean-s42"
    for given in (["--epochs", "3"], ["--lr", "1e-4"], ["--batch-size", "8"], ["--pooling", "cls"]):  # the user's
        mine = parse_args(["--data", str(small), *given])
        assert mine.chosen is None and mine.pooling == "cls" and (mine.lr, mine.epochs) in ((2e-5, 3), (1e-4, 10),
                                                                                             (2e-5, 10))
    assert parse_args(["--task", "custom", "--data", str(small)]).chosen is None  # the study's tasks keep theirs
    large = write_massive(tmp_path / "large.jsonl", {"train": SMALL_DATA // 12 + 1, "dev": 1, "test": 1})
    assert parse_args(["--data", str(large)]).chosen is None  # MASSIVE-sized data keeps the study's settings
    results = cli.main(["--data", str(small), "--model", tiny_model, "--no-save", "--cache-dir", str(tmp_path / "c"),
                        "--out-dir", str(tmp_path / "r")])
    assert results["settings_chosen"] == cfg.chosen  # printed at the start, and recorded
    assert results["config"]["epochs"] == 30 and len(results["history"]) == 30
