"""The custom task's accuracy recipe: each technique's flag, end to end on the tiny model, and its bad inputs."""
import json
import os

import numpy as np
import pytest
import torch

import main as cli
import recipe
from tiny import write_massive
from arguments import complete_config, parse_args, recorded_config
from data import load_features, slot_labels
from dataloader import make_loader
from fileio import UserError
from model import Classifier, load_encoder, load_tokenizer
from utils import use_bf16

RECIPE = ["--pooling", "mean", "--label-smoothing", "0.1", "--rdrop", "1", "--ema", "0.9", "--aux-weight", "0.5",
          "--augment", "0.5"]


def test_recipe_end_to_end(run_args, tmp_path):
    args = ["--task", "custom", *run_args, *RECIPE]
    results = cli.main(args)
    cfg = parse_args(args)
    assert cfg.run_name.endswith("llrd0.8-wu0.1-mean-ls0.1-rdrop1-ema0.9-aux0.5-aug0.5-s42")
    assert results["config"]["pooling"] == "mean" and results["config"]["ema"] == 0.9
    assert len(results["history"]) == 2 and all(r["train_loss"] > 0 for r in results["history"])
    # the second head trains, but inference needs only the first: the checkpoint keeps that one
    best = os.path.join(cfg.run_dir, "best")
    assert sorted(os.listdir(best)) == ["encoder", "head.pt", "meta.json", "tokenizer", "words.json"]


def test_defaults_leave_older_runs_valid():
    cfg = parse_args(["--task", "custom"])
    assert cfg.run_name == "custom-scenario-minilm-lr5e-05-bs16-e10-llrd0.8-wu0.1-s42"
    old = {k: v for k, v in recorded_config(cfg).items() if k not in ("pooling", "ema", "augment")}
    assert complete_config(old) == recorded_config(cfg)  # a results file from before the recipe still matches


def test_distillation_from_teachers(run_args, tmp_path):
    teacher_args = [*run_args, "--checkpoint-dir", str(tmp_path / "teachers")]
    teachers = []
    for seed in ("1", "2"):
        cli.main([*teacher_args, "--seed", seed])
        teachers.append(parse_args([*teacher_args, "--seed", seed]).run_dir)
    args = ["--task", "custom", *run_args, "--teachers", ",".join(teachers), "--distill-temperature", "2"]
    results = cli.main(args)
    assert "kd2x0.5t2" in results["run_name"]
    # recorded by name, not by machine path
    assert results["config"]["teachers"] == [os.path.basename(t) for t in teachers]
    assert str(tmp_path) not in str(results["config"])
    # the teachers' cached probabilities give the same run as computing them did
    again = cli.main([*args, "--out-dir", str(tmp_path / "again"), "--checkpoint-dir", str(tmp_path / "again")])
    strip = lambda r: {k: v for k, v in r.items() if k not in ("history", "seconds_per_epoch")}
    assert strip(again) == strip(results)
    assert [dict(h, seconds=0) for h in again["history"]] == [dict(h, seconds=0) for h in results["history"]]


def test_teacher_with_other_labels_is_a_user_error(run_args, tmp_path):
    teacher_args = [*run_args, "--label", "intent", "--checkpoint-dir", str(tmp_path / "teachers")]
    cli.main(teacher_args)
    teacher = parse_args(teacher_args).run_dir
    with pytest.raises(UserError, match="trained on other labels"):
        cli.main(["--task", "custom", *run_args, "--teachers", teacher])
    with pytest.raises(UserError, match="checkpoint folder not found"):
        cli.main(["--task", "custom", *run_args, "--teachers", str(tmp_path / "none")])


