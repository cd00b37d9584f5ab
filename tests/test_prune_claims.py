"""Gromov claim verdicts (layerlab.prune_claims) on constructed tables: every outcome of
every verdict function, and prune.chance_fraction on constructed curves."""

import math

import pandas as pd
import pytest

from layerlab import papers, prune, prune_claims, results, verdicts
from layerlab.prune_claims import (deep_end, healed_heuristic, healing_repairs, holds_then_falls,
                                   similarity_vs_heuristic)


def acc_curve(points):
    """(fraction, value, half-width) -> accuracy rows."""
    return pd.DataFrame([{"fraction": f, "n": round(10 * f), "value": v, "ci_low": v - h, "ci_high": v + h}
                         for f, v, h in points])


def loss_row(method, n, value, healed=False, se=0.01):
    return {"model": "m", "dataset": "heldout", "metric": "loss_norm", "method": method, "n": n, "healed": healed,
            "value": value, "stderr": se, "ci_low": value - 1.96 * se, "ci_high": value + 1.96 * se}


# ---------------------------------------------------------------- chance_fraction

def test_chance_fraction_never_at_chance():
    assert prune.chance_fraction(acc_curve([(0, 0.8, 0.05), (0.2, 0.7, 0.05), (0.4, 0.6, 0.05)]), 0.25) is None


def test_chance_fraction_from_the_middle():
    c = acc_curve([(0.4, 0.26, 0.05), (0, 0.8, 0.05), (0.2, 0.5, 0.05), (0.6, 0.24, 0.05)])  # unsorted on purpose
    assert prune.chance_fraction(c, 0.25) == pytest.approx(0.4)


def test_chance_fraction_dips_then_recovers_gives_the_later_fraction():
    c = acc_curve([(0, 0.8, 0.05), (0.2, 0.27, 0.05), (0.4, 0.6, 0.05), (0.6, 0.25, 0.05), (0.8, 0.22, 0.05)])
    assert prune.chance_fraction(c, 0.25) == pytest.approx(0.6)


def test_chance_fraction_interval_just_above_chance_is_not_at_chance():
    assert prune.chance_fraction(acc_curve([(0, 0.8, 0.05), (0.5, 0.31, 0.05)]), 0.25) is None


# ---------------------------------------------------------------- holds then falls

def test_holds_then_falls_agrees_disagrees_inconclusive_not_testable():
    agree = holds_then_falls(acc_curve([(0, 0.8, 0.05), (0.1, 0.78, 0.05), (0.5, 0.26, 0.05)]), 0.25)
    assert agree["verdict"] == verdicts.AGREES and agree["chance_fraction"] == pytest.approx(0.5)
    early_drop = holds_then_falls(acc_curve([(0, 0.8, 0.02), (0.1, 0.5, 0.02), (0.5, 0.25, 0.05)]), 0.25)
    assert early_drop["verdict"] == verdicts.DISAGREES
    never = holds_then_falls(acc_curve([(0, 0.8, 0.05), (0.1, 0.79, 0.05), (0.5, 0.6, 0.05)]), 0.25)
    assert never["verdict"] == verdicts.DISAGREES and never["chance_fraction"] is None
    unclear = holds_then_falls(acc_curve([(0, 0.8, 0.05), (0.1, 0.74, 0.05), (0.5, 0.26, 0.05)]), 0.25)
    assert unclear["verdict"] == verdicts.INCONCLUSIVE  # below the base interval, but intervals overlap
    at_chance = holds_then_falls(acc_curve([(0, 0.27, 0.05), (0.5, 0.25, 0.05)]), 0.25)
    assert at_chance["verdict"].startswith(verdicts.NOT_TESTABLE)
    assert holds_then_falls(acc_curve([(0.5, 0.25, 0.05)]), 0.25)["verdict"].startswith(verdicts.NOT_TESTABLE)


# ---------------------------------------------------------------- healing

