"""The units of counted work: ``Work`` (one model's counts in one chapter), ``Rows`` (the
inputs of one dataset), ``run_pass`` and ``train_steps`` (what adds to them), ``EditCost`` and
the edit-cost helpers (the blocks an edited model runs), and the SVDs' FLOPs and ``SVDLedger``
(``rank.SVDCache`` replayed)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from .shapes import Shape, model_shape

TRAIN_FACTOR = 3.0  # a training step (forward + backward) counted as 3 forward passes
# LoRA on frozen weights: backward computes the inputs' gradients (about one forward) but no
# weight gradient beside the adapters' (rank 8: negligible), so a step is about 2 forward passes
LORA_TRAIN_FACTOR = 2.0


@dataclass
class Work:
    """Counted work of one model in one chapter (units in the module docstring).
    ``agent``: the Sokoban chapter's own units (training windows, rollout level-steps)."""

    model: str
    block_tokens: float = 0.0
    attn_pairs: float = 0.0
    head_tokens: float = 0.0
    train_tokens: float = 0.0
    train_block_tokens: float = 0.0
    train_attn_pairs: float = 0.0
    train_head_tokens: float = 0.0
    train_factor: float | None = None  # forward passes per training step (None: TRAIN_FACTOR; see train_steps)
    block_calls: float = 0.0
    svds: Counter = field(default_factory=Counter)
    host_svds: Counter = field(default_factory=Counter)
    host_flops: float = 0.0     # other float64 work on the CPU (ridge fits), FLOPs
    other_flops: float = 0.0    # device FLOPs counted directly (the agent's state embedding)
    parts: Counter = field(default_factory=Counter)  # block_tokens per part of the chapter
    agent: dict = field(default_factory=dict)
    sources: set = field(default_factory=set)        # how tokens were counted: "tokenizer", "chars/4"
    shape: Shape | None = None  # the model's shape when it is not ``model_shape(model)`` (the agent's)

    def model_shape(self) -> Shape:
        return self.shape or model_shape(self.model)

    def as_dict(self) -> dict:
        """Plain numbers (SVDs as their count and shapes) for printing or JSON."""
        out = {k: float(v) for k, v in self.__dict__.items() if isinstance(v, (int, float))}
        out |= {"model": self.model, "svds": sum(self.svds.values()),
                "svd_shapes": {f"{m}x{n}": c for (m, n), c in self.svds.items()},
                "host_svds": sum(self.host_svds.values()), "parts": dict(self.parts), "agent": dict(self.agent),
                "token_source": sorted(self.sources)}
        return out


@dataclass(frozen=True)
class Rows:
    """Model inputs of one dataset as a chapter feeds them: ``n`` inputs of ``tokens`` mean
    tokens (``tokens_sq``: mean squared length), ``head`` head positions per input,
    ``items`` items, ``source`` how tokens were counted."""

    n: float
    tokens: float
    tokens_sq: float
    head: float
    items: float
    source: str

    def fraction(self, share: float) -> "Rows":
        """The rows of a share of the items (e.g. the 20% validation split)."""
        return replace(self, n=self.n * share, items=self.items * share)


def fixed_rows(n: float, length: float, head: float = 0.0, source: str = "fixed") -> Rows:
    """``n`` inputs of exactly ``length`` tokens (token chunks, padded batches)."""
    return Rows(n, length, length * length, head, n, source)


def run_pass(w: Work, part: str, rows: Rows, blocks: float, head: float = 0.0, batch_rows: float = 1.0,
             attn_blocks: float | None = None) -> None:
    """Count ``rows`` through ``blocks`` blocks (``attn_blocks`` of them with attention,
    default all) and ``head`` head positions per row, in batches of ``batch_rows`` rows."""
    attn_blocks = blocks if attn_blocks is None else attn_blocks
    bt = rows.n * rows.tokens * blocks
    w.block_tokens += bt
    w.attn_pairs += rows.n * attn_blocks * (rows.tokens_sq + rows.tokens) / 2
    w.head_tokens += rows.n * head
    if blocks:
        w.block_calls += math.ceil(rows.n / max(batch_rows, 1.0)) * blocks
    w.parts[part] += bt
    w.sources.add(rows.source)


def train_steps(w: Work, part: str, steps: int, batch: int, seq_len: int, trained_blocks: float,
                frozen_blocks: float = 0.0, head: bool = True, factor: float = TRAIN_FACTOR) -> None:
    """Count ``steps`` training steps of ``batch`` x ``seq_len`` tokens: ``trained_blocks``
    (and the head) forward and backward (``factor`` forward passes: ``TRAIN_FACTOR`` when
    their weights train, ``LORA_TRAIN_FACTOR`` for adapters on frozen weights),
    ``frozen_blocks`` below them forward only (no gradient flows into them). A Work that
    holds both kinds keeps their mean factor, weighted by training block-tokens."""
    tokens = steps * batch * seq_len
    before, added = w.train_block_tokens, tokens * trained_blocks
    if added:
        w.train_factor = (factor if not before else
                          ((w.train_factor or TRAIN_FACTOR) * before + factor * added) / (before + added))
    pairs = steps * batch * seq_len * (seq_len + 1) / 2
    w.train_tokens += tokens
    w.train_block_tokens += tokens * trained_blocks
    w.train_attn_pairs += pairs * trained_blocks
    w.train_head_tokens += tokens if head else 0
    w.block_tokens += tokens * frozen_blocks
    w.attn_pairs += pairs * frozen_blocks
    w.block_calls += steps * (factor * trained_blocks + frozen_blocks)
    w.parts[part] += tokens * (trained_blocks + frozen_blocks)


