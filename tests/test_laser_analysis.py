"""Fig. 5 analysis against an independent computation on a tiny model."""

import numpy as np
import pandas as pd
import torch

from layerlab.laser import sweep as laser, analysis as laser_analysis, rank
from layerlab.core.io import results
from layerlab.core.eval import scoring
from tiny import CharTokenizer, facts_file, tiny_model


def test_component_predictions_match_direct_edits(tmp_path):
    model = tiny_model("llama")
    tok = CharTokenizer()
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, tok, "tiny", task, results.ResultStore(tmp_path / "r"), max_tokens_per_batch=64)
    best = rank.Reduction("mlp_in", 2, 0.25)
    # kept + removed = the full weight
    cache = rank.SVDCache(model)
    kept_w = cache.approximation(best)
    removed_w = cache.approximation(rank.Reduction(best.matrix_type, best.layer, best.rho, "bottom"))
    torch.testing.assert_close(kept_w + removed_w, cache.original("mlp_in", 2), atol=1e-5, rtol=0)
    generic = {tok(" ")["input_ids"][0], tok("x")["input_ids"][0]}
    frame = laser_analysis.component_predictions(sweeper, best, generic)
    test = np.flatnonzero(sweeper.splits == "test")
    assert len(frame) == len(test) and list(frame["item"]) == [task.item_ids[i] for i in test]
    emb = model.get_input_embeddings().weight.detach()
    gold = torch.tensor([tok(task.continuations[i], add_special_tokens=False)["input_ids"][0] for i in test])
    direct = {}
    for name, part in (("full", None), ("kept", "top"), ("removed", "bottom")):
        reds = [] if part is None else [rank.Reduction(best.matrix_type, best.layer, best.rho, part)]
        with rank.reduced(model, reds):  # the model's own forward pass, no prefix cache
            s = scoring.score_full(model, sweeper.scorer.batches, len(task.contexts))
        direct[name] = s
        ids = torch.as_tensor(s.first_top[test])
        assert (frame[f"{name}_id"].to_numpy() == ids.numpy()).all()
        cos = torch.nn.functional.cosine_similarity(emb[ids], emb[gold], dim=-1).numpy()
        np.testing.assert_allclose(frame[f"cos_{name}"], cos, atol=1e-5)
        assert (frame[f"{name}_generic"] == np.isin(ids.numpy(), list(generic))).all()
    right = {n: direct[n].first_rank[test] == 0 for n in ("full", "kept")}
    expect = np.where(right["full"], "correct before", np.where(right["kept"], "corrected", "still wrong"))
    assert (frame["group"].to_numpy() == expect).all()
    table = laser_analysis.summary(frame)
    assert list(table["group"]) == list(laser_analysis.GROUPS)
    assert table["items"].sum() == len(frame)


def test_generic_tokens_are_the_most_frequent_wikitext_tokens():
    tok = CharTokenizer()
    ids = laser_analysis.generic_tokens(tok, n=5, max_chars=20_000)
    assert len(ids) == 5 and tok(" ")["input_ids"][0] in ids  # the space is the commonest character


def _frame(full_generic, removed_generic, cos_full, cos_removed, group="corrected"):
    n = len(full_generic)
    return pd.DataFrame({"group": group, "full_generic": np.asarray(full_generic, bool),
                         "removed_generic": np.asarray(removed_generic, bool), "cos_full": cos_full,
                         "cos_removed": cos_removed, "item": np.arange(n)})


def test_fig5_follows_the_paper_full_matrix_generic_removed_closer():
    from layerlab.core.evidence import papers
    from layerlab.core.evidence import verdicts
    assert "FULL matrix" in papers.LASER_FIG5 and "closer to" in papers.LASER_FIG5
    rng = np.random.default_rng(0)
    n = 60
    paper_like = _frame(np.arange(n) < 40, np.arange(n) < 5, rng.normal(0.1, 0.05, n), rng.normal(0.3, 0.05, n))
    assert laser_analysis.fig5(paper_like)["verdict"] == verdicts.AGREES
    # the book's former reading (the removed components predict the generic words) disagrees
    reversed_ = _frame(np.arange(n) < 5, np.arange(n) < 40, rng.normal(0.3, 0.05, n), rng.normal(0.1, 0.05, n))
    assert laser_analysis.fig5(reversed_)["verdict"] == verdicts.DISAGREES
    unclear = _frame(np.arange(n) < 20, np.arange(n) < 19, rng.normal(0.2, 0.05, n), rng.normal(0.2, 0.05, n))
    assert laser_analysis.fig5(unclear)["verdict"] == verdicts.INCONCLUSIVE
    assert laser_analysis.fig5(paper_like.iloc[:1])["verdict"].startswith(verdicts.NOT_TESTABLE)
    table = laser_analysis.summary(paper_like)
    assert "The paper: GPT-J CounterFact" in laser_analysis.describe(table)
