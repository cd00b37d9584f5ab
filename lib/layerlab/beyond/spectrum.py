"""LASER without a search, and the other half of the spectrum (issue #22, section 4).

(i) A rank from the spectrum alone (laserRMT, ``rank.mp_rank``): per matrix W [out, in],
    k = #(singular values above the Marchenko-Pastur edge sigma * (1 + sqrt(beta))), with
    sigma = IQR(singular values) / 1.349 and beta = min/max of the shape. No data is seen.
    It is applied to the late MLP matrices LASER reduces (mlp_in and mlp_out of the deepest
    quarter of the blocks), one matrix at a time and all of them composed, and set beside
    the LASER reduction chosen on the 20% validation split over the same matrices
    (``laser.sweep.select_best``), on the same 80% test items, paired per item.
(ii) The bottom-k ablation (the LASER authors' suggestion in their issue #26): at the chosen
    (tau, l, rho), keep only the k SMALLEST singular components (``part="smallest"``,
    k = ``rank.rank_for(rho)``, the count LASER keeps) and compare with the top k (LASER)
    and the unmodified model; and the Fig. 5 analysis with the halves swapped: "kept" = the
    k smallest components, "removed" = the other max_rank - k (the top ones).

Every point is a ``laser.sweep.Sweeper`` point (summary and per-item rows in the results
store, keyed by the reductions, dataset, split spec and runtime), so the LASER chapter's
stored sweep is reused when its protocol (seed, item limit) is the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch
from layerlab.core.compute import params
from layerlab.core.evidence import power, stats, verdicts
from layerlab.laser import rank, sweep as laser
from layerlab.laser.analysis import GROUPS
from layerlab.laser.claims import NONE_CHOSEN
from layerlab.laser.tasks import item_metrics

MATRIX_TYPES = ("mlp_in", "mlp_out")
PROFILES = ("smoke", "quick", "full")
OVERRIDABLE = ("datasets", "matrix_types", "layers", "rhos", "limits", "rules", "per_matrix")
NONINFERIORITY = 0.05  # "MP does as well as LASER": the paired test Δ stays above -5 pp (stated in advance)
UNMODIFIED, LASER, SMALLEST = "unmodified", "LASER (top k, chosen on val)", "bottom k (smallest)"
RULE_NAMES = {"laserrmt": "laserRMT edge", "iterative": "iterative noise edge"}


TECHNIQUE = "laser_spectrum"  # the variants' points (and "laser_spectrum_items")


def composed(rule: str) -> str:
    """The variant name of every MP reduction of ``rule`` composed."""
    return f"MP ({RULE_NAMES[rule]}), composed"


def deep_layers(n_layers: int) -> list[int]:
    """The deepest quarter of the blocks (``laser.sweep.profile_config``'s reduced grid)."""
    return list(range(n_layers - max(1, n_layers // 4), n_layers))


def profile_config(profile: str, n_layers: int, **overrides) -> dict:
    """Settings of a profile, overridden by every non-None override (``OVERRIDABLE``).

    datasets; matrix_types and layers (the matrices MP acts on and LASER selects among);
    rhos {dataset: LASER's selection grid} and limits {dataset: items}: by default the
    LASER chapter's for that dataset (its full grid's rhos on the main dataset, the reduced
    grid's on the others; its item limits), so its stored sweep points are reused. A list
    or an int applies to every dataset."""
    params.check_names(profile, PROFILES, overrides, OVERRIDABLE)
    lc = laser.profile_config(profile, n_layers, MATRIX_TYPES)
    # quick: CounterFact only (about 90 points of 100 items there; a second dataset doubles it)
    datasets = {"smoke": ["counterfact"], "quick": ["counterfact"], "full": list(laser.DATASETS)}[profile]
    cfg = {"datasets": datasets, "matrix_types": list(MATRIX_TYPES),
           "layers": deep_layers(n_layers)[-2:] if profile == "smoke" else deep_layers(n_layers),
           "rhos": None, "limits": None,
           "rules": list(rank.MP_RULES),
           # each MP matrix alone: ~85% of this section's points; quick keeps what the claims compare
           "per_matrix": profile != "quick"}
    cfg = params.override(cfg, **overrides)
    main = {ds: ds == lc["datasets"][0] or ds not in laser.DATASETS for ds in cfg["datasets"]}  # full grid there
    given = cfg["limits"] if isinstance(cfg["limits"], dict) else {}
    cfg["limits"] = {ds: given.get(ds, cfg["limits"] if isinstance(cfg["limits"], int) else
                                   laser.limit_for(lc, ds, main[ds])) for ds in cfg["datasets"]}
    given = cfg["rhos"] if isinstance(cfg["rhos"], dict) else {}
    cfg["rhos"] = {ds: list(given.get(ds, cfg["rhos"] if isinstance(cfg["rhos"], list) else
                                      lc["rhos"] if main[ds] else lc["other_rhos"])) for ds in cfg["datasets"]}
    bad = [r for v in cfg["rhos"].values() for r in v if isinstance(r, bool) or not isinstance(r, (int, float))
           or not 0 < r <= 1]
    if bad:
        raise ValueError(f"rhos: {bad} are not rank fractions; allowed: numbers in (0, 1]")
    if not cfg["rules"] or any(r not in rank.MP_RULES for r in cfg["rules"]):
        raise ValueError(f"rules: {cfg['rules']!r}; allowed: a non-empty list of {', '.join(rank.MP_RULES)}")
    bad = [t for t in cfg["matrix_types"] if t not in ("mlp_in", "gate", "mlp_out")]
    if bad:
        raise ValueError(f"matrix_types: {bad} are not MLP matrices; allowed: mlp_in, gate, mlp_out")
    if not isinstance(cfg["per_matrix"], bool):
        raise ValueError(f"per_matrix: {cfg['per_matrix']!r}; allowed: True or False")
    return cfg


def mp_table(model: nn.Module, matrix_types, layers, svd: rank.SVDCache | None = None,
             rules=rank.MP_RULES) -> pd.DataFrame:
    """Per rule and matrix: rule, matrix_type, layer, shape, k (MP rank), max_rank, edge,
    sigma (units of singular values), rho (the Reduction's k / max_rank), kept % and the
    ``rank.Reduction``."""
    rows = []
    for t in matrix_types:
        for layer in layers:
            w = svd.original(t, layer) if svd is not None else arch.weight(model, t, layer).read()
            s = rank.singular_values(w)  # one float64 SVD for every rule
            for rule in rules:
                mp = rank.mp_rank_of(s, tuple(w.shape), rule)
                rows.append({"rule": rule, "matrix_type": t, "layer": layer, "shape": "x".join(map(str, w.shape)), **mp,
                             "kept %": 100 * max(mp["k"], 1) / mp["max_rank"],
                             "reduction": rank.Reduction(t, layer, mp["rho"])})
    order = {r: i for i, r in enumerate(rules)}
    return pd.DataFrame(rows).sort_values("rule", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def _all_stored(sweeper: laser.Sweeper, points) -> bool:
    return all(sweeper.store.has(laser.TECHNIQUE, k) and sweeper.store.has("laser_items", k)
               for k in map(sweeper.key, points))


def select(sweeper: laser.Sweeper, matrix_types, layers, rhos) -> tuple[rank.Reduction | None, str]:
    """LASER's choice among (matrix_types x layers x rhos) on the validation split
    (``laser.select_best``): read from the stored full sweep when every point is there
    (the LASER chapter's), else scored now on the validation items only. Returns
    (the reduction, None when the unmodified model is best; where it came from)."""
    rank.validate(sweeper.model, matrix_types, layers, rhos)
    points = [[]] + [[r] for r in laser.grid(matrix_types, layers, rhos)]
    if _all_stored(sweeper, points):
        return laser.select_best(pd.concat(sweeper.points(points), ignore_index=True)), "stored full sweep"
    search = sweeper.validation_only()
    table = pd.concat(search.points(points), ignore_index=True)
    search.release()
    return laser.select_best(table), "validation-only sweep"


def variants(best: rank.Reduction | None, mp: pd.DataFrame, per_matrix: bool = True) -> dict[str, list[rank.Reduction]]:
    """Name -> reductions: unmodified, LASER's choice (top k), the k smallest components at
    the same (tau, l, rho), and per MP rule all of the rule's reductions composed and (with
    ``per_matrix``) each matrix alone (rho = 1: the unmodified model)."""
    out = {UNMODIFIED: [], LASER: [best] if best else []}
    if best is not None:
        out[SMALLEST] = [rank.Reduction(best.matrix_type, best.layer, best.rho, "smallest")]
    for rule, part in mp.groupby("rule", sort=False):
        for r in part["reduction"] if per_matrix else ():
            out[f"MP ({RULE_NAMES[rule]}) {r.matrix_type}@{r.layer}"] = [r] if r.rho < 1 else []
        out[composed(rule)] = [r for r in part["reduction"] if r.rho < 1]
    return out


def run_dataset(model: nn.Module, tokenizer, model_name: str, store, dataset: str, cfg: dict, seed: int = 0,
                data_dir=None, svd: rank.SVDCache | None = None) -> dict:
    """Everything of one dataset: LASER's choice on validation, the MP ranks, and every
    variant's stored per-item rows. Returns {dataset, best, source, mp, variants, items
    (name -> per-item rows: item, split, correct, nll), sweeper}."""
    limit = cfg["limits"][dataset]
    task = laser.build_task(dataset, data_dir, limit, seed)
    chapter = laser.Sweeper(model, tokenizer, model_name, task, store, seed=seed, limit=limit, svd=svd)
    best, source = select(chapter, cfg["matrix_types"], cfg["layers"], cfg["rhos"][dataset])
    chapter.release()
    # the variants in a table of their own: MP ranks and bottom-k are not points of LASER's grid, and the
    # LASER chapter's selection and claims must never see them
    sweeper = laser.Sweeper(model, tokenizer, model_name, task, store, seed=seed, limit=limit, svd=chapter.svd,
                            technique=TECHNIQUE)
    mp = mp_table(model, cfg["matrix_types"], cfg["layers"], sweeper.svd, cfg["rules"])
    named = variants(best, mp, cfg.get("per_matrix", True))
    sweeper.points(list(named.values()))
    items = {name: sweeper.items(reds) for name, reds in named.items()}
    sweeper.release()
    return {"dataset": dataset, "best": best, "source": source, "mp": mp, "variants": named, "items": items,
            "sweeper": sweeper}


def _test(items: pd.DataFrame, column: str) -> pd.Series:
    part = items[items["split"] == "test"]
    return part.set_index("item")[column].sort_index()


def compare_table(result: dict) -> pd.DataFrame:
    """Per variant on the test items: accuracy (Wilson 95%), the paired Δ accuracy
    against the unmodified model and against LASER's choice (Tango score intervals, pp),
    the mean answer nll (nats) and its paired Δ against LASER's (paired t)."""
    items, rows = result["items"], []
    base, las = _test(items[UNMODIFIED], "correct"), _test(items[LASER], "correct")
    las_nll = _test(items[LASER], "nll")
    for name, reds in result["variants"].items():
        acc, nll = _test(items[name], "correct"), _test(items[name], "nll")
        lo, hi = stats.wilson_arrays(acc.sum(), len(acc))
        d0, d0lo, d0hi = stats.paired_proportion(base.loc[acc.index], acc)
        d1, d1lo, d1hi = stats.paired_proportion(las.loc[acc.index], acc)
        dn, dnlo, dnhi = stats.paired_t(las_nll.loc[nll.index], nll)
        rows.append({"variant": name, "reductions": ";".join(f"{r.matrix_type}@{r.layer}:{r.rho:.4g}:{r.part}"
                                                             for r in reds) or "none",
                     "n test": len(acc), "acc %": 100 * acc.mean(), "acc 95%": f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                     "Δ vs unmodified (pp)": f"{100 * d0:+.1f} [{100 * d0lo:+.1f}, {100 * d0hi:+.1f}]",
                     "Δ vs LASER (pp)": f"{100 * d1:+.1f} [{100 * d1lo:+.1f}, {100 * d1hi:+.1f}]",
                     "nll": float(nll.mean()), "Δ nll vs LASER": f"{dn:+.3f} [{dnlo:+.3f}, {dnhi:+.3f}]"})
    return pd.DataFrame(rows)


@torch.no_grad()
def swapped_predictions(sweeper: laser.Sweeper, best: rank.Reduction, generic: set[int]) -> pd.DataFrame:
    """``laser.analysis.component_predictions`` with the halves swapped: "kept" is the k
    smallest components (``part="smallest"``, k = rank_for(best.rho)), "removed" the other
    max_rank - k (the top ones). Groups: corrected / correct before / still wrong, by the
    full matrix and the k smallest components. Same columns, so ``analysis.summary`` reads it."""
    task, model, tok = sweeper.task, sweeper.model, sweeper.tok
    if task.kind != "answer":
        raise ValueError("swapped_predictions needs an answer task (e.g. counterfact)")
    r = min(arch.weight(model, best.matrix_type, best.layer).read().shape)
    k = rank.rank_for(best.rho, r)
    rest = [rank.Reduction(best.matrix_type, best.layer, (r - k) / r, "top")] if k < r else None
    names = {"full": [], "kept": [rank.Reduction(best.matrix_type, best.layer, best.rho, "smallest")],
             "removed": rest}
    if rest is None:
        raise ValueError(f"rho {best.rho} keeps every component: nothing is removed")
    got = dict(sweeper.row_scores(list(names.values())))
    scores = {n: got[i] for i, n in enumerate(names)}
    right = {n: item_metrics(task, scores[n])["correct"].to_numpy() == 1 for n in ("full", "kept")}
    group = np.where(right["full"], GROUPS[1], np.where(right["kept"], GROUPS[0], GROUPS[2]))
    gold = np.asarray(scores["full"].first_gold)
    emb = model.get_input_embeddings().weight.detach().float()
    unit = lambda ids: torch.nn.functional.normalize(emb[torch.as_tensor(ids, device=emb.device)], dim=-1)  # noqa: E731
    out = {"item": task.item_ids, "group": group, "answer": [c.strip() for c in task.continuations], "gold_id": gold}
    for name, s in scores.items():
        ids = np.asarray(s.first_top)
        out[f"{name}_id"], out[name] = ids, [tok.decode([int(t)]) for t in ids]
        out[f"{name}_generic"] = np.isin(ids, list(generic))
        out[f"cos_{name}"] = (unit(ids) * unit(gold)).sum(-1).cpu().numpy()
    return pd.DataFrame(out)[sweeper.splits == "test"].reset_index(drop=True)


def claims(results: list[dict], model: str, margin: float = NONINFERIORITY) -> list[dict]:
    """Claim rows (``laser.claims.COLUMNS``) per dataset, each from a paired test interval:

    MP does as well as LASER (per rule): the MP composition (no search, no data) against LASER's
        choice on validation, non-inferiority within ``margin``: agrees when the 95%
        interval of MP − LASER lies above -margin, disagrees when it lies at or below it;
    the top components carry the answers: the k smallest components alone against LASER's
        top k: agrees when the interval of smallest − top lies below 0.
    Both compare two modified models, so no floor on the unmodified one applies (it is
    reported in "ours"); not testable only when validation picks no reduction (bottom k)."""
    rows = []
    for res in results:
        items, ds = res["items"], res["dataset"]
        task = res["sweeper"].task
        chance = 0.0 if task.kind == "answer" else 1.0 / (int(task.row_choice.max()) + 1)
        base = _test(items[UNMODIFIED], "correct")
        _, why = stats.informative(int(base.sum()), len(base), chance)
        common = {"paper": "laserRMT / LASER issue #12", "model": model}
        las = _test(items[LASER], "correct")
        for rule in [r for r in rank.MP_RULES if composed(r) in items]:
            mp = _test(items[composed(rule)], "correct")
            d, lo, hi = stats.paired_proportion(las, mp.loc[las.index])
            cols = power.paired_binary_columns(las, mp.loc[las.index], -margin)
            b = res["best"]
            chosen = "none" if b is None else f"{b.matrix_type}@{b.layer}:{b.rho}"
            rows.append({**common, "claim": f"a Marchenko-Pastur rank ({RULE_NAMES[rule]}; no search) does as well "
                                            f"as LASER's validated choice on {ds} (within {100 * margin:.0f} pp)",
                         "paper's number": "laserRMT: a rank from each matrix's MP edge, no grid search",
                         "ours": f"LASER {100 * las.mean():.1f}% ({chosen}), MP composed over "
                                 f"{len(res['variants'][composed(rule)])} matrices {100 * mp.mean():.1f}% "
                                 f"on {len(las)} test items (unmodified: {why})",
                         "interval": f"MP − LASER {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                                     "(paired score)",
                         "verdict": verdicts.non_inferior(lo, hi, margin, power_note=cols.pop("power_note")), **cols})
        claim = f"the k smallest components alone answer worse than LASER's top k on {ds}"
        if res["best"] is None:
            rows.append({**common, "paper": "LASER issue #26", "claim": claim, "paper's number": "", "ours": "",
                         "interval": "", "verdict": verdicts.not_testable(NONE_CHOSEN)})
            continue
        small = _test(items[SMALLEST], "correct")
        d, lo, hi = stats.paired_proportion(las, small.loc[las.index])
        cols = power.paired_binary_columns(las, small.loc[las.index], None)
        rows.append({**common, "paper": "LASER issue #26", "claim": claim,
                     "paper's number": "maintainer: compare the top-k with the bottom-k components (no number)",
                     "ours": f"top k {100 * las.mean():.1f}%, smallest k {100 * small.mean():.1f}% "
                             f"({len(las)} test items)",
                     "interval": f"smallest − top {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                     "verdict": verdicts.direction(lo, hi, -1, power_note=cols.pop("power_note")), **cols})
    return rows



def point_keys(run: dict) -> list[str]:
    """The result keys of every stored point a ``run_dataset`` result was built from (what its
    claim rows depend on)."""
    return [run["sweeper"].key(reds) for reds in run["variants"].values()]
