"""LASER's headline claims judged on the stored results, every verdict from an interval
(``layerlab.core.evidence.verdicts``), one protocol at a time.

A protocol is one (split spec, runtime, runtime id, code version): the rows of a sweep run
with one seed, item limit, dtype and device, weights and package versions. Points of different protocols are never mixed: the
claims are judged per protocol, and ``laser.select_best`` refuses a table that holds two
rows for the same point.
"""

from __future__ import annotations

import pandas as pd

from layerlab.core.eval import evaluation
from layerlab.core.model import embedded
from layerlab.core.io import results
from layerlab.core.evidence import papers, power, stats, verdicts

PROTOCOL_COLUMNS = ("protocol", "runtime", "runtime_id", "code_version")
MLP_TYPES = ("mlp_in", "gate", "mlp_out")
ATTENTION_TYPES = ("q", "k", "v", "o")
ATTENTION_MARGIN = 0.05  # "little harm and little gain": a paired test Δ within ±5 pp, stated in advance
NONE_CHOSEN = "no reduction beats the unmodified model on validation"
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


def _items(items: pd.DataFrame, key: str, split: str = "test", column: str = "correct") -> pd.Series:
    """Per-item values (``column``: correct 0/1, or nll in nats) of one stored point on one
    split, in item order."""
    part = items[(items["key"] == key) & (items["split"] == split)]
    return part.sort_values("item")[column].reset_index(drop=True)


def _test_items(items: pd.DataFrame, key: str) -> pd.Series:
    return _items(items, key)


def _key(t: pd.DataFrame, matrix_type: str, layer: int, rho: float) -> str:
    keys = t[(t.matrix_type == matrix_type) & (t.layer == layer) & (t.rho == rho)]["key"].unique()
    if len(keys) != 1:
        raise ValueError(f"{len(keys)} stored points for ({matrix_type}, {layer}, {rho}) in one protocol")
    return keys[0]


def _loglik_beside(items: pd.DataFrame, before: str, after: str) -> str:
    """The answer's log-likelihood gain (−nll, nats per token) of point ``after`` over
    ``before`` on the test items: the continuous statistic shown beside accuracy (#29:
    z ~4 where accuracy gives ~2 on the same items); "" when no nll is stored."""
    if "nll" not in items:
        return ""
    return stats.secondary(_items(items, before, column="nll"), _items(items, after, column="nll"),
                           "answer log-likelihood per token", sign=-1)


