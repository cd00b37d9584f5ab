"""The LASER chapter's pipeline, as the notebook runs it: check the parameters and load
(``setup``), sweep every dataset locally or on Ray (``run_sweeps``), and the tables of the
selection protocol (``table1``, ``verdict_lines``). The method itself is in ``laser``.

On Ray the driver holds no model while the tasks run: ``setup`` plans the workers' runtime
and validates on a weightless model (``planning``); ``run_sweeps`` runs every dataset's
points as tasks, then loads the driver's model with the workers' runtime to read them."""

from __future__ import annotations

import time

import pandas as pd

from layerlab.core.model import arch, models
from layerlab.core.compute import distributed, params, planning
from layerlab.core.io import results
from layerlab.core.evidence import verdicts
from . import sweep as laser, claims as laser_claims, rank
from . import distributed as laser_distributed
from layerlab.core.evidence import papers


def setup(model: str, profile: str, results_dir: str, data_dir=None, seed: int = 0, device: str = "auto",
          dtype: str = "auto", executor: str = "local", ray_address=None, overrides: dict | None = None) -> dict:
    """Everything checked before any expensive work, then the model loaded and the tasks
    built. overrides: the notebook's grid parameters (None: the profile's). Returns
    {lm, tok, n_layers, cfg, tasks, store, full_grid, planned}.

    On Ray nothing is loaded: the workers' runtime is planned (``planning.plan_ray``, refused
    here when this driver could not load it later) and ``lm`` is a weightless model in its
    dtype (``planning.skeleton``) until ``run_sweeps`` loads the real one; ``planned`` is
    that runtime (None for the local executor)."""
    if profile not in laser.PROFILES:
        raise ValueError(f"profile: {profile!r} is not one of {', '.join(laser.PROFILES)}")
    distributed.validate_executor(executor, ray_address)  # a bad address fails before any model is loaded
    planned = planning.plan_ray(model, device, dtype, ray_address) if executor == "ray" else None
    lm, tok = planning.skeleton(model, planned) if planned else models.load(model, dtype=dtype, device=device)
    n_layers = arch.n_layers(lm)
    cfg = params.override(laser.profile_config(profile, n_layers, arch.matrix_types(lm)), **(overrides or {}))
    rank.validate(lm, cfg["matrix_types"], cfg["layers"], cfg["rhos"])
    rank.validate(lm, cfg["matrix_types"], cfg["other_layers"], cfg["other_rhos"])
    full_grid = {ds: ds == cfg["datasets"][0] or ds not in laser.DATASETS for ds in cfg["datasets"]}
    tasks = {ds: laser.build_task(ds, data_dir, laser.limit_for(cfg, ds, full_grid[ds]), seed) for ds in cfg["datasets"]}
    return {"lm": lm, "tok": tok, "n_layers": n_layers, "cfg": cfg, "tasks": tasks,
            "store": results.ResultStore(results_dir), "full_grid": full_grid, "planned": planned}


def tasks_table(run: dict) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": laser.dataset_name(ds), "items": t.n_items, "scored rows": len(t.contexts),
                          "grid": "full" if run["full_grid"][ds] else "reduced"} for ds, t in run["tasks"].items()])


def _grid(cfg: dict, full: bool) -> tuple:
    return (cfg["matrix_types"], cfg["layers"] if full else cfg["other_layers"],
            cfg["rhos"] if full else cfg["other_rhos"])


def run_on_ray(run: dict, model: str, results_dir: str, data_dir=None, seed: int = 0, device: str = "auto",
               dtype: str = "auto", ray_address=None, workers=None) -> dict:
    """Every dataset's points as Ray tasks (each plan checked against ``run["planned"]``
    before its tasks start), then the driver's model loaded with the workers' runtime
    (``planning.load_planned``: only now, so that no copy of it shares a GPU with a task)
    into ``run["lm"]`` and ``run["tok"]``. Returns seconds per dataset."""
    if not run.get("planned"):
        raise ValueError("executor: 'ray' here needs the run that setup(..., executor='ray') returned")
    seconds = {}
    for ds in run["tasks"]:
        full, t0 = run["full_grid"][ds], time.time()
        laser_distributed.run_laser_points(model, ds, [[]] + [[r] for r in laser.grid(*_grid(run["cfg"], full))],
                                     results_dir=results_dir, seed=seed, limit=laser.limit_for(run["cfg"], ds, full),
                                     data_dir=data_dir, device=device, dtype=dtype, executor="ray",
                                     ray_address=ray_address, workers=workers, expected_runtime=run["planned"])
        seconds[ds] = time.time() - t0
    run["lm"], run["tok"] = planning.load_planned(model, run["planned"])
    return seconds


