"""Functions the layerlab lm-eval task YAMLs refer to (copied next to them at run time)."""

import numpy as np


def winogrande_text(doc):
    # Partial evaluation (as lm-eval's winogrande): the two contexts are the choices,
    # the shared continuation after the blank is the target.
    return int(doc["label"])


def winogrande_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_choices(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def truthfulqa_mc2(doc, results):
    """Normalised probability mass on the true answers (TruthfulQA MC2)."""
    ll = np.array([r[0] for r in results])
    probs = np.exp(ll - ll.max())
    probs = probs / probs.sum()
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probs[labels == 1].sum())}
