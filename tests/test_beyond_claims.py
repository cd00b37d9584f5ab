"""Claim rows of "Beyond the papers" recorded by a section and read by the comparison page."""

import pandas as pd
import pytest

from layerlab.beyond import claims as beyond_claims
from layerlab.book import compare
from layerlab.core.io import results


def _rows(verdict: str, n: int = 1) -> pd.DataFrame:
    return pd.DataFrame([{"paper": "Lu et al. 2024", "claim": f"claim {i}", "paper's number": "beats",
                          "model": "m", "ours": "0.1", "interval": "[0.0, 0.2]", "verdict": verdict} for i in range(n)])


def test_recorded_rows_reach_the_comparison_table(tmp_path):
    store = results.ResultStore(tmp_path)
    beyond_claims.record(store, "m", "criteria", {"profile": "smoke"}, _rows("agrees"))
    beyond_claims.record(store, "m", "criteria", {"profile": "quick"}, _rows("disagrees", 2))
    rows = beyond_claims.claim_rows(store)
    assert len(rows) == 3
    counted = [r for r in rows if r["counted"]]
    assert [r["verdict"] for r in counted] == ["disagrees", "disagrees"]  # the run with more rows counts
    table = compare.claims(store)
    mine = table[table["paper"] == "Lu et al. 2024"]
    assert len(mine) == 3 and set(mine["verdict"]) == {"agrees", "disagrees"}
    words = compare.claim_words(table)
    assert set(words[words.paper == "Lu et al. 2024"]["word"]) == {"disagrees"}


def test_rows_without_the_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="verdict"):
        beyond_claims.record(results.ResultStore(tmp_path), "m", "criteria", {}, _rows("agrees").drop(columns="verdict"))
