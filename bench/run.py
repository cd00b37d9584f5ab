"""Speed and memory of layerlab's sweeps against the naive methods, measured in one run.

    python bench/run.py                 # every row, prints a markdown table, saves bench/results/
    python bench/run.py --items 100     # smaller LASER workload (default: the quick book's 400)
    python bench/run.py --laser-grid all  # LASER rows on every layer x {mlp_in, mlp_out} x 5 rhos
    python bench/run.py --only ray      # one row (here: Ray overhead) and its table line

Each row runs in its own Python process (so its peak RSS is its own) and reports wall
seconds. Naive methods that would take hours are timed on a sample of configurations and
scaled to the full grid; the table says so. All ratios come from this one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------- rows

def laser_setup(n_items: int, model_name: str = "smollm2-135m"):
    import layerlab
    from layerlab.laser import sweep as laser
    model, tok = layerlab.load(model_name)
    task = laser.build_task("counterfact", limit=n_items, seed=0)
    return model, tok, task


def grid_of(model, which: str = "quick", n_rhos: int = 5):
    """The LASER rows' configurations: a book profile's CounterFact grid ("quick": the
    layers every ~L/8 plus the last three x {mlp_in, mlp_out, o} x 2 rhos), or "all": every
    layer x {mlp_in, mlp_out} x ``n_rhos`` rhos."""
    from layerlab.core.model import arch
    from layerlab.laser import sweep as laser
    if which != "all":
        cfg = laser.profile_config(which, arch.n_layers(model), arch.matrix_types(model))
        return laser.grid(cfg["matrix_types"], cfg["layers"], cfg["rhos"])
    rhos = [0.01, 0.05, 0.1, 0.25, 0.5][:n_rhos]
    return laser.grid(["mlp_in", "mlp_out"], range(arch.n_layers(model)), rhos)


def row_laser_layerlab(args) -> dict:
    """The whole sweep through layerlab (SVD cache, prefix cache, batching, results store)."""
    import tempfile
    from layerlab.laser import sweep as laser
    from layerlab.core.io import results
    model, tok, task = laser_setup(args.items, args.model)
    grid = grid_of(model, args.laser_grid)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sw = laser.Sweeper(model, tok, args.model, task, results.ResultStore(tmp))
        sw.points([[]] + [[g] for g in grid])  # as the chapter runs it: every point off one shared prefix stream
        seconds = time.perf_counter() - start
        store_bytes = results.ResultStore(tmp).size_bytes()
        n_points = len(results.ResultStore(tmp).keys("laser"))
    return {"seconds": seconds, "configs": len(grid), "measured_configs": len(grid), "cache_bytes": store_bytes,
            "points": n_points}


def row_laser_bound(args) -> dict:
    """Lower bound: only the batched suffix forward passes (prefix captured once, no weight
    edit, no SVD, no scoring, no storage). A suffix pass costs the same for every matrix
    type and rho at a layer, so each start layer is timed twice and the mean is scaled by
    the number of configurations starting there."""
    import collections
    import torch
    from layerlab.core.model import runner
    from layerlab.core.eval import scoring
    model, tok, task = laser_setup(args.items, args.model)
    grid = grid_of(model, args.laser_grid)
    per_layer = collections.Counter(g.layer for g in grid)
    batches = scoring.encode(tok, task.contexts, task.continuations)
    scorer = scoring.PrefixScorer(model, batches, len(task.contexts))
    total, measured, passes = 0.0, 0.0, 0
    with torch.no_grad():
        for layer, count in per_layer.items():
            start = time.perf_counter()
            for _ in range(2):
                for b, state in zip(batches, scorer.states):
                    runner.run_from(model, state, layer, positions=b.target_pos)
            took = time.perf_counter() - start
            measured += took
            passes += 2
            total += took / 2 * count
    return {"seconds": total, "configs": len(grid), "measured_configs": passes, "measured_seconds": measured}


def _naive(args, batched: bool) -> dict:
    """The official code's way: for every configuration reload the model, compute a fresh
    SVD, and run the full forward pass (one item at a time, or batched). Timed on a
    sample of configurations spread over the layers, scaled to the grid."""
    import numpy as np
    import torch
    import layerlab
    from layerlab.core.model import arch
    from layerlab.core.eval import scoring
    from layerlab.laser import rank
    model, tok, task = laser_setup(args.items, args.model)
    grid = grid_of(model, args.laser_grid)
    sample = [grid[i] for i in np.linspace(0, len(grid) - 1, args.naive_sample).round().astype(int)]
    start = time.perf_counter()
    for g in sample:
        model, tok = layerlab.load(args.model)
        ref = arch.weight(model, g.matrix_type, g.layer)
        ref.write(rank.low_rank(ref.read(), g.rho))
        if batched:
            batches = scoring.encode(tok, task.contexts, task.continuations)
            scoring.score_full(model, batches, len(task.contexts))
        else:
            with torch.no_grad():
                for c, t in zip(task.contexts, task.continuations):
                    b = scoring.encode(tok, [c], [t])
                    scoring.score_full(model, b, 1)
    seconds = time.perf_counter() - start
    return {"seconds": seconds * len(grid) / len(sample), "configs": len(grid), "measured_configs": len(sample),
            "measured_seconds": seconds}


def row_laser_naive(args) -> dict:
    return _naive(args, batched=False)


def row_laser_naive_batched(args) -> dict:
    return _naive(args, batched=True)


def _doc_batches(tok, n_docs: int = 64) -> list[tuple]:
    """The first n_docs C4 documents, 128 tokens, in (input_ids, attention_mask) batches of 16."""
    from layerlab.core.io import data
    from layerlab.prune import blocks as prune
    return prune.text_batches(tok, [r["text"] for r in data.load("c4")][:n_docs], max_length=128)


def _distance_inputs(args):
    import layerlab
    model, tok = layerlab.load(args.model)
    return model, _doc_batches(tok)


def row_distances_one_pass(args) -> dict:
    from layerlab.prune import blocks as prune
    model, batches = _distance_inputs(args)
    start = time.perf_counter()
    prune.angular_distances(prune.last_token_states(model, batches))
    return {"seconds": time.perf_counter() - start, "configs": 1}


def row_distances_per_n(args) -> dict:
    """How common reimplementations do it: for each n, a forward pass (output_hidden_states)
    to get x_l and x_{l+n} for every l."""
    import math
    import torch
    from layerlab.core.model import arch
    model, batches = _distance_inputs(args)
    n_layers = arch.n_layers(model)
    start = time.perf_counter()
    with torch.no_grad():
        for n in range(1, n_layers):
            for ids, mask in batches:
                hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
                last = mask.sum(1) - 1
                rows = torch.arange(ids.shape[0])
                for layer in range(0, n_layers - n):  # (the final entry is post-norm in HF; kept out)
                    a, b = hs[layer][rows, last], hs[layer + n][rows, last]
                    torch.arccos(torch.cosine_similarity(a, b, dim=-1).clamp(-1, 1)).mean() / math.pi
    return {"seconds": time.perf_counter() - start, "configs": n_layers - 1}


def _painters_inputs(args):
    import layerlab
    from layerlab.core.model import arch
    from layerlab.core.io import data
    from layerlab.core.eval import scoring
    from layerlab.painters import grid as painters
    model, tok = layerlab.load(args.model)
    rows = data.load("arc_easy")[: args.painters_items]
    contexts = [f"Question: {r['query']}\nAnswer:" for r in rows for _ in r["choices"]]
    conts = [" " + c for r in rows for c in r["choices"]]
    n_layers = arch.n_layers(model)
    affected = [a for a in (8, 16, 24) if a < n_layers and (n_layers - a) % 2 == 0] or [2]
    specs = painters.specs(n_layers, affected, ["skip", "middle_repeat", "reverse", "random", "parallel",
                                                 "looped_parallel"], [0, 1, 2, 3, 4], [1, 3])
    return model, scoring.encode(tok, contexts, conts), len(contexts), specs, n_layers


def row_painters_shared(args) -> dict:
    from layerlab.core.model import schedule
    from layerlab.core.eval import scoring
    model, batches, n_rows, specs, n_layers = _painters_inputs(args)
    start = time.perf_counter()
    scorer = scoring.PrefixScorer(model, batches, n_rows)  # one capture, prefixes reused
    for s in specs:
        first = 0 if s.variant == "base" else s.n_outer
        scorer.score(first, schedule.as_runner_steps(s.steps(n_layers))[first:])
    return {"seconds": time.perf_counter() - start, "configs": len(specs)}


def row_painters_recomputed(args) -> dict:
    from layerlab.core.model import schedule
    from layerlab.core.eval import scoring
    model, batches, n_rows, specs, n_layers = _painters_inputs(args)
    start = time.perf_counter()
    for s in specs:
        with schedule.scheduled(model, s.steps(n_layers)):  # the whole scheduled model, every time
            scoring.score_full(model, batches, n_rows)
    return {"seconds": time.perf_counter() - start, "configs": len(specs)}


def row_svd(args) -> dict:
    """SVD time of the model's MLP matrices: one per matrix (reused for every rho) vs one per rho."""
    import torch
    import layerlab
    from layerlab.core.model import arch
    from layerlab.laser import rank
    model, _ = layerlab.load(args.model)
    keys = [(t, l) for l in range(arch.n_layers(model)) for t in ("mlp_in", "mlp_out")]
    start = time.perf_counter()
    cache = rank.SVDCache(model)
    for t, l in keys:
        for rho in (0.01, 0.05, 0.1, 0.25, 0.5):
            cache.approximation(rank.Reduction(t, l, rho))
    once = time.perf_counter() - start
    start = time.perf_counter()
    for t, l in keys[:6]:
        w = arch.weight(model, t, l).read()
        for rho in (0.01, 0.05, 0.1, 0.25, 0.5):
            rank.low_rank(w, rho)
    per_rho = (time.perf_counter() - start) * len(keys) / 6
    return {"seconds": once, "per_rho_seconds": per_rho, "configs": len(keys) * 5}


