"""The layer runner: capture the residual stream entering every block, then finish the
forward pass from any block, through any sequence of blocks.

``capture`` runs the model once with a pre-hook on every block and keeps, for block j,
the hidden state entering it (``state.hidden[j]``, shape [batch, seq, d_model]) and the
other arguments the model passed it (masks, rotary position embeddings, position ids:
for Gemma3 these differ between sliding and full-attention blocks). ``state.hidden[L]``
is the output of the last block, before the final norm. Running block j later reuses
block j's own arguments, so a sweep that changes block l onwards computes the unchanged
prefix once (``run_from``), and a schedule can run blocks in any order (``run_blocks``).

Everything runs without a KV cache; for generation use a real model edit (schedule/prune).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from layerlab.core.model import arch, schedule, sublayer


@dataclass
class ResidualState:
    """What ``capture`` recorded for one batch.

    hidden: hidden[j] is the residual stream entering block j, [batch, seq, d_model];
        hidden[L] is the last block's output (before the final norm). Entries not kept
        are None.
    block_args: per block, the positional (without the hidden state) and keyword
        arguments it was called with.
    attention_mask: [batch, seq], 1 for real tokens.
    """

    hidden: list[torch.Tensor | None]
    block_args: list[tuple[tuple, dict]]
    attention_mask: torch.Tensor

    @property
    def n_layers(self) -> int:
        return len(self.block_args)

    def __getitem__(self, name: str) -> torch.Tensor:
        """A named state, TransformerLens-style: ``"resid_pre.{l}"`` is the residual stream
        entering block l (l = 0..L; ``resid_pre.L`` is the last block's output) and
        ``"resid_post.{l}"`` the output of block l (= ``resid_pre.{l+1}``), [batch, seq, d_model]."""
        kind, _, index = name.partition(".")
        if kind not in STATE_NAMES or not index.lstrip("-").isdigit():
            raise KeyError(f"state {name!r}: allowed names are resid_pre.<l> (l = 0..{self.n_layers}) "
                           f"and resid_post.<l> (l = 0..{self.n_layers - 1})")
        layer = int(index) + (kind == "resid_post")
        if not 0 <= layer <= self.n_layers or (kind == "resid_post" and layer == 0):
            raise KeyError(f"state {name!r}: layer out of range; allowed: resid_pre.0..resid_pre.{self.n_layers}, "
                           f"resid_post.0..resid_post.{self.n_layers - 1}")
        h = self.hidden[layer]
        if h is None:
            raise KeyError(f"state {name!r} was not kept by capture(keep=...)")
        return h


STATE_NAMES = ("resid_pre", "resid_post")


def _block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def check_one_device(model: nn.Module) -> torch.device:
    """The one device every parameter of ``model`` is on. A model spread over several
    devices (``device_map="auto"`` across GPUs, or offloaded to the CPU or disk) is refused
    before any work: the runner calls blocks with the arguments captured on the first
    one's device and is tested on one device only."""
    devices = {p.device for p in model.parameters()}
    if len(devices) == 1:
        (device,) = devices
        if device.type != "meta":
            return device
    spread = sorted({str(d) for d in devices} | {str(d) for d in getattr(model, "hf_device_map", {}).values()})
    raise ValueError(f"the layer runner runs a model on one device; this {type(model).__name__} has parameters on "
                     f"{', '.join(spread)} (device_map or offloading). Supported: the whole model on one device "
                     "(layerlab.load(..., device='cuda:N')); a sweep larger than one GPU runs as Ray tasks with "
                     "one GPU each (layerlab.core.compute.distributed).")


@torch.no_grad()
def capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    keep: Iterable[int] | None = None,
) -> ResidualState:
    """Run ``model`` once on a batch and record the state entering every block.

    input_ids, attention_mask: [batch, seq], right padded (moved to the model's device).
    keep: block indices whose entering hidden state to keep (default: all, and the final
        output). Arguments are kept for every block regardless (they are shared tensors).
    """
    block_list = arch.blocks(model)
    n = len(block_list)
    keep_set = set(range(n + 1)) if keep is None else set(keep)
    device = check_one_device(model)
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    hidden: list[torch.Tensor | None] = [None] * (n + 1)
    block_args: list[tuple[tuple, dict]] = [((), {})] * n
    handles = []

    def make_pre_hook(j: int):
        def hook(module, args, kwargs):
            if args:
                h, rest = args[0], tuple(args[1:])
                kw = dict(kwargs)
            else:
                kw = dict(kwargs)
                h, rest = kw.pop("hidden_states"), ()
            block_args[j] = (rest, kw)
            if j in keep_set:
                hidden[j] = h
        return hook

    def last_hook(module, args, out):
        if n in keep_set:
            hidden[n] = _block_output(out)

    try:
        for j, block in enumerate(block_list):
            handles.append(block.register_forward_pre_hook(make_pre_hook(j), with_kwargs=True))
        handles.append(block_list[n - 1].register_forward_hook(last_hook))
        base = arch.base_model(model)
        kwargs = {"attention_mask": attention_mask}
        if not arch.arch_of(model).is_encoder:
            kwargs["use_cache"] = False
        base(input_ids=input_ids, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return ResidualState(hidden=hidden, block_args=block_args, attention_mask=attention_mask)


def call_block(model: nn.Module, state: ResidualState, j: int, h: torch.Tensor,
               block: nn.Module | None = None) -> torch.Tensor:
    """Run block j (or ``block`` in its place, with block j's arguments) on ``h``."""
    rest, kw = state.block_args[j]
    module = arch.blocks(model)[j] if block is None else block
    return _block_output(module(h, *rest, **kw))


@torch.no_grad()
def run_blocks(model: nn.Module, state: ResidualState, h: torch.Tensor,
               steps: Iterable[schedule.Step]) -> torch.Tensor:
    """Run ``h`` [batch, seq, d_model] through a schedule and return the residual stream.

    steps: a schedule (``layerlab.core.model.schedule``): block indices, ``Parallel`` groups whose
    blocks read the same input, have their outputs averaged (summed in float32 by
    ``schedule.accumulate``, as scheduled models do), and are fed back
    ``iterations`` times (Layers-as-Painters parallel / looped parallel), and ``Sublayer``
    steps (only the attention or only the MLP of a block, ``core.sublayer``). Each block,
    and each block's attention, runs with the arguments captured for that block. A
    malformed schedule, or sublayer steps on an encoder, is refused before any work.
    """
    steps = list(steps)
    schedule.validate(steps, state.n_layers, model)
    spec = sublayer.family(model) if any(isinstance(s, schedule.Sublayer) for s in steps) else None
    block_list = arch.blocks(model)
    for step in steps:
        if isinstance(step, schedule.Parallel):
            for _ in range(step.iterations):
                total = None
                for j in step.blocks:  # one output alive at a time, summed in float32
                    out = call_block(model, state, j, h)
                    total = schedule.accumulate(total, out)
                h = schedule.average(total, len(step.blocks), out.dtype)
        elif isinstance(step, schedule.Sublayer):
            rest, kw = state.block_args[step.block]
            h = sublayer.run(spec, block_list[step.block], step.part, h, rest, kw)
        else:
            h = call_block(model, state, int(step), h)
    return h


@torch.no_grad()
def finish(model: nn.Module, h: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Final norm and output head on a residual stream.

    h: [batch, seq, d_model]. positions: optional [batch, k] token positions to score
    (saves the head's cost when only a few positions matter).
    Returns logits [batch, seq or k, vocab]; for a bare encoder, the normed hidden states.
    """
    if positions is not None:
        positions = positions.to(h.device)
        h = h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    norm = arch.final_norm(model)
    if norm is not None:
        h = norm(h)
    out_head = arch.head(model)
    if out_head is None:
        if not arch.arch_of(model).is_encoder:
            raise ValueError(f"finish: this {type(model).__name__} has no output head; load a decoder with "
                             "AutoModelForCausalLM (layerlab.load does) to get logits")
        return h
    logits = out_head(h)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def run_from(model: nn.Module, state: ResidualState, layer: int, h: torch.Tensor | None = None,
             positions: torch.Tensor | None = None, stop_at: int | None = None) -> torch.Tensor:
    """Run blocks ``layer`` .. ``stop_at`` - 1 on the residual stream entering ``layer``.

    layer: 0..L. h: defaults to the captured state entering ``layer`` [batch, seq, d_model].
    stop_at: None (default) finishes the pass (all blocks, final norm, head) and returns
        logits [batch, seq or k, vocab]; a block index layer..L returns the residual stream
        entering that block (``resid_pre.{stop_at}``), no norm or head.
    """
    if not 0 <= layer <= state.n_layers:
        raise ValueError(f"layer {layer} out of range; allowed: 0..{state.n_layers}")
    if stop_at is not None and not layer <= stop_at <= state.n_layers:
        raise ValueError(f"stop_at {stop_at} out of range; allowed: {layer}..{state.n_layers} (or None: to the head)")
    if h is None:
        h = state.hidden[layer]
        if h is None:
            raise ValueError(f"the state entering block {layer} was not kept by capture(keep=...)")
    h = run_blocks(model, state, h, range(layer, state.n_layers if stop_at is None else stop_at))
    return h if stop_at is not None else finish(model, h, positions)


def full_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own forward pass (no cache), for reference: logits or, for an encoder,
    the last hidden state."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    with torch.no_grad():
        if arch.arch_of(model).is_encoder:
            return arch.base_model(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits



def check_reproduces(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     atol: float | None = None) -> float:
    """Check that capture + run_from(0) reproduces the model's own forward pass on a batch
    (the runner calls each block with the arguments transformers passed it, which a new
    architecture may change). Returns the largest absolute difference over real tokens;
    raises RuntimeError when it exceeds ``atol`` (default: 1e-4 in float32, 5e-2 otherwise,
    relative to the largest logit)."""
    dtype = next(model.parameters()).dtype
    atol = (1e-4 if dtype == torch.float32 else 5e-2) if atol is None else atol
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    ours = run_from(model, capture(model, input_ids, mask), 0).float()
    theirs = full_logits(model, input_ids, mask).float()
    real = mask.to(ours.device).bool()
    diff = float((ours - theirs).abs()[real].max())
    scale = max(1.0, float(theirs.abs()[real].max()))
    if diff > atol * scale:
        raise RuntimeError(f"the layer runner does not reproduce {type(model).__name__}'s forward pass "
                           f"(max |logit difference| {diff:.3g} > {atol * scale:.3g}); this architecture's "
                           "blocks take arguments the runner does not pass on: see layerlab.core.model.arch")
    return diff
