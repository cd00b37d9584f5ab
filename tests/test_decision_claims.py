"""The Sokoban claim rows on constructed protocol and per-level rows (no agent is trained)."""

import numpy as np
import pandas as pd
import pytest

from layerlab.book import compare
from layerlab.laser.sokoban import chapter as decision, claims as decision_claims
from layerlab.core.io import results
from layerlab.core.evidence import verdicts


def put_seed(store, seed, base_solved, laser_solved, base_return=None, laser_return=None, best="mlp_in@1:0.1",
             n=80, config="cfg"):
    """One seed's protocol row and per-level rows: the first ``k`` levels solved."""
    rows = {}
    for name, k, ret in (("base", base_solved, base_return), ("laser", laser_solved, laser_return)):
        solved = (np.arange(n) < k).astype(float)
        r = solved * 1.0 if ret is None else np.asarray(ret, float)
        key = f"{name}-{seed}-{config}-{best}"
        store.put(decision.ITEMS, key, pd.DataFrame({"level": np.arange(n), "solved": solved, "return": r}).assign(
            model="dt", technique=decision.ITEMS, metric="solved", value=solved, n_items=1, dataset="sokoban", split="test"))
        rows[name] = (key, solved, r)
    store.put(decision.PROTOCOL, f"p{seed}{config}{best}", [{
        "model": "dt", "technique": decision.PROTOCOL, "dataset": "sokoban", "split": "test", "metric": "solved_change",
        "value": 0.0, "n_items": n, "ci_low": 0.0, "ci_high": 0.0, "seed": seed, "profile": "t", "best": best,
        "base_solved": rows["base"][1].mean(), "laser_solved": rows["laser"][1].mean(), "mcnemar_p": 1.0,
        "n_val": 20, "base_key": rows["base"][0], "laser_key": rows["laser"][0], "config": config,
        "device": "cpu", "dtype": "float32"}])


def by_claim(rows, claim):
    return [r for r in rows if r["claim"] == claim]


@pytest.mark.parametrize("base, laser, n, verdict", [(40, 60, 80, verdicts.AGREES), (40, 44, 80, verdicts.INCONCLUSIVE),
                                                     (40, 20, 80, verdicts.DISAGREES),
                                                     (1000, 1000, 2000, verdicts.DISAGREES)])
def test_each_seed_is_judged_against_the_papers_effect(tmp_path, base, laser, n, verdict):
    """A score interval of the paired change against Table 2's +2.33 pp (a third of it as the
    smallest effect of interest): a null result on 2000 levels excludes it and disagrees."""
    store = results.ResultStore(tmp_path)
    put_seed(store, 0, base, laser, n=n)
    (row,) = by_claim(decision_claims.claim_rows(store), decision_claims.CLAIM)
    assert verdicts.word(row["verdict"]) == verdict and "score interval" in row["interval"] and row["counted"]
    assert row["n"] == n and row["statistic"].startswith("paired Tango") and row["mde"].endswith(" pp")
    assert row["n_needed"] > n if verdict == verdicts.INCONCLUSIVE else True
    if verdict == verdicts.INCONCLUSIVE:
        assert "MDE (80% power)" in row["verdict"] and "items would detect 0.777 pp" in row["verdict"]
    if n == 2000:
        assert "smaller than the paper's" in row["verdict"]


def test_validation_choosing_nothing_is_not_testable(tmp_path):
    store = results.ResultStore(tmp_path)
    put_seed(store, 0, 40, 40, best="")
    (row,) = by_claim(decision_claims.claim_rows(store), decision_claims.CLAIM)
    assert row["verdict"] == (f"{verdicts.NOT_TESTABLE}: grid cannot falsify: "
                              "no reduction beats the unmodified agent on validation")


def test_pooled_seeds_are_one_claim(tmp_path):
    store = results.ResultStore(tmp_path)
    for seed in range(3):
        put_seed(store, seed, 40, 60)
    put_seed(store, 0, 40, 20, config="other")  # another agent config: its own claim
    rows = decision_claims.claim_rows(store, n_boot=500)
    claims = by_claim(rows, decision_claims.CLAIM)
    pooled = [r for r in claims if "pooled" in r["model"]]
    assert len(claims) == 5 and len(pooled) == 1 and pooled[0]["verdict"] == verdicts.AGREES
    assert "seeds, then levels" in pooled[0]["interval"]
    assert sum(r["counted"] for r in claims) == 2
    table = pd.DataFrame(rows)
    counts = compare.verdict_counts(table)
    assert counts.loc["LASER", "total"] == 2  # solved and return, for model dt: claims, not rows or configs
    words = compare.claim_words(table).set_index("claim")["word"]
    assert words[decision_claims.CLAIM] == verdicts.INCONCLUSIVE  # the configs' counted rows disagree


def test_hierarchical_draws_resample_seeds_then_levels():
    same = [np.r_[np.ones(10), np.zeros(10)]] * 3
    draws = decision_claims.hierarchical_draws(same, 400)
    assert draws.shape == (400,) and 0.3 < draws.mean() < 0.7
    apart = [np.zeros(50), np.ones(50)]  # seeds disagree: the seed level dominates the spread
    assert np.quantile(decision_claims.hierarchical_draws(apart, 400), [0.025, 0.975]).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("laser_ret, verdict", [(1.0, verdicts.AGREES), (-1.0, verdicts.DISAGREES),
                                                (None, verdicts.INCONCLUSIVE)])
def test_return_moves_with_the_solved_rate(tmp_path, laser_ret, verdict):
    store = results.ResultStore(tmp_path)
    rng = np.random.default_rng(0)
    base_ret = rng.normal(0, 1, 80)
    shift = rng.normal(0, 0.01, 80) if laser_ret is None else laser_ret + rng.normal(0, 0.1, 80)
    put_seed(store, 0, 40, 60, base_return=base_ret, laser_return=base_ret + shift)
    (row,) = by_claim(decision_claims.claim_rows(store), decision_claims.RETURN_CLAIM)
    assert row["verdict"] == verdict
    store2 = results.ResultStore(tmp_path / "flat")
    put_seed(store2, 0, 40, 41)
    (row,) = by_claim(decision_claims.claim_rows(store2), decision_claims.RETURN_CLAIM)
    assert row["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: grid cannot falsify: the solved rate does not move")
