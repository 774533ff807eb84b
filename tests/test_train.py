"""The training loop's pieces: the loss step as a sum of named terms, evaluation's order and summaries, the
intent-to-scenario map."""
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

import train as loop
from loss import distill_loss, slot_distill_loss, token_cross_entropy
from recipe import coarse_accuracy, scenario_of_intents


class Heads(torch.nn.Module):
    """A stand-in model with named outputs: fixed logits for the utterance and the other label."""

    def __init__(self, logits, aux):
        super().__init__()
        self.logits, self.aux = torch.nn.Parameter(logits), torch.nn.Parameter(aux)

    def forward(self, input_ids, attention_mask):
        n = input_ids.shape[0]
        return {"logits": self.logits.repeat(n // len(self.logits), 1), "aux_logits": self.aux.repeat(n // len(self.aux), 1)}


def test_the_step_sums_its_terms_and_mixes_in_distillation():
    torch.manual_seed(0)
    model = Heads(torch.randn(4, 3), torch.randn(4, 2))
    batch = {"input_ids": torch.ones(4, 5, dtype=torch.long), "attention_mask": torch.ones(4, 5, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 0]), "aux_labels": torch.tensor([1, 0, 1, 1]),
             "teacher_probs": torch.softmax(torch.randn(4, 3), -1)}
    cfg = SimpleNamespace(label_smoothing=0.1, rdrop=0.0, aux_weight=0.5, teachers=["t"], distill_weight=0.25,
                          distill_temperature=2.0, slots=False)
    loss, correct = loop.classify_step(model, batch, cfg)
    ce = F.cross_entropy(model.logits, batch["labels"], label_smoothing=0.1)
    aux = 0.5 * F.cross_entropy(model.aux, batch["aux_labels"], label_smoothing=0.1)
    soft = 4.0 * F.kl_div(F.log_softmax(model.logits / 2, -1), batch["teacher_probs"], reduction="batchmean")
    assert torch.allclose(loss, 0.75 * (ce + aux) + 0.25 * soft)
    assert correct == (model.logits.argmax(-1) == batch["labels"]).sum()
    # each term is off at its off value: cross-entropy alone
    plain = SimpleNamespace(**{**vars(cfg), "aux_weight": 0.0, "teachers": None, "label_smoothing": 0.0})
    assert torch.allclose(loop.classify_step(model, batch, plain)[0], F.cross_entropy(model.logits, batch["labels"]))


def test_the_slots_distillation_is_weighed_like_their_cross_entropy():
    torch.manual_seed(0)
    logits, slot_logits = torch.randn(2, 3), torch.randn(2, 4, 5)

    class Joint(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return {"logits": logits, "slot_logits": slot_logits}

    words = torch.tensor([[-100, 1, 2, -100], [-100, 0, -100, -100]])
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long),
             "labels": torch.tensor([0, 2]), "slot_labels": words, "teacher_probs": torch.softmax(torch.randn(2, 3), -1),
             "teacher_slot_probs": torch.softmax(torch.randn(2, 4, 5), -1) * (words != -100).unsqueeze(2)}
    cfg = SimpleNamespace(label_smoothing=0.0, rdrop=0.0, aux_weight=0.0, teachers=["t"], distill_weight=0.25,
                          distill_temperature=2.0, slots=True, crf=False, slot_weight=4.0)
    loss, _ = loop.classify_step(Joint(), batch, cfg)
    hard = F.cross_entropy(logits, batch["labels"]) + 4 * token_cross_entropy(slot_logits, words)
    soft = (distill_loss(logits, batch["teacher_probs"], 2.0)
            + 4 * slot_distill_loss(slot_logits, batch["teacher_slot_probs"], words, None, 2.0))
    assert torch.allclose(loss, 0.75 * hard + 0.25 * soft)
    assert soft > distill_loss(logits, batch["teacher_probs"], 2.0)  # the slots' term is in


def test_summary_keeps_numbers_and_tables_not_per_utterance_values():
    metrics = {"loss": 0.5, "accuracy": 0.9, "per_type": {"time": {"f1": 1.0}}, "predictions": [0, 1],
               "logits": np.zeros((2, 3))}
    assert loop.summary(metrics) == {"loss": 0.5, "accuracy": 0.9, "per_type": {"time": {"f1": 1.0}}}


def test_rows_come_back_in_the_split_order():
    visited = torch.tensor([[2.0], [0.0], [1.0]])  # rows of a loader that visited the split as 2, 0, 1
    assert loop.in_order(visited, torch.tensor([2, 0, 1])).flatten().tolist() == [0.0, 1.0, 2.0]


def test_one_intent_to_scenario_map():
    pairs = [("alarm_set", "alarm"), ("play_music", "music"), ("alarm_set", "alarm")]
    parent = scenario_of_intents(pairs, ["alarm_set", "play_music", "unseen_intent"], ["alarm", "music"])
    assert parent.tolist() == [0, 1, -1]
    # an intent of no scenario adds to none: row 0 is music (0.4 against 0.2), though its top intent is unseen
    assert coarse_accuracy([[0.2, 0.4, 0.5], [0.6, 0.3, 0.1]], parent, [1, 1]) == 0.5