def healing_table(healed_value, se=0.01):
    return pd.DataFrame([loss_row("similarity", 0, 0.40), loss_row("similarity", 5, 0.60),
                         loss_row("similarity", 5, healed_value, healed=True, se=se)])


def test_healing_verdicts():
    good = healing_repairs(healing_table(0.45))
    assert good["verdict"] == verdicts.AGREES and "75% of the increase recovered" in good["ours"]
    assert healing_repairs(healing_table(0.70))["verdict"] == verdicts.DISAGREES  # healing made it worse
    assert healing_repairs(healing_table(0.59))["verdict"] == verdicts.INCONCLUSIVE  # intervals overlap
    assert healing_repairs(healing_table(0.45).iloc[:2]) is None  # nothing healed
    lone = pd.DataFrame([loss_row("similarity", 5, 0.45, healed=True)])
    assert healing_repairs(lone)["verdict"].startswith(verdicts.NOT_TESTABLE)


# ---------------------------------------------------------------- similarity vs heuristic, before healing

def method_table(pairs, se=0.01):
    rows = [loss_row("similarity", 0, 0.40)]
    for n, (s, d) in pairs.items():
        rows += [loss_row("similarity", n, s, se=se), loss_row("deepest", n, d, se=se)]
    return pd.DataFrame(rows)


def test_similarity_vs_heuristic_verdicts():
    better = similarity_vs_heuristic(method_table({2: (0.45, 0.50), 4: (0.50, 0.505)}))
    assert better["verdict"] == verdicts.AGREES
    assert "better at 1 [2], tie at 1 [4], worse at 0" in better["ours"]
    assert similarity_vs_heuristic(method_table({2: (0.55, 0.50)}))["verdict"] == verdicts.DISAGREES
    assert similarity_vs_heuristic(method_table({2: (0.50, 0.50)}))["verdict"] == verdicts.INCONCLUSIVE  # ties only
    mixed = similarity_vs_heuristic(method_table({2: (0.45, 0.50), 4: (0.60, 0.55)}))
    assert mixed["verdict"] == verdicts.INCONCLUSIVE
    assert similarity_vs_heuristic(pd.DataFrame([loss_row("similarity", 2, 0.5)])) is None


# ---------------------------------------------------------------- healed heuristic vs healed similarity

def healed_table(sim_healed, deep_healed, deep_raw=0.60, se=0.005):
    return pd.DataFrame([loss_row("similarity", 0, 0.40), loss_row("deepest", 5, deep_raw),
                         loss_row("similarity", 5, sim_healed, healed=True, se=se),
                         loss_row("deepest", 5, deep_healed, healed=True, se=se)])


def test_healed_heuristic_verdicts():
    # the heuristic's increase is 0.20, so the tolerance is 0.02 (10%)
    close = healed_table(0.45, 0.45)
    assert healed_heuristic(close)["verdict"] == verdicts.AGREES  # d = 0 ± 0.014 < 0.02
    assert healed_heuristic(healed_table(0.45, 0.42))["verdict"] == verdicts.AGREES  # heuristic better
    assert healed_heuristic(healed_table(0.45, 0.50))["verdict"] == verdicts.DISAGREES  # d = 0.05 ± 0.014
    assert healed_heuristic(healed_table(0.45, 0.465))["verdict"] == verdicts.INCONCLUSIVE  # straddles 0.02
    assert healed_heuristic(close, margin=0.01)["verdict"] == verdicts.INCONCLUSIVE  # d = 0 ± 0.014 straddles 0.002
    no_rise = healed_heuristic(healed_table(0.45, 0.45, deep_raw=0.39))
    assert no_rise["verdict"].startswith(verdicts.NOT_TESTABLE)
    assert healed_heuristic(close[close.method == "similarity"]) is None


# ---------------------------------------------------------------- deep end

def starts(deeper, total, n_layers=40):
    """total block sizes n = 1..total; the first ``deeper`` sit at the deep end, the rest at 0."""
    return pd.DataFrame([{"n": n, "l*": (n_layers - n - 1) if n <= deeper else 0} for n in range(1, total + 1)])


