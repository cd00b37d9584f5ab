"""Gromov claim verdicts (layerlab.prune.claims) on constructed tables: every outcome of
every verdict function, and prune.chance_fraction on constructed curves."""

import numpy as np
import pandas as pd
import pytest

from layerlab.core.evidence import papers
from layerlab.prune import blocks as prune, claims as prune_claims
from layerlab.core.io import results
from layerlab.core.evidence import verdicts
from layerlab.prune.claims import deep_end


def acc_curve(points):
    """(fraction, value, half-width) -> accuracy rows."""
    return pd.DataFrame([{"fraction": f, "n": round(10 * f), "value": v, "ci_low": v - h, "ci_high": v + h}
                         for f, v, h in points])


# ---------------------------------------------------------------- chance_fraction

def test_chance_fraction_never_at_chance():
    assert prune.chance_fraction(acc_curve([(0, 0.8, 0.05), (0.2, 0.7, 0.05), (0.4, 0.6, 0.05)]), 0.25) is None


def test_chance_fraction_from_the_middle():
    c = acc_curve([(0.4, 0.26, 0.05), (0, 0.8, 0.05), (0.2, 0.5, 0.05), (0.6, 0.24, 0.05)])  # unsorted on purpose
    assert prune.chance_fraction(c, 0.25) == pytest.approx(0.4)


def test_chance_fraction_dips_then_recovers_gives_the_later_fraction():
    c = acc_curve([(0, 0.8, 0.05), (0.2, 0.27, 0.05), (0.4, 0.6, 0.05), (0.6, 0.25, 0.05), (0.8, 0.22, 0.05)])
    assert prune.chance_fraction(c, 0.25) == pytest.approx(0.6)


def test_chance_fraction_interval_just_above_chance_is_not_at_chance():
    assert prune.chance_fraction(acc_curve([(0, 0.8, 0.05), (0.5, 0.31, 0.05)]), 0.25) is None


# ---------------------------------------------------------------- deep end and the final block

def starts(deeper, total, n_layers=40):
    """total block sizes n = 1..total; the first ``deeper`` sit at the deep end, the rest at 0."""
    return pd.DataFrame([{"n": n, "l*": (n_layers - n - 1) if n <= deeper else 0} for n in range(1, total + 1)])


