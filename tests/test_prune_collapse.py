"""Gromov et al.'s curve claims on constructed per-item frames: regions fixed from the paper's
fraction, holds (non-inferior per flat point), falls (at chance per fallen point), healing
delays the collapse (paired, direction only); each rule can give each outcome."""

import numpy as np
import pandas as pd
import pytest

from layerlab.core.evidence import verdicts
from layerlab.prune import collapse
from prune_frames import acc_items  # 10 layers: the unknown family's band [0.20, 0.55] has flat n = 1 (0.1), fallen n >= 6


def word(r):
    return verdicts.word(r["verdict"])


def test_the_band_comes_from_the_family_and_the_regions_from_the_band():
    assert collapse.band("smollm2-135m")[:2] == (0.20, 0.55)  # no figure for it: the paper's range
    assert collapse.band("qwen2.5-coder-1.5b (bf16)")[:2] == (0.20, 0.20)
    fr = np.r_[0.0, np.arange(1, 10) / 10]
    assert collapse.regions(fr, 0.20, 0.55) == ([1], [6, 7, 8, 9])
    assert collapse.regions(fr, 0.20, 0.20) == ([1], [3, 4, 5, 6, 7, 8, 9])
    assert collapse.regions(np.array([0.0, 3 / 30, 18 / 30]), 0.20, 0.55) == ([1], [2])  # 18/30 is 0.60


def test_holds_then_falls_agrees_on_a_flat_region_and_a_collapse():
    r = collapse.holds_then_falls(acc_items({0: 0.8, 1: 0.79, 3: 0.5, 6: 0.25, 7: 0.24}), "mmlu", 0.25)
    assert word(r) == verdicts.AGREES, r
    assert "paper: no figure for this family" in r["ours"] and "described, not decided" in r["ours"]
    assert r["transition"] == pytest.approx(0.3)  # 50% is below half-way (52.5%)
    assert r["n"] == 400 and r["statistic"] and r["mde"]


def test_a_fall_in_the_flat_region_disagrees():
    r = collapse.holds(acc_items({0: 0.8, 1: 0.6, 6: 0.25}), "mmlu", 0.25)
    assert word(r) == verdicts.DISAGREES and "0.10" in r["verdict"]


def test_accuracy_still_up_in_the_fallen_region_disagrees():
    r = collapse.holds_then_falls(acc_items({0: 0.8, 1: 0.79, 6: 0.78}), "mmlu", 0.25)
    assert word(r) == verdicts.DISAGREES and "never falls half-way" in r["ours"]
    assert "falls to chance (disagrees)" in r["interval"] and "holds (agrees)" in r["interval"]


def test_few_items_leave_holds_inconclusive_with_the_power():
    # 22/40 -> 17/40 (-12.5 pp): the interval admits both a loss beyond 5 pp and none
    r = collapse.holds(acc_items({0: 22 / 40, 1: 17 / 40, 6: 0.25}, n_items=40), "mmlu", 0.25)
    assert word(r) == verdicts.INCONCLUSIVE and "MDE (80% power)" in r["verdict"]
    assert r["n"] == 40 and r["n_needed"] and r["n_needed"] > 40


def test_falls_needs_the_interval_within_the_chance_band():
    # 30% of 100 at the fallen point: Wilson [21.9, 39.6] reaches past chance + 10 pp
    r = collapse.falls(acc_items({0: 0.8, 1: 0.79, 6: 0.30}, n_items=100), "mmlu", 0.25)
    assert word(r) == verdicts.INCONCLUSIVE
    assert word(collapse.falls(acc_items({0: 0.8, 6: 0.26}, n_items=400), "mmlu", 0.25)) == verdicts.AGREES


