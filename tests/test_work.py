"""The book plan's counted work (``layerlab.book.work``): counts on tiny constructed cases
against hand computation, and bad input refused naming the parameter and what is allowed.
Nothing here loads weights, a tokenizer or the shared data (tokens are characters / 4)."""

import json

import pytest

from layerlab.book.work import Context, Device, chapter_work, cpu_device, device_for, estimate_seconds, flops
from layerlab.book.work.__main__ import main
from layerlab.book.work.counts import (EditCost, SVDLedger, Work, fixed_rows, schedule_edit, train_steps,
                                       unmodified_edit)
from layerlab.book.work.device import CPU_SVD_SHARE, work_seconds
from layerlab.book.work.engines import LASER_BATCH_TOKENS, evaluate_edits, generate, prefix_points
from layerlab.book.work.inputs import lm_eval_requests, lm_eval_rows
from layerlab.book.work.prune import healed_point, prune_edit
from layerlab.book.work.shapes import Shape, model_shape
from layerlab.core.eval import prefix_stream
from layerlab.core.model import schedule

# 4 blocks, hidden 8, MLP 16, 2 heads of 4 (1 KV head): attention 8x8 + 2 x 4x8 + 8x8 = 192
# weights, MLP 3 x 8 x 16 = 384, a block 576
TINY = Shape("tiny", "llama", 4, 8, 16, 32, 2, 1, 4)
CONFIG = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 8, "intermediate_size": 16,
          "vocab_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4}


def chars() -> Context:
    return Context(tokens="chars")


@pytest.fixture
def tiny_model(tmp_path):
    """A local model folder with only a config.json (``model_shape`` reads nothing else)."""
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return str(folder)


def test_shape_from_config_counts_the_weights_of_a_block(tiny_model):
    shape = model_shape(tiny_model)
    assert (shape.layers, shape.hidden, shape.vocab) == (4, 8, 32)
    assert shape.matrices == {"q": (8, 8), "k": (4, 8), "v": (4, 8), "o": (8, 8), "mlp_in": (16, 8),
                              "gate": (16, 8), "mlp_out": (8, 16)}
    assert (shape.attn_params, shape.mlp_params, shape.block_params) == (192, 384, 576)


def test_a_laser_grid_of_two_layers_one_matrix_one_rho(tiny_model, tmp_path):
    # N = 10 facts: prompt 8 characters (2 tokens), continuation " xyz" (1 token): T = 3 tokens per row
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": "abcdefgh", "answer": "xyz"}) + "\n" for _ in range(10)))
    grid = {"datasets": [str(facts)], "matrix_types": ["mlp_in"], "layers": [2, 3], "rhos": [0.5],
            "greedy_layers": [3], "greedy_rhos": [0.5]}
    w = chapter_work("laser", tiny_model, grid, "full", chars())[0]
    n_t, big_l = 10 * 3, 4
    # one capture of every block (the states fit the budget: one window), then the base point
    # (head only), the reduction at layer 3 (1 block) and at layer 2 (2 blocks)
    assert w.parts[f"sweep {facts}"] == n_t * (big_l + 0 + 1 + 2)
    # greedy on the 20% validation rows (2 rows): its base point (a capture), layer 3 (a capture
    # and 1 block); then the composition on every row from layer 3 (a capture and 1 block)
    val = 0.2 * n_t
    assert w.parts["greedy"] == pytest.approx(val * big_l + val * (big_l + 1) + n_t * (big_l + 1))
    # head: each point's rows at their continuation's one position (sweep 3 x 10, greedy 2 + 2 + 10)
    assert w.head_tokens == pytest.approx(3 * 10 + 2 + 2 + 10)
    assert w.svds == {(16, 8): 2}  # mlp_in at layers 2 and 3, each once (the cache holds both)
    assert w.sources == {"chars/4"}


def test_prefix_points_recapture_once_per_window_when_the_states_do_not_fit(monkeypatch):
    shape = Shape("eight", "llama", 8, 8, 16, 32, 2, 1, 4)
    rows = fixed_rows(10_000, 4)  # 40,000 tokens: ten 4,096-token batches in the plan
    one = 10 * LASER_BATCH_TOKENS * shape.hidden * 2  # bytes of one boundary's states (bf16)
    monkeypatch.setitem(prefix_stream.DEFAULT_BYTES, "cuda", 2 * one)  # room for 2 boundaries: windows of 4
    jobs = [[work_reduction(layer)] for layer in range(8)]
    w = Work("eight")
    prefix_points(w, "p", rows, jobs, shape, chars())
    tokens = 10_000 * 4
    assert w.block_tokens == (2 * 8 + sum(8 - s for s in range(8))) * tokens  # 2 captures, each job's blocks
    assert w.head_tokens == 0  # fixed rows score no head position


def work_reduction(layer: int):
    from layerlab.laser import rank

    return rank.Reduction("mlp_in", layer, 0.5)


