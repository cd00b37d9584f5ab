"""The Layers as Painters chapter's counted work (``painters.run``): the unmodified model and
every variant spec on the benchmarks, the similarity map, the per-layer lens, and the encoder
section (``encoder_work``)."""

from __future__ import annotations

from .counts import Work, run_pass, schedule_edit, steps_cost
from .engines import evaluate_edits
from .inputs import Context, encoder_rows, only, padded_rows
from .shapes import Shape, model_shape

ENCODER_BATCH = 64  # painters.encoder.encoder_features

PAINTERS_KEYS = ("variants", "affected", "loop_counts", "benchmarks", "limit", "gsm8k_limit", "order_seeds",
                 "encoder_limit", "layer_sensitivity", "sim_docs", "at_chance")


def _painters_specs(spec_tasks: dict, limits: dict, model: str, shape: Shape, w: Work, ctx: Context) -> None:
    """``painters.grid.evaluate_specs``: the missing (spec, task) points, one prefix-shared
    evaluation per (limit, task list)."""
    groups: dict[tuple, list] = {}
    for spec, tasks in spec_tasks.items():
        todo = [t for t in tasks if ("painters", model, spec, t, limits.get(t)) not in ctx.seen]
        ctx.seen.update(("painters", model, spec, t, limits.get(t)) for t in todo)
        for limit in sorted({limits.get(t) for t in todo}, key=str):
            groups.setdefault((limit, tuple(t for t in todo if limits.get(t) == limit)), []).append(spec)
    for (limit, tasks), specs in groups.items():
        edits = [schedule_edit(s.steps(shape.layers), shape) for s in specs]
        evaluate_edits(w, "variants" if any(s.variant != "base" for s in specs) else "unmodified", model, shape,
                       tasks, edits, limit, ctx)


def painters_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """Layers as Painters (``painters.run``): the unmodified model on every benchmark, every
    variant spec on the benchmarks (GSM8K only for skip, parallel and looped k = 3 at the
    middle size), the similarity map, the per-layer lens and the encoder section."""
    from layerlab.core.io import data
    from layerlab.painters import grid as painters, run as painters_run

    cfg = painters_run.config(profile, **only(extra, PAINTERS_KEYS))
    works = []
    if extra.get("run_decoder", True):
        shape = model_shape(model)
        big_l = shape.layers
        w = Work(model)
        affected = painters_run.sizes(big_l, cfg["affected"], cfg.get("spread", painters_run.SPREAD))
        specs = painters.specs(big_l, affected, cfg["variants"], cfg["order_seeds"], cfg["loop_counts"])
        limits = {b: cfg["gsm8k_limit"] if b == "gsm8k" else cfg["limit"] for b in cfg["benchmarks"]}
        _painters_specs({specs[0]: list(cfg["benchmarks"])}, limits, model, shape, w, ctx)
        mid_outer = (big_l - affected[len(affected) // 2]) // 2
        gsm = {s for s in specs if s.n_outer == mid_outer and (
            s.variant in ("skip", "parallel") or (s.variant == "looped_parallel" and s.loops == 3))}
        useful = list(cfg["benchmarks"])  # assumed: every benchmark above chance
        _painters_specs({s: [b for b in useful if b != "gsm8k" or s in gsm] for s in specs[1:]}, limits, model,
                        shape, w, ctx)
        texts = [r["text"] for r in data.load("wikitext2", "test", data_dir=ctx.data_dir)][: cfg["sim_docs"]]
        docs = padded_rows(ctx, model, texts, 128)
        run_pass(w, "similarity", docs, big_l, 0.0, len(texts))
        if cfg["layer_sensitivity"]:  # its own capture of the same documents, then the unmodified model's head
            run_pass(w, "layer lens", docs, big_l, docs.tokens, len(texts))
            for layer in range(big_l):
                run_pass(w, "layer lens", docs, big_l - layer - 1, docs.tokens, len(texts))  # skip
                if layer + 1 < big_l:
                    run_pass(w, "layer lens", docs, big_l - layer, docs.tokens, len(texts))  # swap with the next
        works.append(w)
    if extra.get("encoder"):
        works.append(encoder_work(extra["encoder"], cfg, ctx))
    return works


def encoder_work(encoder: str, cfg: dict, ctx: Context, seed: int = 0) -> Work:
    """``painters.encoder.evaluate``: per GLUE task the unmodified encoder on every row (a
    capture, then its blocks again from block 0), and every variant from its first
    changed block, on the test rows (a second capture) or, cross-fitted, on every row."""
    from layerlab.painters import encoder as painters_encoder, grid as painters
    from layerlab.core.model import schedule

    shape = model_shape(encoder)
    n = shape.layers
    w = Work(encoder)
    specs = [s for s in painters.specs(n, cfg["encoder_affected"], cfg["variants"], cfg["order_seeds"],
                                       cfg["loop_counts"])[1:] if s.variant not in schedule.SUBLAYER_VARIANTS]
    for task in painters_encoder.TASKS:
        items, train = painters_encoder.sample(task, cfg["encoder_limit"], seed, ctx.data_dir)
        rows = encoder_rows(ctx, encoder, items)
        run_pass(w, f"encoder {task}", rows, n, 0.0, ENCODER_BATCH)
        run_pass(w, f"encoder {task}", rows, n, 0.0, ENCODER_BATCH)  # base: blocks from 0 on the captured input
        if train is not None:
            rows = rows.fraction(float((~train).mean()))
            run_pass(w, f"encoder {task}", rows, n, 0.0, ENCODER_BATCH)
        for s in specs:
            blocks, attn = steps_cost(s.steps(n)[s.n_outer:], shape)
            run_pass(w, f"encoder {task}", rows, blocks, 0.0, ENCODER_BATCH, attn)
    return w
