"""LASER on a Decision Transformer that plays Sokoban (the LASER paper's Table 2).

The agent (``sokoban.agent``) is trained once per seed; the sweep reduces one matrix
(type tau, block l, rank fraction rho) at a time through the same ``rank`` code as the
language models, and scores each on validation levels (solved rate, ties broken by mean
return); the best, or none when the unmodified agent is best, is then played with the
unmodified agent on the same test levels: Wilson intervals for each solved rate, a
paired score interval (``stats.paired_proportion``) and an exact McNemar test (binomial test of the discordant
levels) for the change. Every point is a keyed entry of the results store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from layerlab.core.eval import evaluation
from layerlab.core.io import results
from layerlab.core.evidence import papers
from layerlab.laser import rank
from layerlab.laser.sokoban import agent as agent_mod

TECHNIQUE, ITEMS, PROTOCOL = "laser_sokoban", "laser_sokoban_items", "laser_sokoban_protocol"
PROFILES = ("smoke", "quick", "full")
PAPER_RHOS = papers.LASER_RHOS
# LASER Table 2 (papers.py); the number of evaluation levels is not stated (k / 300 inferred)
PAPER_TABLE2 = papers.LASER_TABLE2


def profile_config(profile: str) -> dict:
    """Env, agent, seeds, level counts and sweep grid of a profile (see the notebook)."""
    if profile not in PROFILES:
        raise ValueError(f"profile: {profile!r} is not one of {', '.join(PROFILES)}")
    env = agent_mod.EnvConfig()
    every = ["q", "k", "v", "o", "mlp_in", "mlp_out"]
    if profile == "smoke":
        return {"env": dataclasses.replace(env, n_boxes=1),
                "agent": agent_mod.AgentConfig(width=32, depth=2, heads=2, context=3, n_train=200, steps=150, batch=64,
                                               checkpoint_every=50),
                "n_seeds": 1, "n_val": 40, "n_test": 100, "matrix_types": ["mlp_in", "mlp_out"], "layers": [0, 1],
                "rhos": [0.1, 0.5]}
    if profile == "quick":
        # ~8 minutes on this shared 2-core CPU with one torch thread (measured in pieces): train levels
        # generated and solved ~25 s, 1200 steps ~245 s, 25 sweep points x 300 levels ~100 s, 2 x 2000 tests ~45 s
        return {"env": env, "agent": agent_mod.AgentConfig(),
                "n_seeds": 1, "n_val": 300, "n_test": 2000, "matrix_types": ["mlp_in", "mlp_out"],
                "layers": list(range(6)), "rhos": [0.05, 0.2]}
    return {"env": env, "agent": agent_mod.AgentConfig(context=10, n_train=20000, steps=20000, checkpoint_every=1000),
            "n_seeds": 3, "n_val": 1000, "n_test": 5000, "matrix_types": every, "layers": list(range(6)),
            "rhos": list(PAPER_RHOS)}


def configure(profile: str, device: str = "auto", dtype: str = "auto", seed: int = 0, **overrides) -> dict:
    """``profile_config`` with the notebook's overrides (None = keep), checked before any
    expensive work: bad values raise ValueError naming the parameter and what is allowed."""
    cfg = profile_config(profile)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: {seed!r} is not allowed; allowed: a non-negative integer")
    cfg["device"], cfg["dtype"] = agent_mod.resolve(device, dtype)
    for name in ("n_val", "n_test", "train_steps", "n_train", "n_seeds", "threads"):
        v = overrides.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name}: {v!r} is not allowed; allowed: a positive integer")
    for name in ("matrix_types", "layers", "rhos"):
        if overrides.get(name) is not None and not isinstance(overrides[name], (list, tuple)):
            raise ValueError(f"{name}: {overrides[name]!r} is not a list; allowed: a list (with papermill: "
                             f"-y '{name}: [...]')")
    for name in ("matrix_types", "layers", "rhos", "n_val", "n_test", "n_seeds"):
        if overrides.get(name) is not None:
            cfg[name] = list(overrides[name]) if isinstance(overrides[name], (list, tuple)) else overrides[name]
    cfg["threads"] = overrides.get("threads")
    if overrides.get("train_steps") is not None:
        cfg["agent"] = dataclasses.replace(cfg["agent"], steps=overrides["train_steps"])
    if overrides.get("n_train") is not None:
        cfg["agent"] = dataclasses.replace(cfg["agent"], n_train=overrides["n_train"])
    probe = agent_mod.build_model(16, cfg["agent"], cfg["env"])  # untrained, only to check the grid
    rank.validate(probe, cfg["matrix_types"], cfg["layers"], cfg["rhos"])
    return cfg


def dataset_name(env: agent_mod.EnvConfig) -> str:
    return f"sokoban-{env.size}x{env.size}-{env.n_boxes}box"


@dataclass
class Run:
    """One trained agent and what its points are keyed by."""

    model: torch.nn.Module
    info: dict
    env: agent_mod.EnvConfig
    agent: agent_mod.AgentConfig
    seed: int
    label: str
    store: results.ResultStore
    svd: rank.SVDCache
    levels: dict


def prepare(store: results.ResultStore, cfg: dict, seed: int, label: str = "sokoban-dt",
            progress: bool = True) -> Run:
    """Train (or load the cached) agent of ``seed``."""
    model, info = agent_mod.train(store, cfg["env"], cfg["agent"], seed, cfg["device"], cfg["dtype"], progress)
    return Run(model, info, cfg["env"], cfg["agent"], seed, label, store, rank.SVDCache(model), {})


def _levels(run: Run, split: str, n: int):
    if len(run.levels.get(split, [])) < n:
        run.levels[split] = run.env.levels(run.seed, split, n)
    return run.levels[split][:n]


def point_key(run: Run, reductions: list[rank.Reduction], split: str, n: int) -> str:
    p = next(run.model.parameters())
    return results.point_key(run.label, TECHNIQUE, {"agent": run.info["key"], "n": n,
                             "step_limit": run.env.step_limit, "device": p.device.type,
                             "dtype": str(p.dtype).removeprefix("torch."),
                             "reductions": [r.as_dict() for r in reductions]}, dataset_name(run.env), split)


def evaluate(run: Run, reductions: list[rank.Reduction], split: str, n: int) -> pd.DataFrame:
    """Summary rows (solved, return, steps, deadlocked with 95% intervals) of the agent
    under ``reductions`` on the first ``n`` levels of ``split``; stored, with the
    per-level rows under ITEMS."""
    key = point_key(run, reductions, split, n)
    if not run.store.has(TECHNIQUE, key):
        with rank.reduced(run.model, reductions, run.svd):
            per = agent_mod.rollout(run.model, _levels(run, split, n), run.env, run.agent, run.info["target_return"])
        p = next(run.model.parameters())
        one = reductions[0] if len(reductions) == 1 else None
        base = {"model": run.label, "dataset": dataset_name(run.env), "split": split, "seed": run.seed,
                "agent_key": run.info["key"], "device": p.device.type, "dtype": str(p.dtype).removeprefix("torch."),
                "matrix_type": one.matrix_type if one else "base", "layer": one.layer if one else -1,
                "rho": one.rho if one else 1.0}
        run.store.put(ITEMS, key, per.assign(**base, technique=ITEMS, metric="solved", value=per["solved"], n_items=1))
        rows = []
        for metric in ("solved", "return", "steps", "deadlocked"):
            v = per[metric].to_numpy()
            if metric in ("solved", "deadlocked"):
                lo, hi = evaluation.wilson_interval(v.sum(), len(v))
            else:
                se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
                lo, hi = v.mean() - 1.96 * se, v.mean() + 1.96 * se
            rows.append({**base, "technique": TECHNIQUE, "metric": metric, "value": float(v.mean()),
                         "n_items": len(v), "ci_low": lo, "ci_high": hi})
        run.store.put(TECHNIQUE, key, rows)
    return run.store.get(TECHNIQUE, key)


def items(run: Run, reductions: list[rank.Reduction], split: str, n: int) -> pd.DataFrame:
    evaluate(run, reductions, split, n)
    return run.store.get(ITEMS, point_key(run, reductions, split, n)).sort_values("level")


def sweep(run: Run, matrix_types, layers, rhos, n_val: int, progress: bool = True) -> pd.DataFrame:
    """The unmodified agent and every single (tau, l, rho) on ``n_val`` validation levels."""
    from tqdm import tqdm

    rank.validate(run.model, matrix_types, layers, rhos)
    points = [[]] + [[rank.Reduction(t, layer, float(rho))] for layer in layers for t in matrix_types for rho in rhos]
    return pd.concat([evaluate(run, p, "val", n_val) for p in tqdm(points, desc="LASER sweep", disable=not progress,
                                                                   mininterval=10)], ignore_index=True)


def select_best(table: pd.DataFrame) -> rank.Reduction | None:
    """Highest validation solved rate, ties broken by mean return, then by order (the
    unmodified agent first: None when it is among the best)."""
    wide = table[table.split == "val"].pivot_table(index=["matrix_type", "layer", "rho"], columns="metric",
                                                   values="value", sort=False).reset_index()
    wide["is_base"] = wide["matrix_type"] == "base"
    top = wide.sort_values(["solved", "return", "is_base"], ascending=[False, False, False], kind="stable").iloc[0]
    return None if top["is_base"] else rank.Reduction(top["matrix_type"], int(top["layer"]), float(top["rho"]))


def mcnemar(base, changed) -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 outcomes: (levels only the base solves, levels
    only the changed agent solves, two-sided p of a binomial test of the latter count)."""
    from scipy.stats import binomtest

    base, changed = np.asarray(base, bool), np.asarray(changed, bool)
    b, c = int((base & ~changed).sum()), int((~base & changed).sum())
    return b, c, (float(binomtest(c, b + c, 0.5).pvalue) if b + c else 1.0)


