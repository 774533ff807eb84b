import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import itertools

from loss import (crf_nll, crf_token_loss, distill_loss, slot_distill_loss, supcon_loss, symmetric_kl,
                  token_cross_entropy, word_sequences)
from slots import crf_log_marginals, viterbi


def reference(features, labels, t):
    """L_out of Khosla et al. (2020), eq. 2, written as literally as possible."""
    b, v, _ = features.shape
    z = [features[k % b, k // b] for k in range(b * v)]
    lab = [(labels[k % b].item() if labels is not None else k % b) for k in range(b * v)]
    total, anchors = 0.0, 0
    for i in range(b * v):
        pos = [p for p in range(b * v) if p != i and lab[p] == lab[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(b * v) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


def feats(b=6, v=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_matches_reference_supervised(t):
    f, y = feats(), torch.tensor([0, 1, 0, 2, 1, 0])
    assert supcon_loss(f, y, t).item() == pytest.approx(reference(f, y, t), rel=1e-9)


def test_matches_reference_simclr_and_three_views():
    f = feats(v=3)
    assert supcon_loss(f, None, 0.1).item() == pytest.approx(reference(f, None, 0.1), rel=1e-9)


def test_simclr_equals_supcon_with_distinct_labels():
    f = feats()
    assert supcon_loss(f, None, 0.1).item() == pytest.approx(supcon_loss(f, torch.arange(6), 0.1).item())


def test_invariant_to_batch_permutation():
    f, y = feats(), torch.tensor([0, 1, 0, 2, 1, 0])
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    assert supcon_loss(f[perm], y[perm]).item() == pytest.approx(supcon_loss(f, y).item())


def test_anchor_without_positive_is_skipped_and_finite():
    f, y = feats(v=1), torch.tensor([0, 1, 0, 2, 1, 3])  # classes 2 and 3 have a single view: no positive
    loss = supcon_loss(f, y, 0.07)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference(f, y, 0.07), rel=1e-9)
    alone = feats(b=3, v=1).requires_grad_()
    loss = supcon_loss(alone, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(alone.grad == 0)


def test_stable_at_tiny_temperature():
    f = feats()
    assert torch.isfinite(supcon_loss(f, torch.tensor([0, 1, 0, 2, 1, 0]), 1e-4))


def test_gradient_pulls_positives_together():
    f = feats().requires_grad_()
    supcon_loss(f, None, 0.1).backward()
    step = F.normalize(f - 0.1 * f.grad, dim=-1)
    assert (step[:, 0] * step[:, 1]).sum(-1).mean() > (f[:, 0] * f[:, 1]).sum(-1).mean()


@pytest.mark.parametrize("shape, labels", [((6, 8), None), ((6, 1, 8), None), ((6, 2, 8), torch.zeros(5))])
def test_bad_shapes(shape, labels):
    with pytest.raises(ValueError):
        supcon_loss(torch.zeros(shape), labels)


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 1, 0, 2, 1, 0])])
def test_anchor_slices_split_the_loss_and_its_gradient(labels):
    # what data-parallel processes compute: each its own examples as anchors against every candidate
    f = feats().requires_grad_()
    full = supcon_loss(f, labels, 0.1)
    (g_full,) = torch.autograd.grad(full, f)
    halves = [supcon_loss(f, labels, 0.1, anchors=slice(0, 3)), supcon_loss(f, labels, 0.1, anchors=slice(3, 6))]
    (g_halves,) = torch.autograd.grad(sum(halves) / 2, f)
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(g_halves, g_full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no example"):
        supcon_loss(f, labels, 0.1, anchors=slice(6, 6))


def test_symmetric_kl():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    assert symmetric_kl(a, a).item() == pytest.approx(0, abs=1e-6)
    assert symmetric_kl(a, b).item() == pytest.approx(symmetric_kl(b, a).item())
    p, q = a.softmax(-1), b.softmax(-1)
    by_hand = 0.5 * ((p * (p / q).log()).sum(1) + (q * (q / p).log()).sum(1)).mean()
    assert symmetric_kl(a, b).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_distill_loss():
    student, T = torch.randn(4, 5), 2.0
    teacher = (student / T).softmax(-1)
    assert distill_loss(student, teacher, T).item() == pytest.approx(0, abs=1e-6)  # the student already agrees
    other = torch.randn(4, 5).softmax(-1)
    # T^2 * (cross-entropy against the teacher - the teacher's entropy)
    ce = -(other * (student / T).log_softmax(-1)).sum(1).mean()
    entropy = -(other * other.log()).sum(1).mean()
    assert distill_loss(student, other, T).item() == pytest.approx((T ** 2 * (ce - entropy)).item(), rel=1e-5)


def path_score(emissions, tags, scores):
    """s(x, y) of one sequence, written out from its definition."""
    start, transitions, end = scores[0], scores[1:-1], scores[-1]
    s = start[tags[0]] + end[tags[-1]] + sum(emissions[i, t] for i, t in enumerate(tags))
    return s + sum(transitions[a, b] for a, b in zip(tags, tags[1:]))


def test_crf_nll_and_viterbi_match_enumerating_every_path():
    torch.manual_seed(0)
    n_slots, lengths = 3, [4, 2, 1]
    emissions, scores = torch.randn(3, 4, n_slots, dtype=torch.float64), torch.randn(n_slots + 2, n_slots, dtype=torch.float64)
    tags = torch.randint(0, n_slots, (3, 4))
    mask = torch.arange(4)[None] < torch.tensor(lengths)[:, None]
    nll = crf_nll(emissions, tags, mask, scores)
    for b, n in enumerate(lengths):
        paths = list(itertools.product(range(n_slots), repeat=n))
        every = torch.stack([path_score(emissions[b], p, scores) for p in paths])
        gold = path_score(emissions[b], tags[b, :n].tolist(), scores)
        assert nll[b].item() == pytest.approx((torch.logsumexp(every, 0) - gold).item())
        best = paths[int(every.argmax())]
        assert viterbi(emissions[b, :n].numpy(), scores.numpy()).tolist() == list(best)
    assert (nll > 0).all()


def test_crf_without_transitions_is_the_token_cross_entropy():
    # zero start, transition and end scores: the sequence likelihood factorises into the words' softmaxes
    logits = torch.randn(2, 5, 4)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [0, -100, -100, -100, -100]])
    zero = torch.zeros(6, 4)
    assert crf_token_loss(logits, labels, zero).item() == pytest.approx(token_cross_entropy(logits, labels).item(), rel=1e-5)


