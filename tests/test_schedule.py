import pytest
import torch

from layerlab.core.model import arch, runner, schedule
from layerlab.painters import grid as painters
from layerlab.core.model.schedule import Parallel
from tiny import DECODERS, N_LAYERS, tiny_batch, tiny_model


@pytest.mark.parametrize("name", DECODERS)
def test_in_order_schedule_reproduces_the_logits_exactly(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    ref = runner.full_logits(model, ids, mask)
    state = runner.capture(model, ids, mask)
    steps = schedule.in_order(N_LAYERS)
    got = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps))
    real = mask.bool()
    assert torch.equal(got[real], ref[real])
    with schedule.scheduled(model, schedule.in_order(N_LAYERS)):
        as_model = runner.full_logits(model, ids, mask)
    assert torch.equal(as_model[real], ref[real])


def test_parallel_group_of_one_block_with_one_iteration_is_that_block():
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    plain = runner.run_blocks(model, state, state.hidden[0], [0, 1, 2, 3])
    grouped = runner.run_blocks(model, state, state.hidden[0], [0, Parallel((1,), 1), 2, 3])
    assert torch.equal(plain, grouped)


def test_parallel_averages_block_outputs_on_a_shared_input():
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    h = state.hidden[1]
    expected = (runner.call_block(model, state, 1, h) + runner.call_block(model, state, 2, h)) / 2
    expected = (runner.call_block(model, state, 1, expected) + runner.call_block(model, state, 2, expected)) / 2
    got = runner.run_blocks(model, state, h, [Parallel((1, 2), 2)])
    assert torch.allclose(got, expected, atol=1e-6)


def test_variants_have_the_papers_shape():
    assert schedule.build("skip", 10, 3) == [0, 1, 2, 7, 8, 9]
    assert schedule.build("middle_repeat", 10, 3) == [0, 1, 2, 5, 5, 5, 5, 7, 8, 9]
    assert schedule.build("reverse", 10, 3) == [0, 1, 2, 6, 5, 4, 3, 7, 8, 9]
    assert schedule.build("parallel", 10, 3)[3] == Parallel((3, 4, 5, 6), 1)
    assert schedule.build("looped_parallel", 10, 3, iterations=3)[3] == Parallel((3, 4, 5, 6), 3)
    r = schedule.build("random", 10, 2, seed=5)
    assert r == schedule.build("random", 10, 2, seed=5)  # the same seed gives the same order
    assert sorted(r[2:8]) == list(range(2, 8)) and r[:2] == [0, 1] and r[8:] == [8, 9]
    assert any(schedule.build("random", 10, 2, seed=s) != r for s in range(6, 12))


def test_malformed_schedules_are_refused():
    with pytest.raises(ValueError, match=r"block index 9 out of range; allowed: 0..3"):
        schedule.validate([0, 9], 4)
    with pytest.raises(ValueError, match=r"iterations \(k\) must be an integer >= 1; got 0"):
        schedule.validate([Parallel((1, 2), 0)], 4)
    with pytest.raises(ValueError, match=r"N \(outer blocks kept at each end\) must be an integer in 1..4 .* got 5"):
        schedule.build("skip", 10, 5)
    with pytest.raises(ValueError, match=r"loop count \(k\) must be an integer >= 1"):
        schedule.build("looped_parallel", 10, 2, iterations=0)
    with pytest.raises(ValueError, match="variant: 'shuffle' is not one of skip, middle_repeat"):
        schedule.build("shuffle", 10, 2)


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("steps", [[0, 2, 2, 1, 3], [0, Parallel((1, 2), 3), 3], [3, 2, 1, 0]])
def test_scheduled_model_matches_the_runner_and_generates_with_a_correct_cache(name, steps):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    expected = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps))
    blocks_before = list(arch.blocks(model))
    with schedule.scheduled(model, steps):
        got = runner.full_logits(model, ids, mask)
        prompt = ids[:1, :8]
        with torch.no_grad():
            cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
            uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    real = mask.bool()
    assert (got - expected)[real].abs().max() < 1e-5
    assert torch.equal(cached, uncached)
    assert list(arch.blocks(model)) == blocks_before and model.config.num_hidden_layers == N_LAYERS


def test_gemma3_slots_follow_their_blocks_types():
    model = tiny_model("gemma3_text")  # sliding, full, sliding, full
    with schedule.scheduled(model, [1, 1, Parallel((0, 3), 2)]):
        assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention",
                                            "full_attention", "sliding_attention", "full_attention"]
    assert model.config.layer_types == ["sliding_attention", "full_attention"] * 2