def protocol(run: Run, table: pd.DataFrame, n_test: int, profile: str = "") -> dict:
    """Best reduction on validation, then the unmodified agent and it on ``n_test`` test
    levels; the result is also stored as PROTOCOL rows (read by ``claim_rows``)."""
    best = select_best(table)
    base_items, best_items = items(run, [], "test", n_test), items(run, [best] if best else [], "test", n_test)
    out = {"seed": run.seed, "best": best, "n_test": n_test, "n_val": int(table["n_items"].iloc[0])}
    for name, it in (("base", base_items), ("laser", best_items)):
        s = it["solved"].to_numpy()
        out[f"{name}_solved"], out[f"{name}_solved_ci"] = float(s.mean()), evaluation.wilson_interval(s.sum(), len(s))
        out[f"{name}_return"] = float(it["return"].mean())
    for metric in ("solved", "return"):
        out[f"diff_{metric}"] = evaluation.paired_difference(base_items[metric], best_items[metric])
    out["only_base"], out["only_laser"], out["mcnemar_p"] = mcnemar(base_items["solved"], best_items["solved"])
    grid = json.dumps(sorted(set(map(tuple, table[["matrix_type", "layer", "rho"]].astype(str).to_numpy().tolist()))))
    key = hashlib.sha256(f"{run.info['key']}|{grid}|{n_test}".encode()).hexdigest()[:24]
    run.store.put(PROTOCOL, key, [{
        "model": run.label, "technique": PROTOCOL, "dataset": dataset_name(run.env), "split": "test",
        "metric": "solved_change", "value": out["diff_solved"][0], "n_items": n_test, "ci_low": out["diff_solved"][1],
        "ci_high": out["diff_solved"][2], "seed": run.seed, "profile": profile, "agent_key": run.info["key"],
        "best": "" if best is None else f"{best.matrix_type}@{best.layer}:{best.rho}", "n_layers": run.agent.depth,
        "base_solved": out["base_solved"], "laser_solved": out["laser_solved"], "base_return": out["base_return"],
        "laser_return": out["laser_return"], "return_change": out["diff_return"][0],
        "return_ci_low": out["diff_return"][1], "return_ci_high": out["diff_return"][2], "only_base": out["only_base"],
        "only_laser": out["only_laser"], "mcnemar_p": out["mcnemar_p"], "n_val": out["n_val"],
        "base_key": point_key(run, [], "test", n_test),
        "laser_key": point_key(run, [best] if best else [], "test", n_test),
        "config": json.dumps({"agent": dataclasses.asdict(run.agent), "env": dataclasses.asdict(run.env),
                              "grid": grid}, sort_keys=True, default=str),
        "device": next(run.model.parameters()).device.type,
        "dtype": str(next(run.model.parameters()).dtype).removeprefix("torch.")}])
    return out


