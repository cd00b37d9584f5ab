"""Gromov et al.'s claims judged on per-item results: paired differences against the
unpruned model (or between methods) on the same items, equivalence margins stated here in
advance, Holm where a verdict is a union over n, bootstrap intervals over items.

Input: the per-item rows of one model and protocol (table ``prune_items``): dataset,
metric, item (lm-eval doc_id, or the held-out chunk index), value (0/1 for ``acc``, the
chunk's loss / log V for ``loss_norm``), method ("similarity" | "deepest"), n (blocks
dropped; 0 = unpruned, method "similarity"), healed. Items are paired by (dataset, item).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.evidence import stats, verdicts
from layerlab.core.evidence import papers

HOLD_MARGIN = 0.05    # "holds": the paired change in accuracy stays above -5 pp at every flat point
CHANCE_MARGIN = 0.10  # "falls to chance": the accuracy interval lies within chance ± 10 pp
N_BOOT = 1000
MODEL_FAMILY = {"qwen2.5-coder-1.5b": "Qwen"}  # our models of a family the paper's Fig. 2 reports


def point_matrix(items: pd.DataFrame, dataset: str, metric: str, method: str = "similarity",
                 healed: bool = False) -> pd.DataFrame:
    """[items x n] values of one curve, the unpruned model as column 0 (unhealed,
    similarity), restricted to the items every point has (pairing by item)."""
    d = items[(items.dataset == dataset) & (items.metric == metric)]
    h = d["healed"].astype(bool)
    base = d[(d.n == 0) & ~h & (d.method == "similarity")]
    curve = d[(d.n > 0) & (h == healed) & (d.method == method)]
    wide = pd.concat([base, curve]).pivot_table(index="item", columns="n", values="value", aggfunc="mean")
    return wide.dropna().sort_index(axis=1)


def _fractions(items: pd.DataFrame, ns, n_layers: int | None) -> np.ndarray:
    if n_layers is None and "n_layers" in items:
        n_layers = int(items["n_layers"].max())
    if n_layers is None:
        raise ValueError("n_layers: needed when the items carry no n_layers column")
    return np.asarray(ns, float) / n_layers


def transition(acc: np.ndarray, fractions: np.ndarray, chance: float) -> np.ndarray:
    """The collapse fraction of accuracy curves acc [draws, K] (column 0 unpruned, the
    others at ``fractions`` [K], ascending): the first fraction from which every accuracy is
    at most half-way from the unpruned accuracy down to chance. [draws]; NaN where the
    curve never gets there (an undefined draw)."""
    acc = np.atleast_2d(acc)
    half = chance + (acc[:, :1] - chance) / 2
    low = acc[:, 1:] <= half
    suffix = np.flip(np.logical_and.accumulate(np.flip(low, 1), 1), 1)
    first = np.where(suffix.any(1), suffix.argmax(1), -1)
    return np.where(first >= 0, fractions[1:][np.maximum(first, 0)], np.nan)


def bootstrap_acc(m: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Accuracy draws [n_boot, K] of a [items, K] 0/1 matrix, items resampled jointly."""
    n = m.shape[0]
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot)
    return counts @ m / n


def _paper_fraction(model: str) -> str:
    fam = MODEL_FAMILY.get(model.split(" (")[0])
    if fam is None:
        return "paper: no figure for this family"
    lo, hi = papers.GROMOV_MMLU_CHANCE_FRACTION[fam]
    return f"paper ({fam}, MMLU): {lo:.2f}" + ("" if lo == hi else f"-{hi:.2f}")


