"""Running a list of points for one (model, dataset) in this process or as Ray tasks.

A point is one LASER intervention (a list of ``rank.Reduction``; [] = the unmodified model)
or one Painters schedule (``painters.Spec``) on some benchmarks. ``run_laser_points`` and
``run_painters_specs`` run the points that are not stored yet, either here
(``executor="local"``) or as Ray tasks (``executor="ray"``), and return only counts: the
code that computes a point (``laser.Sweeper.point``, ``painters.evaluate``) writes it to the
results store with an atomic keyed write, so the caller reads ``results_dir`` afterwards
exactly as after a local run.

On Ray the missing points are cut into ``workers`` shards of near-equal cost (a LASER
reduction at layer l reruns the blocks l..L-1; a Painters schedule runs its blocks once per
item). Each shard is one task that loads the model itself by name or path (only names,
numbers and paths go through the object store), asks for one GPU when the cluster has GPUs
and else an equal share of a node's CPUs, runs in a fresh worker process (``max_calls=1``:
its memory, GPU memory included, goes back when it ends), and is retried when its worker
dies (``ray_tasks.MAX_RETRIES``). A retried or duplicated task recomputes only what is not stored.

Before any shard starts, one probe task with the shards' resources reports what a worker
resolves (dtype for "auto", device type, the GPU's name, package versions): the driver
needs no GPU of its own to plan GPU workers, and a runtime that differs from the one the
caller expects (``expected_runtime``, e.g. ``models.runtime`` of the notebook's model) is
refused before any work. The chapters plan with it before loading anything (``planning``):
the driver validates on a weightless model and loads its own copy, with the workers' runtime,
only after the tasks ran, so that it never shares a GPU with a task.

A shard that runs out of memory (CUDA or host) is run again with a smaller chunk (half the
tokens per batch, or half the batch size; ``ray_tasks.OOM_RETRIES`` times); a shard that
still fails does not cancel the others: they finish, every finished point stays stored,
and one error names each failed shard and how to resume.

Cluster: ``ray start --head`` on one node, ``ray start --address=<head>:6379`` on the
others, then ``executor="ray"``, ``ray_address="auto"``, and a ``results_dir`` (and data
dir) at a path every node sees.
"""

from __future__ import annotations

import socket
import types
from collections.abc import Sequence
from pathlib import Path

import torch

from . import data, models, prefix_stream, ray_tasks, results
from layerlab.laser import sweep as laser, rank
from layerlab.painters import grid as painters
from .ray_tasks import balance, is_out_of_memory  # noqa: F401  (re-exported)

EXECUTORS = ("local", "ray")
LASER_TASK, PAINTERS_TASK = "layerlab_laser", "layerlab_painters"  # Ray task names (process titles ray::<name>)


# ---------------------------------------------------------------------------- executors