def report_table(reports: list[dict]) -> pd.DataFrame:
    """Paper's Table 2 beside ours, one row per seed (percentages, 95% intervals)."""
    pct = lambda v, ci: f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"  # noqa: E731
    p = PAPER_TABLE2
    rows = [{"source": "paper (Table 2)", "levels": f"~{p['n_levels_inferred']} (inferred)",
             "best on val": "not stated",
             "base solved %": f"{p['base_solved']}", "LASER solved %": f"{p['laser_solved']}",
             "Δ solved (pp)": f"{p['laser_solved'] - p['base_solved']:+.2f}", "McNemar p": "",
             "base return": f"{p['base_return']}", "LASER return": f"{p['laser_return']}"}]
    for r in reports:
        b, (d, lo, hi) = r["best"], r["diff_solved"]
        rows.append({"source": f"ours, seed {r['seed']}", "levels": f"{r['n_test']} test ({r['n_val']} val)",
                     "best on val": "none (unmodified)" if b is None else
                     f"{b.matrix_type}, layer {b.layer}, rho {b.rho}",
                     "base solved %": pct(r["base_solved"], r["base_solved_ci"]),
                     "LASER solved %": pct(r["laser_solved"], r["laser_solved_ci"]),
                     "Δ solved (pp)": f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]",
                     "McNemar p": f"{r['mcnemar_p']:.3g} ({r['only_base']} vs {r['only_laser']})",
                     "base return": f"{r['base_return']:.3f}", "LASER return": f"{r['laser_return']:.3f}"})
    return pd.DataFrame(rows)


