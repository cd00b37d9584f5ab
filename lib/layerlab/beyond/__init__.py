"""Beyond the three papers: which blocks really matter (``criteria``, ``truth``,
``agreement``), surgery below the block (``sublayers``), healing by fine-tuning the head and
the last blocks (``head_healing``), LASER without a search and the bottom of the spectrum
(``spectrum``), and the claims these sections decide (``claims``)."""

import importlib

SUBMODULES = ("agreement", "claims", "criteria", "head_healing", "spectrum", "sublayer_claims", "sublayers", "truth")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