def test_not_testable_names_its_cause():
    at_chance = collapse.holds_then_falls(acc_items({0: 0.28, 6: 0.25}), "mmlu", 0.25)
    assert verdicts.cause(at_chance["verdict"]) == "model at chance"
    alone = collapse.holds_then_falls(acc_items({0: 0.8}), "mmlu", 0.25)
    assert verdicts.cause(alone["verdict"]) == "no data"
    no_flat = collapse.holds(acc_items({0: 0.8, 2: 0.79, 6: 0.25}), "mmlu", 0.25)  # 0.2 is past 0.15
    assert verdicts.cause(no_flat["verdict"]) == "grid cannot falsify" and "0.15" in no_flat["verdict"]
    no_fallen = collapse.falls(acc_items({0: 0.8, 1: 0.79, 5: 0.25}), "mmlu", 0.25)  # 0.5 is short of 0.60
    assert verdicts.cause(no_fallen["verdict"]) == "grid cannot falsify"


def test_qwen_is_held_to_its_own_fraction():
    # Qwen collapses at 20%: the point at 0.2 is neither flat nor fallen, 0.3 is fallen
    items = acc_items({0: 0.8, 1: 0.79, 2: 0.3, 3: 0.25})
    r = collapse.holds_then_falls(items, "mmlu", 0.25, model="qwen2.5-coder-1.5b")
    assert word(r) == verdicts.AGREES and "paper (Qwen, MMLU): 0.20" in r["ours"]
    # the same curve is too short for a model of no known family: its fallen region starts at 0.60
    assert verdicts.cause(collapse.falls(items, "mmlu", 0.25)["verdict"]) == "grid cannot falsify"


@pytest.mark.parametrize("healed_curve, outcome", [({3: 0.70}, verdicts.AGREES), ({3: 0.30}, verdicts.DISAGREES),
                                                   ({3: 0.50}, verdicts.INCONCLUSIVE)])
def test_healing_delays_the_collapse(healed_curve, outcome):
    raw = acc_items({0: 0.8, 1: 0.79, 3: 0.5, 6: 0.25})
    healed = acc_items(healed_curve, healed=True, base=False)
    r = collapse.healing_delays_collapse(pd.concat([raw, healed]), "mmlu", 0.25)
    assert word(r) == outcome, r
    assert "direction only" in r["verdict"] and r["n"] == 400 and "bootstrap" not in r["verdict"]


def test_healing_at_several_fractions_pools_them_per_item():
    raw = acc_items({0: 0.8, 1: 0.79, 3: 0.5, 4: 0.4, 6: 0.25})
    healed = acc_items({3: 0.6, 4: 0.5}, healed=True, base=False)
    r = collapse.healing_delays_collapse(pd.concat([raw, healed]), "mmlu", 0.25)
    assert word(r) == verdicts.AGREES and "2 fractions" in r["statistic"]


def test_healing_only_in_the_flat_region_cannot_show_a_delay():
    raw = acc_items({0: 0.8, 1: 0.79, 6: 0.25})
    healed = acc_items({1: 0.8}, healed=True, base=False)
    r = collapse.healing_delays_collapse(pd.concat([raw, healed]), "mmlu", 0.25)
    assert verdicts.cause(r["verdict"]) == "grid cannot falsify"


def test_holds_shows_the_margin_beside_accuracy_and_judges_only_accuracy():
    plain = acc_items({0: 0.8, 1: 0.79, 6: 0.25})
    assert collapse.holds(plain, "mmlu", 0.25)["secondary"] == ""  # no margins stored: nothing beside
    rng = np.random.default_rng(0)
    # the pruned point's margins shrink by 0.5 nats on every item, its accuracy barely moves
    margin = np.where(plain.value == 1, 1.0, -1.0) + rng.normal(0, 0.2, len(plain)) - 0.5 * (plain.n > 0)
    r = collapse.holds(plain.assign(margin=margin), "mmlu", 0.25)
    assert r["verdict"] == collapse.holds(plain, "mmlu", 0.25)["verdict"]
    head = "f=0.10 (lowest flat point): gold choice's margin vs unpruned: Δ "
    assert r["secondary"].startswith(head) and -0.6 < float(r["secondary"][len(head):].split()[0]) < -0.45
