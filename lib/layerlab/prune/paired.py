"""Gromov et al.'s claims judged on per-item results: paired differences against the
unpruned model (or between methods) on the same items, equivalence margins stated here in
advance, Holm where a verdict is a union over n. The curve claims (holds then falls,
healing delays the collapse) live in ``collapse``.

Input: the per-item rows of one model and protocol (table ``prune_items``): dataset,
metric, item (lm-eval doc_id, or the held-out chunk index), value (0/1 for ``acc``, the
chunk's loss / log V for ``loss_norm``), method ("similarity" | "deepest"), n (blocks
dropped; 0 = unpruned, method "similarity"), healed. Items are paired by (dataset, item).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.evidence import papers, power, stats, verdicts

HOLD_MARGIN = 0.05    # "holds": the paired change in accuracy stays above -5 pp at every flat point
CHANCE_MARGIN = 0.10  # "falls to chance": the accuracy interval lies within chance ± 10 pp


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


def margin_matrix(items: pd.DataFrame, dataset: str, method: str = "similarity", healed: bool = False) -> pd.DataFrame | None:
    """``point_matrix`` of the items' margins (the gold choice's log-likelihood minus the best
    wrong one's, nats: the continuous score beside accuracy, #29), or None where the items
    carry none (stores written before it was kept)."""
    if "margin" not in items or not np.isfinite(items["margin"].to_numpy(float)).any():
        return None
    return point_matrix(items.assign(value=items["margin"]), dataset, "acc", method, healed)


def fractions(items: pd.DataFrame, ns, n_layers: int | None) -> np.ndarray:
    """Fractions of the layers dropped (n / n_layers) for the block counts ns."""
    if n_layers is None and "n_layers" in items:
        n_layers = int(items["n_layers"].max())
    if n_layers is None:
        raise ValueError("n_layers: needed when the items carry no n_layers column")
    return np.asarray(ns, float) / n_layers


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


def pair_power(a: pd.Series, b: pd.Series) -> dict:
    """Power columns of a paired comparison of b with a over their common items: n, the
    statistic's name, the MDE at 80% power (0/1: Tango with the observed discordance, in pp;
    otherwise paired t with the observed spread, in the values' units), n_needed None (the
    claims judged here state no number) and the note for an inconclusive verdict."""
    common = a.index.intersection(b.index)
    x, y = a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)
    if stats.is_binary(x, y):
        cols = power.paired_binary_columns(x, y, None)
        return cols | {"statistic": "paired Tango score interval, accuracy, per n (Holm over n)"}
    n = len(x)
    mde = power.mde_paired_t(n, float(np.std(y - x, ddof=1))) if n > 1 else float("nan")
    return {"n": n, "statistic": "paired t over held-out chunks, loss / log V, per n (Holm over n)",
            "mde": "" if np.isnan(mde) else f"{mde:.3g}", "n_needed": None,
            "power_note": power.note(n, mde, None, unit="(loss / log V)", scale=1.0)}


def _with_power(judged: dict, cols: dict) -> dict:
    """judged + the power columns; an inconclusive verdict gains the power note."""
    note = cols.pop("power_note", "")
    if verdicts.word(judged["verdict"]) == verdicts.INCONCLUSIVE and note:
        judged["verdict"] += ("; " if judged["verdict"] != verdicts.INCONCLUSIVE else ": ") + note
    return judged | cols


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
    judged = {"verdict": verdict, "ours": f"of {len(ns)} n: better at {len(better)} {better}, worse at {len(worse)} "
                                          f"{worse}, tie at {len(ns) - len(better) - len(worse)}",
              "interval": "similarity − heuristic, paired per item: " + "; ".join(_fmt(n, *res[n][:3], 1.0) for n in ns)
                          + f" (better/worse: Holm-adjusted p < 0.05 over {len(ns)} n)"}
    cols = pair_power(_values(items, dataset, metric, "deepest", ns[-1], False),
                      _values(items, dataset, metric, "similarity", ns[-1], False))
    m_sim, m_deep = margin_matrix(items, dataset), margin_matrix(items, dataset, "deepest")
    if metric == "acc" and m_sim is not None and ns[-1] in m_sim and ns[-1] in m_deep:
        common = m_sim.index.intersection(m_deep.index)
        cols["secondary"] = stats.secondary(m_deep.loc[common, ns[-1]], m_sim.loc[common, ns[-1]],
                                            f"n={ns[-1]}: gold choice's margin, similarity − heuristic")
    return _with_power(judged, cols)


# "healed loss close to unpruned" (Fig. 3): the paper's effect is the whole increase recovered
RECOVERED_PAPER = 1.0
RECOVERED_SMALLEST = papers.smallest_effect(RECOVERED_PAPER)  # a third recovered, fixed before the data


def fieller(a: np.ndarray, c: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Ratio mean(a) / mean(c) of two paired samples [n] and Fieller's interval: the s with
    |mean(a - s c)| <= t * se(a - s c). (ratio, lo, hi); (ratio, -inf, inf) when mean(c) is
    not itself distinguishable from 0 at this level (the set is then unbounded)."""
    from scipy.stats import t as t_dist

    a, c = np.asarray(a, float), np.asarray(c, float)
    n = len(a)
    if n < 3 or not c.mean():
        return float("nan"), float("nan"), float("nan")
    t2 = t_dist.ppf(0.5 + confidence / 2, n - 1) ** 2
    ma, mc = a.mean(), c.mean()
    cov = np.cov(a, c, ddof=1) / n
    qa, qb, qc = mc ** 2 - t2 * cov[1, 1], ma * mc - t2 * cov[0, 1], ma ** 2 - t2 * cov[0, 0]
    ratio = float(ma / mc)
    disc = qb ** 2 - qa * qc
    if qa <= 0 or disc < 0:
        return ratio, float("-inf"), float("inf")
    root = np.sqrt(disc)
    return ratio, float((qb - root) / qa), float((qb + root) / qa)