def _delta(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> tuple[str, float, float]:
    d, lo, hi = evaluation.paired_difference(a, b, confidence)
    level = "" if confidence == 0.95 else f" ({100 * confidence:g}% interval)"
    return f"Δ {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]{level}", lo, hi


def _val_best(t: pd.DataFrame, mask: pd.Series):
    """The single reduction of ``t`` (one protocol, singles) among rows ``mask`` that
    ``laser.select_best``'s order ranks first on validation (the base excluded); None if none."""
    from .sweep import select_best

    part = t[mask & (t.matrix_type != "base")]
    if not len(part):
        return None
    return select_best(part)


def location(t: pd.DataFrame, items: pd.DataFrame, n_layers: int) -> dict:
    """The best reduction is a late-layer (deeper half) MLP matrix, in two halves, each its
    own paired comparison on the test items of two points chosen on validation:

    MLP half: the best MLP reduction against the best attention reduction;
    late half: the best deeper-half reduction against the best shallower-half one.
    A half this grid leaves out (only MLP types, or only late layers, swept) is "not run"
    (``verdicts.not_run``), with the reason: the full grid runs it. Two comparisons: 97.5% intervals (Holm's first step, which
    keeps the union "either half fails" at 95%). Returns {ours, interval, verdict}."""
    singles = t[t.matrix_type != "base"]
    mlp, late = singles.matrix_type.isin(MLP_TYPES), singles.layer >= n_layers / 2
    halves = {"MLP": (mlp, "only MLP matrices were swept", "only attention matrices were swept"),
              "late": (late, "only deeper-half layers were swept", "only shallower-half layers were swept")}
    conf = stats.holm_confidence(2)
    parts, texts = [], []
    for name, (mask, only_in, only_out) in halves.items():
        if mask.all() or not mask.any():
            parts.append(verdicts.not_run(f"{name} half: {only_in if mask.all() else only_out} "
                                          "(the full grid sweeps every matrix type at every layer)"))
            texts.append(parts[-1].split(": ", 1)[1])
            continue
        a, b = _val_best(singles, mask), _val_best(singles, ~mask)
        ka, kb = _key(singles, a.matrix_type, a.layer, a.rho), _key(singles, b.matrix_type, b.layer, b.rho)
        txt, lo, hi = _delta(_test_items(items, kb), _test_items(items, ka), conf)
        parts.append(verdicts.above(lo, hi))
        texts.append(f"{name} half: {a.matrix_type}@{a.layer} vs {b.matrix_type}@{b.layer}: {txt}")
    return {"ours": "best of each kind chosen on validation, compared on test", "interval": "; ".join(texts),
            "verdict": verdicts.both(*parts)}


def attention_harmless(t: pd.DataFrame, items: pd.DataFrame, margin: float = ATTENTION_MARGIN) -> dict:
    """Fig. 2: attention matrices can be reduced heavily (the smallest rho swept) with little
    harm and little gain. Each attention point at that rho: paired test Δ against the base.
    Agrees when every 95% interval lies within ±``margin``; disagrees when one
    Holm-adjusted interval (m points) lies wholly outside it; inconclusive otherwise."""
    att = t[t.matrix_type.isin(ATTENTION_TYPES)]
    if not len(att):
        return {"ours": "", "interval": "", "verdict": verdicts.not_run(
            f"no attention matrix was swept (this grid: {', '.join(sorted(set(t.matrix_type) - {'base'}))}; "
            "the full grid sweeps every matrix type)")}
    rho = float(att.rho.min())
    points = att[att.rho == rho].drop_duplicates(["matrix_type", "layer"])
    base = _test_items(items, _key(t, "base", -1, 1.0))
    conf, inside, outside, worst = stats.holm_confidence(len(points)), [], [], (0.0, "")
    for _, r in points.iterrows():
        x = _test_items(items, r.key)
        _, lo, hi = evaluation.paired_difference(base, x)
        _, alo, ahi = evaluation.paired_difference(base, x, conf)
        inside.append(lo > -margin and hi < margin)
        outside.append(alo >= margin or ahi <= -margin)
        d = float(x.mean() - base.mean())
        worst = max(worst, (abs(d), f"{r.matrix_type}@{r.layer} Δ {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"))
    m, band = len(points), f"±{100 * margin:.0f} pp"
    if any(outside):
        verdict = f"{verdicts.DISAGREES}: {sum(outside)} of {m} points shown outside {band} (Holm over {m})"
    elif all(inside):
        verdict = f"{verdicts.AGREES}: all {m} points shown within {band}"
    else:
        verdict = (f"{verdicts.INCONCLUSIVE}: {m - sum(inside)} of {m} points admit a change beyond {band}, "
                   f"none is shown outside it at n = {len(base)}")
    return {"ours": f"{m} attention reductions at rho {rho}: {sum(inside)} within {band}",
            "interval": f"largest change {worst[1]}; outside the margin judged on Holm-adjusted intervals "
                        f"({m} comparisons)", "verdict": verdict, "n": len(base),
            "statistic": f"paired Tango score interval per point, accuracy, equivalence {band}"}


def accuracy_and_loss(t: pd.DataFrame, items: pd.DataFrame, best) -> dict:
    """Accuracy can rise while the answer's loss worsens: for the reduction chosen on
    validation, the paired test Δ accuracy (score interval) is above 0 and the paired Δ of
    the answer's nll (nats, paired t) is above 0. Not testable without a chosen reduction
    or stored nll."""
    if best is None:
        return {"ours": "", "interval": "", "verdict": verdicts.not_testable(NONE_CHOSEN, cause="grid cannot falsify")}
    kb, kc = _key(t, "base", -1, 1.0), _key(t, best.matrix_type, best.layer, best.rho)
    if "nll" not in items or items.loc[items.key.isin([kb, kc]), "nll"].isna().any():
        return {"ours": "", "interval": "", "verdict": verdicts.not_testable("no per-item nll stored", cause="no data")}
    acc_txt, alo, ahi = _delta(_test_items(items, kb), _test_items(items, kc))
    dn, nlo, nhi = stats.paired_t(_items(items, kb, column="nll"), _items(items, kc, column="nll"))
    return {"ours": f"{best.matrix_type}@{best.layer}, rho {best.rho}",
            "interval": f"accuracy {acc_txt}; answer nll Δ {dn:+.3f} nats [{nlo:+.3f}, {nhi:+.3f}] (paired t)",
            "verdict": verdicts.both(verdicts.above(alo, ahi), verdicts.above(nlo, nhi))}


def judge(t: pd.DataFrame, items: pd.DataFrame, dataset: str, model: str, n_layers: int | None = None,
          gated: bool | None = None) -> list[dict]:
    """Claim rows for one protocol's rows ``t`` (summary rows of one model and dataset) and
    the per-item rows ``items`` (technique 'laser_items'; 0/1 ``correct`` per item):

    (a) the reduction chosen on validation raises test accuracy: paired Δ (LASER − base)
        on the test items with a score interval (``evaluation.paired_difference``),
        ``verdicts.above``; not testable when validation chooses no reduction;
    counterfact only:
    (b) greedy composition beats the best single reduction: the composition with the best
        validation accuracy against the single one, paired on test; always emitted, not
        testable when no composition of two or more reductions is stored;
    (c) the best reduction sits in a late-layer MLP matrix (``location``);
    (d) attention matrices reduce with little harm or gain (``attention_harmless``);
    (e) accuracy rises while the answer's loss worsens (``accuracy_and_loss``).
    n_layers: the model's blocks (None: the deepest swept layer + 1); gated: whether its
    MLP has a gate (names the matrices in the paper's terms, see ``paper_name``)."""
    from .sweep import select_best

    singles = t[t.n_reductions <= 1]
    p = {r["dataset"]: r for r in papers.LASER_TABLE1}.get(dataset)
    paper = f"{p['paper_model']}: {p['paper_base']}% → {p['paper_laser']}% ({p['source']})" if p else ""
    base = _test_items(items, _key(singles, "base", -1, 1.0))
    best = select_best(singles)
    n_layers = n_layers or int(singles["layer"].max()) + 1
    row = {"paper": papers.LASER, "paper's number": paper, "model": model}
    gain = {**row, "claim": f"a single rank reduction raises {dataset} test accuracy"}
    if best is None:
        chosen = base
        gain.update(ours=f"{100 * base.mean():.1f}% on {len(base)} test items; {NONE_CHOSEN}", interval="",
                    verdict=verdicts.not_testable(NONE_CHOSEN, cause="grid cannot falsify"))
    else:
        chosen_key = _key(singles, best.matrix_type, best.layer, best.rho)
        chosen = _test_items(items, chosen_key)
        interval, lo, hi = _delta(base, chosen)
        where = f"{paper_name(best.matrix_type, gated)}, layer {best.layer} of {n_layers}, rho {best.rho}"
        smallest = papers.smallest_effect((p["paper_laser"] - p["paper_base"]) / 100) if p else None
        cols = power.paired_binary_columns(base, chosen, smallest)
        note = cols.pop("power_note")
        verdict = (verdicts.versus_paper(lo, hi, smallest=smallest, power_note=note) if smallest
                   else verdicts.direction(lo, hi, power_note=note))
        gain.update(ours=f"{100 * base.mean():.1f}% → {100 * chosen.mean():.1f}% on {len(base)} test items ({where})",
                    interval=interval, verdict=verdict, **cols,
                    secondary=_loglik_beside(items, _key(singles, "base", -1, 1.0), chosen_key))
    rows = [gain]
    if dataset != "counterfact":
        return rows
    greedy = {**row, "claim": "composing reductions across layers (greedy) beats the best single reduction",
              "paper's number": papers.LASER_GREEDY}
    composed = t[(t.n_reductions > 1) & (t.split == "val") & (t.metric == "acc")]
    if best is None or not len(composed):
        why = NONE_CHOSEN if best is None else "greedy kept one reduction or none (no composition stored)"
        rows.append({**greedy, "ours": "", "interval": "", "verdict": verdicts.not_testable(
            why, cause="grid cannot falsify")})
    else:
        pick = composed.sort_values(["value", "n_reductions"], ascending=[False, True], kind="stable").iloc[0]
        comp = _test_items(items, pick["key"])
        comp_interval, clo, chi = _delta(chosen, comp)
        cols = power.paired_binary_columns(chosen, comp, None)
        note = cols.pop("power_note")
        rows.append({**greedy, "ours": f"best single {100 * chosen.mean():.1f}% → composed {100 * comp.mean():.1f}% "
                                       f"({int(pick.n_reductions)} reductions: {pick.reductions}; chosen on validation)",
                     "interval": comp_interval, "verdict": verdicts.direction(clo, chi, power_note=note), **cols,
                     "secondary": _loglik_beside(items, chosen_key, pick["key"])})
    if best is None:
        loc = {"ours": "", "interval": "", "verdict": verdicts.not_testable(NONE_CHOSEN, cause="grid cannot falsify")}
    else:
        loc = location(singles, items, n_layers)
        loc["ours"] = f"chosen: {where}; {loc['ours']}"
    rows.append({**row, "claim": "the best reduction is in a late-layer MLP matrix",
                 "paper's number": papers.LASER_BEST_LOCATION, **loc})
    rows.append({**row, "claim": "attention matrices can be reduced heavily with little harm and little gain",
                 "paper's number": papers.LASER_ATTENTION, **attention_harmless(singles, items)})
    rows.append({**row, "claim": "accuracy can rise while the loss of the answer worsens",
                 "paper's number": papers.LASER_ACC_VS_LOSS, **accuracy_and_loss(singles, items, best)})
    return rows


def claim_rows(store: results.ResultStore) -> list[dict]:
    """The comparison page's LASER rows (columns ``COLUMNS``): per model, dataset with a
    paper number (counterfact, fever) and stored protocol, the rows of ``judge``. With
    several protocols for one model and dataset, each gets its own rows, labelled; only
    those of the protocol with the most test items are counted (``counted``)."""
    laser = store.table("laser")
    if not len(laser):
        return []
    items = store.table("laser_items")
    rows = []
    for (model, ds), t in laser.groupby(["model", "dataset"], sort=True):
        if ds not in ("counterfact", "fever"):
            continue
        groups = [(label, g) for label, g in protocols(t) if (g.matrix_type == "base").any()]
        size = [int(g[(g.matrix_type == "base") & (g.split == "test")]["n_items"].max()) for _, g in groups]
        for i, (label, g) in enumerate(groups):
            name = model if len(groups) == 1 else f"{model} ({label})"
            gated = True if model in embedded.REGISTRY else None  # the registry's decoders all have gated MLPs
            primary = i == max(range(len(groups)), key=lambda j: (size[j], j))
            rows += [r | {"counted": primary}
                     for r in judge(g, items[(items.model == model) & (items.dataset == ds)], ds, name, gated=gated)]
    return rows
