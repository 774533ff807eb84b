import json
import os

import pytest

import plots
from arguments import TASKS


def fake_run(tmp_path, task="baseline", seed=42, acc=0.9, phases=("classify",), predictions=(0, 1, 1, 2, 2), seconds=(2.0, 2.0),
             name="x", device="cpu", bf16=False, **config):
    cfg = {"task": task, "label": "scenario", "model": None, "seed": seed, "lr": TASKS[task].defaults["lr"],
           "batch_size": TASKS[task].defaults["batch_size"], "llrd": 1.0, "warmup_ratio": 0.0, "epochs": 10, "fast": True,
           "temperature": 0.1 if task in ("supcon", "simclr") else None, "lora_rank": 8 if task == "lora" else None,
           **config}
    history = [{"phase": ph, "epoch": e, "train_loss": 1.0 / e, "train_accuracy": None if ph != "classify" else 0.5 + 0.1 * e,
                "lr": 1e-5, "seconds": seconds[e - 1],
                **({"val_loss": 0.9 / e, "val_accuracy": 0.6 + 0.1 * e} if ph == "classify" else {})}
               for ph in phases for e in (1, 2)]
    run = {"run_name": f"{task}-{name}-s{seed}", "task": task, "config": cfg,
           "environment": {"parameters_trainable": 100, "parameters_total": 400, "trainable_percent": 25.0,
                           "device": device, "bf16": bf16},
           "history": history, "seconds_per_epoch": 2.0, "test_loss": 0.5, "test_accuracy": acc,
           "test_macro_f1": acc - 0.1, "labels": ["a", "b", "c"], "test_labels": [0, 0, 1, 2, 2],
           "test_predictions": list(predictions)}
    path = tmp_path / f"{run['run_name']}.json"
    path.write_text(json.dumps(run))
    return str(path)


def test_figures_and_table(tmp_path, capsys):
    # one epoch slowed by a shared CPU (50 s) leaves the median of 2, 2, 2, 50 at 2.0 (the mean would be 14.0)
    files = [fake_run(tmp_path, seed=42, acc=0.90), fake_run(tmp_path, seed=43, acc=0.92, seconds=(2.0, 50.0)),
             fake_run(tmp_path, task="supcon", acc=0.95, phases=("contrastive", "classify")),
             fake_run(tmp_path, task="lora", acc=0.89, predictions=(0, 0, 1, 2, 2))]
    out = tmp_path / "plots"
    assert plots.main([*files, "--out-dir", str(out)]) == 0
    assert {"baseline-x-s42.png", "baseline-x-s43.png", "supcon-x-s42.png", "comparison.png", "table.md",
            "supcon-x-s42-confusion.png", "supcon-x-s42-per-class.md"} <= set(os.listdir(out))
    table = (out / "table.md").read_text()
    # mean 91, sd 1.414, n 2: t(0.975, 1) = 12.706 -> 78.29 to 103.71; the study's baseline is 90.45
    assert ("| baseline [scenario] | 2 | 91.00 ± 1.41% | 78.29 - 103.71 | 81.00% | 0.5000 | 100 (25.00%) | 2.0 | "
            "all-MiniLM-L6-v2 | 90.45% |") in table
    assert "| SupCon (t=0.1) [scenario] | 1 | 95.00% | (single run) |" in table
    assert "| LoRA r=8 [scenario] | 1 | 89.00% | (single run) |" in table
    # 2 + 4 + 2 epochs of 2 s each, and 2 + 50 s
    assert "Training time of these 4 runs: 0.0 h (68 s," in table
    # LoRA seed 42 pairs with baseline seed 42 on the same utterances: it gets utterance 1 right, which the
    # baseline got wrong (1 of 5 = +20 points)
    assert "| LoRA r=8 [scenario] | baseline [scenario] | 1 | +20.00 | +0.00 to +60.00 |" in table
    printed = capsys.readouterr().out
    assert table.strip() in printed and str(out) in printed


