"""Evaluation: prefix-cached scoring of answers (``scoring``, ``prefix_stream``), lm-eval tasks and the in-memory lm-eval model (``evaluation``, ``lm_eval_model``), lm-eval on many edits at once (``prefix_eval``), next-token loss (``lm_loss``)."""

import importlib

SUBMODULES = ('evaluation', 'lm_eval_model', 'lm_loss', 'prefix_eval', 'prefix_stream', 'scoring')


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
