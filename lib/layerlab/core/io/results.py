"""A resumable results store: tidy parquet, one row per measured point.

Each point is keyed by everything that changes its number (``point_key``): model name,
technique, intervention, dataset, split, the runtime (``models.runtime``: weights
fingerprint, dtype, device type, torch / transformers / lm-eval versions), the code
version, and whatever the caller adds to the intervention or dataset: the data files'
fingerprint (``data_fetch.files_fingerprint`` or ``evaluation.tasks_fingerprint``) and the item
sample (``items_hash``). It is stored as its own small parquet shard, written to a temporary file and renamed into
place, so a killed run leaves either the whole point or nothing. ``ResultStore.table``
reads every shard into one tidy table with at least the columns of ``REQUIRED``.

A shard that cannot be read (truncated by a full disk, a partial copy onto a cluster's
shared storage) is moved aside to ``<key>.parquet.unreadable-<id>`` beside it with an
``UnreadableShardWarning`` that names it, and its point counts as missing: ``has`` says
False, ``keys`` leaves it out, ``table`` skips it, so the point is computed again.

A computation that fills several points in one long run (a prefix-shared lm-eval pass over
many edits) keeps its partial work in ``ResultStore.journal``, a folder named by exactly the
keys it computes: a killed run leaves it, a rerun of the same keys resumes from it, and it is
removed once those points are stored.

Bump ``CODE_VERSION`` when a change alters measured numbers: old points stop matching
and are recomputed, and both stay distinguishable in the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CODE_VERSION = "4"  # 2: keys carry dtype and device type; 3: weights fingerprint and package versions;
# 4: continuations split as lm-eval splits them, parallel groups summed in float32, lm-eval prefix-shared
JOURNALS = "_partial"  # ResultStore.journal's folders; holds no points
REQUIRED = ("model", "technique", "dataset", "split", "metric", "value", "n_items")


def point_key(model: str, technique: str, intervention: dict, dataset: str, split: str,
              runtime: dict | None = None, code_version: str = CODE_VERSION) -> str:
    """A stable hex key for one measured point. ``intervention``: JSON-able parameters
    (put the data's fingerprint and ``items_hash`` of the sample in it, or in ``dataset``);
    ``runtime``: what else the number depends on (``models.runtime(model)``: weights
    fingerprint, dtype, device type, package versions), so that a bf16 point is never
    reused for fp32, nor a point of overwritten weights for the new ones."""
    payload = json.dumps([model, technique, intervention, dataset, split, runtime or {}, code_version],
                         sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def runtime_columns(runtime: dict) -> dict:
    """The columns stored beside a point's rows so readers can tell protocols apart:
    ``runtime`` ("bfloat16/cpu") and ``runtime_id``, a short hash of the whole runtime dict
    (weights fingerprint and package versions included)."""
    rid = hashlib.sha256(json.dumps(runtime, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return {"runtime": f"{runtime['dtype']}/{runtime['device']}", "runtime_id": rid}


def items_hash(item_ids: Iterable[str]) -> str:
    """A short hex hash of an item sample for a results key. Order-insensitive: the
    multiset of ids defines the sample (every metric is a mean or sum over items, so the
    order they run in does not change the number beyond float round-off); a repeated id
    counts twice. Ids are compared as strings."""
    ids = sorted(str(i) for i in item_ids)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


class UnreadableShardWarning(UserWarning):
    """A results shard could not be read and was moved aside; its point will be recomputed."""


class ResultStore:
    """Points under ``root/<technique>/<key>.parquet``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._checked: dict[Path, tuple[int, int]] = {}  # shards whose footer was read: (size, mtime)

    def _shard(self, technique: str, key: str) -> Path:
        return self.root / technique / f"{key}.parquet"

    def _quarantine(self, path: Path, err: Exception) -> None:
        """Move an unreadable shard aside (never deleted: it may be inspected) and warn."""
        self._checked.pop(path, None)
        dest = path.with_name(f"{path.name}.unreadable-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, dest)
        except FileNotFoundError:  # another process moved or replaced it first
            return
        warnings.warn(f"results: the shard {path} cannot be read ({type(err).__name__}: {err}); moved aside to "
                      f"{dest.name}: its point counts as missing and will be computed again",
                      UnreadableShardWarning, stacklevel=3)

    def _readable(self, path: Path) -> bool:
        """Whether ``path`` exists and its parquet footer reads (a truncated file has none).
        Checked once per (size, mtime); an unreadable shard is moved aside."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_size, st.st_mtime_ns)
        if self._checked.get(path) == stamp:
            return True
        try:
            pq.read_metadata(path)
        except FileNotFoundError:
            return False
        except (OSError, pa.ArrowException) as err:
            self._quarantine(path, err)
            return False
        self._checked[path] = stamp
        return True

    def _read(self, path: Path) -> pd.DataFrame | None:
        try:
            return pq.read_table(path).to_pandas()
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException) as err:
            self._quarantine(path, err)
            return None

    def has(self, technique: str, key: str) -> bool:
        """Whether the point is stored and readable (an unreadable shard is moved aside)."""
        return self._readable(self._shard(technique, key))

    def put(self, technique: str, key: str, rows: list[dict] | pd.DataFrame) -> None:
        """Store the rows of one point atomically. Each row needs the REQUIRED columns."""
        frame = pd.DataFrame(rows)
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise ValueError(f"result rows lack required columns {missing}; required: {', '.join(REQUIRED)}")
        frame["key"] = key
        frame["code_version"] = CODE_VERSION
        target = self._shard(technique, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
        os.replace(tmp, target)

    def get(self, technique: str, key: str) -> pd.DataFrame:
        """The stored rows of a point. KeyError when it is not stored or its shard cannot be
        read (the shard is then moved aside, so ``has`` says False and ``point`` recomputes)."""
        frame = self._read(self._shard(technique, key))
        if frame is None:
            raise KeyError(f"results: no readable point {key} of {technique!r} in {self.root}")
        return frame

    def point(self, technique: str, key: str, compute: Callable[[], list[dict]]) -> pd.DataFrame:
        """The stored rows of a point, computing and storing them first if absent (or unreadable)."""
        if not self.has(technique, key):
            self.put(technique, key, compute())
        return self.get(technique, key)

    @contextmanager
    def journal(self, technique: str, keys: Iterable[str]) -> Iterator[Path]:
        """A folder for the partial work of computing the points ``keys`` (in this order)
        of ``technique``, e.g. ``prefix_eval``'s answers per chunk. Store the points inside
        the ``with``: the folder is removed when it exits normally and kept when the work is
        interrupted, so the next run of exactly these keys finds it."""
        ordered = list(keys)
        digest = hashlib.sha256(json.dumps([CODE_VERSION, technique, ordered]).encode()).hexdigest()[:24]
        path = self.root / JOURNALS / technique / digest
        path.mkdir(parents=True, exist_ok=True)
        yield path
        shutil.rmtree(path, ignore_errors=True)

    def table(self, technique: str | None = None) -> pd.DataFrame:
        """Every stored row (of one technique, or all), as one tidy DataFrame."""
        folders = ([self.root / technique] if technique else
                   sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != JOURNALS))
        frames = [frame for d in folders if d.exists() for f in sorted(d.glob("*.parquet"))
                  if (frame := self._read(f)) is not None]
        if not frames:
            return pd.DataFrame(columns=[*REQUIRED, "key", "code_version"])
        return pd.concat(frames, ignore_index=True)

    def keys(self, technique: str) -> set[str]:
        folder = self.root / technique
        return {p.stem for p in folder.glob("*.parquet") if self._readable(p)} if folder.exists() else set()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.parquet"))


def journaled(journal: Path, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, kept as ``name``.npy in ``journal`` (a ``ResultStore.journal`` folder);
    an array a killed run left there under ``name`` is read instead. ``name`` must say
    everything the array depends on that the journal's keys do not (a batch's rows, its size)."""
    path = journal / f"{name}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # absent, or unreadable (the write is atomic, the disk may not be)
        pass
    value = np.asarray(compute())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, value, allow_pickle=False)
    os.replace(tmp, path)
    return value


def missing(store: ResultStore, technique: str, keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` that are not stored yet, in order."""
    have = store.keys(technique)
    return [k for k in keys if k not in have]


def record_timing(results_dir: str | os.PathLike, chapter: str, model: str, profile: str, seconds: float,
                  **extra) -> None:
    """Append one run's wall time to ``results_dir/timings.jsonl`` (for the book's
    reproducibility appendix)."""
    import platform
    import time

    import torch

    row = {"chapter": chapter, "model": model, "profile": profile, "seconds": round(seconds, 1),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": torch.get_num_threads(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(), **extra}
    path = Path(results_dir) / "timings.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def timings(results_dir: str | os.PathLike) -> pd.DataFrame:
    path = Path(results_dir) / "timings.jsonl"
    if not path.exists():
        return pd.DataFrame(columns=["chapter", "model", "profile", "seconds"])
    return pd.read_json(path, lines=True)
