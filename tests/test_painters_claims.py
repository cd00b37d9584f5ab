"""Painters decoder claims on constructed per-item 0/1 vectors: paired tests, union rules, rows."""

import numpy as np
import pandas as pd
import pytest

from layerlab.core.evidence import stats, verdicts
from layerlab.painters import claims as pc, paired, rows as painters_rows

BENCH = {"arc_easy": 0.25, "hellaswag": 0.25}
BASE = ("base", 0, 1, 0)
AGREES, DISAGREES, INCONCLUSIVE = verdicts.AGREES, verdicts.DISAGREES, verdicts.INCONCLUSIVE


def items(accs: dict, n: int = 300, seed: int = 0, benches=BENCH) -> pd.DataFrame:
    """Per-item rows: accs maps (variant, affected, loops, order_seed) -> accuracy (the same on
    every benchmark), each variant's correct items drawn independently."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds in benches:
        for (v, a, k, s), p in accs.items():
            correct = np.zeros(n)
            correct[rng.permutation(n)[:round(p * n)]] = 1.0
            rows.append(frame(ds, (v, a, k, s), correct))
    return pd.concat(rows, ignore_index=True)


def frame(ds: str, label: tuple, values) -> pd.DataFrame:
    v, a, k, s = label
    return pd.DataFrame({"dataset": ds, "item": np.arange(len(values)), "value": np.asarray(values, float),
                         "variant": v, "affected": a, "loops": k, "order_seed": s})


def counts(n11, n10, n01, n00):
    """(worse, better) 0/1 vectors with the given paired counts: n10 right only in ``worse``,
    n01 right only in ``better``."""
    worse = np.r_[np.ones(n11), np.ones(n10), np.zeros(n01), np.zeros(n00)]
    better = np.r_[np.ones(n11), np.zeros(n10), np.ones(n01), np.zeros(n00)]
    return worse, better


def word(row):
    return verdicts.word(row["verdict"])


# --- the paired statistics -------------------------------------------------------------------------

@pytest.mark.parametrize("n10,n01", [(0, 0), (3, 3), (0, 4), (2, 9), (17, 6), (0, 12), (40, 62)])
def test_mcnemar_p_agrees_with_the_tango_interval(n10, n01):
    worse, better = counts(30, n10, n01, 30)
    d, lo, hi, p, disc = paired.tango(better, worse)
    assert d == pytest.approx((n01 - n10) / len(worse)) and disc == pytest.approx((n01 + n10) / len(worse))
    assert (p < 0.05) == (lo > 0 or hi < 0)
    if n10 == n01:  # a tie admits both sides
        assert lo < 0 < hi and p == 1.0


def test_seeds_widen_the_two_level_interval():
    rng = np.random.default_rng(0)
    worse = (rng.random(400) < 0.4).astype(float)
    agree = np.vstack([(rng.random(400) < 0.6).astype(float) for _ in range(3)])
    # the same item-level accuracy on average, but seeds far apart (0.3, 0.6, 0.9)
    apart = np.vstack([(rng.random(400) < p).astype(float) for p in (0.3, 0.6, 0.9)])
    _, lo1, hi1, _, _ = paired.two_level(agree, worse[None])
    _, lo2, hi2, _, _ = paired.two_level(apart, worse[None])
    assert hi2 - lo2 > 2 * (hi1 - lo1)
    # the order seeds are sampled: the item-only t on seed-averaged values is narrower than the two-level
    d = apart.mean(0) - worse
    item_only = 2 * 1.97 * d.std(ddof=1) / np.sqrt(len(d))
    assert hi2 - lo2 > 2 * item_only


def test_pooling_equals_the_mean_of_the_benchmark_differences():
    t = items({BASE: 0.8, ("skip", 4, 1, 0): 0.5, ("reverse", 4, 1, 0): 0.6})
    t.loc[(t.dataset == "hellaswag") & (t.variant == "skip"), "value"] = 0.0
    s = pc.Scores(t)
    part = paired.compare(s, ("reverse", 4, 1), ("skip", 4, 1), list(BENCH), "x")
    by_bench = [t[(t.dataset == d) & (t.variant == "reverse")]["value"].mean()
                - t[(t.dataset == d) & (t.variant == "skip")]["value"].mean() for d in BENCH]
    assert part.diff == pytest.approx(np.mean(by_bench)) and part.n == 600


def test_excess_over_chance_is_wilson_on_one_benchmark_and_stratified_on_several():
    e, lo, hi, p, _ = paired.excess_over_chance([45], [100], [0.25])
    wlo, whi = stats.wilson_arrays(45, 100)
    assert (lo, hi) == (pytest.approx(float(wlo) - 0.25, abs=1e-6), pytest.approx(float(whi) - 0.25, abs=1e-6))
    assert e == pytest.approx(0.20) and p < 0.05
    # two benchmarks with their own chance: the excess is common, not the raw accuracy
    e, lo, hi, _, _ = paired.excess_over_chance([35, 60], [100, 100], [0.25, 0.5])
    assert e == pytest.approx(0.10) and lo < 0.10 < hi


def _part(diff, p):
    return paired.Part("x", diff, diff - 0.1, diff + 0.1, p, 100, 0.1, "s")


def test_union_rules():
    ok = [paired.Part("a", 0.2, 0.1, 0.3, 1e-4, 100, 0.1, "s")] * 3
    assert verdicts.word(paired.union(ok)) == AGREES
    assert verdicts.word(paired.union(ok + [_part(0.0, 1.0)])) == INCONCLUSIVE
    reversed_ = paired.Part("b", -0.2, -0.3, -0.1, 1e-4, 100, 0.1, "s")
    assert paired.union(ok + [reversed_]).startswith(f"{DISAGREES}: direction only (the paper states no number): b reversed")


# --- the orderings ---------------------------------------------------------------------------------

ALL = {BASE: 0.8, ("skip", 4, 1, 0): .3, ("middle_repeat", 4, 1, 0): .25, ("reverse", 4, 1, 0): .6,
       ("random", 4, 1, 0): .7, ("random", 4, 1, 1): .72, ("parallel", 4, 1, 0): .45, ("looped_parallel", 4, 3, 0): .75}


@pytest.mark.parametrize("change,n,expected", [
    ({}, 300, AGREES),
    ({("random", 4, 1, 0): .35, ("random", 4, 1, 1): .35}, 300, DISAGREES),   # random below reverse
    ({("random", 4, 1, 0): .62, ("random", 4, 1, 1): .62, ("skip", 4, 1, 0): .58}, 30, INCONCLUSIVE),
])
def test_order(change, n, expected):
    row = pc.order(pc.Scores(items(ALL | change, n=n)), "m", 4)
    assert word(row) == expected and "random − reverse" in row["interval"] and "two-level paired t" in row["statistic"]


@pytest.mark.parametrize("change,expected", [
    ({}, AGREES), ({("parallel", 4, 1, 0): .7}, DISAGREES), ({("parallel", 4, 1, 0): .2}, DISAGREES),
    ({("parallel", 4, 1, 0): .58}, INCONCLUSIVE)])
def test_parallel_between(change, expected):
    assert word(pc.parallel_between(pc.Scores(items(ALL | change)), "m", 4)) == expected


@pytest.mark.parametrize("lp,n,expected", [(0.7, 300, AGREES), (0.3, 300, DISAGREES), (0.47, 300, INCONCLUSIVE)])
def test_looped_parallel(lp, n, expected):
    t = items({BASE: 0.8, ("parallel", 4, 1, 0): .45, ("looped_parallel", 4, 3, 0): lp}, n=n)
    assert word(pc.looped_parallel(pc.Scores(t), "m", 4)) == expected


@pytest.mark.parametrize("mr,expected", [(0.1, AGREES), (0.75, DISAGREES), (0.28, INCONCLUSIVE)])
def test_middle_repeat_worst(mr, expected):
    row = pc.middle_repeat_worst(pc.Scores(items(ALL | {("middle_repeat", 4, 1, 0): mr})), "m", 4)
    assert word(row) == expected and "over 5 parts" in row["statistic"]


@pytest.mark.parametrize("change,expected", [
    ({}, AGREES), ({("reverse", 4, 1, 0): .79, ("random", 4, 1, 0): .5, ("random", 4, 1, 1): .5}, DISAGREES),
    ({("reverse", 4, 1, 0): .7}, INCONCLUSIVE)])
def test_least_degrading(change, expected):
    row = pc.least_degrading(pc.Scores(items(ALL | change)), "m", 4)
    assert word(row) == expected and "over 8 parts" in row["statistic"]


def test_holm_keeps_one_reversed_part_of_five_inconclusive():
    """Middle repeat beats skip at McNemar p = 0.029; the other four variants tie with middle
    repeat. Alone (one part) that reversal disagrees; as one of five parts Holm's 5 x p > 0.05."""
    skip, mr = counts(10, 6, 17, 67)          # mr right on 17 items skip misses, skip on 6
    p = paired.tango(skip, mr)[3]
    assert 0.01 < p < 0.05
    base = np.r_[np.ones(80), np.zeros(20)]
    vecs = {BASE: base, ("skip", 4, 1, 0): skip, ("middle_repeat", 4, 1, 0): mr}
    vecs |= {(v, 4, k, 0): mr for v, k in (("reverse", 1), ("random", 1), ("parallel", 1), ("looped_parallel", 3))}
    t = pd.concat([frame("arc_easy", lab, x) for lab, x in vecs.items()], ignore_index=True)
    row = pc.middle_repeat_worst(pc.Scores(t), "m", 4)
    assert word(row) == INCONCLUSIVE and "over 5 parts" in row["verdict"]
    only = t[t.variant.isin(["base", "skip", "middle_repeat"])]
    assert word(pc.middle_repeat_worst(pc.Scores(only), "m", 4)) == DISAGREES


