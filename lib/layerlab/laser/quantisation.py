"""How much quantisation noise a GGUF weight matrix carries, against the energy a LASER
rank reduction removes from it.

The embedded decoders are dequantised 4-bit GGUF files. In every GGML block format a
weight is stored as ``x = step * q + offset`` with an integer code q, one ``step`` per
(sub-)block of 16 or 32 weights:

    Q4_0, Q5_0, Q8_0   blocks of 32: x = d * (q - c)                  step = d
    Q4_1, Q5_1         blocks of 32: x = d * q + m                    step = d
    Q4_K, Q5_K         super-blocks of 256 = 8 sub-blocks of 32:
                       x = d * sc_j * q - dmin * m_j (6-bit sc_j)      step = d * sc_j
    Q6_K               super-blocks of 256 = 16 sub-blocks of 16:
                       x = d * sc_j * (q - 32) (int8 sc_j)             step = d * |sc_j|

(layouts as in ggml-quants.c and ``gguf.quants``; F32/F16/BF16 tensors count as noiseless
here). Rounding to the nearest code leaves an error of at most step/2 per weight, so the
noise energy ||W - W_orig||_F^2 is at most sum(step^2 / 4) ("bound"), and about
sum(step^2 / 12) if the errors are uniform ("uniform"). This bound assumes the original
weight lay inside its block's range (llama.cpp's K-quant search may clip a few outliers).

A rank-k cut removes ||W - W_k||_F^2 = sum of the squared dropped singular values of the
dequantised W. When that is comparable to the noise energy, part of what LASER removes
may be quantisation noise rather than the weight's own higher-order components.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from layerlab.core.model import embedded
from . import rank

# our matrix types -> the GGUF tensor names of block l (llama.cpp's names)
GGUF_NAMES = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
              "mlp_in": "ffn_up", "gate": "ffn_gate", "mlp_out": "ffn_down"}
NOISELESS = ("F32", "F16", "BF16")


def _f16(raw: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte offset ``start`` of every block, as float64 [n_blocks, 1]."""
    return np.ascontiguousarray(raw[:, start:start + 2]).view(np.float16).astype(np.float64)


def block_steps(raw: np.ndarray, type_name: str) -> tuple[np.ndarray, int]:
    """Quantisation steps of GGML blocks.

    raw: uint8 [n_blocks, type_size] (one block per row, as stored); type_name: e.g. 'Q4_K'.
    Returns (steps [n_blocks, n_sub] in the weight's units, sub-block size in weights)."""
    raw = np.asarray(raw, dtype=np.uint8)
    if type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return _f16(raw, 0), 32
    if type_name in ("Q4_K", "Q5_K"):
        from gguf.quants import Q4_K
        sc, _ = Q4_K.get_scale_min(np.ascontiguousarray(raw[:, 4:16]))
        return _f16(raw, 0) * sc.astype(np.float64), 32
    if type_name == "Q6_K":
        scales = np.ascontiguousarray(raw[:, 192:208]).view(np.int8).astype(np.float64)
        return _f16(raw, 208) * np.abs(scales), 16
    raise ValueError(f"block_steps: GGML type {type_name!r} is not supported; supported: "
                     "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K")


def noise_energy(raw: np.ndarray, type_name: str) -> tuple[float, float]:
    """(bound, uniform): sum(step^2 / 4) and sum(step^2 / 12) over every weight of the
    blocks ``raw`` (see ``block_steps``); (0, 0) for float tensors."""
    if type_name in NOISELESS:
        return 0.0, 0.0
    steps, size = block_steps(raw.reshape(-1, raw.shape[-1]), type_name)
    total = float(size * np.sum(steps ** 2))
    return total / 4, total / 12


def gguf_file(model_name: str, workdir: str | Path) -> Path:
    """The GGUF a registry model was dequantised from (assembled into ``workdir`` when it
    ships in parts). Raises ValueError for a model that does not come from a GGUF."""
    entry = embedded.REGISTRY.get(model_name)
    if entry is None or not entry.kind.startswith("gguf"):
        raise ValueError(f"model {model_name!r} does not come from a GGUF file of the registry")
    return embedded.gguf_path(entry, model_name, Path(workdir))