def test_the_svd_ledger_recomputes_what_its_budget_evicted():
    entry = SVDLedger(TINY, 2, None)._bytes("mlp_in")  # 16 x 8 x 2 + 4 x (16 x 8 + 8 + 8 x 8)
    assert entry == 16 * 8 * 2 + 4 * (16 * 8 + 8 + 8 * 8)
    tight = SVDLedger(TINY, 2, entry)  # room for one entry
    for layer in (0, 0, 1, 0):
        tight.request("mlp_in", layer)
    assert tight.computed == {(16, 8): 3}
    roomy = SVDLedger(TINY, 2, None)
    for layer in (0, 0, 1, 0):
        roomy.request("mlp_in", layer)
    assert roomy.computed == {(16, 8): 2}


def test_pruning_half_the_blocks_halves_the_blocks_run():
    loss = fixed_rows(5, 8)
    full, half = Work("tiny"), Work("tiny")
    evaluate_edits(full, "x", "tiny", TINY, [], [unmodified_edit(TINY)], None, chars(), loss)
    evaluate_edits(half, "x", "tiny", TINY, [], [EditCost(0, 2, 0, 2, unmodified=True)], None, chars(),
                        loss, layers=2)
    assert full.block_tokens == 4 * 5 * 8 and half.block_tokens == full.block_tokens / 2
    assert full.head_tokens == half.head_tokens == 5 * 8  # the loss reads every position
    deepest = prune_edit(TINY, "deepest", 2)  # blocks 1, 2 (the two before the last)
    assert (deepest.suffix, deepest.total) == (1, 2)
    assert prune_edit(TINY, "similarity", 0).unmodified


def test_a_healed_point_trains_and_evaluates_the_pruned_model_once():
    ctx, loss, w = chars(), fixed_rows(5, 8), Work("tiny")
    heal = {"steps": 10, "seq_len": 8}
    healed_point(w, "tiny", TINY, "deepest", 2, [], None, loss, heal, ctx)
    assert w.train_tokens == 10 * 4 * 8  # steps x batch 4 x seq_len
    assert w.train_block_tokens == 10 * 4 * 8 * 2  # through the 2 blocks left
    assert w.block_tokens == 2 * 5 * 8  # the held-out chunks through the pruned model
    again = Work("tiny")
    healed_point(again, "tiny", TINY, "deepest", 2, [], None, loss, heal, ctx)
    assert again.block_tokens == again.train_tokens == 0  # stored by the first: not counted twice


def test_a_schedules_block_count():
    shape = Shape("eight", "llama", 8, 8, 16, 32, 2, 1, 4)
    looped = schedule_edit(schedule.build("looped_parallel", 8, 2, iterations=3), shape)
    assert (looped.suffix, looped.total) == (4 * 3 + 2, 2 + 4 * 3 + 2)  # the 4 middle blocks 3 times
    skip = schedule_edit(schedule.build("skip", 8, 2), shape)
    assert (skip.suffix, skip.total) == (2, 4)
    reverse = schedule_edit(schedule.build("reverse", 8, 2), shape)
    assert (reverse.suffix, reverse.total) == (6, 8)
    attn = schedule_edit(schedule.build("attn_only", 8, 2), shape)
    assert attn.suffix == pytest.approx(4 * shape.attn_fraction + 2) and attn.suffix_attn == 6
    assert schedule_edit(schedule.in_order(8), shape).unmodified


def test_lm_eval_one_token_choices_of_one_context_share_an_input():
    ctx = chars()
    ctx._cache["prepared"] = {"mmlu": [{"prompt": "x" * 40}] * 3, "gsm8k_train": [],
                              "arc_easy": [{"query": "q" * 20, "choices": ["a" * 8, "b" * 8, "c" * 8]}] * 2}
    mmlu = lm_eval_rows(ctx, "m", "mmlu", None)
    # 10 context tokens, " A".." D" one token each: one input of 10 tokens, one head position
    assert (mmlu.n, mmlu.tokens, mmlu.head, mmlu.items) == (3, 10, 1, 3)
    arc = lm_eval_rows(ctx, "m", "arc_easy", 1)
    # "Question: qqq...\nAnswer:" is 38 characters (10 tokens), each choice 3 tokens: 3 inputs of 12
    assert (arc.n, arc.tokens, arc.head, arc.items) == (3, 12, 3, 1)


def test_generation_and_training_counts():
    w = Work("tiny")
    generate(w, "g", fixed_rows(2, 10), 3, 4, 1)
    assert w.block_tokens == 2 * 10 * 3 + 2 * 4 * 3  # prefill, then 4 new tokens per row
    assert w.head_tokens == 2 + 2 * 4
    assert w.block_calls == 2 * 3 + 2 * 4 * 3
    t = Work("tiny")
    train_steps(t, "t", 5, 2, 4, 3, frozen_blocks=1)
    assert (t.train_tokens, t.train_block_tokens, t.block_tokens) == (40, 120, 40)


def test_flops_by_hand():
    w = Work("tiny", block_tokens=10, attn_pairs=5, head_tokens=3, train_block_tokens=2)
    w.svds[(4, 2)] += 1
    f = flops(w, TINY)
    assert f["blocks"] == 2 * 576 * 10
    assert f["attention"] == 4 * 2 * 4 * 5
    assert f["head"] == 2 * 32 * 8 * 3
    assert f["train"] == 3 * 2 * 576 * 2
    assert f["svd"] == 4 * 4 * 2 * 2 + 22 * 2 ** 3
    assert f["total"] == f["device"] + f["svd"] + f["host"]
    assert estimate_seconds(2e12, 1e12) == 2.0


