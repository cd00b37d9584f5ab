"""Gromov et al.'s curve claims "QA accuracy holds, then falls to chance past a
model-dependent fraction" (Fig. 2) and "healing delays the collapse", judged on paired
per-item 0/1 rows (table ``prune_items``; ``paired.point_matrix``).

The regions are fixed from the paper's fraction for the model's family, before any data:

    flat   grid fractions f <= lo - BAND_SLACK   (accuracy must hold there)
    fallen grid fractions f >= hi + BAND_SLACK   (accuracy must be at chance there)

with (lo, hi) the family's fraction in ``papers.GROMOV_MMLU_CHANCE_FRACTION``. The family
comes from the model's registry name (``MODEL_FAMILY``), never from its architecture. A
model of a family the paper did not run is held to the paper's range over families. The
fraction at which our curve collapses (``transition``) is described only, never decided on.
Fractions are blocks dropped / layers (0..1); accuracies are proportions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.evidence import papers, power, stats, verdicts
from . import paired

MODEL_FAMILY = {"qwen2.5-coder-1.5b": "Qwen"}  # registry name -> the paper's family (paper: Qwen 7B/14B)
BAND_SLACK = 0.05  # precision of the paper's fractions read off Fig. 2 ("45-55%"): about 1.5 layers of 32
HOLD_MARGIN = paired.HOLD_MARGIN      # "holds": paired change above -5 pp (fixed before this issue)
CHANCE_MARGIN = paired.CHANCE_MARGIN  # "at chance": accuracy within chance ± 10 pp (fixed before this issue)
EPS = 1e-9  # grid fractions are n / L: 18 / 30 must count as 0.60


def band(model: str) -> tuple[float, float, str]:
    """(lo, hi, label): the paper's collapse fraction for the model's family, or its range
    over families for a model of a family it did not run."""
    fam = MODEL_FAMILY.get(model.split(" (")[0])
    if fam is not None:
        lo, hi = papers.GROMOV_MMLU_CHANCE_FRACTION[fam]
        return lo, hi, f"paper ({fam}, MMLU): {lo:.2f}" + ("" if lo == hi else f"-{hi:.2f}")
    table = papers.GROMOV_MMLU_CHANCE_FRACTION.values()
    lo, hi = min(v[0] for v in table), max(v[1] for v in table)
    return lo, hi, f"paper: no figure for this family; its range over families {lo:.2f}-{hi:.2f}"


def regions(fractions: np.ndarray, lo: float, hi: float) -> tuple[list[int], list[int]]:
    """Column indices (>= 1) of the flat and the fallen region of a curve whose column j
    sits at ``fractions[j]`` (column 0: the unpruned model)."""
    flat = [j for j in range(1, len(fractions)) if fractions[j] <= lo - BAND_SLACK + EPS]
    fallen = [j for j in range(1, len(fractions)) if fractions[j] >= hi + BAND_SLACK - EPS]
    return flat, fallen


def _curve(items: pd.DataFrame, dataset: str, chance: float, n_layers: int | None, method: str = "similarity",
           healed: bool = False) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(0/1 matrix [items, K], unpruned model in column 0; fractions [K]; not-testable verdict or None)."""
    w = paired.point_matrix(items, dataset, "acc", method, healed)
    if 0 not in w.columns or len(w.columns) < 2:
        return np.zeros((0, 0)), np.zeros(0), verdicts.not_testable(
            "needs the unpruned model and a pruned point on the same items", cause="no data")
    m = w.to_numpy(float)
    ok, why = stats.informative(int(m[:, 0].sum()), len(m), chance)
    if not ok:
        return m, np.zeros(0), verdicts.not_testable(f"floor: {why}", cause="model at chance")
    return m, np.r_[0.0, paired.fractions(items, w.columns[1:], n_layers)], None


def transition(acc: np.ndarray, fractions: np.ndarray, chance: float) -> float:
    """Described only: the first fraction from which every accuracy of one curve acc [K]
    (index 0 unpruned) is at most half-way from the unpruned accuracy down to chance; NaN
    when it never gets there."""
    low = acc[1:] <= chance + (acc[0] - chance) / 2
    suffix = np.flip(np.logical_and.accumulate(np.flip(low)))
    return float(fractions[1:][suffix.argmax()]) if suffix.any() else float("nan")


def _binding(parts: list[tuple[str, str, str]]) -> str:
    """Intersection-union over points: agrees when every point's 95% verdict agrees;
    disagrees when a point's Holm/Bonferroni-level verdict disagrees; else inconclusive.
    parts: (label, 95% verdict, Holm-level verdict)."""
    for label, _, holm_level in parts:
        if verdicts.word(holm_level) == verdicts.DISAGREES:
            return f"{holm_level} (at {label}, Bonferroni over {len(parts)})"
    if all(verdicts.word(v) == verdicts.AGREES for _, v, _ in parts):
        return f"{verdicts.AGREES}: at all {len(parts)} points"
    label, v, _ = next(p for p in parts if verdicts.word(p[1]) != verdicts.AGREES)
    return f"{v} (at {label})"


