"""lm-eval for many edits of one model, each paying only for its own suffix (issue #19).

Every edit the book scores through lm-eval leaves a prefix of blocks untouched
(``edits.Edit.start``), and lm-eval's requests for a task are the same whatever the
edit. ``lm_eval_edits`` therefore runs lm-eval's own request building, batching, scoring
and metrics, but computes the model's part once per batch for all edits:

1. The first ``simple_evaluate`` call hands ``PrefixSharedLM`` every log-likelihood
   request of the tasks. It cuts them into chunks of at most ``chunk_tokens`` input
   tokens (lm-eval's longest-first order; requests sharing a context stay together).
2. Per chunk, HFLM's own loop runs once on the unmodified model and ``runner.capture``
   keeps the residual stream entering each edit's start block. Then, per edit, HFLM's
   loop runs again (except for the unmodified model, which the capture pass scored) with
   the model call served from that capture: the edit's blocks from
   ``start`` on (its schedule, with its weight edit applied), the final norm and the head
   at the scored positions only. HFLM computes the log-softmax and greedy flags, so the
   numbers are lm-eval's. The chunk's states are then dropped.
3. Every edit's answers are kept (a float and a bool per request); one ``simple_evaluate``
   per edit then reads them for lm-eval's metrics, per-sample logs and aggregation.

Resuming: given a ``journal`` folder (``results.ResultStore.journal``, named by the points
being computed), every chunk's answers are written there as it finishes, named by the
chunk's requests, batch size, chunk size, edit count, dtype and device; a rerun reads them
instead of computing the chunk again, so a killed run loses at most one chunk.

Memory: one chunk's states for the distinct start blocks, [chunk rows, chunk length,
d_model] each, whatever the number of items, and one batch's dense logits, at most
``LOGIT_BUDGET`` elements (``chunks``); the answers table grows by two numbers per
request and edit. Compute: one full pass of the unmodified model per chunk plus each
edit's suffix. Generation requests (GSM8K) cannot share a prefix through a KV cache: they
run on the edited model itself (``edits.applied``), as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, edits as edits_mod, runner
from layerlab.core.eval import evaluation
from layerlab.core.io import results
from layerlab.core.eval.lm_eval_model import ScoredPositionsLM

ITEM_METRICS = ("acc", "acc_norm", "exact_match")
CAPTURE = "capture"
# dense logits of one batch (rows x window x vocab) a chunk may need: 2^28 float32 is 1 GiB, and
# HFLM's log-softmax holds about three such copies (ours in the model dtype, its float32 cast, the result)
LOGIT_BUDGET = 2 ** 28


class PrefixSharedLM(ScoredPositionsLM):
    """ScoredPositionsLM answering log-likelihood requests for every edit of ``edits`` at
    once (see the module docstring); ``current`` selects whose answers lm-eval receives
    and which edit ``generate_until`` runs."""

    def __init__(self, *args, edits: Sequence[edits_mod.Edit], chunk_tokens: int = 8192,
                 journal: str | os.PathLike | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1; got {chunk_tokens!r}")
        self.edits, self.chunk_tokens, self.current = list(edits), chunk_tokens, 0
        self.journal = None if journal is None else Path(journal)
        self._answers: dict[tuple, list[tuple[float, bool]]] = {}
        self._mode: str | int | None = None
        self._states: dict[tuple, runner.ResidualState] = {}
        self.model_calls = {"capture": 0, "suffix": 0, "chunks_resumed": 0}

    # lm-eval entry points -----------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self._mode is not None:  # inside _compute: HFLM's own loop on one chunk
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
        missing = [r for r in requests if _request_key(r) not in self._answers]
        if missing:
            self._compute(missing)
        return [self._answers[_request_key(r)][self.current] for r in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        with edits_mod.applied(self.model, self.edits[self.current]):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        with edits_mod.applied(self.model, self.edits[self.current]):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    # the shared computation ---------------------------------------------------------
    def _compute(self, requests) -> None:
        n_layers = arch.n_layers(self.model)
        self._keep = edits_mod.starts(self.edits) | {n_layers}
        try:
            for chunk in chunks(requests, self.chunk_tokens, self.batch_size, self.model.config.vocab_size,
                                LOGIT_BUDGET):
                per_edit = self._journaled_chunk(chunk, n_layers)
                for j, r in enumerate(chunk):
                    self._answers[_request_key(r)] = [answers[j] for answers in per_edit]
        finally:
            self._mode = None
            self._states.clear()

    def _compute_chunk(self, chunk: list, n_layers: int) -> list[list[tuple[float, bool]]]:
        """Per edit, lm-eval's (log-likelihood, greedy) answer to each request of ``chunk``."""
        self._mode = CAPTURE  # the capture pass scores the unmodified model
        unmodified = super()._loglikelihood_tokens(chunk, disable_tqdm=True)
        per_edit = []
        for i, edit in enumerate(self.edits):
            if edit == edits_mod.unmodified(n_layers):
                per_edit.append(unmodified)
                continue
            self._mode = i
            with edits_mod.weights_applied(self.model, edit):
                per_edit.append(super()._loglikelihood_tokens(chunk, disable_tqdm=True))
        self._states.clear()
        return per_edit

    def _journaled_chunk(self, chunk: list, n_layers: int) -> list[list[tuple[float, bool]]]:
        """``_compute_chunk``, kept in the journal (if any) under a name that says everything the
        answers depend on besides the model and the edits themselves, which the journal
        folder's name stands for: the chunk's token ids, batch size, chunk size, edit count,
        dtype and device. [edits, requests, 2] float64 (log-likelihood, greedy as 0/1) keeps
        every answer exactly."""
        if self.journal is None:
            return self._compute_chunk(chunk, n_layers)
        param = next(self.model.parameters())
        what = [[list(k) for k in map(_request_key, chunk)], self.batch_size, self.chunk_tokens, len(self.edits),
                str(param.dtype), param.device.type]
        computed = []

        def compute() -> np.ndarray:
            computed.append(True)
            return np.array(self._compute_chunk(chunk, n_layers), dtype=np.float64)

        answers = results.journaled(self.journal, hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32], compute)
        if not computed:
            self.model_calls["chunks_resumed"] += 1
        return [[(float(ll), bool(greedy)) for ll, greedy in per] for per in answers]

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        if self._mode is None or attn_mask is not None or labels is not None:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        spans = self._scored_spans(inps)
        key = (tuple(inps.shape), hashlib.sha256(inps.cpu().numpy().tobytes()).hexdigest())
        with torch.no_grad():
            if self._mode == CAPTURE:
                state = runner.capture(self.model, inps, keep=self._keep)
                self._states[key] = state
                self.model_calls["capture"] += 1
                h = state.hidden[state.n_layers]
            else:
                state = self._states.get(key)
                if state is None:  # lm-eval batched this chunk differently than in the capture pass
                    raise RuntimeError("prefix-shared evaluation: a batch was not captured; lm-eval's batching "
                                       "must be the same for every edit of a chunk")
                self.model_calls["suffix"] += 1
                h = edits_mod.run(self.model, state, self.edits[self._mode])
            return scored_logits(self.model, h, spans)


