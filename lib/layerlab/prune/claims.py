"""Gromov et al.'s claims judged on the stored deeper-layers results: every verdict from
paired per-item differences (``prune_paired``) or a bootstrap over documents, never from a
point estimate or from two marginal intervals. ``claim_rows`` gives the comparison
chapter's rows; the prune notebook's conclusions call the same functions.

Stores without per-item rows (table ``prune_items``) cannot be judged this way: their
curve claims are "not testable", with that reason. The deep-end and final-block claims
need per-document distances (table ``prune_distance_docs``: doc, n, layer, value).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.io import results
from layerlab.core.evidence import verdicts
from layerlab.core.evidence import papers
from . import paired as prune_paired
from .blocks import chance_fraction, deep_end_share  # noqa: F401  (re-exported)
from . import collapse
from .collapse import holds_then_falls  # noqa: F401  (re-exported: the chapters call it from here)

TASKS = ("mmlu", "boolq", "arc_easy", "hellaswag")
HEALED_MARGIN = 0.10  # "nearly matches": within 10% of the heuristic's own pruning-induced loss increase
COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]
N_BOOT = 1000
ITEMS = "prune_items"  # prune_curve.ITEMS: per-item rows of every curve point, keyed like the point
DOC_DISTANCES = "prune_distance_docs"  # per-document angular distances: doc, n, layer, value
NO_ITEMS = "no per-item rows stored for this curve (table prune_items): rerun the prune chapter"
NO_DOCS = "the distances are stored as means over documents; per-document distances are needed to resample them"


def _doc_array(docs: pd.DataFrame, n_layers: int) -> np.ndarray:
    """[documents, n, layer] per-document angular distances (NaN where undefined)."""
    ids = sorted(docs["doc"].unique())
    arr = np.full((len(ids), n_layers + 1, n_layers + 1), np.nan)
    pos = {d: i for i, d in enumerate(ids)}
    arr[docs["doc"].map(pos).to_numpy(), docs["n"].to_numpy(int), docs["layer"].to_numpy(int)] = docs["value"]
    return arr


def _doc_draws(docs: pd.DataFrame, n_layers: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean distance map [n, layer], [n_boot, n, layer] maps over resampled documents)."""
    arr = _doc_array(docs, n_layers)
    k = arr.shape[0]
    counts = np.random.default_rng(seed).multinomial(k, np.full(k, 1 / k), size=n_boot)
    flat = arr.reshape(k, -1)
    mask = np.isnan(flat).any(0)
    draws = counts @ np.nan_to_num(flat, nan=0.0) / k
    draws[:, mask] = np.nan
    mean = np.where(mask, np.nan, np.nan_to_num(flat, nan=0.0).sum(0) / k).reshape(arr.shape[1:])
    return mean, draws.reshape(n_boot, *arr.shape[1:])


