"""Next-token loss on held-out text, normalised by log(vocabulary size) (Gromov et al.'s
Fig. 3 measure; 1.0 = a uniform guess). Imports nothing else from layerlab, so
``evaluation`` and ``prune`` both use it without importing each other."""

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
    return torch.tensor(ids[: n * length]).view(n, length)


@torch.no_grad()
def normalised_loss(model: nn.Module, chunks: torch.Tensor, batch_size: int = 8) -> tuple[float, float]:
    """Mean next-token loss (nats per token) over chunks [n, T] divided by log(vocab size)
    (the paper's Fig. 3 normalisation; 1.0 = a uniform guess), and its standard error
    over chunks."""
    per_chunk = []
    device = next(model.parameters()).device
    for i in range(0, len(chunks), batch_size):
        ids = chunks[i:i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        per_chunk.append(loss.view(ids.shape[0], -1).mean(1).cpu())
    per = torch.cat(per_chunk).double().cpu().numpy() / math.log(model.config.vocab_size)
    se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")
    return float(per.mean()), se
