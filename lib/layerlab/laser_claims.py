"""LASER's headline claims judged on the stored results, every verdict from an interval
(``layerlab.verdicts``), one protocol at a time.

A protocol is one (split spec, runtime, runtime id, code version): the rows of a sweep run
with one seed, item limit, dtype and device, weights and package versions. Points of different protocols are never mixed: the
claims are judged per protocol, and ``laser.select_best`` refuses a table that holds two
rows for the same point.
"""

from __future__ import annotations

import pandas as pd

from . import evaluation, models, papers, results, verdicts

PROTOCOL_COLUMNS = ("protocol", "runtime", "runtime_id", "code_version")
MLP_TYPES = ("mlp_in", "gate", "mlp_out")
# the paper's names for our matrix types. In a gated (Llama-family) MLP the official LASER
# code reduces gate_proj when asked for U_in (its fc_in) and calls up_proj fc_up; in an
# ungated MLP (GPT-J, GPT-2, Phi) our mlp_in is the paper's U_in.
PAPER_NAMES = {"q": "W_q", "k": "W_k", "v": "W_v", "o": "W_o", "gate": "U_in", "mlp_in": "fc_up", "mlp_out": "U_out"}
UNGATED_NAMES = {**PAPER_NAMES, "mlp_in": "U_in"}
COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]


def paper_name(matrix_type: str, gated: bool | None = True) -> str:
    """Our name with the paper's in brackets, e.g. 'gate [U_in]'; for mlp_in it depends on
    whether the MLP is gated (None: unknown, both are given)."""
    if matrix_type == "mlp_in" and gated is None:
        return "mlp_in [fc_up; U_in if the MLP has no gate]"
    names = PAPER_NAMES if gated or gated is None else UNGATED_NAMES
    return f"{matrix_type} [{names[matrix_type]}]" if matrix_type in names else matrix_type


