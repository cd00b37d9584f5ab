"""The Painters claims, each judged by one function on bootstrap intervals over items.

Summary statistic (paper): per benchmark, normalised = (acc - chance) / (unmodified acc -
chance); a variant's score is the median across benchmarks. Intervals: percentile
bootstrap that resamples ITEMS within each benchmark (the same resample for every variant
and the unmodified model, so differences of medians are paired), recomputing accuracies,
normalised scores and medians each draw.

Random order (several order seeds): seed is a second resampling level. Each draw resamples
the seeds with replacement as well as the items; the random variant's accuracy is the mean
over the drawn seeds of their accuracies on the drawn items. Per-seed intervals are never averaged.

Benchmarks: the paper's five (ARC, HellaSwag, GSM8K, WinoGrande, LAMBADA); ARC counts once
in a median (ARC-Easy and ARC-Challenge averaged), GSM8K is in the medians where the variant
ran on it. A benchmark enters only when the unmodified model clears the floor
(``stats.informative``).

An ordering agrees where the 95% interval of the paired difference lies above 0; a claim
made of several orderings disagrees where one is reversed on its Holm-adjusted interval.
Not testable (with the reason) when every benchmark is below the floor, a variant was not
run, or more than 1% of the bootstrap draws are undefined (a resampled unmodified model at
chance makes the normalised score undefined: such draws are counted, never dropped silently).
The shared-space, layer-skip and encoder claims live in ``painters_contrasts``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.evidence import stats, verdicts
from layerlab.core.evidence.papers import PAINTERS, PAINTERS_CLAIMS

COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]
N_BOOT = 2000
LOOPS_CLAIMED = 3  # Fig. 9: looped parallel with 3 iterations
BASE = ("base", 0, 1)


class Bootstrap:
    """Paired bootstrap draws of normalised scores from one model's per-item rows
    (``painters.ITEMS``: dataset, item, value, variant, affected, loops, order_seed).

    Labels are (variant, affected, loops); the unmodified model is ("base", 0, 1)."""

    def __init__(self, items: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, chance: dict | None = None):
        self.n_boot, self.rng = n_boot, np.random.default_rng(seed)
        self.chance = evaluation.CHANCE if chance is None else chance
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
        """The unmodified model clears the floor on ``ds`` (``stats.informative``: Wilson
        lower bound above chance + a margin; generation: at least 20 items solved)."""
        m = self.mats[ds][BASE]
        return stats.informative(int(round(m.mean() * m.shape[1])), m.shape[1], self.chance[ds])[0]

    def has(self, ds: str, label: tuple) -> bool:
        return ds in self.mats and label in self.mats[ds]

    def normalised(self, ds: str, label: tuple) -> tuple[float, np.ndarray]:
        """(point, [n_boot] draws) of the normalised score of ``label`` on ``ds``."""
        if (ds, label) not in self._norm:
            chance = self.chance[ds]
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
        """(point, draws) of the median normalised score across the paper's benchmarks
        among ``benchmarks``: ARC counts once (the mean of ARC-Easy's and ARC-Challenge's
        normalised scores when both ran). A draw that is undefined on one benchmark is NaN."""
        families: dict[str, list] = {}
        for ds in benchmarks:
            families.setdefault("arc" if ds.startswith("arc") else ds, []).append(self.normalised(ds, label))
        pts = [np.mean([p for p, _ in f]) for f in families.values()]
        draws = np.vstack([np.mean(np.vstack([d for _, d in f]), axis=0) for f in families.values()])
        return float(np.median(pts)), np.median(draws, axis=0)

    def benchmarks(self, labels: list[tuple], exclude=()) -> list[str]:
        """Informative benchmarks (not in ``exclude``) on which every label was run."""
        return [d for d in sorted(self.mats) if d not in exclude and self.informative(d)
                and all(self.has(d, lab) for lab in labels)]


def undefined(draws: np.ndarray) -> str | None:
    """Not testable when over ``stats.MAX_UNDEFINED`` of the draws are NaN (undefined), else None."""
    share = stats.undefined_share(draws)
    if share > stats.MAX_UNDEFINED:
        return verdicts.not_testable(f"{100 * share:.1f}% of bootstrap draws undefined (> 1%): the resampled "
                                     "unmodified model falls to chance")
    return None


def interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (NaN draws left out: callers check ``undefined``)."""
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