def _base(n: int) -> dict:
    return {"ours": "", "interval": "", "n": n, "statistic": "", "mde": "", "n_needed": None}


def _region(items: pd.DataFrame, dataset: str, chance: float, model: str, n_layers: int | None, method: str,
            which: str) -> tuple[np.ndarray, np.ndarray, list[int], tuple[float, float, str], dict | None]:
    """The curve (``_curve``), the column indices of its ``which`` region ("flat" or
    "fallen"), the model's band, and the row to return instead when the claim cannot be
    judged there (None when it can)."""
    lo_f, hi_f, label = band(model)
    m, fr, why = _curve(items, dataset, chance, n_layers, method)
    if why:
        return m, fr, [], (lo_f, hi_f, label), _base(len(m)) | {"verdict": why}
    flat, fallen = regions(fr, lo_f, hi_f)
    idx = flat if which == "flat" else fallen
    if not idx:
        edge = (f"at or below {lo_f - BAND_SLACK:.2f}" if which == "flat" else f"at or above {hi_f + BAND_SLACK:.2f}")
        return m, fr, idx, (lo_f, hi_f, label), _base(len(m)) | {"verdict": verdicts.not_testable(
            f"no grid fraction {edge} ({label})", cause="grid cannot falsify")}
    return m, fr, idx, (lo_f, hi_f, label), None


