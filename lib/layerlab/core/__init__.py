"""The shared core, one subpackage per role: ``model`` (the model and its blocks), ``eval`` (scoring and lm-eval), ``evidence`` (papers' numbers, statistics, verdicts), ``io`` (data, results store, provenance), ``compute`` (machine, planning, local or Ray execution). The core imports no paper package (``tests/test_layout.py``)."""

import importlib

SUBMODULES = ('model', 'eval', 'evidence', 'io', 'compute')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
