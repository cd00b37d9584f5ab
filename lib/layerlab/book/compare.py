"""The cross-paper comparison: one layer axis per model with the three papers' lenses
(the layer-redundancy atlas), and every headline claim with the paper's number, ours,
an interval and a verdict. Everything is read from the results store."""

from __future__ import annotations

import pandas as pd

from layerlab.beyond import claims as beyond_claims
from layerlab.book import build
from layerlab.laser import claims as laser_claims
from layerlab.laser.sokoban import claims as sokoban_claims
from layerlab.painters import rows as painters_rows
from layerlab.prune import claims as prune_claims
from layerlab.core.io import results
from layerlab.core.evidence import verdicts
from layerlab.prune.claims import holds_then_falls  # noqa: F401  (re-exported: tests call compare.holds_then_falls)

COLUMNS = ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict"]
# the power to tell, on every row: items the primary statistic uses, which statistic, the effect
# it detects with 80% power at that n, and the items that would detect the paper's effect
POWER_COLUMNS = ["n", "statistic", "mde", "n_needed"]
SECONDARY = "secondary"  # a continuous statistic beside the primary one, never judged (stats.secondary)
# why a claim is undecided: its interval admits both (too few items), its counted rows
# disagree with each other, or the cause its "not testable" verdict names (verdicts.CAUSES)
TOO_FEW, ROWS_DIFFER, UNNAMED = "too few items", "rows differ", "cause not named"


def atlas(store: results.ResultStore, model: str, n_block: int = 1) -> pd.DataFrame:
    """Per layer l of ``model`` (rows: layer, lens, value, description):

    laser_gain: the best CounterFact validation accuracy change (pp) of any single
        reduction at layer l, within one protocol (the one with the most validation items;
        the test split is left for the claims); angular_distance: Gromov's d(x_l, x_{l+n}) for n = n_block;
    skip_cost / swap_cost: normalised loss increase when block l is skipped / swapped with
        block l + 1 (Painters-style, one layer at a time).
    """
    frames = []
    laser = store.table("laser")
    if len(laser):
        cf = laser[(laser.model == model) & (laser.dataset == "counterfact") & (laser.metric == "acc")
                   & (laser.n_reductions <= 1) & (laser.split == "val")]
        if len(cf):
            cf = cf[cf.protocol == cf.groupby("protocol")["n_items"].max().sort_index().idxmax()]
        pooled = cf.groupby(["matrix_type", "layer", "rho"], as_index=False)["value"].mean().rename(
            columns={"value": "acc"})
        base = pooled[pooled.matrix_type == "base"]["acc"]
        if len(base):
            gains = pooled[pooled.matrix_type != "base"].groupby("layer", as_index=False)["acc"].max()
            frames.append(pd.DataFrame({"layer": gains["layer"].astype(int), "lens": "laser_gain",
                                        "value": 100 * (gains["acc"] - base.iloc[0])}))
    dist = store.table("prune_distance")
    if len(dist):
        d = dist[(dist.model == model) & (dist.n == n_block)]
        frames.append(pd.DataFrame({"layer": d["layer"].astype(int), "lens": "angular_distance", "value": d["value"]}))
    sens = store.table("painters_layer")
    if len(sens):
        s = sens[sens.model == model]
        if "doc" in s:
            s = s[s["doc"].isna()]  # the over-all-tokens rows; per-document rows feed the ends claim
        for variant, lens in (("skip", "skip_cost"), ("swap_next", "swap_cost")):
            part = s[s.variant == variant]
            frames.append(pd.DataFrame({"layer": part["layer"].astype(int), "lens": lens, "value": part["value"]}))
    if not frames:
        return pd.DataFrame(columns=["layer", "lens", "value"])
    return pd.concat(frames, ignore_index=True)


def models(store: results.ResultStore) -> list[str]:
    """Every model with a stored result in any chapter."""
    found: set[str] = set()
    for technique in ("laser", "prune_distance", "prune", "painters", "painters_layer"):
        t = store.table(technique)
        if len(t):
            found |= set(t["model"])
    return sorted(found)


