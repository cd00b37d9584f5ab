"""LASER (Sharma, Ash & Misra 2023): ``rank`` (SVD rank reduction), ``sweep`` (the (tau, l, rho) sweep, protocol, greedy), ``tasks`` (the datasets as scoring tasks), ``run`` (the chapter pipeline), ``analysis`` (Fig. 5), ``quantisation``, ``claims``, ``distributed`` (its points as Ray shards); the Sokoban Decision Transformer in ``sokoban`` (``env``, ``agent``, ``chapter``, ``claims``)."""

import importlib

SUBMODULES = ("analysis", "claims", "distributed", "quantisation", "rank", "run", "sokoban", "sweep", "tasks")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
