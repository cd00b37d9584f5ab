"""The fast paths against the plain references of each paper (layerlab.core.model.reference)."""

import numpy as np
import pytest
import torch

from layerlab.core.model import arch, reference, runner, schedule
from layerlab.prune import blocks as prune
from layerlab.laser import rank
from tiny import DECODERS, N_LAYERS, tiny_batch, tiny_model


def _close(a, b, mask, atol, relative=False):
    """max |a - b| over real tokens within atol (relative: atol times the largest |b|)."""
    real = mask.bool()
    diff = (a.float().cpu() - b.float().cpu())[real].abs().max().item()
    bound = atol * max(1.0, b.float()[real].abs().max().item()) if relative else atol
    assert diff <= bound, f"max |diff| {diff} > {bound}"


@pytest.mark.parametrize("name", DECODERS)
def test_laser_sweep_path_matches_reference(name):
    """The sweep's path: the prefix before the reduced layer captured once from the
    unmodified model, the reduction from the float32 SVD cache, the rest run from there."""
    model = tiny_model(name)
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    cache = rank.SVDCache(model)
    for matrix_type in arch.matrix_types(model)[:3] + arch.matrix_types(model)[-1:]:
        for layer, rho in ((N_LAYERS - 1, 0.1), (1, 0.5)):
            with rank.reduced(model, rank.Reduction(matrix_type, layer, rho), cache):
                fast = runner.run_from(model, state, layer)
            ref = reference.laser_logits(model, matrix_type, layer, rho, ids, mask)
            _close(fast, ref, mask, 1e-4)
    # rho = 1 keeps the weight: the reference then is the unmodified model
    _close(reference.laser_logits(model, arch.matrix_types(model)[0], 0, 1.0, ids, mask),
           runner.full_logits(model, ids, mask), mask, 1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_gromov_distances_and_pruned_model_match_reference(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    fast = prune.angular_distances(prune.last_token_states(model, [(ids, mask)]))
    ref = reference.gromov_distances(model, ids, mask)
    np.testing.assert_allclose(fast, ref, atol=1e-6, equal_nan=True)
    for n in (1, 2):
        dropped, ref_logits = reference.gromov_pruned_logits(model, ref, n, ids, mask)
        assert prune.similarity_blocks(fast, n) == dropped
        with prune.dropped(model, dropped):
            _close(runner.full_logits(model, ids, mask), ref_logits, mask, 1e-5)


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("variant", schedule.VARIANTS)
def test_painters_schedules_match_reference(name, variant):
    model = tiny_model(name)
    if name == "gemma3_text" and "parallel" in variant:
        pytest.skip("a parallel group of Gemma3 blocks mixes sliding and full attention; "
                    "the plain reference runs a group under one position's mask")
    ids, mask = tiny_batch()
    steps = schedule.build(variant, N_LAYERS, 1, seed=3)
    ref = reference.painters_logits(model, steps, ids, mask)
    state = runner.capture(model, ids, mask)
    runner_out = runner.finish(model, runner.run_blocks(model, state, state.hidden[0],
                                                        steps))
    _close(runner_out, ref, mask, 1e-5)
    with schedule.scheduled(model, steps) as m:  # the real-model form (KV-cache slots)
        _close(runner.full_logits(m, ids, mask), ref, mask, 1e-5)


def test_in_order_schedule_is_the_model():
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    _close(reference.painters_logits(model, list(range(N_LAYERS)), ids, mask),
           runner.full_logits(model, ids, mask), mask, 0.0)


@pytest.mark.smoke
# bf16: the fast path's SVD runs in float32, the reference's in float64, each rounded to bf16
# (8-bit mantissa): logits agree to ~1% of their scale
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-3), (torch.bfloat16, 0.02)])
def test_references_on_smollm2(dtype, atol):
    import layerlab

    model, tok = layerlab.load("smollm2-135m", dtype=dtype)
    enc = tok(["The capital of France is Paris, and", "Two plus two equals"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    state = runner.capture(model, ids, mask)
    with rank.reduced(model, rank.Reduction("mlp_in", 20, 0.05)):
        fast = runner.run_from(model, state, 20)
    bf16 = dtype == torch.bfloat16
    _close(fast, reference.laser_logits(model, "mlp_in", 20, 0.05, ids, mask), mask, atol, relative=bf16)
    steps = schedule.build("reverse", arch.n_layers(model), 10)
    ref = reference.painters_logits(model, steps, ids, mask)  # on the unmodified model, outside the edit
    with schedule.scheduled(model, steps) as m:
        _close(runner.full_logits(m, ids, mask), ref, mask, atol, relative=bf16)
    fast_d = prune.angular_distances(prune.last_token_states(model, [(ids, mask)]))
    np.testing.assert_allclose(fast_d, reference.gromov_distances(model, ids, mask), atol=1e-4 if dtype == torch.float32 else 2e-2,
                               equal_nan=True)


def test_the_reference_twin_shares_the_weights_and_leaves_the_model_alone():
    """A scheduled reference copies modules, not weights (a 7B model has no room for two)."""
    from tiny import tiny_model

    from layerlab.core.model import arch, reference

    model = tiny_model("llama")
    n = arch.n_layers(model)
    twin = reference._with_blocks(model, [0, 0, n - 1])
    ours = {id(p) for p in model.parameters()}
    assert {id(p) for p in twin.parameters()} <= ours
    assert len(arch.blocks(model)) == n and len(arch.blocks(twin)) == 3
