"""Scoring continuations with the layer runner: log-likelihoods, ranks and greedy matches
of (context, continuation) pairs, computing only the head positions that are needed.

A ``Batch`` holds right-padded token ids for rows ``context + continuation`` and, for each
row, the positions whose logits predict the continuation tokens.

Continuations are split as lm-eval splits them (``HFLM._encode_pair``; ``split_pairs``):
trailing whitespace of the context moves to the continuation, context + continuation is
tokenised as one string, and the continuation's tokens are the tail after the context's
own tokens. A continuation is never tokenised on its own: with a SentencePiece model that
adds a dummy prefix and keeps whitespace (Llama-1/2, Mistral), " Paris" alone encodes as
[``▁``, ``▁Paris``] while the tail of the joint encoding is [``▁Paris``]. The context keeps
the tokenizer's leading special tokens (BOS), as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from layerlab.core.model import arch, runner


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


def _ids(encoded) -> list[list[int]]:
    return [list(map(int, x)) for x in encoded["input_ids"]]


def _leading_specials(full: list[int], bare: list[int]) -> list[int]:
    """The ids ``add_special_tokens=True`` puts before the text (``full``: with special
    tokens, ``bare``: without): BOS for Llama/Gemma, nothing for GPT-2/Qwen."""
    if not bare:
        return full[:1]
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k]
    return []


def split_pairs(tokenizer, contexts: Sequence[str], continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per pair, by lm-eval's rule (``HFLM._encode_pair``):
    the context's trailing whitespace moves to the continuation, and the continuation's
    ids are the tail of the joint encoding of context + continuation after the context's
    own ids. The context ids carry the tokenizer's leading special tokens (those
    ``add_special_tokens=True`` puts before the text, e.g. BOS); the tail is taken from
    encodings without special tokens, so a tokenizer that appends EOS does not put it
    inside a row. Raises ValueError for a pair whose continuation has no tokens."""
    contexts, continuations = list(contexts), list(continuations)
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    moved_ctx, moved_cont = [], []
    for ctx, cont in zip(contexts, continuations):
        n_spaces = len(ctx) - len(ctx.rstrip())
        if n_spaces:
            cont, ctx = ctx[-n_spaces:] + cont, ctx[:-n_spaces]
        moved_ctx.append(ctx)
        moved_cont.append(cont)
    if not moved_ctx:
        return []
    with_specials = _ids(tokenizer(moved_ctx, add_special_tokens=True))
    plain = _ids(tokenizer(moved_ctx, add_special_tokens=False))
    whole = _ids(tokenizer([c + t for c, t in zip(moved_ctx, moved_cont)], add_special_tokens=False))
    out = []
    for i, (full, bare, joint) in enumerate(zip(with_specials, plain, whole)):
        lead = _leading_specials(full, bare)
        tail = joint[len(bare):]
        if not tail:
            raise ValueError(f"continuation {continuations[i]!r} has no tokens of its own after context "
                             f"{contexts[i][-40:]!r} (the joint encoding merges it into the context); "
                             "an empty continuation cannot be scored")
        out.append((lead + bare, tail))
    return out


