"""The library's shared evaluation engines, counted: ``prefix_points``
(``prefix_stream.scores`` of LASER-style jobs, SVDs replayed), ``evaluate_edits``
(``prefix_eval.evaluate_edits``) and ``generate`` (greedy decoding with a KV cache)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from .assumptions import GSM8K_NEW_TOKENS
from .counts import EditCost, Rows, SVDLedger, Work, run_pass
from .inputs import Context, lm_eval_rows
from .shapes import Shape

LASER_BATCH_TOKENS = 4096  # laser.Sweeper's max_tokens_per_batch (padding included)
LM_EVAL_BATCH = 16  # batch_size of the lm-eval calls (prefix_eval / curve / painters)
LOSS_BATCH = 8  # lm_loss.chunk_losses's default batch


class _Batch:
    """What ``prefix_stream.plan`` reads of a batch: its token count."""

    class _Ids:
        def __init__(self, n: int):
            self.n = n

        def numel(self) -> int:
            return self.n

    def __init__(self, tokens: int):
        self.input_ids = self._Ids(tokens)


def prefix_points(w: Work, part: str, rows: Rows, jobs: Sequence[Sequence], shape: Shape, ctx: Context,
                  svd: SVDLedger | None = None) -> None:
    """``prefix_stream.scores`` of LASER-style jobs (lists of ``rank.Reduction``, [] the
    unmodified model) on ``rows``, within the device's state budget: one capture pass of
    the whole model per window of start layers (``prefix_stream.plan``, the library's own
    cut), then each job's blocks from its lowest reduced layer and the head; the SVDs each
    chunk asks for replayed on ``svd``."""
    from layerlab.core.eval import prefix_stream

    if not jobs:
        return
    n = shape.layers
    starts = [min((r.layer for r in reds), default=n) for reds in jobs]
    total = rows.n * rows.tokens
    per_batch = max(LASER_BATCH_TOKENS, int(rows.tokens))
    batches = [_Batch(per_batch)] * max(1, math.ceil(total / per_batch))
    windows, chunks = prefix_stream.plan(batches, starts, shape.hidden * ctx.dtype_bytes,
                                         prefix_stream.DEFAULT_BYTES[ctx.device_type])
    batch_rows = per_batch / rows.tokens
    for window in windows:
        mine = [i for i, s in enumerate(starts) if s in window]
        run_pass(w, part, rows, n, 0.0, batch_rows)  # runner.capture runs every block
        for c in range(len(chunks)):
            for i in prefix_stream.chunk_order(mine, c):
                for r in jobs[i] if svd is not None else ():
                    svd.request(r.matrix_type, r.layer)
        for i in mine:
            run_pass(w, part, rows, n - starts[i], rows.head, batch_rows)


def evaluate_edits(w: Work, part: str, model: str, shape: Shape, tasks: Sequence[str], edits: Sequence[EditCost],
                   limit, ctx: Context, loss: Rows | None = None, batch_size: int = LM_EVAL_BATCH,
                   layers: int | None = None) -> None:
    """``prefix_eval.evaluate_edits``: lm-eval's inputs captured once through the (``layers``-
    block) model, whose head also answers for the unmodified model, then each other edit's
    suffix and head; GSM8K generated on every edit; the held-out chunks (``loss``) in batches
    of 8: a capture, then every edit's suffix and a head at every position."""
    n = shape.layers if layers is None else layers
    others = [e for e in edits if not e.unmodified]
    for task in tasks:
        rows = lm_eval_rows(ctx, model, task, limit)
        if task == "gsm8k":
            for e in edits:
                generate(w, part, rows, e.total, GSM8K_NEW_TOKENS, batch_size, e.total_attn)
            continue
        run_pass(w, part, rows, n, rows.head, batch_size)
        for e in others:
            run_pass(w, part, rows, e.suffix, rows.head, batch_size, e.suffix_attn)
    if loss is not None and edits:
        run_pass(w, part, loss, n, 0.0, LOSS_BATCH)
        for e in edits:
            run_pass(w, part, loss, e.suffix, loss.tokens, LOSS_BATCH, e.suffix_attn)


def generate(w: Work, part: str, prompts: Rows, blocks: float, new_tokens: int, batch_size: int,
             attn_blocks: float | None = None) -> None:
    """Greedy generation with a KV cache: the prompts' prefill, then ``new_tokens`` decode
    steps of one token per row (attending to the prompt and what came before); one head
    position per step."""
    attn_blocks = blocks if attn_blocks is None else attn_blocks
    run_pass(w, part, replace(prompts, head=1.0), blocks, 1.0, batch_size, attn_blocks)
    decoded = prompts.n * new_tokens
    w.block_tokens += decoded * blocks
    w.attn_pairs += prompts.n * attn_blocks * (new_tokens * prompts.tokens + new_tokens * (new_tokens + 1) / 2)
    w.head_tokens += decoded
    w.block_calls += math.ceil(prompts.n / batch_size) * new_tokens * blocks
    w.parts[part] += decoded * blocks
