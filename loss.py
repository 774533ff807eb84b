"""Losses beyond plain cross-entropy: contrastive (supcon, simclr), R-Drop and distillation (custom), and the
token-level cross-entropy of slot filling. Pure functions."""
import torch
import torch.nn.functional as F


def supcon_loss(features, labels=None, temperature=0.07, anchors=None):
    """Supervised contrastive loss, L_out of Khosla et al. 2020 (eq. 2); SimCLR/NT-Xent when labels is None.

    features: (B, V, D), L2-normalised, V views of each of B examples (V >= 2 without labels).
    labels:   (B,) integer class ids, or None: then an anchor's only positives are
              the other views of its own example (SimCLR, Chen et al. 2020).
    anchors:  a slice of the B examples whose views are the anchors (default: all);
              every view of every example is a candidate. Data-parallel training
              passes its own examples' slice of the batch gathered from all processes.
    Returns a scalar: for each of the anchors i with positives P(i),
        -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) ),
    averaged over anchors that have at least one positive (with V >= 2 every
    anchor does; with V = 1 a class seen once has none, and contributes nothing
    instead of NaN).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (batch, views, dim), got {tuple(features.shape)}")
    b, v, _ = features.shape
    if labels is None and v < 2:
        raise ValueError("without labels the loss needs at least 2 views per example")
    device = features.device
    if labels is None:
        labels = torch.arange(b, device=device)  # each example its own class
    elif labels.shape != (b,):
        raise ValueError(f"labels must be ({b},), got {tuple(labels.shape)}")
    idx = torch.arange(b, device=device)[anchors if anchors is not None else slice(None)]
    if len(idx) == 0:
        raise ValueError("anchors selects no example")
    z = features.transpose(0, 1).reshape(v * b, -1)  # (VB, D): view-major, row k is example k % B
    rows = (torch.arange(v, device=device)[:, None] * b + idx[None, :]).reshape(-1)  # (VA,) the anchors' rows of z
    logits = z[rows] @ z.T / temperature  # (VA, VB)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability; cancels in the ratio
    self_mask = rows[:, None] == torch.arange(v * b, device=device)[None, :]
    example_labels = labels.to(device).repeat(v)  # (VB,) label of each row of z
    positives = (example_labels[rows][:, None] == example_labels[None, :]) & ~self_mask
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positives.sum(1)
    mean_log_prob_pos = log_prob.masked_fill(~positives, 0).sum(1) / n_pos.clamp(min=1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return features.sum() * 0.0  # keeps the graph, contributes no gradient
    return -mean_log_prob_pos[has_pos].mean()


def symmetric_kl(logits_a, logits_b):
    """R-Drop's regulariser (Liang et al. 2021): (KL(p_a || p_b) + KL(p_b || p_a)) / 2, averaged over examples.

    logits_a, logits_b: (B, C), the same examples through two dropout passes.
    Returns a scalar >= 0, zero when the two distributions are equal.
    """
    log_a, log_b = F.log_softmax(logits_a, -1), F.log_softmax(logits_b, -1)
    return 0.5 * (F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")
                  + F.kl_div(log_a, log_b, log_target=True, reduction="batchmean"))


def distill_loss(student_logits, teacher_probs, temperature=1.0):
    """Knowledge distillation (Hinton et al. 2015): T^2 * KL(teacher || softmax(student / T)), averaged over examples.

    student_logits: (B, C). teacher_probs: (B, C), rows summing to 1 (an
    ensemble's mean probability at the same temperature T). The T^2 keeps the
    gradient's scale independent of T. Returns a scalar >= 0.
    """
    log_student = F.log_softmax(student_logits / temperature, -1)
    return temperature ** 2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


def token_cross_entropy(logits, labels, label_smoothing=0.0, ignore_index=-100):
    """Cross-entropy of token labels (slot filling), averaged over the labelled tokens.

    logits: (B, T, S). labels: (B, T) slot ids, ignore_index where a token has
    no label (padding, special tokens, a word's later sub-tokens).
    Returns a scalar: -1/|L| * sum_{(b, t) in L} log softmax(logits[b, t])[labels[b, t]]
    over the labelled tokens L; 0 when a batch has none, instead of the 0/0 =
    NaN of a plain mean (and without reading the count back from the device).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, S) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=ignore_index,
                            label_smoothing=label_smoothing, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