def read_tensor(path: str | Path, matrix_type: str, layer: int) -> tuple[np.ndarray, str, np.ndarray]:
    """(raw blocks uint8 [rows, bytes per row], GGML type name, dequantised float32 [rows, cols])
    of one weight matrix of a GGUF file. The rows are GGUF's (q and k may be permuted
    relative to Hugging Face's; energies and singular values do not depend on that)."""
    import gguf

    if matrix_type not in GGUF_NAMES:
        raise ValueError(f"matrix_type: {matrix_type!r}; allowed: {', '.join(GGUF_NAMES)}")
    name = f"blk.{layer}.{GGUF_NAMES[matrix_type]}.weight"
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name == name:
            raw = np.asarray(t.data)
            w = gguf.quants.dequantize(raw, t.tensor_type).astype(np.float32)
            return raw, t.tensor_type.name, w.reshape(w.shape[0], -1)
    raise ValueError(f"{path}: no tensor {name!r} (matrix {matrix_type}, layer {layer})")


def compare(raw: np.ndarray, type_name: str, w: np.ndarray, rhos) -> pd.DataFrame:
    """Per rho: removed_energy = ||W - W_k||_F^2 (sum of squared dropped singular values of
    the dequantised W [out, in]), the noise energies (``noise_energy``), their ratio
    removed / bound, and both as fractions of ||W||_F^2."""
    s2 = rank.singular_values(torch.from_numpy(w.astype(np.float64))).cpu().numpy() ** 2
    bound, uniform = noise_energy(raw, type_name)
    total = float(s2.sum())
    rows = []
    for rho in rhos:
        removed = float(s2[rank.rank_for(float(rho), len(s2)):].sum())
        rows.append({"rho": float(rho), "gguf_type": type_name, "removed_energy": removed,
                     "noise_energy_bound": bound, "noise_energy_uniform": uniform,
                     "ratio": removed / bound if bound else float("inf"),
                     "removed_fraction": removed / total, "noise_fraction_bound": bound / total})
    return pd.DataFrame(rows)


def noise_vs_removed(model_name: str, matrix_type: str, layer: int, rhos) -> pd.DataFrame:
    """``compare`` for one matrix of a registry model's GGUF (columns: rho, gguf_type,
    removed_energy, noise_energy_bound, noise_energy_uniform, ratio, removed_fraction,
    noise_fraction_bound, model, matrix_type, layer; energies in squared weight units)."""
    return noise_table(model_name, [(matrix_type, layer)], rhos)


def noise_table(model_name: str, matrices, rhos) -> pd.DataFrame:
    """``noise_vs_removed`` for several (matrix_type, layer) pairs, reading the GGUF once."""
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        path = gguf_file(model_name, tmp)
        for matrix_type, layer in dict.fromkeys((t, int(l)) for t, l in matrices):
            raw, type_name, w = read_tensor(path, matrix_type, layer)
            frames.append(compare(raw, type_name, w, rhos).assign(model=model_name, matrix_type=matrix_type,
                                                                  layer=layer))
    return pd.concat(frames, ignore_index=True)


def describe(table: pd.DataFrame) -> str:
    """One sentence per matrix of a ``noise_table``: at its smallest rho, how the removed
    energy compares with the quantisation-noise bound."""
    out = []
    for (t, layer), g in table.groupby(["matrix_type", "layer"], sort=False):
        r = g.sort_values("rho").iloc[0]
        out.append(f"{t} at layer {layer} ({r.gguf_type}): a cut to rho = {r.rho} removes {100 * r.removed_fraction:.1f}% "
                   f"of ||W||², quantisation noise is at most {100 * r.noise_fraction_bound:.2f}% of it: the noise's whole "
                   f"energy is at most {100 / r.ratio:.2f}% of the energy the cut removes.")
    return " ".join(out)
