"""The referee's statistics (layerlab.core.evidence.stats): coverage of the paired-proportion interval by
simulation, the paired t interval, Holm, the floors."""

import numpy as np
import pytest
from scipy.stats import t as t_dist

from layerlab.core.eval import evaluation as ev
from layerlab.core.evidence import stats, verdicts

# paired cell probabilities (right both, right before only, right after only, wrong both):
# few discordant items, none lost, balanced, large shifts, near the ceiling
DISTRIBUTIONS = [(0.30, 0.01, 0.05, 0.64), (0.40, 0.10, 0.10, 0.40), (0.10, 0.02, 0.08, 0.80),
                 (0.50, 0.00, 0.05, 0.45), (0.45, 0.05, 0.05, 0.45), (0.20, 0.15, 0.30, 0.35),
                 (0.05, 0.05, 0.20, 0.70), (0.60, 0.005, 0.015, 0.38)]


def _draws(n: int, probs, reps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multinomial(n, probs, size=reps)   # [reps, 4]


def _bootstrap_coverage(n: int, probs, reps: int = 300, n_boot: int = 600, seed: int = 0) -> float:
    """The former evaluation.paired_difference: percentile bootstrap of 0/1 differences."""
    rng, truth, hit = np.random.default_rng(seed + 1), probs[2] - probs[1], 0
    for row in _draws(n, probs, reps, seed):
        diff = np.repeat([0.0, -1.0, 1.0, 0.0], row)
        means = diff[rng.integers(0, n, size=(n_boot, n))].mean(1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        hit += lo <= truth <= hi
    return hit / reps


@pytest.mark.parametrize("n", [20, 40, 80, 200, 1000])
def test_paired_proportion_interval_covers_at_least_94_percent(n):
    for probs in DISTRIBUTIONS:
        c = _draws(n, probs, 3000, seed=n)
        _, lo, hi = stats.tango_counts(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        truth = probs[2] - probs[1]
        coverage = ((lo <= truth + 1e-9) & (truth - 1e-9 <= hi)).mean()
        assert coverage >= 0.94, (n, probs, coverage)


@pytest.mark.parametrize("n,probs", [(20, DISTRIBUTIONS[0]), (20, DISTRIBUTIONS[3]), (40, DISTRIBUTIONS[3])])
def test_the_old_percentile_bootstrap_fails_the_same_coverage_test(n, probs):
    assert _bootstrap_coverage(n, probs) < 0.94


def test_few_changed_items_are_not_a_verdict():
    # the review's cases: 4 gained, none lost of 80 (exact McNemar p = 0.125); 1 lost of 80
    d, lo, hi = ev.paired_difference(np.r_[np.ones(76), np.zeros(4)], np.ones(80))
    assert d == pytest.approx(0.05) and verdicts.above(lo, hi) == verdicts.INCONCLUSIVE
    d, lo, hi = ev.paired_difference(np.ones(80), np.r_[np.ones(79), 0])
    assert verdicts.above(lo, hi) == verdicts.INCONCLUSIVE and lo < -0.0125 < 0 < hi
    d, lo, hi = ev.paired_difference(np.r_[np.ones(60), np.zeros(20)], np.ones(80))
    assert verdicts.above(lo, hi) == verdicts.AGREES
    d, lo, hi = ev.paired_difference(np.ones(80), np.r_[np.ones(60), np.zeros(20)])
    assert verdicts.above(lo, hi) == verdicts.DISAGREES


def test_paired_difference_on_continuous_values_is_the_paired_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 1.0, 8)
    b = a + rng.normal(0.2, 0.1, 8)
    d, lo, hi = ev.paired_difference(a, b)
    diff = b - a
    half = t_dist.ppf(0.975, 7) * diff.std(ddof=1) / np.sqrt(8)
    assert (d, lo, hi) == pytest.approx((diff.mean(), diff.mean() - half, diff.mean() + half))


def test_holm_adjusts_step_down():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == pytest.approx([0.5])
    assert stats.holm_confidence(4) == pytest.approx(0.9875)


def test_floors_need_a_clear_margin_above_chance_and_20_correct_generations():
    assert not stats.informative(2, 100, 0.0)[0]          # GSM8K: 2 of 100 solved
    assert stats.informative(20, 100, 0.0)[0]
    assert not stats.informative(30, 100, 0.25)[0]        # Wilson lower bound 22% < 27%
    ok, reason = stats.informative(60, 100, 0.25)
    assert ok and "Wilson lower bound" in reason
    assert stats.undefined_share(np.array([1.0, np.nan, 2.0, 3.0])) == 0.25


def test_the_secondary_statistic_is_a_paired_t_with_its_z():
    import math

    from layerlab.core.evidence import stats as st

    rng = np.random.default_rng(0)
    before = rng.normal(size=50)
    after = before + 0.3 + rng.normal(scale=0.5, size=50)
    d = after - before
    z = d.mean() / (d.std(ddof=1) / math.sqrt(50))
    text = st.secondary(before, after, "gold log-prob")
    assert text.startswith(f"gold log-prob: Δ {d.mean():+.3f} nats") and f"z {z:+.1f}, n = 50" in text
    assert st.secondary(after, before, "x", sign=-1) == st.secondary(before, after, "x")
    assert st.secondary(before, before + 1.0, "x") == "" and st.secondary([1.0], [2.0], "x") == ""
