"""The Painters rows of the comparison page: the decoder claims per model and protocol on
the per-item accuracies (``claims``, paired tests of ``paired``), the shared-space and ends
contrasts and the encoder claim (``contrasts``). Every row has ``claims.COLUMNS`` and the power
keys n, statistic, mde, n_needed."""

from __future__ import annotations

import pandas as pd

from layerlab.core.model import schedule
from layerlab.core.evidence import verdicts
from layerlab.painters import encoder as painters_encoder, grid as painters
from layerlab.painters.claims import (Scores, _row, best_loops_grow, least_degrading, looped_parallel,
                                      middle_repeat_worst, not_all_needed, order, parallel_between, parallel_gsm8k)
from layerlab.painters.contrasts import ends_needed, one_sample, shared_space, stored_contrast
from layerlab.painters.contrasts import encoder_rows as _encoder_rows


def model_rows(items: pd.DataFrame, model: str, doc_cosines=None, doc_contrast=None) -> list[dict]:
    """Every decoder claim for one model's per-item rows, one row per claim and size; the
    shared-space row from ``doc_contrast`` [docs] (``painters_contrasts.middle_contrast``).
    Absolute per-document cosines (``doc_cosines``) are no test: that row is not testable."""
    if not len(items):
        return []
    # the paper's claims compare the paper's variants: sublayer variants, when run, are shown, not judged
    items = one_sample(items[items.variant.isin(("base",) + schedule.VARIANTS)])
    scores = Scores(items)
    sizes = sorted({int(a) for a in items.loc[items.variant != "base", "affected"]})
    rows = ([shared_space(doc_contrast, model)] if doc_contrast is not None else
            [_row("shared_space", model, "", "", verdicts.not_testable(
                "an absolute cosine has no contrast; needs middle_contrast per document", cause="no data"))]
            if doc_cosines is not None else [])
    for a in sizes:
        rows += [not_all_needed(scores, model, a), middle_repeat_worst(scores, model, a), order(scores, model, a),
                 parallel_between(scores, model, a), looped_parallel(scores, model, a), least_degrading(scores, model, a)]
    gsm = sorted({int(a) for a in items.loc[(items.dataset == "gsm8k") & (items.variant == "parallel"), "affected"]})
    rows += [parallel_gsm8k(scores, model, a) for a in (gsm or sizes[len(sizes) // 2:][:1])]
    return rows + [best_loops_grow(scores, model)]


PROTOCOL_COLUMNS = ("runtime", "runtime_id", "code_version")


def claim_rows(store) -> list[dict]:
    """The Painters rows of the comparison table (columns ``COLUMNS``, plus ``counted``)
    from a results store: per model and protocol (runtime, weights, code version, where the
    rows carry them; only the protocol with the most rows is counted), the decoder claims on
    the per-item rows; the shared-space contrast; the per-layer skip costs; the encoder."""
    items = store.table(painters.ITEMS)
    rows = []
    for model in sorted(items["model"].unique()) if len(items) else []:
        mine = items[items.model == model]
        cols = [c for c in PROTOCOL_COLUMNS if c in mine and mine[c].notna().any()]
        groups = list(mine.groupby(cols, dropna=False, sort=True)) if cols else [((), mine)]
        biggest = max(range(len(groups)), key=lambda j: (len(groups[j][1]), j))
        for i, (k, part) in enumerate(groups):
            label = ", ".join(str(v) for v in (k if isinstance(k, tuple) else (k,)) if not pd.isna(v))
            name = model if len(groups) == 1 else f"{model} ({label})"
            rows += [r | {"model": name, "counted": i == biggest} for r in model_rows(part, model)]
        rows += [r | {"counted": True} for r in (stored_contrast(store, model), ends_needed(store, model))]
    enc = store.table(painters_encoder.TECHNIQUE)
    for model in sorted(enc["model"].unique()) if len(enc) else []:
        rows += encoder_rows(enc[enc.model == model], model, store)
    return rows


def encoder_rows(table: pd.DataFrame, model: str, store=None) -> list[dict]:
    """The encoder claim on ``table``'s points' per-item rows in ``store`` (``painters_contrasts``)."""
    return _encoder_rows(store, model, table)
