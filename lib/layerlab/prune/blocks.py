"""Deeper-layer pruning (Gromov et al. 2024): angular distances between the residual
stream at block l and at block l + n, the block l*(n) that minimises it, real edits that
drop blocks and the paper's simple heuristic. The rest of the chapter lives beside it:
``lm_loss`` (normalised loss), ``healing`` (LoRA), ``payoff`` (the pruned checkpoint's
cost), ``prune_curve`` (profiles, the cached curve) and ``prune_claims`` (verdicts).

Distances are measured on the residual stream *entering* each block, all before the
final norm: x_l = state entering block l (l < L) and x_L = the last block's output before
the final norm. (Hugging Face's ``output_hidden_states`` returns the last entry after the
final norm and the others before it; mixing the two would distort every distance to L.)
d(x_l, x_{l+n}) = arccos(cos(x_l, x_{l+n})) / pi on the last non-padding token, averaged
over samples. Dropping blocks l..l+n-1 maps x_l directly where x_{l+n} used to be.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, runner, schedule
from .healing import HealConfig, heal, mlp_module_names  # noqa: F401  (re-exported)
from layerlab.core.eval.lm_loss import normalised_loss, text_chunks  # noqa: F401  (re-exported)

TECHNIQUE = "prune"


# ---------------------------------------------------------------------------- distances

def text_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Texts tokenised together (right padded to the longest, cut at max_length tokens),
    as the (input_ids, attention_mask) batches of batch_size rows that last_token_states takes."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    padding_side="right")
    return [(enc.input_ids[i:i + batch_size], enc.attention_mask[i:i + batch_size])
            for i in range(0, len(texts), batch_size)]


@torch.no_grad()
def last_token_states(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Residual stream at every block boundary for the last real token of each sample.

    batches: (input_ids, attention_mask) pairs, right padded (``text_batches``). Returns
    [L + 1, n_samples, d_model] float32 on the CPU: entry l is the state entering block l,
    entry L the last block's output (all before the final norm). One forward pass per
    batch. A left-padded batch is refused: the model would see other positions.
    """
    out = []
    for ids, mask in batches:
        if bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError("last_token_states: the batch is left padded; tokenise with padding_side='right' "
                             "(prune.text_batches does)")
        state = runner.capture(model, ids, mask)
        last = (mask.sum(1) - 1).to(state.attention_mask.device)
        rows = torch.arange(ids.shape[0], device=last.device)
        out.append(torch.stack([h[rows, last].float().cpu() for h in state.hidden]))
    return torch.cat(out, dim=1)


def angular_distances(states: torch.Tensor) -> np.ndarray:
    """D[n, l] = mean over samples of arccos(cos(x_l, x_{l+n})) / pi, for 1 <= n <= L and
    0 <= l <= L - n; NaN elsewhere (and for n = 0). states: [L + 1, samples, d]."""
    n_bound = states.shape[0]
    unit = torch.nn.functional.normalize(states.double(), dim=-1)
    cos = torch.einsum("asd,bsd->abs", unit, unit).clamp(-1, 1)  # [L+1, L+1, samples]
    dist = (torch.arccos(cos) / math.pi).mean(-1).cpu().numpy()
    big_l = n_bound - 1
    table = np.full((big_l + 1, big_l + 1), np.nan)
    for n in range(1, big_l + 1):
        for layer in range(0, big_l - n + 1):
            table[n, layer] = dist[layer, layer + n]
    return table


def best_start(distances: np.ndarray, n: int) -> int:
    """l*(n) = argmin over l of D[n, l]."""
    row = distances[n]
    if not 1 <= n < len(row) or np.all(np.isnan(row)):
        raise ValueError(f"n: {n} out of range; allowed: 1..{len(row) - 1}")
    return int(np.nanargmin(row))


