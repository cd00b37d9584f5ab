"""The Sokoban Decision Transformer's LASER claims (paper Table 2), judged on the stored
protocol rows of ``decision.protocol`` and their per-level rows: per seed a paired score
interval of the change in solved rate, with several seeds a pooled row resampled by seed
then level, and whether the return moves with the solved rate."""

from __future__ import annotations

import numpy as np

from layerlab.core.eval import evaluation
from layerlab.core.io import results
from layerlab.core.evidence import papers, power, stats, verdicts
from layerlab.laser.sokoban.chapter import ITEMS, PAPER_TABLE2, PROTOCOL

NONE_CHOSEN = "no reduction beats the unmodified agent on validation"
CLAIM = "one rank reduction (chosen on validation) raises a Decision Transformer's Sokoban solved rate"
RETURN_CLAIM = "the Sokoban return moves with the solved rate"
# Table 2's +2.33 pp solved, a third of it (papers.SMALLEST_SHARE): fixed before the data
SMALLEST = papers.smallest_effect((PAPER_TABLE2["laser_solved"] - PAPER_TABLE2["base_solved"]) / 100)


def hierarchical_draws(diffs: list[np.ndarray], n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap draws [n_boot] of the pooled mean of per-level paired differences, one
    array [n_levels] per agent seed: resample the seeds with replacement, then the levels
    of each drawn seed (a fresh draw per slot), and average the drawn levels."""
    rng, k = np.random.default_rng(seed), len(diffs)
    slots = rng.integers(0, k, size=(n_boot, k))
    sums, counts = np.zeros(n_boot), np.zeros(n_boot)
    for j in range(k):
        for s, d in enumerate(diffs):
            pick = slots[:, j] == s
            if pick.any():
                idx = rng.integers(0, len(d), size=(int(pick.sum()), len(d)))
                sums[pick] += d[idx].sum(1)
                counts[pick] += len(d)
    return sums / counts


def _percentile(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def _moves_with(solved: tuple[float, float, float], ret: tuple[float, float, float]) -> str:
    """"The return moves with the solved rate": the return's change interval lies on the
    side of 0 that the solved rate's change interval lies on. Not testable when the solved
    rate does not move detectably (its interval holds 0)."""
    (_, slo, shi), (_, rlo, rhi) = solved, ret
    if np.isnan([slo, shi, rlo, rhi]).any():
        return verdicts.not_testable("no per-level rows stored", cause="no data")
    if slo <= 0 <= shi:
        return verdicts.not_testable("the solved rate does not move detectably (its interval holds 0)",
                                     cause="grid cannot falsify")
    return verdicts.above(rlo, rhi) if slo > 0 else verdicts.below(rlo, rhi)


def _fmt(name: str, d: tuple[float, float, float], scale: float = 100.0, unit: str = " pp") -> str:
    return f"{name} {scale * d[0]:+.2f}{unit} [{scale * d[1]:+.2f}, {scale * d[2]:+.2f}]"


def claim_rows(store: results.ResultStore, n_boot: int = 2000) -> list[dict]:
    """The comparison page's rows, per configuration (agent and env config, sweep grid,
    dtype, device; older rows: model, profile, levels): one row per seed (its best on
    validation against the unmodified agent on the same test levels, a score interval for
    the paired change in solved rate), and with several seeds a pooled row (resampled by
    seed, then level: ``hierarchical_draws``). Per-seed rows beside a pooled one are shown
    but not counted (``counted`` False): the pooled row is the claim. A seed whose
    validation chose no reduction is not testable. Plus the return-moves-with-solved row."""
    proto = store.table(PROTOCOL)
    if not len(proto):
        return []
    p = PAPER_TABLE2
    paper = f"DT, 10x10 Sokoban: {p['base_solved']}% → {p['laser_solved']}% solved (~300 levels)"
    paper_ret = f"DT: return {p['base_return']} → {p['laser_return']} with +{p['laser_solved'] - p['base_solved']:.2f} pp solved"
    item_rows = store.table(ITEMS)
    per_level = lambda key, col: item_rows[item_rows.key == key].sort_values("level")[col].to_numpy(float)  # noqa: E731
    cols = [c for c in ("config", "device", "dtype") if c in proto] or ["profile"]
    proto = proto.assign(**{c: proto[c].fillna("") for c in cols})
    rows = []
    for _, group in proto.groupby(["model", "dataset", "n_items", "n_val", *cols], sort=True):
        group = group.drop_duplicates("seed", keep="last").sort_values("seed")
        label, pooled = group["model"].iloc[0], group["seed"].nunique() > 1
        changes = {}
        for _, r in group.iterrows():
            base_s, las_s = per_level(r.base_key, "solved"), per_level(r.laser_key, "solved")
            base_r, las_r = per_level(r.base_key, "return"), per_level(r.laser_key, "return")
            solved = evaluation.paired_difference(base_s, las_s)
            changes[r.seed] = (las_s - base_s, las_r - base_r, solved, stats.paired_t(base_r, las_r))
            best = (r.best.replace("@", ", layer ").replace(":", ", rho ") if r.best else NONE_CHOSEN)
            cols = power.paired_binary_columns(base_s, las_s, SMALLEST)
            note = cols.pop("power_note")
            verdict = (verdicts.not_testable(NONE_CHOSEN, cause="grid cannot falsify") if not r.best else
                       verdicts.not_testable("no per-level rows stored", cause="no data") if not len(base_s) else
                       verdicts.not_testable("the unmodified agent solves no test level", cause="model at chance")
                       if not base_s.any()
                       else verdicts.versus_paper(solved[1], solved[2], smallest=SMALLEST, power_note=note))
            rows.append({"paper": "LASER", "claim": CLAIM, "paper's number": paper, "model": f"{label} (seed {r.seed})",
                         "ours": f"{100 * base_s.mean():.1f}% → {100 * las_s.mean():.1f}% on {len(base_s)} levels "
                                 f"({best}); exact McNemar p = {r.mcnemar_p:.2g}",
                         "interval": _fmt("Δ", solved) + " (score interval)", "verdict": verdict,
                         "counted": not pooled, **cols})
        if pooled and any(not len(c[0]) for c in changes.values()):
            solved = ret = (float("nan"),) * 3
            rows.append({"paper": "LASER", "claim": CLAIM, "paper's number": paper,
                         "model": f"{label} ({len(changes)} seeds pooled)", "ours": "", "interval": "",
                         "verdict": verdicts.not_testable("no per-level rows stored", cause="no data"), "counted": True})
        elif pooled:
            ds = [c[0] for c in changes.values()]
            solved = (float(np.concatenate(ds).mean()), *_percentile(hierarchical_draws(ds, n_boot)))
            dr = [c[1] for c in changes.values()]
            ret = (float(np.concatenate(dr).mean()), *_percentile(hierarchical_draws(dr, n_boot, seed=1)))
            rows.append({"paper": "LASER", "claim": CLAIM, "paper's number": paper,
                         "model": f"{label} ({len(ds)} seeds pooled)",
                         "ours": f"pooled over {len(ds)} seeds, {sum(len(d) for d in ds)} levels",
                         "interval": _fmt("Δ", solved) + " (bootstrap over seeds, then levels)",
                         "verdict": verdicts.above(solved[1], solved[2]), "counted": True})
        else:
            (_, _, solved, ret), = changes.values()
        rows.append({"paper": "LASER", "claim": RETURN_CLAIM, "paper's number": paper_ret,
                     "model": label if not pooled else f"{label} ({len(changes)} seeds pooled)",
                     "ours": _fmt("solved", solved) + "; " + _fmt("return", ret, 1.0, ""),
                     "interval": "return change vs the side of 0 the solved change lies on",
                     "verdict": _moves_with(solved, ret), "counted": True})
    return rows