def test_joint_distillation_from_joint_teachers(run_args, tmp_path, joint_checkpoint, monkeypatch):
    # a CRF teacher beside a plain one (the joint_checkpoint fixture, trained on the same toy file)
    teacher_args = [*run_args, "--label", "intent", "--slots", "--crf", "--checkpoint-dir", str(tmp_path / "teachers")]
    cli.main(teacher_args)
    teachers = [parse_args(teacher_args).run_dir, joint_checkpoint]
    cfg = parse_args(["--task", "custom", *run_args, "--label", "intent", "--slots", "--slot-weight", "4", "--crf",
                      "--teachers", ",".join(teachers)])
    labels, features = load_features(cfg, load_tokenizer(cfg.model), slots=True)
    slots = slot_labels(features)
    probs, tables = recipe.teacher_probabilities(cfg, labels, features["train"], slots)
    train = features["train"]
    assert len(probs) == len(tables) == len(train["texts"])
    for table, ids, positions in zip(tables, train["input_ids"], train["slot_positions"]):
        assert table.shape == (len(ids), len(slots))
        at = [p for p in positions if p >= 0]
        assert np.allclose(table[at].astype(np.float32).sum(1), 1, atol=1e-2)  # one distribution per word
        assert not np.delete(table, at, axis=0).any()  # nothing on special tokens and later sub-tokens
    # a second student reads the teachers from the cache; a teacher trained again is read anew
    with monkeypatch.context() as m:
        m.setattr(recipe, "teachers_on", lambda *a: pytest.fail("the teachers ran again"))
        again = recipe.teacher_probabilities(cfg, labels, train, slots)
    assert again[0] == probs and all((a == b).all() for a, b in zip(again[1], tables))
    head = os.path.join(teachers[0], "best", "head.pt")
    torch.save({k: v + 1 for k, v in torch.load(head).items()}, head)
    calls, real = [], recipe.teachers_on
    with monkeypatch.context() as m:
        m.setattr(recipe, "teachers_on", lambda *a: calls.append(1) or real(*a))
        recipe.teacher_probabilities(cfg, labels, train, slots)
    assert calls == [1]
    results = cli.main(["--task", "custom", *run_args, "--label", "intent", "--slots", "--slot-weight", "4", "--crf",
                        "--teachers", ",".join(teachers)])
    assert "kd2x0.5t1" in results["run_name"] and "slots4-crf" in results["run_name"]
    assert all(np.isfinite(r["train_loss"]) and r["train_loss"] > 0 for r in results["history"])
    assert "val_exact_match" in results["history"][-1]


def test_a_perturbed_utterance_has_no_teacher_slots():
    # the teachers saw the clean words: a perturbed row keeps its intent distribution, not its word distributions
    from dataloader import Features

    split = {"input_ids": [[101, 7, 8, 102]], "labels": [0]}
    extras = {"teacher_probs": [[0.9, 0.1]], "teacher_slot_probs": [np.full((4, 3), 0.5, dtype=np.float16)]}
    row = Features(split, extras, augment=lambda i: ([101, 7, 9, 8, 102], [-100, 1, 0, 2, -100]), p=1.0)[0]
    assert row["teacher_probs"] == [0.9, 0.1] and row["slot_labels"] == [-100, 1, 0, 2, -100]
    assert row["teacher_slot_probs"].shape == (5, 3) and not row["teacher_slot_probs"].any()
    clean = Features(split, extras)[0]
    assert (clean["teacher_slot_probs"] == 0.5).all()


def test_a_joint_run_needs_joint_teachers(run_args, tmp_path):
    teacher_args = [*run_args, "--label", "intent", "--checkpoint-dir", str(tmp_path / "teachers")]
    cli.main(teacher_args)
    with pytest.raises(UserError, match="no slot head: a run with --slots distils from joint teachers"):
        cli.main(["--task", "custom", *run_args, "--label", "intent", "--slots", "--teachers",
                  parse_args(teacher_args).run_dir])


def test_mean_pooling_ignores_padding(tiny_model):
    torch.manual_seed(0)
    net = Classifier(load_encoder(tiny_model), 3, dropout=0.0, pooling="mean").eval()
    ids = torch.tensor([[101, 2000, 2001, 102]])
    padded = torch.tensor([[101, 2000, 2001, 102, 0, 0]])
    short = net(ids, torch.ones_like(ids))["logits"]
    long = net(padded, torch.tensor([[1, 1, 1, 1, 0, 0]]))["logits"]
    assert torch.allclose(short, long, atol=1e-5)
    assert not torch.allclose(Classifier(load_encoder(tiny_model), 3, dropout=0.0).eval()(ids, torch.ones_like(ids))["logits"],
                              short)  # [CLS] is another vector


