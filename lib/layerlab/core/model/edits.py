"""Edits of a model that leave a prefix of its blocks untouched, in the two forms every
chapter needs: run on captured residual streams (the prefix computed once, shared by
many edits) and applied to the model itself (for generation, KV cache included).

Every intervention in the book changes the model from some block on:

* a LASER reduction of a matrix in block l: blocks 0..l-1 are unchanged;
* dropping blocks l..l+n-1 (Gromov et al., similarity or "deepest" heuristic): the
  blocks before l are unchanged;
* a Painters schedule: the blocks before its first changed position are unchanged.

An ``Edit`` states that block ``start`` and the schedule run from there (``steps``;
``None``: blocks start..L-1 as they are), plus an optional temporary weight edit
(``weights``: a function of the model returning a context manager, e.g.
``lambda m: rank.reduced(m, reduction, cache)``). ``run`` finishes it from a
``runner.ResidualState``; ``applied`` makes the model itself the edited model for the
duration of a ``with``. Both forms give the same numbers (tests/test_prefix_eval.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from layerlab.core.model import arch, runner, schedule

WeightEdit = Callable[[nn.Module], AbstractContextManager]


@dataclass(frozen=True)
class Edit:
    """An edit that leaves blocks 0..start-1 unchanged.

    start: the first block whose input may differ from the unmodified model's (0..L; L:
        only the head runs after the captured last block). steps: the schedule run from
        ``start`` on (block indices, ``schedule.Parallel`` groups and ``schedule.Sublayer``
        steps), or None for blocks
        start..L-1 in order. weights: an optional temporary weight edit, entered while the
        edit runs; it must not touch blocks before ``start``.
    """

    start: int
    steps: tuple | None = None
    weights: WeightEdit | None = None

    def schedule(self, n_layers: int) -> list:
        """The whole schedule of the edited model: the unchanged prefix, then ``steps``."""
        rest = list(range(self.start, n_layers)) if self.steps is None else list(self.steps)
        return list(range(self.start)) + rest


def unmodified(n_layers: int) -> Edit:
    """The unmodified model: everything is prefix, only the head runs."""
    return Edit(start=n_layers, steps=())


def from_schedule(steps: Sequence, n_layers: int) -> Edit:
    """The edit of a schedule (``schedule.build``, ``schedule.drop``, ``schedule.in_order``):
    ``start`` is the first position where it departs from running every block in order."""
    schedule.validate(steps, n_layers)
    steps = [s if isinstance(s, (schedule.Parallel, schedule.Sublayer)) else int(s) for s in steps]
    start = 0
    while start < len(steps) and start < n_layers and steps[start] == start:
        start += 1
    if start == len(steps) == n_layers:
        return unmodified(n_layers)
    return Edit(start=start, steps=tuple(steps[start:]))


def from_weights(weights: WeightEdit, first_layer: int) -> Edit:
    """A temporary weight edit (e.g. a LASER reduction) whose lowest edited block is ``first_layer``."""
    return Edit(start=int(first_layer), steps=None, weights=weights)


def starts(edits: Sequence[Edit]) -> set[int]:
    """The distinct start blocks of ``edits`` (the states a prefix capture must keep)."""
    return {e.start for e in edits}


@contextmanager
def weights_applied(model: nn.Module, edit: Edit) -> Iterator[nn.Module]:
    """The edit's weight change (if any) for the duration of a ``with``."""
    with ExitStack() as stack:
        if edit.weights is not None:
            stack.enter_context(edit.weights(model))
        yield model


@torch.no_grad()
def run(model: nn.Module, state: runner.ResidualState, edit: Edit) -> torch.Tensor:
    """The residual stream after the last block of the edited model, [batch, seq, d_model]
    (before the final norm), from a capture of the unmodified model that kept the state
    entering ``edit.start``. The caller applies ``edit.weights`` (``weights_applied``)."""
    h = state.hidden[edit.start]
    if h is None:
        raise ValueError(f"the capture did not keep the state entering block {edit.start}; "
                         "capture with keep=edits.starts(edits)")
    steps = range(edit.start, state.n_layers) if edit.steps is None else edit.steps
    return runner.run_blocks(model, state, h, steps)


@contextmanager
def applied(model: nn.Module, edit: Edit) -> Iterator[nn.Module]:
    """``model`` as the edited model for the duration of a ``with`` (weights edited,
    blocks scheduled with a KV-cache slot per position: ``generate`` works); restored on
    exit."""
    n = arch.n_layers(model)
    with weights_applied(model, edit), ExitStack() as stack:
        if edit.steps is not None:
            stack.enter_context(schedule.scheduled(model, edit.schedule(n)))
        yield model