def scored_logits(model: nn.Module, h: torch.Tensor, spans: list[tuple[int, int]] | None) -> torch.Tensor:
    """Logits as HFLM reads them from a right-aligned window, with the head computed only
    where a request is scored.

    h: [B, T, d_model], the last block's output. spans: per row (first scored position,
    row length), or None (every position). Returns [B, keep, vocab] for the trailing
    ``keep = T - min(first)`` positions (HFLM's virtual-token offset locates each row's
    continuation in it); positions no request reads hold zeros. Computing the head at the
    scored positions only (one per row for a multiple-choice question) rather than over the
    whole window saves most of the head's cost: with Qwen2.5's 151,936-row head it costs as
    much per position as five blocks."""
    if spans is None:
        return runner.finish(model, h)
    width = h.shape[1]
    keep = width - min(first for first, _ in spans)
    rows = torch.cat([torch.full((n - first,), b, device=h.device) for b, (first, n) in enumerate(spans)])
    cols = torch.cat([torch.arange(first, n, device=h.device) for first, n in spans])
    picked = runner.finish(model, h[rows, cols].unsqueeze(0))[0]  # [P, vocab]
    out = picked.new_zeros((h.shape[0], keep, picked.shape[-1]))
    out[rows, cols - (width - keep)] = picked
    return out


