"""The project's layout holds: what uses a trained model imports nothing of training, heads follow model.HEADS, and
checkpoints written before they recorded their layout still load."""
import json
import os
import shutil
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# arguments.py declares settings and names (backends, splits) and imports nothing of training: the use side reads it
TRAINING_ONLY = ("train", "optim", "loss", "noise", "dataloader", "recipe", "study")


def training_modules(loaded):
    """The loaded modules that belong to training: the project's, and transformers' Trainer and optimizers."""
    return {m for m in loaded if m in TRAINING_ONLY or m.startswith(("transformers.trainer", "transformers.optimization"))}


def loaded_after(code):
    """The project modules a fresh interpreter has loaded after running code."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_using_a_model_imports_nothing_of_training():
    loaded = loaded_after("import serve, inference, export, evaluation, check")
    assert {"serve", "inference", "export", "evaluation", "check", "data", "fileio", "slots", "metrics", "model"} <= loaded
    assert not training_modules(loaded)
    assert training_modules(loaded_after("import train")) >= {"train", "optim", "transformers.trainer_pt_utils"}


def test_parsing_with_a_checkpoint_imports_nothing_of_training(joint_checkpoint):
    loaded = loaded_after(f"from inference import Predictor\n"
                          f"print(Predictor({joint_checkpoint!r}).parse(['wake me up at five am']))")
    assert "model" in loaded and not training_modules(loaded)


def test_the_heads_table_drives_lora_and_the_checkpoint(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from model import HEADS, apply_lora, build_model, load_checkpoint, save_checkpoint

    net = build_model(tiny_model, 3, 0.1, slot_classes=4, crf=True, aux_classes=2, projection=True)
    assert list(net.heads()) == [name for name in HEADS if name in ("head", "slot_head", "slot_crf", "aux_head",
                                                                    "projection")]
    net = build_model(tiny_model, 3, 0.1, slot_classes=4, crf=True)  # the heads a lora run can have
    wrapped = apply_lora(net, 4, 8, "all-linear")
    trained = {n.split(".")[2] for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {name for name, h in HEADS.items() if h.saved}  # the kept heads train fully, nothing else
    assert not any("lora_" in n for n, _ in wrapped.named_parameters() if ".head." in n or "slot_head" in n)
    net = build_model(tiny_model, 3, 0.1, slot_classes=4, crf=True)
    with torch.no_grad():
        net.slot_crf.scores.fill_(0.5)
    meta = {"run_name": "x", "labels": ["a", "b", "c"], "slots": ["Other", "time", "date", "place"], "max_length": 16,
            "config": {"task": "baseline", "dropout": 0.1, "model": None, "crf": True}, "adapter": False,
            "heads": ["head", "slot_head", "slot_crf"]}
    save_checkpoint(net, AutoTokenizer.from_pretrained(tiny_model), meta, str(tmp_path / "best"))
    assert sorted(f for f in os.listdir(tmp_path / "best") if f.endswith(".pt")) == ["head.pt", "slot_crf.pt",
                                                                                     "slot_head.pt"]
    loaded, _, _ = load_checkpoint(str(tmp_path / "best"))
    assert torch.equal(loaded.slot_crf.scores, net.slot_crf.scores)
    assert torch.equal(loaded.head[2].weight, net.head[2].weight)


def test_a_checkpoint_from_before_the_layout_was_recorded_still_loads(joint_checkpoint, tmp_path):
    from inference import Predictor

    old = tmp_path / "old"
    shutil.copytree(joint_checkpoint, old)
    meta_path = old / "best" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["adapter"] is False and meta["heads"] == ["head", "slot_head"]
    for key in ("adapter", "heads"):  # as checkpoints were written before
        del meta[key]
    meta_path.write_text(json.dumps(meta))
    texts = ["wake me up at five am", "play some jazz"]
    assert Predictor(str(old)).parse(texts) == Predictor(joint_checkpoint).parse(texts)
