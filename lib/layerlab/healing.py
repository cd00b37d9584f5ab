"""LoRA healing of a pruned model (Gromov et al. 2024, Sec. 3.2): adapters on the MLPs,
trained briefly on generic text, then merged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import arch


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


def heal(model: nn.Module, train_chunks: torch.Tensor, config: HealConfig, progress: bool = True) -> dict:
    """Train LoRA adapters on the MLPs of ``model`` (in place) and merge them.

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
    merged = peft_model.merge_and_unload()
    merged.eval()
    return {"losses": losses, "config": config.as_dict(), "qlora": False, "model": merged}