def test_seconds_take_the_launch_floor_when_it_is_longer():
    device = Device("test", flops=1e3, svd_flops=1e3, host_flops=1e3, block_call_s=1.0)
    w = Work("tiny", shape=TINY, block_tokens=1e-3, block_calls=5)  # ~1 FLOP of compute, 5 calls
    assert work_seconds(w, device) == pytest.approx(5.0)
    w.block_calls = 0
    assert work_seconds(w, device) == pytest.approx(2 * 576 * 1e-3 / 1e3)


def test_the_sokoban_chapter_counts_in_its_own_units():
    from layerlab.laser.sokoban import chapter

    cfg = chapter.profile_config("full")
    w = chapter_work("laser_sokoban", "sokoban-dt", {}, "full", chars())[0]
    agent, seeds = cfg["agent"], cfg["n_seeds"]
    assert w.agent["train_windows"] == agent.steps * agent.batch * seeds
    points = 1 + len(cfg["matrix_types"]) * len(cfg["layers"]) * len(cfg["rhos"])
    assert w.agent["rollout_levels"] == seeds * (points * cfg["n_val"] + 2 * cfg["n_test"])
    assert sum(w.svds.values()) == seeds * len(cfg["matrix_types"]) * len(cfg["layers"])


def test_cpu_speed_is_tokens_per_second_times_flops_per_token(tiny_model):
    device = cpu_device([tiny_model], calibrate=lambda model, dtype: 1000.0, matmul=lambda: 2.0)
    shape = model_shape(tiny_model)
    assert device.speed(tiny_model) == pytest.approx(1000.0 * shape.forward_flops_per_token((256 + 1) / 2))
    assert device.svd_flops == pytest.approx(2e9 * CPU_SVD_SHARE)


def test_bad_input_is_refused_naming_the_parameter_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"technique: 'nope' is not one of laser, laser_sokoban, prune, painters"):
        chapter_work("nope", "smollm2-135m", {}, "full", chars())
    with pytest.raises(ValueError, match=r"device: 'tpu' is not one of h100, cpu"):
        device_for("tpu")
    with pytest.raises(ValueError, match=r"device_type: 'tpu' is not one of cuda, cpu"):
        Context(device_type="tpu")
    with pytest.raises(ValueError, match=r"tokens: 'words' is not one of tokenizer, chars"):
        Context(tokens="words")
    with pytest.raises(ValueError, match=r"device_flops: 0"):
        estimate_seconds(1.0, 0)
    with pytest.raises(ValueError, match=r"task: 'nope' is not one of mmlu"):
        lm_eval_requests("nope", {})
    with pytest.raises(SystemExit):
        main(["--device", "tpu"])


def test_the_full_plan_prints_its_counted_work_on_the_h100_and_on_this_cpu(monkeypatch):
    """``build.counted_work_plan``: what ``make book PROFILE=full`` prints after the calibrated
    plan; this CPU's speeds are the calibration's rows (no model is loaded), each labelled an
    estimate, and doubling a model's measured speed halves no more than its own chapters."""
    from layerlab.book import build, estimate, work

    monkeypatch.setattr(estimate, "tokens_per_second", lambda *a, **k: pytest.fail("a model was loaded"))
    models = {m for _, m, extra in build.PLANS["full"] for m in (m, extra.get("encoder") or m)}
    rows = [{"model": m, "dtype": "auto", "speed": 1000.0} for m in models]
    text = build.counted_work_plan("full", rows)
    assert "one NVIDIA H100" in text and "this CPU (calibrated here)" in text
    assert text.count("estimate from counted work and a stated device speed") == 2
    minutes = [float(line.split()[-1].rstrip("*")) for line in text.splitlines()
               if line.startswith("[book]   laser ") and "qwen" in line]
    assert len(minutes) == 2 and all(m > 0 for m in minutes)


def test_lora_on_frozen_weights_counts_two_forward_passes_a_step_and_full_training_three():
    from layerlab.book.work.counts import LORA_TRAIN_FACTOR, TRAIN_FACTOR

    lora, full, both = Work("tiny"), Work("tiny"), Work("tiny")
    train_steps(lora, "t", 5, 2, 4, 3, factor=LORA_TRAIN_FACTOR)
    train_steps(full, "t", 5, 2, 4, 3)
    train_steps(both, "t", 5, 2, 4, 3, factor=LORA_TRAIN_FACTOR)
    train_steps(both, "t", 5, 2, 4, 1)  # a quarter of the block-tokens at the full factor
    f = [flops(w, TINY)["train"] for w in (lora, full)]
    assert f[1] == pytest.approx(f[0] * TRAIN_FACTOR / LORA_TRAIN_FACTOR)
    assert both.train_factor == pytest.approx((3 * LORA_TRAIN_FACTOR + 1 * TRAIN_FACTOR) / 4)
