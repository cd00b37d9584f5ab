import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from layerlab.core.model import arch
from layerlab.core.io import results
from layerlab.core.eval import scoring
from layerlab.laser import sweep as laser, rank
from tiny import ARCH_NAMES, CharTokenizer, facts_file, tiny_batch, tiny_model


def state_hash(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("rho", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_eckart_young_errors(rho):
    torch.manual_seed(0)
    w = torch.randn(48, 80, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    k = rank.rank_for(rho, 48)
    approx = rank.low_rank(w, rho)
    assert torch.linalg.matrix_rank(approx) == k
    # Frobenius error = norm of the dropped singular values; spectral error = first dropped one
    assert torch.linalg.norm(w - approx) == pytest.approx(torch.linalg.norm(s[k:]).item(), rel=1e-9)
    assert torch.linalg.matrix_norm(w - approx, ord=2) == pytest.approx(s[k].item(), rel=1e-9)
    # the bottom part is exactly what the top part leaves out
    assert torch.allclose(rank.low_rank(w, rho, "top") + rank.low_rank(w, rho, "bottom"), w, atol=1e-10)


def test_rank_convention():
    assert rank.rank_for(1.0, 576) == 576
    assert rank.rank_for(0.1, 576) == 57
    assert rank.rank_for(0.01, 576) == 5
    assert rank.rank_for(0.001, 576) == 1  # never zero
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        rank.rank_for(0.0, 10)


def test_rho_one_returns_the_weight_bit_for_bit():
    model = tiny_model("llama")
    cache = rank.SVDCache(model)
    for tau in arch.matrix_types(model):
        w = arch.weight(model, tau, 2).read()
        assert torch.equal(cache.approximation(rank.Reduction(tau, 2, 1.0)), w)
        assert torch.equal(rank.low_rank(w, 1.0), w)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_reductions_compose_and_restore_bit_for_bit(name):
    model = tiny_model(name)
    before = state_hash(model)
    ids, mask = tiny_batch()
    from layerlab.core.model import runner
    ref = runner.full_logits(model, ids, mask)
    reds = [rank.Reduction(t, layer, 0.25) for t in arch.matrix_types(model)[:3] for layer in (0, 3)]
    cache = rank.SVDCache(model)
    with rank.reduced(model, reds, cache):
        assert state_hash(model) != before
        for r in reds:  # each matrix really holds its rank-k approximation
            w = arch.weight(model, r.matrix_type, r.layer).read()
            sv = torch.linalg.svdvals(w.double())
            k = rank.rank_for(0.25, min(w.shape))
            assert sv[k:].max() < 1e-5 * sv[0] < sv[k - 1]  # rank k up to float32 round-off
        assert not torch.allclose(runner.full_logits(model, ids, mask), ref)
    assert state_hash(model) == before
    with pytest.raises(RuntimeError):
        with rank.reduced(model, reds[0], cache):
            raise RuntimeError("boom")
    assert state_hash(model) == before


def test_the_same_matrix_twice_is_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="two reductions of the same matrix"):
        with rank.reduced(model, [rank.Reduction("q", 1, 0.5), rank.Reduction("q", 1, 0.1)]):
            pass


def test_grid_validation_names_parameter_and_allowed_values():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="matrix_types: 'gate' is not available for gpt2; allowed: q, k, v, o, mlp_in, mlp_out"):
        rank.validate(model, ["gate"], [0], [0.1])
    with pytest.raises(ValueError, match=r"layers: 4 out of range; allowed: integers 0..3"):
        rank.validate(model, ["q"], [4], [0.1])
    with pytest.raises(ValueError, match=r"rhos: 1.5 is not a rank fraction; allowed: numbers in \(0, 1\]"):
        rank.validate(model, ["q"], [0], [1.5])


def test_prefix_sweep_matches_an_independent_full_forward(tmp_path):
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"),
                            max_tokens_per_batch=64)
    assert len(sweeper.scorer.batches) > 1
    for red in ([], [rank.Reduction("mlp_in", 2, 0.1)], [rank.Reduction("o", 3, 0.2), rank.Reduction("q", 1, 0.5)]):
        got = sweeper.per_item(red)
        with rank.reduced(model, red):  # reference: weights edited, the model's own forward pass
            ref = laser.item_metrics(task, scoring.score_full(model, sweeper.scorer.batches, len(task.contexts)))
        np.testing.assert_allclose(got["nll"], ref["nll"], rtol=1e-5)
        assert (got["correct"] == ref["correct"]).all()