def claim_words(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (paper, claim, model) with its counted verdict word.

    Every verdict must parse to one of the four words (``verdicts.word`` raises
    otherwise). Rows with ``counted`` False (per-seed rows beside a pooled one, the
    secondary protocols of a model) are shown but not counted; the model of a labelled row
    ("m (seed 0)", "m (protocol ...)") is its name before the label. A claim with several
    counted rows (sizes, n) counts once: the word its testable rows share, inconclusive when
    they differ, not testable when none is testable. Rows whose verdict is "not run" are in
    no count: they are listed by ``full_adds``."""
    words = table["verdict"].map(verdicts.word)
    counted = table["counted"].fillna(True).astype(bool) if "counted" in table else pd.Series(True, table.index)
    counted &= words != verdicts.NOT_RUN  # a claim the profile does not run is in no count (``full_adds``)
    t = table.assign(word=words, model=table["model"].astype(str).str.split(" (", regex=False).str[0])[counted]
    rows = []
    for (paper, claim, model), g in t.groupby(["paper", "claim", "model"], sort=False):
        testable = set(g["word"]) - {verdicts.NOT_TESTABLE}
        word = (verdicts.NOT_TESTABLE if not testable else testable.pop() if len(testable) == 1
                else verdicts.INCONCLUSIVE)
        rows.append({"paper": paper, "claim": claim, "model": model, "word": word, "rows": len(g),
                     "reason": _reason(word, g, len(testable) > 1)})
    return pd.DataFrame(rows, columns=["paper", "claim", "model", "word", "rows", "reason"])


def _reason(word: str, g: pd.DataFrame, rows_differ: bool) -> str:
    """"decided", or the class of reason a claim is undecided (``TOO_FEW``, ``ROWS_DIFFER``,
    one of ``verdicts.CAUSES``, or ``UNNAMED`` for a not-testable verdict without a cause)."""
    if word in (verdicts.AGREES, verdicts.DISAGREES):
        return "decided"
    if word == verdicts.INCONCLUSIVE:
        return ROWS_DIFFER if rows_differ else TOO_FEW
    causes = [c for c in g["verdict"].map(verdicts.cause) if c]
    return causes[0] if causes else UNNAMED


def decision_table(table: pd.DataFrame) -> pd.DataFrame:
    """Claims decided and undecided per paper (and "all papers"), the undecided by reason
    class (``_reason``): integer counts and the share decided in %. Columns for a reason
    class appear only when some claim has it."""
    words = claim_words(table)
    reasons = [TOO_FEW, ROWS_DIFFER, *verdicts.CAUSES, UNNAMED]
    out = pd.crosstab(words["paper"], words["reason"]).reindex(columns=["decided", *reasons], fill_value=0)
    out.insert(0, "claims", out.sum(axis=1))
    out.insert(2, "agrees", words[words.word == verdicts.AGREES].groupby("paper").size().reindex(out.index).fillna(0))
    out.insert(3, "disagrees", words[words.word == verdicts.DISAGREES].groupby("paper").size().reindex(out.index)
               .fillna(0))
    out.loc["all papers"] = out.sum()
    out = out.astype(int)
    out = out[[c for c in out.columns if c not in reasons or out[c].sum() > 0]]
    out["decided %"] = (100 * out["decided"] / out["claims"].where(out["claims"] > 0)).round(0).fillna(0).astype(int)
    return out


def full_adds(table: pd.DataFrame, profile: str) -> pd.DataFrame:
    """What the full profile adds to a run of ``profile``: the claim rows this profile did
    not run (verdict "not run: <what>"), then every (notebook, model) of the full plan that
    this profile's plan leaves out. Columns: paper, claim, model, what full adds."""
    rows = [{"paper": r["paper"], "claim": r["claim"], "model": r["model"],
             "what full adds": r["verdict"].split(": ", 1)[-1]}
            for _, r in table.iterrows() if verdicts.is_not_run(r["verdict"])]
    if profile != "full" and profile in build.PLANS:
        ran = {(t, m) for t, m, _ in build.PLANS[profile]}
        for t, m, _ in build.PLANS["full"]:
            if (t, m) not in ran:
                rows.append({"paper": build.CHAPTER_OF.get(t, t), "claim": f"every claim of the {t} notebook",
                             "model": m, "what full adds": "the notebook on this model (not in this profile's plan)"})
    return pd.DataFrame(rows, columns=["paper", "claim", "model", "what full adds"])


def verdict_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Claims (not rows: ``claim_words``) per paper and verdict (rows: paper; columns: the
    four verdicts, total)."""
    words = claim_words(table)
    counts = pd.crosstab(words["paper"], words["word"]).reindex(columns=list(verdicts.VERDICTS), fill_value=0)
    counts.loc["all papers"] = counts.sum()
    return counts.assign(total=counts.sum(axis=1))


def atlas_correlations(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlations between the lenses across layers."""
    wide = frame.pivot_table(index="layer", columns="lens", values="value")
    return wide.loc[:, wide.nunique() > 1].corr(method="spearman", min_periods=3)


def constant_lenses(frame: pd.DataFrame) -> list[str]:
    """Lenses with one value at every layer: they have no ranks, so no correlation and no
    chart can show them (the page says so in words)."""
    wide = frame.pivot_table(index="layer", columns="lens", values="value")
    return [c for c in wide.columns if wide[c].nunique() <= 1]


def claims(store: results.ResultStore) -> pd.DataFrame:
    """Every headline claim of the three papers that the stored results can test: one
    row per (claim, model) with the paper's number, ours, the interval and a verdict."""
    rows = laser_claims.claim_rows(store)
    rows += prune_claims.claim_rows(store)  # Gromov et al.: the prune chapter's own verdicts
    rows += painters_rows.claim_rows(store)  # Sun et al.
    rows += sokoban_claims.claim_rows(store)  # LASER outside language: the Sokoban Decision Transformer (paper Table 2)
    rows += beyond_claims.claim_rows(store)
    table = pd.DataFrame(rows, columns=COLUMNS + ["counted"] + POWER_COLUMNS + [SECONDARY])
    table["n"] = pd.to_numeric(table["n"], errors="coerce").astype("Int64")
    table["n_needed"] = pd.to_numeric(table["n_needed"], errors="coerce").astype("Int64")
    table[["statistic", "mde", SECONDARY]] = table[["statistic", "mde", SECONDARY]].fillna("")
    table["counted"] = table["counted"].fillna(True).astype(bool)
    table["verdict"].map(verdicts.word)
    return table


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as the page prints it: a missing number (n, n_needed) is a blank
    cell, not <NA> (the integer columns cannot hold a blank, so every column is an object)."""
    return table.astype(object).where(table.notna(), "")
