"""Building the book: ``build`` (papermill + Jupyter Book, ``python -m layerlab.book``), ``charts``, ``compare`` (the cross-paper page), ``dry_run`` (the full plan on tiny models), ``estimate`` (time before starting,
from a calibration), ``work`` (the work each chapter does, counted, and its time on a stated device)."""

import importlib

SUBMODULES = ("build", "charts", "compare", "dry_run", "estimate", "work")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