def test_hidden_similarity_is_one_on_the_diagonal():
    states = torch.randn(5, 2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    sim = painters.hidden_similarity(states, mask)
    assert sim.shape == (5, 5)
    assert torch.allclose(torch.tensor(sim.diagonal()), torch.ones(5, dtype=torch.float64))
    a = torch.nn.functional.normalize(states[0][mask.bool()], dim=-1)
    b = torch.nn.functional.normalize(states[3][mask.bool()], dim=-1)
    assert sim[0, 3] == pytest.approx(float((a * b).sum(-1).mean()), abs=1e-6)


def test_parallel_sum_is_float32_and_one_block_groups_are_exact():
    a = torch.full((2, 3), 1.0, dtype=torch.bfloat16)
    tiny = torch.full((2, 3), 2.0 ** -9, dtype=torch.bfloat16)  # below bf16's resolution at 1.0
    total = None
    for out in (a, tiny, tiny, tiny, tiny):
        total = schedule.accumulate(total, out)
    assert total.dtype == torch.float32
    avg = schedule.average(total, 5, torch.bfloat16)
    assert avg.dtype == torch.bfloat16
    assert torch.equal(avg, ((1.0 + 4 * 2.0 ** -9) / 5 * torch.ones(2, 3)).to(torch.bfloat16))
    # summed one by one in bf16, the small outputs would vanish
    bf16_sum = a.clone()
    for _ in range(4):
        bf16_sum = bf16_sum + tiny
    assert torch.equal(bf16_sum, a)
    assert torch.equal(schedule.average(schedule.accumulate(None, a), 1, a.dtype), a)
    assert schedule.accumulate(None, a) is not a  # never sums into a block's own output


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_bf16_parallel_groups_give_the_same_numbers_in_the_runner_and_the_scheduled_model(name):
    """One schedule, one answer: the runner and the scheduled model share schedule.accumulate."""
    model = tiny_model(name, dtype=torch.bfloat16)
    ids, mask = tiny_batch()
    steps = [0, Parallel((1, 2, 3), 2)]
    state = runner.capture(model, ids, mask)
    ours = runner.run_blocks(model, state, state.hidden[0], steps)
    with schedule.scheduled(model, steps):
        theirs = runner.capture(model, ids, mask).hidden[-1]
    real = mask.bool()
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours[real], theirs[real])


def test_a_model_spread_over_devices_is_refused_before_any_work():
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    arch.blocks(model)[3].to("meta")  # stands in for a block on a second GPU (or offloaded)
    with pytest.raises(ValueError, match=r"runs a model on one device; .* parameters on cpu, meta.*Ray tasks"):
        runner.capture(model, ids, mask)


def test_sublayer_variants_run_only_one_sublayer_of_each_middle_block():
    from layerlab.core.model.schedule import Sublayer
    assert schedule.build("attn_only", 10, 3) == [0, 1, 2, *[Sublayer(i, "attn") for i in range(3, 7)], 7, 8, 9]
    assert schedule.build("mlp_only", 10, 4) == [0, 1, 2, 3, Sublayer(4, "mlp"), Sublayer(5, "mlp"), 6, 7, 8, 9]
    assert "attn_only" not in schedule.VARIANTS  # the paper's variants (and claims) are unchanged


@pytest.mark.parametrize("variant", schedule.SUBLAYER_VARIANTS)
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2", "gptj"])
def test_painters_sublayer_specs_agree_with_the_reference_and_generate_with_a_correct_cache(name, variant):
    from layerlab.core.model import reference
    model = tiny_model(name)
    ids, mask = tiny_batch()
    steps = painters.Spec(variant, 1).steps(N_LAYERS)
    state = runner.capture(model, ids, mask)
    ours = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps))
    ref = reference.sublayer_logits(model, steps, ids, mask)
    real = mask.bool()
    assert (ours - ref)[real].abs().max() < 1e-5
    assert (ours - runner.full_logits(model, ids, mask))[real].abs().max() > 1e-3  # the middle changed
    with schedule.scheduled(model, steps):
        assert (runner.full_logits(model, ids, mask) - ref)[real].abs().max() < 1e-5
        prompt = ids[:1, :8]
        with torch.no_grad():
            cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
            uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