def test_crf_edge_cases():
    scores = torch.zeros(5, 3, requires_grad=True)
    none = crf_token_loss(torch.randn(2, 4, 3), torch.full((2, 4), -100), scores)
    assert none.item() == 0.0
    none.backward()  # a batch without labelled words still trains the rest of the step
    empty_row = crf_nll(torch.randn(2, 2, 3), torch.zeros(2, 2, dtype=torch.long), torch.tensor([[True, True], [False, False]]),
                        scores)
    assert empty_row[1].item() == 0.0 and empty_row[0].item() > 0
    assert viterbi(np.zeros((0, 3)), np.zeros((5, 3))).tolist() == []
    with pytest.raises(ValueError, match=r"\(S \+ 2, S\)"):
        crf_nll(torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool),
                torch.zeros(3, 3))


def test_crf_marginals_match_enumerating_every_path():
    torch.manual_seed(1)
    n_slots, lengths = 3, [4, 2, 0]
    emissions, scores = torch.randn(3, 4, n_slots, dtype=torch.float64), torch.randn(n_slots + 2, n_slots, dtype=torch.float64)
    mask = torch.arange(4)[None] < torch.tensor(lengths)[:, None]
    marginals = crf_log_marginals(emissions, mask, scores).exp()
    for b, n in enumerate(lengths):
        paths = list(itertools.product(range(n_slots), repeat=n))
        p = torch.softmax(torch.stack([path_score(emissions[b], q, scores) for q in paths]), 0) if n else []
        for w in range(n):
            for j in range(n_slots):
                want = sum(float(pr) for q, pr in zip(paths, p) if q[w] == j)
                assert marginals[b, w, j].item() == pytest.approx(want)
    assert torch.allclose(marginals[0].sum(-1), torch.ones(4, dtype=torch.float64))
    assert (marginals[1, 2:] == 1).all() and (marginals[2] == 1).all()  # log 0 = nothing where there is no word


def test_slot_distillation_is_zero_on_the_students_own_distribution():
    torch.manual_seed(0)
    logits, scores = torch.randn(2, 5, 4), torch.randn(6, 4)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [-100, 0, -100, -100, -100]])
    words = (labels != -100).unsqueeze(2)
    own = torch.softmax(logits / 2, -1) * words  # plain: each word's softmax at temperature 2
    assert slot_distill_loss(logits, own, labels, temperature=2).item() == pytest.approx(0, abs=1e-6)
    assert slot_distill_loss(logits, torch.roll(own, 1, dims=2), labels, temperature=2).item() > 0.01
    # with the CRF the student's distribution is its marginals at every word, the scores divided by T
    emissions, _, mask, order = word_sequences(logits, labels)
    marginals = crf_log_marginals(emissions / 2, mask, scores / 2).exp()
    crf_own = torch.zeros_like(logits)
    for b in range(2):
        for w in range(int(mask[b].sum())):
            crf_own[b, order[b, w]] = marginals[b, w]
    assert slot_distill_loss(logits, crf_own, labels, scores, 2).item() == pytest.approx(0, abs=1e-5)
    assert slot_distill_loss(logits, own, labels, scores, 2).item() > 0  # the softmax is not the CRF's posterior
    # a word without a teacher row adds nothing, and the mean is over the words that have one
    alone = slot_distill_loss(logits[1:], torch.roll(own, 1, dims=2)[1:], labels[1:])
    mixed = torch.roll(own, 1, dims=2)
    mixed[0] = 0
    assert slot_distill_loss(logits, mixed, labels).item() == pytest.approx(alone.item())
    assert slot_distill_loss(logits, torch.zeros_like(logits), labels, scores).item() == 0.0
    with pytest.raises(ValueError, match=r"\(B, T, S\)"):
        slot_distill_loss(logits, own[:, :3], labels)