def run_sweeps(run: dict, model: str, results_dir: str, data_dir=None, seed: int = 0, device: str = "auto",
               dtype: str = "auto", executor: str = "local", ray_address=None, workers=None) -> tuple[dict, dict, dict]:
    """The (tau, l, rho) sweep of every dataset (the full grid on the main dataset and user
    files, the reduced grid on the others); on Ray the points of every dataset run as tasks
    and land in the store first (``run_on_ray``: the runtime checked before any task starts,
    the driver's model loaded after), and the sweeps below read them. Returns (sweepers,
    tables, seconds) keyed by dataset; the Sweepers hold ``run["lm"]``, the loaded model."""
    on_ray = (run_on_ray(run, model, results_dir, data_dir, seed, device, dtype, ray_address, workers)
              if executor == "ray" else {})
    cfg, sweepers, tables, seconds = run["cfg"], {}, {}, {}
    svd = rank.SVDCache(run["lm"])  # one bounded cache for every dataset (recomputes what it evicted: rank.SVDCache)
    for ds, task in run["tasks"].items():
        full, t0 = run["full_grid"][ds], time.time()
        limit = laser.limit_for(cfg, ds, full)
        sweepers[ds] = laser.Sweeper(run["lm"], run["tok"], model, task, run["store"], seed=seed, limit=limit, svd=svd)
        tables[ds] = laser.sweep(sweepers[ds], *_grid(cfg, full))
        sweepers[ds].release()  # its prefix states: captured again only if a later step needs new points
        seconds[ds] = time.time() - t0 + on_ray.get(ds, 0.0)
    return sweepers, tables, seconds


def _pct(value: float, ci: tuple[float, float]) -> str:
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def table1(reports: dict, gated: bool) -> pd.DataFrame:
    """The paper's Table 1 beside ours: per dataset the reduction chosen on validation and
    base / LASER test accuracy with 95% intervals and the paired difference."""
    rows = []
    for r in reports.values():
        b, (d, lo, hi) = r["best"], r["diff_acc"]
        rows.append({"dataset": r["dataset"], "n test": r["n_test"],
                     "best on val": "none (unmodified is best)" if b is None else
                     f"{laser_claims.paper_name(b.matrix_type, gated)}, layer {b.layer}, rho {b.rho}",
                     "base acc %": _pct(r["base_acc"], r["base_acc_ci"]),
                     "LASER acc %": _pct(r["laser_acc"], r["laser_acc_ci"]),
                     "Δ acc (pp)": f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                     "base nll": round(r["base_nll"], 3), "LASER nll": round(r["laser_nll"], 3)})
    table = pd.DataFrame(rows).merge(pd.DataFrame(papers.LASER_TABLE1), on="dataset", how="outer")
    table.loc[table["n test"].isna(), "best on val"] = "not replicated: no data (see below)"
    return table.astype(object).fillna("")


WHY = {verdicts.AGREES: "LASER **raises** test accuracy (the paired score interval lies above 0)",
       verdicts.DISAGREES: "LASER does **not** raise test accuracy (the paired interval lies at or below 0)",
       verdicts.INCONCLUSIVE: "the change is **not distinguishable from zero** at this sample size"}


def verdict_lines(reports: dict) -> str:
    """One markdown line per dataset: the change, its interval, the verdict and the paper's number."""
    paper, lines = {p["dataset"]: p for p in papers.LASER_TABLE1}, []
    for ds, r in reports.items():
        d, lo, hi = r["diff_acc"]
        verdict = (WHY[verdicts.above(lo, hi)] if r["best"] else
                   f"validation picked no reduction, so LASER changes nothing: "
                   f"{verdicts.not_testable(laser_claims.NONE_CHOSEN, cause='grid cannot falsify')}")
        if ds == "hotpotqa" and r["base_acc"] == 0:
            verdict += " (exact greedy answers are out of reach for this model: 0% before and after)"
        p = paper.get(r["dataset"])
        lines.append(f"- **{r['dataset']}** ({r['n_test']} test items): {100 * r['base_acc']:.1f}% → "
                     f"{100 * r['laser_acc']:.1f}%, Δ = {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]: {verdict}."
                     + (f" The paper: {p['paper_model']} {p['paper_base']}% → {p['paper_laser']}% ({p['source']})."
                        if p else ""))
    return "\n".join(lines)


def greedy_summary(g: dict, tables: dict, main: str) -> str:
    """The greedy composition's kept reductions and its test accuracy beside the base's."""
    final = g["table"]
    test_acc = final[(final.split == "test") & (final.metric == "acc")].iloc[0]
    t = tables[main]
    base = t[(t.matrix_type == "base") & (t.split == "test") & (t.metric == "acc")].iloc[0]
    kept = ", ".join(f"{k.matrix_type}@{k.layer} (ρ={k.rho})" for k in g["kept"]) or "none"
    return (f"Kept {len(g['kept'])} reductions: {kept}. Test accuracy {100 * base.value:.1f}% "
            f"[{100 * base.ci_low:.1f}, {100 * base.ci_high:.1f}] → {100 * test_acc.value:.1f}% "
            f"[{100 * test_acc.ci_low:.1f}, {100 * test_acc.ci_high:.1f}].")


def claims(run: dict, tables: dict, final: pd.DataFrame, main: str, model: str) -> pd.DataFrame:
    """This run's LASER claim rows (``laser_claims.judge`` on this run's points only)."""
    store, rows = run["store"], []
    gated = "gate" in arch.matrix_types(run["lm"])
    for ds in run["tasks"]:
        pts = pd.concat([tables[ds], final] if ds == main else [tables[ds]]).drop_duplicates(["key", "split", "metric"])
        items = pd.concat([store.get("laser_items", k) for k in pts["key"].unique()])
        rows += laser_claims.judge(pts, items, laser.dataset_name(ds), model, run["n_layers"], gated)
    return pd.DataFrame(rows, columns=laser_claims.COLUMNS)
