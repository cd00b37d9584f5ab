"""Paired tests on the stored per-item 0/1 accuracies of the Painters variants.

Primary statistic: accuracy (each benchmark's main metric: acc; acc_norm for HellaSwag), in
proportions (pp after x 100). A comparison pools the items of the informative benchmarks
(``stats.informative`` on the unmodified model), concatenated: with equal items per benchmark
the pooled difference is the benchmarks' mean difference, and the pooled score statistic is
the stratified (matched-pairs Mantel-Haenszel) one.

- Two single schedules: Tango's score interval on the pooled 2x2 counts (``stats.tango_counts``,
  half-item continuity correction); its p-value at 0 is McNemar's with the same correction, so
  p < 0.05 exactly when the interval excludes 0.
- Random order (S order seeds) on a side: the order is a sampled factor, so a two-level paired
  t: d_i = seed-mean of y(A) - y(B) per item, se^2 = s^2(d_i)/N + s^2(A_s)/S (A_s: seed s's
  pooled accuracy), Welch-Satterthwaite df. Item noise enters twice: conservative, and small.
- A claim made of parts ("every part holds", each oriented so that the claim says diff > 0):
  agrees when every part's 95% interval excludes 0 (intersection-union test: no correction);
  disagrees when Holm over the m parts' two-sided p-values rejects a part whose estimate is
  reversed; else inconclusive, with the weakest part's power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.evidence import power, stats, verdicts

Label = tuple  # (variant, affected, loops); the unmodified model is BASE
BASE: Label = ("base", 0, 1)
Z80 = 0.8416212335729143  # standard normal quantile at 80%: MDE = (z_crit + Z80) * se
ALPHA = 0.05


def _norm_sf(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2))


class Scores:
    """Per-item 0/1 scores from one model's item rows (``grid.ITEMS``: dataset, item, value,
    variant, affected, loops, order_seed): per benchmark, label -> [seeds, items] array, the
    items in the unmodified model's order (a label missing an item of the base is left out)."""

    def __init__(self, items: pd.DataFrame, chance: dict | None = None):
        self.chance = evaluation.CHANCE if chance is None else chance
        self.mats: dict[str, dict[Label, np.ndarray]] = {}
        # the continuous score of the same items (the gold choice's margin over the best wrong one,
        # nats), shown beside each accuracy comparison and never judged (#29); None where not stored
        self.margins: Scores | None = None
        if not len(items):
            return
        if "margin" in items and np.isfinite(items["margin"].to_numpy(float)).any():
            self.margins = Scores(items.assign(value=items["margin"]).drop(columns="margin"), self.chance)
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
            self.mats[ds] = mats

    def floor(self, ds: str) -> tuple[bool, str]:
        """(informative, reason): ``stats.informative`` on the unmodified model's items of ``ds``."""
        m = self.mats[ds][BASE]
        return stats.informative(int(round(m.mean() * m.shape[1])), m.shape[1], self.chance[ds])

    def informative(self, ds: str) -> bool:
        return self.floor(ds)[0]

    def has(self, ds: str, label: Label) -> bool:
        return ds in self.mats and label in self.mats[ds]

    def ran(self, label: Label) -> bool:
        """``label`` was run on some benchmark."""
        return any(label in m for m in self.mats.values())

    def labels(self) -> set[Label]:
        return {lab for m in self.mats.values() for lab in m}

    def benchmarks(self, labels, exclude=()) -> list[str]:
        """Informative benchmarks (not in ``exclude``) on which every label was run."""
        return [d for d in sorted(self.mats) if d not in exclude and self.informative(d)
                and all(self.has(d, lab) for lab in labels)]

    def pooled(self, label: Label, bench: list[str]) -> np.ndarray:
        """[seeds, items] of ``label`` over ``bench`` concatenated (the seeds every benchmark has)."""
        mats = [self.mats[d][label] for d in bench]
        s = min(m.shape[0] for m in mats)
        return np.concatenate([m[:s] for m in mats], axis=1)

    def chance_of(self, bench: list[str]) -> np.ndarray:
        """[items]: the chance level of each pooled item's benchmark."""
        return np.concatenate([np.full(self.mats[d][BASE].shape[1], self.chance[d]) for d in bench])


