"""The Painters claims, each judged by one function on bootstrap intervals over items.

Summary statistic (paper): per benchmark, normalised = (acc - chance) / (unmodified acc -
chance); a variant's score is the median across benchmarks. Intervals: percentile
bootstrap that resamples ITEMS within each benchmark (the same resample for every variant
and the unmodified model, so differences of medians are paired), recomputing accuracies,
normalised scores and medians each draw.

Random order (several order seeds): seed is a second resampling level. Each draw resamples
the seeds with replacement as well as the items, and the random variant's accuracy is the
mean over the drawn seeds of their accuracies on the drawn items (the seeds' per-item
scores are pooled, each seed being another draw of the order). Per-seed intervals are
never averaged.

An ordering is stated only where the interval of the paired difference excludes 0
(``verdicts.above``); otherwise inconclusive. Not testable (with the reason) when a
benchmark set is at chance unmodified, or a variant was not run. Medians leave GSM8K out
(it runs for few variants); the GSM8K claim uses it alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import evaluation, verdicts
from .papers import PAINTERS, PAINTERS_CLAIMS

COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]
N_BOOT = 2000
SHARED = 0.5       # "share a representation space": mean cosine between different middle layers above this
LOOPS_CLAIMED = 3  # Fig. 10: looped parallel with 3 iterations
BASE = ("base", 0, 1)


class Bootstrap:
    """Paired bootstrap draws of normalised scores from one model's per-item rows
    (``painters.ITEMS``: dataset, item, value, variant, affected, loops, order_seed).

    Labels are (variant, affected, loops); the unmodified model is ("base", 0, 1)."""

    def __init__(self, items: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0):
        self.n_boot, self.rng = n_boot, np.random.default_rng(seed)
        self.mats: dict[str, dict[tuple, np.ndarray]] = {}   # dataset -> label -> [seeds, items]
        self.counts: dict[str, np.ndarray] = {}
        self._norm: dict[tuple, tuple[float, np.ndarray]] = {}
        items = items.assign(loops=items["loops"].astype(int), affected=items["affected"].astype(int))
        for ds, part in items.groupby("dataset"):
            base = part[part.variant == "base"]
            if not len(base):
                continue
            ids = np.sort(base["item"].unique())
            mats = {}
            for label, g in part.groupby(["variant", "affected", "loops"]):
                m = g.pivot_table(index="order_seed", columns="item", values="value", aggfunc="mean")
                if set(ids) <= set(m.columns):
                    mats[tuple(label)] = m[ids].to_numpy(float)
            n = len(ids)
            self.mats[ds] = mats
            self.counts[ds] = self.rng.multinomial(n, np.full(n, 1 / n), size=n_boot)

    def informative(self, ds: str) -> bool:
        """The unmodified model is above chance on ``ds`` (Wilson 95% lower bound)."""
        m = self.mats[ds][BASE]
        return evaluation.wilson_interval(m.mean() * m.shape[1], m.shape[1])[0] > evaluation.CHANCE[ds]

    def has(self, ds: str, label: tuple) -> bool:
        return ds in self.mats and label in self.mats[ds]

    def normalised(self, ds: str, label: tuple) -> tuple[float, np.ndarray]:
        """(point, [n_boot] draws) of the normalised score of ``label`` on ``ds``."""
        if (ds, label) not in self._norm:
            chance = evaluation.CHANCE[ds]
            acc = {}
            for lab in (BASE, label):
                m = self.mats[ds][lab]                              # [S, n]
                per_seed = self.counts[ds] @ m.T / m.shape[1]       # [n_boot, S]
                pick = self.rng.integers(0, m.shape[0], size=(self.n_boot, m.shape[0]))
                acc[lab] = (m.mean(), np.take_along_axis(per_seed, pick, 1).mean(1))
            (bp, bd), (vp, vd) = acc[BASE], acc[label]
            with np.errstate(divide="ignore", invalid="ignore"):
                draws = np.where(bd - chance > 0, (vd - chance) / (bd - chance), np.nan)
            self._norm[(ds, label)] = ((vp - chance) / (bp - chance), draws)
        return self._norm[(ds, label)]

    def median(self, label: tuple, benchmarks: list[str]) -> tuple[float, np.ndarray]:
        """(point, draws) of the median normalised score across ``benchmarks``."""
        pts, draws = zip(*(self.normalised(ds, label) for ds in benchmarks))
        return float(np.median(pts)), np.median(np.vstack(draws), axis=0)

    def benchmarks(self, labels: list[tuple], exclude=("gsm8k",)) -> list[str]:
        """Informative benchmarks (not in ``exclude``) on which every label was run."""
        return [d for d in sorted(self.mats) if d not in exclude and self.informative(d)
                and all(self.has(d, lab) for lab in labels)]


def interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (draws that are NaN, where a resampled
    unmodified model fell to chance, are left out)."""
    d = draws[~np.isnan(draws)]
    if not len(d):
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def _name(label: tuple) -> str:
    return f"looped_parallel k={label[2]}" if label[0] == "looped_parallel" else label[0]


