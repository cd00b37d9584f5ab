"""Deeper-layer pruning (Gromov et al. 2024): ``blocks`` (angular distances, which blocks, dropping them), ``curve`` (accuracy and loss against the fraction dropped), ``paired`` (paired comparisons), ``collapse`` (holds, then falls to chance; healing delays it), ``healing`` (LoRA), ``payoff`` (what a pruned checkpoint buys), ``claims``."""

import importlib

SUBMODULES = ("blocks", "claims", "collapse", "curve", "healing", "paired", "payoff")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