def _diffs(boot: Bootstrap, pairs: list[tuple[tuple, tuple]], a: int) -> tuple[str, list[str], list[str]]:
    """For each (better, worse) pair: the medians text, the difference's interval text and
    the verdict of "better > worse" (paired over the same benchmarks and draws): agrees when
    the 95% interval lies above 0; disagrees when the Holm-adjusted interval (m pairs: the
    union "some pair is reversed") lies at or below 0; not testable with too many undefined draws."""
    labels = sorted({l for p in pairs for l in p})
    bench = boot.benchmarks(labels)
    med = {l: boot.median(l, bench) for l in labels}
    conf = stats.holm_confidence(len(pairs))
    ivs, vs = [], []
    for hi_l, lo_l in pairs:
        d = med[hi_l][1] - med[lo_l][1]
        lo, hi = interval(d)
        alo, ahi = interval(d, conf)
        ivs.append(f"{_name(hi_l)} − {_name(lo_l)}: {med[hi_l][0] - med[lo_l][0]:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        vs.append(undefined(d) or (verdicts.AGREES if lo > 0 else verdicts.DISAGREES if ahi <= 0
                                   else verdicts.INCONCLUSIVE))
    if len(pairs) > 1:
        ivs.append(f"reversals judged on Holm-adjusted intervals over {len(pairs)} pairs")
    texts = [f"{_name(l)} {med[l][0]:.2f}" for l in labels]
    return f"{a} layers, median of {len(bench)} benchmarks: " + ", ".join(texts), ivs, vs


def ordering(boot: Bootstrap, key: str, model: str, a: int, pairs: list[tuple[tuple, tuple]]) -> dict:
    """A claim made of orderings "better > worse" at ``a`` affected layers (``_diffs``),
    combined with ``verdicts.both``."""
    reason = _untestable(boot, sorted({l for p in pairs for l in p}))
    if reason:
        return _row(key, model, f"{a} layers", "", reason)
    ours, ivs, vs = _diffs(boot, pairs, a)
    return _row(key, model, ours, "; ".join(ivs), verdicts.both(*vs))


def middle_repeat_worst(boot: Bootstrap, model: str, a: int) -> dict:
    """The comparison of all variants: every other variant run at ``a`` scores above middle repeat."""
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
    """Fig. 9: looped parallel (k = 3) > a single parallel pass."""
    return ordering(boot, "looped_parallel", model, a, [(_label("looped_parallel", a), _label("parallel", a))])


def parallel_between(boot: Bootstrap, model: str, a: int) -> dict:
    """The comparison of all variants: parallel > skip and reverse > parallel."""
    p, s, r = (_label(x, a) for x in ("parallel", "skip", "reverse"))
    return ordering(boot, "parallel_between", model, a, [(p, s), (r, p)])


def least_degrading(boot: Bootstrap, model: str, a: int) -> dict:
    """Q8: looped parallel (k = 3) and random order each score above every other variant run at ``a``."""
    best = [_label("looped_parallel", a), _label("random", a)]
    others = sorted({l for ds in boot.mats for l in boot.mats[ds] if l[1] == a and l[0] not in
                     ("looped_parallel", "random", "base")})
    if not others:
        return _row("least_degrading", model, f"{a} layers", "", verdicts.not_testable("no other variant run"))
    return ordering(boot, "least_degrading", model, a, [(b, o) for b in best for o in others])


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
    if undefined(d):
        return _row("not_all_needed", model, f"{a} layers", "", undefined(d))
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
    bench = boot.benchmarks([lab], exclude=("gsm8k",))
    if not bench:
        return _row("parallel_gsm8k", model, f"{a} layers", "",
                    verdicts.not_testable("no other above-floor benchmark where parallel ran"))
    mp, md = boot.median(lab, bench)
    if undefined(md - gd):
        return _row("parallel_gsm8k", model, f"{a} layers", "", undefined(md - gd))
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
        gone = undefined(np.where(np.isnan(np.vstack([m[1] for m in meds])).any(0), np.nan, 0.0))
        if gone:
            return _row("best_loops_grow", model, "", "", gone)
        ks = np.array(sizes[a])
        best[a] = (int(ks[np.argmax([m[0] for m in meds])]), ks[np.argmax(np.vstack([m[1] for m in meds]), axis=0)])
    (a0, (k0, d0)), (a1, (k1, d1)) = sorted(best.items())
    lo, hi = interval((d1 - d0).astype(float))
    return _row("best_loops_grow", model, f"best k: {k0} at {a0} layers, {k1} at {a1} layers",
                f"k({a1}) − k({a0}): [{lo:+.0f}, {hi:+.0f}]", verdicts.above(lo, hi))


SIMILARITY = "painters_similarity"  # per-document similarity rows (metric "middle_contrast": see painters_contrasts)
