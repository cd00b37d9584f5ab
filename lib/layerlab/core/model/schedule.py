"""Layer schedules (Sun et al. 2024, "Transformer Layers as Painters").

A schedule is an explicit sequence of steps over a model's blocks: a block index, a
``Parallel`` group of blocks with an iteration count (every block of the group reads the
same input, their outputs are averaged, and the average is fed back ``iterations``
times, as in the authors' implementation), or a ``Sublayer``: only the attention or only
the MLP of one block (``core.sublayer``; dropping a sublayer is running the other one).

Constructors build the paper's variants from L blocks and N outer blocks kept at each
end; the middle blocks N..L-N-1 are the ones affected. A schedule runs

* through the layer runner (``runner.run_blocks``): weights shared, the prefix before
  block N computed once for every variant with the same N;
* as a model users can call ``generate`` on (``scheduled``, for the duration of a
  ``with``): each executed position is a wrapper with its own KV-cache slot and, for
  Gemma3, the attention type of its block;
* as a permanent, exportable edit (``apply``): the block list becomes the scheduled
  blocks, so ``save_pretrained`` writes an ordinary checkpoint (a ``Sublayer`` step: its
  block with the other sublayer's output projection zeroed).

Dropping blocks (Gromov et al.) is the schedule ``drop(L, blocks)``: the other blocks, once,
in order. This is the library's one mechanism for running blocks in another order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from layerlab.core.model import arch, sublayer as sublayer_mod

VARIANTS = ("skip", "middle_repeat", "reverse", "random", "parallel", "looped_parallel")  # the paper's
# below the block (LLM-Drop, FinerCut): the middle blocks run only their attention or only their MLP
SUBLAYER_VARIANTS = ("attn_only", "mlp_only")


@dataclass(frozen=True)
class Parallel:
    """Blocks that read the same input; outputs averaged, repeated ``iterations`` times."""

    blocks: tuple[int, ...]
    iterations: int = 1


@dataclass(frozen=True)
class Sublayer:
    """Only the attention ("attn") or only the MLP ("mlp") sublayer of block ``block``:
    h + attn(norm(h)) or h + mlp(norm(h)), per family as ``core.sublayer`` defines it
    (post norms included). [Sublayer(i, "attn"), Sublayer(i, "mlp")] is block i for the
    sequential families."""

    block: int
    part: str

    def __post_init__(self):
        if isinstance(self.block, bool) or not isinstance(self.block, (int, np.integer)):
            raise ValueError(f"Sublayer block must be an integer block index; got {self.block!r}")
        sublayer_mod.check_part(self.part)

    @property
    def blocks(self) -> tuple[int, ...]:
        """The block it belongs to, as a one-block tuple (code that counts blocks per step)."""
        return (int(self.block),)

    @property
    def iterations(self) -> int:
        return 1


Step = int | Parallel | Sublayer


def accumulate(total: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Add one parallel-group member's output to the running sum, in float32 (or the
    output's dtype if wider): bf16 sums of many blocks would round at every step. The one
    helper both ``runner.run_blocks`` and scheduled models (``scheduled``) use, so that one
    schedule gives one answer. Members are added in the group's block order."""
    if total is None:
        return out.to(torch.promote_types(out.dtype, torch.float32), copy=True)
    return total.add_(out)


def average(total: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """The group's output: the float32 sum divided by the number of members, cast back to
    the blocks' dtype (a one-block group returns its block's output bit for bit)."""
    return (total / size).to(dtype)


def validate(steps: Sequence[Step], n_layers: int, model: nn.Module | None = None) -> None:
    """Refuse a malformed schedule with a clear message. With ``model``, a schedule with
    ``Sublayer`` steps is also refused for a family without sublayer steps (encoders)."""
    for s in steps:
        if isinstance(s, bool):
            raise ValueError(f"schedule step {s!r} is not a block index")
        blocks = (s,) if isinstance(s, (int, np.integer)) else getattr(s, "blocks", None)
        if blocks is None or not isinstance(s, (int, np.integer, Parallel, Sublayer)):
            raise ValueError(f"schedule step {s!r} is neither a block index, a Parallel group nor a Sublayer")
        if isinstance(s, Parallel):
            if len(blocks) == 0:
                raise ValueError("a Parallel group needs at least one block")
            if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in blocks):
                raise ValueError(f"a Parallel group's members must be block indices; got {blocks!r}")
            if not isinstance(s.iterations, int) or s.iterations < 1:
                raise ValueError(f"Parallel iterations (k) must be an integer >= 1; got {s.iterations!r}")
        if isinstance(s, Sublayer):
            sublayer_mod.check_part(s.part)
            if model is not None:
                sublayer_mod.family(model)
        for b in blocks:
            if not 0 <= int(b) < n_layers:
                raise ValueError(f"block index {b} out of range; allowed: 0..{n_layers - 1}")


