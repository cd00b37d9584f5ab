"""LASER outside language (paper Table 2): the Sokoban environment (``env``: generator, solver, rules), the Decision Transformer agent (``agent``), the chapter pipeline (``chapter``) and its claims (``claims``)."""

import importlib

SUBMODULES = ('agent', 'chapter', 'claims', 'env')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
