"""Painters claims judged on per-document contrasts, and the encoder claim on per-item
rows: where the decoders' median bootstrap (``painters_claims``) does not apply.

- shared space (Fig. 3): per document, the mean cosine between different middle layers
  minus the mean cosine between a middle layer and the first or last layer, on centred
  states; paired t over documents, against 0. An absolute cosine (e.g. > 0.5) with no
  contrast is not a test: anisotropic hidden states make every cosine high.
- the ends are needed (Sec. 3.1): per document, the loss increase from skipping the first
  or last block minus the mean increase from skipping one middle block; paired t.
- the encoder (appendix): per-item correctness of the fixed head, resampled like the
  decoders' items, normalised against the unmodified encoder on each GLUE task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from layerlab.core.evidence import stats, verdicts
from .claims import BASE, N_BOOT, SIMILARITY, Bootstrap, _row, interval, undefined

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
        return _row("shared_space", model, "", "", verdicts.not_testable("no per-document contrast measured"))
    d, lo, hi = stats.paired_t(np.zeros_like(x), x)
    return _row("shared_space", model, f"middle-middle minus middle-ends cosine {d:+.3f} ({len(x)} documents, "
                f"centred states)", f"[{lo:+.3f}, {hi:+.3f}] vs 0 (paired t)", verdicts.above(lo, hi))


def stored_contrast(store, model: str) -> dict:
    """``shared_space`` on the stored per-document contrast rows (metric ``CONTRAST`` of
    ``SIMILARITY``, the point with the most documents); not testable when only absolute
    cosines are stored."""
    sim = store.table(SIMILARITY)
    mine = sim[(sim.model == model) & (sim.metric == CONTRAST)] if len(sim) else sim
    if not len(mine):
        return _row("shared_space", model, "", "", verdicts.not_testable(
            "only absolute middle-layer cosines are stored; the claim needs the per-document contrast "
            "against the first and last layers on centred states"))
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
        return _row("ends_needed", model, "", "", verdicts.not_testable(
            "the per-layer skip lens did not run (the full profile runs it, or -p layer_sensitivity True)"))
    if "doc" not in mine or mine["doc"].isna().all():
        return _row("ends_needed", model, "", "", verdicts.not_testable(
            "per-layer skip costs are stored as means over documents; per-document costs are needed"))
    x = layer_skip_contrast(mine)
    d, lo, hi = stats.paired_t(np.zeros_like(x), x)
    return _row("ends_needed", model, f"ends minus middle skip cost {d:+.4f} ({len(x)} documents)",
                f"[{lo:+.4f}, {hi:+.4f}] vs 0 (paired t)", verdicts.above(lo, hi))


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


def encoder_claim(items: pd.DataFrame, model: str, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Appendix: per affected size, the median over variants of each variant's median
    normalised GLUE score (fixed head; tasks above the floor) lies above 0 (better than
    chance) and below 1 (worse than the unmodified encoder): both on the paired item
    bootstrap. Not testable below the floor or with > 1% undefined draws."""
    from .encoder import CHANCE

    t = encoder_items(items)
    if not len(t):
        return [_row("encoder", model, "", "", verdicts.not_testable("no per-item encoder rows"))]
    boot = Bootstrap(t, n_boot, seed, chance=CHANCE)
    bench = [d for d in sorted(boot.mats) if BASE in boot.mats[d] and boot.informative(d)]
    if not bench:
        return [_row("encoder", model, "", "", verdicts.not_testable(
            "the unmodified encoder is below the floor on every task"))]
    rows = []
    for a in sorted({int(x) for x in t.loc[t.variant != "base", "affected"]}):
        labels = sorted({lab for d in bench for lab in boot.mats[d] if lab[1] == a and
                         all(lab in boot.mats[x] for x in bench)})
        meds = [boot.median(lab, bench) for lab in labels]
        point = float(np.median([m[0] for m in meds]))
        draws = np.median(np.vstack([m[1] for m in meds]), axis=0)
        gone = undefined(draws)
        lo, hi = interval(draws)
        rows.append(_row("encoder", model, f"{a} layers: median over {len(labels)} variants of the median normalised "
                         f"score on {len(bench)} tasks: {point:.2f}", f"[{lo:.2f}, {hi:.2f}] (item bootstrap)",
                         gone or verdicts.both(verdicts.above(lo, hi, 0.0), verdicts.below(lo, hi, 1.0))))
    return rows


def encoder_rows(store, model: str, table: pd.DataFrame | None = None) -> list[dict]:
    """``encoder_claim`` on the stored per-item encoder rows of ``model`` (only those of the
    points of the summary rows ``table``, when given); not testable without a store."""
    from .encoder import ITEMS

    if store is None:
        return [_row("encoder", model, "", "", verdicts.not_testable("the per-item rows need the results store"))]
    items = store.table(ITEMS)
    if len(items) and table is not None and "key" in table:
        items = items[items["key"].isin(set(table["key"]))]
    return encoder_claim(items[items.model == model] if len(items) else items, model)
