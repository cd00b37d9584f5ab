"""Deeper-layer pruning (Gromov et al. 2024): angular distances between the residual
stream at block l and at block l + n, the block l*(n) that minimises it, real edits that
drop blocks, the paper's simple heuristic, and LoRA healing.

Distances are measured on the residual stream *entering* each block, all before the
final norm: x_l = state entering block l (l < L) and x_L = the last block's output before
the final norm. (Hugging Face's ``output_hidden_states`` returns the last entry after the
final norm and the others before it; mixing the two would distort every distance to L.)
d(x_l, x_{l+n}) = arccos(cos(x_l, x_{l+n})) / pi on the last non-padding token, averaged
over samples. Dropping blocks l..l+n-1 maps x_l directly where x_{l+n} used to be.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import arch, runner

TECHNIQUE = "prune"


# ---------------------------------------------------------------------------- distances

def text_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Texts tokenised together (right padded to the longest, cut at max_length tokens),
    as the (input_ids, attention_mask) batches of batch_size rows that last_token_states takes."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    padding_side="right")
    return [(enc.input_ids[i:i + batch_size], enc.attention_mask[i:i + batch_size])
            for i in range(0, len(texts), batch_size)]


@torch.no_grad()
def last_token_states(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Residual stream at every block boundary for the last real token of each sample.

    batches: (input_ids, attention_mask) pairs, right padded (``text_batches``). Returns
    [L + 1, n_samples, d_model] float32 on the CPU: entry l is the state entering block l,
    entry L the last block's output (all before the final norm). One forward pass per
    batch. A left-padded batch is refused: the model would see other positions.
    """
    out = []
    for ids, mask in batches:
        if bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError("last_token_states: the batch is left padded; tokenise with padding_side='right' "
                             "(prune.text_batches does)")
        state = runner.capture(model, ids, mask)
        last = (mask.sum(1) - 1).to(state.attention_mask.device)
        rows = torch.arange(ids.shape[0], device=last.device)
        out.append(torch.stack([h[rows, last].float().cpu() for h in state.hidden]))
    return torch.cat(out, dim=1)


def angular_distances(states: torch.Tensor) -> np.ndarray:
    """D[n, l] = mean over samples of arccos(cos(x_l, x_{l+n})) / pi, for 1 <= n <= L and
    0 <= l <= L - n; NaN elsewhere (and for n = 0). states: [L + 1, samples, d]."""
    n_bound = states.shape[0]
    unit = torch.nn.functional.normalize(states.double(), dim=-1)
    cos = torch.einsum("asd,bsd->abs", unit, unit).clamp(-1, 1)  # [L+1, L+1, samples]
    dist = (torch.arccos(cos) / math.pi).mean(-1).cpu().numpy()
    big_l = n_bound - 1
    table = np.full((big_l + 1, big_l + 1), np.nan)
    for n in range(1, big_l + 1):
        for layer in range(0, big_l - n + 1):
            table[n, layer] = dist[layer, layer + n]
    return table


def best_start(distances: np.ndarray, n: int) -> int:
    """l*(n) = argmin over l of D[n, l]."""
    row = distances[n]
    if not 1 <= n < len(row) or np.all(np.isnan(row)):
        raise ValueError(f"n: {n} out of range; allowed: 1..{len(row) - 1}")
    return int(np.nanargmin(row))


def distance_frame(distances: np.ndarray) -> pd.DataFrame:
    """Tidy (n, layer, distance, rescaled) rows; rescaled maps each n's row to [0, 1]."""
    rows = []
    for n in range(1, distances.shape[0]):
        row = distances[n]
        lo, hi = np.nanmin(row), np.nanmax(row)
        for layer, d in enumerate(row):
            if not np.isnan(d):
                rows.append({"n": n, "layer": layer, "distance": float(d),
                             "rescaled": float((d - lo) / (hi - lo)) if hi > lo else 0.0})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- edits

def similarity_blocks(distances: np.ndarray, n: int) -> list[int]:
    """The n blocks the similarity method drops: l*(n) .. l*(n) + n - 1."""
    start = best_start(distances, n)
    return list(range(start, start + n))


def deepest_blocks(n_layers: int, n: int) -> list[int]:
    """The paper's simple heuristic: the n blocks just before the final block."""
    if not 0 <= n <= n_layers - 1:
        raise ValueError(f"n: {n} out of range; allowed: 0..{n_layers - 1} (the final block is kept)")
    return list(range(n_layers - 1 - n, n_layers - 1))


def _set_layer_indices(block: nn.Module, index: int) -> dict[nn.Module, int]:
    """Set every ``layer_idx`` attribute inside a block; return the previous values."""
    previous = {}
    for module in block.modules():
        if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
            previous[module] = module.layer_idx
            module.layer_idx = index
    return previous


