"""Slot filling's conventions, as MASSIVE's official code fixes them: word slot labels to BIO, Viterbi and the CRF's
marginals, and word predictions to spans of the text as typed (the metrics are metrics.py's).

Words are `text.split()`; each has one label. MASSIVE's data labels a word
with its slot name, "Other" outside spans, and consecutive words with the same
name form one span (MASSIVE's BIO conversion), so "B-" starts a span where the
name changes. Data whose spans of one type can touch (ATIS) labels words with
BIO tags instead ("B-city", "I-city", "O"), which keep such spans apart; an
"I-" tag after "O" or after another type opens a span, as seqeval reads it.
The data's slot scheme, "names" or "bio" (data.word_labels), says which of
the two a model's labels are: recorded in its checkpoint, never guessed.
"""
import numpy as np
import torch

from readers import word_offsets

OUTSIDE = "Other"


def to_bio(labels, scheme):
    """Word labels in a slot scheme ("names" or "bio") as BIO: names ["Other", "time", "time", "date"] -> ["O", "B-time",
    "I-time", "B-date"]; BIO tags stay as they are, "Other" (a word cut by truncation) becoming "O"."""
    if scheme == "bio":
        return ["O" if label == OUTSIDE else label for label in labels]
    out, previous = [], OUTSIDE
    for name in labels:
        out.append("O" if name == OUTSIDE else ("I-" if name == previous else "B-") + name)
        previous = name
    return out