def test_ablation_and_devices(tmp_path):
    schedule = dict(task="custom", llrd=0.8, warmup_ratio=0.1)
    files = [fake_run(tmp_path, name="full", acc=1.0, predictions=(0, 0, 1, 2, 2), pooling="mean", label_smoothing=0.1,
                      **schedule),
             fake_run(tmp_path, name="no-ls", acc=0.8, pooling="mean", **schedule),  # one more utterance wrong
             fake_run(tmp_path, name="no-mean", acc=1.0, predictions=(0, 0, 1, 2, 2), label_smoothing=0.1, **schedule),
             fake_run(tmp_path, name="other-lr", acc=0.8, pooling="mean", lr=1e-4, **schedule),
             fake_run(tmp_path, acc=0.8), fake_run(tmp_path, name="gpu", acc=0.6, device="cuda"),
             fake_run(tmp_path, name="bf16", acc=0.4, bf16=True)]
    out = tmp_path / "plots"
    assert plots.main([*files, "--out-dir", str(out)]) == 0
    table = (out / "table.md").read_text()
    ablation = table.split("Ablation")[1]
    full = "LLRD + warmup + --pooling mean --label-smoothing 0.1 [scenario]"
    assert f"| without --label-smoothing 0.1 | {full} | 1 | -20.00 |" in ablation
    assert f"| without --pooling mean | {full} | 1 | +0.00 |" in ablation
    assert "lr 0.0001" not in ablation and ablation.count("| without") == 2  # another schedule is not an ablation
    # the GPU run is its own group and its own context: never paired with the CPU baseline
    assert "| baseline [scenario, cuda] | 1 | 60.00% |" in table and "| baseline [scenario] | 1 | 80.00% |" in table
    assert "| baseline [scenario, cuda] | baseline [scenario] |" not in table
    # nor a CPU run that trained in bf16 with one that trained in fp32
    assert "| baseline [scenario, cpu, bf16] | 1 | 40.00% |" in table and "| baseline [scenario, cpu, bf16] | baseline" not in table


def test_longer_runs_pair_with_the_study_baseline(tmp_path):
    custom = dict(task="custom", llrd=0.8, warmup_ratio=0.1)
    files = [fake_run(tmp_path, acc=0.8),  # the study's 10 epochs
             fake_run(tmp_path, name="long", acc=1.0, predictions=(0, 0, 1, 2, 2), epochs=15, **custom),
             fake_run(tmp_path, name="short", acc=0.6, epochs=3),
             fake_run(tmp_path, name="short", acc=0.8, predictions=(0, 0, 1, 2, 2), epochs=3, **custom)]
    out = tmp_path / "plots"
    assert plots.main([*files, "--out-dir", str(out)]) == 0
    table = (out / "table.md").read_text()
    # no 15-epoch baseline: the study's one; a 3-epoch baseline exists, so 3-epoch runs pair with it
    assert "| LLRD + warmup, 15 epochs [scenario] | baseline [scenario] | 1 | +20.00 |" in table
    assert "| LLRD + warmup, 3 epochs [scenario] | baseline, 3 epochs [scenario] | 1 | +20.00 |" in table
    assert "| baseline, 3 epochs [scenario] | baseline [scenario] |" not in table


def test_per_class_scores(tmp_path):
    run = json.loads(open(fake_run(tmp_path)).read())
    cm, precision, recall, f1, support = plots.per_class(run["labels"], run["test_labels"], run["test_predictions"])
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 2]]
    assert precision.tolist() == [1.0, 0.5, 1.0] and recall.tolist() == [0.5, 1.0, 1.0]
    assert f1[0] == pytest.approx(2 / 3) and support.tolist() == [2, 1, 2]


def test_custom_variants_are_named(tmp_path):
    names = {plots.experiment(json.loads(open(fake_run(tmp_path, task="custom", llrd=l, warmup_ratio=w)).read()))[0]
             for l, w in ((0.8, 0.1), (0.8, 0.0), (1.0, 0.1))}
    assert names == {"LLRD + warmup", "LLRD only", "warmup only"}
    recipe = json.loads(open(fake_run(tmp_path, task="custom", llrd=1.0, warmup_ratio=0.1, lr=1e-4, pooling="mean",
                                      label_smoothing=0.1)).read())
    assert plots.experiment(recipe)[0] == "warmup only, lr 0.0001 + --pooling mean --label-smoothing 0.1"
    slow = json.loads(open(fake_run(tmp_path, epochs=1, fast=False)).read())
    assert plots.experiment(slow)[0] == "baseline, 1 epoch, study's way"


