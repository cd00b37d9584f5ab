"""Fig. 5 analysis against an independent computation on a tiny model."""

import numpy as np
import torch

from layerlab import laser, laser_analysis, rank, results, scoring
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
