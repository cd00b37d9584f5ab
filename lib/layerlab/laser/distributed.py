"""LASER points for one (model, dataset), run in this process or as Ray tasks
(``layerlab.core.compute.distributed`` plans and connects; ``ray_tasks`` runs the shards).

A point is one intervention (a list of ``rank.Reduction``; [] = the unmodified model).
Points touching the same matrices share their SVDs, so they go to one shard; a reduction at
layer l reruns the blocks l..L-1. Each shard stores every point as it finishes
(``Sweeper.point``), so the caller reads the results store afterwards, as after a local run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from layerlab.core.compute import distributed, ray_tasks
from layerlab.core.eval import prefix_stream
from layerlab.core.io import results
from layerlab.laser import rank, sweep as laser

TASK = "layerlab_laser"  # the Ray task name (process title ray::layerlab_laser)


LASER_TOKENS_PER_BATCH = 4096  # laser.Sweeper's default; a shard out of memory halves it


def _laser_shard(source: str, model_name: str, dataset: str, points: list[list[dict]], results_dir: str,
                 seed: int, limit: int | None, data_dir: str, device: str, dtype: str, loaded=None,
                 progress: bool = False, env: dict | None = None,
                 marker: str | None = None, shrink: int = 0) -> int:
    """Run LASER points (reductions as dicts) for one (model, dataset); every point is
    stored as it finishes, stored points are skipped. ``shrink``: batches of
    ``LASER_TOKENS_PER_BATCH / 2**shrink`` tokens and states within
    ``prefix_stream.budget / 2**shrink`` bytes (the numbers do not depend on it, nor do
    the keys). Returns the number of points."""
    ray_tasks.start(env, marker)
    lm, tok = loaded or distributed.load(source, device, dtype)
    task = laser.build_task(dataset, data_dir, limit, seed)
    sweeper = laser.Sweeper(lm, tok, model_name, task, results.ResultStore(results_dir), seed=seed, limit=limit,
                            max_tokens_per_batch=max(256, LASER_TOKENS_PER_BATCH >> shrink),
                            state_bytes=prefix_stream.budget(lm, "auto") >> shrink)
    sweeper.points([[rank.Reduction(**r) for r in p] for p in points], progress=progress)
    return len(points)


def run_laser_points(model: str, dataset: str, points: Sequence[Sequence[rank.Reduction]], *, results_dir,
                     seed: int = 0, limit: int | None = None, data_dir=None, device: str = "auto",
                     dtype: str = "auto", executor: str = "local", ray_address: str | None = None,
                     workers: int | None = None, loaded=None, progress: bool = True,
                     expected_runtime: dict | None = None) -> dict:
    """Compute and store every LASER point of one (model, dataset) that is not stored yet.

    model: registry name, Hub id or local folder; the keys use it as given. points: each a
    list of reductions applied together ([] = the unmodified model). dataset, seed, limit:
    as ``laser.build_task`` and ``laser.Sweeper``, so the keys are those of a notebook sweep
    of a model with the same ``runtime``. device, dtype: as ``layerlab.load`` (on Ray,
    "auto" means a GPU per task when the cluster has GPUs). loaded: an already loaded
    (model, tokenizer) for executor="local". workers: Ray tasks (None: one per GPU, or per
    node on a CPU cluster). expected_runtime: the runtime the caller will read the points
    with (``models.runtime`` of its model); a plan that differs is refused before any task
    starts (``check_runtime``). Read the rows from ``results.ResultStore(results_dir)`` (or
    ``laser.sweep``) afterwards.

    Returns counts and the runtime the points ran on: {"points", "computed", "tasks",
    "runtime": {"dtype", "device", "weights", "versions"} (``models.runtime``), "gpu": the
    GPU's name (None on a CPU)}."""
    distributed.validate_executor(executor, ray_address)  # before anything is loaded
    runtime, n_tasks, resources, gpu = distributed.plan(executor, device, dtype, workers, loaded, model)
    if expected_runtime is not None:
        distributed.check_runtime(runtime, expected_runtime)  # before any task starts
    source, results_dir, data_dir = distributed.paths(model, results_dir, data_dir)
    if dataset not in laser.DATASETS and Path(dataset).is_file():  # a user file, named by stem and content
        dataset = str(Path(dataset).resolve())
    store = results.ResultStore(results_dir)
    task = laser.build_task(dataset, data_dir, limit, seed)  # reads the items only: keys depend on their number
    keyer = laser.Sweeper(distributed.key_model(runtime), None, model, task, store, seed=seed, limit=limit)
    todo: dict[str, list[dict]] = {}
    shards: list[list[str]] = []
    for p in points:
        key = keyer.key(list(p))
        if key not in todo and not store.has(laser.TECHNIQUE, key):
            todo[key] = [r.as_dict() for r in p]
    # the Ray workers load with the resolved runtime, so their keys are the ones above
    rest = (results_dir, seed, limit, data_dir, *((device, dtype) if executor == "local" else
                                                  (runtime["device"], runtime["dtype"])))
    if todo and executor == "local":
        _laser_shard(source, model, dataset, list(todo.values()), *rest, loaded=loaded, progress=progress)
    elif todo:
        # Points touching the same matrices share their SVDs, so they go to one shard; a
        # point costs the blocks it reruns (n_layers - lowest layer) plus about one for the head.
        n_layers = 1 + max((r["layer"] for p in todo.values() for r in p), default=0)
        units: dict[frozenset, list[str]] = {}
        for key, p in todo.items():
            units.setdefault(frozenset((r["matrix_type"], r["layer"]) for r in p), []).append(key)
        unit_keys = list(units.values())
        costs = [sum(n_layers - min((r["layer"] for r in todo[k]), default=n_layers) + 1 for k in ks)
                 for ks in unit_keys]
        order = {k: i for i, k in enumerate(todo)}
        shards = [sorted((k for u in g for k in unit_keys[u]), key=order.get) for g in ray_tasks.balance(costs, n_tasks)]
        ray_tasks.run_shards(_laser_shard, TASK, [(source, model, dataset, [todo[k] for k in s], *rest) for s in shards],
                    resources, store, laser.TECHNIQUE, set(todo), progress)
    distributed.check_stored(store, laser.TECHNIQUE, todo)
    return {"points": len(points), "computed": len(todo), "tasks": len(shards), "runtime": runtime, "gpu": gpu}