def viterbi(emissions, scores):
    """The best slot sequence (W,) of a linear-chain CRF: argmax_y s(x, y), s as in loss.crf_nll.

    emissions: (W, S) slot scores of each word; scores: (S + 2, S), rows start,
    transitions (S rows), end.
    """
    start, transitions, end = scores[0], scores[1:-1], scores[-1]
    if len(emissions) == 0:
        return np.zeros(0, dtype=np.int64)
    best, back = start + emissions[0], []
    for e in emissions[1:]:
        total = best[:, None] + transitions  # (S, S): the best path into slot j through slot i
        back.append(total.argmax(0))
        best = total.max(0) + e
    path = [int((best + end).argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    return np.array(path[::-1])


def crf_log_marginals(emissions, mask, scores):
    """Each word's log marginal probability of each slot under a linear-chain CRF: log p(y_w = j | x) by the
    forward-backward algorithm, differentiable.

    emissions: (B, W, S); mask: (B, W) bool, True on each row's words, which come
    first; scores: (S + 2, S), all as crf_nll takes them. Returns (B, W, S):
    alpha_w[j] + beta_w[j] - log Z(x), where alpha_w sums the scores of every
    prefix ending in slot j at word w and beta_w those of every suffix after
    it; each row of a word sums to 1 in probability. Zero where mask is False.
    """
    b, w, s = emissions.shape
    if mask.shape != (b, w) or scores.shape != (s + 2, s):
        raise ValueError(f"emissions (B, W, S), mask (B, W) and scores (S + 2, S) expected, got "
                         f"{tuple(emissions.shape)}, {tuple(mask.shape)}, {tuple(scores.shape)}")
    if w == 0:
        return emissions * 0.0
    start, transitions, end = scores[0], scores[1:-1], scores[-1]
    alphas = [start + emissions[:, 0]]  # (B, S) each
    for t in range(1, w):
        alphas.append(torch.logsumexp(alphas[-1].unsqueeze(2) + transitions, dim=1) + emissions[:, t])
    betas = [end.expand(b, s)]  # beta of the last word; a row that ends earlier takes `end` where its words end
    for t in range(w - 2, -1, -1):
        step = torch.logsumexp(transitions + (emissions[:, t + 1] + betas[-1]).unsqueeze(1), dim=2)
        betas.append(torch.where(mask[:, t + 1].unsqueeze(1), step, end.expand(b, s)))
    alpha, beta = torch.stack(alphas, 1), torch.stack(betas[::-1], 1)  # (B, W, S)
    log_z = torch.logsumexp(alpha[:, 0] + beta[:, 0], dim=1)  # (B,)
    return (alpha + beta - log_z[:, None, None]).masked_fill(~mask.unsqueeze(2), 0.0)


def word_emissions(token_logits, positions):
    """(W, S) float64 slot scores of the words that kept a sub-token, read at each word's first one.

    token_logits: (T, S) slot scores of one utterance; positions: first_subtokens' positions (-1: none).
    """
    return np.asarray(token_logits, dtype=np.float64)[[p for p in positions if p >= 0]]


def best_slots(emissions, crf=None):
    """The (W,) predicted slot ids of the words: argmax per word, or with a CRF ((S + 2, S) scores) Viterbi."""
    return viterbi(emissions, crf) if crf is not None else emissions.argmax(-1)


def word_slots(token_logits, positions, names, crf=None):
    """Each word's predicted slot name, "Other" for a word without a sub-token (cut by truncation): what scoring
    reads; word_predictions adds each one's probability."""
    ids = iter(best_slots(word_emissions(token_logits, positions), crf))
    return [names[next(ids)] if p >= 0 else OUTSIDE for p in positions]


def word_predictions(token_logits, positions, names, crf=None, chunk=32):
    """For a batch of utterances, each one's (word slot names as word_slots, the probability of each): the softmax
    of the word's own scores, or with a CRF its marginal p(y_w = slot | x) by forward-backward
    (crf_log_marginals, over chunk utterances of about one length at once: 0.1-0.2 ms an utterance more than
    the softmax on one AMD EPYC thread), the CRF's own belief in that word; 1 for a word without a sub-token.

    token_logits, positions: per utterance, as word_emissions takes them.
    """
    emissions = [word_emissions(t, p) for t, p in zip(token_logits, positions)]
    if crf is None:
        probs = [np.exp(e - e.max(-1, keepdims=True)) for e in emissions]
        probs = [p / p.sum(-1, keepdims=True) for p in probs]
    else:
        probs, scores = [None] * len(emissions), torch.as_tensor(crf, dtype=torch.float64)
        by_length = sorted(range(len(emissions)), key=lambda i: len(emissions[i]))  # little padding per chunk
        for start in range(0, len(by_length), chunk):
            ids = by_length[start:start + chunk]
            padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(emissions[i]) for i in ids], batch_first=True)
            mask = torch.arange(padded.shape[1])[None] < torch.tensor([len(emissions[i]) for i in ids])[:, None]
            for i, m in zip(ids, crf_log_marginals(padded, mask, scores).exp().numpy()):  # (B, W, S)
                probs[i] = m[:len(emissions[i])]
    out = []
    for e, p, pos in zip(emissions, probs, positions):
        ids = best_slots(e, crf)
        chosen = iter(zip(ids, p[np.arange(len(ids)), ids]))
        words = [next(chosen) if q >= 0 else None for q in pos]
        out.append(([names[w[0]] if w else OUTSIDE for w in words], [float(w[1]) if w else 1.0 for w in words]))
    return out


def spans(text, labels, scores, scheme):
    """The predicted slots of one utterance as {"slot", "value", "start", "end", "score"}, with character offsets
    into text (text[start:end] == value) and the mean probability of the span's words.

    labels, scores: per word of text.split(), labels in the slot scheme.
    """
    offsets = word_offsets(text)
    out, tags, i = [], to_bio(labels, scheme), 0
    while i < len(tags):
        if tags[i] == "O":
            i += 1
            continue
        slot, j = tags[i][2:], i
        while j + 1 < len(tags) and tags[j + 1] == f"I-{slot}":
            j += 1
        start, end = offsets[i][0], offsets[j][1]
        out.append({"slot": slot, "value": text[start:end], "start": start, "end": end,
                    "score": round(float(np.mean(scores[i:j + 1])), 4)})
        i = j + 1
    return out
