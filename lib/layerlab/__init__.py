"""layerlab: layer-level surgery of transformer language models.

Modules, one idea each: ``models`` (loading), ``arch`` (where each family keeps its
parts), ``runner`` (residual-stream capture and partial forward passes), ``data``
(benchmark files), ``results`` (resumable result store), ``evaluation`` (metrics and
lm-eval), and the techniques ``rank``, ``prune``, ``schedule``.
"""

__version__ = "0.1.0"

from .models import load, REGISTRY  # noqa: E402,F401