def validate_executor(executor: str, ray_address: str | None = None) -> None:
    """Check ``executor`` and, for "ray", connect to Ray (``ray_address``: None starts a local
    instance, "auto" joins the cluster this node belongs to, "host:port" a head node's GCS).

    Call it before loading any model: a bad address fails here in seconds, with an error
    that names the parameter (Ray itself would wait minutes for a host:port that never
    answers). An address reused while this process is connected elsewhere is refused."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        _connect(ray_address)


def _host_port(address: str, resolve: bool = False) -> tuple[str, int]:
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not (sep and host and port.isdigit()):
        raise ValueError(f"ray_address: {address!r} is not None, 'auto' or 'host:port'")
    return socket.gethostbyname(host) if resolve else host, int(port)


def _connect(address: str | None) -> None:
    import ray

    if address not in (None, "auto"):
        try:
            socket.create_connection(_host_port(address), timeout=5).close()
        except OSError as err:
            raise ConnectionError(
                f"ray_address: nothing answers at {address!r} ({err.strerror or err}). Start a head node with "
                "`ray start --head` (it listens on port 6379) and pass its host:port, use 'auto' on a node "
                "that joined the cluster, or None to start a local Ray instance.") from None
        current = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
        if current and _host_port(address, resolve=True) != _host_port(current, resolve=True):
            raise ValueError(f"ray_address: this process is already connected to Ray at {current}; "
                             f"call ray.shutdown() before connecting to {address!r}")
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=True)
    except ConnectionError as err:
        raise ConnectionError(f"ray_address: cannot connect to Ray at {address!r}: {err} Start a cluster "
                              "with `ray start --head`, or pass None to start a local Ray instance.") from None


def _plan(executor: str, device: str, dtype: str, workers: int | None, loaded=None,
          model: str | None = None) -> tuple[dict, int, dict, str | None]:
    """(runtime, number of Ray tasks, Ray resources of each, the GPU's name or None). runtime: the dict that
    ``models.runtime`` will report for the model the points run on (part of every key):
    dtype, device type, the weights' fingerprint (``models.fingerprint(model)``, from the
    files, no model loaded) and package versions.

    On Ray: one GPU per task when the cluster has GPUs and ``device`` allows it (as many
    tasks as GPUs by default), else one task per node by default, each with an equal share
    of the CPUs that fits on the smallest node (Ray sets OMP_NUM_THREADS to it)."""
    if executor == "local" and loaded is not None:
        dev = next(loaded[0].parameters()).device
        return models.runtime(loaded[0]), 0, {}, ray_tasks.gpu_name(dev)
    if executor == "local":
        dev = models.resolve_device(device)
        return (models.runtime_of(models.resolve_dtype(dtype, dev), dev.type, models.fingerprint(model)), 0, {},
                ray_tasks.gpu_name(dev))
    import ray

    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: {workers!r} must be a positive integer or None (one per GPU or node)")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: {device!r} is not one of auto, cpu, cuda on Ray (each task gets a GPU of its own)")
    gpus = int(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise ValueError("device: 'cuda', but the Ray cluster has no GPU; use 'auto' or 'cpu'")
    if gpus:
        n, resources, worker_device = workers or gpus, {"num_gpus": 1, "num_cpus": 1}, "cuda"
    else:
        node_cpus = [int(n["Resources"]["CPU"]) for n in ray.nodes()
                     if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
        if not node_cpus:
            raise RuntimeError("the Ray cluster has no node with a CPU to run tasks on")
        n = workers or len(node_cpus)
        resources, worker_device = {"num_cpus": max(1, min(min(node_cpus), sum(node_cpus) // n))}, "cpu"
    # what a worker resolves (dtype "auto" depends on its GPU or CPU, not on the driver's)
    probe = ray_tasks.probe_workers(worker_device, dtype, resources)
    here = models.package_versions()
    if probe["versions"] != here:
        diff = {k: (probe["versions"].get(k), here.get(k)) for k in sorted(set(here) | set(probe["versions"]))
                if probe["versions"].get(k) != here.get(k)}
        raise RuntimeError("the Ray workers run other package versions than this driver ("
                           + "; ".join(f"{k}: workers {a}, here {b}" for k, (a, b) in diff.items())
                           + "): their keys would not match; install the same versions on every node")
    runtime = models.runtime_of(getattr(torch, probe["dtype"]), probe["device"], models.fingerprint(model),
                                probe.get("gpu") if probe["device"] == "cuda" else None)
    return runtime, n, resources, probe["gpu"]


def _key_model(runtime: dict):
    """Stands in for a model where only ``models.runtime`` reads it, so that the driver
    computes the keys of points with the techniques' own key code, loading no model."""
    p = types.SimpleNamespace(dtype=getattr(torch, runtime["dtype"]), device=torch.device(runtime["device"]))
    return types.SimpleNamespace(parameters=lambda: iter([p]), layerlab_weights=runtime["weights"],
                                 layerlab_gpu=runtime.get("gpu"))


# ---------------------------------------------------------------------------- workers

def _load(model: str, device: str, dtype: str):
    """The one place a worker loads (model, tokenizer); registry models are converted once
    per machine (``models.resolve`` holds a file lock while it converts)."""
    return models.load(model, dtype=dtype, device=device)


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
    lm, tok = loaded or _load(source, device, dtype)
    task = laser.build_task(dataset, data_dir, limit, seed)
    sweeper = laser.Sweeper(lm, tok, model_name, task, results.ResultStore(results_dir), seed=seed, limit=limit,
                            max_tokens_per_batch=max(256, LASER_TOKENS_PER_BATCH >> shrink),
                            state_bytes=prefix_stream.budget(lm, "auto") >> shrink)
    sweeper.points([[rank.Reduction(**r) for r in p] for p in points], progress=progress)
    return len(points)