def test_bad_files_are_named_and_others_still_plotted(tmp_path, capsys):
    good = fake_run(tmp_path)
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "broken.json").write_text("{")
    out = tmp_path / "plots"
    code = plots.main([good, str(tmp_path / "notes.json"), str(tmp_path / "broken.json"),
                       str(tmp_path / "missing.json"), "nothing/*.json", "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"skipping {tmp_path / 'notes.json'}: not a results file" in err
    assert f"skipping {tmp_path / 'broken.json'}: not JSON" in err
    assert f"skipping {tmp_path / 'missing.json'}: no such file" in err
    assert "skipping nothing/*.json: no such file (a pattern that matched nothing?)" in err
    assert (out / "baseline-x-s42.png").exists()


def test_nothing_to_plot(tmp_path, capsys):
    assert plots.main([str(tmp_path / "none.json"), "--out-dir", str(tmp_path / "p")]) == 1
    assert "error: no results files to plot" in capsys.readouterr().err
    assert plots.main([fake_run(tmp_path), "--run", "nope", "--out-dir", str(tmp_path / "p")]) == 1


def joint_run(tmp_path, seed, em, correct, slots=True, acc=0.9, predictions=(0, 1, 1, 2, 2), name=None, **config):
    """A fake intent run; with slots, MASSIVE's joint numbers beside it."""
    weights = {"slots": True, "slot_weight": config.pop("slot_weight", 1.0)} if slots else {}
    path = fake_run(tmp_path, seed=seed, acc=acc, predictions=predictions, name=name or ("joint" if slots else "plain"),
                    label="intent", **weights, **config)
    run = json.loads(open(path).read())
    if slots:
        run.update(test_exact_match=em, test_slot_f1=em + 0.1, test_exact_match_correct=list(correct), best_val_exact_match=em,
                   test_slot_f1_per_type={"time": {"f1": 0.9, "support": 3}, "date": {"f1": 0.5, "support": 7}})
    open(path, "w").write(json.dumps(run))
    return path


def test_the_joint_task_has_its_table_figures_and_paired_tests(tmp_path):
    files = [joint_run(tmp_path, s, em, c) for s, em, c in ((42, 0.6, (1, 1, 1, 0, 0)), (43, 0.8, (1, 1, 1, 1, 0)))]
    files += [joint_run(tmp_path, s, 0, (), slots=False, predictions=(0, 1, 1, 2, 0)) for s in (42, 43)]
    files += [joint_run(tmp_path, 42, 1.0, (1, 1, 1, 1, 1), slot_weight=4.0, name="w4")]
    # the setting the later screens start from, and one of them: each paired against it too
    fast = {"lr": 1e-4, "batch_size": 32}
    files += [joint_run(tmp_path, 42, 0.6, (1, 1, 0, 0, 0), name="fast", **fast),
              joint_run(tmp_path, 42, 0.8, (1, 1, 1, 1, 0), slot_weight=4.0, name="fast-w4", **fast),
              joint_run(tmp_path, 42, 0.9, (1, 1, 1, 1, 1), slot_weight=4.0, name="fast-w4-crf", crf=True, **fast)]
    out = tmp_path / "plots"
    assert plots.main([*files, "--out-dir", str(out)]) == 0
    table = (out / "table.md").read_text()
    # the three numbers, mean ± std over seeds, beside the MASSIVE paper's rows
    assert "| baseline + --slots [intent] | 2 | 70.00 ± 14.14 | 80.00 ± 14.14 | 90.00 ± 0.00 | 2.0 |" in table
    assert "| XLM-R base (270M), MASSIVE paper | | 69.7 | 78.7 | 88.3 | |" in table
    # intent accuracy against the intent-only baseline: the joint runs get utterance 4 right, the plain ones not
    assert "| baseline + --slots [intent] | baseline [intent] | 2 | +20.00 |" in table
    # exact match against the joint baseline: the weight-4 run is right on 1 and 2 more utterances of seed 42
    assert "| baseline + --slots --slot-weight 4 [intent] | baseline + --slots [intent] | 1 | +40.00 |" in table
    slots4, lr1e4 = "baseline, lr 0.0001, batch 32 + --slots --slot-weight 4 [intent]", \
        "baseline, lr 0.0001, batch 32 + --slots [intent]"
    assert f"| {slots4} | {lr1e4} | 1 | +40.00 |" in table
    assert f"| {slots4} | baseline + --slots [intent] | 1 | +20.00 |" in table
    assert f"| {lr1e4} | {slots4} |" not in table and f"| {lr1e4} | {lr1e4} |" not in table
    # the CRF screen changes one thing of the slot weight's pick, so it is paired against it as well
    assert f"| {slots4.replace(' [', ' --crf [')} | {slots4} | 1 | +20.00 |" in table
    assert {"joint.png", "baseline-w4-s42-slots.png"} <= set(os.listdir(out))  # per-slot F1 of the best joint run
    names = {g["short"] for g in plots.group_runs(plots.load_results(files)[0])}
    assert {"joint", "joint --slot-weight 4", "baseline", "joint-lr1e-4", "joint-lr1e-4-slots4",
            "joint-lr1e-4-slots4-crf"} <= names


def test_distillation_is_named_and_paired_against_its_setting_without_teachers(tmp_path):
    crf = {"lr": 1e-4, "batch_size": 32, "slot_weight": 4.0, "crf": True}
    kd = {"teachers": ["big-s42", "big-s43"], "distill_weight": 0.5}
    files = [joint_run(tmp_path, s, 0.6, (1, 1, 0, 0, 0), name="crf", bf16=True, **crf) for s in (42, 43)]
    custom = {**crf, "task": "custom"}
    files += [joint_run(tmp_path, s, 0.6, (1, 1, 0, 0, 0), name="custom", bf16=True, **custom) for s in (42, 43)]
    files += [joint_run(tmp_path, s, 0.8, (1, 1, 1, 1, 0), name="kd", bf16=True, **custom, **kd) for s in (42, 43)]
    groups = plots.group_runs(plots.load_results(files)[0])
    assert sorted(g["short"] for g in groups) == ["joint-lr1e-4-slots4-crf", "joint-lr1e-4-slots4-crf-custom",
                                                  "joint-lr1e-4-slots4-crf-kd"]
    rows = plots.joint_comparisons(groups, n_boot=200)
    (row,) = [r for r in rows if "--distill-weight 0.5" in r["title"] and r["vs"].startswith("custom")]
    assert row["seeds"] == 2 and row["delta"] == pytest.approx(40.0)  # 2 of 5 utterances more per seed


def test_the_slot_objective_is_paired_against_intent_only_runs_of_the_same_settings(tmp_path):
    fast = {"lr": 1e-4, "batch_size": 32}
    files = [joint_run(tmp_path, 42, 0, (), slots=False, predictions=(0, 1, 1, 2, 0)),  # the study's baseline
             joint_run(tmp_path, 42, 0, (), slots=False, predictions=(0, 1, 1, 2, 2), name="plain-fast", **fast),
             joint_run(tmp_path, 42, 0.6, (1, 1, 1, 0, 0), predictions=(0, 0, 1, 2, 2), name="fast", **fast),
             joint_run(tmp_path, 42, 0.8, (1, 1, 1, 1, 0), slot_weight=4.0, name="fast-w4-crf", crf=True, **fast)]
    out = tmp_path / "plots"
    assert plots.main([*files, "--out-dir", str(out)]) == 0
    table = (out / "table.md").read_text()
    plain_fast = "baseline, lr 0.0001, batch 32 [intent]"
    # an intent-only run at another lr is an experiment against the study's baseline, never the baseline itself
    assert f"| {plain_fast} | baseline [intent] | 1 | +20.00 |" in table
    assert "| baseline, lr 0.0001, batch 32 + --slots [intent] | baseline [intent] | 1 | +40.00 |" in table
    mine = table.split("what the slot objective does to intent")[1]
    # at the same lr and batch: the joint run also gets utterance 1 right (+20 points); the CRF run ties
    assert f"| baseline, lr 0.0001, batch 32 + --slots [intent] | {plain_fast} | 1 | +20.00 |" in mine
    assert f"| baseline, lr 0.0001, batch 32 + --slots --slot-weight 4 --crf [intent] | {plain_fast} | 1 | +0.00 |" \
        in mine
    assert "| baseline [intent] |" not in mine  # the study's baseline has no joint run of its settings here


def test_a_joint_row_names_its_encoder_unless_it_is_the_bundled_one():
    import plots

    group = {"label": "intent", "encoder": "all-mpnet-base-v2", "device": "cpu, bf16"}
    assert plots.joint_tags(group) == ["intent", "all-mpnet-base-v2", "cpu, bf16"]
    assert plots.joint_tags({**group, "encoder": "all-MiniLM-L6-v2"}) == ["intent", "cpu, bf16"]


def test_a_run_figure_names_its_encoder_unless_it_is_the_bundled_one(tmp_path):
    bundled = json.loads(open(fake_run(tmp_path, lr=1e-4, batch_size=32)).read())
    other = {**bundled, "environment": {**bundled["environment"], "encoder": {"name": "all-mpnet-base-v2"}}}
    assert plots.run_title(bundled) == plots.short_name(bundled)
    assert plots.run_title(other) == plots.short_name(other) + " [all-mpnet-base-v2]"


def test_a_labelling_loop_draws_its_curves_and_says_what_suggest_saved(tmp_path, capsys):
    runs = []
    for seed in (0, 1, 2):
        for strategy, gain in (("random", 0.02), ("suggest", 0.04)):
            for k in range(3):
                history = [{"epoch": e, "seconds": 10.0, "val_accuracy": 0.5 + 0.05 * e} for e in (1, 2, 3)]
                runs.append({"seed": seed, "strategy": strategy, "round": k, "labelled": 100 + 50 * k,
                             "test_accuracy": 0.5 + (gain * k if k else 0) + 0.001 * seed,
                             "val_accuracy": 0.65, "history": history})
    continued = [{"seed": 0, "strategy": "suggest", "round": 2, "init_from_round": 1, "val_accuracy": 0.6,
                  "test_accuracy": 0.58, "history": [{"epoch": 1, "seconds": 10.0, "val_accuracy": 0.6}]}]
    path = tmp_path / "loop-intent.json"
    path.write_text(json.dumps({"kind": "labelling_loop", "label": "intent", "per_intent": 8, "per_round": 50,
                                "runs": runs, "continued": continued}))
    assert plots.main([str(path), "--out-dir", str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["loop-intent.md", "loop-intent.png"]
    md = (tmp_path / "out" / "loop-intent.md").read_text()
    # random ends at 0.54 after 100 labels; suggest, 0.04 a round of 50, gets there with 50
    assert "| 2 | 200 | 54.10 ± 0.08 | 58.10 ± 0.08 | +4.00 |" in md
    assert "Suggest reaches it with 50 added (50% of random's)" in md
    assert "60.00 reached at epoch 2 (20 s of training) from scratch, epoch 1 (10 s) continued" in md
    assert plots.labels_to_reach([0, 10], [0.1, 0.3], 0.2) == 5 and plots.labels_to_reach([0, 10], [0.1, 0.2], 0.3) is None


def test_a_joint_labelling_loop_has_a_curve_and_a_table_per_metric(tmp_path):
    runs = [{"seed": seed, "strategy": strategy, "round": k, "labelled": 100 + 50 * k, "val_accuracy": 0.6,
             "test_accuracy": 0.5 + 0.01 * k, "test_slot_f1": 0.4 + 0.01 * k,
             "test_exact_match": 0.3 + (0.02 if strategy == "suggest" else 0.01) * k, "history": []}
            for seed in (0, 1) for strategy in ("random", "suggest") for k in range(3)]
    path = tmp_path / "loop-joint.json"
    path.write_text(json.dumps({"kind": "labelling_loop", "label": "joint", "per_intent": 8, "per_round": 50,
                                "runs": runs, "continued": []}))
    assert plots.main([str(path), "--out-dir", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "loop-joint.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("**")] == [
        "**Test intent accuracy**", "**Test slot F1**", "**Test exact match**"]
    # exact match: random ends at 0.32 after 100 labels, suggest gains 0.02 a round of 50
    assert "| 2 | 200 | 32.00 ± 0.00 | 34.00 ± 0.00 | +2.00 |" in md
    assert "Random's last round: 32.00% with 100 labels added. Suggest reaches it with 50 added (50% of random's)." in md
