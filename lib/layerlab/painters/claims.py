"""The Painters decoder claims, each judged by one function on paired tests of the stored
per-item accuracies (``painters.paired``).

Primary statistic, declared: accuracy (each benchmark's main metric), pooled over the items of
the benchmarks on which the unmodified model clears the floor (``stats.informative``) and every
variant the claim compares ran. The paper states no number for these claims (Figs. 4, 6-10 are
plots), so each is a direction test: ``n_needed`` is None and an inconclusive verdict carries the
MDE at this n. A claim made of orderings agrees when every ordering's 95% interval excludes 0
(intersection-union), disagrees when Holm over its parts rejects a reversed one.

A claim whose variants, benchmark or sizes this profile does not run is ``verdicts.not_run``
(in no count); one whose data cannot decide is ``not testable`` with a cause from
``verdicts.CAUSES``. The normalised score (acc - chance) / (base - chance) and its median over
benchmarks stay the figures' summary (``grid.normalise``); no decision divides by a base.
The shared-space, layer-skip and encoder claims live in ``painters.contrasts``.
"""

from __future__ import annotations

import numpy as np

from layerlab.core.evidence import stats, verdicts
from layerlab.core.evidence.papers import PAINTERS, PAINTERS_CLAIMS
from .paired import BASE, Z80, Part, Scores, compare, columns, excess_over_chance, mean_t, union

COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]
POWER_KEYS = ["n", "statistic", "mde", "n_needed", "secondary"]
LOOPS_CLAIMED = 3  # Fig. 9: looped parallel with 3 iterations
GSM8K = "gsm8k"
SIMILARITY = "painters_similarity"  # per-document similarity rows (metric "middle_contrast": see painters.contrasts)
NO_POWER = {"n": None, "statistic": "", "mde": "", "n_needed": None, "secondary": ""}

__all__ = ["BASE", "COLUMNS", "Scores", "best_loops_grow", "least_degrading", "looped_parallel",
           "middle_repeat_worst", "not_all_needed", "order", "parallel_between", "parallel_gsm8k"]


def _name(label: tuple) -> str:
    return f"looped_parallel k={label[2]}" if label[0] == "looped_parallel" else label[0]


def _label(variant: str, a: int) -> tuple:
    return (variant, a, LOOPS_CLAIMED if variant == "looped_parallel" else 1)


def _row(key: str, model: str, ours: str, interval_txt: str, verdict: str, cols: dict | None = None) -> dict:
    """A claim row: ``COLUMNS`` then the power keys (``NO_POWER`` unless given)."""
    verdicts.word(verdict)  # a verdict no count can read is a bug here, not on the page
    return {"paper": PAINTERS, "claim": PAINTERS_CLAIMS[key],
            "paper's number": PAINTERS_CLAIMS[key].rsplit("(", 1)[-1].rstrip(")"),
            "model": model, "ours": ours, "interval": interval_txt, "verdict": verdict} | NO_POWER | (cols or {})


def _blocked(scores: Scores, labels: list[tuple], a: int, exclude=()) -> str | None:
    """Why ``labels`` cannot be compared (a verdict), or None."""
    if not any(scores.informative(d) for d in scores.mats if d not in exclude):
        return verdicts.not_testable("the unmodified model is below the floor on every benchmark",
                                     cause="model at chance")
    missing = [_name(lab) for lab in labels if not scores.ran(lab)]
    if missing:
        return verdicts.not_run(f"{', '.join(missing)} at {a} layers (not in this profile's grid)")
    if not scores.benchmarks(labels, exclude):
        return verdicts.not_testable("no benchmark above the floor on which all of them ran", cause="no data")
    return None


def _accuracies(scores: Scores, labels: list[tuple], bench: list[str]) -> str:
    n = sum(scores.mats[d][BASE].shape[1] for d in bench)
    acc = ", ".join(f"{_name(lab)} {100 * scores.pooled(lab, bench).mean():.1f}%" for lab in labels)
    return f"accuracy pooled over {', '.join(bench)} ({n} items): {acc}"


def ordering(scores: Scores, key: str, model: str, a: int, pairs: list[tuple[tuple, tuple]]) -> dict:
    """A claim made of orderings "better > worse" at ``a`` affected layers, each a paired
    comparison on the items of the benchmarks where every label ran (``paired.compare``),
    combined by ``paired.union``."""
    labels = list(dict.fromkeys(lab for p in pairs for lab in p))
    blocked = _blocked(scores, labels, a)
    if blocked:
        return _row(key, model, f"{a} layers", "", blocked)
    bench = scores.benchmarks(labels)
    parts = [compare(scores, b, w, bench, f"{_name(b)} − {_name(w)}") for b, w in pairs]
    return _row(key, model, f"{a} layers, {_accuracies(scores, labels, bench)}", "; ".join(p.text() for p in parts),
                union(parts), columns(parts, bench))


