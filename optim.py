"""Training's parameter groups, optimizer and schedule: small pure functions (layer-wise LR decay, AdamW, a linear
schedule with warmup). Only training imports this module, and with it transformers' optimization module."""
import logging
import re

import torch
from transformers import get_linear_schedule_with_warmup

log = logging.getLogger(__name__)


def layer_depth(name, n_layers):
    """0 for embeddings, i + 1 for encoder layer i, n_layers + 1 for everything above (head, projection)."""
    if "embeddings" in name:
        return 0
    m = re.search(r"\.layer\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else n_layers + 1


def build_param_groups(named_params, lr, weight_decay, llrd, n_layers, scales=None):
    """AdamW groups with layer-wise LR decay: the top encoder layer and the heads at lr, x llrd per layer below;
    the parameters of a module named in scales ({module name: multiple}, model.HEADS' lr_scale) at that multiple
    of lr, without weight decay, in a group of their own.

    Biases and LayerNorm weights get no weight decay. Only parameters that require
    grad are included, each in exactly one group.
    """
    groups = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        depth = min(layer_depth(name, n_layers), n_layers)  # the head shares the top layer's lr
        decay = 0.0 if p.ndim < 2 else weight_decay
        key, group_lr = (depth, decay), lr * llrd ** (n_layers - depth)
        scale = next((s for module, s in (scales or {}).items() if module in name.split(".")), None)
        if scale is not None:
            key, group_lr, decay = (n_layers + 1, scale), lr * scale, 0.0
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr": group_lr, "weight_decay": decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    out = [groups[k] for k in sorted(groups, reverse=True)]
    for g in out:
        log.info("param group: %3d tensors, %9d params, lr %.3g, weight decay %g",
                 len(g["params"]), sum(p.numel() for p in g["params"]), g["lr"], g["weight_decay"])
    return out


def build_optimizer(groups, eps, fused, total_steps, warmup_ratio):
    """AdamW (fused kernel on the fast path) and a linear schedule with optional warmup."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    opt = torch.optim.AdamW(groups, eps=eps, fused=fused or None, foreach=None if fused else True)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total_steps), total_steps)
    return opt, sched
