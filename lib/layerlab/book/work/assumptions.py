"""What is not known before a run, assumed and said: ``ASSUMPTIONS`` (the lines the summary
prints), the generation length, and the assumed picks (``middle``: the middle of the searched
values; ``similarity_start``: a similarity-chosen block in the middle of its range)."""

from __future__ import annotations

from collections.abc import Sequence

GSM8K_NEW_TOKENS = 256  # layerlab_gsm8k.yaml max_gen_toks: a batch decodes until its last row stops
ASSUMPTIONS = (
    "the block a similarity criterion picks (prune's l*(n), the sublayer and block picks) starts in the "
    "middle of its allowed range",
    "the reduction LASER's validation picks (and the greedy composition's lowest layer) lies at the middle "
    "of the searched layers; a reduction is picked",
    "every Painters benchmark is above chance, so every variant runs on all of them (an upper bound)",
    f"GSM8K generates {GSM8K_NEW_TOKENS} tokens per prompt (its cap: a batch decodes until its last row stops)",
    "Sokoban episodes run to the 60-step limit (an upper bound); level generation and BFS solving are CPU "
    "work not counted",
    "padding inside batches is not counted (batches are length-sorted)",
)


def middle(values: Sequence[int]) -> int:
    values = sorted(values)
    return values[len(values) // 2]


def similarity_start(n_layers: int, n: int) -> int:
    """Assumed start of a similarity-chosen block of n (``ASSUMPTIONS``): the middle of 0..L-n."""
    return (n_layers - n) // 2