def test_augment_perturbs_only_some_training_utterances(run_args, tiny_model):
    cfg = parse_args(["--task", "custom", *run_args])
    tokenizer = load_tokenizer(tiny_model)
    _, feats = load_features(cfg, tokenizer)
    train = feats["train"]

    def ids_seen(p):
        loader = make_loader(train, tokenizer, 4, True, fast=False, max_length=32, augment=p)
        return [row for b in loader for row, m in zip(b["input_ids"].tolist(), b["attention_mask"].tolist())]

    clean = {tuple(tokenizer(t, padding="max_length", max_length=32)["input_ids"]) for t in train["texts"]}
    assert all(tuple(r) in clean for r in ids_seen(0.0))
    noisy = [tuple(r) not in clean for r in ids_seen(1.0)]
    assert sum(noisy) > len(noisy) / 2  # upper case is lower-cased away by this tokenizer, so not all differ


def load_bench(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), "..", "bench",
                                                                      f"{name}.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_robustness_bench(run_args, tmp_path):
    bench = load_bench("robustness")
    args = [*run_args, "--checkpoint-dir", str(tmp_path / "ckpt")]
    cli.main(args)
    out = tmp_path / "bench"
    bench.main([parse_args(args).run_dir, "--data", run_args[3], "--out-dir", str(out)])
    report = json.loads((out / f"robustness-{parse_args(args).run_name}.json").read_text())
    assert set(report["drop_points"]) == {"upper", "sentence", "spaces", "filler", "typo"}
    # an uncased tokenizer lower-cases, and BERT's splits on any run of spaces: those copies cost nothing
    assert report["drop_points"]["upper"] == 0 and report["drop_points"]["spaces"] == 0
    # which precision the torch backend ran in on this CPU, and the CPU, are part of the record
    assert report["precision"] == ("bf16" if use_bf16(torch.device("cpu")) else "fp32") and report["cpu"]
    experiment = parse_args(args).run_name.removesuffix("-s42")
    row = f"| {experiment} | 1 | {100 * report['test_accuracy']['clean']:.2f}% | 0.00 |"
    assert row in (out / "robustness.md").read_text()
    bench.main([parse_args(args).run_dir, "--data", run_args[3], "--out-dir", str(out), "--spelling"])
    spelled = json.loads((out / f"robustness-{parse_args(args).run_name}-spelling.json").read_text())
    assert spelled["spelling"] and not report["spelling"]
    assert f"| {experiment} + --spelling | 1 |" in (out / "robustness.md").read_text()


def test_robustness_bench_scores_the_slots_of_a_joint_checkpoint(joint_checkpoint, tmp_path):
    bench = load_bench("robustness")
    out = tmp_path / "bench"
    bench.main([joint_checkpoint, "--data", str(write_massive(tmp_path / "en-US.jsonl")), "--out-dir", str(out)])
    report = json.loads((out / f"robustness-{os.path.basename(joint_checkpoint)}.json").read_text())
    exact, f1 = report["test_exact_match"], report["test_slot_f1"]
    assert set(exact) == set(f1) == {"clean", "upper", "sentence", "spaces", "filler", "typo"}
    # the fitted toy set is parsed right when clean, and an uncased tokenizer does not see upper case
    assert exact["clean"] > 0.5 and f1["upper"] == f1["clean"] and report["exact_match_drop_points"]["upper"] == 0
    assert all(0 <= v <= 1 for v in [*exact.values(), *f1.values()])
    table = (out / "robustness.md").read_text()
    assert "Joint checkpoints" in table and f"| {os.path.basename(joint_checkpoint).removesuffix('-s42')} | 1 | " \
        f"{100 * exact['clean']:.2f} / {100 * f1['clean']:.2f} | 0.00 / 0.00 |" in table


