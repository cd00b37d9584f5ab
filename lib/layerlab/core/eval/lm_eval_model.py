"""lm-eval's Hugging Face wrapper, computing the output head only where it is scored.

lm-eval's ``HFLM`` scores a (context, continuation) request by running the model on the
right-padded batch and taking log-softmax over the *whole* [batch, length, vocab] logits,
then keeping the continuation's positions. For a multiple-choice question that is one
position in ~100, and with a large vocabulary (Qwen2.5: 151,936 rows) the head and the
softmax are a sizeable share of the pass. ``ScoredPositionsLM`` asks the model for the
logits of the last positions only (transformers' ``logits_to_keep``), as many as the batch
needs so that every row's scored positions are inside, and returns them as HFLM's
"virtual token" offset expects (HFLM locates a row's continuation at
``inplen + (returned length - padded length)``). Scores are the same numbers as HFLM's,
up to the float rounding of a smaller matrix product; tests compare the two.
"""

from __future__ import annotations

import inspect

import torch
from lm_eval.models.huggingface import HFLM


class ScoredPositionsLM(HFLM):
    """HFLM that computes logits only for the positions a batch's requests score."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        # the model input HFLM builds for each request (context + continuation, left-truncated,
        # last token dropped) -> the first position whose logits are scored
        self._first_scored: dict[tuple[int, ...], int] = {}
        for _, context_enc, continuation_enc in requests:
            inp = tuple((context_enc + continuation_enc)[-(self.max_length + 1):][:-1])
            first = len(inp) - len(continuation_enc)
            self._first_scored[inp] = min(first, self._first_scored.get(inp, first))
        self._lengths = sorted({len(k) for k in self._first_scored}, reverse=True)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._first_scored, self._lengths = {}, []

    def _scored_spans(self, inps: torch.Tensor) -> list[tuple[int, int]] | None:
        """Per row of the padded batch [B, T]: (first scored position, row length), the
        positions whose logits the row's requests read; None when a row is not one of the
        current requests."""
        scored = getattr(self, "_first_scored", None)
        if not scored or self.backend != "causal":
            return None
        width = inps.shape[1]
        spans = []
        for row in inps.tolist():
            found = [(scored[tuple(row[:n])], n) for n in self._lengths
                     if n <= width and not any(row[n:]) and tuple(row[:n]) in scored]
            if not found:
                return None
            # a row ending in pad-valued tokens may match twice: keep the widest span
            spans.append((min(f for f, _ in found), max(n for _, n in found)))
        return spans

    def _positions_to_keep(self, inps: torch.Tensor) -> int | None:
        """How many trailing positions of the padded batch [B, T] hold every row's scored
        positions; None when a row is not one of the current requests (then: all)."""
        spans = self._scored_spans(inps)
        return None if spans is None else inps.shape[1] - min(first for first, _ in spans)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        keep = None if attn_mask is not None or labels is not None else self._positions_to_keep(inps)
        if keep is None or "logits_to_keep" not in inspect.signature(self.model.forward).parameters:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(inps, logits_to_keep=keep).logits
