"""The prefix cache is bounded by a byte budget, not by the data: a window of block
boundaries is kept and captured again when a sweep moves below it, and the rows are cut
into chunks when even that does not fit (``prefix_stream``), with the same scores."""

from contextlib import nullcontext
from functools import partial

import numpy as np
import pytest
import torch

from layerlab.core.model import arch, runner
from layerlab.core.eval import prefix_stream, scoring
from layerlab.core.io import results
from layerlab.laser import sweep as laser, rank
from tiny import N_LAYERS, CharTokenizer, facts_file, tiny_model


def _kept_bytes(scorer) -> int:
    return sum(h.numel() * h.element_size() for s in scorer.states for h in s.hidden if h is not None)


def _scorer(tmp_path, n_items, max_bytes, model=None):
    model = model or tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path, n_items)))
    batches = scoring.encode(CharTokenizer(), task.contexts, task.continuations, max_tokens_per_batch=128)
    return model, task, scoring.PrefixScorer(model, batches, len(task.contexts), max_bytes=max_bytes)


def test_a_window_of_states_gives_the_same_scores_as_all_states(tmp_path):
    model, task, everything = _scorer(tmp_path, 30, None)
    assert everything.window == N_LAYERS + 1 and everything.captures == 1
    _, _, bounded = _scorer(tmp_path, 30, 2.5 * everything.layer_bytes, model)
    assert bounded.window == 2 and bounded.captures == 0  # nothing captured before it is needed
    for start in range(N_LAYERS, -1, -1):  # deepest first, as laser.grid orders a sweep
        a, b = everything.score(start), bounded.score(start)
        for field in ("logprob", "first_rank", "greedy", "first_top", "first_gold"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (start, field)
        assert _kept_bytes(bounded) <= 2 * bounded.layer_bytes
    assert bounded.captures == 3  # boundaries {3,4}, {1,2}, {0,1}: (L + 1) / k passes, rounded up
    red = [rank.Reduction("mlp_in", 1, 0.25)]
    with rank.reduced(model, red):
        assert np.array_equal(everything.score(1).logprob, bounded.score(1).logprob)


def test_the_kept_states_stay_within_the_budget_whatever_the_items(tmp_path):
    (tmp_path / "20").mkdir()
    (tmp_path / "200").mkdir()
    small = _scorer(tmp_path / "20", 20, None)[2]
    budget = 3 * small.layer_bytes
    for n in (20, 200):
        _, _, scorer = _scorer(tmp_path / str(n), n, budget)
        scorer.score(N_LAYERS - 1)
        assert _kept_bytes(scorer) == scorer.window * scorer.layer_bytes
        assert _kept_bytes(scorer) <= max(budget, scorer.layer_bytes)  # one boundary is the floor
        assert scorer.window == (3 if n == 20 else 1)


def test_a_sweeper_with_a_small_budget_stores_the_same_points(tmp_path):
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path, 30)))
    tables = []
    for name, budget in (("all", None), ("bounded", 1)):
        sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / name),
                                max_tokens_per_batch=128, state_bytes=budget)
        tables.append(laser.sweep(sweeper, ["mlp_in", "o"], [3, 1], [0.1, 0.5], progress=False))
        if budget:
            windows, chunks = prefix_stream.plan(sweeper.batches, range(N_LAYERS + 1), 1, budget)
            assert len(chunks) == len(sweeper.batches) > 1 and len(windows) > 1
    cols = ["matrix_type", "layer", "rho", "split", "metric", "value"]
    pd_a, pd_b = (t[cols].sort_values(cols[:5]).reset_index(drop=True) for t in tables)
    assert pd_a.equals(pd_b)


def _jobs(model, svd):
    edits = [[], [rank.Reduction("mlp_in", 3, 0.1)], [rank.Reduction("o", 1, 0.5)],
             [rank.Reduction("mlp_out", 0, 0.25), rank.Reduction("q", 2, 0.5)], [rank.Reduction("v", 2, 0.1)]]
    start = lambda reds: min((r.layer for r in reds), default=N_LAYERS)  # noqa: E731
    return edits, [(start(e), partial(rank.reduced, model, e, svd)) for e in edits]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("budget", [None, "tiny", "windows", "head in slices"])