def paper_sample_note() -> str:
    """What the paper's inferred ~300 levels imply: its gain in standard errors of one rate."""
    p, n = PAPER_TABLE2, PAPER_TABLE2["n_levels_inferred"]
    gain, rate = p["laser_solved"] - p["base_solved"], p["base_solved"] / 100
    se = 100 * np.sqrt(rate * (1 - rate) / n)
    return (f"~{n} levels (inferred from k/{n}-like numbers): its +{gain:.2f} pp is {gain / se:.1f} standard errors "
            f"({se:.2f} pp) of one solved rate")


def describe(r: dict) -> str:
    """One Markdown sentence per protocol result, every number from ``r``."""
    d, lo, hi = r["diff_solved"]
    gain = PAPER_TABLE2["laser_solved"] - PAPER_TABLE2["base_solved"]
    if r["best"] is None:
        return (f"- **Seed {r['seed']}**: no reduction beats the unmodified agent on validation, so LASER changes "
                f"nothing: {100 * r['base_solved']:.1f}% of {r['n_test']} test levels solved either way.")
    se = (hi - lo) / 3.92  # the standard error that the 95% paired interval implies
    power = (f" The paper's +{gain:.2f} pp would be {gain / 100 / se:.1f} standard errors of this difference."
             if se else "")
    return (f"- **Seed {r['seed']}**: LASER's pick is {r['best'].matrix_type} at layer {r['best'].layer}, "
            f"ρ = {r['best'].rho}. On {r['n_test']} test levels it changes the solved rate from "
            f"{100 * r['base_solved']:.1f}% to {100 * r['laser_solved']:.1f}%, Δ = {100 * d:+.2f} pp "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] (exact McNemar p = {r['mcnemar_p']:.3g}: {r['only_base']} levels "
            f"solved only before, {r['only_laser']} only after); mean return {r['base_return']:.2f} → "
            f"{r['laser_return']:.2f}.{power}")
