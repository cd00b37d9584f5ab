"""Scoring continuations with the layer runner: log-likelihoods, ranks and greedy matches
of (context, continuation) pairs, computing only the head positions that are needed.

A ``Batch`` holds right-padded token ids for rows ``context + continuation`` (context
tokenised with the tokenizer's special tokens, the continuation without, as lm-eval
does), and for each row the positions whose logits predict the continuation tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import runner


@dataclass
class Batch:
    """input_ids, attention_mask: [B, T]. target_pos, target_ids, target_mask: [B, K]
    (K = longest continuation in the batch). rows: index of each row in the caller's list."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_pos: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    rows: np.ndarray

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch with its tensors on ``device``."""
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.target_pos.to(device),
                     self.target_ids.to(device), self.target_mask.to(device), self.rows)


def encode(tokenizer, contexts: Sequence[str], continuations: Sequence[str],
           max_tokens_per_batch: int = 4096, max_length: int = 512) -> list[Batch]:
    """Tokenise pairs into length-sorted, right-padded batches of at most
    ``max_tokens_per_batch`` tokens (padding included). Contexts are cut from the left
    so that context + continuation fits ``max_length``; at least one context token must
    remain (it predicts the continuation's first token). Tensors are built on the CPU;
    the scorers move them to the model's device."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = []
    ctx_ids = tokenizer(list(contexts), add_special_tokens=True)["input_ids"]
    cont_ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    for c, t in zip(ctx_ids, cont_ids):
        if not t:
            raise ValueError("an empty continuation cannot be scored")
        room = max_length - len(t)
        if room < 1:
            raise ValueError(f"max_length: {max_length} tokens leave no room for the context of a "
                             f"{len(t)}-token continuation; allowed: max_length > the longest continuation")
        c = c[-room:]
        encoded.append((c, t))
    order = np.argsort([len(c) + len(t) for c, t in encoded], kind="stable")
    batches, current = [], []

    def flush():
        if not current:
            return
        length = max(len(encoded[i][0]) + len(encoded[i][1]) for i in current)
        k = max(len(encoded[i][1]) for i in current)
        ids = torch.full((len(current), length), pad, dtype=torch.long)
        mask = torch.zeros((len(current), length), dtype=torch.long)
        tpos = torch.zeros((len(current), k), dtype=torch.long)
        tids = torch.zeros((len(current), k), dtype=torch.long)
        tmask = torch.zeros((len(current), k), dtype=torch.bool)
        for b, i in enumerate(current):
            c, t = encoded[i]
            seq = c + t
            ids[b, :len(seq)] = torch.tensor(seq)
            mask[b, :len(seq)] = 1
            tpos[b, :len(t)] = torch.arange(len(c) - 1, len(c) - 1 + len(t))
            tids[b, :len(t)] = torch.tensor(t)
            tmask[b, :len(t)] = True
        batches.append(Batch(ids, mask, tpos, tids, tmask, np.array(current)))

    for i in order:
        need = len(encoded[i][0]) + len(encoded[i][1])
        width = max([need] + [len(encoded[j][0]) + len(encoded[j][1]) for j in current])
        if current and width * (len(current) + 1) > max_tokens_per_batch:
            flush()
            current = []
        current.append(int(i))
    flush()
    return batches


@dataclass
class RowScores:
    """Per row, in the caller's order. logprob: summed log-probability of the
    continuation (nats); n_tokens; first_rank: rank of the first continuation token
    among all vocabulary entries (0 = top-1); greedy: every continuation token is the
    argmax (greedy decoding would emit the continuation); first_top: the top-1 token id
    at the first continuation position."""

    logprob: np.ndarray
    n_tokens: np.ndarray
    first_rank: np.ndarray
    greedy: np.ndarray
    first_top: np.ndarray


def score_logits(batch: Batch, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Scores from logits at the target positions, logits: [B, K, V] (any device and
    dtype; log-probabilities are taken in float32). Returns numpy arrays on the CPU."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    tok_lp = logp.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1) * batch.target_mask
    first = logits[:, 0]
    gold_first = first.gather(-1, batch.target_ids[:, :1]).squeeze(-1)
    argmax = logits.argmax(-1)
    out = {
        "logprob": tok_lp.sum(-1).double(),
        "n_tokens": batch.target_mask.sum(-1),
        "first_rank": (first > gold_first.unsqueeze(-1)).sum(-1),
        "greedy": ((argmax == batch.target_ids) | ~batch.target_mask).all(-1),
        "first_top": argmax[:, 0],
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def collect(batches: list[Batch], parts: list[dict[str, np.ndarray]], n_rows: int) -> RowScores:
    out = {k: np.zeros(n_rows, dtype=v.dtype) for k, v in parts[0].items()}
    for b, p in zip(batches, parts):
        for k, v in p.items():
            out[k][b.rows] = v
    return RowScores(**out)


class PrefixScorer:
    """Scores rows through the layer runner, capturing each batch's residual stream once
    and then finishing the pass from any start layer (the lowest modified block).

    keep: which block inputs to keep in memory (default all: [n_layers + 1] states of
    shape [B, T, d_model] per batch).
    """

    def __init__(self, model: nn.Module, batches: list[Batch], n_rows: int, keep=None):
        device = next(model.parameters()).device
        self.model, self.batches, self.n_rows = model, [b.to(device) for b in batches], n_rows
        self.states = [runner.capture(model, b.input_ids, b.attention_mask, keep=keep) for b in self.batches]

    @torch.no_grad()
    def score(self, start_layer: int, steps=None) -> RowScores:
        """Scores with blocks start_layer.. run as they are now (or as ``steps``: a
        runner schedule applied to the state entering ``start_layer``)."""
        parts = []
        for b, state in zip(self.batches, self.states):
            if steps is None:
                logits = runner.run_from(self.model, state, start_layer, positions=b.target_pos)
            else:
                h = runner.run_blocks(self.model, state, state.hidden[start_layer], steps)
                logits = runner.finish(self.model, h, positions=b.target_pos)
            parts.append(score_logits(b, logits))
        return collect(self.batches, parts, self.n_rows)


@torch.no_grad()
def score_full(model: nn.Module, batches: list[Batch], n_rows: int) -> RowScores:
    """Scores with the model's own forward pass (the reference path: no runner, no
    prefix reuse, full-vocabulary logits at every position)."""
    device = next(model.parameters()).device
    parts = []
    for b in (b.to(device) for b in batches):
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        logits = logits.gather(1, b.target_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        parts.append(score_logits(b, logits))
    return collect(batches, parts, n_rows)