def _painters_shard(source: str, model_name: str, jobs: list[tuple[dict, list[str]]], limits: dict,
                    results_dir: str, seed: int, data_dir: str, device: str, dtype: str, batch_size: int,
                    loaded=None, env: dict | None = None, marker: str | None = None, shrink: int = 0) -> int:
    """Run Painters schedules (spec as a dict, benchmarks) through lm-eval; every
    (spec, benchmark) is stored as it finishes, stored ones are skipped. ``shrink``: batch
    size ``batch_size / 2**shrink`` (at least 1)."""
    ray_tasks.start(env, marker)
    batch_size = max(1, batch_size >> shrink)
    lm, tok = loaded or _load(source, device, dtype)
    store = results.ResultStore(results_dir)
    for spec, tasks in jobs:
        painters.evaluate(lm, tok, model_name, store, painters.Spec(**spec), tasks, limits, data_dir, seed, batch_size)
    return len(jobs)


# ---------------------------------------------------------------------------- entry points

def _paths(model: str, results_dir, data_dir) -> tuple[str, str, str]:
    """Absolute paths for the workers (their working directory may differ): the model's
    source (a local folder made absolute; names and Hub ids unchanged), results dir, data dir."""
    source = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
    return source, str(Path(results_dir).resolve()), str(data.data_dir(data_dir))


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
    validate_executor(executor, ray_address)  # before anything is loaded
    runtime, n_tasks, resources, gpu = _plan(executor, device, dtype, workers, loaded, model)
    if expected_runtime is not None:
        check_runtime(runtime, expected_runtime)  # before any task starts
    source, results_dir, data_dir = _paths(model, results_dir, data_dir)
    if dataset not in laser.DATASETS and Path(dataset).is_file():  # a user file, named by stem and content
        dataset = str(Path(dataset).resolve())
    store = results.ResultStore(results_dir)
    task = laser.build_task(dataset, data_dir, limit, seed)  # reads the items only: keys depend on their number
    keyer = laser.Sweeper(_key_model(runtime), None, model, task, store, seed=seed, limit=limit)
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
        ray_tasks.run_shards(_laser_shard, LASER_TASK, [(source, model, dataset, [todo[k] for k in s], *rest) for s in shards],
                    resources, store, laser.TECHNIQUE, set(todo), progress)
    _check_stored(store, laser.TECHNIQUE, todo)
    return {"points": len(points), "computed": len(todo), "tasks": len(shards), "runtime": runtime, "gpu": gpu}


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
    validate_executor(executor, ray_address)
    runtime, n_tasks, resources, gpu = _plan(executor, device, dtype, workers, loaded, model)
    if expected_runtime is not None:
        check_runtime(runtime, expected_runtime)  # before any task starts
    source, results_dir, data_dir = _paths(model, results_dir, data_dir)
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
        ray_tasks.run_shards(_painters_shard, PAINTERS_TASK, [(source, model, [jobs[i] for i in s], *rest) for s in shards],
                    resources, store, painters.TECHNIQUE, keys, progress)
    _check_stored(store, painters.TECHNIQUE, keys)
    return {"points": sum(map(len, per_spec.values())), "computed": len(keys), "tasks": len(shards),
            "runtime": runtime, "gpu": gpu}


def _check_stored(store: results.ResultStore, technique: str, keys) -> None:
    lost = set(keys) - store.keys(technique)
    if lost:
        raise RuntimeError(f"{len(lost)} points were run but are not in the results store {store.root} "
                           "(is results_dir on storage that every Ray node sees?)")


def check_runtime(ran: dict, model) -> None:
    """Refuse to go on when the workers ran (or will run: pass the plan's runtime before any
    task) another runtime (dtype, device type, weights or package versions) than the
    notebook's own model (a model, or its ``models.runtime`` dict): its keys would not find
    their points, and it would recompute them."""
    here = model if isinstance(model, dict) else models.runtime(model)
    if ran != here:
        diff = {k: (ran.get(k), here.get(k)) for k in sorted(set(ran) | set(here)) if ran.get(k) != here.get(k)}
        hint = ("pass -p device and -p dtype explicitly so that both agree" if {"dtype", "device"} & set(diff)
                else "the workers must load the same model files with the same package versions")
        raise ValueError("runtime: the Ray workers' runtime differs from this notebook's model in "
                         + "; ".join(f"{k}: workers {a!r}, here {b!r}" for k, (a, b) in diff.items())
                         + f"; {hint}")
