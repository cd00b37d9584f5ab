"""layerlab: layer-level surgery of transformer language models.

One subpackage per paper, a shared core below them and the book above:

- ``layerlab.core``: what every technique stands on, one subpackage per role, importing no
  paper: ``model`` (``models``, ``arch``, ``runner``, ``schedule``, ``edits``, ``sublayer``,
  ``reference``), ``eval`` (``scoring``, ``prefix_stream``, ``prefix_eval``, ``evaluation``,
  ``lm_eval_model``, ``lm_loss``), ``evidence`` (``papers``, ``stats``, ``verdicts``), ``io``
  (``data``, ``data_fetch``, ``files``, ``provenance``, ``results``), ``compute``
  (``machine``, ``params``, ``planning``, ``distributed``, ``ray_tasks``).
- ``layerlab.laser``: LASER (Sharma et al. 2023): ``rank``, ``sweep``, ``run``, ``analysis``,
  ``claims``, ``distributed``, and the Sokoban agent (``laser.sokoban``).
- ``layerlab.prune``: deeper-layer pruning (Gromov et al. 2024): ``blocks``, ``curve``,
  ``paired``, ``healing``, ``payoff``, ``claims``.
- ``layerlab.painters``: Layers as Painters (Sun et al. 2024): ``grid``, ``run``,
  ``contrasts``, ``encoder``, ``claims``, ``rows``, ``distributed``.
- ``layerlab.beyond``: beyond the three papers.
- ``layerlab.book``: building the book: ``build``, ``charts``, ``compare``, ``estimate``.

Short paths for the reader: the core modules are importable from the top,
``from layerlab import runner, schedule`` (loaded on first use), and ``layerlab.load``.
"""

import importlib

__version__ = "0.1.0"

# the short paths a reader types (``from layerlab import runner``): core module -> its role subpackage
CORE = {"arch": "model", "edits": "model", "embedded": "model", "models": "model", "reference": "model", "runner": "model",
        "schedule": "model", "sublayer": "model",
        "evaluation": "eval", "lm_eval_model": "eval", "lm_loss": "eval", "prefix_eval": "eval",
        "prefix_stream": "eval", "scoring": "eval",
        "papers": "evidence", "power": "evidence", "stats": "evidence", "verdicts": "evidence",
        "data": "io", "data_fetch": "io", "files": "io", "provenance": "io", "results": "io",
        "distributed": "compute", "machine": "compute", "params": "compute", "planning": "compute",
        "ray_tasks": "compute"}


def __getattr__(name: str):
    if name in CORE:
        return importlib.import_module(f"layerlab.core.{CORE[name]}.{name}")
    if name == "load":
        return importlib.import_module("layerlab.core.model.models").load
    if name == "REGISTRY":
        return importlib.import_module("layerlab.core.model.embedded").REGISTRY
    raise AttributeError(f"module 'layerlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(CORE) + ["load", "REGISTRY"])
