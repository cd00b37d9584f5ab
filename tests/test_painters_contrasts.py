"""Painters claims on per-document contrasts and the encoder's per-item rows."""

import numpy as np
import pandas as pd
import pytest

from layerlab.painters import contrasts as pcx
from layerlab.core.io import results
from layerlab.core.evidence import verdicts


def sims(n_docs, inner, ends, n_layers=8, noise=0.02, seed=0):
    """[docs, L+1, L+1] similarity matrices: ``inner`` between middle boundaries, ``ends``
    between a middle boundary and boundaries 1 and L."""
    rng = np.random.default_rng(seed)
    out = np.full((n_docs, n_layers + 1, n_layers + 1), 0.3)
    mid = pcx.middle_layers(n_layers)
    for d in range(n_docs):
        for i in mid:
            for j in mid:
                out[d, i, j] = inner + rng.normal(0, noise)
            for e in (1, n_layers):
                out[d, i, e] = out[d, e, i] = ends + rng.normal(0, noise)
    return out


def test_middle_contrast_is_middle_minus_ends():
    x = pcx.middle_contrast(sims(5, 0.7, 0.2, noise=0.0))
    assert x == pytest.approx(np.full(5, 0.5))
    assert list(pcx.middle_layers(8)) == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("inner, ends, n, verdict", [(0.7, 0.2, 20, verdicts.AGREES),
                                                     (0.2, 0.7, 20, verdicts.DISAGREES),
                                                     (0.5, 0.5, 4, verdicts.INCONCLUSIVE)])
def test_shared_space_is_a_paired_contrast(inner, ends, n, verdict):
    row = pcx.shared_space(pcx.middle_contrast(sims(n, inner, ends)), "m")
    assert verdicts.word(row["verdict"]) == verdict
    assert row["n"] == n and "paired t" in row["statistic"] and row["mde"] and row["n_needed"] is None


def test_a_high_absolute_cosine_is_no_longer_enough(tmp_path):
    store = results.ResultStore(tmp_path)
    store.put("painters_similarity", "s", pd.DataFrame({"model": "m", "technique": "painters_similarity",
                                                        "dataset": "wikitext2", "split": "test",
                                                        "metric": "mean_middle_cosine", "value": [0.9, 0.95],
                                                        "n_items": 1}))
    assert pcx.stored_contrast(store, "m")["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: no data: only absolute")
    store.put("painters_similarity", "c", pd.DataFrame({"model": "m", "technique": "painters_similarity",
                                                        "dataset": "wikitext2", "split": "test",
                                                        "metric": pcx.CONTRAST, "value": [0.2, 0.25, 0.3],
                                                        "n_items": 1, "doc": [0, 1, 2]}))
    assert verdicts.word(pcx.stored_contrast(store, "m")["verdict"]) == verdicts.AGREES


@pytest.mark.parametrize("ends, verdict", [(0.5, verdicts.AGREES), (0.0, verdicts.DISAGREES)])
def test_ends_needed(tmp_path, ends, verdict):
    rng = np.random.default_rng(0)
    rows = [{"doc": d, "layer": layer, "variant": "skip",
             "value": (ends if layer in (0, 7) else 0.1) + rng.normal(0, 0.01)} for d in range(10) for layer in range(8)]
    store = results.ResultStore(tmp_path)
    store.put("painters_layer", "k", pd.DataFrame(rows).assign(model="m", technique="painters_layer",
                                                               dataset="wikitext2", split="test",
                                                               metric="delta_loss_norm", n_items=1))
    row = pcx.ends_needed(store, "m")
    assert verdicts.word(row["verdict"]) == verdict and row["n"] == 10 and row["n_needed"] is None
    means = pd.DataFrame(rows).groupby(["layer", "variant"], as_index=False)["value"].mean()
    store2 = results.ResultStore(tmp_path / "means")
    store2.put("painters_layer", "k", means.assign(model="m", technique="painters_layer", dataset="wikitext2",
                                                   split="test", metric="delta_loss_norm", n_items=1))
    assert verdicts.cause(pcx.ends_needed(store2, "m")["verdict"]) == "no data"
    assert pcx.ends_needed(results.ResultStore(tmp_path / "none"), "m")["verdict"].startswith(verdicts.NOT_RUN)


def encoder_items(accs, n=300, seed=0, tasks=("sst2", "rte")):
    """accs: (variant, affected, loops) -> accuracy of the fixed head on each task."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        target = rng.integers(0, 2, n).astype(float)
        for (v, a, k), p in accs.items():
            right = np.zeros(n, bool)
            right[rng.permutation(n)[:round(p * n)]] = True
            pred = np.where(right, target, 1 - target)
            rows.append(pd.DataFrame({"item": np.arange(n), "pred": pred, "target": target}).assign(
                dataset=task, metric="acc", variant=v, affected=a, loops=k, order_seed=0))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("variant_acc, n, verdict", [(0.75, 300, verdicts.AGREES), (0.3, 300, verdicts.DISAGREES),
                                                     (0.97, 300, verdicts.DISAGREES),
                                                     (0.82, 40, verdicts.INCONCLUSIVE)])
def test_encoder_claim_on_paired_items(variant_acc, n, verdict):
    t = encoder_items({("base", 0, 1): 0.9, ("skip", 2, 1): variant_acc, ("reverse", 2, 1): variant_acc}, n=n)
    (row,) = pcx.encoder_claim(t, "enc")
    assert verdicts.word(row["verdict"]) == verdict, row
    assert row["n"] == 2 * n and row["mde"].endswith("pp") and row["n_needed"] is None
    assert "unmodified − variants" in row["interval"] and "variants − chance" in row["interval"]


def test_encoder_at_chance_is_not_testable():
    t = encoder_items({("base", 0, 1): 0.5, ("skip", 2, 1): 0.45})
    (row,) = pcx.encoder_claim(t, "enc")
    assert row["verdict"].startswith(f"{verdicts.NOT_TESTABLE}: model at chance: the unmodified encoder is below the floor")


def test_encoder_rows_read_the_points_items_from_the_store(tmp_path):
    from layerlab.painters import encoder as painters_encoder, rows as painters_rows
    store = results.ResultStore(tmp_path)
    t = encoder_items({("base", 0, 1): 0.9, ("skip", 2, 1): 0.75})
    for i, ((ds, v), part) in enumerate(t.groupby(["dataset", "variant"])):
        meta = dict(model="enc", split="test", n_items=len(part))
        store.put(painters_encoder.ITEMS, f"k{i}", part.assign(technique=painters_encoder.ITEMS, value=part.pred,
                                                               **meta))
        store.put(painters_encoder.TECHNIQUE, f"k{i}", [{"technique": painters_encoder.TECHNIQUE, "dataset": ds,
                                                         "metric": "acc", "value": float((part.pred == part.target)
                                                                                         .mean()), "variant": v,
                                                         **meta}])
    table = store.table(painters_encoder.TECHNIQUE)
    (row,) = painters_rows.encoder_rows(table, "enc", store)
    assert verdicts.word(row["verdict"]) == verdicts.AGREES
    (row,) = painters_rows.encoder_rows(table, "enc")
    assert row["verdict"].startswith(verdicts.NOT_TESTABLE)
    assert [verdicts.word(r["verdict"]) for r in painters_rows.claim_rows(store)] == [verdicts.AGREES]