def _request_key(request) -> tuple:
    _, context_enc, continuation_enc = request
    return tuple(context_enc), tuple(continuation_enc)


def chunks(requests: list, chunk_tokens: int, batch_size: int = 1, vocab: int = 0,
           logit_budget: int = LOGIT_BUDGET) -> list[list]:
    """Requests in lm-eval's order (longest first), cut into chunks whose distinct model
    inputs add up to at most ``chunk_tokens`` tokens (at least one input each); requests
    that lm-eval would score from one model input (same context, one-token continuations)
    stay in one chunk.

    With ``vocab`` (the head's rows) a chunk is also cut before the dense logits HFLM
    log-softmaxes for one of its batches could exceed ``logit_budget`` elements:
    min(inputs, ``batch_size``) rows x the window from the chunk's first scored position to
    its longest input (``scored_logits``). A batch that mixes a long input with short ones
    needs a window nearly as wide as the long one: with a 262k-token head (Gemma3) and
    5-shot MMLU that was 28 GB. A single input always makes a chunk."""
    groups: dict[tuple, list] = {}
    for r in requests:
        _, ctx, cont = r
        groups.setdefault(tuple(ctx) + tuple(cont[:-1]), []).append(r)
    ordered = sorted(groups.values(), key=lambda g: (-len(g[0][1] + g[0][2]), tuple(g[0][1] + g[0][2])))
    out, current, used, rows, width, first = [], [], 0, 0, 0, 0
    for g in ordered:
        size = len(g[0][1]) + len(g[0][2])
        inp, g_first = size - 1, min(len(r[1]) for r in g) - 1  # model input length, first scored position
        if current:
            window = width - min(first, g_first) + 1  # a chunk's first input is its longest
            too_wide = vocab and min(rows + 1, batch_size) * window * vocab > logit_budget
            if used + size > chunk_tokens or too_wide:
                out.append(current)
                current, used, rows = [], 0, 0
        if not current:
            width, first = inp, g_first
        current += g
        used += size
        rows += 1
        first = min(first, g_first)
    if current:
        out.append(current)
    return out


def lm_eval_edits(model: nn.Module, tokenizer, tasks: list[str], edits: Mapping[str, edits_mod.Edit],
                  limit: int | float | None = None, batch_size: int = 16, data_dir=None, seed: int = 0,
                  log_samples: bool = True, chunk_tokens: int = 8192,
                  journal: str | os.PathLike | None = None) -> dict[str, tuple[pd.DataFrame, dict]]:
    """``evaluation.lm_eval`` for every edit of ``edits`` (name -> Edit), sharing each
    edit's unchanged prefix; with ``journal`` (a folder standing for exactly this model and
    these edits, in this order: ``results.ResultStore.journal``), resumable per chunk.
    Returns name -> (tidy rows, raw lm-eval output) as ``evaluation.lm_eval`` would for the
    edited model (equal log-likelihoods up to float rounding: tests/test_prefix_eval.py)."""
    if not edits:
        return {}
    device = str(next(model.parameters()).device)
    lm = PrefixSharedLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
                        softmax_dtype=torch.float32, edits=list(edits.values()), chunk_tokens=chunk_tokens,
                        journal=journal)
    out = {}
    for i, name in enumerate(edits):
        lm.current = i
        out[name] = evaluation.lm_eval(model, tokenizer, tasks, limit=limit, batch_size=batch_size,
                                       data_dir=data_dir, seed=seed, log_samples=log_samples, lm=lm)
    return out


