"""dtype="auto": bfloat16 only where the device computes it natively (issue #19)."""

import pytest
import torch

from layerlab.core.model import models


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names):
        monkeypatch.setattr(models, "cpu_flags", lambda: frozenset(names))
    return set_flags


def test_auto_is_bf16_on_a_cpu_with_native_bf16(flags):
    flags("avx2", "avx512f", "avx512_bf16")
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
    flags("avx2", "avx512f", "amx_tile", "amx_bf16")  # AMX without the avx512_bf16 flag
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16


def test_auto_is_float32_on_an_avx2_only_cpu(flags):
    flags("sse4_2", "avx", "avx2", "fma")
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    flags("avx512f", "avx512bw")  # AVX-512 without bf16: torch emulates bf16 there too
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    flags()  # no /proc/cpuinfo (macOS, Windows): the safe choice
    assert models.resolve_dtype("auto", "cpu") == torch.float32


def test_an_explicit_dtype_wins_over_the_cpu(flags):
    flags("avx2")
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    flags("avx512_bf16")
    assert models.resolve_dtype("float32", "cpu") == torch.float32


def test_cpu_flags_reads_this_machine():
    import os
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    text = open("/proc/cpuinfo").read()
    assert models.cpu_has_native_bf16() == ("avx512_bf16" in text or "amx_bf16" in text)


def test_auto_on_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(models, "resolve_device", lambda device="auto": torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.resolve_dtype("auto", "cuda") == torch.float16
    with pytest.raises(ValueError, match="bfloat16 is not supported by this GPU; allowed here: auto"):
        models.resolve_dtype("bfloat16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.resolve_dtype("auto", "cuda") == torch.bfloat16


def test_an_isa_limit_below_bf16_means_no_native_bf16(flags, monkeypatch):
    flags("avx2", "avx512f", "avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN then emulates bf16, as on an AVX2-only CPU
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
