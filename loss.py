"""Losses beyond plain cross-entropy: contrastive (supcon, simclr), R-Drop and distillation (custom), and the
token-level cross-entropy, CRF likelihood and distillation of slot filling (the CRF's marginals, which parsing needs
too, are slots.py's). Pure functions."""
import torch
import torch.nn.functional as F

from slots import crf_log_marginals


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


def crf_nll(emissions, tags, mask, scores):
    """Negative log-likelihood of a linear-chain CRF (Lafferty et al. 2001), per sequence.

    emissions: (B, W, S) slot scores of each word; tags: (B, W) gold slot ids;
    mask: (B, W) bool, True on each row's words, which come first (left-aligned).
    scores: (S + 2, S), the CRF's own: row 0 the start score of each slot,
    rows 1..S transitions[i, j] from slot i to slot j, row S + 1 the end score.
    Returns (B,): log Z(x) - s(x, y), where s(x, y) = start[y_1] + sum_w e_w[y_w]
    + sum_w transitions[y_{w-1}, y_w] + end[y_W] and Z sums exp(s) over every
    slot sequence (the forward algorithm); 0 for a row without words.
    """
    b, w, s = emissions.shape
    if tags.shape != (b, w) or mask.shape != (b, w) or scores.shape != (s + 2, s):
        raise ValueError(f"emissions (B, W, S), tags and mask (B, W) and scores (S + 2, S) expected, got "
                         f"{tuple(emissions.shape)}, {tuple(tags.shape)}, {tuple(mask.shape)}, {tuple(scores.shape)}")
    if w == 0:
        return (emissions.sum((1, 2)) + scores.sum()) * 0.0  # keeps the graph, contributes no gradient
    start, transitions, end = scores[0], scores[1:-1], scores[-1]
    tags = tags.masked_fill(~mask, 0)
    gold = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, W)
    steps = transitions[tags[:, :-1], tags[:, 1:]]  # (B, W - 1)
    lengths = mask.sum(1)
    last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    path = start[tags[:, 0]] + (gold * mask).sum(1) + (steps * mask[:, 1:]).sum(1) + end[last]
    alpha = start + emissions[:, 0]  # (B, S): log-sum of the scores of every prefix ending in each slot
    for t in range(1, w):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1), dim=1)
        alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
    log_z = torch.logsumexp(alpha + end, dim=1)
    return (log_z - path) * (lengths > 0)


def word_sequences(logits, labels, ignore_index=-100):
    """The labelled tokens of each row moved to its front, in order: the row's sequence of words.

    logits: (B, T, S); labels: (B, T), ignore_index where a token starts no word.
    Returns (emissions (B, W, S), tags (B, W), mask (B, W) bool, order (B, W): the
    token index of each word), W the most words of any row.
    """
    mask = labels != ignore_index
    width = int(mask.sum(1).max()) if mask.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]  # labelled tokens first
    emissions = logits.gather(1, order.unsqueeze(2).expand(-1, -1, logits.shape[2]))
    return emissions, labels.gather(1, order), mask.gather(1, order), order


def crf_token_loss(logits, labels, scores, ignore_index=-100):
    """The CRF's negative log-likelihood of each utterance's word slots, per labelled token (the scale of
    token_cross_entropy, so that --slot-weight means the same with and without a CRF).

    logits: (B, T, S); labels: (B, T) slot ids at each word's first sub-token,
    ignore_index elsewhere; scores: (S + 2, S) as crf_nll takes them. The
    labelled tokens of each row, in order, are its sequence of words.
    Returns a scalar: sum_b crf_nll_b / |L|; 0 when no token is labelled.
    """
    emissions, tags, mask, _ = word_sequences(logits, labels, ignore_index)
    nll = crf_nll(emissions, tags, mask, scores)
    return nll.sum() / mask.sum().clamp(min=1)


def slot_distill_loss(logits, teacher_probs, labels, scores=None, temperature=1.0, ignore_index=-100):
    """Knowledge distillation of the slots, word by word: T^2 * KL(teacher's word distribution || student's),
    averaged over the words that have a teacher distribution.

    logits: (B, T, S) the student's slot scores; teacher_probs: (B, T, S) at each
    word's first sub-token the teacher's probability of each slot at temperature
    T, all zero where there is none (other sub-tokens, padding, a word the
    teacher did not see); labels: (B, T) the student's words as in
    crf_token_loss. The student's distribution is softmax(logits / T) at the
    word, or with the CRF's scores its marginals with every score divided by T
    (posterior distillation, Wang et al. 2020). Returns a scalar >= 0; 0 when no
    word has a teacher distribution.
    """
    if teacher_probs.shape != logits.shape or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits and teacher_probs (B, T, S) and labels (B, T) expected, got {tuple(logits.shape)},"
                         f" {tuple(teacher_probs.shape)} and {tuple(labels.shape)}")
    if scores is None:
        log_student = F.log_softmax(logits / temperature, -1)
    else:
        emissions, _, mask, order = word_sequences(logits, labels, ignore_index)
        log_student = crf_log_marginals(emissions / temperature, mask, scores / temperature)
        teacher_probs = teacher_probs.gather(1, order.unsqueeze(2).expand(-1, -1, logits.shape[2])) * mask.unsqueeze(2)
    words = (teacher_probs.sum(-1) > 0).sum()
    kl = F.kl_div(log_student, teacher_probs, reduction="sum")  # a word whose teacher row is zero adds 0
    return temperature ** 2 * kl / words.clamp(min=1)
