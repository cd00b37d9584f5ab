"""Gromov et al.'s claims judged on the stored deeper-layers results: every verdict is
decided by intervals (``verdicts``), never by a point estimate alone. ``claim_rows`` gives
the comparison chapter's rows; the prune notebook's conclusions call the same functions.

Loss rows are the held-out next-token loss / log V (dataset ``heldout``) with their 95%
intervals (value ± 1.96 standard errors over chunks); accuracy rows carry Wilson intervals.
"""

from __future__ import annotations

import math

import pandas as pd

from . import evaluation, papers, results, verdicts
from .prune import chance_fraction, deep_end_share  # noqa: F401  (deep_end_share re-exported)

TASKS = ("mmlu", "boolq", "arc_easy", "hellaswag")
HEALED_MARGIN = 0.10  # "nearly matches": within 10% of the heuristic's own pruning-induced loss increase
COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]


def holds_then_falls(curve: pd.DataFrame, chance: float) -> dict:
    """Gromov et al.'s headline, both halves judged by intervals, on one accuracy curve
    (rows: fraction, value, ci_low, ci_high; fraction 0 = unpruned).

    holds: the smallest pruned fraction keeps accuracy within the unpruned model's 95%
        interval (agrees), or its own interval lies below it (disagrees);
    falls: from some fraction on, every interval reaches chance, after the unpruned model
        was above it (agrees); disagrees if the largest fraction is still above chance.
    Not testable when the unpruned model is itself at chance. Returns {verdict, ours,
    interval, chance_fraction}."""
    c = curve.sort_values("fraction")
    base = c[c.fraction == 0]
    if not len(base):
        return {"verdict": f"{verdicts.NOT_TESTABLE}: no unpruned point", "ours": "", "interval": "",
                "chance_fraction": None}
    b = base.iloc[0]
    base_txt = f"unpruned {100 * b.value:.1f}% [{100 * b.ci_low:.1f}, {100 * b.ci_high:.1f}]"
    if b.ci_low <= chance:
        return {"verdict": f"{verdicts.NOT_TESTABLE}: at chance unpruned", "ours": base_txt, "interval": "",
                "chance_fraction": None}
    pruned = c[c.fraction > 0]
    if not len(pruned):
        return {"verdict": f"{verdicts.NOT_TESTABLE}: no pruned point", "ours": base_txt, "interval": "",
                "chance_fraction": None}
    first = pruned.iloc[0]
    holds = (verdicts.AGREES if first.value >= b.ci_low else
             verdicts.DISAGREES if first.ci_high < b.ci_low else verdicts.INCONCLUSIVE)
    f = chance_fraction(c, chance)
    last = pruned.iloc[-1]
    falls = (verdicts.AGREES if f is not None and f > 0 else
             verdicts.DISAGREES if last.ci_low > chance else verdicts.INCONCLUSIVE)
    ours = (f"{base_txt}; at fraction {first.fraction:.2f}: {100 * first.value:.1f}%; "
            + (f"at chance from fraction {f:.2f}" if f is not None else
               f"still {100 * last.value:.1f}% at fraction {last.fraction:.2f}"))
    return {"verdict": verdicts.both(holds, falls), "ours": ours,
            "interval": f"holds: {holds}; falls to chance: {falls}", "chance_fraction": f}


def lower_than(a: pd.Series, b: pd.Series) -> str:
    """"a is lower than b", judged on their 95% intervals (rows with ci_low, ci_high):
    agrees when a's interval lies entirely below b's, disagrees when entirely above it,
    inconclusive when they overlap (a tie: neither is shown lower)."""
    if any(math.isnan(x) for x in (a.ci_low, a.ci_high, b.ci_low, b.ci_high)):
        return verdicts.INCONCLUSIVE
    if a.ci_high < b.ci_low:
        return verdicts.AGREES
    if a.ci_low > b.ci_high:
        return verdicts.DISAGREES
    return verdicts.INCONCLUSIVE