def _run_at(scores: Scores, a: int, exclude: tuple) -> list[tuple]:
    """The variants run at ``a`` layers (looped parallel: k = 3 only), not in ``exclude``."""
    return sorted(lab for lab in scores.labels() if lab[1] == a and lab[0] not in ("base",) + exclude
                  and (lab[0] != "looped_parallel" or lab[2] == LOOPS_CLAIMED))


def middle_repeat_worst(scores: Scores, model: str, a: int) -> dict:
    """Every other variant run at ``a`` (skip, reverse, random, parallel, looped k = 3) scores
    above middle repeat: up to 5 parts."""
    others = _run_at(scores, a, ("middle_repeat",))
    if not others:
        return _row("middle_repeat_worst", model, f"{a} layers", "", verdicts.not_run("no other variant at this size"))
    return ordering(scores, "middle_repeat_worst", model, a, [(o, _label("middle_repeat", a)) for o in others])


def order(scores: Scores, model: str, a: int) -> dict:
    """Figs. 6-7: random > reverse and reverse > skip (2 parts)."""
    r, v, s = (_label(x, a) for x in ("random", "reverse", "skip"))
    return ordering(scores, "order", model, a, [(r, v), (v, s)])


def looped_parallel(scores: Scores, model: str, a: int) -> dict:
    """Fig. 9: looped parallel (k = 3) > a single parallel pass (1 part)."""
    return ordering(scores, "looped_parallel", model, a, [(_label("looped_parallel", a), _label("parallel", a))])


def parallel_between(scores: Scores, model: str, a: int) -> dict:
    """The comparison of all variants: parallel > skip and reverse > parallel (2 parts)."""
    p, s, r = (_label(x, a) for x in ("parallel", "skip", "reverse"))
    return ordering(scores, "parallel_between", model, a, [(p, s), (r, p)])


def least_degrading(scores: Scores, model: str, a: int) -> dict:
    """Q8: looped parallel (k = 3) and random order each score above every other variant run
    at ``a`` (skip, middle repeat, reverse, parallel): up to 8 parts."""
    best = [_label("looped_parallel", a), _label("random", a)]
    others = _run_at(scores, a, ("looped_parallel", "random"))
    if not others:
        return _row("least_degrading", model, f"{a} layers", "", verdicts.not_run("no other variant at this size"))
    return ordering(scores, "least_degrading", model, a, [(b, o) for b in best for o in others])


def not_all_needed(scores: Scores, model: str, a: int) -> dict:
    """Fig. 4: skipping ``a`` middle layers is graceful, not free: skip scores below the
    unmodified model (Tango) and above chance (the common excess over each benchmark's
    chance, stratified Wilson score interval): 2 parts."""
    lab = _label("skip", a)
    blocked = _blocked(scores, [lab], a)
    if blocked:
        return _row("not_all_needed", model, f"{a} layers", "", blocked)
    bench = scores.benchmarks([lab])
    y = scores.pooled(lab, bench)[0]
    k = [scores.mats[d][lab][0].sum() for d in bench]
    n = [scores.mats[d][lab].shape[1] for d in bench]
    e, lo, hi, p, mde = excess_over_chance(k, n, [scores.chance[d] for d in bench])
    parts = [compare(scores, BASE, lab, bench, "unmodified − skip"),
             Part("skip − chance", e, lo, hi, p, len(y), mde, "stratified Wilson score interval of the excess over chance")]
    return _row("not_all_needed", model, f"{a} layers skipped, {_accuracies(scores, [BASE, lab], bench)}",
                "; ".join(q.text() for q in parts), union(parts), columns(parts, bench))


