"""Tables and claims of the sublayer experiment (``beyond.sublayers``): the damage each
pruned model does (paired with the unmodified model), and LLM-Drop's finding judged by
paired intervals, in the claim-row format of ``prune.claims``. Also the experiment's
constants: the papers, LLM-Drop's statement, the result tables' names, the methods."""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.io import results
from layerlab.core.evidence import stats, verdicts
from layerlab.prune.paired import compare

LLM_DROP = "He et al. 2024, What Matters in Transformers? Not All Attention is Needed (LLM-Drop, arXiv 2406.15786)"
FINERCUT = "Zhang et al. 2024, FinerCut: Finer-grained Interpretable Layer Pruning for LLMs (arXiv 2405.18218)"
LLM_DROP_STATEMENT = ("a large portion of attention layers exhibit excessively high similarity and can be pruned "
                      "without degrading performance; Llama-2-70B: 48.4% speedup with a 2.4% performance drop "
                      "after pruning half of its attention layers (abstract)")
TECHNIQUE = "sublayer_drop"
ITEMS = "sublayer_items"          # per-item rows (documents, lm-eval items) of every point, keyed like the point
SIMILARITY = "sublayer_similarity"  # per sublayer and block: the token-averaged cosine (kind, block, value)
METHODS = ("attn", "mlp", "block", "block_contiguous")
LABELS = {"attn": "attention sublayers (LLM-Drop)", "mlp": "MLP sublayers", "block": "whole blocks (cosine)",
          "block_contiguous": "whole blocks (Gromov, contiguous)", "none": "unmodified"}
PARAM_TOLERANCE = 0.15  # a sublayer arm counts for the claim when its parameters are within 15% of the blocks'


def _values(items: pd.DataFrame, method: str, n: int, dataset: str, metric: str) -> pd.Series:
    d = items[(items.method == method) & (items.n_blocks == n) & (items.dataset == dataset) & (items.metric == metric)]
    return d.groupby("item")["value"].mean()


def _metric(dataset: str) -> str:
    return "loss_norm" if dataset == "heldout" else "acc"


def damage(points: pd.DataFrame, items: pd.DataFrame, dataset: str = "heldout") -> pd.DataFrame:
    """One row per pruned point of ``dataset``: what it drops (k units, parameters removed
    and the blocks' parameters they were matched to), its value, and the paired change
    from the unmodified model over items/documents with its 95% interval."""
    metric = _metric(dataset)
    base = _values(items, "none", 0, dataset, metric)
    rows = []
    sel = points[(points.dataset == dataset) & (points.metric == metric)]
    order = lambda key: (key[0][1], (("none",) + METHODS).index(key[0][0]))  # noqa: E731  by n, then method
    for (method, n), part in sorted(sel.groupby(["method", "n_blocks"]), key=order):
        r = part.iloc[0]
        d, lo, hi, _ = compare(base, _values(items, method, n, dataset, metric)) if n else (0.0, 0.0, 0.0, 1.0)
        rows.append({"method": LABELS[method], "blocks (n)": int(n), "units dropped (k)": int(r["k"]),
                     "dropped": r["dropped"], "parameters removed": int(r["params_removed"]),
                     "blocks' parameters": int(r["block_params_removed"]),
                     "parameter ratio": r["params_removed"] / r["block_params_removed"] if n else np.nan,
                     metric: float(r["value"]), "change": d, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def claims(points: pd.DataFrame, items: pd.DataFrame, model: str) -> list[dict]:
    """LLM-Drop's finding, judged on one model's stored points: "dropping attention
    sublayers does less damage than dropping MLP sublayers / whole blocks at equal
    parameters removed", one row per comparator and dataset, in the format of
    ``prune.claims`` (``COLUMNS``). Per block count n where both arms are measured and
    their parameters lie within ``PARAM_TOLERANCE`` of the blocks', the paired difference
    (comparator − attention for loss, attention − comparator for accuracy: > 0 means
    attention-drop is less harmful) over documents or items, with intervals at the
    Bonferroni level over the n. agrees: every interval above 0; disagrees: some interval
    below 0; inconclusive otherwise; not testable without a matched n, or when the
    unmodified model is at chance on the task."""
    rows = []
    for dataset in sorted(set(points.dataset), key=lambda d: d != "heldout"):
        metric = _metric(dataset)
        sel = points[(points.dataset == dataset) & (points.metric == metric)]
        ratio = {(r.method, int(r.n_blocks)): r.params_removed / r.block_params_removed
                 for r in sel.itertuples() if r.n_blocks}
        base = _values(items, "none", 0, dataset, metric)
        ok, why = (True, "") if dataset == "heldout" else stats.informative(int(base.sum()), len(base),
                                                                             evaluation.CHANCE[dataset])
        floor = None if ok else why
        for comp in [m for m in METHODS[1:] if (sel.method == m).any()]:
            claim = (f"dropping attention sublayers hurts {'loss' if dataset == 'heldout' else dataset} less than "
                     f"dropping {LABELS[comp]} at equal parameters")
            row = {"paper": LLM_DROP, "claim": claim, "paper's number": LLM_DROP_STATEMENT, "model": model,
                   "ours": "", "interval": ""}
            ns = sorted(n for (m, n) in ratio if m == "attn" and (comp, n) in ratio
                        and all(abs(ratio[(x, n)] - 1) <= PARAM_TOLERANCE for x in ("attn", comp)))
            if floor is not None or not ns:
                rows.append(row | {"verdict": verdicts.not_testable(f"floor: {floor}", cause="model at chance")
                                   if floor is not None else verdicts.not_testable(
                                       "no block count where the sublayer arm's parameters are within "
                                       f"{100 * PARAM_TOLERANCE:.0f}% of the blocks'", cause="grid cannot falsify")})
                continue
            conf = stats.holm_confidence(len(ns))
            res, shifts = {}, []
            for n in ns:
                a, c = _values(items, "attn", n, dataset, metric), _values(items, comp, n, dataset, metric)
                res[n] = compare(a, c, conf) if dataset == "heldout" else compare(c, a, conf)
                shift_a, shift_c = float((a - base).mean()), float((c - base).mean())
                shifts.append(f"n={n}: attention {shift_a:+.4f}, {comp} {shift_c:+.4f}")
            better = [n for n in ns if res[n][1] > 0]
            worse = [n for n in ns if res[n][2] < 0]
            verdict = (verdicts.DISAGREES if worse else verdicts.AGREES if len(better) == len(ns)
                       else verdicts.INCONCLUSIVE)
            unit = "documents" if dataset == "heldout" else "items"
            rows.append(row | {"verdict": verdict,
                               "ours": f"attention less harmful at {len(better)} of {len(ns)} block counts {better}"
                                       + (f", more harmful at {worse}" if worse else "")
                                       + f" (change of {metric} from the unmodified model: {'; '.join(shifts)})",
                               "interval": "; ".join(f"n={n}: {res[n][0]:+.4f} [{res[n][1]:+.4f}, {res[n][2]:+.4f}]"
                                                     for n in ns)
                                           + f" (paired over {unit}, {100 * conf:.1f}% each: Bonferroni over n)"})
    return rows


def claim_rows(store: results.ResultStore) -> list[dict]:
    """``claims`` for every model in the store (per-item rows matched to points by key)."""
    points, items = store.table(TECHNIQUE), store.table(ITEMS)
    rows = []
    for model in sorted(points["model"].unique()) if len(points) else []:
        p = points[points.model == model]
        rows += claims(p, items[items["key"].isin(set(p["key"]))] if "key" in items else items, model)
    return rows