def apply_block_order(model: nn.Module, order: Sequence[int]) -> None:
    """Make ``model`` run blocks ``order`` (indices into its current block list) as a
    real edit: a new ModuleList, renumbered ``layer_idx`` (KV-cache slots),
    ``config.num_hidden_layers`` and, where present, ``config.layer_types`` (Gemma3's
    sliding/full pattern follows its block). Blocks are shared, not copied: an index
    that appears twice needs ``copy.deepcopy`` first (see ``schedule``)."""
    old = arch.blocks(model)
    if len(set(order)) != len(order):
        raise ValueError("apply_block_order: a block may appear once; deep-copy repeated blocks first")
    bad = [i for i in order if not 0 <= i < len(old)]
    if bad:
        raise ValueError(f"block indices {bad} out of range; allowed: 0..{len(old) - 1}")
    types = arch.layer_types(model)
    new = nn.ModuleList([old[i] for i in order])
    for position, block in enumerate(new):
        _set_layer_indices(block, position)
    arch.replace_blocks(model, new)
    model.config.num_hidden_layers = len(new)
    if types is not None:
        model.config.layer_types = [types[i] for i in order]


def drop(model: nn.Module, blocks_to_drop: Sequence[int]) -> list[int]:
    """Drop blocks in place (a real edit). Returns the kept original indices."""
    n = arch.n_layers(model)
    bad = [b for b in blocks_to_drop if not 0 <= b < n]
    if bad:
        raise ValueError(f"blocks to drop {bad} out of range; allowed: 0..{n - 1}")
    kept = [i for i in range(n) if i not in set(blocks_to_drop)]
    if not kept:
        raise ValueError("cannot drop every block")
    apply_block_order(model, kept)
    return kept


def pruned_copy(model: nn.Module, blocks_to_drop: Sequence[int]) -> nn.Module:
    """A deep copy of ``model`` with the blocks dropped (the original is untouched)."""
    twin = copy.deepcopy(model)
    drop(twin, blocks_to_drop)
    return twin


@contextmanager
def dropped(model: nn.Module, blocks_to_drop: Sequence[int]) -> Iterator[nn.Module]:
    """Drop blocks for the duration of the block, then restore the exact original
    modules, layer indices and config (nothing is copied)."""
    old_blocks = arch.blocks(model)
    old_indices = {m: m.layer_idx for b in old_blocks for m in b.modules()
                   if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int)}
    old_n = model.config.num_hidden_layers
    old_types = arch.layer_types(model)
    try:
        drop(model, blocks_to_drop)
        yield model
    finally:
        arch.replace_blocks(model, old_blocks)
        for m, idx in old_indices.items():
            m.layer_idx = idx
        model.config.num_hidden_layers = old_n
        if old_types is not None:
            model.config.layer_types = old_types


# ---------------------------------------------------------------------------- language-model loss

def text_chunks(tokenizer, texts: Sequence[str], length: int, max_chunks: int | None = None) -> torch.Tensor:
    """Concatenate texts (joined by the EOS token) and cut into [n_chunks, length] ids."""
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if max_chunks and len(ids) >= (max_chunks + 1) * length:
            break
    n = len(ids) // length
    if max_chunks:
        n = min(n, max_chunks)
    if n == 0:
        raise ValueError(f"not enough text for one chunk of {length} tokens")
    return torch.tensor(ids[: n * length]).view(n, length)


