"""The three methods as the papers state them, on the model's own forward pass.

No caching, batching tricks or shared prefixes: each function edits a copy of the model (or
one weight, restored afterwards) and calls ``model(...)``. They are slow and plain on
purpose: read them to learn a method, and the tests use them as oracles for the fast paths
(``rank.SVDCache`` + ``scoring.PrefixScorer`` sweeps, ``prune.last_token_states``,
``runner.run_blocks`` and ``schedule.scheduled``).

All take ``input_ids`` / ``attention_mask`` [batch, seq] (right padded) and return logits
[batch, seq, vocab] as float32 on the CPU, unless stated.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from layerlab.core.model import arch


def _logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    return out.logits.float().cpu()


# ---------------------------------------------------------------------------- LASER
# Sharma et al. (2023), Sec. 3: replace the weight W of matrix type tau in layer l by its
# best rank-k approximation, k = floor(rho * max_rank); everything else is unchanged.

def laser_logits(model: nn.Module, matrix_type: str, layer: int, rho: float,
                 input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` with one weight replaced by its top-k SVD part (SVD in float64)."""
    ref = arch.weight(model, matrix_type, layer)
    w = ref.read().clone()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    k = max(1, math.floor(rho * min(w.shape) + 1e-9))
    ref.write(((u[:, :k] * s[:k]) @ vh[:k]).to(w.dtype))
    try:
        return _logits(model, input_ids, attention_mask)
    finally:
        ref.write(w)


# ---------------------------------------------------------------------------- Gromov et al.
# Gromov et al. (2024), Sec. 3: d(x_l, x_{l+n}) = arccos(cos(x_l, x_{l+n})) / pi on the last
# token, averaged over samples; drop the n blocks starting at l*(n) = argmin_l d.

