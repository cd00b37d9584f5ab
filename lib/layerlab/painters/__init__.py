"""Transformer Layers as Painters (Sun et al. 2024): ``grid`` (schedules on benchmarks), ``run`` (the chapter pipeline), ``contrasts`` (paired contrasts), ``encoder`` (the encoder lens), ``claims``."""

import importlib

SUBMODULES = ("claims", "contrasts", "encoder", "grid", "run")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
