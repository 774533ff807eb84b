"""--init-from: a run on grown data starts from a trained checkpoint; known labels and slot types keep their rows, new
ones are added, and a checkpoint of another encoder is one line."""
import json
import os

import pytest
import torch

import main as cli
from arguments import parse_args
from continuation import init_from
from data import load_dataset
from fileio import UserError
from model import build_model, load_checkpoint, load_tokenizer
from tiny import write_massive


@pytest.fixture
def grown(tmp_path):
    """The tiny data set grown by a new intent with a new slot type."""
    path = write_massive(tmp_path / "grown.jsonl")
    with open(path, "a") as f:
        for p in ("train", "train", "train", "dev", "test"):
            f.write(json.dumps({"partition": p, "utt": "snooze for ten minutes", "scenario": "alarm",
                                "intent": "alarm_snooze", "annot_utt": "snooze for [duration : ten minutes]"}) + "\n")
    return str(path)


def test_known_rows_start_as_trained_and_new_ones_are_added(joint_checkpoint, tiny_model, grown, tmp_path):
    cfg = parse_args(["--data", grown, "--model", tiny_model, "--label", "intent", "--slots", "--crf",
                      "--epochs", "1", "--cache-dir", str(tmp_path / "c")])
    data = load_dataset(cfg, load_tokenizer(tiny_model), slots=True)
    slots = sorted({n for w in data.features["train"]["slot_words"] for n in w})
    torch.manual_seed(0)
    net = build_model(tiny_model, len(data.labels), 0.1, slot_classes=len(slots), crf=True)
    meta = init_from(joint_checkpoint, net, load_tokenizer(tiny_model), data.labels, slots, data.features["train"])
    old, _, _ = load_checkpoint(os.path.join(joint_checkpoint, "best"))
    assert "alarm_snooze" in data.labels and "alarm_snooze" not in meta["labels"] and "duration" not in meta["slots"]
    for name, p in old.encoder.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[name], p), name
    assert torch.equal(net.head[0].weight, old.head[0].weight)
    for i, name in enumerate(data.labels):
        if name in meta["labels"]:  # bit-identical at step 0, wherever the label now sits
            assert torch.equal(net.head[2].weight[i], old.head[2].weight[meta["labels"].index(name)])
    new = data.labels.index("alarm_snooze")
    norms = old.head[2].weight.norm(dim=1)
    assert net.head[2].weight[new].norm().item() == pytest.approx(norms.mean().item(), rel=1e-4)  # imprinted
    for i, name in enumerate(slots):
        if name in meta["slots"]:
            assert torch.equal(net.slot_head.weight[i], old.slot_head.weight[meta["slots"].index(name)])
    assert net.slot_head.weight[slots.index("duration")].norm() > 0


def test_a_continued_run_trains_and_names_its_start(joint_checkpoint, tiny_model, grown, tmp_path):
    args = ["--data", grown, "--model", tiny_model, "--label", "intent", "--slots", "--epochs", "1", "--init-from",
            joint_checkpoint, "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "r"), "--no-save"]
    results = cli.main(args)
    assert "-from-" in results["run_name"] and results["config"]["init_from"] == os.path.basename(joint_checkpoint)
    assert "alarm_snooze" in results["labels"]


def test_a_checkpoint_of_another_encoder_is_one_line_and_writes_nothing(joint_checkpoint, tmp_path, grown):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from model import resolve_model

    other = tmp_path / "wider-bert"
    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(other)
    tok.save_pretrained(other)
    args = ["--data", grown, "--model", str(other), "--label", "intent", "--epochs", "1", "--init-from", joint_checkpoint,
            "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "r"), "--checkpoint-dir", str(tmp_path / "k")]
    with pytest.raises(UserError, match="another encoder or tokenizer"):
        cli.main(args)
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "k")
    with pytest.raises(UserError, match="no checkpoint there"):
        parse_args(["--data", grown, "--init-from", str(tmp_path / "nothing")])


def test_a_checkpoint_of_the_other_pooling_is_one_line_and_writes_nothing(joint_checkpoint, tmp_path, grown, tiny_model):
    args = ["--data", grown, "--model", tiny_model, "--label", "intent", "--epochs", "1", "--pooling", "mean",
            "--init-from", joint_checkpoint, "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "r"),
            "--checkpoint-dir", str(tmp_path / "k")]
    with pytest.raises(UserError, match=r"\[CLS\] token, this run's the mean over tokens; give --pooling cls"):
        cli.main(args)
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "k")


def test_small_data_continues_gently(joint_checkpoint, tiny_model, tmp_path):
    from arguments import SMALL_DATA_CONTINUED

    small = str(write_massive(tmp_path / "small.jsonl"))
    cfg = parse_args(["--data", small, "--label", "intent", "--init-from", joint_checkpoint])
    assert {k: getattr(cfg, k) for k in SMALL_DATA_CONTINUED} == dict(lr=3e-5, batch_size=16, epochs=10,
                                                                      pooling="mean")
    assert cfg.chosen.startswith("36 training utterances, under 2,000, continuing from a checkpoint: --lr 3e-05, "
                                 "--batch-size 16, --epochs 10, --pooling mean")
    assert parse_args(["--data", small, "--label", "intent", "--init-from", joint_checkpoint, "--epochs", "2"]
                      ).chosen is None  # the user's choice
