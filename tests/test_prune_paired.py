"""Gromov claims on constructed per-item frames (table prune_items): paired differences,
margins, Holm, the recovered share's Fieller interval (the curve claims: test_prune_collapse)."""

import numpy as np
import pandas as pd
import pytest

from layerlab.prune import paired as pp
from layerlab.core.evidence import verdicts
from prune_frames import L, acc_items


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
    assert verdicts.word(tie["verdict"]) == verdicts.INCONCLUSIVE and "MDE" in tie["verdict"]
    assert pp.similarity_vs_heuristic(loss_items(base)) is None


def test_similarity_vs_heuristic_on_qa_accuracy():
    sim = acc_items({0: 0.8, 2: 0.75, 4: 0.6})
    deep = acc_items({2: 0.55, 4: 0.4}, method="deepest", base=False)
    r = pp.similarity_vs_heuristic(pd.concat([sim, deep]), "mmlu", "acc")
    assert r["verdict"] == verdicts.AGREES
    r = pp.similarity_vs_heuristic(pd.concat([acc_items({0: 0.8, 2: 0.5}),
                                              acc_items({2: 0.7}, method="deepest", base=False)]), "mmlu", "acc")
    assert r["verdict"] == verdicts.DISAGREES


@pytest.mark.parametrize("healed, verdict, says", [
    (0.45, verdicts.AGREES, "75%"),            # three quarters recovered
    (0.554, verdicts.DISAGREES, "smaller"),    # 23% recovered: lowers the loss, yet short of a third
    (0.70, verdicts.DISAGREES, "opposite"),    # healing raised the loss
])
def test_healing_repairs_is_the_recovered_share_against_the_papers(healed, verdict, says):
    items = loss_items({("similarity", 0, False): 0.40, ("similarity", 5, False): 0.60,
                        ("similarity", 5, True): healed})
    r = pp.healing_repairs(items)
    assert verdicts.word(r["verdict"]) == verdict, r
    assert says in r["verdict"] + r["ours"] and r["n"] == 8 and "Fieller" in r["statistic"]


def test_healing_repairs_inconclusive_when_pruning_barely_raised_the_loss():
    items = loss_items({("similarity", 0, False): 0.40, ("similarity", 5, False): 0.40,
                        ("similarity", 5, True): 0.40}, seed=1)  # seed 0's noise happens to raise it
    r = pp.healing_repairs(items)
    assert verdicts.word(r["verdict"]) == verdicts.INCONCLUSIVE and "did not raise the loss" in r["verdict"]


def test_fieller_is_the_set_of_ratios_the_t_test_keeps():
    from scipy.stats import t as t_dist

    rng = np.random.default_rng(3)
    c = 1.0 + rng.normal(0, 0.5, 30)
    a = 0.4 * c + rng.normal(0, 0.3, 30)
    r, lo, hi = pp.fieller(a, c)
    grid = np.linspace(-1, 2, 30001)
    d = a[None] - grid[:, None] * c[None]
    tstat = np.abs(d.mean(1)) / (d.std(1, ddof=1) / np.sqrt(30))
    kept = grid[tstat <= t_dist.ppf(0.975, 29)]
    assert r == pytest.approx(a.mean() / c.mean())
    assert lo == pytest.approx(kept.min(), abs=2e-4) and hi == pytest.approx(kept.max(), abs=2e-4)
    assert pp.fieller(a, rng.normal(0, 1, 30) * 0.01)[1] == -np.inf  # a denominator that is not there


@pytest.mark.parametrize("deep_healed, verdict", [(0.45, verdicts.AGREES), (0.50, verdicts.DISAGREES),
                                                  (0.4698, verdicts.INCONCLUSIVE)])
def test_healed_heuristic_on_paired_chunks(deep_healed, verdict):
    items = loss_items({("similarity", 0, False): 0.40, ("deepest", 5, False): 0.60,
                        ("similarity", 5, True): 0.45, ("deepest", 5, True): deep_healed})
    r = pp.healed_heuristic(items)
    assert verdicts.word(r["verdict"]) == verdict, r


def test_similarity_vs_heuristic_shows_the_margin_beside_accuracy():
    frame = pd.concat([acc_items({0: 0.8, 2: 0.75, 4: 0.6}),
                       acc_items({2: 0.55, 4: 0.4}, method="deepest", base=False)], ignore_index=True)
    frame = frame.assign(margin=np.where(frame.value == 1, 1.0, -1.0))  # agrees with the 0/1 scores
    r = pp.similarity_vs_heuristic(frame, "mmlu", "acc")
    assert r["verdict"] == pp.similarity_vs_heuristic(frame.drop(columns="margin"), "mmlu", "acc")["verdict"]
    assert r["secondary"].startswith("n=4: gold choice's margin, similarity − heuristic: Δ +0.400 nats")
