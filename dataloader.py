"""Training batches: tokenized features (data.py) as padded tensors, in length-grouped random batches, with the
training-only columns beside them (token slot labels, the teachers' probabilities) and typing noise (noise.py).

Nothing that uses a trained model imports this module.
"""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

import noise
from data import first_subtokens


def token_slot_labels(split, slots):
    """Per utterance, one slot id per token id: the word's slot at its first sub-token, -100 (ignored) elsewhere."""
    index = {name: i for i, name in enumerate(slots)}
    return [token_labels(len(ids), words, positions, index)
            for ids, words, positions in zip(split["input_ids"], split["slot_words"], split["slot_positions"])]


def token_labels(length, words, positions, index):
    labels = [-100] * length
    for name, pos in zip(words, positions):
        if pos >= 0:
            labels[pos] = index[name]
    return labels


class Features(torch.utils.data.Dataset):
    """Tokenized utterances with their labels, and any extra per-example columns (extras: {name: list}).

    augment(i) -> (token ids, token slot labels or None), with probability p: utterance i is perturbed and
    tokenized anew. Its random draws come from the `random` module, whose state a resumed run restores. With
    slots, the gold word slots, their first sub-tokens, the model's slot names and the data's slot scheme, which
    evaluation scores with.
    """

    def __init__(self, split, extras=None, augment=None, p=0.0, slot_names=None, slot_scheme=None):
        self.ids, self.labels = split["input_ids"], split["labels"]
        self.extras, self.augment, self.p = extras or {}, augment, p
        self.slot_words, self.slot_positions = split.get("slot_words"), split.get("slot_positions")
        self.slot_names, self.slot_scheme = slot_names, slot_scheme

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        row = {"input_ids": self.ids[i], "labels": self.labels[i], **{k: v[i] for k, v in self.extras.items()}}
        if self.augment and random.random() < self.p:
            row["input_ids"], slots = self.augment(i)
            if slots is not None:
                row["slot_labels"] = slots
            if "teacher_slot_probs" in row:  # the teachers saw the clean words: none for the perturbed ones
                row["teacher_slot_probs"] = np.zeros((len(row["input_ids"]), row["teacher_slot_probs"].shape[1]))
        return row


class PadSlots:
    """A collator that also pads the token-level columns to the batch's token length: "slot_labels" with -100,
    and the teachers' (T, S) "teacher_slot_probs", where there are teachers, with zero rows."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows):
        slots = [row.pop("slot_labels") for row in rows]
        teacher = [row.pop("teacher_slot_probs") for row in rows] if "teacher_slot_probs" in rows[0] else None
        batch = self.collate(rows)
        width = batch["input_ids"].shape[1]
        batch["slot_labels"] = torch.tensor([s + [-100] * (width - len(s)) for s in slots])
        if teacher is not None:
            batch["teacher_slot_probs"] = torch.zeros(len(rows), width, teacher[0].shape[1])
            for b, t in enumerate(teacher):
                batch["teacher_slot_probs"][b, :len(t)] = torch.from_numpy(np.asarray(t, dtype=np.float32))
        return batch


def make_loader(split, tokenizer, batch_size, train, seed=0, fast=True, max_length=128, extras=None, augment=0.0,
                slot_names=None, slot_scheme=None):
    """Batches of padded tensors (extras: further per-example columns, as tensors under their names; token-level
    "slot_labels" padded with -100). slot_names, slot_scheme: the model's, for scoring slots in evaluation.

    fast: pad each batch to its longest member; training batches are grouped by
    length (random mega-batches, re-drawn every epoch) and evaluation batches are
    sorted by length. Otherwise the study's way: every row padded to max_length
    and plain random batches. augment: the probability that a training
    utterance gets one kind of typing noise (noise.py); with slot_names, its
    token slot labels follow its words.
    """
    index = {name: i for i, name in enumerate(slot_names or ())}

    def noisy(i):
        tokenizer.truncation_side = "left"  # as the cached features were made
        if not slot_names:
            return tokenizer(noise.perturb(split["texts"][i]), truncation=True, max_length=max_length)["input_ids"], None
        text, words = noise.perturb_slots(split["texts"][i], split["slot_words"][i])
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        return ids, token_labels(len(ids), words, first_subtokens(tokenizer, [text], max_length)[0], index)

    data = Features(split, extras, noisy if augment else None, augment, slot_names, slot_scheme)
    if fast:
        collate = DataCollatorWithPadding(tokenizer)
    else:
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    if extras and "slot_labels" in extras:
        collate = PadSlots(collate)
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(x) for x in data.ids]
    if train and fast:
        sampler = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
        # the loader holds the generator too, so a resumed run can restore the epoch order
        return DataLoader(data, batch_size=batch_size, sampler=sampler, generator=generator, collate_fn=collate)
    if train:
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)
    order = sorted(range(len(data)), key=lengths.__getitem__) if fast else list(range(len(data)))
    return DataLoader(torch.utils.data.Subset(data, order), batch_size=batch_size, collate_fn=collate)
