"""prune_curve: cached curve points against an independent computation, their keys, the
curve orchestration on a tiny model (loss only: no lm-eval task), and the profiles."""

import pytest
import torch

from layerlab.prune import healing, blocks as prune, curve as prune_curve
from layerlab.core.eval import lm_loss, prefix_eval
from layerlab.core.io import results
from tiny import N_LAYERS, tiny_batch, tiny_model


def chunks(seed=0, n=6, length=16):
    return torch.randint(3, 97, (n, length), generator=torch.Generator().manual_seed(seed))


def test_curve_point_loss_matches_a_really_pruned_model_and_is_read_back(tmp_path, monkeypatch):
    model, store, loss_chunks = tiny_model("llama"), results.ResultStore(tmp_path), chunks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = prune_curve.curve_point(model, None, "tiny", store, "similarity", 2, [1, 2], [], None, loss_chunks)
    expected, se = lm_loss.normalised_loss(prune.pruned_copy(model, [1, 2]), loss_chunks)
    row = rows[rows.dataset == "heldout"].iloc[0]
    assert row["value"] == pytest.approx(expected, abs=1e-6) and row["stderr"] == pytest.approx(se, abs=1e-6)
    assert row["blocks"] == "1,2" and row["fraction"] == pytest.approx(2 / N_LAYERS) and not row["healed"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is restored
    assert len(model.model.layers) == N_LAYERS

    def fail(*a, **k):
        raise AssertionError("recomputed a stored point")
    monkeypatch.setattr(prefix_eval, "evaluate_edits", fail)
    again = prune_curve.curve_point(model, None, "tiny", store, "similarity", 2, [1, 2], [], None, loss_chunks)
    assert again["value"].tolist() == rows["value"].tolist()
    items = store.get(prune_curve.ITEMS, rows["key"].iloc[0]) if "key" in rows else None
    per_chunk = lm_loss.chunk_losses(prune.pruned_copy(model, [1, 2]), loss_chunks)[0]
    stored = [store.get(prune_curve.ITEMS, k) for k in store.keys(prune_curve.ITEMS)]
    assert len(stored) == 1 and stored[0]["item"].tolist() == list(range(len(loss_chunks)))
    assert stored[0]["value"].to_numpy() == pytest.approx(per_chunk, abs=1e-6)  # the paired claims' input
    assert items is None or items.equals(stored[0])


def test_points_computed_together_equal_points_computed_alone(tmp_path):
    model, loss_chunks = tiny_model("gemma3_text"), chunks()
    points = [("similarity", 0, [], []), ("similarity", 2, [1, 2], []), ("deepest", 1, [2], []),
              ("deepest", 2, [1, 2], [])]
    together = prune_curve.curve_points(model, None, "tiny", results.ResultStore(tmp_path / "a"), points, None,
                                        loss_chunks)
    for method, n, blocks, _ in points:
        alone = prune_curve.curve_point(model, None, "tiny", results.ResultStore(tmp_path / "b"), method, n, blocks,
                                        [], None, loss_chunks)
        mine = together[(together.method == method) & (together.n == n)]
        assert mine["value"].iloc[0] == pytest.approx(alone["value"].iloc[0], abs=1e-6)
        assert mine["value"].iloc[0] == pytest.approx(
            lm_loss.normalised_loss(prune.pruned_copy(model, blocks), loss_chunks)[0], abs=1e-6)


def test_healed_points_are_keyed_by_method_and_heal_settings(tmp_path):
    model, store, loss_chunks = tiny_model("llama"), results.ResultStore(tmp_path), chunks()
    hc = healing.HealConfig(rank=2, steps=2, warmup_steps=1, batch_size=2, seq_len=16)
    train = chunks(1, n=8)
    plain = prune_curve.curve_point(model, None, "tiny", store, "deepest", 1, [2], [], None, loss_chunks)
    for method in ("similarity", "deepest"):  # the same blocks, two healing runs: two points
        healed = prune_curve.curve_point(model, None, "tiny", store, method, 1, [2], [], None, loss_chunks,
                                         heal_config=hc, train_chunks=train)
        assert bool(healed["healed"].iloc[0]) and healed["method"].iloc[0] == method
    assert len(store.keys("prune")) == 3
    other = prune_curve.curve_point(model, None, "tiny", store, "deepest", 1, [2], [], None, loss_chunks,
                                    heal_config=healing.HealConfig(rank=2, steps=3, warmup_steps=1, batch_size=2,
                                                                   seq_len=16), train_chunks=train)
    assert len(store.keys("prune")) == 4 and other["heal_config"].iloc[0] != plain["heal_config"].iloc[0]


def test_run_curve_heals_both_methods_and_labels_variants(tmp_path):
    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    ids, mask = tiny_batch()
    d = prune.angular_distances(prune.last_token_states(model, [(ids, mask)]))
    cfg = dict(prune_curve.PROFILES["smoke"], fractions=[0, 0.25, 0.5], heal_fractions=[0.5], heal_steps=2,
               lora_rank=2, eval_tasks=[], heuristic_tasks=[], seq_len=16)
    curve, timer = prune_curve.run_curve(model, None, "tiny", store, d, cfg, loss_chunks=chunks(),
                                         train_chunks=chunks(1, n=8))
    assert set(timer) == {"unhealed", "healing", "healing_deepest"}
    assert set(curve["variant"]) == set(prune_curve.VARIANTS.values())
    healed = curve[curve.healed]
    assert sorted(healed["method"]) == ["deepest", "similarity"] and set(healed["n"]) == {2}
    deep = curve[(curve.method == "deepest") & ~curve.healed].sort_values("n")
    assert deep["n"].tolist() == [0, 1, 2] and deep["blocks"].tolist() == ["", "2", "1,2"]
    unhealed, _ = prune_curve.run_curve(model, None, "tiny", store, d, cfg, loss_chunks=chunks(), heal=False)
    assert not unhealed.healed.any() and len(unhealed) == len(curve) - 2


def test_profile_config_quick_budget_and_validation():
    quick = prune_curve.profile_config("quick")
    assert quick["eval_tasks"] == ["arc_easy", "hellaswag"] and quick["heuristic_tasks"] == ["arc_easy"]
    assert quick["heal_fractions"] == [0.3] and quick["heal_steps"] == 30
    qwen = prune_curve.profile_config("quick", eval_tasks=["mmlu"], heuristic_tasks=["mmlu"], limit=100,
                                      fractions="[0, 0.1, 0.2]", payoff_fractions=[])
    assert qwen["fractions"] == [0, 0.1, 0.2] and qwen["limit"] == 100 and qwen["payoff_fractions"] == []
    with pytest.raises(ValueError, match="profile"):
        prune_curve.profile_config("huge")
    with pytest.raises(ValueError, match="eval_tasks"):
        prune_curve.profile_config("smoke", eval_tasks=["nope"])
    with pytest.raises(ValueError, match="fractions"):
        prune_curve.profile_config("smoke", fractions=[0, 1.0])
    with pytest.raises(ValueError, match="heal_steps"):
        prune_curve.profile_config("smoke", heal_steps=0)
    with pytest.raises(ValueError, match="unknown settings"):
        prune_curve.profile_config("smoke", healsteps=3)
    with pytest.raises(ValueError, match="limit"):
        prune_curve.profile_config("smoke", limit=-1)
    # the text sizes (the full profile's dry run cuts them) are notebook parameters, checked alike
    cut = prune_curve.profile_config("full", distance_docs=8, distance_len=32, loss_chunks=4, seq_len=32)
    assert (cut["distance_docs"], cut["distance_len"], cut["loss_chunks"], cut["seq_len"]) == (8, 32, 4, 32)
    for name in ("distance_docs", "distance_len", "loss_chunks", "seq_len"):
        with pytest.raises(ValueError, match=name):
            prune_curve.profile_config("full", **{name: 0})


def test_per_document_distances_average_to_the_distance_map():
    states = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(0))
    docs = prune_curve.doc_distances(states)
    mean = prune.angular_distances(states)
    assert len(docs) == 7 * sum(4 - n + 1 for n in range(1, 5))
    for (n, layer), part in docs.groupby(["n", "layer"]):
        assert part["value"].mean() == pytest.approx(mean[n, layer], abs=1e-12)
        assert sorted(part["doc"]) == list(range(7))
