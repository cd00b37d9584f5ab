"""What the components a LASER reduction removes predict (paper Fig. 5).

For the chosen reduction of matrix W (type tau, layer l, rank fraction rho, k kept
components), three versions of the model differ only in that matrix:

    full     W itself (the unmodified model)
    kept     W_k, the top-k singular components (the LASER model)
    removed  W - W_k, the higher-order components LASER drops (``part='bottom'``)

On every test item of an answer task, each version's top-1 prediction for the answer's
first token is taken, and the items are grouped by what the reduction did: 'corrected'
(wrong with W, right with W_k), 'correct before' (right with W), 'still wrong' (wrong with
both). The paper (Fig. 5, ``papers.LASER_FIG5``) reports that on the corrected items the
model with the FULL matrix often predicts generic, high-frequency words; that the removed
higher-order components alone give an answer of the right semantic type, but wrong (5a);
and that their predictions are on average semantically closer to the true answer (5b).
``fig5`` judges the two measurable halves.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch

from layerlab.core.io import data
from layerlab.core.eval import evaluation
from layerlab.core.evidence import verdicts
from layerlab.core.evidence import papers
from . import rank
from .sweep import Sweeper
from .tasks import item_metrics

GROUPS = ("corrected", "correct before", "still wrong")


def generic_tokens(tokenizer, data_dir=None, n: int = 50, max_chars: int = 400_000) -> set[int]:
    """The ``n`` most frequent token ids of WikiText-2's test text (its first ``max_chars``
    characters, article by article) under ``tokenizer``: the book's "generic
    high-frequency tokens"."""
    counts, used = Counter(), 0
    for article in data.load("wikitext2", "test", data_dir=data_dir):
        counts.update(tokenizer(article["text"], add_special_tokens=False)["input_ids"])
        used += len(article["text"])
        if used >= max_chars:
            break
    return {t for t, _ in counts.most_common(n)}


@torch.no_grad()
def component_predictions(sweeper: Sweeper, best: rank.Reduction, generic: set[int]) -> pd.DataFrame:
    """Per test item of the sweeper's answer task (one row each):

    item, group (one of GROUPS), answer; gold_id (the answer's first token id);
    {full,kept,removed}_id and {full,kept,removed} (decoded): each version's top-1 first
    token; {full,kept,removed}_generic: that prediction is in ``generic``;
    cos_{full,kept,removed}: cosine similarity in [-1, 1] between the input embedding
    (``model.get_input_embeddings()``, float32) of that prediction and of the gold token.
    Every forward pass reruns only blocks best.layer.. from the sweeper's prefix cache."""
    task, model, tok = sweeper.task, sweeper.model, sweeper.tok
    if task.kind != "answer":
        raise ValueError("component_predictions needs an answer task (e.g. counterfact)")
    names = {"full": [], "kept": [best], "removed": [rank.Reduction(best.matrix_type, best.layer, best.rho, "bottom")]}
    got = dict(sweeper.row_scores([names[n] for n in names]))
    scores = {n: got[i] for i, n in enumerate(names)}
    right = {n: item_metrics(task, scores[n])["correct"].to_numpy() == 1 for n in ("full", "kept")}
    group = np.where(right["full"], GROUPS[1], np.where(right["kept"], GROUPS[0], GROUPS[2]))
    gold = np.asarray(scores["full"].first_gold)  # the answer's first token as lm-eval splits it
    emb = model.get_input_embeddings().weight.detach().float()
    unit = lambda ids: torch.nn.functional.normalize(emb[torch.as_tensor(ids, device=emb.device)], dim=-1)  # noqa: E731
    out = {"item": task.item_ids, "group": group, "answer": [c.strip() for c in task.continuations], "gold_id": gold}
    for name, s in scores.items():
        ids = np.asarray(s.first_top)
        out[f"{name}_id"] = ids
        out[name] = [tok.decode([int(t)]) for t in ids]
        out[f"{name}_generic"] = np.isin(ids, list(generic))
        out[f"cos_{name}"] = (unit(ids) * unit(gold)).sum(-1).cpu().numpy()
    frame = pd.DataFrame(out)
    return frame[sweeper.splits == "test"].reset_index(drop=True)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per group of ``component_predictions`` rows: items; % of items whose removed
    components (and whose full matrix) predict a generic token; mean cosine of the removed
    components' and of the full model's prediction to the answer; and the paired
    difference (removed − full) with its 95% paired t interval."""
    rows = []
    for g in GROUPS:
        part = frame[frame.group == g]
        row = {"group": g, "items": len(part)}
        if len(part):
            d, lo, hi = evaluation.paired_difference(part["cos_full"], part["cos_removed"]) if len(part) > 1 else (
                float(part["cos_removed"].iloc[0] - part["cos_full"].iloc[0]), float("nan"), float("nan"))
            row.update({"removed → generic %": 100 * part["removed_generic"].mean(),
                        "full → generic %": 100 * part["full_generic"].mean(),
                        "cos(removed, answer)": part["cos_removed"].mean(),
                        "cos(full, answer)": part["cos_full"].mean(),
                        "Δ cos (removed − full)": f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"})
        rows.append(row)
    return pd.DataFrame(rows)


def fig5(frame: pd.DataFrame) -> dict:
    """The paper's Fig. 5 on the corrected items of ``component_predictions``, two halves:

    generic: the full matrix predicts a generic token more often than the removed
        components do (paired 0/1 per item: score interval of removed − full, below 0);
    closer: the removed components' prediction is closer to the answer than the full
        model's (paired t on the per-item cosine difference, above 0).
    Returns {verdict, ours, interval}; not testable with fewer than two corrected items."""
    c = frame[frame.group == "corrected"]
    if len(c) < 2:
        return {"verdict": verdicts.not_testable(f"{len(c)} corrected test items (2 needed)", cause="no data"), "ours": "", "interval": ""}
    g, glo, ghi = evaluation.paired_difference(c["full_generic"].astype(float), c["removed_generic"].astype(float))
    d, lo, hi = evaluation.paired_difference(c["cos_full"], c["cos_removed"])
    return {"verdict": verdicts.both(verdicts.below(glo, ghi), verdicts.above(lo, hi)),
            "ours": f"{len(c)} corrected items: generic predictions full {100 * c['full_generic'].mean():.0f}%, "
                    f"removed {100 * c['removed_generic'].mean():.0f}%",
            "interval": f"generic, removed − full: {100 * g:+.0f} pp [{100 * glo:+.0f}, {100 * ghi:+.0f}]; "
                        f"cosine to the answer, removed − full: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired t)"}


def describe(table: pd.DataFrame, n_generic: int = 50) -> str:
    """A sentence on the 'corrected' row of ``summary`` (and the paper's Fig. 5 claim)."""
    c = table.set_index("group").loc["corrected"]
    if not c["items"]:
        return "The chosen reduction corrected no test item, so the paper's Fig. 5 comparison has no items here."
    return (f"On the {int(c['items'])} test items LASER corrected, the model with the full matrix predicts one of the "
            f"{n_generic} most frequent WikiText-2 tokens on {c['full → generic %']:.0f}% of them, the removed "
            f"components alone on {c['removed → generic %']:.0f}%; the cosine of their prediction's input embedding "
            f"to the answer's first token is {c['cos(removed, answer)']:.3f} against the full model's "
            f"{c['cos(full, answer)']:.3f} (Δ {c['Δ cos (removed − full)']}). The paper: {papers.LASER_FIG5}.")
