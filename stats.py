"""Statistics: intervals over seeds, paired tests over the same test utterances, and calibration.

Two sources of noise separate two strategies' test accuracies: which test
utterances happen to be in the split (about +-1 point at 92% on 2,974), and
training randomness (seed). `t_interval` covers the second; `paired_bootstrap`
the first, pairing the two strategies on every utterance within each seed;
`paired_t` tests the per-seed differences.
"""
import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats as sps


def t_interval(xs, confidence=0.95):
    """(mean, low, high): Student-t interval of the mean over seeds; low = high = mean for a single value."""
    xs = np.asarray(xs, dtype=float)
    m = float(xs.mean())
    if len(xs) < 2:
        return m, m, m
    half = sps.t.ppf(0.5 + confidence / 2, len(xs) - 1) * xs.std(ddof=1) / np.sqrt(len(xs))
    return m, float(m - half), float(m + half)


def paired_bootstrap(correct_a, correct_b, n_boot=10_000, confidence=0.95, seed=0):
    """Accuracy difference b - a, paired on utterances within each seed, with a bootstrap over utterances.

    correct_a, correct_b: (S, N) 0/1 arrays, row s = seed s of each strategy,
    column i = test utterance i. The statistic is the mean over seeds of
    acc(b_s) - acc(a_s); utterances are resampled with replacement (the same
    draw for every seed, since the test set is shared). Returns
    {"delta", "low", "high", "p"}: the percentile interval and the two-sided
    p-value of "no difference" (twice the smaller tail of the bootstrap
    distribution at 0, at least 1 / n_boot).
    """
    a, b = np.atleast_2d(correct_a).astype(float), np.atleast_2d(correct_b).astype(float)
    if a.shape != b.shape:
        raise ValueError(f"paired runs need the same shape, got {a.shape} and {b.shape}")
    d = (b - a).mean(0)  # (N,): per-utterance difference, averaged over seeds
    n = len(d)
    rng = np.random.default_rng(seed)
    boots = np.concatenate([rng.multinomial(n, np.full(n, 1 / n), size=min(1000, n_boot - i)) @ d / n
                            for i in range(0, n_boot, 1000)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    p = 2 * min((boots <= 0).mean(), (boots >= 0).mean())
    return {"delta": float(d.mean()), "low": float(low), "high": float(high), "p": float(min(1.0, max(p, 1 / n_boot)))}


def paired_t(diffs):
    """Two-sided p of a one-sample t-test that the per-seed differences have mean 0; None below 2 seeds."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return None
    if np.all(diffs == diffs[0]):  # zero spread: t is infinite (or undefined when all are 0)
        return 1.0 if diffs[0] == 0 else 0.0
    return float(sps.ttest_1samp(diffs, 0.0).pvalue)


def holm(pvalues):
    """Holm-Bonferroni adjusted p-values (same order): for testing several strategies against one baseline."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def nll(logits, labels, temperature=1.0):
    """Mean negative log-likelihood of the true labels under softmax(logits / temperature); logits (N, C)."""
    logp = special.log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels):
    """The T > 0 that minimises nll(logits, labels, T) on held-out data (temperature scaling, Guo et al. 2017).

    It rescales confidence only: the argmax, so accuracy, is unchanged. Held-out data the model gets all right
    (a small validation split) has its minimum at T -> 0, every probability 0 or 1: there is no evidence to
    sharpen by, so T stays 1.
    """
    if np.all(np.asarray(logits).argmax(1) == np.asarray(labels)):
        return 1.0
    res = optimize.minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)), bounds=(-5, 5),
                                   method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


def ece(probs, labels, bins=15):
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - mean confidence| x share.

    probs: (N, C) probabilities; labels: (N,) class ids.
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)  # bin i holds confidences in [i/bins, (i+1)/bins)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)
