"""The deeper-layers chapter's counted work (``prune.curve``): the distance map, the unhealed
points, the LoRA-healed points and the payoff's generation; ``distances``, ``curve_points``
and ``healed_point`` also serve the healing chapter (``beyond``)."""

from __future__ import annotations

from collections.abc import Sequence

from .assumptions import similarity_start
from .counts import LORA_TRAIN_FACTOR, EditCost, Rows, Work, drop_edit, fixed_rows, run_pass, train_steps, unmodified_edit
from .engines import evaluate_edits, generate
from .inputs import Context, only, padded_rows
from .shapes import Shape, model_shape

PRUNE_KEYS = ("fractions", "heal_fractions", "heal_steps", "lora_rank", "eval_tasks", "heuristic_tasks", "limit",
              "payoff_fractions", "distance_docs", "distance_len", "loss_chunks", "seq_len")


def prune_edit(shape: Shape, method: str, n: int) -> EditCost:
    """Dropping n blocks: "deepest" drops the n before the last (``prune.deepest_blocks``),
    "similarity" l*(n).. (assumed in the middle)."""
    from layerlab.prune import blocks

    if n == 0:
        return unmodified_edit(shape)
    big_l = shape.layers
    start = blocks.deepest_blocks(big_l, n)[0] if method == "deepest" else similarity_start(big_l, n)
    return drop_edit(shape, start, n)


def distances(w: Work, model: str, shape: Shape, cfg: dict, ctx: Context) -> None:
    """``prune.curve.distances``: one capture of the C4 documents, cut and padded together."""
    from layerlab.core.io import data

    key = ("prune_distance", model, cfg["distance_docs"], cfg["distance_len"])
    if key in ctx.seen:
        return
    ctx.seen.add(key)
    docs = [r["text"] for r in data.load("c4", data_dir=ctx.data_dir)][: cfg["distance_docs"]]
    run_pass(w, "distances", padded_rows(ctx, model, docs, cfg["distance_len"]), shape.layers, 0.0, 16)


def _prune_key(model: str, method: str, n: int, healer: str | None, dataset: str, limit) -> tuple:
    return ("prune", model, method, n, healer, dataset, limit)


def curve_points(w: Work, model: str, shape: Shape, points: Sequence[tuple[str, int, Sequence[str]]], limit,
                 loss: Rows, ctx: Context) -> None:
    """``prune.curve.curve_points``: the missing unhealed points, one prefix-shared
    evaluation per list of missing tasks (its own capture of their inputs)."""
    groups: dict[tuple, list[EditCost]] = {}
    for method, n, tasks in points:
        todo = [d for d in list(tasks) + ["heldout"] if _prune_key(model, method, n, None, d, limit) not in ctx.seen]
        ctx.seen.update(_prune_key(model, method, n, None, d, limit) for d in todo)
        if todo:
            groups.setdefault((tuple(d for d in todo if d != "heldout"), "heldout" in todo), []).append(
                prune_edit(shape, method, n))
    for (tasks, heldout), edits in groups.items():
        evaluate_edits(w, "unhealed", model, shape, tasks, edits, limit, ctx, loss if heldout else None)


def healed_point(w: Work, model: str, shape: Shape, method: str, n: int, tasks: Sequence[str], limit, loss: Rows,
                 heal: dict, ctx: Context, healer: str = "lora", last: int = 3) -> None:
    """One healed pruned model (``curve.curve_point`` with LoRA, ``head_healing.partial_point``
    with "head+last"): training on the pruned model, then its tasks and held-out loss
    through the pruned model (the unmodified edit)."""
    todo = [d for d in list(tasks) + ["heldout"] if _prune_key(model, method, n, healer, d, limit) not in ctx.seen]
    ctx.seen.update(_prune_key(model, method, n, healer, d, limit) for d in todo)
    if not todo:
        return
    kept = shape.layers - n
    if healer == "lora":  # adapters on every MLP: gradients flow through every block
        train_steps(w, f"healing ({healer})", heal["steps"], 4, heal["seq_len"], kept, factor=LORA_TRAIN_FACTOR)
    else:  # head + last blocks: nothing below them needs a gradient
        trained = min(last, kept)
        train_steps(w, f"healing ({healer})", heal["steps"], 4, heal["seq_len"], trained, kept - trained)
    evaluate_edits(w, f"healed ({healer})", model, shape, [d for d in todo if d != "heldout"],
                   [EditCost(0.0, kept, 0.0, kept, unmodified=True)], limit, ctx,
                   loss if "heldout" in todo else None, layers=kept)


def loss_rows(cfg: dict) -> Rows:
    return fixed_rows(cfg["loss_chunks"], cfg["seq_len"])


def prune_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """The deeper-layers chapter (``prune.curve.run_curve`` and ``payoff``): the distance map,
    the unhealed points of both methods (prefix-shared, one evaluation per task list), each
    healed n of both methods (LoRA), and the payoff's generation on saved checkpoints."""
    from layerlab.prune import curve

    shape = model_shape(model)
    big_l = shape.layers
    cfg = curve.profile_config(profile, **only(extra, PRUNE_KEYS))
    w = Work(model)
    distances(w, model, shape, cfg, ctx)
    loss = loss_rows(cfg)
    ns = curve.block_counts(cfg["fractions"], big_l)
    curve_points(w, model, shape, [("similarity", n, cfg["eval_tasks"]) for n in ns]
                 + [("deepest", n, cfg["heuristic_tasks"]) for n in ns if n > 0], cfg["limit"], loss, ctx)
    heal_ns = [n for n in curve.block_counts(cfg["heal_fractions"], big_l) if n > 0] if extra.get("heal", True) else []
    heal = {"steps": cfg["heal_steps"], "seq_len": cfg["seq_len"]}
    for method, tasks in (("similarity", cfg["eval_tasks"]), ("deepest", cfg["heuristic_tasks"])):
        for n in heal_ns:
            healed_point(w, model, shape, method, n, tasks, cfg["limit"], loss, heal, ctx)
    for f in [0, *cfg["payoff_fractions"]] if cfg["payoff_fractions"] else []:
        n = int(round(f * big_l))
        if ("prune_payoff", model, n) not in ctx.seen:
            ctx.seen.add(("prune_payoff", model, n))
            prompt = fixed_rows(1, 32)
            generate(w, "payoff", prompt, big_l - n, 3, 1)   # warm-up: 4 new tokens
            generate(w, "payoff", prompt, big_l - n, 63, 1)  # timed: 64 new tokens
    return [w]
