import numpy as np
import pandas as pd
import pytest

from layerlab.painters import claims as pc, rows as painters_rows
from layerlab.core.evidence import verdicts

BENCH = {"arc_easy": 0.25, "hellaswag": 0.25, "winogrande": 0.5}


def items(accs: dict, n: int = 300, seed: int = 0, benches=BENCH) -> pd.DataFrame:
    """Per-item rows: accs maps (variant, affected, loops, order_seed) -> accuracy, the same on
    every benchmark (the base under ("base", 0, 1, 0))."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds in benches:
        for (v, a, k, s), p in accs.items():
            correct = np.zeros(n)
            correct[rng.permutation(n)[:round(p * n)]] = 1.0
            rows += [{"dataset": ds, "item": i, "value": c, "variant": v, "affected": a, "loops": k, "order_seed": s}
                     for i, c in enumerate(correct)]
    return pd.DataFrame(rows)


def test_median_and_interval_match_an_independent_computation():
    acc = {("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): 0.5, ("random", 4, 1, 0): 0.6, ("random", 4, 1, 1): 0.7}
    t = items(acc, n=120, benches={"arc_easy": .25, "hellaswag": .25, "winogrande": .5})
    t.loc[(t.dataset == "winogrande") & (t.variant == "skip"), "value"] = 0.0  # differ per benchmark
    boot = pc.Bootstrap(t, n_boot=3000, seed=1)
    for label in (("skip", 4, 1), ("random", 4, 1)):
        point, draws = boot.median(label, list(BENCH))
        by_hand = []
        for ds, c in BENCH.items():
            b = t[(t.dataset == ds) & (t.variant == "base")]["value"].mean()
            v = t[(t.dataset == ds) & (t.variant == label[0])]["value"].mean()  # seeds pooled
            by_hand.append((v - c) / (b - c))
        assert point == pytest.approx(np.median(by_hand))
        # a plain loop: resample items per benchmark (shared by base and variant) and seeds
        rng = np.random.default_rng(7)
        arr = {}
        for ds in BENCH:
            base = t[(t.dataset == ds) & (t.variant == "base")].sort_values("item")["value"].to_numpy()
            part = t[(t.dataset == ds) & (t.variant == label[0])]
            arr[ds] = (base, [part[part.order_seed == s].sort_values("item")["value"].to_numpy()
                              for s in sorted(part.order_seed.unique())])
        ref = []
        for _ in range(3000):
            meds = []
            for ds, c in BENCH.items():
                idx = rng.integers(0, 120, 120)
                base, per_seed = arr[ds]
                drawn = rng.integers(0, len(per_seed), len(per_seed))
                v = np.mean([per_seed[s][idx].mean() for s in drawn])
                meds.append((v - c) / (base[idx].mean() - c))
            ref.append(np.median(meds))
        lo, hi = pc.interval(draws)
        rlo, rhi = np.quantile(ref, [0.025, 0.975])
        assert lo == pytest.approx(rlo, abs=0.04) and hi == pytest.approx(rhi, abs=0.04)
        assert lo < point < hi


def test_random_order_seeds_are_a_resampling_level_not_averaged_intervals():
    one = items({("base", 0, 1, 0): 0.8, ("random", 4, 1, 0): 0.6})
    two = items({("base", 0, 1, 0): 0.8, ("random", 4, 1, 0): 0.3, ("random", 4, 1, 1): 0.9})
    w1 = np.diff(pc.interval(pc.Bootstrap(one, 1000).median(("random", 4, 1), list(BENCH))[1]))[0]
    w2 = np.diff(pc.interval(pc.Bootstrap(two, 1000).median(("random", 4, 1), list(BENCH))[1]))[0]
    assert w2 > 2 * w1  # seeds that disagree widen the interval


@pytest.mark.parametrize("accs,expected", [
    ((0.7, 0.5, 0.3), verdicts.AGREES),
    ((0.3, 0.5, 0.7), verdicts.DISAGREES),
    ((0.52, 0.50, 0.3), verdicts.INCONCLUSIVE),
])
def test_order_verdicts(accs, expected):
    r, v, s = accs
    t = items({("base", 0, 1, 0): 0.8, ("random", 4, 1, 0): r, ("reverse", 4, 1, 0): v, ("skip", 4, 1, 0): s},
              n=60 if expected == verdicts.INCONCLUSIVE else 300)
    row = pc.order(pc.Bootstrap(t, 1000), "m", 4)
    assert row["verdict"] == expected and row["paper"] == "Painters" and "random − reverse" in row["interval"]


def test_order_not_testable_at_chance_or_when_a_variant_was_not_run():
    t = items({("base", 0, 1, 0): 0.26, ("random", 4, 1, 0): .3, ("reverse", 4, 1, 0): .3, ("skip", 4, 1, 0): .3},
              benches={"arc_easy": .25, "hellaswag": .25})
    assert pc.order(pc.Bootstrap(t, 200), "m", 4)["verdict"].startswith(verdicts.NOT_TESTABLE + ": the unmodified model is at chance")
    t = items({("base", 0, 1, 0): 0.8, ("random", 4, 1, 0): .7, ("skip", 4, 1, 0): .3})
    assert pc.order(pc.Bootstrap(t, 200), "m", 4)["verdict"] == f"{verdicts.NOT_TESTABLE}: reverse not run"


@pytest.mark.parametrize("mr,expected", [(0.3, verdicts.AGREES), (0.75, verdicts.DISAGREES), (0.51, verdicts.INCONCLUSIVE)])
def test_middle_repeat_worst(mr, expected):
    t = items({("base", 0, 1, 0): 0.8, ("middle_repeat", 4, 1, 0): mr, ("skip", 4, 1, 0): .5, ("reverse", 4, 1, 0): .6},
              n=60 if expected == verdicts.INCONCLUSIVE else 300)
    assert pc.middle_repeat_worst(pc.Bootstrap(t, 1000), "m", 4)["verdict"] == expected


@pytest.mark.parametrize("lp,expected", [(0.7, verdicts.AGREES), (0.3, verdicts.DISAGREES), (0.51, verdicts.INCONCLUSIVE)])
def test_looped_parallel(lp, expected):
    t = items({("base", 0, 1, 0): 0.8, ("parallel", 4, 1, 0): .5, ("looped_parallel", 4, 3, 0): lp},
              n=60 if expected == verdicts.INCONCLUSIVE else 300)
    assert pc.looped_parallel(pc.Bootstrap(t, 1000), "m", 4)["verdict"] == expected
    t = t[t.variant != "looped_parallel"]
    assert pc.looped_parallel(pc.Bootstrap(t, 100), "m", 4)["verdict"].startswith(verdicts.NOT_TESTABLE)


@pytest.mark.parametrize("skip,expected", [(0.55, verdicts.AGREES), (0.26, verdicts.DISAGREES),
                                           (0.97, verdicts.DISAGREES), (0.3, verdicts.INCONCLUSIVE)])
def test_not_all_needed(skip, expected):
    t = items({("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): skip}, benches={"arc_easy": .25, "hellaswag": .25, "boolq": .5},
              n=40 if expected == verdicts.INCONCLUSIVE else 400)
    if skip == 0.26:  # below chance everywhere: the interval lies at or below 0
        t.loc[t.variant == "skip", "value"] = 0.0
    assert pc.not_all_needed(pc.Bootstrap(t, 1000), "m", 4)["verdict"] == expected


def test_parallel_gsm8k_outcomes():
    benches = {"arc_easy": .25, "hellaswag": .25, "gsm8k": 0.0}
    def run(gsm, base_gsm=0.4, n=300):
        t = items({("base", 0, 1, 0): 0.8, ("parallel", 4, 1, 0): 0.6}, n=n, benches=benches)
        t.loc[(t.dataset == "gsm8k") & (t.variant == "base"), "value"] = (np.arange(n) < base_gsm * n).astype(float)
        t.loc[(t.dataset == "gsm8k") & (t.variant == "parallel"), "value"] = (np.arange(n) < gsm * n).astype(float)
        return pc.parallel_gsm8k(pc.Bootstrap(t, 1000), "m", 4)["verdict"]
    assert run(0.02) == verdicts.AGREES          # normalised 0.05 vs 0.64 elsewhere
    assert run(0.4) == verdicts.DISAGREES        # normalised 1.0 on GSM8K
    assert run(0.26, n=60) == verdicts.INCONCLUSIVE
    assert run(0.0, base_gsm=0.0).startswith(verdicts.NOT_TESTABLE + ": the unmodified model is at chance on GSM8K")
    # the review's case: 2 of 100 solved unmodified was "agrees"; below the floor of 20 correct
    assert run(0.0, base_gsm=0.02, n=100).startswith(verdicts.NOT_TESTABLE)


def test_undefined_bootstrap_draws_are_counted():
    assert pc.undefined(np.r_[np.zeros(990), np.full(10, np.nan)]) is None
    assert pc.undefined(np.r_[np.zeros(980), np.full(20, np.nan)]).startswith(
        f"{verdicts.NOT_TESTABLE}: 2.0% of bootstrap draws undefined")


def test_arc_counts_once_and_gsm8k_enters_the_median():
    benches = {"arc_easy": .25, "arc_challenge": .25, "hellaswag": .25, "gsm8k": 0.0}
    t = items({("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): 0.5}, benches=benches)
    t.loc[(t.variant == "skip") & t.dataset.str.startswith("arc"), "value"] = 0.0
    boot = pc.Bootstrap(t, 200)
    assert boot.benchmarks([("skip", 4, 1)]) == ["arc_challenge", "arc_easy", "gsm8k", "hellaswag"]
    point, _ = boot.median(("skip", 4, 1), boot.benchmarks([("skip", 4, 1)]))
    # families: arc (-1/3), gsm8k (0.625), hellaswag (0.455): the median is hellaswag's, not arc's twice
    assert point == pytest.approx((0.5 - 0.25) / (0.8 - 0.25))


def test_orderings_of_all_variants():
    acc = {("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): .3, ("middle_repeat", 4, 1, 0): .25, ("reverse", 4, 1, 0): .6,
           ("random", 4, 1, 0): .7, ("parallel", 4, 1, 0): .45, ("looped_parallel", 4, 3, 0): .72}
    boot = pc.Bootstrap(items(acc), 500)
    assert pc.parallel_between(boot, "m", 4)["verdict"] == verdicts.AGREES
    assert pc.least_degrading(boot, "m", 4)["verdict"] == verdicts.AGREES
    assert "Holm-adjusted" in pc.least_degrading(boot, "m", 4)["interval"]
    worse = pc.Bootstrap(items(acc | {("parallel", 4, 1, 0): .78}), 500)
    assert pc.parallel_between(worse, "m", 4)["verdict"] == verdicts.DISAGREES
    assert pc.least_degrading(pc.Bootstrap(items(acc | {("reverse", 4, 1, 0): .79, ("random", 4, 1, 0): .5}), 500),
                              "m", 4)["verdict"] == \
        verdicts.DISAGREES


def test_best_loops_grow_outcomes():
    def run(small, large, n=300):
        acc = {("base", 0, 1, 0): 0.8}
        for a, best in ((2, small), (6, large)):
            for k in (1, 2, 3):
                acc[("parallel" if k == 1 else "looped_parallel", a, k, 0)] = 0.7 if k == best else 0.4
        return pc.best_loops_grow(pc.Bootstrap(items(acc, n=n), 500), "m")["verdict"]
    assert run(1, 3) == verdicts.AGREES
    assert run(3, 1) == verdicts.DISAGREES
    t = items({("base", 0, 1, 0): 0.8, ("parallel", 2, 1, 0): 0.5, ("looped_parallel", 2, 2, 0): 0.5})
    assert pc.best_loops_grow(pc.Bootstrap(t, 100), "m")["verdict"].startswith(verdicts.NOT_TESTABLE)


def test_best_loops_grow_inconclusive_with_ties():
    acc = {("base", 0, 1, 0): 0.8}
    for a in (2, 6):
        for k in (1, 2, 3):
            acc[("parallel" if k == 1 else "looped_parallel", a, k, 0)] = 0.5
    assert pc.best_loops_grow(pc.Bootstrap(items(acc, n=40), 500), "m")["verdict"] == verdicts.INCONCLUSIVE


def test_model_rows_have_the_comparison_columns():
    acc = {("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): .5, ("middle_repeat", 4, 1, 0): .3, ("reverse", 4, 1, 0): .55,
           ("random", 4, 1, 0): .6, ("parallel", 4, 1, 0): .5, ("looped_parallel", 4, 3, 0): .6}
    rows = painters_rows.model_rows(items(acc), "m", np.full(5, 0.9), n_boot=200)
    assert rows and all(list(r) == pc.COLUMNS for r in rows)
    assert rows[0]["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: an absolute cosine has no contrast")
    assert {r["verdict"].split(":")[0] for r in rows} <= set(verdicts.VERDICTS)


def test_claim_rows_read_the_store(tmp_path):
    from layerlab.painters import grid as painters
    from layerlab.core.io import results
    store = results.ResultStore(tmp_path)
    t = items({("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): .4, ("random", 4, 1, 0): .6, ("reverse", 4, 1, 0): .5})
    for i, (label, part) in enumerate(t.groupby(["dataset", "variant"])):
        store.put(painters.ITEMS, f"k{i}", part.assign(model="m", technique=painters.ITEMS, split="test",
                                                         metric="acc", n_items=len(part)))
    store.put(pc.SIMILARITY, "s", pd.DataFrame({"model": "m", "technique": pc.SIMILARITY, "dataset": "wikitext2",
                                                "split": "test", "metric": "c", "value": [0.8, 0.9], "n_items": 1}))
    rows = pd.DataFrame(painters_rows.claim_rows(store))
    assert list(rows.columns) == pc.COLUMNS + ["counted"] and set(rows["model"]) == {"m"}
    order = rows[rows.claim == pc.PAINTERS_CLAIMS["order"]]
    assert order["verdict"].iloc[0] == verdicts.AGREES
    assert rows[rows.claim == pc.PAINTERS_CLAIMS["looped_parallel"]]["verdict"].iloc[0] == f"{verdicts.NOT_TESTABLE}: looped_parallel k=3, parallel not run"


def test_sublayer_variants_are_shown_but_not_judged_by_the_papers_claims():
    acc = {("base", 0, 1, 0): 0.8, ("skip", 4, 1, 0): .5, ("middle_repeat", 4, 1, 0): .3, ("reverse", 4, 1, 0): .55,
           ("random", 4, 1, 0): .6, ("parallel", 4, 1, 0): .5, ("looped_parallel", 4, 3, 0): .6}
    plain = pd.DataFrame(painters_rows.model_rows(items(acc), "m", n_boot=200, seed=3))
    # an MLP-only middle scoring far below middle repeat would flip "middle repeat is the worst"
    sub = items({("attn_only", 4, 1, 0): .05, ("mlp_only", 4, 1, 0): .79}, seed=1)
    extra = pd.concat([items(acc), sub], ignore_index=True)
    mixed = pd.DataFrame(painters_rows.model_rows(extra, "m", n_boot=200, seed=3))
    pd.testing.assert_frame_equal(plain, mixed)
