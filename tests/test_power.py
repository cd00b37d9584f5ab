"""Power figures against simulations of the intervals themselves, and the verdict rules that
test a claim against the paper's own effect, each able to give each outcome."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student

from layerlab.core.evidence import papers, power, stats, verdicts


@pytest.mark.parametrize("n", [10, 40, 150])
def test_paired_t_mde_has_80_percent_power_in_simulation(n):
    rng = np.random.default_rng(n)
    effect = power.mde_paired_t(n, 2.0)
    x = rng.normal(effect, 2.0, size=(4000, n))
    half = student.ppf(0.975, n - 1) * x.std(1, ddof=1) / math.sqrt(n)
    rejected = ((x.mean(1) - half > 0) | (x.mean(1) + half < 0)).mean()
    assert abs(rejected - 0.8) < 0.025
    assert power.n_for_effect_paired_t(effect, 2.0) in (n - 1, n, n + 1)


@pytest.mark.parametrize("n,discordance", [(80, 0.3), (200, 0.2), (400, 0.08)])
def test_paired_binary_mde_has_80_percent_power_for_tangos_interval(n, discordance):
    rng = np.random.default_rng(n)
    effect = power.mde_paired_binary(n, discordance)
    psi = max(discordance, effect)
    counts = rng.multinomial(n, [(psi + effect) / 2, (psi - effect) / 2, 1 - psi], size=4000)
    _, lo, hi = stats.tango_counts(0, counts[:, 1], counts[:, 0], counts[:, 2])
    assert abs(((lo > 0) | (hi < 0)).mean() - 0.8) < 0.04
    assert abs(power.n_for_effect_paired_binary(effect, discordance) - n) <= 0.03 * n + 1


def test_more_items_detect_smaller_effects():
    assert power.mde_paired_t(400, 1.0) < power.mde_paired_t(100, 1.0) < power.mde_paired_t(25, 1.0)
    assert power.mde_paired_binary(800, 0.2) < power.mde_paired_binary(80, 0.2)
    assert math.isnan(power.mde_paired_t(1, 1.0)) and math.isnan(power.mde_paired_t(50, 0.0))
    assert power.n_for_effect_paired_t(0.0, 1.0) is None


def test_the_power_note_says_how_many_items_would_tell():
    text = power.note(80, 0.071, 912, 0.0117)
    assert text == "MDE (80% power) 7.1 pp at n = 80; about 910 items would detect 1.17 pp (this run has 80)"


POSITIVE = 0.0117  # a paper's +3.5 pp effect, a third of it as the smallest effect of interest


@pytest.mark.parametrize("lo,hi,word,reason", [
    (0.002, 0.05, verdicts.AGREES, "excludes 0"),
    (-0.0086, 0.0065, verdicts.DISAGREES, "smaller than the paper's: upper bound +0.65 pp short of +1.17 pp"),
    (-0.05, -0.01, verdicts.DISAGREES, "opposite to the paper's"),
    (0.001, 0.009, verdicts.DISAGREES, "smaller than the paper's"),  # real, but below the smallest of interest
    (-0.02, 0.04, verdicts.INCONCLUSIVE, "admits 0 and +1.17 pp"),
])
def test_versus_paper_gives_each_outcome(lo, hi, word, reason):
    v = verdicts.versus_paper(lo, hi, smallest=POSITIVE)
    assert verdicts.word(v) == word and reason in v
    mirrored = verdicts.versus_paper(-hi, -lo, smallest=-POSITIVE)
    assert verdicts.word(mirrored) == word


def test_a_null_result_that_excludes_the_papers_effect_disagrees():
    rng = np.random.default_rng(0)
    before = rng.integers(0, 2, 3000)
    after = np.where(rng.random(3000) < 0.1, 1 - before, before)  # changes in both directions, no net effect
    d, lo, hi = stats.paired_proportion(before, after)
    smallest = papers.smallest_effect(0.109)  # CounterFact's +10.9 pp (Table 1)
    assert verdicts.word(verdicts.versus_paper(lo, hi, smallest=smallest)) == verdicts.DISAGREES
    assert verdicts.word(verdicts.above(lo, hi)) == verdicts.INCONCLUSIVE  # what testing against 0 said


def test_versus_paper_needs_a_smallest_effect():
    with pytest.raises(ValueError, match="smallest"):
        verdicts.versus_paper(0.0, 1.0, smallest=0.0)
    assert verdicts.word(verdicts.versus_paper(float("nan"), 1.0, smallest=0.1)) == verdicts.INCONCLUSIVE


@pytest.mark.parametrize("lo,hi,sign,word", [
    (0.1, 0.2, 1, verdicts.AGREES), (-0.2, -0.1, 1, verdicts.DISAGREES), (-0.1, 0.1, 1, verdicts.INCONCLUSIVE),
    (-0.2, -0.1, -1, verdicts.AGREES), (0.1, 0.2, -1, verdicts.DISAGREES),
])
def test_direction_gives_each_outcome(lo, hi, sign, word):
    v = verdicts.direction(lo, hi, sign)
    assert verdicts.word(v) == word and "the paper states no number" in v


@pytest.mark.parametrize("lo,hi,word", [
    (-0.02, 0.03, verdicts.AGREES), (-0.2, -0.08, verdicts.DISAGREES), (-0.08, 0.01, verdicts.INCONCLUSIVE),
])
def test_non_inferior_gives_each_outcome(lo, hi, word):
    assert verdicts.word(verdicts.non_inferior(lo, hi, margin=0.05)) == word


def test_not_testable_names_a_known_cause():
    v = verdicts.not_testable("unmodified 24.0% of 80", cause="model at chance")
    assert v == "not testable: model at chance: unmodified 24.0% of 80" and verdicts.cause(v) == "model at chance"
    assert verdicts.cause(verdicts.AGREES) is None
    with pytest.raises(ValueError, match="cause"):
        verdicts.not_testable("x", cause="too hard")


def test_a_tie_gives_an_interval_that_admits_both_sides():
    same = np.array([1, 0, 1, 1, 0, 0, 1, 0] * 5, float)
    d, lo, hi = stats.paired_t(same, same)  # 0/1 values: Tango's interval, never [0, 0]
    assert d == 0 and lo < 0 < hi
    d, lo, hi = stats.paired_t(np.full(10, 2.5), np.full(10, 2.5))  # continuous, no spread: no interval
    assert math.isnan(lo) and verdicts.word(verdicts.above(lo, hi)) == verdicts.INCONCLUSIVE
