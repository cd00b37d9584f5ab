"""The Beyond chapters' counted work: which blocks matter (``criteria_chapter``), surgery
below the block (``sublayers_chapter``), healing by the head and the last blocks
(``healing_chapter``) and LASER without a search (``spectrum_chapter``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from .assumptions import middle, similarity_start
from .counts import EditCost, SVDLedger, Work, drop_edit, fixed_rows, run_pass, schedule_edit, unmodified_edit
from .engines import evaluate_edits, prefix_points
from .inputs import Context, laser_rows, only, padded_rows
from .laser import laser_key
from .prune import curve_points, distances, healed_point, loss_rows
from .shapes import Shape, model_shape

TRUTH_KEYS = ("docs", "seq_len", "ns", "fit_tokens", "n_boot", "mmlu_ns", "mmlu_limit", "batch_size")


def criteria_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """Which blocks matter (``beyond.truth.compute``): the criteria's capture of the held-out
    chunks (and the ridge fits on the CPU), the true held-out cost of every span of each n
    (a capture per batch, every span's suffix, a head at every position), and, with MMLU,
    the unmodified model and every span of each MMLU n (assumed above chance)."""
    from layerlab.beyond import criteria, truth

    shape = model_shape(model)
    big_l = shape.layers
    cfg = truth.profile_config(profile, big_l, **only(extra, TRUTH_KEYS))
    mmlu = extra.get("mmlu", True)
    w = Work(model)
    chunks = fixed_rows(cfg["docs"], cfg["seq_len"])
    crit_ns = sorted(set(cfg["ns"]) | set(cfg["mmlu_ns"] if mmlu else []))
    run_pass(w, "criteria", chunks, big_l, 0.0, cfg["batch_size"])
    w.host_flops += ridge_flops(shape.hidden, big_l, crit_ns, cfg["docs"], cfg["fit_tokens"], criteria.FOLDS)
    run_pass(w, "truth", chunks, big_l, chunks.tokens, cfg["batch_size"])  # n = 0: capture and head
    for n in cfg["ns"]:
        run_pass(w, "truth", chunks, big_l, 0.0, cfg["batch_size"])
        for layer, edit in truth.span_edits(big_l, n).items():
            e = schedule_edit(edit.schedule(big_l), shape)
            run_pass(w, "truth", chunks, e.suffix, chunks.tokens, cfg["batch_size"], e.suffix_attn)
    if mmlu and cfg["mmlu_ns"]:
        evaluate_edits(w, "mmlu", model, shape, ["mmlu"], [unmodified_edit(shape)], cfg["mmlu_limit"], ctx)
        for n in cfg["mmlu_ns"]:
            edits = [schedule_edit(e.schedule(big_l), shape) for e in truth.span_edits(big_l, n).values()]
            evaluate_edits(w, "mmlu", model, shape, ["mmlu"], edits, cfg["mmlu_limit"], ctx)
    return [w]


def ridge_flops(d: int, n_layers: int, ns: Sequence[int], docs: int, fit_tokens: int, folds: int) -> float:
    """``criteria.linear_fit_scores`` per fold and layer: the Gram matrix, the cross term
    with its m targets, a d x d solve with d m right-hand sides and the test predictions."""
    total, n_fit = 0.0, docs * fit_tokens * (folds - 1) / folds
    n_test = docs * fit_tokens / folds
    for layer in range(n_layers):
        m = sum(layer + k <= n_layers for k in ns)
        if m:
            total += 2 * n_fit * d * d * (1 + m) + 2 * d ** 3 / 3 + 2 * d * d * d * m + 2 * n_test * d * d * m
    return folds * total


SUBLAYER_KEYS = ("fractions", "methods", "calib_docs", "calib_len", "loss_docs", "seq_len", "tasks", "limit",
                 "batch_size")


def sublayer_edit(shape: Shape, method: str, n: int) -> EditCost:
    """A representative edit of ``beyond.sublayers.plan`` for n blocks' worth of parameters:
    the units are chosen by similarity (``ASSUMPTIONS``: the first in the middle of the
    stack), n whole blocks or as many attention / MLP sublayers as weigh as much."""
    from layerlab.core.model import schedule

    big_l = shape.layers
    if method in ("block", "block_contiguous"):
        return drop_edit(shape, similarity_start(big_l, n), n)
    share = shape.attn_fraction if method == "attn" else 1 - shape.attn_fraction
    k = min(big_l, max(1, round(n / share)))
    start = min(similarity_start(big_l, n), big_l - k)
    keep = "mlp" if method == "attn" else "attn"
    return schedule_edit([schedule.Sublayer(i, keep) if start <= i < start + k else i for i in range(big_l)], shape)


def sublayers_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """Surgery below the block (``beyond.sublayers.run``): the similarity pass (a capture of
    the calibration documents, each block's attention run again), then the unmodified model
    and every (n, method) point prefix-shared on the lm-eval tasks and the held-out chunks."""
    from layerlab.beyond import sublayers
    from layerlab.core.io import data

    shape = model_shape(model)
    big_l = shape.layers
    cfg = sublayers.profile_config(profile, big_l, **only(extra, SUBLAYER_KEYS))
    w = Work(model)
    calib = [r["text"] for r in data.load("c4", data_dir=ctx.data_dir)][: cfg["calib_docs"]]
    docs = padded_rows(ctx, model, calib, cfg["calib_len"])
    run_pass(w, "similarity", docs, big_l, 0.0, cfg["batch_size"])
    run_pass(w, "similarity", docs, big_l * shape.attn_fraction, 0.0, cfg["batch_size"], big_l)
    edits = [unmodified_edit(shape)] + [sublayer_edit(shape, m, n) for n in cfg["blocks"] for m in cfg["methods"]]
    evaluate_edits(w, "points", model, shape, cfg["tasks"], edits, cfg["limit"], ctx,
                   fixed_rows(cfg["loss_docs"], cfg["seq_len"]), batch_size=cfg["batch_size"])
    return [w]


HEALING_KEYS = ("fractions", "tasks", "methods", "heal_steps", "lora_rank", "limit", "partial_lr", "last", "tied",
                "distance_docs", "distance_len", "loss_chunks", "seq_len")


def healing_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """Healing by the head and the last blocks (``beyond.head_healing.run``): the prune
    chapter's distance map and unpruned, unhealed and LoRA-healed points (read from the store
    when that chapter ran first in the plan), and per method and n the head+last healing and
    its evaluation."""
    from layerlab.beyond import head_healing
    from layerlab.prune import curve

    shape = model_shape(model)
    big_l = shape.layers
    cfg = head_healing.profile_config(profile, **only(extra, HEALING_KEYS))
    w = Work(model)
    distances(w, model, shape, cfg, ctx)
    loss, tasks = loss_rows(cfg), list(cfg["tasks"])
    ns = [n for n in curve.block_counts(cfg["fractions"], big_l) if n > 0]
    curve_points(w, model, shape, [("similarity", 0, tasks)] + [(m, n, tasks) for m in cfg["methods"] for n in ns],
                 cfg["limit"], loss, ctx)
    heal = {"steps": cfg["heal_steps"], "seq_len": cfg["seq_len"]}
    for method in cfg["methods"]:
        for n in ns:
            healed_point(w, model, shape, method, n, tasks, cfg["limit"], loss, heal, ctx, "lora")
            healed_point(w, model, shape, method, n, tasks, cfg["limit"], loss, heal, ctx, "head+last", cfg["last"])
    return [w]


SPECTRUM_KEYS = ("datasets", "matrix_types", "layers", "rhos", "limits", "rules", "per_matrix")


def spectrum_chapter(model: str, extra: dict, profile: str, ctx: Context) -> list[Work]:
    """LASER without a search (``beyond.spectrum``): the Marchenko-Pastur table (float64
    spectra on the CPU, once in the notebook and once per dataset), LASER's choice (free when
    the LASER chapter's stored sweep covers the grid, else a validation-only sweep), every
    variant point (unmodified, LASER's pick, bottom k, each MP matrix alone and composed, per
    rule) from the prefix cache, and the swapped Fig. 5 on the answer datasets."""
    from layerlab.beyond import spectrum
    from layerlab.laser import rank, sweep as laser

    shape = model_shape(model)
    cfg = spectrum.profile_config(profile, shape.layers, **only(extra, SPECTRUM_KEYS))
    w = Work(model)
    svd = SVDLedger(shape, ctx.dtype_bytes, rank.DEFAULT_CACHE_BYTES[ctx.device_type])
    types, layers = cfg["matrix_types"], cfg["layers"]
    spectra = Counter({shape.matrices[t]: len(layers) for t in types})
    for _ in range(1 + len(cfg["datasets"])):
        w.host_svds += spectra
    best = rank.Reduction(types[-1], middle(layers), 0.01)  # assumed pick
    for ds in cfg["datasets"]:
        limit = cfg["limits"][ds]
        rows = laser_rows(ctx, model, ds, limit)
        grid = [[]] + [[r] for r in laser.grid(types, layers, cfg["rhos"][ds])]
        if not all(laser_key(model, ds, limit, p) in ctx.seen for p in grid):
            prefix_points(w, f"selection {ds}", rows.fraction(0.2), grid, shape, ctx, svd)
        mp = [rank.Reduction(t, layer, 0.5) for t in types for layer in layers]  # MP ranks: rho < 1
        named = [[], [best], [replace(best, part="smallest")]]
        for _rule in cfg["rules"]:
            named += [[r] for r in mp] if cfg.get("per_matrix", True) else []
            named.append(mp)
        prefix_points(w, f"variants {ds}", rows, named, shape, ctx, svd)
        if ds in ("counterfact", "hotpotqa"):
            prefix_points(w, f"swapped fig5 {ds}", rows, [[], [replace(best, part="smallest")], [best]], shape, ctx,
                          svd)
    w.svds += svd.computed
    return [w]
