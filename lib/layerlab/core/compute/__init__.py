"""Where and how a run computes: the CPU (``machine``), profile and parameter checks (``params``), planning a run before any load (``planning``), running shards in this process or as Ray tasks (``distributed``, ``ray_tasks``). Nothing here knows a paper: a technique hands ``distributed`` its own shard function."""

import importlib

SUBMODULES = ('distributed', 'machine', 'params', 'planning', 'ray_tasks')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