@dataclass
class Part:
    """One oriented comparison of a claim: ``diff`` > 0 is the claim's side. diff/lo/hi in the
    statistic's units (proportions for accuracy), p two-sided at 0, mde at 80% power."""

    name: str
    diff: float
    lo: float
    hi: float
    p: float
    n: int
    mde: float
    statistic: str
    unit: str = "pp"
    scale: float = 100.0
    secondary: str = ""  # the same comparison on the items' margins (``stats.secondary``), never judged

    def text(self) -> str:
        f = lambda x: f"{self.scale * x:+.3g}"  # noqa: E731
        return f"{self.name}: {f(self.diff)} {self.unit} [{f(self.lo)}, {f(self.hi)}], p = {self.p:.2g}"


def tango(better: np.ndarray, worse: np.ndarray) -> tuple[float, float, float, float, float]:
    """better, worse: [items] 0/1. (diff better - worse, lo, hi, McNemar p at 0 with the
    half-item correction, discordant share)."""
    a, b = np.asarray(worse, bool), np.asarray(better, bool)
    gained, lost = int((~a & b).sum()), int((a & ~b).sum())
    d, lo, hi = stats.tango_counts(int((a & b).sum()), lost, gained, int((~a & ~b).sum()))
    disc = gained + lost
    z0 = max(abs(gained - lost) - stats.CONTINUITY, 0.0) / math.sqrt(disc) if disc else 0.0
    return float(d), float(lo), float(hi), min(1.0, 2 * _norm_sf(z0)), disc / max(len(a), 1)


def t_parts(components: list[tuple[float, int]], mean: float) -> tuple[float, float, float, float, float]:
    """A t interval of ``mean`` from variance components [(variance of the mean, df)]
    (Welch-Satterthwaite df): (lo, hi, two-sided p at 0, se, df). NaN limits when se is 0."""
    from scipy.stats import t

    comps = [(v, df) for v, df in components if df > 0]
    var = sum(v for v, _ in comps)
    if not var > 0:
        return float("nan"), float("nan"), float("nan"), 0.0, float("nan")
    df = var * var / sum(v * v / df for v, df in comps if v > 0)
    se = math.sqrt(var)
    half = float(t.ppf(0.975, df)) * se
    return mean - half, mean + half, float(2 * t.sf(abs(mean) / se, df)), se, df


def mean_t(x: np.ndarray) -> tuple[float, float, float, float, float]:
    """One-sample t over values [n]: (mean, lo, hi, p at 0, mde at 80% power)."""
    x = np.asarray(x, float)
    m = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return m, float("nan"), float("nan"), float("nan"), float("nan")
    lo, hi, p, _, _ = t_parts([(float(x.var(ddof=1)) / len(x), len(x) - 1)], m)
    return m, lo, hi, p, power.mde_paired_t(len(x), float(x.std(ddof=1)))


def two_level(better: np.ndarray, worse: np.ndarray) -> tuple[float, float, float, float, float]:
    """better, worse: [seeds, items] (either may have one seed). Two-level paired t:
    (diff, lo, hi, p, mde): item variance of the seed-averaged differences plus each seeded
    side's seed-to-seed variance of its pooled accuracy."""
    from scipy.stats import t

    d = better.mean(0) - worse.mean(0)
    n = len(d)
    comps = [(float(d.var(ddof=1)) / n, n - 1)]
    for side in (better, worse):
        if side.shape[0] > 1:
            comps.append((float(side.mean(1).var(ddof=1)) / side.shape[0], side.shape[0] - 1))
    m = float(d.mean())
    lo, hi, p, se, df = t_parts(comps, m)
    mde = (float(t.ppf(0.975, df)) + Z80) * se if se > 0 else float("nan")
    return m, lo, hi, p, mde


def compare(scores: Scores, better: Label, worse: Label, bench: list[str], name: str) -> Part:
    """The part "``better`` scores above ``worse``" on the pooled items of ``bench``."""
    x, y = scores.pooled(better, bench), scores.pooled(worse, bench)
    if x.shape[0] == 1 and y.shape[0] == 1:
        d, lo, hi, p, disc = tango(x[0], y[0])
        return Part(name, d, lo, hi, p, x.shape[1], power.mde_paired_binary(x.shape[1], disc),
                    "paired Tango score interval", secondary=_margin_beside(scores, better, worse, bench, name))
    d, lo, hi, p, mde = two_level(x, y)
    return Part(name, d, lo, hi, p, x.shape[1], mde, f"two-level paired t ({max(x.shape[0], y.shape[0])} order seeds)",
                secondary=_margin_beside(scores, better, worse, bench, name))