def test_ensemble_bench(run_args, tmp_path):
    bench = load_bench("ensemble")
    runs = [[*run_args, "--seed", seed] for seed in ("42", "43")]
    best = [cli.main(args)["best_val_accuracy"] for args in runs]
    folders = [parse_args(args).run_dir for args in runs]
    out = tmp_path / "bench"
    bench.main([*folders, "--data", run_args[3], "--out-dir", str(out)])
    report = json.loads((out / "ensemble-scenario.json").read_text())
    # each member's best/ checkpoint scores what its run recorded as its best validation accuracy
    assert list(report["members"].values()) == pytest.approx(best)
    assert report["split"] == "validation" and 0 <= report["ensemble"] <= 1
    bench.main([folders[0], folders[0], "--data", run_args[3], "--out-dir", str(out)])
    assert json.loads((out / "ensemble-scenario.json").read_text())["ensemble"] == pytest.approx(best[0])


def test_ensemble_bench_bad_input(run_args, tmp_path, capsys):
    bench = load_bench("ensemble")
    cli.main(run_args)
    folder = parse_args(run_args).run_dir
    with pytest.raises(SystemExit, match="two or more"):
        bench.main([folder, "--data", run_args[3], "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="checkpoint folder not found"):
        bench.main([folder, str(tmp_path / "nothing"), "--data", run_args[3], "--out-dir", str(tmp_path)])
    intent = [*run_args, "--label", "intent"]
    cli.main(intent)
    with pytest.raises(SystemExit, match="other labels"):
        bench.main([folder, parse_args(intent).run_dir, "--data", run_args[3], "--out-dir", str(tmp_path)])
    assert not list(tmp_path.glob("ensemble-*.json"))


def test_ensemble_bench_scores_intent_models_on_scenario(run_args, tmp_path):
    from scipy.special import softmax

    from data import read_rows
    from inference import Predictor

    bench = load_bench("ensemble")
    intent = [*run_args, "--label", "intent"]
    cli.main(run_args)
    cli.main(intent)
    folders = [parse_args(run_args).run_dir, parse_args(intent).run_dir]
    out = tmp_path / "bench"
    bench.main([*folders, "--data", run_args[3], "--out-dir", str(out), "--scenario"])
    report = json.loads((out / "ensemble-scenario-with-intent.json").read_text())
    assert not (out / "ensemble-scenario.json").exists()
    # the intent model's scenario accuracy, summed here by the intent names' <scenario>_ prefix
    predictor = Predictor(folders[1])
    validation = read_rows(run_args[3])["validation"]
    texts, gold = [r.text for r in validation], [r.labels["scenario"] for r in validation]
    probs = softmax(predictor.logits(list(texts)), axis=1)
    scenarios = sorted({i.split("_")[0] for i in predictor.labels})
    summed = [[sum(p[i] for i, name in enumerate(predictor.labels) if name.startswith(s + "_")) for s in scenarios]
              for p in probs]
    expected = sum(scenarios[max(range(len(s)), key=s.__getitem__)] == y for s, y in zip(summed, gold)) / len(gold)
    assert report["label"] == "scenario" and report["members"][predictor.name] == pytest.approx(expected)


def test_coarse_accuracy_sums_fine_probabilities():
    from recipe import coarse_accuracy

    # fine labels 0, 1 belong to coarse 0; fine 2 to coarse 1. Row 0: fine argmax is 2 (0.4), but coarse 0 holds 0.6
    probs = [[0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]
    assert coarse_accuracy(probs, [0, 0, 1], [0, 1]) == 1.0
    assert coarse_accuracy(probs, [0, 0, 1], [1, 1]) == 0.5


def test_intent_runs_report_scenario_accuracy(run_args, monkeypatch):
    seen = {}

    def fake(probs, parent, gold):
        seen.update(parent=list(parent), rows=len(probs), gold=len(gold))
        return 0.5

    monkeypatch.setattr(recipe, "coarse_accuracy", fake)
    results = cli.main([*run_args, "--label", "intent"])
    assert results["best_test_scenario_accuracy_from_intent"] == 0.5
    # every intent is summed into its own scenario (the test data's intents are <scenario>_<action>)
    scenarios = ["alarm", "music", "weather"]
    assert [scenarios[p] for p in seen["parent"]] == [i.split("_")[0] for i in results["labels"]]
    assert seen["rows"] == seen["gold"] == len(results["test_labels"])
