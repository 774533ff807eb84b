"""The statistics of the report, against values computed by hand."""
import numpy as np
import pytest

from stats import holm, paired_bootstrap, paired_t, t_interval


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: half-width t(0.975, df 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert (low, high) == pytest.approx((2.0 - 2.484138, 2.0 + 2.484138), abs=1e-6)
    assert t_interval([91.5]) == (91.5, 91.5, 91.5)  # one seed: no interval to give


def test_paired_t_by_hand():
    # diffs 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.4641, df 2, two-sided p = 0.07418
    assert paired_t([1.0, 2.0, 3.0]) == pytest.approx(0.07418, abs=1e-4)
    assert paired_t([0.5]) is None
    assert paired_t([0.0, 0.0]) == 1.0 and paired_t([0.3, 0.3]) == 0.0


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> made monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap_identical_and_shifted():
    rng = np.random.default_rng(1)
    a = rng.random((3, 400)) < 0.9
    same = paired_bootstrap(a, a, n_boot=2000)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    # b fixes a's errors on the first half of the utterances, on every seed: about +5 points
    b = a | (np.arange(400) < 200)
    delta = (b.mean(1) - a.mean(1)).mean()
    res = paired_bootstrap(a, b, n_boot=2000)
    assert res["delta"] == pytest.approx(delta)
    assert 0 < res["low"] < delta < res["high"] and res["p"] == pytest.approx(1 / 2000)


def test_paired_bootstrap_is_paired():
    # b = a with every answer flipped on utterance 0 only: the difference is tiny but has no noise from
    # the other utterances, which an unpaired comparison would add
    a = np.ones((2, 1000), dtype=bool)
    a[:, 0] = False
    b = np.ones((2, 1000), dtype=bool)
    res = paired_bootstrap(a, b, n_boot=2000)
    assert res["delta"] == pytest.approx(0.001)
    assert res["low"] >= 0.0


def test_paired_bootstrap_rejects_unpaired_shapes():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.ones((2, 10)), np.ones((3, 10)))


def test_nll_and_ece_by_hand():
    from stats import ece, nll

    # two classes, logits (0, ln 3): p = (1/4, 3/4); label 1 -> -ln(3/4) = 0.287682
    assert nll([[0.0, np.log(3)]], [1]) == pytest.approx(0.287682, abs=1e-6)
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bin [0.867, 0.933) has acc 0.5, conf 0.9, share 2/3;
    # bin [0.6, 0.667) acc 1, conf 0.6, share 1/3 -> 2/3 * 0.4 + 1/3 * 0.4 = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    assert ece(probs, [0, 1, 1]) == pytest.approx(0.4)


def test_fit_temperature_recovers_an_overconfident_scale():
    from stats import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 5)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((20000, 1))).argmax(1)  # drawn from softmax(z): calibrated at T = 1
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.05)  # logits 3x too sharp
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.05)


def test_a_validation_split_without_errors_leaves_the_temperature_at_1():
    from stats import fit_temperature

    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    assert fit_temperature(logits, np.array([0, 1, 0])) == 1.0  # all right: the NLL would fall toward T -> 0
    assert fit_temperature(logits, np.array([0, 1, 1])) != 1.0
