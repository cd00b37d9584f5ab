"""Quantisation steps read from GGML blocks, checked against gguf's own (de)quantiser."""

import numpy as np
import pytest

from layerlab.laser import quantisation

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
# byte ranges of the quantised codes in one block, per type (the rest: scales and mins)
CODES = {"Q4_0": [(2, 18)], "Q4_1": [(4, 20)], "Q8_0": [(2, 34)], "Q5_0": [(6, 22)], "Q5_1": [(8, 24)],
         "Q4_K": [(16, 144)], "Q5_K": [(48, 176)], "Q6_K": [(0, 128)]}
HIGH_BITS = {"Q5_0": (2, 6), "Q5_1": (4, 8), "Q5_K": (16, 48), "Q6_K": (128, 192)}


@pytest.mark.parametrize("name", sorted(CODES))
def test_step_is_what_one_more_code_unit_adds(name):
    """Raising every code by one raises every dequantised weight by exactly its step."""
    qtype = getattr(T, name)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (6, size), dtype=np.uint8)
    for start in (0, 2, 4) if name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else (0,):  # sane float16 scales
        if name != "Q6_K":
            raw[:, start:start + 2] = np.frombuffer(np.float16(rng.uniform(0.01, 0.1)).tobytes(), np.uint8)
    if name == "Q6_K":
        raw[:, 208:210] = np.frombuffer(np.float16(0.05).tobytes(), np.uint8)
    lo, hi = raw.copy(), raw.copy()
    for a, b in CODES[name]:
        lo[:, a:b] = 0
        hi[:, a:b] = 1 if name == "Q8_0" else 0x11
    if name in HIGH_BITS:
        a, b = HIGH_BITS[name]
        lo[:, a:b] = hi[:, a:b] = 0
    diff = gguf.quants.dequantize(hi, qtype).astype(np.float64) - gguf.quants.dequantize(lo, qtype)
    steps, sub = quantisation.block_steps(raw, name)
    expect = np.repeat(steps, sub, axis=1)
    if name == "Q6_K":  # negative int8 scales move the weight down by |step|
        diff = np.abs(diff)
    np.testing.assert_allclose(diff.reshape(expect.shape), expect, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0"])
def test_round_to_nearest_noise_stays_under_the_bound(name):
    qtype = getattr(T, name)
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (64, 256)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    error = float(((gguf.quants.dequantize(raw, qtype) - w).astype(np.float64) ** 2).sum())
    bound, uniform = quantisation.noise_energy(raw.reshape(-1, gguf.GGML_QUANT_SIZES[qtype][1]), name)
    assert error <= bound * 1.02  # step/2 per weight (2%: the float16 rounding of the scale)
    assert 0.5 * uniform < error < 1.5 * uniform  # the uniform-error estimate is the right size


def test_rank_cut_energy_is_the_dropped_singular_values():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (32, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, T.Q8_0)
    deq = gguf.quants.dequantize(raw, T.Q8_0)
    table = quantisation.compare(raw, "Q8_0", deq, [0.25, 1.0])
    s = np.linalg.svd(deq.astype(np.float64), compute_uv=False)
    assert table["removed_energy"].iloc[0] == pytest.approx(float((s[8:] ** 2).sum()), rel=1e-9)
    assert table["removed_energy"].iloc[1] == 0


def test_unsupported_types_and_models_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        quantisation.block_steps(np.zeros((1, 10), np.uint8), "IQ2_XS")
    with pytest.raises(ValueError, match="does not come from a GGUF"):
        quantisation.gguf_file("minilm-l6", "/tmp")


@pytest.mark.smoke
def test_smollm2_noise_is_measured():
    table = quantisation.noise_vs_removed("smollm2-135m", "mlp_in", 29, [0.01, 0.9])
    assert (table["gguf_type"] == "Q4_1").all() and (table["noise_energy_bound"] > 0).all()
    assert table["removed_energy"].iloc[0] > table["removed_energy"].iloc[1] > 0
