"""The library's identities on a CUDA GPU, at realistic widths, with SDPA attention.

Run on a GPU machine: ``LAYERLAB_REQUIRE_CUDA=1 python -m pytest -q tests/test_cuda.py``
(``make gpu-check`` does). Without CUDA every test is skipped, unless LAYERLAB_REQUIRE_CUDA
is set: then every test FAILS, so a run that asked for the GPU can never pass green on a
CPU wheel. (LAYERLAB_TEST_DEVICE=cpu runs the same tests on the CPU, to check their logic
where no GPU is; the device-memory assertions then do not apply.)

Bounds are relative to the size of what is compared (``rel_bound``: a few units in the last
place of the dtype at the largest |logit|), and each test that states a bound also shows a
real change exceeds it, so no assertion here can pass whatever the code does.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers as tf

from identities import (TOL, kv_cache_identity, prefix_laser_vs_edited_forward, restores_bit_for_bit,
                        runner_vs_forward, schedule_identities)
from tiny import ARCH_NAMES, CharTokenizer, facts_file, train_bpe

REQUIRE = os.environ.get("LAYERLAB_REQUIRE_CUDA", "").lower() not in ("", "0", "false", "no")
DEVICE = torch.device(os.environ.get("LAYERLAB_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
DTYPES = [torch.float32, torch.bfloat16]
# relative to the largest |logit|: float32 round-off (TF32 off), ~5 ulps of bf16 / fp16
REL = {torch.float32: 2e-5, torch.bfloat16: 0.02, torch.float16: 0.004}


@pytest.fixture(autouse=True)
def _cuda_or_skip():
    if ON_CUDA and not torch.cuda.is_available():
        message = (f"no CUDA GPU here (torch {torch.__version__}, cuda build: {torch.version.cuda}); "
                   "install the CUDA build of torch on a GPU machine")
        if REQUIRE:
            pytest.fail(f"LAYERLAB_REQUIRE_CUDA is set, but {message}")
        pytest.skip(message + " (set LAYERLAB_REQUIRE_CUDA=1 to fail instead of skipping)")
    if ON_CUDA and torch.backends.cuda.matmul.allow_tf32:
        pytest.fail("TF32 matmuls are on (torch.backends.cuda.matmul.allow_tf32): float32 bounds would not hold")


def _gpu_dtypes():
    """bf16 where the GPU supports it (what layerlab's "auto" picks there), else float16."""
    if ON_CUDA and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return [torch.float32, torch.float16]
    return DTYPES


WIDE = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
    "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM,
                    {"head_dim": 64, "sliding_window": 16,
                     "layer_types": ["sliding_attention", "full_attention"] * 2}),
}


def wide_model(name: str, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A 4-block model at a realistic width (d_model 1024, 16 heads of 64, MLP 2816) with
    SDPA attention (what ``layerlab.load`` uses on CUDA), its output head scaled so the
    logits spread like a trained model's (std ~ 3; random init leaves them near 0)."""
    config_cls, model_cls, extra = WIDE[name]
    config = config_cls(vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                        num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=512, **extra)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    ids = torch.randint(3, 4096, (2, 32))
    with torch.no_grad():
        std = float(model(input_ids=ids, use_cache=False).logits.std())
        model.lm_head.weight.mul_(3.0 / std)
    return model.to(device=DEVICE, dtype=dtype)


def wide_batch(seed: int = 0, batch: int = 4, seq: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 4096, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for i in range(batch):
        mask[i, seq - 7 * i:] = 0
    return ids.to(DEVICE), mask.to(DEVICE)


def rel_bound(reference: torch.Tensor, dtype: torch.dtype) -> float:
    return REL[dtype] * max(1.0, float(reference.float().abs().max()))


# ---------------------------------------------------------------------------- the identities (tiny, eager)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_runner_reproduces_the_forward_pass_on_tiny_models(name, dtype):
    assert runner_vs_forward(name, dtype, DEVICE) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefix_cached_laser_scores_on_tiny_models(tmp_path, dtype):
    nll_diff, agree = prefix_laser_vs_edited_forward(tmp_path, dtype, DEVICE)
    assert nll_diff <= TOL[dtype] and agree >= 0.9


@pytest.mark.parametrize("dtype", DTYPES)
def test_restores_bit_for_bit(dtype):
    assert restores_bit_for_bit(dtype, DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_schedules_on_tiny_models(name, dtype):
    in_order, looped = schedule_identities(name, dtype, DEVICE)
    assert in_order <= TOL[dtype] and looped <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_kv_cache_on_tiny_models(name, dtype):
    assert kv_cache_identity(name, dtype, DEVICE) <= 2 * TOL[dtype]


# ---------------------------------------------------------------------------- wide, SDPA

@pytest.mark.parametrize("dtype", _gpu_dtypes())
@pytest.mark.parametrize("name", list(WIDE))
def test_runner_reproduces_sdpa_models_at_width_1024(name, dtype):
    from layerlab.core.model import runner

    model = wide_model(name, dtype)
    assert model.config._attn_implementation == "sdpa"
    ids, mask = wide_batch()
    real = mask.bool()
    ref = runner.full_logits(model, ids, mask)
    bound = rel_bound(ref[real], dtype)
    state = runner.capture(model, ids, mask)
    worst = max(float((runner.run_from(model, state, layer) - ref)[real].abs().max()) for layer in (0, 2, 4))
    assert worst <= bound
    # the bound can fail: skipping one block moves the logits well past it
    skipped = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], [0, 1, 3]))
    assert float((skipped - ref)[real].abs().max()) > 3 * bound


