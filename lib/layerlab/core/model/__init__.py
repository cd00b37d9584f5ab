"""The model and its blocks: the embedded models (``embedded``), loading (``models``), where each family keeps its parts (``arch``), the layer runner (``runner``), block orders (``schedule``, ``sublayer``), edits, and the papers in one screen each (``reference``, the tests' oracle)."""

import importlib

SUBMODULES = ('arch', 'edits', 'embedded', 'models', 'reference', 'runner', 'schedule', 'sublayer')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
