"""Files on this machine: the cache root and SHA-256 hashes of files, cached by stat so
a file is read once until it changes. Imports nothing else from layerlab."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    """``$LAYERLAB_CACHE``, or the user cache dir (models, prepared tasks, file hashes live under it)."""
    root = os.environ.get("LAYERLAB_CACHE")
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("layerlab")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_MEMO: dict[tuple, str] = {}


def _sidecar() -> Path:
    return cache_root() / "sha256.json"


def cached_sha256(p: str | os.PathLike) -> str:
    """SHA-256 of a file, computed once per (resolved path, size, mtime, ctime, inode): kept in memory
    and in a small sidecar JSON (``$LAYERLAB_CACHE/sha256.json``), so a file that is
    rewritten (new size, times or inode) is hashed again and an unchanged one is not."""
    full = Path(p).resolve()
    st = full.stat()
    ident = (str(full), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if ident in _MEMO:
        return _MEMO[ident]
    sidecar = _sidecar()
    try:
        table = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        table = {}
    entry = table.get(str(full))
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    if entry and all(entry.get(k) == v for k, v in stamp.items()):
        digest = entry["sha256"]
    else:
        digest = sha256(full)
        table[str(full)] = {**stamp, "sha256": digest}
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        try:  # atomic; a concurrent writer may drop another's entry, which is then recomputed
            tmp.write_text(json.dumps(table, sort_keys=True))
            os.replace(tmp, sidecar)
        except OSError:
            pass
    _MEMO[ident] = digest
    return digest