def test_sweep_stores_every_point_and_protocol_reports_intervals(tmp_path):
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path)))
    store = results.ResultStore(tmp_path / "r")
    sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, store)
    table = laser.sweep(sweeper, ["mlp_in", "mlp_out"], [2, 3], [0.1, 0.5], progress=False)
    assert len(store.keys("laser")) == 1 + 2 * 2 * 2
    assert set(table["split"]) == {"val", "test"}
    n_val = table[(table.split == "val") & (table.metric == "acc")]["n_items"].iloc[0]
    assert n_val == 6  # 20% of 30
    report = laser.protocol(sweeper, table)
    assert report["n_test"] == 24
    lo, hi = report["base_acc_ci"]
    assert lo <= report["base_acc"] <= hi
    diff, dlo, dhi = report["diff_acc"]
    assert dlo <= diff <= dhi
    # a second sweeper over the same store recomputes nothing (and never runs the model)
    again = laser.Sweeper(model, CharTokenizer(), "tiny", task, store)
    laser.sweep(again, ["mlp_in", "mlp_out"], [2, 3], [0.1, 0.5], progress=False)
    assert again._scorer is None


def test_a_released_sweeper_reads_its_stored_points_without_tokenising(tmp_path, monkeypatch):
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"))
    table = laser.sweep(sweeper, ["mlp_in"], [2, 3], [0.1], progress=False)
    sweeper.release()

    def refuse(*a, **k):
        raise AssertionError("stored points were tokenised again")
    monkeypatch.setattr(scoring, "encode", refuse)
    report = laser.protocol(sweeper, table)  # base and best: both stored by the sweep
    assert report["n_test"] == 24


def test_greedy_scores_each_steps_candidates_in_one_pass(tmp_path, monkeypatch):
    from layerlab.core.eval import prefix_stream
    calls = []
    real = prefix_stream.scores

    def counting(model, batches, n_rows, jobs, max_bytes="auto"):
        calls.append(len(jobs))
        yield from real(model, batches, n_rows, jobs, max_bytes)
    monkeypatch.setattr(prefix_stream, "scores", counting)
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"))
    laser.greedy(sweeper, ["mlp_in", "mlp_out"], [3, 2, 1], [0.1, 0.5], progress=False)
    # the base, one call of 4 candidates per layer (they share the prefix below it), the final composition
    assert calls[:4] == [1, 4, 4, 4] and len(calls) <= 5


def _val_table(points):
    """Summary rows of a sweep: points = [(matrix_type, layer, rho, val acc, val nll)]."""
    rows = []
    for t, layer, rho, acc, nll in points:
        for metric, value in (("acc", acc), ("nll", nll)):
            for split in ("val", "test"):  # test rows are 1 - val: selection must not look at them
                rows.append({"matrix_type": t, "layer": layer, "rho": rho, "n_reductions": int(t != "base"),
                             "split": split, "metric": metric, "value": value if split == "val" else 1 - value})
    return pd.DataFrame(rows)


def test_selection_is_decided_by_validation_data():
    base = ("base", -1, 1.0, 0.5, 2.0)
    one_wins = _val_table([("mlp_in", 3, 0.1, 0.4, 1.0), base, ("mlp_out", 2, 0.5, 0.6, 2.5),
                           ("mlp_in", 2, 0.1, 0.5, 1.5)])
    assert laser.select_best(one_wins) == rank.Reduction("mlp_out", 2, 0.5)
    # equal accuracy: the lower validation loss decides
    assert laser.select_best(_val_table([base, ("mlp_in", 1, 0.1, 0.5, 1.9)])) == rank.Reduction("mlp_in", 1, 0.1)
    none_wins = _val_table([("mlp_in", 3, 0.1, 0.4, 1.0), ("mlp_out", 2, 0.5, 0.5, 2.0), base])
    assert laser.select_best(none_wins) is None  # a tie with the unmodified model keeps it, in any row order
    assert laser.select_best(none_wins.iloc[::-1]) is None
    with pytest.raises(ValueError, match="mixes protocols"):
        laser.select_best(pd.concat([one_wins, one_wins]))


def test_greedy_only_keeps_improvements(tmp_path):
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"))
    out = laser.greedy(sweeper, ["mlp_in"], [3, 2, 1], [0.1, 0.5], progress=False)
    accs = out["trace"]["val_acc"].to_numpy()
    nlls = out["trace"]["val_nll"].to_numpy()
    for i in range(1, len(accs)):  # each kept step strictly improves (acc, then nll)
        assert (accs[i], -nlls[i]) > (accs[i - 1], -nlls[i - 1])
    assert len(out["kept"]) == len(accs) - 1
    assert [r.layer for r in out["kept"]] == sorted([r.layer for r in out["kept"]], reverse=True)