def _label(variant: str, a: int) -> tuple:
    return (variant, a, LOOPS_CLAIMED if variant == "looped_parallel" else 1)


def _row(key: str, model: str, ours: str, interval_txt: str, verdict: str) -> dict:
    return {"paper": PAINTERS, "claim": PAINTERS_CLAIMS[key], "paper's number": PAINTERS_CLAIMS[key].rsplit("(", 1)[-1].rstrip(")"),
            "model": model, "ours": ours, "interval": interval_txt, "verdict": verdict}


def _untestable(boot: Bootstrap, labels: list[tuple]) -> str | None:
    """The reason a comparison of ``labels`` cannot be tested, or None."""
    if not any(boot.informative(d) for d in boot.mats if d != "gsm8k"):
        return f"{verdicts.NOT_TESTABLE}: the unmodified model is at chance on every benchmark"
    missing = [_name(l) for l in labels if not any(boot.has(d, l) for d in boot.mats)]
    if missing:
        return f"{verdicts.NOT_TESTABLE}: {', '.join(missing)} not run"
    if not boot.benchmarks(labels):
        return f"{verdicts.NOT_TESTABLE}: no above-chance benchmark where all of them ran"
    return None


def _diffs(boot: Bootstrap, pairs: list[tuple[tuple, tuple]], a: int) -> tuple[list[str], list[str], list[str]]:
    """For each (better, worse) pair: the medians text, the difference's interval text and
    the verdict of "better > worse" (paired over the same benchmarks and draws)."""
    labels = sorted({l for p in pairs for l in p})
    bench = boot.benchmarks(labels)
    med = {l: boot.median(l, bench) for l in labels}
    texts, ivs, vs = [], [], []
    for hi_l, lo_l in pairs:
        d = med[hi_l][1] - med[lo_l][1]
        lo, hi = interval(d)
        ivs.append(f"{_name(hi_l)} − {_name(lo_l)}: {med[hi_l][0] - med[lo_l][0]:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        vs.append(verdicts.above(lo, hi))
    texts = [f"{_name(l)} {med[l][0]:.2f}" for l in labels]
    return [f"{a} layers, median of {len(bench)} benchmarks: " + ", ".join(texts)], ivs, vs


def ordering(boot: Bootstrap, key: str, model: str, a: int, pairs: list[tuple[tuple, tuple]]) -> dict:
    """A claim made of orderings "better > worse" at ``a`` affected layers: agrees when
    every paired difference of medians is above 0, disagrees when one is at or below it."""
    reason = _untestable(boot, sorted({l for p in pairs for l in p}))
    if reason:
        return _row(key, model, f"{a} layers", "", reason)
    ours, ivs, vs = _diffs(boot, pairs, a)
    return _row(key, model, ours[0], "; ".join(ivs), verdicts.both(*vs))


def middle_repeat_worst(boot: Bootstrap, model: str, a: int) -> dict:
    """Fig. 9: every other variant run at ``a`` scores above middle repeat."""
    others = sorted({l for ds in boot.mats for l in boot.mats[ds] if l[1] == a and l[0] != "middle_repeat"
                     and (l[0] != "looped_parallel" or l[2] == LOOPS_CLAIMED)})
    if not others:
        return _row("middle_repeat_worst", model, f"{a} layers", "", f"{verdicts.NOT_TESTABLE}: no other variant run")
    return ordering(boot, "middle_repeat_worst", model, a, [(o, _label("middle_repeat", a)) for o in others])


def order(boot: Bootstrap, model: str, a: int) -> dict:
    """Figs. 6-7: random > reverse and reverse > skip."""
    r, v, s = (_label(x, a) for x in ("random", "reverse", "skip"))
    return ordering(boot, "order", model, a, [(r, v), (v, s)])


def looped_parallel(boot: Bootstrap, model: str, a: int) -> dict:
    """Fig. 10: looped parallel (k = 3) > a single parallel pass."""
    return ordering(boot, "looped_parallel", model, a, [(_label("looped_parallel", a), _label("parallel", a))])


def not_all_needed(boot: Bootstrap, model: str, a: int) -> dict:
    """Fig. 4: skipping ``a`` middle layers keeps the median normalised score above chance
    (0) but below the unmodified model (1): graceful, not free."""
    lab = _label("skip", a)
    reason = _untestable(boot, [lab])
    if reason:
        return _row("not_all_needed", model, f"{a} layers", "", reason)
    bench = boot.benchmarks([lab])
    p, d = boot.median(lab, bench)
    lo, hi = interval(d)
    return _row("not_all_needed", model, f"{a} layers skipped: median normalised {p:.2f} ({len(bench)} benchmarks)",
                f"[{lo:.2f}, {hi:.2f}]", verdicts.both(verdicts.above(lo, hi, 0.0), verdicts.below(lo, hi, 1.0)))


def parallel_gsm8k(boot: Bootstrap, model: str, a: int) -> dict:
    """Fig. 8: parallel's normalised GSM8K score is below its median on the other benchmarks."""
    lab = _label("parallel", a)
    if "gsm8k" not in boot.mats:
        return _row("parallel_gsm8k", model, "", "", f"{verdicts.NOT_TESTABLE}: GSM8K not run")
    if not boot.informative("gsm8k"):
        return _row("parallel_gsm8k", model, "", "", f"{verdicts.NOT_TESTABLE}: the unmodified model is at chance on GSM8K")
    reason = _untestable(boot, [lab])
    if reason or not boot.has("gsm8k", lab):
        return _row("parallel_gsm8k", model, f"{a} layers", "", reason or f"{verdicts.NOT_TESTABLE}: parallel not run on GSM8K")
    gp, gd = boot.normalised("gsm8k", lab)
    bench = boot.benchmarks([lab])
    mp, md = boot.median(lab, bench)
    lo, hi = interval(md - gd)
    return _row("parallel_gsm8k", model, f"{a} layers parallel: GSM8K {gp:.2f} vs median of others {mp:.2f}",
                f"others − GSM8K: {mp - gp:+.2f} [{lo:+.2f}, {hi:+.2f}]", verdicts.above(lo, hi))


def best_loops_grow(boot: Bootstrap, model: str) -> dict:
    """Fig. 10: the best loop count (argmax over k of the median) at the largest parallel
    size exceeds that at the smallest; interval of the difference of argmax k over draws."""
    sizes = {}
    for ds in boot.mats:
        for v, a, k in boot.mats[ds]:
            if v in ("parallel", "looped_parallel"):
                sizes.setdefault(a, set()).add(k)
    sizes = {a: sorted(ks) for a, ks in sizes.items() if len(ks) > 1}
    if len(sizes) < 2:
        return _row("best_loops_grow", model, "", "", f"{verdicts.NOT_TESTABLE}: needs two sizes with two or more loop counts")
    best = {}
    for a in (min(sizes), max(sizes)):
        labs = [("parallel" if k == 1 else "looped_parallel", a, k) for k in sizes[a]]
        bench = boot.benchmarks(labs)
        if not bench:
            return _row("best_loops_grow", model, "", "", f"{verdicts.NOT_TESTABLE}: no above-chance benchmark")
        meds = [boot.median(l, bench) for l in labs]
        ks = np.array(sizes[a])
        best[a] = (int(ks[np.argmax([m[0] for m in meds])]), ks[np.argmax(np.vstack([m[1] for m in meds]), axis=0)])
    (a0, (k0, d0)), (a1, (k1, d1)) = sorted(best.items())
    lo, hi = interval((d1 - d0).astype(float))
    return _row("best_loops_grow", model, f"best k: {k0} at {a0} layers, {k1} at {a1} layers",
                f"k({a1}) − k({a0}): [{lo:+.0f}, {hi:+.0f}]", verdicts.above(lo, hi))


def shared_space(doc_cosines: np.ndarray, model: str, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Fig. 3: per document, the mean cosine similarity between the hidden states of
    different middle layers; bootstrap over documents; agrees when above SHARED."""
    x = np.asarray(doc_cosines, float)
    if not len(x):
        return _row("shared_space", model, "", "", f"{verdicts.NOT_TESTABLE}: no similarity measured")
    lo, hi = evaluation.bootstrap_interval(x, n_boot=n_boot, seed=seed)
    return _row("shared_space", model, f"mean cosine between middle layers {x.mean():.2f} ({len(x)} documents)",
                f"[{lo:.2f}, {hi:.2f}] vs {SHARED}", verdicts.above(lo, hi, SHARED))


def model_rows(items: pd.DataFrame, model: str, doc_cosines=None, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Every decoder claim for one model's per-item rows, one row per claim and size."""
    if not len(items):
        return []
    items = one_sample(items)
    boot = Bootstrap(items, n_boot, seed)
    sizes = sorted({int(a) for a in items.loc[items.variant != "base", "affected"]})
    rows = [shared_space(doc_cosines, model, n_boot, seed)] if doc_cosines is not None else []
    for a in sizes:
        rows += [not_all_needed(boot, model, a), middle_repeat_worst(boot, model, a), order(boot, model, a),
                 looped_parallel(boot, model, a)]
    gsm = sorted({int(a) for a in items.loc[(items.dataset == "gsm8k") & (items.variant == "parallel"), "affected"]})
    rows += [parallel_gsm8k(boot, model, a) for a in (gsm or sizes[len(sizes) // 2:][:1])]
    return rows + [best_loops_grow(boot, model)]


def one_sample(items: pd.DataFrame) -> pd.DataFrame:
    """One item sample per benchmark when a results dir holds several runs (profiles):
    the rows with the unmodified model's largest n_items, and the smallest lm-eval seed."""
    if "eval_seed" in items:
        items = items[items["eval_seed"] == items["eval_seed"].min()]
    if "n_items" not in items:
        return items
    n = items[items.variant == "base"].groupby("dataset")["n_items"].max()
    return items[items["n_items"] == items["dataset"].map(n)]


def claim_rows(store) -> list[dict]:
    """The Painters rows of the comparison table (columns ``COLUMNS``) from a results
    store: per-item decoder rows, the stored similarity, the encoder (if run)."""
    from . import painters, painters_encoder
    items = store.table(painters.ITEMS)
    sim = store.table(SIMILARITY)
    rows = []
    for model in sorted(items["model"].unique()) if len(items) else []:
        mine = sim[sim.model == model] if len(sim) else sim
        # the similarity point with the most documents
        cos = mine[mine.key == mine.groupby("key").size().idxmax()]["value"].to_numpy() if len(mine) else None
        rows += model_rows(items[items.model == model], model, cos if cos is not None and len(cos) else None)
    enc = store.table(painters_encoder.TECHNIQUE)
    for model in sorted(enc["model"].unique()) if len(enc) else []:
        rows += encoder_rows(enc[enc.model == model], model)
    return rows


SIMILARITY = "painters_similarity"  # per-document mean cosine between different middle layers


def encoder_rows(table: pd.DataFrame, model: str) -> list[dict]:
    """Appendix: per size, the median over variants of the normalised GLUE average
    (fixed head) lies above chance (0) and below the unmodified model (1). The interval
    spans the variants' per-task Wilson / bootstrap limits (a conservative envelope)."""
    from . import painters_encoder
    g = painters_encoder.glue_average(table)
    t = table.assign(lo_n=0.0, hi_n=0.0)
    base = t[t.variant == "base"].set_index("dataset")["value"]
    ch = t["dataset"].map(painters_encoder.CHANCE)
    t["lo_n"] = (t["ci_low"] - ch) / (t["dataset"].map(base) - ch)
    t["hi_n"] = (t["ci_high"] - ch) / (t["dataset"].map(base) - ch)
    env = t.groupby(["variant", "affected", "loops"])[["lo_n", "hi_n"]].mean()
    rows = []
    for a in sorted(int(x) for x in g.loc[g.variant != "base", "affected"].unique()):
        part = g[g.affected == a].set_index(["variant", "affected", "loops"])
        lo, hi = float(np.median(env.loc[part.index, "lo_n"])), float(np.median(env.loc[part.index, "hi_n"]))
        ours = ", ".join(f"{v if v != 'looped_parallel' else f'looped k={k}'} {r.glue_average:.1f}"
                         for (v, _, k), r in part.iterrows())
        rows.append(_row("encoder", model, f"{a} layers, GLUE average (%, fixed head; unmodified "
                         f"{g.loc[g.variant == 'base', 'glue_average'].iloc[0]:.1f}): {ours}",
                         f"median normalised {part['glue_normalised'].median():.2f} [{lo:.2f}, {hi:.2f}]",
                         verdicts.both(verdicts.above(lo, hi, 0.0), verdicts.below(lo, hi, 1.0))))
    return rows
