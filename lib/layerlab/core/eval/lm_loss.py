"""Next-token loss on held-out text, normalised by log(vocabulary size) (Gromov et al.'s
Fig. 3 measure; 1.0 = a uniform guess). Imports the runner and edits only inside
``chunk_losses``, so ``evaluation`` and ``prune`` both use it without import cycles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def text_chunks(tokenizer, texts: Sequence[str], length: int, max_chunks: int | None = None) -> torch.Tensor:
    """Concatenate texts (joined by the EOS token) and cut into [n_chunks, length] ids."""
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if max_chunks and len(ids) >= (max_chunks + 1) * length:
            break
    n = len(ids) // length
    if max_chunks:
        n = min(n, max_chunks)
    if n == 0:
        raise ValueError(f"not enough text for one chunk of {length} tokens")
    return torch.tensor(ids[: n * length], device="cpu").view(n, length)


@torch.no_grad()
def chunk_losses(model: nn.Module, chunks: torch.Tensor, edits: Sequence | None = None,
                 batch_size: int = 8) -> np.ndarray:
    """Per chunk, the mean next-token loss (nats per token) divided by log(vocab size):
    [n_edits, n_chunks] float64 (1.0 = a uniform guess).

    chunks: [n, T] token ids. edits: ``edits.Edit``s of ``model`` scored together, each
    batch's unchanged prefix computed once (``runner.capture``) and each edit running only
    its own blocks; None scores ``model`` itself with its own forward pass ([1, n_chunks]).
    Memory: one batch's states, whatever n."""
    from layerlab.core.model import edits as edits_mod
    from layerlab.core.model import runner

    device = next(model.parameters()).device
    log_v = math.log(model.config.vocab_size)
    rows = [[] for _ in range(1 if edits is None else len(edits))]

    def per_chunk(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        return loss.view(ids.shape[0], -1).mean(1).double().cpu()

    for i in range(0, len(chunks), batch_size):
        ids = chunks[i:i + batch_size].to(device)
        if edits is None:
            rows[0].append(per_chunk(model(input_ids=ids, use_cache=False).logits, ids))
            continue
        state = runner.capture(model, ids, keep=edits_mod.starts(edits))
        for row, edit in zip(rows, edits):
            with edits_mod.weights_applied(model, edit):
                rows_logits = runner.finish(model, edits_mod.run(model, state, edit))
            row.append(per_chunk(rows_logits, ids))
    return np.stack([torch.cat(r).cpu().numpy() for r in rows]) / log_v


def normalised_loss(model: nn.Module, chunks: torch.Tensor, batch_size: int = 8) -> tuple[float, float]:
    """Mean next-token loss (nats per token) over chunks [n, T] divided by log(vocab size)
    (the paper's Fig. 3 normalisation; 1.0 = a uniform guess), and its standard error
    over chunks."""
    per = chunk_losses(model, chunks, batch_size=batch_size)[0]
    return mean_and_se(per)


def mean_and_se(per_chunk: np.ndarray) -> tuple[float, float]:
    """The mean of per-chunk values and its standard error over chunks (nan for one chunk)."""
    se = float(per_chunk.std(ddof=1) / np.sqrt(len(per_chunk))) if len(per_chunk) > 1 else float("nan")
    return float(per_chunk.mean()), se
