"""The library's identities in bfloat16 on the CPU (how CI checks the non-fp32 path), and
device/dtype handling. Tolerances are in identities.TOL, with the reasoning there."""

import pytest
import torch

import layerlab
from layerlab.core.model import models
from identities import (TOL, kv_cache_identity, prefix_laser_vs_edited_forward, restores_bit_for_bit,
                        runner_vs_forward, schedule_identities)
from tiny import ARCH_NAMES

BF16 = torch.bfloat16


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_runner_reproduces_the_forward_pass_in_bf16(name):
    assert runner_vs_forward(name, BF16, "cpu") <= TOL[BF16]


def test_prefix_cached_laser_scores_match_an_edited_forward_in_bf16(tmp_path):
    nll_diff, agree = prefix_laser_vs_edited_forward(tmp_path, BF16, "cpu")
    assert nll_diff <= TOL[BF16]
    assert agree >= 0.9  # a bf16 near-tie may flip an argmax; the nll bound above is the real check


def test_reductions_drops_and_schedules_restore_bit_for_bit_in_bf16():
    assert restores_bit_for_bit(BF16, "cpu")


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_schedules_in_bf16(name):
    in_order, looped = schedule_identities(name, BF16, "cpu")
    assert in_order <= TOL[BF16] and looped <= TOL[BF16]


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_kv_cache_of_pruned_and_scheduled_models_in_bf16(name):
    assert kv_cache_identity(name, BF16, "cpu") <= 2 * TOL[BF16]


def test_fp32_identities_are_tighter():
    # the same checks hold to float32 round-off in float32: the bf16 bounds are not hiding a bug
    assert runner_vs_forward("llama", torch.float32, "cpu") <= TOL[torch.float32]
    assert kv_cache_identity("llama", torch.float32, "cpu") <= 1e-4


def test_device_and_dtype_parameters():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_dtype("auto", "cpu") == models.auto_dtype(torch.device("cpu"))  # test_auto_dtype.py: both branches
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match=r"device: 'gpu' is not a device; allowed: auto, cpu, cuda, cuda:N"):
        models.resolve_device("gpu")
    with pytest.raises(ValueError, match=r"dtype: 'bf16' is not a dtype; allowed: auto, float32, bfloat16, float16"):
        models.resolve_dtype("bf16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda:0' asked for CUDA, but no CUDA GPU is available"):
            models.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="dtype: 'half'"):  # refused before any file is read
        layerlab.load("no-such-model", dtype="half")


def test_runtime_is_part_of_every_key():
    from layerlab.core.io import results
    from tiny import tiny_model
    fp32, bf16 = models.runtime(tiny_model("llama")), models.runtime(tiny_model("llama", dtype=BF16))
    assert {k: fp32[k] for k in ("dtype", "device")} == {"dtype": "float32", "device": "cpu"}
    assert bf16["dtype"] == "bfloat16"
    assert results.point_key("m", "laser", {}, "d", "test", fp32) != results.point_key("m", "laser", {}, "d", "test", bf16)
