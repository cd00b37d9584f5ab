"""The cross-paper comparison: one layer axis per model with the three papers' lenses
(the layer-redundancy atlas), and every headline claim with the paper's number, ours,
an interval and a verdict. Everything is read from the results store."""

from __future__ import annotations

import pandas as pd

from . import painters_claims, prune_claims, results, verdicts
from .prune_claims import holds_then_falls  # noqa: F401  (re-exported: tests call compare.holds_then_falls)


def atlas(store: results.ResultStore, model: str, n_block: int = 1) -> pd.DataFrame:
    """Per layer l of ``model`` (rows: layer, lens, value, description):

    laser_gain: the best CounterFact accuracy change (pp, val+test pooled) of any single
        reduction at layer l; angular_distance: Gromov's d(x_l, x_{l+n}) for n = n_block;
    skip_cost / swap_cost: normalised loss increase when block l is skipped / swapped with
        block l + 1 (Painters-style, one layer at a time).
    """
    frames = []
    laser = store.table("laser")
    if len(laser):
        cf = laser[(laser.model == model) & (laser.dataset == "counterfact") & (laser.metric == "acc")
                   & (laser.n_reductions <= 1) & ~laser.protocol.str.endswith("valonly")]
        cf = cf.assign(w=cf["value"] * cf["n_items"])
        pooled = cf.groupby(["matrix_type", "layer", "rho"], as_index=False)[["w", "n_items"]].sum()
        pooled["acc"] = pooled["w"] / pooled["n_items"]
        base = pooled[pooled.matrix_type == "base"]["acc"]
        if len(base):
            gains = pooled[pooled.matrix_type != "base"].groupby("layer", as_index=False)["acc"].max()
            frames.append(pd.DataFrame({"layer": gains["layer"].astype(int), "lens": "laser_gain",
                                        "value": 100 * (gains["acc"] - base.iloc[0])}))
    dist = store.table("prune_distance")
    if len(dist):
        d = dist[(dist.model == model) & (dist.n == n_block)]
        frames.append(pd.DataFrame({"layer": d["layer"].astype(int), "lens": "angular_distance", "value": d["value"]}))
    sens = store.table("painters_layer")
    if len(sens):
        s = sens[sens.model == model]
        for variant, lens in (("skip", "skip_cost"), ("swap_next", "swap_cost")):
            part = s[s.variant == variant]
            frames.append(pd.DataFrame({"layer": part["layer"].astype(int), "lens": lens, "value": part["value"]}))
    if not frames:
        return pd.DataFrame(columns=["layer", "lens", "value"])
    return pd.concat(frames, ignore_index=True)


def models(store: results.ResultStore) -> list[str]:
    """Every model with a stored result in any chapter."""
    found: set[str] = set()
    for technique in ("laser", "prune_distance", "prune", "painters", "painters_layer"):
        t = store.table(technique)
        if len(t):
            found |= set(t["model"])
    return sorted(found)


def verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Claims per paper and verdict (rows: paper; columns: the four verdicts, total)."""
    verdict = table["verdict"].str.split(":").str[0]
    counts = pd.crosstab(table["paper"], verdict).reindex(columns=list(verdicts.VERDICTS), fill_value=0)
    counts.loc["all papers"] = counts.sum()
    return counts.assign(total=counts.sum(axis=1))


def atlas_correlations(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlations between the lenses across layers."""
    wide = frame.pivot_table(index="layer", columns="lens", values="value")
    return wide.corr(method="spearman")


def claims(store: results.ResultStore) -> pd.DataFrame:
    """Every headline claim of the three papers that the stored results can test: one
    row per (claim, model) with the paper's number, ours, the interval and a verdict."""
    from . import laser_claims

    rows = laser_claims.claim_rows(store)
    rows += prune_claims.claim_rows(store)  # Gromov et al.: the prune chapter's own verdicts
    rows += painters_claims.claim_rows(store)  # Sun et al.: bootstrap intervals over items
    from . import decision  # LASER outside language: the Sokoban Decision Transformer (paper Table 2)
    rows += decision.claim_rows(store)
    return pd.DataFrame(rows, columns=["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"])
