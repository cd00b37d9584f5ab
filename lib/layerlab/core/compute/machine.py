"""What machine a figure was produced on: the CPU (model, cores, the instruction sets that
decide which dtype is fast), the GPU, and the dtype ``"auto"`` picks there. Recorded
beside every chapter time and shown on the book's Reproducibility page."""

from __future__ import annotations

import os
import platform

import torch

from layerlab.core.model.models import NATIVE_BF16_FLAGS, auto_dtype, cpu_flags, cpu_has_native_bf16

# environment variables that cap the instruction sets torch, oneDNN and MKL use (they make a
# CPU behave like an older one: how this book's AVX2-only timings were taken on an AVX-512 CPU)
ISA_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# the flags that decide how fast float32 and bfloat16 matmuls run on a CPU
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", *NATIVE_BF16_FLAGS, "amx_tile")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name", else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """One flat dict: cpu, cpu_cores, torch_threads, cpu_flags (the ``RELEVANT_FLAGS`` it
    has, comma-separated), native_bf16, gpu ("none" without CUDA), auto_dtype (what
    ``dtype="auto"`` picks on the default device), torch_cpu_capability (the kernels torch
    dispatches to), isa_limits (``ISA_LIMIT_VARIABLES`` set in the environment)."""
    flags = cpu_flags()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_flags": ",".join(f for f in RELEVANT_FLAGS if f in flags) or "unknown",
            "native_bf16": cpu_has_native_bf16(flags),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "auto_dtype": str(auto_dtype(device)).removeprefix("torch."),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_limits": ", ".join(f"{k}={os.environ[k]}" for k in ISA_LIMIT_VARIABLES if os.environ.get(k)) or "none"}


def runtime_label(model: torch.nn.Module) -> str:
    """Markdown naming a loaded model's dtype and device and why that dtype is fast or
    slow here, for the chapters' headers; for a weightless model (meta device, a Ray
    driver's plan: ``planning.skeleton``) the runtime the Ray workers will compute in."""
    p = next(model.parameters())
    dtype = str(p.dtype).removeprefix("torch.")
    if p.device.type == "meta":
        plan = getattr(model, "layerlab_planned", None)
        if not plan:
            return f"`{dtype}`, weightless (meta device: no weights loaded here)"
        where = plan.get("gpu") or plan["device"].upper()
        return f"`{dtype}` on the Ray workers ({where}; no weights loaded on this driver)"
    if p.device.type == "cuda":
        return f"`{dtype}` on `{torch.cuda.get_device_name(p.device)}`"
    native = cpu_has_native_bf16()
    why = "computes bfloat16 natively" if native else "has no native bfloat16 (bf16 is emulated, several times slower)"
    return f"`{dtype}` on the CPU ({cpu_model()}, {os.cpu_count()} cores; it {why})"