def row_gpu(args) -> dict:
    """A Llama-2-7B-shaped random model in bf16 on CUDA: SVD time of a 4096x11008 matrix and
    LASER sweep throughput (configurations per second) through the prefix cache."""
    import torch
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU"}
    import transformers as tf
    from layerlab.laser import rank
    from layerlab.core.model import runner
    cfg = tf.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.gpu_layers,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
    with torch.device("cuda"):
        model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    w = model.model.layers[0].mlp.up_proj.weight.detach().float()
    torch.cuda.synchronize()
    start = time.perf_counter()
    torch.linalg.svd(w, full_matrices=False)
    torch.cuda.synchronize()
    svd_s = time.perf_counter() - start
    ids = torch.randint(0, 32000, (64, 32), device="cuda")
    state = runner.capture(model, ids, torch.ones_like(ids))
    cache = rank.SVDCache(model)
    n = 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for layer in range(args.gpu_layers - 1, -1, -1):
        for rho in (0.01, 0.1):
            with rank.reduced(model, rank.Reduction("mlp_in", layer, rho), cache):
                runner.run_from(model, state, layer, positions=torch.full((64, 1), 31, device="cuda"))
            n += 1
    torch.cuda.synchronize()
    return {"device": torch.cuda.get_device_name(0), "svd_4096x11008_s": svd_s,
            "configs_per_s": n / (time.perf_counter() - start), "configs": n, "seconds": time.perf_counter() - start}


