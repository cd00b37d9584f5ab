"""Scoring many edits of one model on the same rows with memory bounded by a byte budget,
not by the data: the LASER sweep's engine.

The unedited model's residual stream entering each edit's start block is what the edits
share. ``scores`` captures it for a window of start layers over a chunk of rows, scores
every edit of the window on that chunk (each edit reruns only its own blocks, under a
context manager that holds it), drops the chunk and moves on. Peak memory is the weights,
one batch's activations, the head's slice of rows (``HEAD_BYTES``) and ``max_bytes`` of
states (``budget``: 64 MiB on a CPU, 2 GiB on a GPU by default), whatever the number of
items: more items mean more chunks (more capture passes), never more memory. With few
items everything is one pass, one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from layerlab.core.model import runner
from layerlab.core.eval import scoring

# what ``scores`` keeps by default, per device type: small beside the weights on a CPU (so that
# the peak does not depend on the number of items), a few GiB beside a 7B model on a GPU
DEFAULT_BYTES = {"cpu": 64 * 2**20, "cuda": 2 * 2**30, "mps": 512 * 2**20}
MIN_WINDOW = 4  # boundaries captured per pass when the data must be cut into chunks


# float32 logits scored at once (the head runs on slices of rows); scoring holds about 2.5x
# this in temporaries (the logits in the model's dtype, in float32 and their log-softmax).
# At 64 MiB a slice of ~110 CounterFact rows made the sweep's peak grow by 174 MB from 64
# to 1024 items until the slices were full; at 16 MiB, 45 MB (bench/RESULTS.md, laser_memory)
HEAD_BYTES = 16 * 2**20


def _scored(model: nn.Module, b: scoring.Batch, h: torch.Tensor) -> dict:
    """Scores of batch ``b`` from its last residual stream h [B, T, d_model], the head run
    on slices of rows so that the logits [rows, K, vocab] held at once stay within
    ``HEAD_BYTES`` whatever the batch (a full batch of short rows has hundreds of rows)."""
    rows = max(1, HEAD_BYTES // (4 * b.target_pos.shape[1] * model.config.vocab_size))
    parts = []
    for lo in range(0, h.shape[0], rows):
        sl = slice(lo, lo + rows)
        sub = scoring.Batch(b.input_ids[sl], b.attention_mask[sl], b.target_pos[sl], b.target_ids[sl],
                            b.target_mask[sl], b.rows[sl])
        parts.append(scoring.score_logits(sub, runner.finish(model, h[sl], positions=sub.target_pos)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def budget(model: nn.Module, max_bytes: int | str | None) -> int | None:
    """``max_bytes`` resolved: "auto" is ``DEFAULT_BYTES`` of the model's device type."""
    if max_bytes == "auto":
        return DEFAULT_BYTES.get(next(model.parameters()).device.type, DEFAULT_BYTES["cuda"])
    if max_bytes is not None and (isinstance(max_bytes, str) or max_bytes < 0):
        raise ValueError(f"max_bytes: {max_bytes!r} must be 'auto', a number of bytes >= 0 or None (no limit)")
    return max_bytes


def plan(batches: list[scoring.Batch], starts: Sequence[int], bytes_per_token: int,
         max_bytes: int | None) -> tuple[list[list[int]], list[list[scoring.Batch]]]:
    """How ``scores`` covers ``starts`` (block boundaries, any order) within ``max_bytes``:
    windows of boundaries captured together (deepest first), and chunks of batches each
    captured on its own. Everything in one pass when it fits; else windows of k boundaries
    over all the data while k >= MIN_WINDOW (a capture pass per window); else windows of
    MIN_WINDOW boundaries over chunks of data sized to fit (a chunk is at least one batch)."""
    starts = sorted(set(starts), reverse=True)
    tokens = sum(b.input_ids.numel() for b in batches)
    one = tokens * bytes_per_token
    if max_bytes is None or one * len(starts) <= max_bytes:
        return [starts], [list(batches)]
    k = int(max_bytes // max(1, one))
    if k >= min(MIN_WINDOW, len(starts)):
        return [starts[i:i + k] for i in range(0, len(starts), k)], [list(batches)]
    k = min(MIN_WINDOW, len(starts))
    room = max(1, int(max_bytes // (k * bytes_per_token)))  # tokens per chunk
    chunks, current, used = [], [], 0
    for b in batches:
        if current and used + b.input_ids.numel() > room:
            chunks.append(current)
            current, used = [], 0
        current.append(b)
        used += b.input_ids.numel()
    chunks.append(current)
    return [starts[i:i + k] for i in range(0, len(starts), k)], chunks


def chunk_order(window_jobs: Sequence[int], chunk: int) -> list[int]:
    """The order in which ``scores`` runs the jobs of one window on chunk number ``chunk``:
    as given on even chunks, reversed on odd ones. An LRU cache of what the jobs need (the
    SVD cache) still holds the last jobs' entries when a chunk ends, and the next chunk asks
    for those first; in the same order every chunk, a window whose entries exceed the cache
    evicts each one before it is asked for again (every SVD recomputed once per chunk)."""
    return list(window_jobs) if chunk % 2 == 0 else list(reversed(window_jobs))


@torch.no_grad()
def scores(model: nn.Module, batches: list[scoring.Batch], n_rows: int, jobs: Sequence[tuple[int, Callable]],
           max_bytes: int | str | None = "auto"):
    """Score many edits of one model on the same rows, with residual states bounded by
    ``max_bytes`` whatever the number of rows. Yields (job index, scoring.RowScores) as each job
    completes: windows deepest start first, a window's jobs in ``chunk_order`` of its last chunk.

    jobs: (start layer, apply) per edit: ``apply()`` returns a context manager that holds
    the edit (e.g. ``rank.reduced``); blocks start.. are run as they are inside it, on the
    state entering ``start`` captured from the unedited model. The states of a window of
    start layers for one chunk of batches are captured in one pass (``plan``), every
    job of the window is scored on that chunk, and the chunk is dropped before the next.
    A job's scores are complete after the last chunk of its window; with the data in one
    chunk each job is yielded as soon as it is scored."""
    device = next(model.parameters()).device
    bytes_per_token = model.config.hidden_size * next(model.parameters()).element_size()
    windows, chunks = plan(batches, [s for s, _ in jobs], bytes_per_token, budget(model, max_bytes))
    for window in windows:
        mine = [i for i, (s, _) in enumerate(jobs) if s in window]
        parts: dict[int, list] = {i: [] for i in mine}
        for c, chunk in enumerate(chunks):
            on_device = [b.to(device) for b in chunk]
            states = [runner.capture(model, b.input_ids, b.attention_mask, keep=window) for b in on_device]
            for i in chunk_order(mine, c):
                start, apply = jobs[i]
                with apply():
                    parts[i] += [_scored(model, b, runner.run_from(model, st, start, stop_at=st.n_layers))
                                 for b, st in zip(on_device, states)]
                if c == len(chunks) - 1:
                    yield i, scoring.collect([b for ch in chunks for b in ch], parts.pop(i), n_rows)
            del states, on_device
