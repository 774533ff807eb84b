"""The speed levers that bench/speed.py times beside the default path, bench/step_profile.py's profile and
bench/alternate.py's alternating timings."""
import json
import types

import pytest
import torch

from model import build_model
from test_recipe import load_bench


def test_each_embedding_lever_trains_what_it_says(tiny_model):
    speed = load_bench("speed")
    cfg = types.SimpleNamespace(lr=1e-2, weight_decay=0.01, eps=1e-8)
    ids = torch.tensor([[101, 2000, 2001, 102]])
    for embeddings in ("train", "frozen", "sparse"):
        torch.manual_seed(0)
        model = build_model(tiny_model, 3, 0.0)
        table = model.encoder.get_input_embeddings().weight
        before = table.detach().clone()
        optim = speed.optimizer(cfg, model, speed.Levers(embeddings=embeddings), steps=10)
        model(ids, torch.ones_like(ids))["logits"].sum().backward()
        optim.optimizer.step()
        changed = (table.detach() != before).any(1)
        if embeddings == "frozen":
            assert not changed.any() and table.grad is None
        elif embeddings == "sparse":  # lazy Adam: the rows this batch used move, and no other
            assert table.grad.is_sparse and changed.nonzero().flatten().tolist() == [101, 102, 2000, 2001]
        else:  # dense AdamW with weight decay moves every row but the padding row, which is zero
            assert changed[1:].all() and not changed[0]


def test_step_profile_lists_the_operators_of_a_training_step(run_args, tmp_path):
    profile = load_bench("step_profile")
    out = tmp_path / "profile.json"
    profile.main([*run_args, "--freeze-embeddings", "--steps", "3", "--warm-up", "1", "--top", "5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["run_name"].endswith("-frozen-emb-s42") and report["ms_per_step"] > 0
    assert len(report["top"]) == 5 and all(o["self_ms_per_step"] > 0 for o in report["top"])
    shares = [o["self_ms_per_step"] for o in report["top"]]
    assert shares == sorted(shares, reverse=True)
    assert any(o["name"] in ("aten::mm", "aten::addmm") for o in report["top"])  # the model's matmuls are there


def test_alternate_times_a_lever_off_and_on_on_the_same_batches(run_args, tmp_path):
    alternate = load_bench("alternate")
    out = tmp_path / "alternate.json"
    alternate.main([*run_args, "--lever", "freeze-embeddings", "--rounds", "2", "--steps", "2", "--warm-up", "1",
                    "--out", str(out)])
    report = json.loads(out.read_text())
    assert len(report["ms_per_step"]["off"]) == len(report["ms_per_step"]["on"]) == 2
    assert report["change"] == report["mean_on"] / report["mean_off"] - 1 and 0 <= report["rounds_on_faster"] <= 2


def test_alternate_refuses_a_lever_the_run_already_has(run_args):
    alternate = load_bench("alternate")
    with pytest.raises(SystemExit, match="leave out --freeze-embeddings"):
        alternate.main([*run_args, "--lever", "freeze-embeddings", "--freeze-embeddings"])


def test_the_dropout_lever_swaps_modules_both_ways(tiny_model):
    from model import CPUDropout

    alternate = load_bench("alternate")
    net = build_model(tiny_model, 3, 0.1)
    alternate.numpy_dropout(types.SimpleNamespace(net=net), True)
    assert not any(type(m) is torch.nn.Dropout for m in net.modules())
    alternate.numpy_dropout(types.SimpleNamespace(net=net), False)
    assert not any(isinstance(m, CPUDropout) for m in net.modules())