def encode(tokenizer, contexts: Sequence[str], continuations: Sequence[str],
           max_tokens_per_batch: int = 4096, max_length: int = 512) -> list[Batch]:
    """Tokenise pairs into length-sorted, right-padded batches of at most
    ``max_tokens_per_batch`` tokens (padding included). Contexts are cut from the left
    so that context + continuation fits ``max_length``; at least one context token must
    remain (it predicts the continuation's first token). Continuation tokens are the tail
    of the joint encoding (``split_pairs``, lm-eval's rule). Tensors are built on the CPU;
    the scorers move them to the model's device."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = []
    for c, t in split_pairs(tokenizer, contexts, continuations):
        if not c:
            raise ValueError("a context encodes to no tokens (and the tokenizer adds no BOS): nothing "
                             "predicts the continuation's first token")
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
        ids = torch.full((len(current), length), pad, dtype=torch.long, device="cpu")
        mask = torch.zeros((len(current), length), dtype=torch.long, device="cpu")
        tpos = torch.zeros((len(current), k), dtype=torch.long, device="cpu")
        tids = torch.zeros((len(current), k), dtype=torch.long, device="cpu")
        tmask = torch.zeros((len(current), k), dtype=torch.bool, device="cpu")
        for b, i in enumerate(current):
            c, t = encoded[i]
            seq = c + t
            ids[b, :len(seq)] = torch.tensor(seq, device="cpu")
            mask[b, :len(seq)] = 1
            tpos[b, :len(t)] = torch.arange(len(c) - 1, len(c) - 1 + len(t), device="cpu")
            tids[b, :len(t)] = torch.tensor(t, device="cpu")
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
    at the first continuation position; first_gold: the continuation's first token id
    (as ``split_pairs`` splits it)."""

    logprob: np.ndarray
    n_tokens: np.ndarray
    first_rank: np.ndarray
    greedy: np.ndarray
    first_top: np.ndarray
    first_gold: np.ndarray


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
        "first_gold": batch.target_ids[:, 0],
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def collect(batches: list[Batch], parts: list[dict[str, np.ndarray]], n_rows: int) -> RowScores:
    out = {k: np.zeros(n_rows, dtype=v.dtype) for k, v in parts[0].items()}
    for b, p in zip(batches, parts):
        for k, v in p.items():
            out[k][b.rows] = v
    return RowScores(**out)


DEFAULT_STATE_BYTES = 2**30  # residual states PrefixScorer keeps (on the model's device)


class PrefixScorer:
    """Scores rows through the layer runner, capturing each batch's residual stream once
    and then finishing the pass from any start layer (the lowest modified block).

    Memory is bounded by ``max_bytes`` (default 1 GiB), not by the data. The states of one
    block boundary for every batch take ``layer_bytes`` (tokens x d_model x dtype size);
    when all L + 1 boundaries fit in ``max_bytes`` they are captured once, at the start
    (small models, or few items). Otherwise a window of the k = max_bytes // layer_bytes
    boundaries ending at the requested start layer is captured (one forward pass over the
    data, keeping only those), and captured again when a start layer outside it is asked
    for: a LASER sweep asks deepest layer first (``laser.grid``), so the L + 1 boundaries cost
    about (L + 1) / k extra forward passes, while a point reruns on average half the model.
    ``captures`` counts the capture passes. keep: block inputs to keep, captured once (the
    old behaviour; overrides ``max_bytes``); max_bytes=None keeps every state.
    """

    def __init__(self, model: nn.Module, batches: list[Batch], n_rows: int, keep=None,
                 max_bytes: int | None = DEFAULT_STATE_BYTES):
        p = next(model.parameters())
        self.model, self.batches, self.n_rows = model, [b.to(p.device) for b in batches], n_rows
        n_boundaries = arch.n_layers(model) + 1
        d_model = model.config.hidden_size  # GPT-2 style configs map n_embd to it
        self.layer_bytes = sum(b.input_ids.numel() for b in batches) * d_model * p.element_size()
        if keep is not None or max_bytes is None:
            self.window = n_boundaries
        else:
            self.window = max(1, min(n_boundaries, int(max_bytes // max(1, self.layer_bytes))))
        self.n_boundaries = n_boundaries
        self.captures = 0
        self.states: list[runner.ResidualState] | None = None
        self._kept: set[int] = set()
        if keep is not None:
            self._capture(set(keep))
        elif self.window >= n_boundaries:
            self._capture(set(range(n_boundaries)))

    def _capture(self, layers: set[int]) -> None:
        self.states = None  # free the old window before the new one is captured
        self.states = [runner.capture(self.model, b.input_ids, b.attention_mask, keep=layers) for b in self.batches]
        self._kept = set(layers)
        self.captures += 1

    def _ensure(self, start_layer: int) -> None:
        if start_layer in self._kept:
            return
        if not 0 <= start_layer < self.n_boundaries:
            raise ValueError(f"start layer {start_layer} out of range; allowed: 0..{self.n_boundaries - 1}")
        low = max(0, start_layer - self.window + 1)
        self._capture(set(range(low, low + self.window)))

    @torch.no_grad()
    def score(self, start_layer: int, steps=None) -> RowScores:
        """Scores with blocks start_layer.. run as they are now (or as ``steps``: a
        runner schedule applied to the state entering ``start_layer``)."""
        self._ensure(start_layer)
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