def test_orderings_not_testable_or_not_run():
    at_chance = items({BASE: 0.26, ("random", 4, 1, 0): .3, ("reverse", 4, 1, 0): .3, ("skip", 4, 1, 0): .3})
    assert pc.order(pc.Scores(at_chance), "m", 4)["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: model at chance")
    missing = items({BASE: 0.8, ("random", 4, 1, 0): .7, ("skip", 4, 1, 0): .3})
    assert pc.order(pc.Scores(missing), "m", 4)["verdict"].startswith(f"{verdicts.NOT_RUN}: reverse at 4 layers")
    apart = pd.concat([items({BASE: 0.8, ("random", 4, 1, 0): .7}, benches={"arc_easy": .25}),
                       items({BASE: 0.8, ("reverse", 4, 1, 0): .6, ("skip", 4, 1, 0): .3}, benches={"hellaswag": .25})])
    assert verdicts.cause(pc.order(pc.Scores(apart), "m", 4)["verdict"]) == "no data"
    for f in (pc.parallel_between, pc.looped_parallel, pc.middle_repeat_worst, pc.least_degrading):
        assert verdicts.word(f(pc.Scores(at_chance), "m", 4)["verdict"]) in (verdicts.NOT_TESTABLE, verdicts.NOT_RUN)
        assert word(f(pc.Scores(items({BASE: 0.8})), "m", 4)) == verdicts.NOT_RUN