def _margin_beside(scores: Scores, better: Label, worse: Label, bench: list[str], name: str) -> str:
    """``compare``'s comparison on the margins (seed means per item, paired t), or ""."""
    m = scores.margins
    if m is None or not all(m.has(d, lab) for d in bench for lab in (better, worse)):
        return ""
    x, y = m.pooled(better, bench).mean(0), m.pooled(worse, bench).mean(0)
    return stats.secondary(y, x, f"{name}: gold choice's margin")


def excess_over_chance(k, n, chance, confidence: float = 0.95) -> tuple[float, float, float, float, float]:
    """The common excess delta of accuracy over chance across benchmarks j (k_j of n_j correct,
    chance c_j: p_j = c_j + delta), with the stratified Wilson score interval (the score
    statistic sum(k - n(c + delta)) / sqrt(sum n(c + delta)(1 - c - delta)) inverted by bisection):
    (delta, lo, hi, p at 0, mde at 80% power)."""
    from scipy.stats import norm

    k, n, c = (np.atleast_1d(np.asarray(v, float)) for v in (k, n, chance))
    z = float(norm.ppf(0.5 + confidence / 2))

    def score(delta: float) -> float:
        q = np.clip(c + delta, 1e-12, 1 - 1e-12)
        return float((k - n * q).sum() / math.sqrt((n * q * (1 - q)).sum()))

    lo_b, hi_b = -float(c.min()), 1.0 - float(c.max())
    est = float(np.clip((k - n * c).sum() / n.sum(), lo_b, hi_b))

    def cross(target: float, a: float, b: float) -> float:
        for _ in range(60):  # score decreases in delta
            mid = (a + b) / 2
            a, b = (mid, b) if score(mid) > target else (a, mid)
        return (a + b) / 2

    lo, hi = cross(z, lo_b, est), cross(-z, est, hi_b)
    q = np.clip(k / n, 0, 1)
    se = math.sqrt((n * q * (1 - q)).sum()) / n.sum()
    return est, lo, hi, min(1.0, 2 * _norm_sf(abs(score(0.0)))), (z + Z80) * se if se > 0 else float("nan")


def union(parts: list[Part], alpha: float = ALPHA) -> str:
    """The verdict of a claim whose parts must all hold (each part claims diff > 0). One part:
    ``verdicts.direction``; several: intersection-union for agrees, Holm for disagrees."""
    weakest = max(parts, key=lambda q: (not q.lo > 0, q.p if not math.isnan(q.p) else 2.0))
    note = power.note(weakest.n, weakest.mde, None, unit=weakest.unit, scale=weakest.scale)
    if len(parts) == 1:
        p = parts[0]
        return verdicts.direction(p.lo, p.hi, power_note=note, unit=p.unit, scale=p.scale)
    head = "direction only (the paper states no number)"
    if all(q.lo > 0 for q in parts):
        return f"{verdicts.AGREES}: {head}: every part's 95% interval excludes 0 (intersection-union test)"
    adjusted = stats.holm([1.0 if math.isnan(q.p) else q.p for q in parts])
    reversed_ = [(a, q) for a, q in zip(adjusted, parts) if q.diff < 0 and a < alpha]
    if reversed_:
        a, q = min(reversed_, key=lambda x: x[0])
        return (f"{verdicts.DISAGREES}: {head}: {q.name} reversed ({q.scale * q.diff:+.3g} {q.unit}, "
                f"Holm p = {a:.2g} over {len(parts)} parts)")
    return (f"{verdicts.INCONCLUSIVE}: {head}: not every part excludes 0, none reversed after Holm over "
            f"{len(parts)} parts; weakest {weakest.name}" + (f"; {note}" if note else ""))


def columns(parts: list[Part], bench: list[str]) -> dict:
    """The power keys of a row judged on ``parts``: n (pooled items), statistic, mde (the
    weakest part's, text), n_needed (None: direction tests have no effect to detect)."""
    weakest = max(parts, key=lambda q: q.mde if not math.isnan(q.mde) else math.inf)
    kinds = sorted({q.statistic for q in parts})
    stat = f"{'; '.join(kinds)}, accuracy pooled over {len(bench)} benchmark(s)"
    if len(parts) > 1:
        stat += f"; intersection-union / Holm over {len(parts)} parts"
    mde = "" if math.isnan(weakest.mde) else f"{weakest.scale * weakest.mde:.3g} {weakest.unit}".rstrip()
    return {"n": max(q.n for q in parts), "statistic": stat, "mde": mde, "n_needed": None,
            "secondary": "; ".join(q.secondary for q in parts if q.secondary)}
