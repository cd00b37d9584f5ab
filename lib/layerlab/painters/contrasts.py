"""Painters claims judged on per-document contrasts, and the encoder claim on per-item
rows: where the decoders' paired accuracy comparisons (``painters.claims``) do not apply.

- shared space (Fig. 3): per document, the mean cosine between different middle layers
  minus the mean cosine between a middle layer and the first or last layer, on centred
  states; paired t over documents, against 0. An absolute cosine (e.g. > 0.5) with no
  contrast is not a test: anisotropic hidden states make every cosine high.
- the ends are needed (Sec. 3.1): per document, the loss increase from skipping the first
  or last block minus the mean increase from skipping one middle block; paired t.
- the encoder (appendix): per item, the mean over the variants run at a size of the fixed
  head's 0/1 correctness; below the unmodified encoder (paired t) and above chance (t),
  pooled over the GLUE tasks above the floor.

Every row carries n (documents or items), statistic, mde and n_needed (None: the paper
states no number, so these are direction tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.evidence import power, stats, verdicts
from .claims import SIMILARITY, _row
from .paired import BASE, Part, Scores, columns, mean_t, union

CONTRAST = "middle_contrast"   # metric of the per-document contrast rows in SIMILARITY
LAYER_TABLE = "painters_layer"


def middle_layers(n_layers: int) -> np.ndarray:
    """Block boundaries counted as middle: L/4 <= i <= 3L/4 (0 = the embeddings)."""
    return np.arange(int(np.ceil(n_layers / 4)), int(np.floor(3 * n_layers / 4)) + 1)


def middle_contrast(sims: np.ndarray) -> np.ndarray:
    """Per document [docs]: mean cosine between different middle boundaries minus the mean
    cosine between a middle boundary and an end (boundary 1: after the first block; L:
    after the last). sims: [docs, L + 1, L + 1] cosine similarities of centred states
    (``painters.hidden_similarity`` per document after subtracting each boundary's mean state)."""
    sims = np.asarray(sims, float)
    n_layers = sims.shape[-1] - 1
    mid = middle_layers(n_layers)
    inner = sims[:, mid][:, :, mid]
    off = ~np.eye(len(mid), dtype=bool)
    ends = sims[:, mid][:, :, [1, n_layers]]
    return inner[:, off].mean(-1) - ends.reshape(len(sims), -1).mean(-1)


def shared_space(doc_contrast, model: str) -> dict:
    """Middle layers share a representation space: the per-document contrast
    (``middle_contrast``) has its paired t 95% interval above 0."""
    x = np.asarray(doc_contrast if doc_contrast is not None else [], float)
    if len(x) < 2:
        return _row("shared_space", model, "", "", verdicts.not_testable("no per-document contrast measured", cause="no data"))
    d, lo, hi = stats.paired_t(np.zeros_like(x), x)
    cols = _t_columns(x, "paired t over documents, middle-middle minus middle-ends cosine", "(cosine)")
    return _row("shared_space", model, f"middle-middle minus middle-ends cosine {d:+.3f} ({len(x)} documents, "
                f"centred states)", f"[{lo:+.3f}, {hi:+.3f}] vs 0 (paired t)",
                verdicts.direction(lo, hi, unit="(cosine)", scale=1.0, power_note=cols.pop("power_note")), cols)


def _t_columns(x: np.ndarray, statistic: str, unit: str) -> dict:
    """Power keys of a t test of the values [n] against 0 (MDE in the values' units) and the
    note an inconclusive verdict carries."""
    sd = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    mde = power.mde_paired_t(len(x), sd)
    return {"n": len(x), "statistic": statistic, "mde": "" if np.isnan(mde) else f"{mde:.3g} {unit}",
            "n_needed": None, "power_note": power.note(len(x), mde, None, unit=unit, scale=1.0)}


def stored_contrast(store, model: str) -> dict:
    """``shared_space`` on the stored per-document contrast rows (metric ``CONTRAST`` of
    ``SIMILARITY``, the point with the most documents); not testable when only absolute
    cosines are stored."""
    sim = store.table(SIMILARITY)
    mine = sim[(sim.model == model) & (sim.metric == CONTRAST)] if len(sim) else sim
    if not len(mine):
        return _row("shared_space", model, "", "", verdicts.not_testable(
            "only absolute middle-layer cosines are stored; the claim needs the per-document contrast "
            "against the first and last layers on centred states", cause="no data"))
    return shared_space(mine[mine.key == mine.groupby("key").size().idxmax()]["value"].to_numpy(), model)


def layer_skip_contrast(per_doc: pd.DataFrame) -> np.ndarray:
    """Per document [docs]: mean loss increase from skipping block 0 or block L - 1 minus the
    mean increase from skipping one middle block. per_doc: rows doc, layer (block skipped),
    value (increase in normalised loss)."""
    wide = per_doc.pivot_table(index="doc", columns="layer", values="value")
    n_layers = int(wide.columns.max()) + 1
    mid = [c for c in middle_layers(n_layers) if c in wide.columns]
    return (wide[[0, n_layers - 1]].mean(1) - wide[mid].mean(1)).to_numpy()


def ends_needed(store, model: str) -> dict:
    """The first and last blocks cannot be skipped: ``layer_skip_contrast`` above 0 (paired
    t over documents). Not testable when the skip costs are stored as means over documents."""
    t = store.table(LAYER_TABLE)
    mine = t[(t.model == model) & (t.variant == "skip")] if len(t) else t
    if not len(mine):
        return _row("ends_needed", model, "", "", verdicts.not_run(
            "the per-layer skip lens (the full profile runs it, or -p layer_sensitivity True)"))
    if "doc" not in mine or mine["doc"].isna().all():
        return _row("ends_needed", model, "", "", verdicts.not_testable(
            "per-layer skip costs are stored as means over documents; per-document costs are needed",
            cause="no data"))
    x = layer_skip_contrast(mine)
    d, lo, hi = stats.paired_t(np.zeros_like(x), x)
    cols = _t_columns(x, "paired t over documents, ends minus middle skip cost", "(loss / log V)")
    return _row("ends_needed", model, f"ends minus middle skip cost {d:+.4f} ({len(x)} documents)",
                f"[{lo:+.4f}, {hi:+.4f}] vs 0 (paired t)",
                verdicts.direction(lo, hi, unit="(loss / log V)", scale=1.0, power_note=cols.pop("power_note")), cols)


def one_sample(items: pd.DataFrame) -> pd.DataFrame:
    """One item sample per benchmark when a results dir holds several runs (profiles):
    the rows with the unmodified model's largest n_items, and the smallest lm-eval seed."""
    if "eval_seed" in items:
        items = items[items["eval_seed"] == items["eval_seed"].min()]
    if "n_items" not in items:
        return items
    n = items[items.variant == "base"].groupby("dataset")["n_items"].max()
    return items[items["n_items"] == items["dataset"].map(n)]


def encoder_items(items: pd.DataFrame) -> pd.DataFrame:
    """Per-item correctness rows (dataset, item, value 0/1, variant, affected, loops,
    order_seed) of the encoder's classification tasks (STS-B, a correlation, is left out)."""
    c = items[items["metric"] == "acc"]
    return c.assign(value=(c["pred"] == c["target"]).astype(float))[
        ["dataset", "item", "value", "variant", "affected", "loops", "order_seed"]]


def encoder_claim(items: pd.DataFrame, model: str) -> list[dict]:
    """Appendix: per affected size, the encoder with variants is worse than the unmodified one
    and better than chance (fixed head). Per item of the GLUE tasks above the floor (pooled),
    m_i = the mean over the variants run at that size (order seeds averaged) of the 0/1
    correctness; parts: unmodified_i - m_i > 0 (paired t) and m_i - chance > 0 (t), both
    95% intervals on the claimed side to agree, Holm over the two for a reversal."""
    from .encoder import CHANCE

    t = encoder_items(items)
    if not len(t):
        return [_row("encoder", model, "", "", verdicts.not_testable("no per-item encoder rows", cause="no data"))]
    scores = Scores(t, chance=CHANCE)
    bench = [d for d in sorted(scores.mats) if BASE in scores.mats[d] and scores.informative(d)]
    if not bench:
        return [_row("encoder", model, "", "", verdicts.not_testable(
            "the unmodified encoder is below the floor on every task", cause="model at chance"))]
    rows = []
    for a in sorted({int(x) for x in t.loc[t.variant != "base", "affected"]}):
        labels = sorted({lab for d in bench for lab in scores.mats[d] if lab[1] == a and
                         all(lab in scores.mats[x] for x in bench)})
        if not labels:
            rows.append(_row("encoder", model, f"{a} layers", "", verdicts.not_testable(
                "no variant ran on every task above the floor", cause="no data")))
            continue
        m = np.mean([scores.pooled(lab, bench).mean(0) for lab in labels], axis=0)   # [items]
        base = scores.pooled(BASE, bench)[0]
        parts = [Part("unmodified − variants", *_t(base - m), "paired t over items"),
                 Part("variants − chance", *_t(m - scores.chance_of(bench)), "t over items")]
        rows.append(_row("encoder", model, f"{a} layers: accuracy pooled over {', '.join(bench)} ({len(m)} items): "
                         f"unmodified {100 * base.mean():.1f}%, mean of {len(labels)} variants {100 * m.mean():.1f}%",
                         "; ".join(p.text() for p in parts), union(parts),
                         columns(parts, bench) | {"statistic": f"t over items of the mean over {len(labels)} variants, "
                                                               f"accuracy, {len(bench)} task(s); IUT / Holm over 2 parts"}))
    return rows


def _t(x: np.ndarray) -> tuple:
    """(diff, lo, hi, p, n, mde) of a one-sample t over items, for ``Part``."""
    d, lo, hi, p, mde = mean_t(x)
    return d, lo, hi, p, len(x), mde


def encoder_rows(store, model: str, table: pd.DataFrame | None = None) -> list[dict]:
    """``encoder_claim`` on the stored per-item encoder rows of ``model`` (only those of the
    points of the summary rows ``table``, when given); not testable without a store."""
    from .encoder import ITEMS

    if store is None:
        return [_row("encoder", model, "", "", verdicts.not_testable("the per-item rows need the results store", cause="no data"))]
    items = store.table(ITEMS)
    if len(items) and table is not None and "key" in table:
        items = items[items["key"].isin(set(table["key"]))]
    return encoder_claim(items[items.model == model] if len(items) else items, model)