# --- skip, GSM8K, loops ------------------------------------------------------------------------------

@pytest.mark.parametrize("skip,n,expected", [(0.55, 300, AGREES), (0.0, 300, DISAGREES), (0.9, 300, DISAGREES),
                                             (0.3, 40, INCONCLUSIVE), (0.8, 300, INCONCLUSIVE)])
def test_not_all_needed(skip, n, expected):
    t = items({BASE: 0.8, ("skip", 4, 1, 0): skip}, n=n)
    row = pc.not_all_needed(pc.Scores(t), "m", 4)
    assert word(row) == expected, row
    assert "unmodified − skip" in row["interval"] and "skip − chance" in row["interval"]
    at_chance = items({BASE: 0.27, ("skip", 4, 1, 0): .25})
    assert verdicts.cause(pc.not_all_needed(pc.Scores(at_chance), "m", 4)["verdict"]) == "model at chance"


def gsm_items(gsm, base_gsm=0.4, n=300, n_gsm=None, others=0.6):
    n_gsm = n if n_gsm is None else n_gsm
    t = items({BASE: 0.8, ("parallel", 4, 1, 0): others}, n=n)
    g = [frame("gsm8k", BASE, np.arange(n_gsm) < base_gsm * n_gsm),
         frame("gsm8k", ("parallel", 4, 1, 0), np.arange(n_gsm) < gsm * n_gsm)]
    return pd.concat([t] + g, ignore_index=True)


