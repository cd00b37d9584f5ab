"""The claims of "Beyond the papers" on the comparison page.

Each section's notebook decides its claims from its own measured numbers (the ``claims``
function of ``criteria``/``agreement``, ``sublayers``, ``head_healing`` and ``spectrum``)
and records the rows here with ``record``: keyed by the model, the section and the inputs
that produced them (the section's result keys), so a row is reused only for exactly those
numbers. ``claim_rows`` reads every recorded row for ``layerlab.book.compare.claims``.
"""

from __future__ import annotations

import pandas as pd

from layerlab.core.io import results

TECHNIQUE = "beyond_claims"
COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]


def record(store: results.ResultStore, model: str, section: str, inputs: dict, rows: pd.DataFrame) -> str:
    """Store one section's claim rows for ``model`` (columns ``COLUMNS``, plus an optional
    boolean ``counted``); ``inputs``: what the numbers behind them depend on (their result
    keys, the profile's sizes). Replaces the rows recorded for the same inputs. Returns the key."""
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"claim rows lack columns {missing}; required: {', '.join(COLUMNS)}")
    key = results.point_key(model, TECHNIQUE, inputs, section, "claims")
    frame = rows.copy()
    frame["model"] = frame["model"].astype(str)
    frame = frame.assign(section=section, technique=TECHNIQUE, dataset=section, split="claims",
                         metric="verdict", value=float("nan"), n_items=0)
    for col in ("paper's number", "ours", "interval", "verdict"):
        frame[col] = frame[col].astype(str)
    store.put(TECHNIQUE, key, frame)
    return key


def claim_rows(store: results.ResultStore) -> list[dict]:
    """Every recorded claim row (the comparison page's format). Where one model and section
    has rows from several runs (e.g. smoke and quick in one results folder), only the
    run with the most claim rows is counted; the others are shown, not counted."""
    from . import head_healing, sublayer_claims  # decided from the stored points themselves

    rows = [r | {"counted": r.get("counted", True)}
            for r in sublayer_claims.claim_rows(store) + head_healing.claim_rows(store)]
    table = store.table(TECHNIQUE)
    if not len(table):
        return rows
    for (_, _), g in table.groupby(["model", "section"], sort=True):
        sizes = g.groupby("key").size()
        best = sizes.idxmax()
        for _, r in g.iterrows():
            counted = bool(r.get("counted", True)) if pd.notna(r.get("counted", True)) else True
            rows.append({c: r[c] for c in COLUMNS} | {"counted": counted and r["key"] == best})
    return rows