def doc_distances(n_layers, deep, n_docs=12, noise=0.02, seed=0, last=0.9):
    """Per-document distances: d(l, n) = 0.5 - 0.3 (deep: l / L, else 1 - l / L) + noise;
    the final block (n = 1, l = L - 1) at ``last``."""
    rng = np.random.default_rng(seed)
    rows = []
    for doc in range(n_docs):
        for n in range(1, n_layers + 1):
            for layer in range(0, n_layers - n + 1):
                pos = layer / n_layers if deep else 1 - layer / n_layers
                v = last if (n == 1 and layer == n_layers - 1) else 0.5 + 0.05 * n - 0.3 * pos
                rows.append({"doc": doc, "n": n, "layer": layer, "value": v + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_deep_end_resamples_documents():
    deep = doc_distances(12, True)
    assert deep_end(prune_claims.best_starts(deep), 12, deep)["verdict"] == verdicts.AGREES
    shallow = doc_distances(12, False)
    assert deep_end(prune_claims.best_starts(shallow), 12, shallow)["verdict"] == verdicts.DISAGREES
    flat = doc_distances(12, True, noise=0.0).assign(value=lambda f: 0.5 + np.random.default_rng(1).normal(0, 0.05, len(f)))
    assert deep_end(prune_claims.best_starts(flat), 12, flat)["verdict"] == verdicts.INCONCLUSIVE


def test_deep_end_without_documents_is_not_testable_not_a_wilson_interval():
    # 12 of 16 block sizes at the deep end was "agrees" by a Wilson interval over dependent n
    judged = deep_end(starts(12, 16, 32), 32)
    assert judged["verdict"].startswith(verdicts.NOT_TESTABLE) and judged["share"] == pytest.approx(0.75)
    assert deep_end(pd.DataFrame({"n": [30], "l*": [0]}), 40) is None


@pytest.mark.parametrize("last, verdict", [(0.9, verdicts.AGREES), (0.1, verdicts.DISAGREES)])
def test_final_block_most_distinct(last, verdict):
    assert prune_claims.final_block_distinct(doc_distances(8, True, last=last), 8)["verdict"] == verdict


def test_best_starts_groups_by_key_before_idxmin():
    a = pd.DataFrame({"key": "a", "n": 1, "layer": [0, 1, 2], "value": [0.1, 0.5, 0.5], "n_items": 8})
    b = pd.DataFrame({"key": "b", "n": 1, "layer": [0, 1, 2], "value": [0.5, 0.5, 0.2], "n_items": 64})
    assert prune_claims.best_starts(pd.concat([a, b]))["l*"].tolist() == [2]


# ---------------------------------------------------------------- rows from a store

def _items(key, curve, n_items=200, dataset="arc_easy", method="similarity", meta=None):
    rows = []
    for n, acc in curve.items():
        right = (np.arange(n_items) < round(acc * n_items)).astype(float)
        rows.append(pd.DataFrame({"item": np.arange(n_items), "value": right}).assign(
            key=f"{key}{n}", dataset=dataset, metric="acc", method="similarity" if n == 0 else method, n=n,
            healed=False, n_layers=10, model="m", technique="prune_items", split="test", n_items=n_items,
            **(meta or {})))
    return rows


def test_claim_rows_from_a_store(tmp_path):
    store = results.ResultStore(tmp_path)
    curve = {0: 0.7, 1: 0.69, 6: 0.25}  # 0.1: flat for a model of no known family, 0.6 fallen
    for frame in _items("p", curve):
        n = int(frame.n.iloc[0])
        store.put("prune_items", frame.key.iloc[0], frame)
        store.put("prune", frame.key.iloc[0], [{"model": "m", "technique": "prune", "dataset": "arc_easy",
                                                "split": "test", "metric": "acc", "method": "similarity", "n": n,
                                                "healed": False, "fraction": n / 10, "n_layers": 10,
                                                "value": curve[n], "ci_low": 0, "ci_high": 1, "n_items": 200}])
    store.put("prune_distance", "k2", doc_distances(10, True).assign(
        model="m", technique="prune_distance", dataset="c4", split="validation", metric="angular_distance",
        n_items=12))
    rows = pd.DataFrame(prune_claims.claim_rows(store))
    assert set(prune_claims.COLUMNS) <= set(rows.columns)
    assert set(rows["paper"]) == {papers.GROMOV}
    by_number = rows.set_index("paper's number")["verdict"]
    assert verdicts.word(by_number[papers.GROMOV_HOLDS_THEN_FALLS]) == verdicts.AGREES
    assert (rows["statistic"] != "").all() and (rows["n"].astype(int) > 0).all() and "n_needed" in rows
    assert not rows["verdict"].str.contains("bootstrap draws").any()
    assert by_number[papers.GROMOV_DEEP_END] == verdicts.AGREES
    assert by_number[papers.GROMOV_FINAL_BLOCK] == verdicts.AGREES
    assert papers.GROMOV_HEALING not in by_number.index  # nothing healed, no row


def test_curves_without_item_rows_are_not_testable(tmp_path):
    store = results.ResultStore(tmp_path)
    acc = [{"model": "m", "dataset": "arc_easy", "metric": "acc", "method": "similarity", "n": n, "healed": False,
            "fraction": n / 10, "value": v, "ci_low": v - 0.04, "ci_high": v + 0.04}
           for n, v in ((0, 0.7), (3, 0.69), (6, 0.25))]
    store.put("prune", "k1", pd.DataFrame(acc).assign(technique="prune", split="test", n_items=100))
    (row,) = prune_claims.claim_rows(store)
    assert row["verdict"] == f"{verdicts.NOT_TESTABLE}: no data: {prune_claims.NO_ITEMS}"


def test_claim_rows_never_mix_protocols(tmp_path):
    """Points of two protocols (here: 40 vs 100 items) are judged apart, each labelled; the
    larger one is counted."""
    store = results.ResultStore(tmp_path)
    for key, limit, values in (("a", 40, (0.7, 0.69, 0.25)), ("b", 100, (0.7, 0.3, 0.25))):
        meta = {"limit": limit, "seed": 0, "runtime": "float32/cpu", "runtime_id": "x"}
        for frame in _items(key, dict(zip((0, 1, 6), values)), n_items=limit, meta=meta):
            n = int(frame.n.iloc[0])
            store.put("prune_items", frame.key.iloc[0], frame)
            store.put("prune", frame.key.iloc[0], [{
                "model": "m", "technique": "prune", "dataset": "arc_easy", "split": "test", "metric": "acc",
                "method": "similarity", "n": n, "healed": False, "fraction": n / 10, "n_layers": 10,
                "value": frame.value.mean(), "ci_low": 0, "ci_high": 1, "n_items": limit, **meta}])
    rows = pd.DataFrame(prune_claims.claim_rows(store))
    holds = rows[rows.claim.str.contains("holds")].set_index("model")
    assert set(holds.index) == {"m (limit=40, seed=0, runtime=float32/cpu, runtime_id=x)",
                                "m (limit=100, seed=0, runtime=float32/cpu, runtime_id=x)"}
    assert holds["verdict"].iloc[0] != holds["verdict"].iloc[1]
    assert holds.loc["m (limit=100, seed=0, runtime=float32/cpu, runtime_id=x)", "counted"]


def test_per_document_distances_from_their_own_table(tmp_path):
    store = results.ResultStore(tmp_path)
    docs = doc_distances(10, False)
    means = docs.groupby(["n", "layer"], as_index=False)["value"].mean()
    req = dict(model="m", dataset="c4", split="validation", metric="angular_distance", n_items=12)
    store.put("prune_distance", "d", means.assign(technique="prune_distance", **req))
    store.put(prune_claims.DOC_DISTANCES, "d", docs.assign(technique=prune_claims.DOC_DISTANCES, **req))
    rows = pd.DataFrame(prune_claims.claim_rows(store)).set_index("paper's number")["verdict"]
    assert rows[papers.GROMOV_DEEP_END] == verdicts.DISAGREES and rows[papers.GROMOV_FINAL_BLOCK] == verdicts.AGREES