def item_rows(out: dict, tasks: list[str]) -> pd.DataFrame:
    """Per-item scores from an lm-eval result run with ``log_samples``: rows dataset,
    metric (``ITEM_METRICS`` present in the samples; "[filter]" appended unless "none"),
    item (lm-eval's doc_id: the position in the shuffled benchmark file), doc_hash, value
    (1.0 correct, 0.0 not), and the continuous scores of the same pass (#29), on the rows
    of multiple-choice items: gold_logprob (the gold choice's log-likelihood, nats) and
    margin (gold_logprob minus the best wrong choice's: > 0 where acc is 1); NaN elsewhere."""
    rows = []
    for t in tasks:
        for smp in out["samples"][evaluation.LM_EVAL_TASKS[t]]:
            filt = smp.get("filter", "none")
            gold, margin = choice_scores(smp)
            for metric in ITEM_METRICS:
                if metric in smp:
                    rows.append({"dataset": t, "metric": metric if filt == "none" else f"{metric}[{filt}]",
                                 "item": int(smp["doc_id"]), "doc_hash": smp.get("doc_hash", ""),
                                 "value": float(smp[metric]), "gold_logprob": gold, "margin": margin})
    return pd.DataFrame(rows, columns=["dataset", "metric", "item", "doc_hash", "value", "gold_logprob", "margin"])


def choice_scores(sample: dict) -> tuple[float, float]:
    """(gold log-likelihood, margin over the best wrong choice) of one lm-eval multiple-choice
    sample (``filtered_resps``: one (loglikelihood, is_greedy) per choice; ``target``: the
    gold index, an int or a string of digits); (NaN, NaN) for any other sample."""
    resps, target = sample.get("filtered_resps"), sample.get("target")
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    if not isinstance(target, int) or isinstance(target, bool) or not isinstance(resps, (list, tuple)):
        return float("nan"), float("nan")
    try:
        lls = [float(r[0]) for r in resps]
    except (TypeError, IndexError, ValueError):
        return float("nan"), float("nan")
    if not 0 <= target < len(lls) or len(lls) < 2:
        return float("nan"), float("nan")
    wrong = max(ll for i, ll in enumerate(lls) if i != target)
    return lls[target], lls[target] - wrong


def evaluate_edits(model: nn.Module, tokenizer, tasks: list[str], edits: Mapping[str, edits_mod.Edit],
                   limit: int | float | None = None, loss_chunks: torch.Tensor | None = None,
                   batch_size: int = 16, data_dir=None, seed: int = 0,
                   journal: str | os.PathLike | None = None) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """lm-eval ``tasks`` and, if ``loss_chunks`` ([n, T] token ids) is given, the held-out
    next-token loss normalised by log(vocab) (dataset "heldout", metric "loss_norm"), for
    every edit, prefix-shared (lm-eval resumable per chunk with ``journal``, as in
    ``lm_eval_edits``). Returns name -> (tidy rows as ``evaluation.evaluate_model``
    gives them; per-item rows: ``item_rows`` for the tasks, one row per chunk for the loss)."""
    from layerlab.core.eval.lm_loss import chunk_losses, mean_and_se

    out = {name: ([], []) for name in edits}
    if tasks:
        for name, (rows, raw) in lm_eval_edits(model, tokenizer, tasks, edits, limit=limit, batch_size=batch_size,
                                               data_dir=data_dir, seed=seed, journal=journal).items():
            out[name][0].append(rows)
            out[name][1].append(item_rows(raw, tasks))
    if loss_chunks is not None:
        per_chunk = chunk_losses(model, loss_chunks, list(edits.values()))
        for name, per in zip(edits, per_chunk):
            value, se = mean_and_se(per)
            out[name][0].append(pd.DataFrame([{"dataset": "heldout", "metric": "loss_norm", "value": value,
                                               "stderr": se, "n_items": len(per), "ci_low": value - 1.96 * se,
                                               "ci_high": value + 1.96 * se}]))
            out[name][1].append(pd.DataFrame({"dataset": "heldout", "metric": "loss_norm", "item": range(len(per)),
                                              "doc_hash": "", "value": per}))
    return {name: (pd.concat(rows, ignore_index=True), pd.concat(items, ignore_index=True))
            for name, (rows, items) in out.items()}