def parallel_gsm8k(scores: Scores, model: str, a: int) -> dict:
    """Fig. 8: parallel keeps less of the unmodified model's GSM8K accuracy than of its
    accuracy above chance elsewhere: N_g < N_o without dividing, T = p_vg (p_bo - c_o) -
    (p_vo - c_o) p_bg < 0 (v parallel, b unmodified, g GSM8K, o the other benchmarks pooled;
    c chance, 0 on GSM8K). The interval is the delta method's, with each benchmark's items
    paired between the two models: se^2 = var(u)/n_g + var(w)/n_o for the per-item
    linearisations u (GSM8K) and w (the others)."""
    from scipy.stats import norm

    lab = _label("parallel", a)
    key = "parallel_gsm8k"
    if GSM8K not in scores.mats:
        return _row(key, model, "", "", verdicts.not_run("GSM8K (not in this profile's benchmarks)"))
    n_g = scores.mats[GSM8K][BASE].shape[1]
    if n_g < stats.MIN_CORRECT_GENERATION:
        return _row(key, model, "", "", verdicts.not_testable(
            f"GSM8K runs {n_g} items; the floor needs {stats.MIN_CORRECT_GENERATION} solved", cause="grid cannot falsify"))
    ok, why = scores.floor(GSM8K)
    if not ok:
        return _row(key, model, "", "", verdicts.not_testable(why, cause="model at chance"))
    if not scores.has(GSM8K, lab):
        return _row(key, model, f"{a} layers", "", verdicts.not_run(f"parallel on GSM8K at {a} layers"))
    blocked = _blocked(scores, [lab], a, exclude=(GSM8K,))
    if blocked:
        return _row(key, model, f"{a} layers", "", blocked)
    bench = scores.benchmarks([lab], exclude=(GSM8K,))
    vg, bg = scores.mats[GSM8K][lab][0], scores.mats[GSM8K][BASE][0]
    c = scores.chance_of(bench)
    vo, bo = scores.pooled(lab, bench)[0] - c, scores.pooled(BASE, bench)[0] - c
    A, B, C, D = vg.mean(), bo.mean(), vo.mean(), bg.mean()
    t = A * B - C * D
    u, w = B * vg - C * bg, A * bo - D * vo   # dT per GSM8K item, per other item
    se = float(np.sqrt(u.var(ddof=1) / len(u) + w.var(ddof=1) / len(w)))
    z, nan = float(norm.ppf(0.975)), float("nan")
    p = float(2 * norm.sf(abs(t) / se)) if se > 0 else nan
    lo, hi = (-t - z * se, -t + z * se) if se > 0 else (nan, nan)
    part = Part("−T", -t, lo, hi, p, len(u) + len(w), (z + Z80) * se if se > 0 else nan,
                "delta-method z on T = p_vg(p_bo − c_o) − (p_vo − c_o)p_bg", unit="(T)", scale=1.0)
    cols = columns([part], bench + [GSM8K]) | {"statistic": part.statistic + ", accuracy"}
    ours = (f"{a} layers parallel: GSM8K {100 * A:.1f}% of unmodified {100 * D:.1f}%; others (pooled, "
            f"{', '.join(bench)}) {100 * C:+.1f} of {100 * B:+.1f} pp above chance")
    return _row(key, model, ours, f"−T = {-t:+.4f} [{lo:+.4f}, {hi:+.4f}] (> 0: GSM8K keeps less), p = {p:.2g}",
                union([part]), cols)


def _loop_sizes(scores: Scores) -> dict[int, set[int]]:
    sizes: dict[int, set[int]] = {}
    for v, a, k in scores.labels():
        if v in ("parallel", "looped_parallel"):
            sizes.setdefault(a, set()).add(k)
    return sizes


def best_loops_grow(scores: Scores, model: str) -> dict:
    """Fig. 10, operationalised: the gain of k_max loops over one parallel pass is larger at the
    largest parallel size than at the smallest. Per pooled item, (y[A, k_max] - y[A, 1]) -
    (y[a, k_max] - y[a, 1]) (values in -2..2), one-sample t against 0; k_max the largest loop
    count run at both sizes."""
    key = "best_loops_grow"
    sizes = {a: ks for a, ks in _loop_sizes(scores).items() if 1 in ks and len(ks) > 1}
    if len(sizes) < 2:
        return _row(key, model, "", "", verdicts.not_run("two parallel sizes, each with one pass and a loop count > 1"))
    a0, a1 = min(sizes), max(sizes)
    common = sorted(sizes[a0] & sizes[a1] - {1})
    if not common:
        return _row(key, model, "", "", verdicts.not_run(f"a loop count > 1 run at both {a0} and {a1} layers"))
    k = common[-1]
    labs = [("parallel", a, 1) for a in (a0, a1)] + [("looped_parallel", a, k) for a in (a0, a1)]
    bench = scores.benchmarks(labs)
    if not bench:
        blocked = _blocked(scores, labs, a1)
        return _row(key, model, "", "", blocked or verdicts.not_testable("no benchmark above the floor", cause="no data"))
    y = {lab: scores.pooled(lab, bench)[0] for lab in labs}
    gain = {a: y[("looped_parallel", a, k)] - y[("parallel", a, 1)] for a in (a0, a1)}
    d, lo, hi, p, mde = mean_t(gain[a1] - gain[a0])
    part = Part(f"gain({a1}) − gain({a0})", d, lo, hi, p, len(gain[a0]), mde, "paired t over items")
    cols = columns([part], bench) | {"mde": "" if np.isnan(mde) else f"{100 * mde:.3g} pp"}
    ours = (f"gain of k={k} loops over one pass: {100 * gain[a0].mean():+.1f} pp at {a0} layers, "
            f"{100 * gain[a1].mean():+.1f} pp at {a1} layers ({len(gain[a0])} items, {', '.join(bench)})")
    return _row(key, model, ours, part.text(), union([part]), cols)

