"""`--init-from CHECKPOINT`: a run on grown data that starts from a trained model instead of the pre-trained encoder.

The checkpoint's encoder is loaded whole. Its heads keep what they learned for
the labels and slot types it knows, matched by name (so their order may
differ): the utterance head's first layer, each known label's row of its last
layer, each known slot type's row of the slot head and the CRF's scores
between known slot types. A label or slot type it has never seen gets a row
pointing at the mean of its own training examples (the head's hidden features
of its utterances, the encoder's states at its words), scaled to the known
rows' mean norm, as imprinting does for new classes: it starts near where the
model already puts such utterances instead of at random. The checkpoint must
come from the same encoder and tokenizer as the run (--model), and pool the
same sentence vector (--pooling); a LoRA checkpoint holds only adapters and
cannot be continued.
"""
import logging

import torch

from data import tokenizer_fingerprint
from fileio import UserError
from inference import checkpoint_folder
from model import load_checkpoint

log = logging.getLogger("continuation")


POOLING = {"cls": "[CLS] token", "mean": "mean over tokens"}
ARCHITECTURE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size", "max_position_embeddings")  # what must match for the weights to mean the same


@torch.no_grad()
def features_of(net, ids, batch_size=64):
    """The utterance head's hidden features (N, 256) and the encoder's states at every token [(T, H)] of tokenized
    utterances, from net (in eval mode)."""
    hidden, states = [], []
    for start in range(0, len(ids), batch_size):
        rows = ids[start:start + batch_size]
        width = max(map(len, rows))
        x = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()
        h = net.encoder(input_ids=x, attention_mask=mask).last_hidden_state  # (B, T, H)
        hidden.append(net.head[:2](net.pool(h, mask)))
        states += [s[:len(r)] for s, r in zip(h, rows)]
    return torch.cat(hidden), states


def imprinted(layer, names, old_names, examples):
    """layer's rows (and biases) as the old layer's where the name is known; a new name's row the mean of its
    examples' features ({name: (n, D)}), scaled to the known rows' mean norm, its bias their mean."""
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    index = {n: i for i, n in enumerate(old_names)}
    known = [index[n] for n in names if n in index]  # the old rows that stay
    norm = weight[known].norm(dim=1).mean() if known else None
    rows, biases = [], []
    for i, name in enumerate(names):
        if name in index:
            rows.append(weight[index[name]])
            biases.append(bias[index[name]])
        elif name in examples and norm is not None:
            mean = examples[name].mean(0)
            rows.append(mean / mean.norm().clamp(min=1e-12) * norm)
            biases.append(bias[known].mean())
        else:
            rows.append(None)
            biases.append(None)
    return rows, biases


def copy_rows(target, rows, biases):
    """Set target's rows (and biases) where given; the others keep their fresh initialisation."""
    with torch.no_grad():
        for i, (row, b) in enumerate(zip(rows, biases)):
            if row is not None:
                target.weight[i] = row
                target.bias[i] = b


def init_from(path, net, tokenizer, labels, slots, train):
    """net (the run's Classifier, before LoRA) started from the checkpoint at path: its encoder, and its heads' rows
    for the labels and slots it knows; new ones imprinted from train (tokenized features with "labels", and with
    slots "slot_words" and "slot_positions"). UserError when the checkpoint cannot continue into this run."""
    folder = checkpoint_folder(path)
    try:
        old, old_tokenizer, meta = load_checkpoint(folder)
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"--init-from {path}: {str(e).splitlines()[0]}") from None
    if meta.get("adapter"):
        raise UserError(f"--init-from {path}: a LoRA checkpoint holds only its adapters; continue from a fully "
                        "fine-tuned one")
    same = (tokenizer_fingerprint(old_tokenizer) == tokenizer_fingerprint(tokenizer)
            and all(getattr(old.encoder.config, k, None) == getattr(net.encoder.config, k, None) for k in ARCHITECTURE))
    if not same:
        raise UserError(f"--init-from {path}: it was trained from another encoder or tokenizer than --model's; "
                        "continue with the encoder it started from")
    pooling = meta["config"].get("pooling", "cls")
    if pooling != net.pooling:  # its head learned on the other sentence vector
        raise UserError(f"--init-from {path}: its sentence vector is the {POOLING[pooling]}, this run's the "
                        f"{POOLING[net.pooling]}; give --pooling {pooling} to continue it")
    net.encoder.load_state_dict(old.encoder.state_dict())
    net.head[0].load_state_dict(old.head[0].state_dict())
    new = [n for n in labels if n not in meta["labels"]]
    new_slots = [n for n in slots or [] if old.slot_head is not None and n not in meta["slots"]]
    # only the utterances of a new label or with a word of a new slot type need a pass through the old model
    needed = [i for i, y in enumerate(train["labels"]) if (y >= 0 and labels[y] in new)
              or (new_slots and set(train["slot_words"][i]) & set(new_slots))]
    hidden, states = features_of(old, [train["input_ids"][i] for i in needed]) if needed else (None, [])
    by_label = {name: hidden[[k for k, i in enumerate(needed) if labels[train["labels"][i]] == name]] for name in new
                if any(labels[train["labels"][i]] == name for i in needed)}
    copy_rows(net.head[2], *imprinted(old.head[2], labels, meta["labels"], by_label))
    if slots and old.slot_head is not None:
        by_slot = {}
        for i, s in zip(needed, states):
            for name, pos in zip(train["slot_words"][i], train["slot_positions"][i]):
                if pos >= 0 and name in new_slots:
                    by_slot.setdefault(name, []).append(s[pos])
        by_slot = {k: torch.stack(v) for k, v in by_slot.items()}
        copy_rows(net.slot_head, *imprinted(old.slot_head, slots, meta["slots"], by_slot))
        if net.slot_crf is not None and old.slot_crf is not None:
            index = {n: i for i, n in enumerate(meta["slots"])}
            known = [(i, index[n]) for i, n in enumerate(slots) if n in index]
            with torch.no_grad():
                for edge in (0, -1):  # start and end rows
                    for i, j in known:
                        net.slot_crf.scores[edge, i] = old.slot_crf.scores[edge, j]
                for a, b in known:  # transitions from a (row 1 + a) to each known slot
                    for i, j in known:
                        net.slot_crf.scores[1 + a, i] = old.slot_crf.scores[1 + b, j]
        new += new_slots
    log.info("started from %s: its encoder, and its rows for %d label(s) and slot type(s); %d new: %s",
             meta["run_name"], len(labels) + len(slots or []) - len(new), len(new), ", ".join(new) or "none")
    return meta
