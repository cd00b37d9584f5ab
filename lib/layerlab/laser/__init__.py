"""LASER (Sharma, Ash & Misra 2023): ``rank`` (SVD rank reduction), ``sweep`` (the (tau, l, rho) sweep, protocol, greedy), ``tasks`` (the datasets as scoring tasks), ``run`` (the chapter pipeline), ``analysis`` (Fig. 5), ``quantisation``, ``claims``; the Sokoban Decision Transformer: ``sokoban``, ``decision_agent``, ``decision``, ``decision_claims``."""

import importlib

SUBMODULES = ("analysis", "claims", "decision", "decision_agent", "decision_claims", "quantisation", "rank", "run", "sokoban", "sweep", "tasks")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