def distance_frame(distances: np.ndarray) -> pd.DataFrame:
    """Tidy (n, layer, distance, rescaled) rows; rescaled maps each n's row to [0, 1]."""
    rows = []
    for n in range(1, distances.shape[0]):
        row = distances[n]
        lo, hi = np.nanmin(row), np.nanmax(row)
        for layer, d in enumerate(row):
            if not np.isnan(d):
                rows.append({"n": n, "layer": layer, "distance": float(d),
                             "rescaled": float((d - lo) / (hi - lo)) if hi > lo else 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- edits

def similarity_blocks(distances: np.ndarray, n: int) -> list[int]:
    """The n blocks the similarity method drops: l*(n) .. l*(n) + n - 1."""
    start = best_start(distances, n)
    return list(range(start, start + n))


def deepest_blocks(n_layers: int, n: int) -> list[int]:
    """The paper's simple heuristic: the n blocks just before the final block."""
    if not 0 <= n <= n_layers - 1:
        raise ValueError(f"n: {n} out of range; allowed: 0..{n_layers - 1} (the final block is kept)")
    return list(range(n_layers - 1 - n, n_layers - 1))


def drop(model: nn.Module, blocks_to_drop: Sequence[int]) -> list[int]:
    """Drop blocks in place (a permanent edit: ``schedule.apply`` of ``schedule.drop``).
    Returns the kept original indices."""
    kept = schedule.drop(arch.n_layers(model), blocks_to_drop)
    schedule.apply(model, kept)
    return kept


@torch.no_grad()
def pruned_copy(model: nn.Module, blocks_to_drop: Sequence[int], device: str | torch.device | None = None) -> nn.Module:
    """A copy of ``model`` with the blocks dropped, on ``device`` (default: the model's own);
    the original is untouched.

    Only the kept weights are ever copied: the structure is deep-copied with every
    parameter and buffer of the kept blocks (and of the embedding, norm and head) copied
    once, straight onto ``device``. So the copy costs the pruned model's size, never a
    second whole model on the device (``copy.deepcopy`` of a 7B model on a GPU needed
    another 13.5 GB first); with ``device="cpu"`` nothing is allocated on the GPU. Tied
    weights stay tied. Layer indices, ``config.num_hidden_layers`` and (for Gemma3)
    ``config.layer_types`` follow the kept blocks, as ``drop`` sets them."""
    kept = schedule.drop(arch.n_layers(model), blocks_to_drop)
    target = torch.device(device) if device is not None else next(model.parameters()).device
    old_blocks = arch.blocks(model)
    types = arch.layer_types(model)
    arch.replace_blocks(model, nn.ModuleList([old_blocks[i] for i in kept]))
    try:
        memo: dict[int, torch.Tensor] = {}
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in memo:  # a tied tensor is copied once and stays shared
                data = t.detach().to(target, copy=True)
                memo[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                    else data
        twin = copy.deepcopy(model, memo)
    finally:
        arch.replace_blocks(model, old_blocks)
    for position, block in enumerate(arch.blocks(twin)):
        schedule._set_layer_indices(block, position)
    twin.config.num_hidden_layers = len(kept)
    if types is not None:
        twin.config.layer_types = [types[i] for i in kept]
    return twin


def dropped(model: nn.Module, blocks_to_drop: Sequence[int]):
    """Drop blocks for the duration of a ``with`` (``schedule.scheduled`` of
    ``schedule.drop``): nothing is copied, and the original block list, layer indices and
    config are restored on exit."""
    return schedule.scheduled(model, schedule.drop(arch.n_layers(model), blocks_to_drop))


# ---------------------------------------------------------------------------- summaries

def deep_end_share(best: pd.DataFrame, n_layers: int) -> float:
    """Share of block sizes n = 1..n_layers // 2 whose most similar block lies in the
    deeper half (its centre l*(n) + n/2 at or past n_layers / 2); the paper finds that it
    does for most n. best: one row per n with columns ``n`` and ``l*``. Larger n are left
    out: a block of more than half the layers always reaches the deeper half."""
    sub = best[(best["n"] >= 1) & (best["n"] <= n_layers // 2)]
    return float(((sub["l*"] + sub["n"] / 2) >= n_layers / 2).mean()) if len(sub) else float("nan")


METHODS = ("similarity", "deepest")


def blocks_for(method: str, distances: np.ndarray, n_layers: int, n: int) -> list[int]:
    """The blocks ``method`` drops at block size n ([] for n = 0)."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if n == 0:
        return []
    return similarity_blocks(distances, n) if method == "similarity" else deepest_blocks(n_layers, n)


def chance_fraction(curve: pd.DataFrame, chance: float) -> float | None:
    """The smallest fraction pruned at which accuracy is indistinguishable from chance
    (the 95% interval reaches the chance level) and stays so at every larger fraction;
    None if it never does. curve: rows with fraction, value, ci_low, ci_high."""
    c = curve.sort_values("fraction")
    at_chance = (c["ci_low"] <= chance + 1e-12).to_numpy()
    for i in range(len(c)):
        if at_chance[i:].all():
            return float(c["fraction"].iloc[i])
    return None
