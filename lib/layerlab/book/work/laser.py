"""The LASER chapters' counted work: ``laser_chapter`` (the (tau, l, rho) sweeps, the greedy
composition, Fig. 5, the quantisation check) and ``sokoban_chapter`` (the Decision
Transformer's training and rollouts, in its own units)."""

from __future__ import annotations

import math
from dataclasses import replace

from .assumptions import middle
from .counts import TRAIN_FACTOR, SVDLedger, Work, train_steps
from .engines import prefix_points
from .inputs import Context, laser_rows, only
from .shapes import agent_shape, model_shape

LASER_GRID = ("datasets", "matrix_types", "layers", "rhos", "limit", "other_layers", "other_rhos", "other_limit",
              "greedy_layers", "greedy_rhos")


def laser_key(model: str, dataset: str, limit, reductions) -> tuple:
    return ("laser", model, dataset, limit, tuple((r.matrix_type, r.layer, r.rho, r.part) for r in reductions))


def laser_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """LASER (``laser.run``): every dataset's (tau, l, rho) sweep from the prefix cache, the
    greedy composition on the validation items of the main dataset, Fig. 5 (three points
    from the chosen layer) and the quantisation-noise check (two float64 spectra)."""
    from layerlab.core.compute import params
    from layerlab.core.model import embedded
    from layerlab.laser import rank, sweep as laser

    shape = model_shape(model)
    n = shape.layers
    cfg = params.override(laser.profile_config(profile, n, shape.matrix_types), **only(extra, LASER_GRID))
    w = Work(model)
    svd = SVDLedger(shape, ctx.dtype_bytes, rank.DEFAULT_CACHE_BYTES[ctx.device_type])
    main = cfg["datasets"][0]
    for ds in cfg["datasets"]:
        full = ds == main or ds not in laser.DATASETS
        limit = laser.limit_for(cfg, ds, full)
        layers, rhos = (cfg["layers"], cfg["rhos"]) if full else (cfg["other_layers"], cfg["other_rhos"])
        points = [[]] + [[r] for r in laser.grid(cfg["matrix_types"], layers, rhos)]
        todo = [p for p in points if laser_key(model, ds, limit, p) not in ctx.seen]
        prefix_points(w, f"sweep {ds}", laser_rows(ctx, model, ds, limit), todo, shape, ctx, svd)
        ctx.seen.update(laser_key(model, ds, limit, p) for p in points)
    rows = laser_rows(ctx, model, main, laser.limit_for(cfg, main, True))
    val = rows.fraction(0.2)
    types, g_rhos = cfg["matrix_types"], cfg["greedy_rhos"]
    prefix_points(w, "greedy", val, [[]], shape, ctx, svd)  # the validation-only base point
    for layer in sorted(cfg["greedy_layers"], reverse=True):  # one scores() call per layer
        prefix_points(w, "greedy", val, [[rank.Reduction(t, layer, float(r))] for t in types for r in g_rhos],
                      shape, ctx, svd)
    lowest = middle(cfg["greedy_layers"])  # assumed: the kept composition's lowest layer
    prefix_points(w, "greedy", rows, [[rank.Reduction(types[0], lowest, float(g_rhos[0]))]], shape, ctx, svd)
    best = rank.Reduction("mlp_out" if "mlp_out" in types else types[0], middle(cfg["layers"]), float(cfg["rhos"][0]))
    if main in ("counterfact", "hotpotqa"):  # Fig. 5 needs an answer task
        prefix_points(w, "fig5", rows, [[], [best], [replace(best, part="bottom")]], shape, ctx, svd)
    entry = embedded.REGISTRY.get(model)
    if entry is not None and entry.kind.startswith("gguf"):
        last = "gate" if "gate" in shape.matrices else "mlp_in"
        w.host_svds.update([shape.matrices[best.matrix_type], shape.matrices[last]])
    w.svds += svd.computed
    return [w]


def sokoban_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """LASER on the Sokoban Decision Transformer (``sokoban.chapter``), per seed: training
    (steps x batch windows of 3 x context tokens), the sweep's rollouts on the validation
    levels and the unmodified agent and the pick on the test levels (one forward pass of
    the whole window per level and step, chunks of 1024 levels stepping together)."""
    from layerlab.laser.sokoban import chapter

    cfg = chapter.profile_config(profile)
    for name in ("n_val", "n_test", "matrix_types", "layers", "rhos", "n_seeds"):  # as chapter.configure applies them
        if extra.get(name) is not None:
            cfg[name] = extra[name]
    cfg["agent"] = replace(cfg["agent"], **{k: extra[o] for k, o in (("steps", "train_steps"), ("n_train", "n_train"))
                                            if extra.get(o) is not None})
    agent, env = cfg["agent"], cfg["env"]
    shape = agent_shape(agent)
    w = Work(model, shape=shape)
    seeds, k, limit = cfg["n_seeds"], agent.context, env.step_limit
    window = 3 * k
    train_steps(w, "training", agent.steps * seeds, agent.batch, window, shape.layers)
    state_dim = 4 * env.size * env.size
    windows = agent.steps * agent.batch * seeds
    w.other_flops += TRAIN_FACTOR * windows * k * 2 * state_dim * agent.width  # the state embedding
    points = 1 + len(cfg["matrix_types"]) * len(cfg["layers"]) * len(cfg["rhos"])
    levels = seeds * (points * cfg["n_val"] + 2 * cfg["n_test"])
    calls = seeds * (points * math.ceil(cfg["n_val"] / 1024) + 2 * math.ceil(cfg["n_test"] / 1024)) * limit
    # tokens of one level's rollout: step t runs the last min(t + 1, k) steps, 3 tokens each
    lengths = [3 * min(t + 1, k) for t in range(limit)]
    tokens, pairs = float(sum(lengths)), float(sum(t * (t + 1) / 2 for t in lengths))
    w.block_tokens += levels * tokens * shape.layers
    w.attn_pairs += levels * shape.layers * pairs
    w.head_tokens += levels * limit
    w.other_flops += levels * tokens / 3 * 2 * state_dim * agent.width
    w.block_calls += calls * shape.layers
    w.parts["rollouts"] += levels * tokens * shape.layers
    for t in cfg["matrix_types"]:  # one SVD cache per seed's agent: every matrix once
        w.svds[shape.matrices[t]] += seeds * len(cfg["layers"])
    w.agent = {"train_windows": windows, "rollout_levels": levels, "rollout_level_steps": levels * limit,
               "rollout_forward_calls": calls, "seeds": seeds, "window_tokens": window}
    w.sources.add("fixed")
    return [w]
