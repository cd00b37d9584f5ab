"""Files in and out: the data dir (``data``, ``data_fetch``), file hashes (``files``), what a result depends on (``provenance``), the resumable results store (``results``)."""

import importlib

SUBMODULES = ('data', 'data_fetch', 'files', 'provenance', 'results')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
