"""Gromov claims on constructed per-item frames (table prune_items): paired differences,
margins, Holm, the transition's bootstrap interval."""

import numpy as np
import pandas as pd
import pytest

from layerlab.prune import paired as pp
from layerlab.core.evidence import verdicts

L = 10  # layers


def acc_items(curve, n_items=400, dataset="mmlu", method="similarity", healed=False, base=True):
    """{n: accuracy}: item i is right at a point when i < accuracy * n_items (nested sets)."""
    rows = []
    for n, acc in curve.items():
        if n == 0 and not base:
            continue
        right = (np.arange(n_items) < round(acc * n_items)).astype(float)
        rows.append(pd.DataFrame({"item": np.arange(n_items), "value": right}).assign(
            dataset=dataset, metric="acc", method="similarity" if n == 0 else method, n=n,
            healed=healed and n > 0, n_layers=L))
    return pd.concat(rows, ignore_index=True)


def test_holds_then_falls_agrees_on_a_flat_region_and_a_collapse():
    r = pp.holds_then_falls(acc_items({0: 0.8, 1: 0.79, 2: 0.78, 5: 0.25, 6: 0.24}), "mmlu", 0.25)
    assert r["verdict"] == verdicts.AGREES
    f, lo, hi, undefined = r["transition"]
    assert f == pytest.approx(0.5) and lo <= 0.5 <= hi and undefined == 0
    assert "paper: no figure" in r["ours"]


def test_a_gradual_decline_disagrees_and_never_falling_disagrees():
    gradual = pp.holds_then_falls(acc_items({0: 0.8, 1: 0.6, 2: 0.45, 3: 0.3, 5: 0.25}), "mmlu", 0.25)
    assert gradual["verdict"] == verdicts.DISAGREES and "holds (disagrees)" in gradual["interval"]
    never = pp.holds_then_falls(acc_items({0: 0.8, 2: 0.79, 5: 0.78}), "mmlu", 0.25)
    assert never["verdict"] == verdicts.DISAGREES and "never falls" in never["ours"]


def test_the_reviews_holds_case_is_no_longer_agrees():
    # 22/40 -> 17/40 (-12.5 pp) at the first pruned point was "holds" on a point estimate
    r = pp.holds_then_falls(acc_items({0: 22 / 40, 1: 17 / 40, 5: 0.25}, n_items=40), "mmlu", 0.25)
    assert r["verdict"] != verdicts.AGREES
    assert "holds (inconclusive)" in r["interval"]


def test_falls_needs_the_interval_within_the_chance_band():
    # the last point 30% of 100: [21.9, 39.6] merely reaches chance (25%): not "falls"
    r = pp.holds_then_falls(acc_items({0: 0.8, 1: 0.79, 5: 0.30}, n_items=100), "mmlu", 0.25)
    assert "falls to chance (inconclusive)" in r["interval"] and r["verdict"] != verdicts.AGREES


def test_holds_then_falls_not_testable_below_the_floor_or_without_points():
    at_chance = pp.holds_then_falls(acc_items({0: 0.28, 5: 0.25}), "mmlu", 0.25)
    assert at_chance["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: floor")
    gsm = pp.holds_then_falls(acc_items({0: 0.02, 5: 0.0}, n_items=100, dataset="gsm8k"), "gsm8k", 0.0)
    assert gsm["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: floor: 2 of 100 correct")
    alone = pp.holds_then_falls(acc_items({0: 0.8}), "mmlu", 0.25)
    assert alone["verdict"].startswith(verdicts.NOT_TESTABLE)


def test_the_paper_family_fraction_is_reported():
    r = pp.holds_then_falls(acc_items({0: 0.8, 1: 0.79, 5: 0.25}), "mmlu", 0.25, model="qwen2.5-coder-1.5b")
    assert "paper (Qwen, MMLU): 0.20" in r["ours"]


def test_transition_counts_undefined_draws():
    acc = np.array([[0.8, 0.7, 0.3], [0.8, 0.7, 0.6]])
    t = pp.transition(acc, np.array([0.0, 0.1, 0.5]), 0.25)
    assert t[0] == pytest.approx(0.5) and np.isnan(t[1])


@pytest.mark.parametrize("healed_curve, verdict", [({0: 0.8, 2: 0.78, 5: 0.76, 7: 0.25}, verdicts.AGREES),
                                                   ({0: 0.8, 2: 0.3, 5: 0.25, 7: 0.25}, verdicts.DISAGREES)])
def test_healing_delays_the_collapse(healed_curve, verdict):
    raw = acc_items({0: 0.8, 2: 0.79, 5: 0.25, 7: 0.25})
    healed = acc_items(healed_curve, healed=True, base=False)
    r = pp.healing_delays_collapse(pd.concat([raw, healed]), "mmlu", 0.25)
    assert r["verdict"] == verdict


