"""Healing a pruned model, two ways, at equal steps and tokens:

- ``heal``: LoRA (Gromov et al. 2024, Sec. 3.2): adapters on the MLPs, trained briefly on
  generic text, then merged in float32.
- ``heal_partial``: full-parameter fine-tuning of the head (final norm + lm_head) and the
  last 3 remaining blocks, everything else frozen (Lu et al. 2024, "Reassessing Layer
  Pruning in LLMs", arXiv 2411.15558, ``partial_fine-tuning.py``: norm, lm_head and all
  parameters of layers[-3:], AdamW, lr 1e-5).

Both read their steps, batch size, warm-up, cosine schedule, seed and batch order from one
``HealConfig`` (``batch_order``): the same chunks in the same order, so the same tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from layerlab.core.model import arch


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


def batch_order(n_chunks: int, config: HealConfig) -> np.ndarray:
    """The chunk indices of every step's batch, [steps, batch_size]: drawn with replacement
    from a generator seeded with ``config.seed``, one batch per step, as both healings read them."""
    rng = np.random.default_rng(config.seed)
    return np.stack([rng.integers(0, n_chunks, size=config.batch_size) for _ in range(config.steps)]) \
        if config.steps else np.zeros((0, config.batch_size), dtype=np.int64)


def heal(model: nn.Module, train_chunks: torch.Tensor, config: HealConfig, progress: bool = True) -> dict:
    """Train LoRA adapters on the MLPs of ``model`` (in place) and merge them in float32
    (``merge_lora``).

    train_chunks: [n, seq_len] token ids. Returns the training record (loss per step,
    hyperparameters, ``qlora``: always False, see HealConfig; ``order``: the batches'
    chunk indices [steps, batch]; ``tokens``: tokens trained on, steps x batch x seq_len)."""
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
    order = batch_order(len(train_chunks), config)
    device = next(model.parameters()).device
    losses = []
    for step in tqdm(range(config.steps), desc="healing", disable=not progress, mininterval=10):
        ids = train_chunks[order[step]].to(device)
        out = peft_model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    merge_lora(peft_model)
    merged = peft_model.unload()  # the adapters are already in the weights
    merged.eval()
    return {"losses": losses, "config": config.as_dict(), "qlora": False, "model": merged, "order": order,
            "tokens": int(order.size * train_chunks.shape[1])}



TIED = ("untie", "train", "freeze")


@dataclass
class PartialConfig:
    """What ``heal_partial`` trains beyond the ``HealConfig`` it shares with LoRA.

    last: trailing blocks trained with every parameter (Lu et al.: 3); learning_rate: AdamW
    peak rate of the shared schedule; None (default): the HealConfig's own rate, the LoRA
    run's (Lu et al. use one rate, 1e-5, for both methods; our LoRA default is 3e-4);
    tied: what to do when the head shares its matrix with the input embedding (SmolLM2,
    Qwen2.5-1.5B, Gemma): "untie" (default) trains a clone of it as the
    head and leaves the input embedding as it was (the healed model then stores both
    matrices: vocab x d_model more parameters); "train" trains the shared matrix, so the
    input embedding changes too; "freeze" leaves the head out (only the final norm and
    the blocks train). Models with their own head matrix train it whatever ``tied`` says."""

    last: int = 3
    learning_rate: float | None = None
    tied: str = "untie"

    def validate(self, model: nn.Module) -> None:
        """Refuse bad settings before any training, naming the parameter and allowed values."""
        n = arch.n_layers(model)
        if isinstance(self.last, bool) or not isinstance(self.last, int) or not 0 <= self.last <= n:
            raise ValueError(f"last: {self.last!r} blocks; allowed: integers 0..{n} (the model has {n} blocks)")
        lr = self.learning_rate
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ValueError(f"learning_rate: {lr!r}; allowed: a number > 0, or None (the HealConfig's rate)")
        if self.tied not in TIED:
            raise ValueError(f"tied: {self.tied!r}; allowed: {', '.join(TIED)}")
        if arch.head(model) is None or arch.final_norm(model) is None:
            raise ValueError(f"{arch.arch_of(model).name}: no output head or final norm to train")

    def rate(self, config: HealConfig) -> float:
        """The learning rate used with ``config``."""
        return config.learning_rate if self.learning_rate is None else float(self.learning_rate)

    def as_dict(self, config: HealConfig | None = None) -> dict:
        """The settings (with ``config``: the learning rate resolved)."""
        lr = self.learning_rate if config is None else self.rate(config)
        return {"method": "head+last", "last": self.last, "learning_rate": lr, "tied": self.tied,
                "master": "float32", "target": "final norm, lm_head, all parameters of the last blocks"}


def head_is_tied(model: nn.Module) -> bool:
    """The output head's weight is the input embedding's tensor."""
    return arch.head(model).weight is arch.embedding(model).weight


def untie_head(model: nn.Module) -> None:
    """Give the head its own copy of the tied matrix (bit-identical values) and mark the
    config untied, so the input embedding stays as it is and ``save_pretrained`` writes both."""
    head = arch.head(model)
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def partial_parameters(model: nn.Module, partial: PartialConfig) -> dict[str, nn.Parameter]:
    """name -> parameter that ``heal_partial`` trains: the final norm's, the head's (see
    ``PartialConfig.tied``) and every parameter of the last ``partial.last`` blocks."""
    modules = [arch.final_norm(model)] + list(arch.blocks(model))[arch.n_layers(model) - partial.last:]
    if not (head_is_tied(model) and partial.tied == "freeze"):
        modules.append(arch.head(model))
    wanted = {id(p) for m in modules for p in m.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) in wanted}


def heal_partial(model: nn.Module, train_chunks: torch.Tensor, config: HealConfig,
                 partial: PartialConfig | None = None, progress: bool = True) -> dict:
    """Fine-tune the head and the last blocks of ``model`` in place (``partial_parameters``;
    everything else frozen, bit for bit), with ``config``'s steps, batch order
    (``batch_order``), warm-up and cosine schedule: the steps and tokens of ``heal`` with
    the same config. Forward and backward run in the model's dtype; AdamW (no weight
    decay) updates float32 master copies, written back to the weights (one rounding to
    their dtype) after every step, so small bf16 updates are not lost.

    train_chunks: [n, seq_len] token ids. Returns the record of ``heal`` (losses, config,
    order, tokens, model) plus trained (parameter names) and n_trained (count)."""
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    partial = partial or PartialConfig()
    partial.validate(model)
    torch.manual_seed(config.seed)
    if head_is_tied(model) and partial.tied == "untie":
        untie_head(model)
    named = partial_parameters(model, partial)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(named.values())
    for p in params:
        p.requires_grad_(True)
    masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    optim = torch.optim.AdamW(masters, lr=partial.rate(config), weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(optim, config.warmup_steps, config.steps)
    order = batch_order(len(train_chunks), config)
    device = next(model.parameters()).device
    losses = []
    model.train()
    try:
        for step in tqdm(range(config.steps), desc="healing (head + last)", disable=not progress, mininterval=10):
            ids = train_chunks[order[step]].to(device)
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            for m, p in zip(masters, params):
                m.grad = p.grad.float() if p.grad is not None else torch.zeros_like(m)
                p.grad = None
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            with torch.no_grad():
                for m, p in zip(masters, params):
                    p.copy_(m)  # one rounding from the float32 master to the weight's dtype
            losses.append(float(out.loss.detach()))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
        model.eval()
    return {"losses": losses, "config": config.as_dict() | {"partial": partial.as_dict(config)}, "qlora": False,
            "model": model, "order": order, "tokens": int(order.size * train_chunks.shape[1]),
            "trained": sorted(named), "n_trained": sum(p.numel() for p in params)}