def _loss_rows(loss: pd.DataFrame, method: str, healed: bool) -> pd.DataFrame:
    part = loss[(loss.method == method) & (loss.healed.astype(bool) == healed) & (loss.n > 0)]
    return part.drop_duplicates("n").set_index("n").sort_index()


def _unpruned(loss: pd.DataFrame) -> pd.Series | None:
    base = loss[(loss.n == 0) & ~loss.healed.astype(bool)]
    return base.iloc[0] if len(base) else None


def _fmt(r: pd.Series) -> str:
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def healing_repairs(loss: pd.DataFrame, method: str = "similarity") -> dict | None:
    """Healing lowers the loss that pruning raised: at every healed n of ``method``, the
    healed loss's interval lies entirely below the unhealed pruned loss's (``lower_than``);
    combined over n with ``verdicts.both``. How *much* is repaired (the share of the
    increase over the unpruned model recovered) is reported in ``ours``, not judged.
    loss: one model's held-out loss rows (n, method, healed, value, ci_low, ci_high).
    None when nothing is healed."""
    healed, pruned, base = _loss_rows(loss, method, True), _loss_rows(loss, method, False), _unpruned(loss)
    if not len(healed):
        return None
    parts, texts = [], []
    for n, h in healed.iterrows():
        if n not in pruned.index or base is None:
            texts.append(f"n={n}: healed {_fmt(h)}, no unhealed or unpruned point")
            continue
        p = pruned.loc[n]
        parts.append(lower_than(h, p))
        rec = (p.value - h.value) / (p.value - base.value) if p.value > base.value else float("nan")
        texts.append(f"n={n}: unpruned {base.value:.3f}, pruned {_fmt(p)}, healed {_fmt(h)} "
                     f"({100 * rec:.0f}% of the increase recovered)")
    verdict = verdicts.both(*parts) if parts else f"{verdicts.NOT_TESTABLE}: no unhealed point at a healed n"
    return {"verdict": verdict, "ours": "; ".join(texts),
            "interval": "healed below pruned, 95% intervals: " + ", ".join(parts)}


def similarity_vs_heuristic(loss: pd.DataFrame) -> dict | None:
    """Before healing, the similarity-chosen block has lower loss than the deepest layers.
    At each n > 0 that both methods measured, similarity is *better* when its interval lies
    entirely below the heuristic's, *worse* when entirely above, and a *tie* otherwise (a tie
    is not a win; where both methods drop the same blocks the numbers are equal, a tie).
    Agrees if better at >= 1 n and worse at none; disagrees if worse at >= 1 n and better at
    none; inconclusive otherwise (mixed, or ties only). None without a common n."""
    sim, deep = _loss_rows(loss, "similarity", False), _loss_rows(loss, "deepest", False)
    common = sim.index.intersection(deep.index)
    if not len(common):
        return None
    judged = {n: lower_than(sim.loc[n], deep.loc[n]) for n in common}
    better = [n for n, v in judged.items() if v == verdicts.AGREES]
    worse = [n for n, v in judged.items() if v == verdicts.DISAGREES]
    ties = [n for n, v in judged.items() if v == verdicts.INCONCLUSIVE]
    verdict = (verdicts.AGREES if better and not worse else verdicts.DISAGREES if worse and not better
               else verdicts.INCONCLUSIVE)
    return {"verdict": verdict,
            "ours": f"of {len(common)} n: better at {len(better)} {better}, tie at {len(ties)} {ties}, "
                    f"worse at {len(worse)} {worse}",
            "interval": "; ".join(f"n={n}: {_fmt(sim.loc[n])} vs {_fmt(deep.loc[n])}" for n in common)}