def gromov_distances(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """D[n, l] (n = 1..L, l = 0..L-n; NaN elsewhere), from the model's own hidden states.

    x_l for l < L is Hugging Face's ``hidden_states[l]`` (the input of block l); x_L is the
    last block's output before the final norm (Hugging Face's last entry is after it)."""
    device = next(model.parameters()).device
    last_block_out = []
    hook = arch.blocks(model)[-1].register_forward_hook(
        lambda module, args, out: last_block_out.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                        output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    states = list(out.hidden_states[:-1]) + last_block_out  # L + 1 tensors [batch, seq, d]
    last = attention_mask.sum(1) - 1
    big_l = len(states) - 1
    table = np.full((big_l + 1, big_l + 1), np.nan)
    for n in range(1, big_l + 1):
        for layer in range(big_l - n + 1):
            a = torch.stack([states[layer][i, last[i]] for i in range(len(last))]).double().cpu()
            b = torch.stack([states[layer + n][i, last[i]] for i in range(len(last))]).double().cpu()
            cos = (torch.nn.functional.cosine_similarity(a, b, dim=-1)).clamp(-1, 1)
            table[n, layer] = float((torch.arccos(cos) / math.pi).mean())
    return table


def gromov_pruned_logits(model: nn.Module, distances: np.ndarray, n: int,
                         input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Drop the n blocks from l*(n) on (a copy of the model) and return (dropped, logits)."""
    start = int(np.nanargmin(distances[n]))
    dropped = list(range(start, start + n))
    keep = [i for i in range(arch.n_layers(model)) if i not in dropped]
    return dropped, _logits(_with_blocks(model, keep), input_ids, attention_mask)


def _with_blocks(model: nn.Module, order: list) -> nn.Module:
    """A copy of ``model`` whose block list is ``order`` (block indices, or modules). The
    copy shares the parameters (only the modules are copied): a 7B model's reference costs
    no second set of weights."""
    twin = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    old = arch.blocks(twin)
    types = arch.layer_types(twin)
    arch.replace_blocks(twin, nn.ModuleList([old[i] if isinstance(i, int) else i for i in order]))
    twin.config.num_hidden_layers = len(order)
    if types is not None:  # Gemma3 picks each position's mask by config.layer_types
        twin.config.layer_types = [types[i if isinstance(i, int) else i.members[0]] for i in order]
    return twin


# ---------------------------------------------------------------------------- Painters
# Sun et al. (2024), Sec. 3: run the middle blocks differently (skip, repeat, reverse,
# random order: a list of block indices); parallel: the blocks of a group read the same
# input and their outputs are averaged, looped k times.

class _Averaged(nn.Module):
    """A parallel group at one position of the block list: every member reads the same
    input; the average of their outputs is fed back ``iterations`` times."""

    def __init__(self, blocks: list[nn.Module], members: list[int], iterations: int):
        super().__init__()
        self.blocks, self.members, self.iterations = nn.ModuleList(blocks), members, iterations

    def forward(self, hidden_states, *args, **kwargs):
        for _ in range(self.iterations):
            outs = [b(hidden_states, *args, **kwargs) for b in self.blocks]
            first = outs[0]
            hidden_states = torch.stack([o[0] if isinstance(o, tuple) else o for o in outs]).mean(0)
        return (hidden_states, *first[1:]) if isinstance(first, tuple) else hidden_states


def painters_logits(model: nn.Module, steps: list, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` running its blocks by ``steps`` (a ``schedule``): block indices,
    and ``Parallel`` groups (of blocks of one attention type)."""
    blocks = arch.blocks(model)
    order = [int(s) if not hasattr(s, "blocks") else
             _Averaged([blocks[j] for j in s.blocks], list(s.blocks), s.iterations) for s in steps]
    return _logits(_with_blocks(model, order), input_ids, attention_mask)


# ---------------------------------------------------------------------------- sublayers
# He et al. (2024, LLM-Drop) and FinerCut: drop a block's attention or its MLP. Written out
# per family from the block's own modules (no table shared with core.sublayer, no captured
# arguments, no cache): the arguments are the ones the model passes the position.

_SEQUENTIAL = ("llama", "mistral", "qwen2", "qwen3")


class _SublayerRef(nn.Module):
    """One ``schedule.Sublayer`` step at one position of the block list."""

    def __init__(self, block: nn.Module, member: int, part: str, family: str):
        super().__init__()
        self.block, self.members, self.part, self.family = block, [member], part, family

    def forward(self, hidden_states, *args, **kwargs):
        b, h, f = self.block, hidden_states, self.family
        if f in _SEQUENTIAL + ("gemma3_text",) and self.part == "attn":
            a = b.self_attn(hidden_states=b.input_layernorm(h), **kwargs)[0]
            return h + (b.post_attention_layernorm(a) if f == "gemma3_text" else a)
        if f in _SEQUENTIAL and self.part == "mlp":
            return h + b.mlp(b.post_attention_layernorm(h))
        if f == "gemma3_text" and self.part == "mlp":
            return h + b.post_feedforward_layernorm(b.mlp(b.pre_feedforward_layernorm(h)))
        if f == "gpt2" and self.part == "attn":  # the model passes (past, mask, encoder states) positionally
            past, mask = args[0], args[1]
            kwargs.pop("encoder_attention_mask", None)
            return h + b.attn(b.ln_1(h), past_key_values=past, attention_mask=mask, **kwargs)[0]
        if f == "gpt2" and self.part == "mlp":
            return h + b.mlp(b.ln_2(h))
        if f == "gptj":  # parallel: both read ln_1 of the block input; the model reads out[0]
            return (h + (b.attn(hidden_states=b.ln_1(h), **kwargs)[0] if self.part == "attn" else b.mlp(b.ln_1(h))),
                    None)
        if f == "gpt_neox":  # parallel or not, each sublayer reads its own norm of h
            if self.part == "attn":
                return h + b.post_attention_dropout(b.attention(b.input_layernorm(h), **kwargs)[0])
            return h + b.post_mlp_dropout(b.mlp(b.post_attention_layernorm(h)))
        if f == "phi":  # parallel: both read input_layernorm of the block input
            x = b.input_layernorm(h)
            return h + b.resid_dropout(b.self_attn(hidden_states=x, **kwargs)[0] if self.part == "attn" else b.mlp(x))
        raise ValueError(f"reference.run_sublayers: no reference for {f}")


def sublayer_logits(model: nn.Module, steps: list, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` running ``steps``: block indices and ``schedule.Sublayer`` steps
    (a copy of the model whose block list holds, per step, the block or a module computing
    the one sublayer; Llama/Mistral/Qwen2, Gemma3, GPT-2, GPT-J, GPT-NeoX and Phi families)."""
    blocks = arch.blocks(model)
    family = arch.arch_of(model).name
    order = [int(s) if not hasattr(s, "part") else _SublayerRef(blocks[s.block], s.block, s.part, family)
             for s in steps]
    return _logits(_with_blocks(model, order), input_ids, attention_mask)


def run_sublayers(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  steps: list) -> torch.Tensor:
    """The residual stream after ``steps`` (block indices and ``schedule.Sublayer`` steps),
    before the final norm, [batch, seq, d_model] float32 on the CPU: a plain loop over the
    block list of a copy of the model, recording the last position's output."""
    blocks = arch.blocks(model)
    family = arch.arch_of(model).name
    order = [int(s) if not hasattr(s, "part") else _SublayerRef(blocks[s.block], s.block, s.part, family)
             for s in steps]
    twin = _with_blocks(model, order)
    out = []
    hook = arch.blocks(twin)[-1].register_forward_hook(
        lambda module, args, o: out.append(o[0] if isinstance(o, tuple) else o))
    try:
        _logits(twin, input_ids, attention_mask)
    finally:
        hook.remove()
    return out[0].float().cpu()