def test_deep_end_verdicts():
    assert deep_end(starts(20, 20), 40)["verdict"] == verdicts.AGREES
    assert deep_end(starts(0, 20), 40)["verdict"] == verdicts.DISAGREES
    mostly = deep_end(starts(12, 20), 40)  # 60%, but the interval reaches below one half
    assert mostly["verdict"] == verdicts.INCONCLUSIVE and mostly["share"] == pytest.approx(0.6)
    assert deep_end(starts(12, 20), 40)["share"] == pytest.approx(prune.deep_end_share(starts(12, 20), 40))
    assert deep_end(pd.DataFrame({"n": [30], "l*": [0]}), 40) is None


# ---------------------------------------------------------------- rows from a store

def test_claim_rows_from_a_store(tmp_path):
    store = results.ResultStore(tmp_path)
    table = method_table({3: (0.45, 0.50)})
    acc = [{"model": "m", "dataset": "arc_easy", "metric": "acc", "method": "similarity", "n": n, "healed": False,
            "fraction": n / 10, "value": v, "stderr": 0.02, "ci_low": v - 0.04, "ci_high": v + 0.04}
           for n, v in ((0, 0.7), (3, 0.69), (6, 0.25))]
    store.put("prune", "k1", pd.concat([table, pd.DataFrame(acc)], ignore_index=True).assign(
        model="m", technique="prune", split="test", n_items=100))
    dist = pd.DataFrame([{"model": "m", "n": n, "layer": layer, "value": 1.0 - 0.01 * layer,
                          "technique": "prune_distance", "dataset": "c4", "split": "validation",
                          "metric": "angular_distance", "n_items": 8}
                         for n in range(1, 10) for layer in range(0, 10 - n)])
    store.put("prune_distance", "k2", dist)
    rows = pd.DataFrame(prune_claims.claim_rows(store))
    assert list(rows.columns) == prune_claims.COLUMNS
    assert set(rows["paper"]) == {papers.GROMOV}
    by_number = rows.set_index("paper's number")["verdict"]
    assert by_number[papers.GROMOV_HOLDS_THEN_FALLS] == verdicts.AGREES
    assert by_number[papers.GROMOV_SIMILARITY_VS_DEEPEST] == verdicts.AGREES
    assert by_number[papers.GROMOV_DEEP_END] == verdicts.AGREES
    assert papers.GROMOV_HEALING not in by_number.index  # nothing healed, no row
    assert not any(math.isnan(x) if isinstance(x, float) else False for x in rows["verdict"])


def test_claim_rows_never_mix_protocols(tmp_path):
    """Points of two protocols (here: 40 vs 100 items) are judged apart, each labelled."""
    store = results.ResultStore(tmp_path)
    for key, limit, values in (("a", 40, (0.7, 0.69, 0.25)), ("b", 100, (0.7, 0.3, 0.25))):
        acc = [{"model": "m", "dataset": "arc_easy", "metric": "acc", "method": "similarity", "n": n, "healed": False,
                "fraction": n / 10, "value": v, "stderr": 0.02, "ci_low": v - 0.04, "ci_high": v + 0.04,
                "limit": limit, "seed": 0, "runtime": "float32/cpu", "runtime_id": "x"}
               for n, v in zip((0, 3, 6), values)]
        store.put("prune", key, pd.DataFrame(acc).assign(technique="prune", split="test", n_items=limit))
    rows = pd.DataFrame(prune_claims.claim_rows(store))
    holds = rows[rows.claim.str.contains("holds")].set_index("model")["verdict"]
    assert set(holds.index) == {"m (limit=40, seed=0, runtime=float32/cpu, runtime_id=x)",
                                "m (limit=100, seed=0, runtime=float32/cpu, runtime_id=x)"}
    assert holds.iloc[0] != holds.iloc[1]  # 0.69 holds within [0.66, 0.74]; 0.30 does not