def test_streamed_scores_equal_each_edit_scored_on_all_states(tmp_path, budget, dtype, monkeypatch):
    if budget == "head in slices":  # the head runs on one row at a time
        monkeypatch.setattr(prefix_stream, "HEAD_BYTES", 1)
    model = tiny_model("llama").to(dtype)
    task = laser.build_task(str(facts_file(tmp_path, 40)))
    batches = scoring.encode(CharTokenizer(), task.contexts, task.continuations, max_tokens_per_batch=96)
    per_token = model.config.hidden_size * model.dtype.itemsize
    tokens = sum(b.input_ids.numel() for b in batches)
    max_bytes = {None: None, "tiny": 1, "windows": 4 * tokens * per_token, "head in slices": None}[budget]
    svd = rank.SVDCache(model)
    edits, jobs = _jobs(model, svd)
    windows, chunks = prefix_stream.plan(batches, [s for s, _ in jobs], per_token, max_bytes)
    if budget == "tiny":
        assert len(chunks) == len(batches) > 2 and all(len(w) <= prefix_stream.MIN_WINDOW for w in windows)
    if budget == "windows":  # five start layers, four boundaries fit: two passes over all rows
        assert len(chunks) == 1 and [len(w) for w in windows] == [4, 1]
    got = dict(prefix_stream.scores(model, batches, len(task.contexts), jobs, max_bytes))
    assert sorted(got) == list(range(len(edits)))
    everything = scoring.PrefixScorer(model, batches, len(task.contexts), max_bytes=None)
    for i, (start, apply) in enumerate(jobs):
        with apply():
            want = everything.score(start)
        if budget == "head in slices":  # a matmul over fewer rows rounds differently in the last bits
            tol = 1e-5 if dtype == torch.float32 else 0.1
            np.testing.assert_allclose(got[i].logprob, want.logprob, rtol=tol, atol=tol)
            assert np.array_equal(got[i].first_gold, want.first_gold)
            if dtype == torch.float32:
                assert np.array_equal(got[i].first_top, want.first_top)
            continue
        for field in ("logprob", "first_rank", "greedy", "first_top", "first_gold", "n_tokens"):
            assert np.array_equal(getattr(got[i], field), getattr(want, field)), (budget, i, field)
    base = next(p.detach().clone() for p in model.parameters())
    assert torch.equal(base, next(model.parameters()))  # every edit restored


def test_the_stream_keeps_at_most_its_budget_whatever_the_rows(tmp_path, monkeypatch):
    """Peak of states held at once, for 20 and 200 items under one budget: the same."""
    model = tiny_model("llama")
    per_token = model.config.hidden_size * 4
    import weakref

    live, peak = [0], {}
    real = runner.capture

    def counting(*a, **k):  # bytes of captured states alive at once (freed ones subtracted)
        state = real(*a, **k)
        for h in state.hidden:
            if h is not None:
                live[0] += h.numel() * h.element_size()
                weakref.finalize(h, lambda b=h.numel() * h.element_size(): live.__setitem__(0, live[0] - b))
        peak[n] = max(peak[n], live[0])
        return state

    monkeypatch.setattr(runner, "capture", counting)
    budget = None
    for n in (20, 200):
        (tmp_path / str(n)).mkdir()
        task = laser.build_task(str(facts_file(tmp_path / str(n), n)))
        batches = scoring.encode(CharTokenizer(), task.contexts, task.continuations, max_tokens_per_batch=64)
        # the budget: every boundary of the 20 items' rows (one pass for them, chunks for 200)
        budget = budget or sum(b.input_ids.numel() for b in batches) * (N_LAYERS + 1) * per_token
        jobs = [(s, nullcontext) for s in range(N_LAYERS + 1)]
        peak[n] = 0
        windows, chunks = prefix_stream.plan(batches, range(N_LAYERS + 1), per_token, budget)
        assert (len(chunks) > 1) == (n == 200)
        assert len(list(prefix_stream.scores(model, batches, len(task.contexts), jobs, budget))) == len(jobs)
        assert peak[n] <= budget, n
    assert peak[200] <= budget and peak[20] > 0


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        prefix_stream.budget(tiny_model("llama"), "lots")


def test_chunks_alternate_the_job_order_so_the_svd_cache_keeps_what_the_next_chunk_needs(tmp_path):
    """A window of four matrices against a cache with room for two, over many chunks: scored
    in the same order every chunk, LRU would evict each SVD just before the next chunk asks
    for it (4 per chunk); alternating the order, a chunk reuses the two the last one ended on."""
    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path, 40)))
    batches = scoring.encode(CharTokenizer(), task.contexts, task.continuations, max_tokens_per_batch=96)
    one = rank.SVDCache(model, max_bytes=None)
    one.svd("mlp_in", 0)
    svd = rank.SVDCache(model, max_bytes=int(2.5 * one.nbytes()))
    edits = [[rank.Reduction("mlp_in", layer, rho)] for layer in (3, 2, 1, 0) for rho in (0.1, 0.5)]
    jobs = [(e[0].layer, partial(rank.reduced, model, e, svd)) for e in edits]
    per_token = model.config.hidden_size * model.dtype.itemsize
    windows, chunks = prefix_stream.plan(batches, [s for s, _ in jobs], per_token, 1)
    assert len(windows) == 1 and len(chunks) == len(batches) > 2
    assert prefix_stream.chunk_order([0, 1, 2], 0) == [0, 1, 2] and prefix_stream.chunk_order([0, 1, 2], 1) == [2, 1, 0]
    got = dict(prefix_stream.scores(model, batches, len(task.contexts), jobs, 1))
    assert sorted(got) == list(range(len(edits)))
    assert svd.computed == 4 + 2 * (len(chunks) - 1)  # the same order every chunk: 4 * len(chunks)
