"""How well each criterion ranks the spans (l, n) by their true cost, and the claims of two
peer papers judged on it.

Inputs are per-unit arrays [units, len(ns), L] (NaN where l > L - n): the truth's units are
held-out documents (or MMLU items), the criteria's are the same documents. For one n the
m = L - n + 1 starts l are ranked by the mean over units of the criterion and of the truth:

* Spearman and Kendall (tau-b) correlation over l between the two means (positive: the
  criterion ranks cheap spans low, as every criterion's "lower = more droppable" intends);
* regret: the true cost of the span the criterion picks (its argmin over l) minus the
  cheapest span's true cost (>= 0; 0 = it picked the best span).

Intervals: percentile bootstrap over units, both maps recomputed from the resampled
per-unit values (one resample of the documents for both when they are the same documents,
``paired``; independent resamples of items and documents for MMLU), so the pick, the best
span and the correlation all vary with the data. Seeded (``numpy.random.default_rng``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from layerlab.core.evidence import papers, stats, verdicts
from .criteria import CRITERIA, LABELS

N_BOOT = 1000
COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]
SIMILARITY = ("angular_last", "block_influence")  # the cosine-type criteria Hinostroza et al. test
STABLE = 0.9  # median Spearman of a resampled truth map with the map itself, below which "weak" is untestable


def unit_array(frame: pd.DataFrame, ns, n_layers: int, unit: str = "doc") -> np.ndarray:
    """[units, len(ns), L] values from tidy rows (``unit``, n, layer, value); NaN where absent."""
    ns = list(ns)
    frame = frame[frame["n"].isin(ns)]
    ids = np.sort(frame[unit].unique())
    arr = np.full((len(ids), len(ns), n_layers), np.nan)
    arr[np.searchsorted(ids, frame[unit].to_numpy()), [ns.index(n) for n in frame["n"]],
        frame["layer"].to_numpy(int)] = frame["value"].to_numpy(float)
    return arr


def criteria_arrays(frame: pd.DataFrame, ns, n_layers: int) -> dict[str, np.ndarray]:
    """criterion -> [docs, len(ns), L] from ``criteria.stored_criteria`` rows."""
    return {c: unit_array(frame[frame.criterion == c], ns, n_layers) for c in CRITERIA if (frame.criterion == c).any()}


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho over the last axis (average ranks for ties, as scipy); NaN where x or
    y is constant. x, y: [..., m]."""
    return _pearson(sps.rankdata(x, axis=-1), sps.rankdata(y, axis=-1))


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b over the last axis (scipy.stats.kendalltau's default); NaN where x or
    y is constant. x, y: [..., m]."""
    i, j = np.triu_indices(x.shape[-1], 1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    pairs = len(i)
    den = np.sqrt((pairs - (sx == 0).sum(-1)) * (pairs - (sy == 0).sum(-1)).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sx * sy).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def resample_counts(units: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, units] multinomial counts: each row one bootstrap resample of the units."""
    return rng.multinomial(units, np.full(units, 1 / units), size=n_boot)


def span_stats(truth: np.ndarray, crit: np.ndarray, j: int, counts_t: np.ndarray,
               counts_c: np.ndarray) -> dict:
    """One criterion at block count index j: point values (means over units) and bootstrap
    draws of Spearman, Kendall, regret and the pick. truth, crit: [units, len(ns), L];
    counts_*: [n_boot, units] resamples (the same array for paired units)."""
    m = int((~np.isnan(truth[0, j])).sum())
    t, c = truth[:, j, :m], crit[:, j, :m]
    tm, cm = t.mean(0), c.mean(0)
    td, cd = counts_t @ t / t.shape[0], counts_c @ c / c.shape[0]  # [n_boot, m]
    pick, picks = int(np.argmin(cm)), cd.argmin(-1)
    rows = np.arange(len(td))
    return {"m": m, "truth": tm, "crit": cm, "truth_draws": td, "crit_draws": cd, "pick": pick,
            "best": int(np.argmin(tm)), "picks": picks,
            "spearman": float(sps.spearmanr(cm, tm)[0]) if np.ptp(cm) > 0 and np.ptp(tm) > 0 else np.nan,
            "kendall": float(sps.kendalltau(cm, tm)[0]) if np.ptp(cm) > 0 and np.ptp(tm) > 0 else np.nan,
            "regret": float(tm[pick] - tm.min()),
            "spearman_draws": spearman(cd, td), "kendall_draws": kendall(cd, td),
            "truth_stability": _stability(td, tm), "crit_stability": _stability(cd, cm),
            "regret_draws": td[rows, picks] - td.min(-1)}


def _stability(draws: np.ndarray, point: np.ndarray) -> float:
    """Median over draws of Spearman(draw, point) (1.0 for a constant point map: no ranking to lose)."""
    if np.ptp(point) == 0:
        return 1.0
    return float(np.nanmedian(spearman(draws, np.broadcast_to(point, draws.shape))))


def interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (NaN draws left out; NaN if all are)."""
    d = draws[~np.isnan(draws)]
    if not len(d):
        return float("nan"), float("nan")
    lo, hi = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def _counts(truth: np.ndarray, crit_units: int, n_boot: int, seed: int, paired: bool):
    rng = np.random.default_rng(seed)
    if paired and truth.shape[0] != crit_units:
        raise ValueError(f"paired: truth has {truth.shape[0]} units, the criteria {crit_units}")
    counts_t = resample_counts(truth.shape[0], n_boot, rng)
    return counts_t, counts_t if paired else resample_counts(crit_units, n_boot, rng)


def agreement(truth: np.ndarray, crits: dict[str, np.ndarray], ns, n_boot: int = N_BOOT, seed: int = 0,
              paired: bool = True, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (criterion, n): starts (m), units, spearman, kendall and regret with
    ``confidence`` percentile intervals (``_lo``, ``_hi``), undefined (share of draws where
    a correlation is undefined), truth_stability and crit_stability (module docstring), pick
    (the criterion's l) and best (the truth's cheapest l)."""
    some = next(iter(crits.values()))
    counts_t, counts_c = _counts(truth, some.shape[0], n_boot, seed, paired)
    rows = []
    for name, crit in crits.items():
        for j, n in enumerate(ns):
            s = span_stats(truth, crit, j, counts_t, counts_c)
            row = {"criterion": name, "label": LABELS.get(name, name), "n": n, "starts": s["m"],
                   "units": truth.shape[0], "pick": s["pick"], "best": s["best"]}
            for stat in ("spearman", "kendall", "regret"):
                row[stat] = s[stat]
                row[f"{stat}_lo"], row[f"{stat}_hi"] = interval(s[f"{stat}_draws"], confidence)
            row["undefined"] = stats.undefined_share(s["spearman_draws"])
            row["truth_stability"], row["crit_stability"] = s["truth_stability"], s["crit_stability"]
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- claims

def _row(paper: str, claim: str, number: str, model: str, ours: str, iv: str, verdict: str) -> dict:
    return {"paper": paper, "claim": claim, "paper's number": number, "model": model, "ours": ours,
            "interval": iv, "verdict": verdict}


def hinostroza_rows(truth: np.ndarray, crits: dict[str, np.ndarray], ns, model: str, truth_name: str,
                    n_boot: int = N_BOOT, seed: int = 0, paired: bool = True) -> list[dict]:
    """Hinostroza et al. 2026: cosine-type criteria correlate only weakly to moderately
    with the real cost. Per cosine-type criterion (``SIMILARITY``) and n: Spearman over l
    with the truth; agrees if the interval lies below ``papers.HINOSTROZA_STRONG`` (0.7),
    disagrees if it lies at or above it; "agrees" needs a stable truth ranking
    (``STABLE``), else it is not testable (noise alone attenuates a correlation).
    Multiplicity: the claim is judged on every (criterion, n) row at once, so each interval
    is at the family-wise confidence ``stats.holm_confidence(rows)`` (Bonferroni: Holm's
    first step, the most conservative)."""
    names = [c for c in SIMILARITY if c in crits]
    conf = stats.holm_confidence(len(names) * len(ns))
    counts_t, counts_c = _counts(truth, crits[names[0]].shape[0], n_boot, seed, paired) if names else (None, None)
    rows = []
    for name in names:
        for j, n in enumerate(ns):
            s = span_stats(truth, crits[name], j, counts_t, counts_c)
            lo, hi = interval(s["spearman_draws"], conf)
            undefined = stats.undefined_share(s["spearman_draws"])
            verdict = (verdicts.not_testable(f"{100 * undefined:.0f}% of draws have a constant map", cause="truth too noisy")
                       if undefined > stats.MAX_UNDEFINED else verdicts.below(lo, hi, papers.HINOSTROZA_STRONG))
            if verdicts.word(verdict) == verdicts.AGREES and s["truth_stability"] < STABLE:
                verdict = verdicts.not_testable(f"the true-cost ranking of the spans is unstable under resampling "
                                                f"(stability {s['truth_stability']:.2f} < {STABLE}): a weak "
                                                "correlation may be noise", cause="truth too noisy")
            rows.append(_row(papers.HINOSTROZA, f"{LABELS[name]} vs true cost ({truth_name}), n = {n}: "
                             f"weak-to-moderate rank correlation", papers.HINOSTROZA_WEAK_CORRELATION, model,
                             f"Spearman {s['spearman']:+.2f} over {s['m']} starts, {truth.shape[0]} units "
                             f"(truth stability {s['truth_stability']:.2f})",
                             f"[{lo:+.2f}, {hi:+.2f}] vs {papers.HINOSTROZA_STRONG} ({100 * conf:.1f}% bootstrap, "
                             f"family-wise over {len(names) * len(ns)})", verdict))
    return rows


def lu_rows(truth: np.ndarray, crits: dict[str, np.ndarray], ns, model: str, truth_name: str,
            n_boot: int = N_BOOT, seed: int = 0, paired: bool = True) -> list[dict]:
    """Lu et al. 2024: dropping the last n layers beats similarity-chosen spans. Per n: the
    true cost of the last n blocks minus that of the Gromov pick (argmin of
    ``angular_last``), bootstrap over units with the pick recomputed per draw; agrees if
    the interval lies below 0. Lu et al. measured after fine-tuning the head and last
    blocks; this is the unhealed cost. Family-wise intervals over the n (Bonferroni).
    A direction test (``verdicts.direction``): the paper states no size of the advantage."""
    if "angular_last" not in crits:
        return []
    conf = stats.holm_confidence(len(ns))
    counts_t, counts_c = _counts(truth, crits["angular_last"].shape[0], n_boot, seed, paired)
    rows = []
    for j, n in enumerate(ns):
        s = span_stats(truth, crits["angular_last"], j, counts_t, counts_c)
        last = s["m"] - 1  # l = L - n
        diff = float(s["truth"][last] - s["truth"][s["pick"]])
        draws = s["truth_draws"][:, last] - s["truth_draws"][np.arange(len(s["picks"])), s["picks"]]
        lo, hi = interval(draws, conf)
        same = f"; the Gromov pick is l = {s['pick']}" + (" (the last n: the same span)" if s["pick"] == last else "")
        rows.append(_row(papers.LU, f"dropping the last n beats the similarity-chosen span ({truth_name}, unhealed), "
                         f"n = {n}", papers.LU_REVERSE_ORDER, model,
                         f"cost(last n) - cost(Gromov pick) = {diff:+.4f}{same}",
                         f"[{lo:+.4f}, {hi:+.4f}] vs 0 ({100 * conf:.1f}% bootstrap over {truth.shape[0]} units, "
                         f"family-wise over {len(ns)} n)",
                         # a direction claim: a tie (the pick is the last n in every draw: [0, 0]) admits both
                         verdicts.direction(lo, hi, -1, unit="", scale=1.0)))
    return rows


# ---------------------------------------------------------------------------- charts

def map_frame(truth: np.ndarray, crits: dict[str, np.ndarray], ns, truth_name: str = "true cost") -> pd.DataFrame:
    """Tidy rows (map, n, layer, value, rescaled, marked) of the mean truth and criterion
    maps; ``rescaled`` maps each (map, n) row to [0, 1]; ``marked`` flags its argmin."""
    rows = []
    for name, arr in [(truth_name, truth), *((LABELS.get(c, c), a) for c, a in crits.items())]:
        mean = arr.mean(0)
        for j, n in enumerate(ns):
            row = mean[j]
            ok = ~np.isnan(row)
            lo, hi = row[ok].min(), row[ok].max()
            best = int(np.nanargmin(row))
            rows += [{"map": name, "n": n, "layer": layer, "value": float(row[layer]),
                      "rescaled": float((row[layer] - lo) / (hi - lo)) if hi > lo else 0.0, "marked": layer == best}
                     for layer in np.nonzero(ok)[0]]
    return pd.DataFrame(rows)


def heatmaps(frame: pd.DataFrame, title: str):
    """One heat map per map (truth first, then each criterion) over (l, n), colour = the
    row-rescaled value (dark = low = droppable), the argmin of each row marked in red."""
    import altair as alt

    order = list(dict.fromkeys(frame["map"]))
    base = alt.Chart().encode(x=alt.X("layer:O", title="starting layer l"),
                              y=alt.Y("n:O", title="n", sort="descending"))
    rect = base.mark_rect().encode(color=alt.Color("rescaled:Q", scale=alt.Scale(scheme="viridis"),
                                                   title="row-rescaled"),
                                   tooltip=["map", "n", "layer", alt.Tooltip("value:Q", format=".4f")])
    star = base.transform_filter("datum.marked").mark_point(shape="diamond", color="red", filled=True, size=50)
    return alt.layer(rect, star, data=frame).properties(width=330, height=90).facet(
        facet=alt.Facet("map:N", sort=order, title=None), columns=2).properties(title=title)


def interval_chart(table: pd.DataFrame, stat: str, title: str):
    """``stat`` (spearman, kendall or regret) per criterion and n with its interval."""
    import altair as alt

    frame = table.assign(lo=table[f"{stat}_lo"], hi=table[f"{stat}_hi"])
    enc = dict(y=alt.Y("label:N", title=None), color=alt.Color("n:O", title="n"), yOffset="n:O")
    pts = alt.Chart().mark_point(filled=True).encode(x=alt.X(f"{stat}:Q", title=stat), **enc,
                                                     tooltip=["label", "n", "pick", "best",
                                                              alt.Tooltip(f"{stat}:Q", format=".4f")])
    bars = alt.Chart().mark_rule().encode(x="lo:Q", x2="hi:Q", **enc)
    return alt.layer(bars, pts, data=frame).properties(width=420, height=alt.Step(9), title=title)


def evaluate(crit_frame: pd.DataFrame, truth_frame: pd.DataFrame, ns, n_layers: int, model: str, truth_name: str,
             unit: str = "doc", paired: bool = True, n_boot: int = N_BOOT,
             seed: int = 0) -> tuple[pd.DataFrame, list[dict], pd.DataFrame]:
    """For one truth (held-out cost per ``doc``, paired with the criteria's documents, or
    MMLU drop per ``item``, resampled independently): the agreement table (with truth and
    model columns), the two peer claims' rows, and the maps for ``heatmaps``."""
    crits = criteria_arrays(crit_frame, ns, n_layers)
    t = unit_array(truth_frame, ns, n_layers, unit)
    table = agreement(t, crits, ns, n_boot, seed, paired).assign(truth=truth_name, model=model)
    claims = (hinostroza_rows(t, crits, ns, model, truth_name, n_boot, seed, paired)
              + lu_rows(t, crits, ns, model, truth_name, n_boot, seed, paired))
    return table, claims, map_frame(t, crits, ns, f"true cost ({truth_name})")