def _middle(n_layers: int, n_outer: int) -> list[int]:
    if not isinstance(n_outer, int) or not 1 <= n_outer or 2 * n_outer >= n_layers:
        raise ValueError(f"N (outer blocks kept at each end) must be an integer in 1..{(n_layers - 1) // 2} "
                         f"for a {n_layers}-block model (at least one middle block); got {n_outer!r}")
    return list(range(n_outer, n_layers - n_outer))


def build(variant: str, n_layers: int, n_outer: int, seed: int = 0, iterations: int = 3) -> list[Step]:
    """The schedule of a Painters variant.

    skip: the middle blocks are dropped. middle_repeat: the centre middle block runs in
    place of every middle block. reverse: the middle blocks in reverse order. random: the
    middle blocks in a seeded random order. parallel: all middle blocks in one parallel
    group. looped_parallel: that group fed back ``iterations`` times. attn_only / mlp_only
    (``SUBLAYER_VARIANTS``, not the paper's): each middle block runs only its attention (its
    MLP dropped) or only its MLP, as ``Sublayer`` steps.
    """
    if variant not in VARIANTS + SUBLAYER_VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {', '.join(VARIANTS + SUBLAYER_VARIANTS)}")
    middle = _middle(n_layers, n_outer)
    head, tail = list(range(n_outer)), list(range(n_layers - n_outer, n_layers))
    if variant == "skip":
        body: list[Step] = []
    elif variant == "middle_repeat":
        body = [middle[len(middle) // 2]] * len(middle)
    elif variant == "reverse":
        body = middle[::-1]
    elif variant == "random":
        body = [int(i) for i in np.random.default_rng(seed).permutation(middle)]
    elif variant == "parallel":
        body = [Parallel(tuple(middle), 1)]
    elif variant in SUBLAYER_VARIANTS:
        body = [Sublayer(i, variant.removesuffix("_only")) for i in middle]
    else:
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"loop count (k) must be an integer >= 1; got {iterations!r}")
        body = [Parallel(tuple(middle), iterations)]
    return head + body + tail


def in_order(n_layers: int) -> list[Step]:
    return list(range(n_layers))


def drop(n_layers: int, blocks: Sequence[int]) -> list[Step]:
    """The schedule that drops ``blocks`` (Gromov et al.): every other block once, in order."""
    bad = [b for b in blocks if not 0 <= int(b) < n_layers]
    if bad:
        raise ValueError(f"blocks to drop {bad} out of range; allowed: 0..{n_layers - 1}")
    kept = [i for i in range(n_layers) if i not in {int(b) for b in blocks}]
    if not kept:
        raise ValueError("cannot drop every block")
    return kept


def describe(steps: Sequence[Step]) -> str:
    """A schedule in one line: "0 1 [2,3]x2 4.attn 5.mlp"."""
    return " ".join(f"{s.block}.{s.part}" if isinstance(s, Sublayer) else str(int(s)) if not isinstance(s, Parallel)
                    else f"[{','.join(map(str, s.blocks))}]x{s.iterations}" for s in steps)


# ---------------------------------------------------------------------------- as a model

class _Slot(nn.Module):
    """One executed position of a schedule: runs a shared block, or only its attention
    (``part="attn"``), with its own KV-cache slot.

    For a member of a parallel group, the group's input is kept in ``group`` (a dict
    shared by its members): the first member of an iteration records it, every member
    runs its block on it and adds to the float32 sum (``accumulate``), and the last member
    returns the average (``average``), the same numbers as ``runner.run_blocks``.

    An MLP-only step has no attention, hence no cache: it rides along with the position
    before it (``after``: blocks whose MLP runs on this position's output, in order) or,
    before the schedule's first attention, with the first position (``before``). So every
    cache slot is written by an attention, and the cache's length (read from slot 0) is
    right during generation.
    """

    def __init__(self, block: nn.Module, slot: int, group: dict | None = None, first: bool = False,
                 last: bool = False, size: int = 1, part: str | None = None,
                 spec: sublayer_mod.Family | None = None):
        super().__init__()
        self.block = block  # shared with the original model, not copied
        self.slot, self.group, self.first, self.last, self.size = slot, group, first, last, size
        self.part, self.spec = part, spec
        self.before, self.after = nn.ModuleList(), nn.ModuleList()  # shared blocks whose MLP runs

    def _mlps(self, blocks: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        for b in blocks:
            h = sublayer_mod.run(self.spec, b, "mlp", h)
        return h

    def _run(self, hidden_states, args, kwargs):
        if self.part == "attn":
            out = sublayer_mod.run(self.spec, self.block, "attn", hidden_states, args, kwargs)
            return (out, None) if self.spec.tuple_output else out
        if self.group is None:
            return self.block(hidden_states, *args, **kwargs)
        if self.first:
            self.group["input"], self.group["sum"] = hidden_states, None
        raw = self.block(self.group["input"], *args, **kwargs)
        out = raw[0] if isinstance(raw, tuple) else raw
        self.group["sum"] = accumulate(self.group["sum"], out)
        # the next member reads group["input"]; the last returns the average. Either way the
        # output keeps the block's own form (a tuple for GPT-J/GPT-2 style blocks)
        result = hidden_states
        if self.last:
            result = average(self.group["sum"], self.size, out.dtype)
            self.group["input"] = self.group["sum"] = None  # free the group's tensors
        return (result, *raw[1:]) if isinstance(raw, tuple) else result

    def forward(self, hidden_states, *args, **kwargs):
        hidden_states = self._mlps(self.before, hidden_states)
        owners = [m for m in self.block.modules() if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int)]
        saved = [m.layer_idx for m in owners]
        for m in owners:
            m.layer_idx = self.slot
        try:
            raw = self._run(hidden_states, args, kwargs)
        finally:
            for m, idx in zip(owners, saved):
                m.layer_idx = idx
        if not len(self.after):
            return raw
        if isinstance(raw, tuple):
            return (self._mlps(self.after, raw[0]), *raw[1:])
        return self._mlps(self.after, raw)


@contextmanager
def scheduled(model: nn.Module, steps: Sequence[Step]) -> Iterator[nn.Module]:
    """Run ``model`` with a schedule for the duration of the block, as a real model:
    ``model(...)`` and ``model.generate(...)`` work, with one KV-cache slot per executed
    attention (a block, a parallel-group member or an attention ``Sublayer``; see
    ``_Slot`` for MLP-only steps) and ``config.layer_types`` following the blocks.
    Weights are shared; the original block list and config are restored on exit."""
    old_blocks = arch.blocks(model)
    validate(steps, len(old_blocks), model)
    spec = sublayer_mod.family(model) if any(isinstance(s, Sublayer) for s in steps) else None
    types = arch.layer_types(model)
    slots: list[_Slot] = []
    slot_types: list[str] = []
    leading: list[nn.Module] = []  # MLP-only steps before the first position
    for s in steps:
        if isinstance(s, Sublayer):
            if s.part == "mlp":
                (slots[-1].after if slots else leading).append(old_blocks[s.block])
                continue
            slots.append(_Slot(old_blocks[s.block], len(slots), part="attn", spec=spec))
            slot_types.append(types[s.block] if types else None)
        elif isinstance(s, (int, np.integer)):
            slots.append(_Slot(old_blocks[int(s)], len(slots), spec=spec))
            slot_types.append(types[int(s)] if types else None)
        else:
            for _ in range(s.iterations):
                group: dict = {}
                for j, b in enumerate(s.blocks):
                    slots.append(_Slot(old_blocks[b], len(slots), group, first=j == 0, last=j == len(s.blocks) - 1,
                                       size=len(s.blocks), spec=spec))
                    slot_types.append(types[b] if types else None)
    if not slots:
        raise ValueError("scheduled: a schedule of MLP sublayers only has no attention, hence no KV cache to run "
                         "with; run it with runner.run_blocks")
    slots[0].before.extend(leading)
    old_n = model.config.num_hidden_layers
    try:
        arch.replace_blocks(model, nn.ModuleList(slots))
        model.config.num_hidden_layers = len(slots)
        if types is not None:
            model.config.layer_types = slot_types
        yield model
    finally:
        arch.replace_blocks(model, old_blocks)
        model.config.num_hidden_layers = old_n
        if types is not None:
            model.config.layer_types = types


def _set_layer_indices(block: nn.Module, index: int) -> None:
    for module in block.modules():
        if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
            module.layer_idx = index


def apply(model: nn.Module, steps: Sequence[Step]) -> None:
    """Make a schedule of block indices and ``Sublayer`` steps a permanent edit of
    ``model``: its block list becomes the scheduled blocks (a block scheduled twice is
    deep-copied, so every position has its own module), ``layer_idx`` renumbered (KV-cache
    slots), ``config.num_hidden_layers`` and, for Gemma3, ``config.layer_types`` following
    the blocks. A ``Sublayer`` step is its block with the other sublayer's output
    projection set to zero (``sublayer.zero_part``: that sublayer then adds exactly 0).
    The result is an ordinary model (``save_pretrained`` writes a checkpoint plain
    transformers loads). ``Parallel`` groups have no such form: use ``scheduled``."""
    old = arch.blocks(model)
    validate(steps, len(old), model)
    if any(isinstance(s, Parallel) for s in steps):
        raise ValueError("apply: a Parallel group has no plain-model form; run it with schedule.scheduled "
                         "or runner.run_blocks")
    types = arch.layer_types(model)
    index = [s.block if isinstance(s, Sublayer) else int(s) for s in steps]
    seen: set[int] = set()
    new = []
    for b in index:  # every copy is taken from an untouched original, before any zeroing
        new.append(copy.deepcopy(old[b]) if b in seen else old[b])
        seen.add(b)
    for s, block in zip(steps, new):
        if isinstance(s, Sublayer):
            sublayer_mod.zero_part(model, block, "mlp" if s.part == "attn" else "attn")
    for position, block in enumerate(new):
        _set_layer_indices(block, position)
    arch.replace_blocks(model, nn.ModuleList(new))
    model.config.num_hidden_layers = len(new)
    if types is not None:
        model.config.layer_types = [types[b] for b in index]