def row_ray(args) -> dict:
    """Ray overhead on CPU: one LASER sweep (the base model and the deepest ``--ray-layers``
    layers x {mlp_in, mlp_out} x 5 rhos on ``--items`` CounterFact items) through
    ``laser_distributed.run_laser_points``, locally and as Ray tasks with 1 and 2 workers, each
    into a fresh results dir. Every run loads the model and builds the task itself (a Ray
    task in a fresh worker process); starting the local Ray instance is timed apart (once
    per session). Peak RSS is this driver's only."""
    import tempfile
    import ray
    from transformers import AutoConfig
    from layerlab.core.model import models
    from layerlab.core.compute import distributed
    from layerlab.laser import distributed as laser_distributed
    from layerlab.laser import sweep as laser
    n_layers = AutoConfig.from_pretrained(models.resolve(args.model)).num_hidden_layers  # converts once, untimed
    layers = range(n_layers - (args.ray_layers or n_layers), n_layers)
    points = [[]] + [[g] for g in laser.grid(["mlp_in", "mlp_out"], layers, [0.01, 0.05, 0.1, 0.25, 0.5])]
    kw = dict(seed=0, limit=args.items, device="cpu", dtype="float32", progress=False)
    out = {"configs": len(points) - 1, "workers_cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        laser_distributed.run_laser_points(args.model, "counterfact", points, results_dir=f"{tmp}/local", **kw)
        out["seconds"] = out["local_s"] = time.perf_counter() - start
        start = time.perf_counter()
        distributed.validate_executor("ray", None)  # a local instance with every CPU
        out["ray_start_s"] = time.perf_counter() - start
        for workers in (1, 2):
            start = time.perf_counter()
            r = laser_distributed.run_laser_points(args.model, "counterfact", points, results_dir=f"{tmp}/ray{workers}",
                                             executor="ray", workers=workers, **kw)
            out[f"ray_{workers}_s"] = time.perf_counter() - start
            assert r["computed"] == len(points) and r["tasks"] == workers
        ray.shutdown()
    out["overhead_1"] = out["ray_1_s"] / out["local_s"] - 1
    return out


def row_scaling(args) -> dict:
    """How the sweeps grow with items, start layer and grid size, per model: seconds per
    LASER configuration (SVD already cached) at three start layers and three item counts,
    the SVDs of all MLP matrices, and the one-pass distances at two document counts. The
    full-grid estimate fits time = a + b * (blocks run) and sums it over the layers x 2
    matrix types x 5 rhos grid, plus the SVDs."""
    import tempfile
    import numpy as np
    import layerlab
    from layerlab.core.model import arch
    from layerlab.core.io import results
    from layerlab.laser import sweep as laser, rank
    from layerlab.prune import blocks as prune
    out = []
    for name in args.scaling_models.split(","):
        model, tok = layerlab.load(name)
        n_layers = arch.n_layers(model)
        svd = rank.SVDCache(model)
        start = time.perf_counter()
        for layer in range(n_layers):
            for t in ("mlp_in", "mlp_out"):
                svd.approximation(rank.Reduction(t, layer, 0.01))
        svd_s = time.perf_counter() - start
        starts = [0, n_layers // 2, n_layers - 1]
        for items in (25, 50, 100):
            task = laser.build_task("counterfact", limit=items, seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                sw = laser.Sweeper(model, tok, name, task, results.ResultStore(tmp), svd=svd)
                sw.scorer  # capture outside the timings
                per = []
                for layer in starts:
                    t0 = time.perf_counter()
                    for t in ("mlp_in", "mlp_out"):
                        sw.point([rank.Reduction(t, layer, 0.05)])
                    per.append((time.perf_counter() - t0) / 2)
            run = np.array([n_layers - s for s in starts], dtype=float)
            b, a = np.polyfit(run, per, 1)
            grid_s = sum(a + b * (n_layers - layer) for layer in range(n_layers)) * 10 + svd_s
            out.append({"model": name, "layers": n_layers, "items": items,
                        "per_config_s": dict(zip([f"l={s}" for s in starts], per)),
                        "grid_configs": n_layers * 10, "grid_estimate_s": grid_s, "svd_all_mlp_s": svd_s})
        for n_docs in (32, 64):
            batches = _doc_batches(tok, n_docs)
            t0 = time.perf_counter()
            prune.angular_distances(prune.last_token_states(model, batches))
            out[-1].setdefault("distances_s", {})[n_docs] = time.perf_counter() - t0
        del model
    return {"rows": out, "seconds": 0.0}


def row_lm_eval_head(args) -> dict:
    """lm-eval's HFLM against layerlab's ScoredPositionsLM (the output head and log-softmax
    only at the scored positions) on the same MMLU items, ``--head-model`` in bf16: seconds
    of each and the largest difference of any request's log-likelihood (after one warm-up)."""
    import lm_eval
    import numpy as np
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import layerlab
    from layerlab.core.eval import evaluation
    from layerlab.core.eval.lm_eval_model import ScoredPositionsLM
    model, tok = layerlab.load(args.head_model, dtype="bfloat16")
    manager = TaskManager(include_path=str(evaluation.prepare_tasks()), include_defaults=False)

    def run(cls, limit):
        lm = cls(pretrained=model, tokenizer=tok, batch_size=16, device="cpu", softmax_dtype=torch.float32)
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=["layerlab_mmlu"], task_manager=manager, limit=limit,
                                      cache_requests=False, bootstrap_iters=0, log_samples=True, random_seed=0,
                                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        scores = [r[0] for s in out["samples"]["layerlab_mmlu"] for r in s["filtered_resps"]]
        return time.perf_counter() - start, np.array(scores, dtype=float)

    run(ScoredPositionsLM, 4)  # warm-up: first-call costs out of both timings
    hf_s, hf = run(HFLM, args.head_items)
    ours_s, ours = run(ScoredPositionsLM, args.head_items)
    return {"seconds": ours_s, "hflm_s": hf_s, "items": args.head_items, "requests": len(ours),
            "max_abs_diff": float(np.abs(ours - hf).max()), "model": args.head_model}


def _count_block_tokens(model) -> tuple[list, list]:
    """Forward pre-hooks on every block adding up batch x length of each call: (handles, [total])."""
    from layerlab.core.model import arch
    total = [0]

    def hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        total[0] += h.shape[0] * h.shape[1]
    return [b.register_forward_pre_hook(hook, with_kwargs=True) for b in arch.blocks(model)], total


def row_prune_curve_passes(args) -> dict:
    """The deeper-layers curve (issue #19): ``--curve-model`` with 6 fractions x 2 methods
    (similarity at l*(n) from C4 distances, and the deepest-layers heuristic) on MMLU,
    prefix-shared (``prefix_eval.lm_eval_edits``), against one plain lm-eval pass of the
    unmodified model on the same items. Passes = the curve's block-token count over one
    plain pass's (L x tokens), and its seconds over the plain pass's."""
    import numpy as np
    import layerlab
    from layerlab.core.model import arch, edits, schedule
    from layerlab.core.io import data
    from layerlab.core.eval import evaluation, prefix_eval
    from layerlab.prune import blocks as prune, curve as prune_curve
    model, tok = layerlab.load(args.curve_model, dtype=args.curve_dtype)
    L = arch.n_layers(model)
    docs = [r["text"] for r in data.load("c4")][:32]
    d = prune.angular_distances(prune.last_token_states(model, prune.text_batches(tok, docs, 128)))
    ns = prune_curve.block_counts([0, 0.1, 0.2, 0.3, 0.4, 0.5], L)
    zoo = {(m, n): edits.from_schedule(schedule.drop(L, prune.blocks_for(m, d, L, n)), L)
           for m in ("similarity", "deepest") for n in ns if n > 0 or m == "similarity"}
    evaluation.lm_eval(model, tok, ["mmlu"], limit=4)  # warm-up: task preparation, first-call costs
    handles, counted = _count_block_tokens(model)
    start = time.perf_counter()
    _, plain = evaluation.lm_eval(model, tok, ["mmlu"], limit=args.curve_items, log_samples=True)
    plain_s, plain_tokens = time.perf_counter() - start, counted[0]
    counted[0] = 0
    start = time.perf_counter()
    shared = prefix_eval.lm_eval_edits(model, tok, ["mmlu"], {str(k): e for k, e in zoo.items()},
                                       limit=args.curve_items)
    shared_s, shared_tokens = time.perf_counter() - start, counted[0]
    for h in handles:
        h.remove()
    ll = lambda out: np.array([r[0][0] for s in out["samples"]["layerlab_mmlu"] for r in s["resps"]])  # noqa: E731
    base = shared[str(("similarity", 0))][1]
    return {"seconds": shared_s, "plain_pass_s": plain_s, "points": len(zoo), "items": args.curve_items,
            "passes_by_tokens": shared_tokens / plain_tokens, "passes_by_time": shared_s / plain_s,
            "naive_passes": len(zoo) * 1.0, "max_abs_diff_unmodified": float(np.abs(ll(base) - ll(plain)).max()),
            "model": args.curve_model, "dtype": str(model.dtype).removeprefix("torch.")}


def row_dtype_speed(args) -> dict:
    """One forward pass of 8 x 128 tokens per model in float32 and in bfloat16 on this CPU
    (after a warm-up): seconds and tokens per second (the table of issue #19)."""
    import gc
    import torch
    import layerlab
    out = []
    ids = torch.randint(100, 1000, (8, 128), generator=torch.Generator().manual_seed(0))
    for name in args.dtype_models.split(","):
        for dtype in ("float32", "bfloat16"):
            model, _ = layerlab.load(name, dtype=dtype, device="cpu")
            with torch.no_grad():
                model(input_ids=ids[:1, :32])
                start = time.perf_counter()
                model(input_ids=ids)
                seconds = time.perf_counter() - start
            out.append({"model": name, "dtype": dtype, "seconds": seconds, "tokens_per_s": ids.numel() / seconds})
            del model
            gc.collect()
    return {"rows": out, "seconds": 0.0}


def row_laser_memory_one(args) -> dict:
    """(internal) One LASER CounterFact sweep of ``--memory-model`` on ``--memory-items``
    items (2 deepest layers x {mlp_in, mlp_out} x rho 0.01, and the base): its seconds and
    the weights' size; peak RSS is added by the caller's process."""
    import tempfile
    import layerlab
    from layerlab.core.model import arch
    from layerlab.core.io import results
    from layerlab.laser import sweep as laser
    if args.memory_model.startswith("shape:"):  # a randomly initialised Llama of gpu_check's shapes (e.g. shape:7b)
        import torch
        sys.path.insert(0, str(HERE.parent / "scripts"))
        import gpu_check
        from layerlab.core.model import models
        tok = gpu_check.train_tokenizer(1024)
        model = gpu_check.build_model(args.memory_model.removeprefix("shape:"), models.resolve_dtype("auto"),
                                      torch.device("cpu"), tok)
    else:
        model, tok = layerlab.load(args.memory_model)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    task = laser.build_task("counterfact", limit=args.memory_items, seed=0)
    L = arch.n_layers(model)
    gc.collect()
    loaded_mb, load_peak_mb = _rss_mb("VmRSS"), _rss_mb("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM: the peak below is the sweep's, not the load's
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sw = laser.Sweeper(model, tok, args.memory_model, task, results.ResultStore(tmp))
        laser.sweep(sw, ["mlp_in", "mlp_out"], [L - 2, L - 1], [0.01], progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "weights_mb": weights_mb, "items": task.n_items, "loaded_mb": loaded_mb,
            "sweep_peak_mb": _rss_mb("VmHWM"), "load_peak_mb": load_peak_mb, "dtype": str(model.dtype).removeprefix("torch.")}


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def row_laser_memory(args) -> dict:
    """Peak RSS of the LASER sweep for each model of ``--memory-models`` at 100 and 2,000
    CounterFact items, each in a fresh process: memory = weights + a working set that must
    not grow with the items (issue #20)."""
    out = []
    for spec in args.memory_models.split(","):
        name, sep, sizes = spec.rpartition(":")  # "model:100/2000", "shape:7b:100/400" or a bare model
        if not sep or not sizes.replace("/", "").isdigit():
            name, sizes = spec, ""
        for items in [int(x) for x in (sizes or "100/2000").split("/")]:
            cmd = [sys.executable, __file__, "--row", "laser_memory_one", "--memory-model", name,
                   "--memory-items", str(items)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                out.append({"model": name, "items": items, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
                continue
            out.append({"model": name, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return {"rows": out, "seconds": 0.0}


def row_continuation_split(args) -> dict:
    """Issue #20 section 3: per model and LASER dataset (the quick book's items), how many
    rows' (context, continuation) tokens differ between tokenising each on its own (the
    old way) and lm-eval's split of the joint encoding (``scoring.split_pairs``, the new
    way). None differing means the LASER numbers cannot have changed."""
    from transformers import AutoTokenizer
    from layerlab.core.model import embedded
    from layerlab.core.eval import scoring
    from layerlab.laser import sweep as laser
    out = []
    for name in args.split_models.split(","):
        tok = AutoTokenizer.from_pretrained(embedded.cache_dir() / name)
        for ds in laser.DATASETS:
            limit = 100 if ds == "counterfact" else (40 if ds == "epistemic_reasoning" else 80)
            task = laser.build_task(ds, limit=limit, seed=0)
            new = [(list(c), list(t)) for c, t in scoring.split_pairs(tok, task.contexts, task.continuations)]
            ids = lambda texts, **kw: [list(map(int, x)) for x in tok(list(texts), **kw)["input_ids"]]  # noqa: E731
            old = list(zip(ids(task.contexts), ids(task.continuations, add_special_tokens=False)))
            out.append({"model": name, "dataset": ds, "rows": len(new),
                        "differ": sum(a != b for a, b in zip(old, new))})
    return {"rows": out, "seconds": 0.0}


ROWS = {    "laser_layerlab": row_laser_layerlab, "laser_bound": row_laser_bound, "laser_naive": row_laser_naive,
    "laser_naive_batched": row_laser_naive_batched, "svd": row_svd,
    "distances_one_pass": row_distances_one_pass, "distances_per_n": row_distances_per_n,
    "painters_shared": row_painters_shared, "painters_recomputed": row_painters_recomputed, "scaling": row_scaling, "gpu": row_gpu,
    "ray": row_ray, "lm_eval_head": row_lm_eval_head, "prune_curve_passes": row_prune_curve_passes,
    "dtype_speed": row_dtype_speed, "laser_memory": row_laser_memory, "laser_memory_one": row_laser_memory_one,
    "continuation_split": row_continuation_split,
}


def run_row(name: str, args) -> dict:
    """Run one row in a fresh process and return its measurements (+ its peak RSS)."""
    cmd = [sys.executable, __file__, "--row", name, "--items", str(args.items), "--model", args.model,
           "--naive-sample", str(args.naive_sample), "--laser-grid", args.laser_grid, "--painters-items", str(args.painters_items),
           "--gpu-layers", str(args.gpu_layers), "--ray-layers", str(args.ray_layers),
           "--scaling-models", args.scaling_models, "--head-model", args.head_model,
           "--head-items", str(args.head_items), "--curve-model", args.curve_model, "--curve-dtype", args.curve_dtype,
           "--curve-items", str(args.curve_items), "--dtype-models", args.dtype_models,
           "--memory-models", args.memory_models, "--split-models", args.split_models]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(res: dict, args) -> str:
    def s(name):
        return res.get(name, {}).get("seconds", float("nan"))

    from layerlab.core.compute.machine import machine_info
    info = machine_info()
    lines = [f"Benchmarks for `{args.model}` on {info['cpu']} ({info['cpu_cores']} cores; {info['cpu_flags']}; native "
             f"bf16: {'yes' if info['native_bf16'] else 'no'}; dtype auto = {info['auto_dtype']}; torch kernels "
             f"{info['torch_cpu_capability']}; ISA caps: {info['isa_limits']}), one run "
             f"({time.strftime('%Y-%m-%d %H:%M')}). Seconds are wall time; ratios are against layerlab's row.",
             "", "| sweep | method | seconds | configs (measured) | ratio | peak RSS MB |", "|---|---|---:|---:|---:|---:|"]

    def add(sweep, method, name, ref, note=""):
        if name not in res:  # not run this time (--only)
            return
        r = res[name]
        if "error" in r or "skipped" in r:
            lines.append(f"| {sweep} | {method} | {r.get('error') or r.get('skipped')} | | | |")
            return
        meas = r.get("measured_configs", r.get("configs", ""))
        cfgs = f"{r.get('configs', '')} ({meas}{note})" if meas != r.get("configs") else f"{r.get('configs', '')}"
        lines.append(f"| {sweep} | {method} | {s(name):.1f} | {cfgs} | {s(name) / s(ref):.2f}x | {r.get('peak_mb', float('nan')):.0f} |")

    add(f"LASER, {args.items} CounterFact items, {args.laser_grid} grid", "layerlab (SVD cache, prefix cache, batches, store)", "laser_layerlab", "laser_layerlab")
    add("", "bound: batched suffix passes only", "laser_bound", "laser_layerlab", ", scaled by layer")
    add("", "naive, one item at a time (reload, fresh SVD, full pass)", "laser_naive", "laser_layerlab", ", scaled")
    add("", "naive, batched", "laser_naive_batched", "laser_layerlab", ", scaled")
    add("all (l, n) angular distances, 64 docs", "one pass, every hidden state", "distances_one_pass", "distances_one_pass")
    add("", "one pass per n", "distances_per_n", "distances_one_pass")
    add(f"Painters, every variant x N, {args.painters_items} ARC-Easy items", "prefix shared", "painters_shared", "painters_shared")
    add("", "prefix recomputed (whole scheduled model)", "painters_recomputed", "painters_shared")
    if len(lines) == 4:  # none of the table's rows was run (--only)
        del lines[1:]
    svd = res.get("svd", {})
    if "seconds" in svd:
        lines += ["", f"SVDs of all MLP matrices for 5 rhos: {svd['seconds']:.1f} s with one SVD per matrix vs "
                  f"{svd['per_rho_seconds']:.1f} s with one per rho (scaled from 6 matrices): "
                  f"{svd['per_rho_seconds'] / svd['seconds']:.1f}x."]
    lr = res.get("laser_layerlab", {})
    if "cache_bytes" in lr:
        lines.append(f"Results cache: {lr['cache_bytes'] / 1024:.0f} KiB for {lr['points']} points "
                     f"({lr['cache_bytes'] / 1024 / lr['points'] * 1000 / 1024:.1f} MiB per 1000 points, "
                     "summary and per-item shards).")
    sc = res.get("scaling", {})
    if "rows" in sc:
        lines += ["", "Scaling: seconds per LASER configuration (SVD cached) by CounterFact items and start layer "
                  "(blocks run = layers - l), and the full all-layers x {mlp_in, mlp_out} x 5 rhos grid it implies "
                  "(a + b * blocks run, fitted to the three start layers, summed, plus the SVDs). Distances: one "
                  "pass with every hidden state, 128-token documents.", "",
                  "| model | layers | items | s/config at l = 0, L/2, L-1 | grid configs | grid estimate s | "
                  "SVD all MLP s | distances s (32 / 64 docs) |", "|---|---:|---:|---|---:|---:|---:|---|"]
        for r in sc["rows"]:
            per = " / ".join(f"{v:.2f}" for v in r["per_config_s"].values())
            dist = " / ".join(f"{v:.1f}" for v in r["distances_s"].values()) if "distances_s" in r else ""
            lines.append(f"| {r['model']} | {r['layers']} | {r['items']} | {per} | {r['grid_configs']} | "
                         f"{r['grid_estimate_s']:.0f} | {r['svd_all_mlp_s']:.1f} | {dist} |")
    elif "error" in sc:
        lines += ["", f"Scaling: {sc['error']}"]
    ray_ = res.get("ray", {})
    if "local_s" in ray_:
        lines += ["", f"Ray overhead on CPU (the same LASER sweep, {ray_['configs']} configurations + base, "
                  f"{args.items} CounterFact items, model loaded by each run): local {ray_['local_s']:.1f} s; "
                  f"Ray, 1 worker {ray_['ray_1_s']:.1f} s ({100 * ray_['overhead_1']:+.0f}%, target at most +10%); "
                  f"Ray, 2 workers {ray_['ray_2_s']:.1f} s ({ray_['local_s'] / ray_['ray_2_s']:.2f}x the local speed, "
                  f"{ray_['workers_cpus']} CPUs shared); starting the local Ray instance {ray_['ray_start_s']:.1f} s "
                  "(once per session, not counted)."]
    elif ray_:
        lines += ["", f"Ray overhead: {ray_.get('error') or ray_.get('skipped')}"]
    head = res.get("lm_eval_head", {})
    if "hflm_s" in head:
        lines += ["", f"lm-eval on `{head['model']}` (bf16, {head['items']} MMLU items, {head['requests']} requests): "
                  f"lm-eval's HFLM {head['hflm_s']:.1f} s, layerlab's ScoredPositionsLM (head only at scored "
                  f"positions) {head['seconds']:.1f} s: {head['hflm_s'] / head['seconds']:.2f}x; largest "
                  f"log-likelihood difference {head['max_abs_diff']:.2g}."]
    elif head:
        lines += ["", f"lm-eval head: {head.get('error') or head.get('skipped')}"]
    curve = res.get("prune_curve_passes", {})
    if "plain_pass_s" in curve:
        lines += ["", f"Deeper-layers curve, prefix-shared (`{curve['model']}`, {curve['dtype']}, {curve['points']} pruned "
                  f"models = 6 fractions x 2 methods with n = 0 once, {curve['items']} MMLU items): "
                  f"{curve['seconds']:.1f} s against {curve['plain_pass_s']:.1f} s for one plain lm-eval pass: "
                  f"**{curve['passes_by_time']:.2f} passes** by time, {curve['passes_by_tokens']:.2f} by block-tokens "
                  f"run (target at most 3; one lm-eval run per pruned model costs {curve['naive_passes']:.0f}); "
                  f"unmodified model's log-likelihoods against the plain pass: largest difference "
                  f"{curve['max_abs_diff_unmodified']:.2g}."]
    elif curve:
        lines += ["", f"Deeper-layers curve: {curve.get('error') or curve.get('skipped')}"]
    mem = res.get("laser_memory", {})
    if "rows" in mem:
        lines += ["", "Memory of a LASER CounterFact sweep (2 layers x 2 matrix types x 1 rho + base), each in a fresh "
                  "process: RSS after loading, and the peak during the sweep alone (VmHWM reset after loading through "
                  "/proc/self/clear_refs); the peak while loading last. The sweep's working set (peak "
                  "during the sweep minus RSS after loading) should not grow with the items. glibc's mmap threshold: "
                  + (f"fixed (MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']}: freed large tensors go back "
                     "to the OS)" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else
                     "default (dynamic: freed large tensors may stay in the heap and count in RSS)") + ".", "",
                  "| model | dtype | items | seconds | weights MB | RSS after load MB | sweep peak MB | working set MB "
                  "| load peak MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mem["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | | {r['items']} | {r['error']} | | | | | |")
            else:
                lines.append(f"| {r['model']} | {r['dtype']} | {r['items']} | {r['seconds']:.1f} | {r['weights_mb']:.0f} | "
                             f"{r['loaded_mb']:.0f} | {r['sweep_peak_mb']:.0f} | "
                             f"{r['sweep_peak_mb'] - r['loaded_mb']:.0f} | {r.get('load_peak_mb', float('nan')):.0f} |")
    split = res.get("continuation_split", {})
    if "rows" in split:
        lines += ["", "Tokens of the LASER rows (the quick book's items): rows whose (context, continuation) tokens differ "
                  "between each tokenised alone (before) and lm-eval's split of the joint encoding (now):", "",
                  "| model | dataset | rows | rows that differ |", "|---|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['dataset']} | {r['rows']} | {r['differ']} |" for r in split["rows"]]
    speed = res.get("dtype_speed", {})
    if "rows" in speed:
        lines += ["", "Forward pass of 8 x 128 tokens on this CPU:", "", "| model | dtype | seconds | tokens/s |",
                  "|---|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['dtype']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} |" for r in speed["rows"]]
    gpu = res.get("gpu")
    if gpu is not None:
        lines += ["", "GPU (Llama-2-7B-shaped random model, bf16): " + (
            f"{gpu['device']}: SVD of 4096x11008 {gpu['svd_4096x11008_s']:.2f} s; LASER sweep "
            f"{gpu['configs_per_s']:.1f} configurations/s" if "device" in gpu else f"skipped ({gpu.get('skipped', gpu.get('error'))})")]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", choices=sorted(ROWS), help="(internal) run one row and print JSON")
    parser.add_argument("--rows", "--only", dest="rows", default=",".join(r for r in ROWS if not r.endswith("_one")),
                        help="comma-separated rows to run")
    parser.add_argument("--items", type=int, default=400, help="CounterFact items of the LASER and Ray rows "
                        "(400: the quick book's)")
    parser.add_argument("--laser-grid", default="quick", choices=("smoke", "quick", "full", "all"),
                        help="the LASER rows' grid: a book profile's CounterFact grid, or all (every layer x "
                        "{mlp_in, mlp_out} x 5 rhos)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--naive-sample", type=int, default=4, help="configurations timed for the naive rows")
    parser.add_argument("--painters-items", type=int, default=40)
    parser.add_argument("--head-model", default="qwen2.5-coder-1.5b", help="model of the lm_eval_head row")
    parser.add_argument("--head-items", type=int, default=32, help="MMLU items of the lm_eval_head row")
    parser.add_argument("--curve-model", default="qwen2.5-coder-1.5b", help="model of the prune_curve_passes row")
    parser.add_argument("--curve-dtype", default="auto", help="its dtype (auto: the fastest this CPU has)")
    parser.add_argument("--curve-items", type=int, default=100, help="MMLU items of the prune_curve_passes row")
    parser.add_argument("--dtype-models", default="smollm2-135m,qwen2.5-coder-1.5b", help="models of the dtype_speed row")
    parser.add_argument("--memory-models", default="smollm2-135m:100/2000,qwen2.5-coder-1.5b:100/500",
                        help="laser_memory row: model:items/items,...")
    parser.add_argument("--memory-model", default="smollm2-135m", help=argparse.SUPPRESS)
    parser.add_argument("--split-models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-1.5b",
                        help="models of the continuation_split row")
    parser.add_argument("--memory-items", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--gpu-layers", type=int, default=8)
    parser.add_argument("--ray-layers", type=int, default=8, help="deepest layers in the Ray row's sweep (0: all)")
    parser.add_argument("--scaling-models", default="smollm2-135m,gemma3-270m")
    args = parser.parse_args()
    if args.row:
        out = ROWS[args.row](args)
        out["peak_mb"] = peak_mb()
        print(json.dumps(out))
        return 0
    res = {}
    for name in args.rows.split(","):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        res[name] = run_row(name, args)
        print(f"[bench]   {res[name]}", file=sys.stderr, flush=True)
    text = table(res, args)
    OUT.mkdir(exist_ok=True)
    # a subset of rows (--only) gets its own files: the full run's table stays one run's numbers
    stem = f"bench-{args.model}" + ("" if set(res) == {r for r in ROWS if not r.endswith("_one")} else "-" + "-".join(res))
    if "laser_memory" in res:  # one section per model set and allocator setting
        stem += "-" + args.memory_models.replace("/", "_").replace(":", "@").replace(",", "+") + (
            f"-malloc-mmap-threshold-{os.environ['MALLOC_MMAP_THRESHOLD_']}" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "")
    if any(os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")):
        stem += "-isa-capped"  # this CPU made to behave like an older one: its own section
    (OUT / f"{stem}.md").write_text(text + "\n")
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    save_section(HERE / "RESULTS.md", stem, text)
    print(text)
    return 0


def save_section(path: Path, stem: str, text: str) -> None:
    """Replace (or add) the section ``## stem`` of the committed results file with this
    run's table, so a reader sees the measured figures without running the bench."""
    head = "# Measured benchmark tables\n\nWritten by `python bench/run.py`: one section per run (all rows, or `--only` a subset), each naming its CPU, dtype and date.\n"
    sections = {}
    if path.exists():
        for part in path.read_text().split("\n## ")[1:]:
            name, _, body = part.partition("\n")
            sections[name.strip()] = body.strip()
    sections[stem] = text.strip()
    path.write_text(head + "".join(f"\n## {k}\n\n{v}\n" for k, v in sorted(sections.items())))


if __name__ == "__main__":
    raise SystemExit(main())