def test_parallel_gsm8k_outcomes():
    run = lambda *a, **k: pc.parallel_gsm8k(pc.Scores(gsm_items(*a, **k)), "m", 4)  # noqa: E731
    assert word(run(0.02)) == AGREES           # keeps 5% on GSM8K, 64% of the excess elsewhere
    assert word(run(0.4)) == DISAGREES         # keeps all of GSM8K
    assert word(run(0.26, n=60)) == INCONCLUSIVE
    assert verdicts.cause(run(0.0, base_gsm=0.1, n=100)["verdict"]) == "model at chance"   # 10 of 100 solved
    assert verdicts.cause(run(0.0, n_gsm=3)["verdict"]) == "grid cannot falsify"            # 3 items: the floor needs 20
    assert word(pc.parallel_gsm8k(pc.Scores(items({BASE: .8, ("parallel", 4, 1, 0): .6})), "m", 4)) == verdicts.NOT_RUN
    assert run(0.02)["n"] == 900 and run(0.02)["n_needed"] is None


def loop_items(small, large, n=300, same=False):
    """Parallel at 2 and 6 layers with k = 1, 2, 3; the gain of k = 3 over k = 1 is ``small`` at
    2 layers and ``large`` at 6 (the looped runs correct a superset of parallel's items)."""
    rows = [frame(d, BASE, np.arange(n) < 0.8 * n) for d in BENCH]
    for d in BENCH:
        for a, g in ((2, small), (6, large)):
            one = np.arange(n) < 0.4 * n
            rows.append(frame(d, ("parallel", a, 1, 0), one))
            for k in (2, 3):
                rows.append(frame(d, ("looped_parallel", a, k, 0), np.arange(n) < (0.4 + g * (k - 1) / 2) * n))
    return pd.concat(rows, ignore_index=True)


def test_best_loops_grow_outcomes():
    assert word(pc.best_loops_grow(pc.Scores(loop_items(0.0, 0.3)), "m")) == AGREES
    assert word(pc.best_loops_grow(pc.Scores(loop_items(0.3, 0.0)), "m")) == DISAGREES
    assert word(pc.best_loops_grow(pc.Scores(loop_items(0.1, 0.1)), "m")) == INCONCLUSIVE   # no spread: no interval
    rng = np.random.default_rng(0)
    noisy = loop_items(0.1, 0.1, n=40)
    noisy["value"] = np.where(noisy.variant == "base", noisy["value"], (rng.random(len(noisy)) < 0.5).astype(float))
    assert word(pc.best_loops_grow(pc.Scores(noisy), "m")) == INCONCLUSIVE
    one_size = loop_items(0.0, 0.3)
    assert word(pc.best_loops_grow(pc.Scores(one_size[one_size.affected != 6]), "m")) == verdicts.NOT_RUN
    at_chance = loop_items(0.0, 0.3)
    at_chance.loc[at_chance.variant == "base", "value"] = 0.0
    assert verdicts.word(pc.best_loops_grow(pc.Scores(at_chance), "m")["verdict"]) == verdicts.NOT_TESTABLE


# --- rows --------------------------------------------------------------------------------------------

