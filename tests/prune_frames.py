"""Constructed per-item frames of the prune chapter (table prune_items) for its tests."""

import numpy as np
import pandas as pd

L = 10  # layers


def acc_items(curve, n_items=400, dataset="mmlu", method="similarity", healed=False, base=True):
    """{n: accuracy}: item i is right at a point when i < accuracy * n_items (nested sets)."""
    rows = []
    for n, acc in curve.items():
        if n == 0 and not base:
            continue
        right = (np.arange(n_items) < round(acc * n_items)).astype(float)
        rows.append(pd.DataFrame({"item": np.arange(n_items), "value": right}).assign(
            dataset=dataset, metric="acc", method="similarity" if n == 0 else method, n=n,
            healed=healed and n > 0, n_layers=L))
    return pd.concat(rows, ignore_index=True)
