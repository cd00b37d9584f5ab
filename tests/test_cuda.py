"""The same identities as test_dtypes.py, on a CUDA GPU (skipped where there is none).

Run on a GPU machine: `python -m pytest -q tests/test_cuda.py`."""

import pytest
import torch

from identities import (TOL, kv_cache_identity, prefix_laser_vs_edited_forward, restores_bit_for_bit,
                        runner_vs_forward, schedule_identities)
from tiny import ARCH_NAMES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_runner_reproduces_the_forward_pass_on_cuda(name, dtype):
    # TF32 matmuls would loosen float32: off by default in torch, asserted here
    assert not torch.backends.cuda.matmul.allow_tf32
    assert runner_vs_forward(name, dtype, "cuda") <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefix_cached_laser_scores_on_cuda(tmp_path, dtype):
    nll_diff, agree = prefix_laser_vs_edited_forward(tmp_path, dtype, "cuda")
    assert nll_diff <= TOL[dtype] and agree >= 0.9


@pytest.mark.parametrize("dtype", DTYPES)
def test_restores_bit_for_bit_on_cuda(dtype):
    assert restores_bit_for_bit(dtype, "cuda")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_schedules_on_cuda(name, dtype):
    in_order, looped = schedule_identities(name, dtype, "cuda")
    assert in_order <= TOL[dtype] and looped <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_kv_cache_on_cuda(name, dtype):
    assert kv_cache_identity(name, dtype, "cuda") <= 2 * TOL[dtype]


def test_svd_runs_on_the_device_in_float32_and_casts_back():
    from layerlab import arch, rank
    from tiny import tiny_model
    model = tiny_model("llama", dtype=torch.bfloat16, device="cuda")
    cache = rank.SVDCache(model)
    u, s, vh = cache.svd("mlp_in", 1)
    assert u.device.type == "cuda" and u.dtype == torch.float32
    approx = cache.approximation(rank.Reduction("mlp_in", 1, 0.5))
    assert approx.dtype == torch.bfloat16 and approx.device.type == "cuda"
    assert torch.equal(cache.approximation(rank.Reduction("mlp_in", 1, 1.0)), arch.weight(model, "mlp_in", 1).read())