def healed_heuristic(loss: pd.DataFrame, margin: float = HEALED_MARGIN) -> dict | None:
    """After healing, dropping the deepest layers nearly matches similarity pruning. At each n
    healed for both methods: d = healed heuristic loss - healed similarity loss, with the 95%
    interval d ± 1.96 sqrt(se_h^2 + se_s^2) (standard errors over the same chunks combined as
    if independent: conservative). The tolerance is ``margin`` times the heuristic's own
    pruning-induced increase at n (its unhealed loss minus the unpruned loss): agrees when
    the whole interval lies below the tolerance (the heuristic is at most that much worse,
    or better), disagrees when it lies at or above it, inconclusive otherwise (``verdicts.below``);
    combined over n with ``verdicts.both``. An n without the unhealed heuristic point, or where
    pruning did not raise the loss, is left out. None when no n is healed for both."""
    sim, deep = _loss_rows(loss, "similarity", True), _loss_rows(loss, "deepest", True)
    raw, base = _loss_rows(loss, "deepest", False), _unpruned(loss)
    common = sim.index.intersection(deep.index)
    if not len(common):
        return None
    parts, texts, skipped = [], [], []
    for n in common:
        s, h = sim.loc[n], deep.loc[n]
        increase = raw.loc[n].value - base.value if n in raw.index and base is not None else float("nan")
        if not increase > 0:
            skipped.append(n)
            continue
        d, se = h.value - s.value, math.sqrt(h.stderr ** 2 + s.stderr ** 2)
        tol = margin * increase
        parts.append(verdicts.below(d - 1.96 * se, d + 1.96 * se, tol))
        texts.append(f"n={n}: healed heuristic {h.value:.3f} vs similarity {s.value:.3f}, "
                     f"difference {d:+.3f} [{d - 1.96 * se:+.3f}, {d + 1.96 * se:+.3f}] vs tolerance {tol:.3f}")
    if not parts:
        return {"verdict": f"{verdicts.NOT_TESTABLE}: no unhealed heuristic point with a loss increase",
                "ours": f"healed at n = {list(common)}", "interval": ""}
    return {"verdict": verdicts.both(*parts), "ours": "; ".join(texts) + (f" (left out: n = {skipped})" if skipped else ""),
            "interval": f"difference below {100 * margin:.0f}% of the heuristic's increase: " + ", ".join(parts)}


