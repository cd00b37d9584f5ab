"""What pruning buys: a pruned model saved as a real checkpoint and measured in a fresh
process with plain transformers (size, peak memory, generation speed), on the device type
the model runs on (a GPU model is timed on a GPU: its key's runtime says "cuda")."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
from torch import nn

from layerlab.core.model import arch, models
from layerlab.core.io import results
from . import blocks as prune


_MEASURE = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM

def status(field):  # kB -> MB; VmHWM is this process's own peak (ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

torch.manual_seed(0)
baseline = status("VmRSS")
path, n_new, dtype, device = sys.argv[1], int(sys.argv[2]), getattr(torch, sys.argv[3]), torch.device(sys.argv[4])
cuda = device.type == "cuda"
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
ids = torch.randint(min(10, model.config.vocab_size - 1), min(1000, model.config.vocab_size), (1, 32)).to(device)
sync = torch.cuda.synchronize if cuda else (lambda: None)
with torch.no_grad():
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
    sync()
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    sync()
    seconds = time.perf_counter() - start
out = {"tokens_per_s": n_new / seconds, "peak_rss_mb": status("VmHWM"), "model_peak_mb": status("VmHWM") - baseline,
       "measured_on": torch.cuda.get_device_name(device) if cuda else "cpu"}
if cuda:  # on a GPU the model's memory is device memory
    out["model_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
print(json.dumps(out))
"""


def measure_checkpoint(model: nn.Module, workdir, n_new_tokens: int = 64, device: str | None = None) -> dict:
    """What a model costs as a real checkpoint: parameters, safetensors size on disk,
    and, in a fresh process that loads it in the model's dtype with plain transformers onto
    ``device`` (default: the device type the model runs on, so a GPU model is timed on a
    GPU), its peak RSS (``peak_rss_mb``), ``model_peak_mb`` (on the CPU: peak minus the RSS
    after imports, i.e. what the model's load and generation add; on a GPU: peak device
    memory allocated), greedy generation speed (batch 1, KV cache on, ``n_new_tokens``
    tokens) and ``measured_on`` ("cpu" or the GPU's name)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    workdir = Path(workdir)
    model.save_pretrained(workdir)
    size = sum(p.stat().st_size for p in workdir.glob("*.safetensors"))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    device = device or next(model.parameters()).device.type
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(workdir), str(n_new_tokens), dtype, str(device)],
                         capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return {"layers": arch.n_layers(model), "parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint_mb": size / 2**20, **measured}


def payoff_table(lm: nn.Module, model: str, store: results.ResultStore, distances: np.ndarray,
                 fractions, n_new_tokens: int = 64) -> pd.DataFrame:
    """``measure_checkpoint`` for the unpruned model and the similarity-pruned model at each
    fraction (cached in table ``prune_payoff``), one row per model with each cost also as a
    ratio to the unpruned one. Empty when ``fractions`` is empty."""
    big_l = arch.n_layers(lm)
    rows = []
    for f in ([0] + list(fractions)) if fractions else []:
        n = int(round(f * big_l))
        blocks = prune.blocks_for("similarity", distances, big_l, n)
        key = results.point_key(model, "prune_payoff", {"blocks": blocks, "new_tokens": n_new_tokens},
                                "random-prompt", "none", models.runtime(lm))
        if not store.has("prune_payoff", key):
            # built on the CPU (it is only saved); measured on the device type ``lm`` runs on
            target = lm if n == 0 else prune.pruned_copy(lm, blocks, device="cpu")
            with tempfile.TemporaryDirectory() as tmp:
                m = measure_checkpoint(target, tmp, n_new_tokens, device=next(lm.parameters()).device.type)
            store.put("prune_payoff", key, [dict(model=model, technique="prune_payoff", dataset="random-prompt",
                                                 split="none", metric="tokens_per_s", value=m["tokens_per_s"],
                                                 n_items=n_new_tokens, n=n, **m)])
        m = store.get("prune_payoff", key).iloc[0]
        rows.append({"fraction dropped": n / big_l, "blocks": m["layers"], "parameters (M)": m["parameters"] / 1e6,
                     "checkpoint (MB)": m["checkpoint_mb"], "peak RSS (MB)": m["peak_rss_mb"],
                     "model memory (MB)": m["model_peak_mb"], "tokens/s": m["tokens_per_s"]})
    table = pd.DataFrame(rows)
    for col in ("parameters (M)", "checkpoint (MB)", "model memory (MB)", "tokens/s") if rows else []:
        table[col + " vs full"] = table[col] / table[col].iloc[0]
    return table