@pytest.mark.parametrize("dtype", _gpu_dtypes())
@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_parallel_groups_give_one_answer_at_width_1024(name, dtype):
    """Runner and scheduled model share schedule.accumulate: the same numbers, and the KV
    cache decodes the same tokens as no cache."""
    from layerlab.core.model import runner, schedule
    from layerlab.core.model.schedule import Parallel

    model = wide_model(name, dtype)
    ids, mask = wide_batch()
    real = mask.bool()
    steps = [0, Parallel((1, 2), 3), 3]
    state = runner.capture(model, ids, mask)
    ours = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps))
    with schedule.scheduled(model, steps):
        theirs = runner.full_logits(model, ids, mask)
        with torch.no_grad():
            cached = model.generate(ids[:1, :12], max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
            uncached = model.generate(ids[:1, :12], max_new_tokens=8, do_sample=False, use_cache=False,
                                      pad_token_id=0)
    assert float((ours - theirs)[real].abs().max()) <= rel_bound(theirs[real], dtype) / 10
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("dtype", _gpu_dtypes())
def test_prefix_cached_laser_matches_the_edited_model_at_width_1024(tmp_path, dtype):
    from layerlab.core.model import arch
    from layerlab.core.io import results
    from layerlab.core.eval import scoring
    from layerlab.laser import sweep as laser, rank

    model = wide_model("llama", dtype)
    task = laser.build_task(str(facts_file(tmp_path, 24)))
    sweeper = laser.Sweeper(model, CharTokenizer(), "wide", task, results.ResultStore(tmp_path / "r"),
                            max_tokens_per_batch=256)
    base = sweeper.per_item([])
    moved = 0.0
    for red in ([rank.Reduction("mlp_in", 3, 0.05)], [rank.Reduction("mlp_out", 2, 0.1), rank.Reduction("q", 3, 0.5)]):
        got = sweeper.per_item(red)
        with rank.reduced(model, red, sweeper.svd):
            ref = laser.item_metrics(task, scoring.score_full(model, sweeper.scorer.batches, len(task.contexts)))
        bound = REL[dtype] * max(1.0, float(ref["nll"].abs().max()))
        assert float(np.abs(got["nll"].to_numpy() - ref["nll"].to_numpy()).max()) <= bound
        moved = max(moved, float(np.abs(got["nll"].to_numpy() - base["nll"].to_numpy()).max()))
        for r in red:  # restored bit for bit from the CPU originals
            assert torch.equal(arch.weight(model, r.matrix_type, r.layer).read().cpu(),
                               sweeper.svd.original(r.matrix_type, r.layer))
    assert moved > 10 * REL[dtype]  # the edits change the scores: the bound above can fail


def test_svd_runs_on_the_device_in_float32_and_keeps_originals_on_the_cpu():
    from layerlab.core.model import arch
    from layerlab.laser import rank

    model = wide_model("llama", torch.bfloat16)
    cache = rank.SVDCache(model)
    u, s, vh = cache.svd("mlp_in", 1)
    assert u.device.type == DEVICE.type and u.dtype == torch.float32
    assert cache.original("mlp_in", 1).device.type == "cpu"
    approx = cache.approximation(rank.Reduction("mlp_in", 1, 0.25))
    assert approx.dtype == torch.bfloat16 and approx.device.type == DEVICE.type
    k = rank.rank_for(0.25, 1024)
    sv = torch.linalg.svdvals(approx.double().cpu())
    assert sv[k + 8:].max() < 0.05 * sv[k - 1]  # rank k up to bf16 rounding of the product
    w = arch.weight(model, "mlp_in", 1).read()
    assert not torch.equal(approx, w)


# ---------------------------------------------------------------------------- the chapters' entry points

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A small Llama with a byte-level BPE tokenizer, saved as a checkpoint for ``layerlab.load``."""
    words = "the capital of france is paris and rome is in italy while berlin lies on a river".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 12)) for _ in range(300)]
    tok = train_bpe(texts, 400)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("small-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_load_puts_the_model_on_the_gpu_in_the_dtype_auto_picks(model_folder):
    import layerlab
    from layerlab.core.model import models

    model, tok = layerlab.load(model_folder, device=str(DEVICE))
    p = next(model.parameters())
    assert p.device.type == DEVICE.type
    assert p.dtype == models.resolve_dtype("auto", DEVICE)
    if ON_CUDA:
        assert p.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        assert model.config._attn_implementation == "sdpa"
    assert models.runtime(model)["device"] == DEVICE.type


def test_scored_positions_lm_agrees_with_the_library_scores_on_the_gpu(model_folder):
    from lm_eval.api.instance import Instance

    import layerlab
    from layerlab.core.eval import scoring
    from layerlab.core.eval.lm_eval_model import ScoredPositionsLM

    model, tok = layerlab.load(model_folder, device=str(DEVICE))
    pairs = [("the capital of france is", " paris"), ("rome is in", " italy"), ("berlin lies on a", " river"),
             ("the capital of italy is", " rome and paris")]
    lm = ScoredPositionsLM(pretrained=model, tokenizer=tok, batch_size=2, device=str(DEVICE),
                           softmax_dtype=torch.float32)
    theirs = np.array([lp for lp, _ in lm.loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)],
        disable_tqdm=True)])
    ctx, cont = zip(*pairs)
    ours = scoring.score_full(model, scoring.encode(tok, ctx, cont), len(pairs)).logprob
    dtype = next(model.parameters()).dtype
    assert np.abs(ours - theirs).max() <= REL[dtype] * max(1.0, np.abs(theirs).max())
    assert np.ptp(theirs) > 10 * REL[dtype]  # the pairs' scores differ: agreement is not by accident


def test_last_token_states_on_the_gpu_match_the_cpu(model_folder):
    import layerlab
    from layerlab.prune import blocks as prune

    model, tok = layerlab.load(model_folder, device=str(DEVICE), dtype="float32")
    cpu_model, _ = layerlab.load(model_folder, device="cpu", dtype="float32")
    texts = ["the capital of france is paris", "rome is in italy", "berlin lies on a river and rome"]
    batches = prune.text_batches(tok, texts, max_length=32, batch_size=2)
    here = prune.last_token_states(model, batches)
    there = prune.last_token_states(cpu_model, batches)
    assert here.device.type == "cpu" and here.dtype == torch.float32 and here.shape == there.shape
    assert float((here - there).abs().max()) <= 1e-4 * float(there.abs().max())
    d = prune.angular_distances(here)
    assert np.nanmax(np.abs(d - prune.angular_distances(there))) <= 1e-4


def test_painters_similarity_stays_off_the_device_in_float64():
    from layerlab.painters import grid as painters
    from layerlab.core.model import runner

    model = wide_model("llama", torch.bfloat16)
    ids, mask = wide_batch(batch=4, seq=128)
    state = runner.capture(model, ids, mask)
    states = torch.stack(state.hidden)  # [L + 1, batch, seq, d]
    expected = torch.nn.functional.normalize(states.double().cpu(), dim=-1)
    real = mask.bool().cpu()
    ref = sum(torch.einsum("atd,btd->ab", expected[:, b, real[b]], expected[:, b, real[b]])
              for b in range(states.shape[1])) / real.sum()
    if ON_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    sim = painters.hidden_similarity(states, mask)
    if ON_CUDA:  # one row's float32 work at a time, never a float64 copy of every state (4x their bytes)
        assert torch.cuda.max_memory_allocated() - before < 2 * states.numel() * states.element_size()
    assert np.abs(sim - ref.numpy()).max() <= 0.01
    assert np.allclose(np.diag(sim), 1.0, atol=1e-3)


def test_pruned_copy_on_the_gpu_costs_the_kept_blocks_only():
    from layerlab.core.model import arch, runner
    from layerlab.prune import blocks as prune

    model = wide_model("llama", torch.bfloat16)
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    if ON_CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    twin = prune.pruned_copy(model, [1, 2])
    kept = sum(p.numel() * p.element_size() for p in twin.parameters())
    if ON_CUDA:  # a deep copy of the whole model first would need `full` more
        assert torch.cuda.max_memory_allocated() - before <= kept * 1.05 + 2**20 < full
    assert next(twin.parameters()).device.type == DEVICE.type and arch.n_layers(twin) == 2
    ids, mask = wide_batch()
    state = runner.capture(model, ids, mask)
    expected = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], [0, 3]))
    got = runner.full_logits(twin, ids, mask)
    assert float((got - expected)[mask.bool()].abs().max()) <= rel_bound(expected, torch.bfloat16)


def test_healing_on_the_gpu_merges_in_float32():
    from peft import LoraConfig, get_peft_model

    from layerlab.core.model import arch
    from layerlab.prune import healing, blocks as prune

    model = wide_model("llama", torch.bfloat16)
    work = prune.pruned_copy(model, [2])
    out = healing.heal(work, torch.randint(3, 4096, (4, 32)),
                       healing.HealConfig(rank=4, steps=2, warmup_steps=1, batch_size=2, seq_len=32,
                                          learning_rate=1e-2), progress=False)
    healed = out["model"]
    assert all(np.isfinite(out["losses"])) and next(healed.parameters()).device.type == DEVICE.type
    assert arch.weight(healed, "mlp_in", 0).read().dtype == torch.bfloat16
    assert not any("lora" in n for n, _ in healed.named_parameters())
    # the merge itself: one rounding of the float32 sum
    fresh = wide_model("llama", torch.bfloat16)
    w0 = arch.weight(fresh, "mlp_in", 0).read()
    peft_model = get_peft_model(fresh, LoraConfig(r=4, lora_alpha=4, target_modules=["up_proj"], lora_dropout=0.0))
    layer = peft_model.base_model.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(1e-3 * torch.randn_like(layer.lora_B["default"].weight))
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    expected = (w0.float() + (b @ a) * layer.scaling["default"]).to(torch.bfloat16)
    healing.merge_lora(peft_model)
    got = arch.weight(peft_model.unload(), "mlp_in", 0).read()
    assert torch.equal(got, expected) and not torch.equal(got, w0)


@pytest.mark.parametrize("dtype", _gpu_dtypes())
def test_sokoban_agent_trains_and_plays_on_the_device(tmp_path, dtype):
    from layerlab.laser.sokoban import agent as da
    from layerlab.core.io import results

    env = da.EnvConfig(size=7, n_boxes=1, tries=2, reverse_steps=30, step_limit=12)
    agent = da.AgentConfig(width=64, depth=2, heads=2, context=3, n_train=30, steps=30, batch=16,
                           checkpoint_every=10, max_timestep=16)
    model, info = da.train(results.ResultStore(tmp_path), env, agent, 0, DEVICE, dtype, progress=False)
    p = next(model.parameters())
    assert p.device.type == DEVICE.type and p.dtype == dtype
    losses = results.ResultStore(tmp_path).table(da.TRAIN_TECHNIQUE)["value"].to_numpy()
    assert np.isfinite(losses).all() and losses[-5:].mean() < losses[:5].mean()  # it learns
    played = da.rollout(model, env.levels(1, "test", 8, optimal=True), env, agent, info["target_return"])
    assert len(played) == 8 and played["steps"].between(1, env.step_limit).all()