def test_model_rows_have_the_comparison_and_power_columns():
    rows = painters_rows.model_rows(items(ALL), "m", np.full(5, 0.9))
    assert rows and all(list(r) == pc.COLUMNS + pc.POWER_KEYS for r in rows)
    assert rows[0]["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: no data: an absolute cosine has no contrast")
    for r in rows:
        verdicts.word(r["verdict"])
        assert "bootstrap" not in r["verdict"] and "draws" not in r["verdict"]
    judged = [r for r in rows if verdicts.word(r["verdict"]) in (AGREES, DISAGREES, INCONCLUSIVE)]
    assert judged and all(r["n"] == 600 and r["statistic"] and r["mde"].endswith("pp") and r["n_needed"] is None
                          for r in judged)


def test_an_inconclusive_row_carries_its_mde():
    row = pc.looped_parallel(pc.Scores(items({BASE: .8, ("parallel", 4, 1, 0): .45,
                                              ("looped_parallel", 4, 3, 0): .47}, n=60)), "m", 4)
    assert word(row) == INCONCLUSIVE and "MDE (80% power)" in row["verdict"] and "n = 120" in row["verdict"]


def test_claim_rows_read_the_store(tmp_path):
    from layerlab.painters import grid as painters
    from layerlab.core.io import results
    store = results.ResultStore(tmp_path)
    t = items({BASE: 0.8, ("skip", 4, 1, 0): .4, ("random", 4, 1, 0): .6, ("reverse", 4, 1, 0): .5})
    for i, (label, part) in enumerate(t.groupby(["dataset", "variant"])):
        store.put(painters.ITEMS, f"k{i}", part.assign(model="m", technique=painters.ITEMS, split="test",
                                                         metric="acc", n_items=len(part)))
    store.put(pc.SIMILARITY, "s", pd.DataFrame({"model": "m", "technique": pc.SIMILARITY, "dataset": "wikitext2",
                                                "split": "test", "metric": "c", "value": [0.8, 0.9], "n_items": 1}))
    rows = pd.DataFrame(painters_rows.claim_rows(store))
    assert list(rows.columns) == pc.COLUMNS + pc.POWER_KEYS + ["counted"] and set(rows["model"]) == {"m"}
    assert rows[rows.claim == pc.PAINTERS_CLAIMS["order"]]["verdict"].iloc[0].startswith(AGREES)
    assert rows[rows.claim == pc.PAINTERS_CLAIMS["looped_parallel"]]["verdict"].iloc[0] == \
        f"{verdicts.NOT_RUN}: looped_parallel k=3, parallel at 4 layers (not in this profile's grid)"
    assert rows[rows.claim == pc.PAINTERS_CLAIMS["ends_needed"]]["verdict"].iloc[0].startswith(verdicts.NOT_RUN)


def test_sublayer_variants_are_shown_but_not_judged_by_the_papers_claims():
    plain = pd.DataFrame(painters_rows.model_rows(items(ALL), "m"))
    # an MLP-only middle scoring far below middle repeat would flip "middle repeat is the worst"
    sub = items({("attn_only", 4, 1, 0): .05, ("mlp_only", 4, 1, 0): .79}, seed=1)
    mixed = pd.DataFrame(painters_rows.model_rows(pd.concat([items(ALL), sub], ignore_index=True), "m"))
    pd.testing.assert_frame_equal(plain, mixed)


def test_the_margins_are_shown_beside_accuracy_and_never_change_a_verdict():
    plain = items(ALL)
    rng = np.random.default_rng(1)
    # margins that agree with the 0/1 scores (> 0 where right), or that point the other way
    with_margins = plain.assign(margin=np.where(plain.value == 1, 1.0, -1.0) + rng.normal(0, 0.1, len(plain)))
    flipped = plain.assign(margin=-with_margins.margin)
    rows = {name: pc.parallel_between(pc.Scores(t), "m", 4) for name, t in
            (("plain", plain), ("margins", with_margins), ("flipped", flipped))}
    assert rows["plain"]["secondary"] == ""
    assert rows["margins"]["verdict"] == rows["plain"]["verdict"] == rows["flipped"]["verdict"]
    assert "gold choice's margin: Δ +" in rows["margins"]["secondary"] and "not judged" in rows["margins"]["secondary"]
    assert "gold choice's margin: Δ -" in rows["flipped"]["secondary"]
