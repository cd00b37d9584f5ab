"""Running a technique's points in this process or as Ray tasks: the mechanism, knowing no paper.

A technique (``layerlab.laser.distributed``, ``layerlab.painters.distributed``) hands over
its own module-level shard function, which Ray runs by reference in each task; this module
checks the executor and connects (``validate_executor``), plans the workers' runtime before
any model loads (``plan``), makes keys without a model (``key_model``), and checks that
every point came back (``check_stored``). The shard functions write each point to the
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
from pathlib import Path

import torch

from layerlab.core.io import data, results
from layerlab.core.model import models
from layerlab.core.compute import ray_tasks
from layerlab.core.compute.ray_tasks import balance, is_out_of_memory  # noqa: F401  (re-exported)

EXECUTORS = ("local", "ray")


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


def plan(executor: str, device: str, dtype: str, workers: int | None, loaded=None,
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


def key_model(runtime: dict):
    """Stands in for a model where only ``models.runtime`` reads it, so that the driver
    computes the keys of points with the techniques' own key code, loading no model."""
    p = types.SimpleNamespace(dtype=getattr(torch, runtime["dtype"]), device=torch.device(runtime["device"]))
    return types.SimpleNamespace(parameters=lambda: iter([p]), layerlab_weights=runtime["weights"],
                                 layerlab_gpu=runtime.get("gpu"))


# ---------------------------------------------------------------------------- workers

def load(model: str, device: str, dtype: str):
    """The one place a worker loads (model, tokenizer); registry models are converted once
    per machine (``models.resolve`` holds a file lock while it converts)."""
    return models.load(model, dtype=dtype, device=device)


# ---------------------------------------------------------------------------- shared by the techniques' entry points

def paths(model: str, results_dir, data_dir) -> tuple[str, str, str]:
    """Absolute paths for the workers (their working directory may differ): the model's
    source (a local folder made absolute; names and Hub ids unchanged), results dir, data dir."""
    source = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
    return source, str(Path(results_dir).resolve()), str(data.data_dir(data_dir))


def check_stored(store: results.ResultStore, technique: str, keys) -> None:
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