def test_healing_delay_not_testable_when_a_curve_never_collapses():
    raw = acc_items({0: 0.8, 2: 0.79, 5: 0.78})
    healed = acc_items({0: 0.8, 2: 0.79, 5: 0.79}, healed=True, base=False)
    r = pp.healing_delays_collapse(pd.concat([raw, healed]), "mmlu", 0.25)
    assert r["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: 100% of bootstrap draws undefined")


def loss_items(points, n_chunks=8, seed=0):
    """{(method, n, healed): mean loss}: per-chunk losses = mean + a chunk effect shared by
    every point (what pairing removes) + small noise."""
    rng = np.random.default_rng(seed)
    chunk = rng.normal(0, 0.05, n_chunks)
    rows = []
    for (method, n, healed), mean in points.items():
        v = mean + chunk + rng.normal(0, 0.002, n_chunks)
        rows.append(pd.DataFrame({"item": np.arange(n_chunks), "value": v}).assign(
            dataset="heldout", metric="loss_norm", method=method, n=n, healed=healed, n_layers=L))
    return pd.concat(rows, ignore_index=True)


def test_similarity_vs_heuristic_is_paired_and_holm_adjusted():
    base = {("similarity", 0, False): 0.40}
    # marginal intervals over 8 chunks (sd 0.05) overlap; the paired ones do not
    better = pp.similarity_vs_heuristic(loss_items(base | {("similarity", 2, False): 0.45,
                                                           ("deepest", 2, False): 0.47}))
    assert better["verdict"] == verdicts.AGREES and "Holm-adjusted" in better["interval"]
    worse = pp.similarity_vs_heuristic(loss_items(base | {("similarity", 2, False): 0.50,
                                                          ("deepest", 2, False): 0.47}))
    assert worse["verdict"] == verdicts.DISAGREES
    tie = pp.similarity_vs_heuristic(loss_items(base | {("similarity", 2, False): 0.47,
                                                        ("deepest", 2, False): 0.47}))
    assert tie["verdict"] == verdicts.INCONCLUSIVE
    assert pp.similarity_vs_heuristic(loss_items(base)) is None


def test_similarity_vs_heuristic_on_qa_accuracy():
    sim = acc_items({0: 0.8, 2: 0.75, 4: 0.6})
    deep = acc_items({2: 0.55, 4: 0.4}, method="deepest", base=False)
    r = pp.similarity_vs_heuristic(pd.concat([sim, deep]), "mmlu", "acc")
    assert r["verdict"] == verdicts.AGREES
    r = pp.similarity_vs_heuristic(pd.concat([acc_items({0: 0.8, 2: 0.5}),
                                              acc_items({2: 0.7}, method="deepest", base=False)]), "mmlu", "acc")
    assert r["verdict"] == verdicts.DISAGREES


@pytest.mark.parametrize("healed, verdict", [(0.45, verdicts.AGREES), (0.70, verdicts.DISAGREES),
                                             (0.5995, verdicts.INCONCLUSIVE)])
def test_healing_repairs_on_paired_chunks(healed, verdict):
    items = loss_items({("similarity", 0, False): 0.40, ("similarity", 5, False): 0.60,
                        ("similarity", 5, True): healed})
    r = pp.healing_repairs(items)
    assert r["verdict"] == verdict


@pytest.mark.parametrize("deep_healed, verdict", [(0.45, verdicts.AGREES), (0.50, verdicts.DISAGREES),
                                                  (0.4698, verdicts.INCONCLUSIVE)])
def test_healed_heuristic_on_paired_chunks(deep_healed, verdict):
    items = loss_items({("similarity", 0, False): 0.40, ("deepest", 5, False): 0.60,
                        ("similarity", 5, True): 0.45, ("deepest", 5, True): deep_healed})
    r = pp.healed_heuristic(items)
    assert r["verdict"] == verdict, r


def test_a_healed_curve_that_never_collapses_is_a_delay():
    raw = acc_items({0: 0.8, 2: 0.79, 5: 0.25})
    healed = acc_items({2: 0.8, 5: 0.7}, healed=True, base=False)  # still up at 0.5, where raw collapsed
    assert pp.healing_delays_collapse(pd.concat([raw, healed]), "mmlu", 0.25)["verdict"] == verdicts.AGREES
    early = acc_items({0: 0.8, 2: 0.79, 3: 0.78, 4: 0.25})
    short = acc_items({2: 0.8, 3: 0.79}, healed=True, base=False)  # healed grid ends before raw's collapse
    r = pp.healing_delays_collapse(pd.concat([early, short]), "mmlu", 0.25)
    assert r["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: 100% of bootstrap draws undefined")