def holds(items: pd.DataFrame, dataset: str, chance: float, model: str = "", n_layers: int | None = None,
          method: str = "similarity") -> dict:
    """Accuracy holds over the flat region: at every flat point the paired change against
    the unpruned model (Tango) is non-inferior with HOLD_MARGIN (``verdicts.non_inferior``);
    agrees when all points agree, disagrees when one disagrees at the Bonferroni level."""
    m, fr, flat, (lo_f, _, label), untested = _region(items, dataset, chance, model, n_layers, method, "flat")
    if untested:
        return untested
    conf = stats.holm_confidence(len(flat))
    parts, texts = [], []
    for j in flat:
        d, lo, hi = stats.paired_proportion(m[:, 0], m[:, j])
        _, alo, ahi = stats.paired_proportion(m[:, 0], m[:, j], conf)
        parts.append((f"{fr[j]:.2f}", verdicts.non_inferior(lo, hi, HOLD_MARGIN),
                      verdicts.non_inferior(alo, ahi, HOLD_MARGIN)))
        texts.append(f"{fr[j]:.2f}: Δ {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    worst = min(flat, key=lambda j: m[:, j].mean())
    pw = power.paired_binary_columns(m[:, 0], m[:, worst], HOLD_MARGIN)
    verdict = _binding(parts)
    if verdicts.word(verdict) == verdicts.INCONCLUSIVE and pw["power_note"]:
        verdict += "; " + pw["power_note"]
    margins = paired.margin_matrix(items, dataset, method)
    beside = ""
    if margins is not None and margins.shape == m.shape:
        beside = stats.secondary(margins.iloc[:, 0], margins.iloc[:, worst],
                                 f"f={fr[worst]:.2f} (lowest flat point): gold choice's margin vs unpruned")
    return {"verdict": verdict, "n": pw["n"], "statistic": pw["statistic"] + " vs unpruned, per flat point",
            "mde": pw["mde"], "n_needed": pw["n_needed"], "secondary": beside,
            "ours": f"flat region f <= {lo_f - BAND_SLACK:.2f} ({label})",
            "interval": "paired Δ vs unpruned: " + "; ".join(texts) + f"; margin -{100 * HOLD_MARGIN:.0f} pp"}


def falls(items: pd.DataFrame, dataset: str, chance: float, model: str = "", n_layers: int | None = None,
          method: str = "similarity") -> dict:
    """Accuracy is at chance over the fallen region: every fallen point's Wilson interval
    lies within chance ± CHANCE_MARGIN (agrees); disagrees when one point's Bonferroni-level
    interval lies wholly above chance + CHANCE_MARGIN; else inconclusive."""
    m, fr, fallen, (_, hi_f, label), untested = _region(items, dataset, chance, model, n_layers, method, "fallen")
    if untested:
        return untested
    conf, n = stats.holm_confidence(len(fallen)), len(m)
    inside, above, texts = [], [], []
    for j in fallen:
        k = int(m[:, j].sum())
        wlo, whi = evaluation.wilson_interval(k, n)
        alo, _ = evaluation.wilson_interval(k, n, conf)
        inside.append(wlo >= chance - CHANCE_MARGIN and whi <= chance + CHANCE_MARGIN)
        above.append(alo > chance + CHANCE_MARGIN)
        texts.append(f"{fr[j]:.2f}: {100 * k / n:.1f}% [{100 * wlo:.1f}, {100 * whi:.1f}]")
    verdict = (f"{verdicts.DISAGREES}: above chance + {100 * CHANCE_MARGIN:.0f} pp (Bonferroni over {len(fallen)})"
               if any(above) else verdicts.AGREES if all(inside) else
               f"{verdicts.INCONCLUSIVE}: an interval reaches beyond chance ± {100 * CHANCE_MARGIN:.0f} pp")
    p = float(np.clip(chance, 0.05, 0.95))
    mde = 2.8 * np.sqrt(p * (1 - p) / n)  # one-proportion normal approximation at 80% power
    need = int(np.ceil((2.8 / CHANCE_MARGIN) ** 2 * p * (1 - p)))
    if verdicts.word(verdict) == verdicts.INCONCLUSIVE:
        verdict += "; " + power.note(n, mde, need, CHANCE_MARGIN)
    return {"verdict": verdict, "n": n, "statistic": "Wilson interval, accuracy, per fallen point",
            "mde": f"{100 * mde:.3g} pp", "n_needed": need,
            "ours": f"fallen region f >= {hi_f + BAND_SLACK:.2f} ({label})",
            "interval": "; ".join(texts) + f" vs {100 * chance:.0f}% ± {100 * CHANCE_MARGIN:.0f} pp"}


def holds_then_falls(items: pd.DataFrame, dataset: str, chance: float, model: str = "", n_layers: int | None = None,
                     method: str = "similarity", healed: bool = False) -> dict:
    """Both parts (``holds``, ``falls``) joined by ``verdicts.both``; the observed transition
    is described beside the paper's fraction. Returns {verdict, ours, interval, transition,
    n, statistic, mde, n_needed}; the power columns are those of the holds part."""
    h, f = holds(items, dataset, chance, model, n_layers, method), falls(items, dataset, chance, model, n_layers, method)
    m, fr, why = _curve(items, dataset, chance, n_layers, method, healed)
    t = float("nan") if why else transition(m.mean(0), fr, chance)
    desc = "" if why else (f"unpruned {100 * m[:, 0].mean():.1f}% of {len(m)} items; observed: "
                           + ("never falls half-way to chance" if np.isnan(t) else f"half-way to chance from {t:.2f}")
                           + " (described, not decided)")
    return {"verdict": verdicts.both(h["verdict"], f["verdict"]),
            "ours": "; ".join(s for s in (desc, h["ours"], f["ours"]) if s),
            "interval": f"holds ({verdicts.word(h['verdict'])}): {h['interval'] or h['verdict']}; falls to chance "
                        f"({verdicts.word(f['verdict'])}): {f['interval'] or f['verdict']}",
            "transition": None if why else t,
            "n": h["n"], "statistic": h["statistic"], "mde": h["mde"], "n_needed": h["n_needed"]}


def healing_delays_collapse(items: pd.DataFrame, dataset: str, chance: float, model: str = "",
                            n_layers: int | None = None) -> dict:
    """Healing delays the collapse: at the healed fractions past the flat region, healed
    minus unhealed accuracy per item; one fraction: Tango's paired interval; several: paired
    t over items of the per-item mean difference. ``verdicts.direction(+1)`` (no number)."""
    raw, heal = paired.point_matrix(items, dataset, "acc"), paired.point_matrix(items, dataset, "acc", healed=True)
    if 0 not in raw.columns or 0 not in heal.columns or len(heal.columns) < 2:
        return _base(0) | {"verdict": verdicts.not_testable("no healed point", cause="no data")}
    common = raw.index.intersection(heal.index)
    ok, why = stats.informative(int(raw.loc[common, 0].sum()), len(common), chance)
    if not ok:
        return _base(len(common)) | {"verdict": verdicts.not_testable(f"floor: {why}", cause="model at chance")}
    lo_f, _, label = band(model)
    ns = [n for n in heal.columns if n in raw.columns and n > 0
          and paired.fractions(items, [n], n_layers)[0] > lo_f - BAND_SLACK + EPS]
    if not ns:
        return _base(len(common)) | {"verdict": verdicts.not_testable(
            f"no healed fraction past the flat region f <= {lo_f - BAND_SLACK:.2f} ({label})",
            cause="grid cannot falsify")}
    r, h = raw.loc[common, ns].to_numpy(float), heal.loc[common, ns].to_numpy(float)
    if len(ns) == 1:
        d, lo, hi = stats.paired_proportion(r[:, 0], h[:, 0])
        pw = power.paired_binary_columns(r[:, 0], h[:, 0], None)
        stat = "paired Tango score interval, accuracy, healed − unhealed"
        mde, need, pnote = pw["mde"], None, pw["power_note"]
    else:
        a, b = r.mean(1), h.mean(1)
        d, lo, hi = stats.paired_t(a, b)
        sd = float(np.std(b - a, ddof=1))
        m_ = power.mde_paired_t(len(a), sd)
        stat = f"paired t over items of the mean healed − unhealed accuracy over {len(ns)} fractions"
        mde, need = ("" if np.isnan(m_) else f"{100 * m_:.3g} pp"), None
        pnote = power.note(len(a), m_, None)
    verdict = verdicts.direction(lo, hi, +1, power_note=pnote)
    fr = paired.fractions(items, ns, n_layers)
    return {"verdict": verdict, "n": len(common), "statistic": stat, "mde": mde, "n_needed": need,
            "ours": f"healed − unhealed accuracy at f = {', '.join(f'{x:.2f}' for x in fr)}: {100 * d:+.1f} pp "
                    f"({len(common)} items)",
            "interval": f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pp (paired per item)"}
