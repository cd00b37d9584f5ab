"""Provenance of a measured number: the fingerprint of the model's weights and the
versions of the packages that computed it. ``runtime(model)`` gathers them (with dtype and
device type) into the dict that is part of every results key (``results.point_key``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from layerlab.core.io.files import cached_sha256

# the files of a model folder that its fingerprint covers: weights, config, tokenizer
FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".tiktoken")
VERSIONED_PACKAGES = ("torch", "transformers", "lm_eval")


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """A short hex fingerprint of a model folder's contents: the SHA-256 of each weight,
    config and tokenizer file (``FINGERPRINT_SUFFIXES``, top level, hidden files left out),
    with its name. Each file's hash is cached by path, size and mtime
    (``files.cached_sha256``), so a model's files are read once per machine; a folder
    overwritten with new weights gets a new fingerprint, the same weights saved again the
    same one. Where the folder lies is not part of it."""
    root = Path(folder)
    files = sorted(f for f in root.iterdir()
                   if f.is_file() and not f.name.startswith(".") and f.name.endswith(FINGERPRINT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{root}: no model files ({', '.join(FINGERPRINT_SUFFIXES)}) to fingerprint")
    listing = "\n".join(f"{f.name} {cached_sha256(f)}" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """The fingerprint of a model's weights as loaded: the one ``load`` attached
    (``model.layerlab_weights``), else, for a model built elsewhere (a tiny random model
    in the tests), a hash of its state dict (names, dtypes, shapes, bytes), computed on
    first use and cached on the model. Cached once, never recomputed: LASER and the
    other temporary interventions edit weights in place, and the key must name the
    unmodified weights; so call this (or ``runtime``) before any in-place edit of a
    model that ``load`` did not load."""
    cached = getattr(model, "layerlab_weights", None)
    if cached:
        return cached
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).cpu().numpy().tobytes())  # bytes of any dtype, bf16 too
    model.layerlab_weights = "state:" + h.hexdigest()[:16]
    return model.layerlab_weights


def package_versions() -> dict:
    """Installed versions of the packages a number depends on (None: not installed)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package.replace("_", "-"))
        except PackageNotFoundError:
            return None
    return {package: installed(package) for package in VERSIONED_PACKAGES}


def runtime(model: nn.Module) -> dict:
    """What a measured number depends on besides the intervention and the data: the
    model's weights (``weights_fingerprint``), dtype and device type, and the versions of
    torch, transformers and lm-eval. Part of every results key: a bf16 point is not an
    fp32 point, and a folder overwritten with new weights is a new model."""
    p = next(model.parameters())
    gpu = None
    if p.device.type == "cuda":  # which GPU: kernels, and so bf16 round-off, differ between GPU models
        # a planner's stand-in (distributed.key_model) names the workers' GPU; a real model its own
        gpu = model.layerlab_gpu if hasattr(model, "layerlab_gpu") else torch.cuda.get_device_name(p.device)
    return runtime_of(p.dtype, p.device.type, weights_fingerprint(model), gpu)


def runtime_of(dtype: torch.dtype, device_type: str, weights: str, gpu: str | None = None) -> dict:
    """The runtime dict of ``runtime`` for a model not loaded here (a planner that keys
    points before Ray workers load the model): ``weights`` is ``fingerprint(name)``;
    ``gpu``, the GPU's name, is part of it on CUDA only."""
    out = {"dtype": str(dtype).removeprefix("torch."), "device": device_type, "weights": weights,
           "versions": package_versions()}
    if device_type == "cuda":
        out["gpu"] = gpu
    return out
