"""Evidence: the papers' own numbers (``papers``), intervals and floors (``stats``), the power to tell (``power``), and verdicts decided by intervals (``verdicts``)."""

import importlib

SUBMODULES = ('papers', 'power', 'stats', 'verdicts')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