def _deep_share(maps: np.ndarray, n_layers: int) -> np.ndarray:
    """Share of n = 1..L//2 whose l*(n) (argmin over layers) has its centre in the deeper half. [draws]"""
    ns = np.arange(1, n_layers // 2 + 1)
    rows = np.where(np.isnan(maps[:, ns]), np.inf, maps[:, ns])     # [draws, |ns|, layer]
    start = rows.argmin(-1)
    return ((start + ns / 2) >= n_layers / 2).mean(-1)


def deep_end(best: pd.DataFrame, n_layers: int, docs: pd.DataFrame | None = None, n_boot: int = N_BOOT,
             seed: int = 0) -> dict | None:
    """l*(n) lies in the deeper half for most n = 1..L//2: the share of such n, with a
    percentile interval from resampling documents and recomputing every l*(n) (the n are
    not independent: neighbouring n share most of their blocks, so a binomial interval over
    n would be wrong), judged against 0.5 (``verdicts.above``). docs: per-document rows
    (doc, n, layer, value); without them the share is reported and the verdict is not
    testable. None without n."""
    sub = best[(best["n"] >= 1) & (best["n"] <= n_layers // 2)]
    if not len(sub):
        return None
    k, m = int(((sub["l*"] + sub["n"] / 2) >= n_layers / 2).sum()), len(sub)
    ours = f"{k} of {m} block sizes n = 1..{n_layers // 2} ({100 * k / m:.0f}%) have l*(n) in the deeper half"
    if docs is None or "doc" not in docs or not len(docs):
        return {"verdict": verdicts.not_testable(NO_DOCS, cause="no data"), "share": k / m, "ours": ours, "interval": ""}
    _, draws = _doc_draws(docs, n_layers, n_boot, seed)
    lo, hi = np.quantile(_deep_share(draws, n_layers), [0.025, 0.975])
    shares = _deep_share(draws, n_layers)
    return {"verdict": verdicts.above(lo, hi, 0.5), "share": k / m, "ours": ours,
            "interval": f"[{100 * lo:.0f}%, {100 * hi:.0f}%] vs 50% (bootstrap over {docs['doc'].nunique()} documents)",
            "n": int(docs["doc"].nunique()), "n_needed": None,
            "statistic": "share of n with l*(n) in the deeper half, percentile bootstrap over documents",
            "mde": f"{100 * 2.8 * float(np.std(shares)):.3g} pp"}  # 80% power: 2.8 bootstrap standard errors


def final_block_distinct(docs: pd.DataFrame | None, n_layers: int, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The final block is the most distinct: for n = 1, its distance d(x_{L-1}, x_L) minus
    the largest distance of any other single block, with a percentile interval over
    resampled documents (``verdicts.above`` 0)."""
    if docs is None or "doc" not in docs or not len(docs):
        return {"verdict": verdicts.not_testable(NO_DOCS, cause="no data"), "ours": "", "interval": ""}
    mean, draws = _doc_draws(docs, n_layers, n_boot, seed)
    gap = lambda m: m[..., 1, n_layers - 1] - np.nanmax(m[..., 1, : n_layers - 1], axis=-1)  # noqa: E731
    lo, hi = np.quantile(gap(draws), [0.025, 0.975])
    return {"verdict": verdicts.above(lo, hi),
            "ours": f"d(final block) {mean[1, n_layers - 1]:.3f}, largest other {np.nanmax(mean[1, :n_layers - 1]):.3f}",
            "interval": f"final − largest other: {gap(mean):+.3f} [{lo:+.3f}, {hi:+.3f}] (bootstrap over documents)",
            "n": int(docs["doc"].nunique()), "n_needed": None,
            "statistic": "final block's angular distance minus the largest other, percentile bootstrap over documents",
            "mde": f"{2.8 * float(np.std(gap(draws))):.3g}"}  # 80% power: 2.8 bootstrap standard errors


def best_starts(dist: pd.DataFrame) -> pd.DataFrame:
    """One row per n (columns n, l*, d) from stored ``prune_distance`` rows of one model:
    the point (key) with the most documents, means over documents when rows are per document."""
    if "key" in dist and dist["key"].nunique() > 1:
        dist = dist[dist["key"] == dist.groupby("key")["n_items"].max().sort_index().idxmax()]
    mean = dist.groupby(["n", "layer"], as_index=False)["value"].mean()
    idx = mean.groupby("n")["value"].idxmin()
    return mean.loc[idx, ["n", "layer", "value"]].rename(columns={"layer": "l*", "value": "d"}).reset_index(drop=True)


def _row(claim: str, number: str, model: str, judged: dict) -> dict:
    return {"paper": papers.GROMOV, "claim": claim, "paper's number": number, "model": model,
            "ours": judged["ours"], "interval": judged["interval"], "verdict": judged["verdict"],
            **{k: judged.get(k, "" if k != "n_needed" else None) for k in ("n", "statistic", "mde", "n_needed", "secondary")}}


def _untested(claim: str, number: str, model: str, why: str) -> dict:
    return _row(claim, number, model, {"ours": "", "interval": "", "verdict": verdicts.not_testable(why, cause="no data")})


def curve_rows(curve: pd.DataFrame, model: str, items: pd.DataFrame | None = None,
               n_layers: int | None = None) -> list[dict]:
    """The curve claims for one model's stored ``prune`` rows and their per-item rows
    ``items`` (one protocol): holds-then-falls and healing-delays-collapse per task,
    similarity vs heuristic on loss and on each QA task, healing, the healed heuristic."""
    c = curve[curve.model == model]
    tasks = [t for t in TASKS if ((c.dataset == t) & (c.metric == "acc")).any()]
    has_loss = ((c.dataset == "heldout") & (c.metric == "loss_norm")).any()
    if n_layers is None and "n_layers" in c and len(c):
        n_layers = int(c["n_layers"].max())
    items = None if items is None or not len(items) else items[items.model == model] if "model" in items else items
    rows = []
    for task in tasks:
        claim = f"{task} accuracy holds, then falls to chance past a model-dependent fraction"
        rows.append(_untested(claim, papers.GROMOV_HOLDS_THEN_FALLS, model, NO_ITEMS) if items is None else
                    _row(claim, papers.GROMOV_HOLDS_THEN_FALLS, model, holds_then_falls(
                        items, task, evaluation.CHANCE[task], model, n_layers)))
        if c[(c.dataset == task)]["healed"].astype(bool).any():
            claim = f"LoRA healing delays the {task} collapse"
            rows.append(_untested(claim, papers.GROMOV_HEALING_QA, model, NO_ITEMS) if items is None else
                        _row(claim, papers.GROMOV_HEALING_QA, model, collapse.healing_delays_collapse(
                            items, task, evaluation.CHANCE[task], model, n_layers)))
        if (c[c.dataset == task]["method"] == "deepest").any():
            claim = f"before healing, similarity-based pruning beats the simple heuristic on {task}"
            judged = None if items is None else prune_paired.similarity_vs_heuristic(items, task, "acc")
            if items is None or judged is not None:
                rows.append(_untested(claim, papers.GROMOV_SIMILARITY_VS_DEEPEST_QA, model, NO_ITEMS) if judged is None
                            else _row(claim, papers.GROMOV_SIMILARITY_VS_DEEPEST_QA, model, judged))
    if not has_loss:
        return rows
    healed_any = c[c.dataset == "heldout"]["healed"].astype(bool).any()
    if healed_any and tasks:
        rows.append(_untested("healed loss grows smoothly while QA accuracy shows a sharp transition",
                              papers.GROMOV_SMOOTH_LOSS, model, "the paper states no test of smooth against sharp, "
                              "and the healed curves are measured at a few fractions only"))
    for claim, number, judge, needs_healing in (
            ("LoRA healing lowers the loss that pruning raised (similarity-chosen block)", papers.GROMOV_HEALING,
             prune_paired.healing_repairs, True),
            ("before healing, similarity-based pruning beats the simple heuristic on loss",
             papers.GROMOV_SIMILARITY_VS_DEEPEST, prune_paired.similarity_vs_heuristic, False),
            ("after healing, the simple heuristic nearly matches similarity pruning on loss",
             papers.GROMOV_HEALED_HEURISTIC, lambda i: prune_paired.healed_heuristic(i, HEALED_MARGIN), True)):
        if needs_healing and not healed_any:
            continue
        judged = None if items is None else judge(items)
        if items is None:
            rows.append(_untested(claim, number, model, NO_ITEMS))
        elif judged is not None:
            rows.append(_row(claim, number, model, judged))
    return rows


def distance_rows(dist: pd.DataFrame, n_layers: int, model: str, docs: pd.DataFrame | None = None) -> list[dict]:
    """The deep-end and final-block claims for one model's ``prune_distance`` rows and its
    per-document rows ``docs`` (table ``DOC_DISTANCES``, or ``prune_distance`` rows with a
    ``doc`` column)."""
    if docs is None or not len(docs):
        docs = dist[dist["doc"].notna()] if "doc" in dist and dist["doc"].notna().any() else None
    if docs is not None and "key" in docs and docs["key"].nunique() > 1:
        docs = docs[docs["key"] == docs.groupby("key")["doc"].nunique().sort_index().idxmax()]
    mean_rows = dist[dist["doc"].isna()] if "doc" in dist and dist["doc"].isna().any() else dist
    judged = deep_end(best_starts(mean_rows), n_layers, docs)
    rows = [] if judged is None else [_row("the most redundant blocks (min angular distance) sit at the deep end",
                                           papers.GROMOV_DEEP_END, model, judged)]
    return rows + [_row("the final block is the most distinct (largest angular distance at n = 1)",
                        papers.GROMOV_FINAL_BLOCK, model, final_block_distinct(docs, n_layers))]


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
    """Every Gromov et al. claim the stored results can test, one row per (claim, model,
    protocol) with the columns of ``COLUMNS``; per-item rows are matched to their curve
    point by key. Only the protocol with the most items per task is counted (``counted``)."""
    rows = []
    curve, items = store.table("prune"), store.table(ITEMS)
    for model in sorted(curve["model"].unique()) if len(curve) else []:
        groups = protocols(curve[curve.model == model])
        size = [int(g["n_items"].max()) for _, g in groups]
        for i, (label, part) in enumerate(groups):  # never mix protocols: each is judged on its own
            mine = items[items["key"].isin(set(part["key"]))] if len(items) and "key" in part else None
            primary = i == max(range(len(groups)), key=lambda j: (size[j], j))
            rows += [r | {"model": model if len(groups) == 1 else f"{model} ({label})", "counted": primary}
                     for r in curve_rows(part, model, mine)]
    dist, per_doc = store.table("prune_distance"), store.table(DOC_DISTANCES)
    for model in sorted(dist["model"].unique()) if len(dist) else []:
        d = dist[dist.model == model]
        docs = per_doc[per_doc.model == model] if len(per_doc) else None
        rows += distance_rows(d, int(d["layer"].max()) + 1, model, docs)
    return rows


def chance_table(curve: pd.DataFrame, items: pd.DataFrame | None = None, n_layers: int | None = None,
                 model: str = "") -> pd.DataFrame:
    """Per task and unhealed variant of one model's curve (with a ``variant`` column): the
    unpruned accuracy, the fraction from which the curve's intervals reach chance, and the
    holds-then-falls verdict on the per-item rows (not testable without them), judged in the
    regions of ``model``'s family (``collapse.band``)."""
    rows = []
    acc = curve[(curve.metric == "acc") & ~curve.healed.astype(bool)]
    for (task, variant), part in acc.groupby(["dataset", "variant"]):
        method = part["method"].iloc[0] if "method" in part else "similarity"
        judged = ({"verdict": verdicts.not_testable(NO_ITEMS, cause="no data")} if items is None or not len(items) else
                  holds_then_falls(items, task, evaluation.CHANCE[task], model, n_layers=n_layers, method=method))
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