def deep_end(best: pd.DataFrame, n_layers: int) -> dict | None:
    """l*(n) lies in the deeper half for most n (``prune.deep_end_share``, n = 1..L//2): k of m
    block sizes do; the Wilson 95% interval of k / m is judged against 0.5 (``verdicts.above``).
    Descriptive: the n are not independent draws (neighbouring n share most of their blocks),
    so the interval is a yardstick for "most", not a sampling guarantee. None without n."""
    sub = best[(best["n"] >= 1) & (best["n"] <= n_layers // 2)]
    if not len(sub):
        return None
    k, m = int(((sub["l*"] + sub["n"] / 2) >= n_layers / 2).sum()), len(sub)
    lo, hi = evaluation.wilson_interval(k, m)
    return {"verdict": verdicts.above(lo, hi, 0.5), "share": k / m,
            "ours": f"{k} of {m} block sizes n = 1..{n_layers // 2} ({100 * k / m:.0f}%) have l*(n) in the deeper half",
            "interval": f"Wilson 95% [{100 * lo:.0f}%, {100 * hi:.0f}%] vs 50%"}


def best_starts(dist: pd.DataFrame) -> pd.DataFrame:
    """One row per n (columns n, l*, d) from stored ``prune_distance`` rows of one model."""
    idx = dist.groupby("n")["value"].idxmin()
    return dist.loc[idx, ["n", "layer", "value"]].rename(columns={"layer": "l*", "value": "d"}).reset_index(drop=True)


def _row(claim: str, number: str, model: str, judged: dict) -> dict:
    return {"paper": papers.GROMOV, "claim": claim, "paper's number": number, "model": model,
            "ours": judged["ours"], "interval": judged["interval"], "verdict": judged["verdict"]}


def curve_rows(curve: pd.DataFrame, model: str) -> list[dict]:
    """The curve claims for one model's stored ``prune`` rows: holds-then-falls per task
    (similarity, unhealed), healing, similarity vs heuristic, and the healed heuristic."""
    c = curve[curve.model == model]
    rows = []
    sim = c[~c.healed.astype(bool) & (c.method == "similarity")]
    for task in TASKS:
        part = sim[(sim.dataset == task) & (sim.metric == "acc")]
        if len(part):
            rows.append(_row(f"{task} accuracy holds, then falls to chance past a model-dependent fraction",
                             papers.GROMOV_HOLDS_THEN_FALLS, model, holds_then_falls(part, evaluation.CHANCE[task])))
    loss = c[(c.dataset == "heldout") & (c.metric == "loss_norm")]
    for claim, number, judge in (
            ("LoRA healing lowers the loss that pruning raised (similarity-chosen block)", papers.GROMOV_HEALING,
             healing_repairs),
            ("before healing, similarity-based pruning beats the simple heuristic on loss",
             papers.GROMOV_SIMILARITY_VS_DEEPEST, similarity_vs_heuristic),
            ("after healing, the simple heuristic nearly matches similarity pruning on loss",
             papers.GROMOV_HEALED_HEURISTIC, healed_heuristic)):
        judged = judge(loss)
        if judged is not None:
            rows.append(_row(claim, number, model, judged))
    return rows


def distance_rows(best: pd.DataFrame, n_layers: int, model: str) -> list[dict]:
    """The deep-end claim for one model's l*(n) table."""
    judged = deep_end(best, n_layers)
    return [] if judged is None else [_row("the most redundant blocks (min angular distance) sit at the deep end",
                                           papers.GROMOV_DEEP_END, model, judged)]


PROTOCOL_COLUMNS = ("limit", "seed", "runtime", "runtime_id")


def protocols(curve: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One model's curve rows split by protocol (items per task, seed, dtype/device, weights
    and versions), as (label, rows); rows stored before these columns existed form one group."""
    cols = [c for c in PROTOCOL_COLUMNS if c in curve.columns]
    if not cols or not len(curve):
        return [("", curve)] if len(curve) else []
    return [(", ".join(f"{c}={v}" for c, v in zip(cols, k if isinstance(k, tuple) else (k,)) if not pd.isna(v)), g)
            for k, g in curve.groupby(cols, dropna=False, sort=True)]


def claim_rows(store: results.ResultStore) -> list[dict]:
    """Every Gromov et al. claim the stored results can test, one row per (claim, model),
    with the columns of ``COLUMNS``."""
    rows = []
    curve = store.table("prune")
    for model in sorted(curve["model"].unique()) if len(curve) else []:
        groups = protocols(curve[curve.model == model])
        for label, part in groups:  # never mix protocols: each is judged on its own
            rows += [r | {"model": model if len(groups) == 1 else f"{model} ({label})"}
                     for r in curve_rows(part, model)]
    dist = store.table("prune_distance")
    for model in sorted(dist["model"].unique()) if len(dist) else []:
        d = dist[dist.model == model]
        rows += distance_rows(best_starts(d), int(d["layer"].max()) + 1, model)
    return rows


def chance_table(curve: pd.DataFrame) -> pd.DataFrame:
    """Per task and unhealed variant of one model's curve (with a ``variant`` column): the
    unpruned accuracy, the fraction from which the curve stays at chance, and the
    holds-then-falls verdict."""
    rows = []
    acc = curve[(curve.metric == "acc") & ~curve.healed.astype(bool)]
    for (task, variant), part in acc.groupby(["dataset", "variant"]):
        judged = holds_then_falls(part, evaluation.CHANCE[task])
        f = chance_fraction(part, evaluation.CHANCE[task])
        base = part[part.n == 0]["value"]
        rows.append({"task": task, "variant": variant,
                     "unpruned accuracy": f"{100 * base.iloc[0]:.1f}%" if len(base) else "",
                     "fraction at chance": "never (in range)" if f is None else f"{f:.2f}",
                     "holds, then falls": judged["verdict"]})
    return pd.DataFrame(rows)


def paper_table() -> pd.DataFrame:
    """The paper's Fig. 2 fractions at which MMLU reaches chance, from ``papers``."""
    return pd.DataFrame([{"family (paper)": k, "MMLU reaches chance at": f"{100 * lo:.0f}%" if lo == hi
                          else f"{100 * lo:.0f}-{100 * hi:.0f}%"}
                         for k, (lo, hi) in papers.GROMOV_MMLU_CHANCE_FRACTION.items()])
