"""Painters schedules on benchmarks for one model, run in this process or as Ray tasks
(``layerlab.core.compute.distributed`` plans and connects; ``ray_tasks`` runs the shards).
Each shard stores every (spec, benchmark) as it finishes (``grid.evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence

from layerlab.core.compute import distributed, ray_tasks
from layerlab.core.io import results
from layerlab.painters import grid as painters

TASK = "layerlab_painters"  # the Ray task name (process title ray::layerlab_painters)


def _painters_shard(source: str, model_name: str, jobs: list[tuple[dict, list[str]]], limits: dict,
                    results_dir: str, seed: int, data_dir: str, device: str, dtype: str, batch_size: int,
                    loaded=None, env: dict | None = None, marker: str | None = None, shrink: int = 0) -> int:
    """Run Painters schedules (spec as a dict, benchmarks) through lm-eval; every
    (spec, benchmark) is stored as it finishes, stored ones are skipped. ``shrink``: batch
    size ``batch_size / 2**shrink`` (at least 1)."""
    ray_tasks.start(env, marker)
    batch_size = max(1, batch_size >> shrink)
    lm, tok = loaded or distributed.load(source, device, dtype)
    store = results.ResultStore(results_dir)
    for spec, tasks in jobs:
        painters.evaluate(lm, tok, model_name, store, painters.Spec(**spec), tasks, limits, data_dir, seed, batch_size)
    return len(jobs)


def _spec_cost(spec: painters.Spec, tasks: list[str], limits: dict, n_layers: int) -> float:
    blocks = sum(1 if isinstance(s, int) else len(s.blocks) * s.iterations for s in spec.steps(n_layers))
    # per item; generation (GSM8K) runs about one pass per generated token; None = a whole benchmark
    return blocks * sum((limits.get(t) or 1000) * (50 if t == "gsm8k" else 1) for t in tasks)


def run_painters_specs(model: str, specs: Sequence[painters.Spec], tasks, limits: dict[str, int | None], *,
                       n_layers: int, results_dir, seed: int = 0, data_dir=None, device: str = "auto",
                       dtype: str = "auto", executor: str = "local", ray_address: str | None = None,
                       workers: int | None = None, batch_size: int = 16, loaded=None,
                       progress: bool = True, expected_runtime: dict | None = None) -> dict:
    """Compute and store every (spec, benchmark) of a Painters grid that is not stored yet,
    as ``painters.evaluate`` does (the same keys and rows).

    tasks: the benchmarks of every spec (a list), or a dict spec -> its benchmarks.
    limits: items per benchmark (None = all). n_layers: the model's block count (the
    schedules and their costs depend on it). Other arguments as ``run_laser_points``.
    Returns {"points", "computed", "tasks", "runtime"}: counts of (spec, benchmark) pairs
    and Ray tasks, and the runtime they ran on."""
    distributed.validate_executor(executor, ray_address)
    runtime, n_tasks, resources, gpu = distributed.plan(executor, device, dtype, workers, loaded, model)
    if expected_runtime is not None:
        distributed.check_runtime(runtime, expected_runtime)  # before any task starts
    source, results_dir, data_dir = distributed.paths(model, results_dir, data_dir)
    store = results.ResultStore(results_dir)
    per_spec = {s: list(tasks[s] if isinstance(tasks, dict) else tasks) for s in specs}
    todo = {s: [t for t in ts if not store.has(painters.TECHNIQUE, painters.point_key(model, s, t, limits.get(t), runtime, seed, data_dir))]
            for s, ts in per_spec.items()}
    todo = {s: ts for s, ts in todo.items() if ts}
    keys = {painters.point_key(model, s, t, limits.get(t), runtime, seed, data_dir) for s, ts in todo.items() for t in ts}
    jobs = [(s.as_dict(), ts) for s, ts in todo.items()]
    rest = (limits, results_dir, seed, data_dir, *((device, dtype) if executor == "local" else
                                                   (runtime["device"], runtime["dtype"])), batch_size)
    shards = []
    if jobs and executor == "local":
        _painters_shard(source, model, jobs, *rest, loaded=loaded)
    elif jobs:
        shards = ray_tasks.balance([_spec_cost(s, ts, limits, n_layers) for s, ts in todo.items()], n_tasks)
        ray_tasks.run_shards(_painters_shard, TASK, [(source, model, [jobs[i] for i in s], *rest) for s in shards],
                    resources, store, painters.TECHNIQUE, keys, progress)
    distributed.check_stored(store, painters.TECHNIQUE, keys)
    return {"points": sum(map(len, per_spec.values())), "computed": len(keys), "tasks": len(shards),
            "runtime": runtime, "gpu": gpu}