@torch.no_grad()
def normalised_loss(model: nn.Module, chunks: torch.Tensor, batch_size: int = 8) -> tuple[float, float]:
    """Mean next-token loss (nats per token) over chunks [n, T] divided by log(vocab size)
    (the paper's Fig. 3 normalisation; 1.0 = a uniform guess), and its standard error
    over chunks."""
    per_chunk = []
    device = next(model.parameters()).device
    for i in range(0, len(chunks), batch_size):
        ids = chunks[i:i + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        per_chunk.append(loss.view(ids.shape[0], -1).mean(1).cpu())
    per = torch.cat(per_chunk).double().cpu().numpy() / math.log(model.config.vocab_size)
    se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")
    return float(per.mean()), se


def deep_end_share(best: pd.DataFrame, n_layers: int) -> float:
    """Share of block sizes n = 1..n_layers // 2 whose most similar block lies in the
    deeper half (its centre l*(n) + n/2 at or past n_layers / 2); the paper finds that it
    does for most n. best: one row per n with columns ``n`` and ``l*``. Larger n are left
    out: a block of more than half the layers always reaches the deeper half."""
    sub = best[(best["n"] >= 1) & (best["n"] <= n_layers // 2)]
    return float(((sub["l*"] + sub["n"] / 2) >= n_layers / 2).mean()) if len(sub) else float("nan")


# ---------------------------------------------------------------------------- healing

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


# ---------------------------------------------------------------------------- payoff

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
path, n_new, dtype = sys.argv[1], int(sys.argv[2]), getattr(torch, sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
ids = torch.randint(10, 1000, (1, 32))
with torch.no_grad():
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    seconds = time.perf_counter() - start
print(json.dumps({"tokens_per_s": n_new / seconds, "peak_rss_mb": status("VmHWM"),
                  "model_peak_mb": status("VmHWM") - baseline}))
"""


def measure_checkpoint(model: nn.Module, workdir, n_new_tokens: int = 64) -> dict:
    """What a model costs as a real checkpoint: parameters, safetensors size on disk,
    and, in a fresh CPU process that loads it in the model's dtype with plain transformers, its peak RSS
    (``peak_rss_mb``; ``model_peak_mb`` = peak minus the RSS after imports, i.e. what the
    model's load and generation add) and greedy generation speed (batch 1, KV cache on,
    ``n_new_tokens`` tokens)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    workdir = Path(workdir)
    model.save_pretrained(workdir)
    size = sum(p.stat().st_size for p in workdir.glob("*.safetensors"))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(workdir), str(n_new_tokens), dtype],
                         capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return {"layers": arch.n_layers(model), "parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint_mb": size / 2**20, **measured}


# ---------------------------------------------------------------------------- the curve

PROFILES = ("smoke", "quick", "full")
METHODS = ("similarity", "deepest")


def blocks_for(method: str, distances: np.ndarray, n_layers: int, n: int) -> list[int]:
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if n == 0:
        return []
    return similarity_blocks(distances, n) if method == "similarity" else deepest_blocks(n_layers, n)


def curve_point(model: nn.Module, tokenizer, model_name: str, store, method: str, n: int, blocks: list[int],
                tasks: list[str], limit, loss_chunks: torch.Tensor, data_dir=None, seed: int = 0,
                heal_config: HealConfig | None = None, train_chunks: torch.Tensor | None = None,
                batch_size: int = 16) -> pd.DataFrame:
    """Rows for one pruned model (``blocks`` dropped from ``model``; healed with LoRA when
    ``heal_config`` is given): each lm-eval task and the normalised held-out loss, one
    stored point per task. Healing runs once, and only if some point is missing."""
    from . import evaluation, models, results

    n_layers = arch.n_layers(model)
    heal_desc = heal_config.as_dict() if heal_config else None
    base = {"method": method, "n": n, "blocks": blocks, "heal": heal_desc, "limit": limit, "seed": seed}
    datasets = list(tasks) + ["heldout"]
    keys = {d: results.point_key(model_name, TECHNIQUE, base | ({"loss_chunks": list(loss_chunks.shape)}
                                                                 if d == "heldout" else {}), d, "test",
                                  models.runtime(model))
            for d in datasets}
    todo = [d for d in datasets if not store.has(TECHNIQUE, keys[d])]
    if todo:
        if heal_config is not None:
            work = pruned_copy(model, blocks)
            record = heal(work, train_chunks, heal_config)
            work = record.pop("model")
            ctx = None
        else:
            ctx = dropped(model, blocks)
            work = ctx.__enter__()
        try:
            tasks_todo = [d for d in todo if d != "heldout"]
            rows = evaluation.evaluate_model(
                work, tokenizer, tasks_todo, limit=limit,
                loss_chunks=loss_chunks if "heldout" in todo else None, batch_size=batch_size,
                data_dir=data_dir, seed=seed)  # one lm-eval call for every missing task
            rows = rows.assign(model=model_name, technique=TECHNIQUE, split="test", method=method, n=n,
                               fraction=n / n_layers, n_layers=n_layers, healed=heal_config is not None,
                               blocks=",".join(map(str, blocks)),
                               heal_config=None if heal_desc is None else str(heal_desc),
                               heal_final_loss=None if heal_config is None else float(np.mean(record["losses"][-5:])))
            for d in todo:
                store.put(TECHNIQUE, keys[d], rows[rows.dataset == d])
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    return pd.concat([store.get(TECHNIQUE, keys[d]) for d in datasets], ignore_index=True)


def chance_fraction(curve: pd.DataFrame, chance: float) -> float | None:
    """The smallest fraction pruned at which accuracy is indistinguishable from chance
    (the 95% interval reaches the chance level) and stays so at every larger fraction;
    None if it never does. curve: rows with fraction, value, ci_low, ci_high."""
    c = curve.sort_values("fraction")
    at_chance = (c["ci_low"] <= chance + 1e-12).to_numpy()
    for i in range(len(c)):
        if at_chance[i:].all():
            return float(c["fraction"].iloc[i])
    return None
