"""LoRA healing of a pruned model (Gromov et al. 2024, Sec. 3.2): adapters on the MLPs,
trained briefly on generic text, then merged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from layerlab.core import arch


@dataclass
class HealConfig:
    """LoRA healing, as in the paper: adapters on the MLP only, dropout 0.05,
    alpha = rank, cosine schedule with linear warm-up. Always plain LoRA in the model's
    own precision: the paper's QLoRA (4-bit base) is not implemented, as no CUDA GPU was
    available to test it."""

    rank: int = 8
    steps: int = 100
    learning_rate: float = 3e-4
    warmup_steps: int = 10
    batch_size: int = 4
    seq_len: int = 256
    dropout: float = 0.05
    seed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__, alpha=self.rank, target="mlp", schedule="cosine+warmup")


def mlp_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the MLP linear layers (peft ``target_modules``)."""
    specs = arch.arch_of(model).matrices
    return sorted({specs[t].path.split(".")[-1] for t in ("mlp_in", "gate", "mlp_out") if t in specs})


@torch.no_grad()
def merge_lora(peft_model: nn.Module) -> int:
    """Merge every LoRA adapter of ``peft_model`` into its base weight in float32, then cast
    once: W <- (W.float() + scaling * B.float() @ A.float()).to(W.dtype). (peft's own merge
    adds an update already cast to the weight's dtype: in bf16 much of a small update rounds
    away, and the healed model would understate healing.) The adapters are then emptied
    (``unload`` removes them without merging again). Returns the number of merged layers."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        for name in list(module.lora_A.keys()):
            a = module.lora_A[name].weight.float()
            b = module.lora_B[name].weight.float()
            delta = (b @ a) * module.scaling[name]
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T
            w = base.weight
            w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
            merged += 1
    return merged


def heal(model: nn.Module, train_chunks: torch.Tensor, config: HealConfig, progress: bool = True) -> dict:
    """Train LoRA adapters on the MLPs of ``model`` (in place) and merge them in float32
    (``merge_lora``).

    train_chunks: [n, seq_len] token ids. Returns the training record (loss per step,
    hyperparameters, and ``qlora``: always False, see HealConfig)."""
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.rank, lora_dropout=config.dropout,
                      target_modules=mlp_module_names(model), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(optim, config.warmup_steps, config.steps)
    rng = np.random.default_rng(config.seed)
    device = next(model.parameters()).device
    losses = []
    for _ in tqdm(range(config.steps), desc="healing", disable=not progress, mininterval=10):
        idx = rng.integers(0, len(train_chunks), size=config.batch_size)
        ids = train_chunks[idx].to(device)
        out = peft_model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    merge_lora(peft_model)
    merged = peft_model.unload()  # the adapters are already in the weights
    merged.eval()
    return {"losses": losses, "config": config.as_dict(), "qlora": False, "model": merged}

