"""Ray task mechanics for ``distributed``: a probe task that reports what the workers
resolve, one task per shard with out-of-memory retries at a smaller chunk, the start-up
every worker runs, and the cost balancing of shards. Nothing here knows LASER or Painters."""

from __future__ import annotations

import heapq
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from layerlab.core.model import models
from layerlab.core.io import results

MAX_RETRIES = 3
OOM_RETRIES = 3  # a shard out of memory runs again with half the chunk, this many times
# driver settings a worker needs to read the same files the same way
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM",
                 "LAYERLAB_DATA", "LAYERLAB_CACHE")


def gpu_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def _probe(device: str, dtype: str, env: dict | None = None) -> dict:
    """In a worker: the device type and dtype it resolves, its GPU's name and package versions."""
    start(env, None)
    dev = models.resolve_device(device)
    resolved = models.resolve_dtype(dtype, dev)
    return {"dtype": str(resolved).removeprefix("torch."), "device": dev.type, "gpu": gpu_name(dev),
            "host": socket.gethostname(), "versions": models.package_versions()}


def probe_workers(device: str, dtype: str, resources: dict) -> dict:
    """Run ``_probe`` once as a Ray task with the shards' resources (before any shard)."""
    import ray

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    remote = ray.remote(max_calls=1, max_retries=MAX_RETRIES)(_probe).options(name="layerlab_probe", **resources)
    try:
        return ray.get(remote.remote(device, dtype, env=env))
    except Exception as err:  # noqa: BLE001  (a worker's error, re-raised with what was asked)
        raise RuntimeError(f"the Ray probe task (device {device!r}, dtype {dtype!r}, resources {resources}) "
                           f"failed before any shard started: {err}") from err


def balance(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices 0..len(costs)-1 in at most ``n`` groups of near-equal total cost (longest
    processing time first: each item, costliest first, joins the group with the least
    total so far). Each index appears once; groups keep ascending order; none is empty."""
    heap = [(0.0, g) for g in range(max(1, n))]
    groups: list[list[int]] = [[] for _ in heap]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        load, g = heapq.heappop(heap)
        groups[g].append(i)
        heapq.heappush(heap, (load + costs[i], g))
    return [sorted(g) for g in groups if g]


def is_out_of_memory(err: BaseException) -> bool:
    """Whether a task's error is an out-of-memory error: CUDA's (``torch.OutOfMemoryError``,
    raised through Ray as a subclass) or Ray's own memory monitor killing the worker."""
    names = {c.__name__ for c in type(err).__mro__}
    text = str(err)
    return "OutOfMemoryError" in names or "CUDA out of memory" in text \
        or "OutOfMemoryError" in text


def run_shards(fn, name: str, shard_args: list[tuple], resources: dict, store: results.ResultStore,
                technique: str, keys: set[str], progress: bool) -> None:
    """One Ray task per shard; waits for all, showing stored points. A shard out of memory
    runs again with ``shrink`` + 1 (half the chunk), up to ``OOM_RETRIES`` times; other
    failures do not cancel the rest: every shard runs to its end (each stores its points
    as it goes), then one error lists the failed shards. An interrupt cancels every shard."""
    import ray
    from tqdm import tqdm

    # the driver's settings travel as an argument: a runtime_env would cost every task a new worker
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    marker = store.root / f".run-{uuid.uuid4().hex}"  # the workers check that they see this results_dir
    marker.touch()
    remote = ray.remote(max_calls=1, max_retries=MAX_RETRIES, retry_exceptions=False)(fn).options(name=name, **resources)

    def submit(i: int, shrink: int):
        return remote.remote(*shard_args[i], env=env, marker=str(marker), shrink=shrink)

    running = {submit(i, 0): (i, 0) for i in range(len(shard_args))}
    failed: list[tuple[int, int, BaseException]] = []
    bar = tqdm(total=len(keys), desc=f"{name} on Ray ({len(running)} tasks)", disable=not progress, mininterval=10)
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=10)
            for ref in done:
                i, shrink = running.pop(ref)
                try:
                    ray.get(ref)
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # noqa: BLE001  (reported below, with every other failure)
                    if is_out_of_memory(err) and shrink < OOM_RETRIES:
                        running[submit(i, shrink + 1)] = (i, shrink + 1)
                    else:
                        failed.append((i, shrink, err))
            bar.update(len(keys & store.keys(technique)) - bar.n)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
        bar.close()
        marker.unlink(missing_ok=True)
    if failed:
        stored = len(keys & store.keys(technique))
        lines = [f"shard {i + 1}/{len(shard_args)}" + (f" (chunk 1/{2 ** shrink})" if shrink else "")
                 + f": {'out of memory' if is_out_of_memory(err) else type(err).__name__}: "
                 + (str(err).strip().splitlines() or [""])[-1][:300] for i, shrink, err in failed]
        raise RuntimeError(f"{name}: {len(failed)} of {len(shard_args)} Ray tasks failed; {stored} of {len(keys)} "
                           f"points are stored in {store.root} and stay there (run again to compute only the "
                           "rest" + (", with fewer items per batch or a smaller model" if any(
                               is_out_of_memory(e) for *_, e in failed) else "") + "):\n  " + "\n  ".join(lines))


def start(env: dict | None, marker: str | None) -> None:
    """In a worker, before anything else: take the driver's settings where this node has none
    of its own (huggingface_hub reads HF_HUB_OFFLINE when first imported), and refuse to run
    on a node that does not see the driver's results_dir."""
    for k, v in (env or {}).items():
        os.environ.setdefault(k, v)
    if marker and not Path(marker).exists():
        raise RuntimeError(f"results_dir: {Path(marker).parent} is not visible on the Ray node "
                           f"{socket.gethostname()}; put it on storage that every node sees, at the same path")