@dataclass(frozen=True)
class EditCost:
    """One edit of a prefix-shared evaluation: ``suffix`` blocks run after the shared
    prefix (``suffix_attn`` of them with attention), ``total`` blocks of the edited model
    (what generation runs), ``unmodified``: the capture pass already scores it."""

    suffix: float
    total: float
    suffix_attn: float | None = None
    total_attn: float | None = None
    unmodified: bool = False


def steps_cost(steps: Iterable, shape: Shape) -> tuple[float, float]:
    """(block equivalents, attention computations) of schedule steps: a block is 1, a
    ``Parallel`` group its size x iterations, a ``Sublayer`` its share of the block's
    parameters (attention-only: one attention, MLP-only: none)."""
    from layerlab.core.model import schedule

    blocks = attn = 0.0
    for s in steps:
        if isinstance(s, schedule.Parallel):
            blocks += len(s.blocks) * s.iterations
            attn += len(s.blocks) * s.iterations
        elif isinstance(s, schedule.Sublayer):
            blocks += shape.attn_fraction if s.part == "attn" else 1 - shape.attn_fraction
            attn += s.part == "attn"
        else:
            blocks += 1
            attn += 1
    return blocks, attn


def schedule_edit(steps: Sequence, shape: Shape) -> EditCost:
    """The ``EditCost`` of a schedule, through ``edits.from_schedule`` (its start is where it
    first departs from running every block in order)."""
    from layerlab.core.model import edits as edits_mod

    n = shape.layers
    edit = edits_mod.from_schedule(list(steps), n)
    suffix = steps_cost(range(edit.start, n) if edit.steps is None else edit.steps, shape)
    total = steps_cost(steps, shape)
    return EditCost(suffix[0], total[0], suffix[1], total[1], unmodified=edit == edits_mod.unmodified(n))


def unmodified_edit(shape: Shape) -> EditCost:
    return EditCost(0.0, shape.layers, 0.0, shape.layers, unmodified=True)


def drop_edit(shape: Shape, start: int, n: int) -> EditCost:
    """Blocks start..start+n-1 dropped (``schedule.drop``)."""
    from layerlab.core.model import schedule

    if n == 0:
        return unmodified_edit(shape)
    return schedule_edit(schedule.drop(shape.layers, list(range(start, start + n))), shape)


# ---------------------------------------------------------------------------- SVDs

def svd_flops(m: int, n: int) -> float:
    """FLOPs of a thin SVD with both factors (``torch.linalg.svd(full_matrices=False)``),
    the textbook R-SVD count (Golub and Van Loan): 4 m n^2 + 22 n^3, m >= n."""
    m, n = max(m, n), min(m, n)
    return 4.0 * m * n * n + 22.0 * n ** 3


def svdvals_flops(m: int, n: int) -> float:
    """FLOPs of singular values only (bidiagonalisation dominates): 4 m n^2 - 4 n^3 / 3."""
    m, n = max(m, n), min(m, n)
    return 4.0 * m * n * n - 4.0 * n ** 3 / 3


class SVDLedger:
    """``rank.SVDCache``'s byte-bounded LRU replayed on request order: an entry per
    (matrix type, layer) holds the original (model dtype) and the float32 factors; a
    request for an entry that was evicted computes its SVD again. ``computed``: shapes."""

    def __init__(self, shape: Shape, dtype_bytes: int, max_bytes: int | None):
        self.shape, self.dtype_bytes, self.max_bytes = shape, dtype_bytes, max_bytes
        self.entries: dict[tuple[str, int], int] = {}
        self.computed: Counter = Counter()

    def _bytes(self, matrix_type: str) -> int:
        m, n = self.shape.matrices[matrix_type]
        r = min(m, n)
        return m * n * self.dtype_bytes + 4 * (m * r + r + r * n)

    def request(self, matrix_type: str, layer: int) -> None:
        key = (matrix_type, layer)
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)  # most recently used last
            return
        self.entries[key] = self._bytes(matrix_type)
        self.computed[self.shape.matrices[matrix_type]] += 1
        if self.max_bytes is None:
            return
        for old in list(self.entries):
            if sum(self.entries.values()) <= self.max_bytes:
                break
            if old != key:
                del self.entries[old]