def holds_then_falls(items: pd.DataFrame, dataset: str, chance: float, model: str = "", n_layers: int | None = None,
                     method: str = "similarity", healed: bool = False, flat_until: float | None = None,
                     n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Accuracy holds, then falls to chance, on paired items.

    transition: the collapse fraction (``transition``), with a percentile interval from
        resampling items (the share of undefined draws is reported);
    holds: every pruned point before ``flat_until`` (default: the transition; when there is
        no point before it, the first pruned point) has a paired change against the unpruned
        model whose 95% score interval lies above -HOLD_MARGIN (agrees); disagrees when one
        lies wholly at or below it at the Holm-adjusted level of the m flat points;
    falls: the largest fraction's Wilson interval lies within chance ± CHANCE_MARGIN
        (agrees), or wholly above chance + CHANCE_MARGIN (disagrees).
    Not testable when the unmodified model fails the floor (``stats.informative``) or a
    point is missing. Returns {verdict, ours, interval, transition}."""
    w = point_matrix(items, dataset, "acc", method, healed)
    out = {"ours": "", "interval": "", "transition": None}
    if 0 not in w.columns or len(w.columns) < 2:
        return out | {"verdict": verdicts.not_testable("needs the unpruned model and a pruned point on the same items")}
    m = w.to_numpy(float)
    ok, why = stats.informative(int(m[:, 0].sum()), len(m), chance)
    if not ok:
        return out | {"verdict": verdicts.not_testable(f"floor: {why}"), "ours": why}
    fr = np.r_[0.0, _fractions(items, w.columns[1:], n_layers)]
    f_point = float(transition(m.mean(0)[None], fr, chance)[0])
    draws = transition(bootstrap_acc(m, n_boot, seed), fr, chance)
    undefined = stats.undefined_share(draws)
    lo_f, hi_f = (np.quantile(draws[~np.isnan(draws)], [0.025, 0.975]) if undefined < 1 else (np.nan, np.nan))
    until = flat_until if flat_until is not None else (f_point if not np.isnan(f_point) else np.inf)
    flat = [j for j in range(1, len(fr)) if fr[j] < until] or [1]
    conf = stats.holm_confidence(len(flat))
    inside, below, texts = [], [], []
    for j in flat:
        d, lo, hi = stats.paired_proportion(m[:, 0], m[:, j])
        _, alo, ahi = stats.paired_proportion(m[:, 0], m[:, j], conf)
        inside.append(lo > -HOLD_MARGIN)
        below.append(ahi <= -HOLD_MARGIN)
        texts.append(f"{fr[j]:.2f}: Δ {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    holds = verdicts.DISAGREES if any(below) else verdicts.AGREES if all(inside) else verdicts.INCONCLUSIVE
    k_last = int(m[:, -1].sum())
    wlo, whi = evaluation.wilson_interval(k_last, len(m))
    falls = (verdicts.AGREES if wlo >= chance - CHANCE_MARGIN and whi <= chance + CHANCE_MARGIN else
             verdicts.DISAGREES if wlo >= chance + CHANCE_MARGIN else verdicts.INCONCLUSIVE)
    t_txt = ("never falls half-way to chance" if np.isnan(f_point) else f"transition at {f_point:.2f} "
             f"[{lo_f:.2f}, {hi_f:.2f}]") + f" ({100 * undefined:.0f}% of draws undefined; {_paper_fraction(model)})"
    ours = (f"unpruned {100 * m[:, 0].mean():.1f}% of {len(m)} items; largest fraction {fr[-1]:.2f}: "
            f"{100 * k_last / len(m):.1f}% [{100 * wlo:.1f}, {100 * whi:.1f}]; {t_txt}")
    interval = (f"holds ({holds}): paired Δ vs unpruned above -{100 * HOLD_MARGIN:.0f} pp at "
                + "; ".join(texts) + f" (disagrees judged Holm-adjusted over {len(flat)}); falls to chance "
                f"({falls}): within {100 * chance:.0f}% ± {100 * CHANCE_MARGIN:.0f} pp")
    return {"verdict": verdicts.both(holds, falls), "ours": ours, "interval": interval,
            "transition": (f_point, float(lo_f), float(hi_f), undefined)}


def _delay(t_raw: np.ndarray, t_heal: np.ndarray, fr_r: np.ndarray, fr_h: np.ndarray) -> np.ndarray:
    """Healed minus unhealed collapse fraction [draws]. A curve that does not collapse within
    its grid collapses beyond its largest fraction: where that settles the sign, the
    difference is +-1 (the largest possible); where it does not (or neither collapses), NaN."""
    d = t_heal - t_raw
    d = np.where(np.isnan(t_heal) & ~np.isnan(t_raw) & (fr_h.max() >= t_raw), 1.0, d)
    return np.where(np.isnan(t_raw) & ~np.isnan(t_heal) & (t_heal <= fr_r.max()), -1.0, d)


def healing_delays_collapse(items: pd.DataFrame, dataset: str, chance: float, n_layers: int | None = None,
                            n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Healing delays the QA collapse: the healed curve's transition fraction minus the
    unhealed one's (``_delay``), both on the same resampled items, has a percentile interval
    above 0. Not testable with fewer than two healed fractions, a base below the floor, or
    more than ``stats.MAX_UNDEFINED`` of the draws undefined (neither curve collapses)."""
    raw, heal = point_matrix(items, dataset, "acc"), point_matrix(items, dataset, "acc", healed=True)
    if 0 not in heal.columns or len(heal.columns) < 3 or 0 not in raw.columns:
        return {"ours": "", "interval": "", "verdict": verdicts.not_testable("fewer than two healed fractions")}
    common = raw.index.intersection(heal.index)
    raw, heal = raw.loc[common].to_numpy(float), heal.loc[common].to_numpy(float)
    ok, why = stats.informative(int(raw[:, 0].sum()), len(raw), chance)
    if not ok:
        return {"ours": why, "interval": "", "verdict": verdicts.not_testable(f"floor: {why}")}
    fr_r = np.r_[0.0, _fractions(items, point_matrix(items, dataset, "acc").columns[1:], n_layers)]
    fr_h = np.r_[0.0, _fractions(items, point_matrix(items, dataset, "acc", healed=True).columns[1:], n_layers)]
    both = bootstrap_acc(np.hstack([raw, heal]), n_boot, seed)
    d = _delay(transition(both[:, :len(fr_r)], fr_r, chance), transition(both[:, len(fr_r):], fr_h, chance), fr_r, fr_h)
    undefined = stats.undefined_share(d)
    point = float(_delay(transition(raw.mean(0)[None], fr_r, chance), transition(heal.mean(0)[None], fr_h, chance),
                         fr_r, fr_h)[0])
    if undefined > stats.MAX_UNDEFINED:
        return {"ours": f"{100 * undefined:.0f}% of draws with no collapse to compare", "interval": "",
                "verdict": verdicts.not_testable(f"{100 * undefined:.0f}% of bootstrap draws undefined (> 1%)")}
    lo, hi = np.quantile(d[~np.isnan(d)], [0.025, 0.975])
    return {"ours": f"collapse fraction healed − unhealed: {point:+.2f} ({len(common)} items)",
            "interval": f"[{lo:+.2f}, {hi:+.2f}] (bootstrap over items; ±1: a curve that does not collapse within "
                        "its grid, later than the other's collapse)", "verdict": verdicts.above(lo, hi)}


def _values(items: pd.DataFrame, dataset: str, metric: str, method: str, n: int, healed: bool) -> pd.Series:
    d = items[(items.dataset == dataset) & (items.metric == metric) & (items.method == method) & (items.n == n)
              & (items.healed.astype(bool) == healed)]
    return d.groupby("item")["value"].mean()


def compare(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean of b − a over the items both have (0/1: score interval and exact McNemar p;
    otherwise the paired t interval and its p): (difference, lo, hi, p)."""
    from scipy.stats import binomtest
    from scipy.stats import t as t_dist

    common = a.index.intersection(b.index)
    x, y = a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)
    if stats.is_binary(x, y):
        d, lo, hi = stats.paired_proportion(x, y, confidence)
        gain, loss = int(((x == 0) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())
        return d, lo, hi, float(binomtest(gain, gain + loss).pvalue) if gain + loss else 1.0
    d, lo, hi = stats.paired_t(x, y, confidence)
    diff = y - x
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    p = 1.0 if se == 0 or np.isnan(se) else float(2 * t_dist.sf(abs(d) / se, len(diff) - 1))
    return d, lo, hi, p


def _fmt(n: int, d: float, lo: float, hi: float, scale: float) -> str:
    return f"n={n}: {scale * d:+.3f} [{scale * lo:+.3f}, {scale * hi:+.3f}]"


def similarity_vs_heuristic(items: pd.DataFrame, dataset: str = "heldout", metric: str = "loss_norm") -> dict | None:
    """Before healing, the similarity-chosen block beats dropping the deepest layers: at each
    n > 0 both methods measured, the paired per-item difference (similarity − heuristic;
    lower loss, or higher accuracy, is better) with Holm-adjusted p over the n. Agrees if
    better at >= 1 n and worse at none; disagrees if worse at >= 1 n and better at none;
    inconclusive otherwise. None without a common n."""
    ns = sorted(set(items[(items.method == "similarity") & (items.n > 0) & (items.dataset == dataset)]["n"])
                & set(items[(items.method == "deepest") & (items.n > 0) & (items.dataset == dataset)]["n"]))
    if not ns:
        return None
    sign = -1.0 if metric.startswith("loss") else 1.0
    res = {n: compare(_values(items, dataset, metric, "deepest", n, False),
                      _values(items, dataset, metric, "similarity", n, False)) for n in ns}
    adj = dict(zip(ns, stats.holm([res[n][3] for n in ns])))
    better = [n for n in ns if adj[n] < 0.05 and sign * res[n][0] > 0]
    worse = [n for n in ns if adj[n] < 0.05 and sign * res[n][0] < 0]
    verdict = (verdicts.AGREES if better and not worse else verdicts.DISAGREES if worse and not better
               else verdicts.INCONCLUSIVE)
    return {"verdict": verdict, "ours": f"of {len(ns)} n: better at {len(better)} {better}, worse at {len(worse)} "
                                        f"{worse}, tie at {len(ns) - len(better) - len(worse)}",
            "interval": "similarity − heuristic, paired per item: " + "; ".join(_fmt(n, *res[n][:3], 1.0) for n in ns)
                        + f" (better/worse: Holm-adjusted p < 0.05 over {len(ns)} n)"}


def healing_repairs(items: pd.DataFrame, method: str = "similarity") -> dict | None:
    """Healing lowers the held-out loss that pruning raised: at each healed n, the paired
    per-chunk change (healed − unhealed) has its 95% paired t interval below 0 (agrees at
    every n: agrees); disagrees when at some n the loss rose (Holm-adjusted p < 0.05).
    None when nothing is healed."""
    loss = items[(items.dataset == "heldout") & (items.metric == "loss_norm")]
    ns = sorted(set(loss[loss.healed.astype(bool) & (loss.method == method) & (loss.n > 0)]["n"]))
    if not ns:
        return None
    base = _values(loss, "heldout", "loss_norm", "similarity", 0, False)
    res, texts = {}, []
    for n in ns:
        raw = _values(loss, "heldout", "loss_norm", method, n, False)
        if not len(raw):
            texts.append(f"n={n}: no unhealed point")
            continue
        res[n] = compare(raw, _values(loss, "heldout", "loss_norm", method, n, True))
        rise = float((raw - base).mean()) if len(base) else float("nan")
        texts.append(_fmt(n, *res[n][:3], 1.0) + (f" ({100 * -res[n][0] / rise:.0f}% of the increase recovered)"
                                                  if rise > 0 else ""))
    if not res:
        return {"verdict": verdicts.not_testable("no unhealed point at a healed n"), "ours": "; ".join(texts),
                "interval": ""}
    adj = dict(zip(res, stats.holm([r[3] for r in res.values()])))
    parts = [verdicts.AGREES if r[2] < 0 else verdicts.DISAGREES if adj[n] < 0.05 and r[0] > 0
             else verdicts.INCONCLUSIVE for n, r in res.items()]
    return {"verdict": verdicts.both(*parts), "ours": "; ".join(texts),
            "interval": f"healed − unhealed loss per chunk (paired t); rises judged Holm-adjusted over {len(res)} n"}


def healed_heuristic(items: pd.DataFrame, margin: float = 0.10) -> dict | None:
    """After healing, the heuristic nearly matches similarity pruning: at each n healed for
    both, d = healed heuristic − healed similarity loss per chunk (paired t); the tolerance
    is ``margin`` times the heuristic's own pruning-induced increase (unhealed − unpruned,
    per chunk). Agrees when every 95% interval lies below its tolerance; disagrees when one
    lies wholly at or above it at the Holm-adjusted level. None when no n is healed for both."""
    loss = items[(items.dataset == "heldout") & (items.metric == "loss_norm") & items.healed.astype(bool)]
    ns = sorted(set(loss[loss.method == "similarity"]["n"]) & set(loss[loss.method == "deepest"]["n"]) - {0})
    if not ns:
        return None
    base = _values(items, "heldout", "loss_norm", "similarity", 0, False)
    parts, texts, conf = [], [], stats.holm_confidence(len(ns))
    for n in ns:
        raw = _values(items, "heldout", "loss_norm", "deepest", n, False)
        tol = margin * float((raw - base).mean()) if len(raw) and len(base) else float("nan")
        if not tol > 0:
            texts.append(f"n={n}: left out (no unhealed heuristic increase)")
            continue
        sim, deep = (_values(items, "heldout", "loss_norm", m, n, True) for m in ("similarity", "deepest"))
        d, lo, hi, _ = compare(sim, deep)
        _, alo, _, _ = compare(sim, deep, conf)
        parts.append(verdicts.AGREES if hi < tol else verdicts.DISAGREES if alo >= tol else verdicts.INCONCLUSIVE)
        texts.append(_fmt(n, d, lo, hi, 1.0) + f" vs tolerance {tol:.3f}")
    if not parts:
        return {"verdict": verdicts.not_testable("no unhealed heuristic point with a loss increase"),
                "ours": "; ".join(texts), "interval": ""}
    return {"verdict": verdicts.both(*parts), "ours": "; ".join(texts),
            "interval": f"heuristic − similarity, healed, paired per chunk, below {100 * margin:.0f}% of the "
                        f"heuristic's increase (at or above: Holm-adjusted over {len(parts)} n)"}