def test_unavailable_and_unknown_datasets_are_refused():
    with pytest.raises(ValueError, match="datasets: 'bias_in_bios' cannot be run: Bias in Bios"):
        laser.build_task("bias_in_bios")
    with pytest.raises(ValueError, match="datasets: unknown 'nope'; allowed: counterfact, hotpotqa"):
        laser.build_task("nope")


def test_the_svd_cache_is_bounded_evicts_by_matrix_and_restores_bit_for_bit():
    model = tiny_model("llama")
    before = state_hash(model)
    one = rank.SVDCache(model, max_bytes=None)
    one.svd("mlp_in", 0)
    entry = one.nbytes()  # one (matrix type, layer): CPU original + U, S, Vh
    assert one.original("mlp_in", 0).device.type == "cpu"
    cache = rank.SVDCache(model, max_bytes=int(2.5 * entry))  # room for two mlp_in entries
    grid = [rank.Reduction("mlp_in", layer, rho) for layer in (3, 2, 1, 0) for rho in (0.1, 0.5)]
    reference = {}
    for r in grid:
        with rank.reduced(model, r, cache):
            reference[r] = arch.weight(model, r.matrix_type, r.layer).read()
            assert cache.nbytes() <= cache.max_bytes
        assert state_hash(model) == before
    assert cache.computed == 4  # one SVD per matrix, reused for both rhos
    assert cache.evicted >= 2 and cache.keys() == [("mlp_in", 1), ("mlp_in", 0)]
    # an evicted entry is read again from the restored model: the same bits, the same reduction
    for r in grid:
        with rank.reduced(model, r, cache):
            assert torch.equal(arch.weight(model, r.matrix_type, r.layer).read(), reference[r])
        assert state_hash(model) == before
    assert cache.computed == 8


def test_a_reduced_matrix_keeps_its_original_under_a_tiny_budget():
    model = tiny_model("llama")
    before = state_hash(model)
    cache = rank.SVDCache(model, max_bytes=0)  # evicts everything it can
    reds = [rank.Reduction("mlp_in", 3, 0.25), rank.Reduction("mlp_out", 3, 0.25), rank.Reduction("q", 2, 0.5)]
    with rank.reduced(model, reds, cache):
        assert state_hash(model) != before
        assert set(cache._original) == {("mlp_in", 3), ("mlp_out", 3), ("q", 2)}  # all pinned
    assert state_hash(model) == before
    with rank.reduced(model, reds[0], cache):
        pass
    assert state_hash(model) == before
    assert len(cache.keys()) <= 1  # only the entry just used (a budget below one entry keeps one)
    with pytest.raises(ValueError, match="max_bytes"):
        rank.SVDCache(model, max_bytes=-1)


def test_one_cache_serves_several_datasets(tmp_path):
    """Sweepers of two datasets on one model share one cache: each SVD is computed once."""
    model = tiny_model("llama")
    cache = rank.SVDCache(model)
    store = results.ResultStore(tmp_path / "r")
    for n in (20, 30):
        folder = tmp_path / f"d{n}"
        folder.mkdir()
        task = laser.build_task(str(facts_file(folder, n)))
        sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, store, svd=cache)
        laser.sweep(sweeper, ["mlp_in"], [2, 3], [0.1, 0.5], progress=False)
    assert cache.computed == 2


@pytest.mark.parametrize("shape", [(40, 96), (96, 40), (50, 50)])
def test_thin_svd_is_the_svd_in_either_orientation(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vh = rank.thin_svd(w)
    r = min(shape)
    assert u.shape == (shape[0], r) and s.shape == (r,) and vh.shape == (r, shape[1])
    torch.testing.assert_close((u * s) @ vh, w, rtol=0, atol=1e-12)
    torch.testing.assert_close(u.T @ u, torch.eye(r, dtype=w.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(vh @ vh.T, torch.eye(r, dtype=w.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(s, torch.linalg.svdvals(w), rtol=0, atol=1e-12)
    torch.testing.assert_close(rank.singular_values(w), torch.linalg.svdvals(w), rtol=0, atol=1e-12)
    # the top-k approximation is the Eckart-Young one whichever way it was computed
    k = r // 3
    ref_u, ref_s, ref_vh = torch.linalg.svd(w, full_matrices=False)
    torch.testing.assert_close(rank.low_rank(w, k / r), (ref_u[:, :k] * ref_s[:k]) @ ref_vh[:k], rtol=0, atol=1e-10)
