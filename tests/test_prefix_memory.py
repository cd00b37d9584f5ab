"""The prefix cache is bounded by a byte budget, not by the data: a window of block
boundaries is kept and captured again when a sweep moves below it, with the same scores."""

import numpy as np
import pytest
import torch

from layerlab.core import arch, results, scoring
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
            assert sweeper.scorer.window == 1
    cols = ["matrix_type", "layer", "rho", "split", "metric", "value"]
    pd_a, pd_b = (t[cols].sort_values(cols[:5]).reset_index(drop=True) for t in tables)
    assert pd_a.equals(pd_b)
