"""Transformer Layers as Painters (Sun et al. 2024): ``grid`` (schedules on benchmarks), ``run`` (the chapter pipeline), ``contrasts`` (paired contrasts), ``encoder`` (the encoder lens), ``claims`` (the rules), ``paired`` (paired tests on per-item accuracies), ``rows`` (the comparison page's rows), ``distributed`` (its schedules as Ray shards)."""

import importlib

SUBMODULES = ("claims", "contrasts", "distributed", "encoder", "grid", "paired", "rows", "run")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