def protocols(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The rows of each protocol of a LASER table (validation-only search points left
    out), as (label, rows) in a stable order; the label names the protocol's columns."""
    t = table[~table["protocol"].astype(str).str.endswith("valonly")]
    cols = [c for c in PROTOCOL_COLUMNS if c in t.columns]
    if not len(t):
        return []
    groups = t.groupby(cols, dropna=False, sort=True)
    return [(", ".join(str(v) for v in (k if isinstance(k, tuple) else (k,)) if not pd.isna(v)), g)
            for k, g in groups]


def _test_items(items: pd.DataFrame, key: str) -> pd.Series:
    """Per-item correctness (0/1) of one stored point on its test items, in item order."""
    part = items[(items["key"] == key) & (items["split"] == "test")]
    return part.sort_values("item")["correct"].reset_index(drop=True)


def _key(t: pd.DataFrame, matrix_type: str, layer: int, rho: float) -> str:
    keys = t[(t.matrix_type == matrix_type) & (t.layer == layer) & (t.rho == rho)]["key"].unique()
    if len(keys) != 1:
        raise ValueError(f"{len(keys)} stored points for ({matrix_type}, {layer}, {rho}) in one protocol")
    return keys[0]


def _delta(a: pd.Series, b: pd.Series) -> tuple[str, float, float]:
    d, lo, hi = evaluation.paired_difference(a, b)
    return f"Δ {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]", lo, hi


def judge(t: pd.DataFrame, items: pd.DataFrame, dataset: str, model: str, n_layers: int | None = None,
          gated: bool | None = None) -> list[dict]:
    """Claim rows for one protocol's rows ``t`` (summary rows of one model and dataset) and
    the per-item rows ``items`` (technique 'laser_items'):

    (a) the reduction chosen on validation raises test accuracy: paired Δ (LASER − base)
        on the test items, ``verdicts.above``; validation choosing none gives Δ = 0 by
        construction, so [0, 0]: disagrees;
    (b) counterfact, if a composition of >1 reductions is stored: it beats the best single
        reduction (paired Δ composed − best single, ``verdicts.above``);
    (c) counterfact: the best reduction sits in a late-layer (deeper half) MLP matrix,
        judged only when it beats the unmodified model (Δ interval above 0).
    n_layers: the model's blocks (None: the deepest swept layer + 1); gated: whether its
    MLP has a gate (names the matrices in the paper's terms, see ``paper_name``)."""
    from .laser import select_best

    singles = t[t.n_reductions <= 1]
    p = {r["dataset"]: r for r in papers.LASER_TABLE1}.get(dataset)
    paper = f"{p['paper_model']}: {p['paper_base']}% → {p['paper_laser']}% ({p['source']})" if p else ""
    base = _test_items(items, _key(singles, "base", -1, 1.0))
    best = select_best(singles)
    n_layers = n_layers or int(singles["layer"].max()) + 1
    row = {"paper": papers.LASER, "paper's number": paper, "model": model}
    if best is None:
        chosen, where = base, "validation picked no reduction, so the test Δ is 0 by construction"
        interval, lo, hi = "Δ +0.0 pp [+0.0, +0.0]", 0.0, 0.0
    else:
        chosen = _test_items(items, _key(singles, best.matrix_type, best.layer, best.rho))
        interval, lo, hi = _delta(base, chosen)
        where = f"{paper_name(best.matrix_type, gated)}, layer {best.layer} of {n_layers}, rho {best.rho}"
    rows = [{**row, "claim": f"a single rank reduction raises {dataset} test accuracy",
             "ours": f"{100 * base.mean():.1f}% → {100 * chosen.mean():.1f}% on {len(base)} test items ({where})",
             "interval": interval, "verdict": verdicts.above(lo, hi)}]
    if dataset != "counterfact":
        return rows
    composed = t[t.n_reductions > 1]
    if len(composed):
        last = composed[composed.n_reductions == composed.n_reductions.max()]
        comp = _test_items(items, last["key"].iloc[0])
        comp_interval, clo, chi = _delta(chosen, comp)
        rows.append({**row, "claim": "composing reductions across layers (greedy) beats the best single reduction",
                     "paper's number": papers.LASER_GREEDY,
                     "ours": f"best single {100 * chosen.mean():.1f}% → composed {100 * comp.mean():.1f}% "
                             f"({int(last.n_reductions.iloc[0])} reductions: {last.reductions.iloc[0]})",
                     "interval": comp_interval, "verdict": verdicts.above(clo, chi)})
    late = {**row, "claim": "the best reduction is in a late-layer MLP matrix",
            "paper's number": papers.LASER_BEST_LOCATION}
    if best is None or lo <= 0:
        late.update(ours="no reduction beats the unmodified model beyond its interval" if best is None
                    else f"{where}: test Δ interval reaches 0", interval=interval,
                    verdict=f"{verdicts.NOT_TESTABLE}: the best reduction does not beat the unmodified model")
    else:
        is_late = best.layer >= n_layers / 2 and best.matrix_type in MLP_TYPES
        late.update(ours=f"{where} ({'an MLP matrix' if best.matrix_type in MLP_TYPES else 'not an MLP matrix'}, "
                         f"{'deeper' if best.layer >= n_layers / 2 else 'shallower'} half)",
                    interval=interval, verdict=verdicts.AGREES if is_late else verdicts.DISAGREES)
    return rows + [late]


def claim_rows(store: results.ResultStore) -> list[dict]:
    """The comparison page's LASER rows (columns ``COLUMNS``): per model, dataset with a
    paper number (counterfact, fever) and stored protocol, the rows of ``judge``. With
    several protocols for one model and dataset, each gets its own rows, labelled."""
    laser = store.table("laser")
    if not len(laser):
        return []
    items = store.table("laser_items")
    rows = []
    for (model, ds), t in laser.groupby(["model", "dataset"], sort=True):
        if ds not in ("counterfact", "fever"):
            continue
        groups = protocols(t)
        for label, g in groups:
            if not (g.matrix_type == "base").any():
                continue
            name = model if len(groups) == 1 else f"{model} ({label})"
            gated = True if model in models.REGISTRY else None  # the registry's decoders all have gated MLPs
            rows += judge(g, items[(items.model == model) & (items.dataset == ds)], ds, name, gated=gated)
    return rows