def _recovery(loss: pd.DataFrame, method: str, ns: list) -> tuple[np.ndarray, np.ndarray, list]:
    """Per chunk, summed over the healed n that have an unhealed point: recovered
    a = unhealed - healed and raised c = unhealed - unpruned loss ([chunks] each), and the n used."""
    base = _values(loss, "heldout", "loss_norm", "similarity", 0, False)
    a, c, used = [], [], []
    for n in ns:
        raw = _values(loss, "heldout", "loss_norm", method, n, False)
        heal = _values(loss, "heldout", "loss_norm", method, n, True)
        common = base.index.intersection(raw.index).intersection(heal.index)
        if not len(common):
            continue
        a.append((raw - heal).loc[common])
        c.append((raw - base).loc[common])
        used.append(n)
    if not used:
        return np.zeros(0), np.zeros(0), []
    a, c = pd.concat(a, axis=1).dropna(), pd.concat(c, axis=1).dropna()
    common = a.index.intersection(c.index)
    return a.loc[common].sum(1).to_numpy(), c.loc[common].sum(1).to_numpy(), used


def healing_repairs(items: pd.DataFrame, method: str = "similarity") -> dict | None:
    """Healing repairs much of pruning's loss increase: the recovered share
    R = mean(unhealed - healed) / mean(unhealed - unpruned) over held-out chunks (summed over
    the healed n), with Fieller's 95% interval for a ratio of paired means, against the
    paper's "close to unpruned" (R = 1): ``verdicts.versus_paper`` with a third recovered
    as the smallest effect of interest. None when nothing is healed."""
    loss = items[(items.dataset == "heldout") & (items.metric == "loss_norm")]
    ns = sorted(set(loss[loss.healed.astype(bool) & (loss.method == method) & (loss.n > 0)]["n"]))
    if not ns:
        return None
    a, c, used = _recovery(loss, method, ns)
    empty = {"ours": "", "interval": "", "n": len(a), "statistic": "", "mde": "", "n_needed": None}
    if len(a) < 3:
        return empty | {"verdict": verdicts.not_testable(
            "needs the unpruned, unhealed and healed loss on the same chunks (3 or more)", cause="no data")}
    r, lo, hi = fieller(a, c)
    se = float(np.std(a - r * c, ddof=1) / np.sqrt(len(a)) / abs(c.mean()))  # delta method, for the power only
    mde = 2.8 * se
    need = int(np.ceil(len(a) * (2.8 * se / RECOVERED_SMALLEST) ** 2)) if se > 0 else None
    stat = "recovered share of the loss increase, Fieller interval for a ratio of paired means over chunks"
    if np.isinf(lo):
        verdict = (f"{verdicts.INCONCLUSIVE}: pruning did not raise the loss measurably "
                   f"(mean increase {c.mean():+.4f} per chunk), so no share of it can be told")
        interval = "unbounded (the increase itself is not distinguishable from 0)"
    else:
        verdict = verdicts.versus_paper(lo, hi, smallest=RECOVERED_SMALLEST, unit="%",
                                        power_note=power.note(len(a), mde, need, RECOVERED_SMALLEST, unit="%"))
        interval = f"[{100 * lo:.0f}%, {100 * hi:.0f}%] (Fieller, 95%)"
    return {"verdict": verdict, "n": len(a), "statistic": stat, "mde": f"{100 * mde:.3g} %", "n_needed": need,
            "ours": f"{100 * r:.0f}% of the increase recovered (healed n = {', '.join(map(str, used))}; "
                    f"{len(a)} chunks; paper: close to unpruned, a third recovered is the least that counts)",
            "interval": interval}


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
        return {"verdict": verdicts.not_testable("no unhealed heuristic point with a loss increase, so no tolerance to hold the similarity pick to",
                                                      cause="grid cannot falsify"),
                "ours": "; ".join(texts), "interval": ""}
    judged = {"verdict": verdicts.both(*parts), "ours": "; ".join(texts),
              "interval": f"heuristic − similarity, healed, paired per chunk, below {100 * margin:.0f}% of the "
                          f"heuristic's increase (at or above: Holm-adjusted over {len(parts)} n)"}
    cols = pair_power(sim, deep) | {"statistic": "paired t over held-out chunks, healed heuristic − similarity "
                                                 f"loss / log V, per n, vs {100 * margin:.0f}% of its increase"}
    return _with_power(judged, cols)
