"""The shared core: models, architectures, the layer runner, schedules and edits, scoring, evaluation, data, results, statistics and verdicts (see ``layerlab``)."""

import importlib

SUBMODULES = ("arch", "data", "data_fetch", "distributed", "edits", "evaluation", "files", "lm_eval_model", "lm_loss", "machine", "models", "papers", "params", "prefix_eval", "prefix_stream", "provenance", "ray_tasks", "reference", "results", "runner", "schedule", "scoring", "stats", "verdicts")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
