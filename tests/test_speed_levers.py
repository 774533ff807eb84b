"""The speed levers that bench/speed.py times beside the default path, and bench/step_profile.py's profile."""
import json
import types

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
