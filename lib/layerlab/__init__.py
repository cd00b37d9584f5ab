"""layerlab: layer-level surgery of transformer language models.

One subpackage per paper and two shared ones:

- ``layerlab.core``: what every technique stands on: ``models`` (loading), ``arch`` (where
  each family keeps its parts), ``runner`` (residual-stream capture and partial forward
  passes), ``schedule`` and ``edits`` (which blocks run, in what order), ``scoring`` and
  ``prefix_eval`` (prefix-cached scoring, lm-eval on many edits at once), ``evaluation``,
  ``data``, ``results`` (the resumable store), ``stats`` and ``verdicts``, ``papers`` (the
  papers' own numbers), ``distributed`` (Ray).
- ``layerlab.laser``: LASER (Sharma et al. 2023): ``rank``, ``sweep``, ``run``, ``analysis``,
  ``claims``, and the Sokoban agent (``decision``).
- ``layerlab.prune``: deeper-layer pruning (Gromov et al. 2024): ``blocks``, ``curve``,
  ``paired``, ``healing``, ``payoff``, ``claims``.
- ``layerlab.painters``: Layers as Painters (Sun et al. 2024): ``grid``, ``run``,
  ``contrasts``, ``encoder``, ``claims``.
- ``layerlab.book``: building the book: ``build``, ``charts``, ``compare``, ``estimate``.

Short paths for the reader: the core modules are importable from the top,
``from layerlab import runner, schedule`` (loaded on first use), and ``layerlab.load``.
"""

import importlib

__version__ = "0.1.0"

CORE = ("arch", "data", "data_fetch", "distributed", "edits", "evaluation", "files", "lm_eval_model",
        "lm_loss", "machine", "models", "papers", "params", "prefix_eval", "prefix_stream", "provenance", "ray_tasks",
        "reference", "results", "runner", "schedule", "scoring", "stats", "verdicts")


def __getattr__(name: str):
    if name in CORE:
        return importlib.import_module(f"layerlab.core.{name}")
    if name in ("load", "REGISTRY"):
        return getattr(importlib.import_module("layerlab.core.models"), name)
    raise AttributeError(f"module 'layerlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(CORE) + ["load", "REGISTRY"])
