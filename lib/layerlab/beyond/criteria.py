"""Which blocks matter: cheap criteria for the span of blocks l..l+n-1, all from ONE
capture pass per batch that keeps the residual stream at every block boundary.

Boundaries follow ``prune.blocks``: x_l is the residual stream entering block l (l < L)
and x_L the last block's output, all before the final norm. Dropping blocks l..l+n-1 puts
x_l where x_{l+n} used to be. Every criterion is a score of the span (l, n) with the same
orientation: LOWER = "more droppable". Per document (a held-out chunk of T tokens; pad
positions, where a mask has zeros, are left out) and then averaged over documents, so the
agreement module can resample documents:

* ``angular_last`` (Gromov et al. 2024): arccos(cos(x_l, x_{l+n})) / pi at the last real token.
* ``angular_mean``: the same angular distance averaged over every real token.
* ``block_influence`` (ShortGPT, Men et al. 2024): 1 - mean over real tokens of cos(x_l, x_{l+n})
  (no arccos; the official code sums over tokens, which ranks spans the same way).
* ``relative_update``: mean over real tokens of ||x_{l+n} - x_l|| / ||x_{l+n}||, the size of the
  span's update relative to its output. short-transformers' "relative magnitude" is instead
  ||h_out|| / ||h_out + h_in|| on the full states (not the update): a different number.
* ``linear_fit``: out-of-sample 1 - R^2 of a ridge least-squares map x_l -> x_{l+n} (with an
  intercept), one map per span, two-fold cross-fitted over documents (even documents fit the
  map that scores the odd ones and vice versa), so a fit with fewer tokens than d_model
  cannot be trivially perfect. Per document: sum over its sampled tokens of ||y - y_hat||^2
  divided by sum of ||y - mean_fit(y)||^2. Tokens: ``fit_tokens`` positions per document,
  evenly spaced, position 0 left out (its state carries the attention-sink activations,
  orders of magnitude larger, which would decide a squared-error fit alone). Ridge lambda =
  ``ridge`` * trace(Xc^T Xc) / d. Lower = the span is closer to a linear map.
* ``last_n`` ("Reassessing Layer Pruning", Lu et al. 2024): L - n - l, the number of blocks
  after the span; 0 for the last n blocks, which this criterion always drops.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, models, runner
from layerlab.core.io import results

CRITERIA = ("angular_last", "angular_mean", "block_influence", "relative_update", "linear_fit", "last_n")
LABELS = {"angular_last": "angular distance, last token (Gromov)", "angular_mean": "angular distance, all tokens",
          "block_influence": "Block Influence 1 - cos (ShortGPT)", "relative_update": "||x_l+n - x_l|| / ||x_l+n||",
          "linear_fit": "linear fit, 1 - R² out of sample", "last_n": "drop the last n (Lu et al.)"}
TABLE = "beyond_criteria"   # per-document criterion values: doc, n, layer, criterion, value
VERSION = "1"               # bump when a definition here changes: stored values stop matching
RIDGE = 1e-3
FOLDS = 2


def chunk_batches(chunks: torch.Tensor, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) batches of fixed-length chunks [n, T] (no padding)."""
    return [(chunks[i:i + batch_size], torch.ones_like(chunks[i:i + batch_size]))
            for i in range(0, len(chunks), batch_size)]


def check_ns(ns: Sequence[int], n_layers: int) -> list[int]:
    """Sorted distinct block counts, each 1 <= n <= L - 2 (at least three starts to rank)."""
    out = sorted({int(n) for n in ns})
    bad = [n for n in out if not 1 <= n <= n_layers - 2]
    if bad:
        raise ValueError(f"ns: {bad} out of range; allowed 1..{n_layers - 2} (at least three starts l to rank)")
    return out


@torch.no_grad()
def token_criteria(hidden: Sequence[torch.Tensor], mask: torch.Tensor, ns: Sequence[int]) -> dict[str, np.ndarray]:
    """The per-token criteria of one batch: criterion -> [batch, len(ns), L] float64 (NaN
    where l > L - n), for ``angular_last``, ``angular_mean``, ``block_influence`` and
    ``relative_update``. hidden: L + 1 boundary states [batch, T, d] (any dtype, computed in
    float64 on their device); mask: [batch, T], 1 for real tokens, right padded."""
    big_l = len(hidden) - 1
    mask = mask.to(hidden[0].device).double()
    real = mask.sum(1)
    last = (real - 1).long()
    rows = torch.arange(mask.shape[0], device=mask.device)
    out = {c: np.full((mask.shape[0], len(ns), big_l), np.nan) for c in CRITERIA[:4]}
    x = [h.double() for h in hidden]
    norms = [h.norm(dim=-1) for h in x]  # [batch, T]
    for j, n in enumerate(ns):
        for layer in range(big_l - n + 1):
            a, b = x[layer], x[layer + n]
            cos = ((a * b).sum(-1) / (norms[layer] * norms[layer + n]).clamp_min(1e-30)).clamp(-1, 1)
            ang = torch.arccos(cos) / math.pi
            rel = (b - a).norm(dim=-1) / norms[layer + n].clamp_min(1e-30)
            mean = lambda v: ((v * mask).sum(1) / real).cpu().numpy()  # noqa: E731
            out["angular_last"][:, j, layer] = ang[rows, last].cpu().numpy()
            out["angular_mean"][:, j, layer] = mean(ang)
            out["block_influence"][:, j, layer] = 1 - mean(cos)
            out["relative_update"][:, j, layer] = mean(rel)
    return out


def fit_positions(length: int, k: int) -> torch.Tensor:
    """Up to k positions evenly spaced over 1..length-1 (position 0 left out), distinct."""
    if length < 2 or k < 1:
        return torch.zeros(0, dtype=torch.long, device="cpu")
    return torch.linspace(1, length - 1, min(k, length - 1), device="cpu").round().long().unique()


def linear_fit_scores(samples: Sequence[torch.Tensor], ns: Sequence[int], ridge: float = RIDGE) -> np.ndarray:
    """Cross-fitted ridge 1 - R^2 (module docstring) per document: [docs, len(ns), L] (NaN
    where l > L - n). samples: per document its sampled boundary states [L + 1, k, d]
    (float32 on the CPU). Document i is scored by the map fitted on the documents of the
    other parity; with fewer than two documents every value is NaN. Products in float32
    (relative error ~1e-6, far below any difference between spans), the solve in float64."""
    docs, big_l = len(samples), samples[0].shape[0] - 1 if samples else 0
    out = np.full((docs, len(ns), big_l), np.nan)
    if docs < FOLDS:
        return out
    fold = np.arange(docs) % FOLDS
    sizes = [s.shape[1] for s in samples]
    owner = np.repeat(np.arange(docs), sizes)  # the document of each sampled token
    for f in range(FOLDS):
        fit, test = [i for i in range(docs) if fold[i] != f], [i for i in range(docs) if fold[i] == f]
        x_fit = torch.cat([samples[i] for i in fit], 1).float()    # [L+1, N_fit, d]
        x_test = torch.cat([samples[i] for i in test], 1).float()  # [L+1, N_test, d]
        who = torch.as_tensor(np.concatenate([owner[owner == i] for i in test]), device="cpu")
        mu = x_fit.double().mean(1, keepdim=True).float()
        xc, tc = x_fit - mu, x_test - mu
        d = xc.shape[-1]
        for layer in range(big_l):
            outs = [layer + n for n in ns if layer + n <= big_l]
            if not outs:
                continue
            g = (xc[layer].T @ xc[layer]).double()
            g += ridge * torch.trace(g) / d * torch.eye(d, dtype=g.dtype, device=g.device)
            y = torch.cat([xc[b] for b in outs], 1)                 # [N_fit, d * m]
            w = torch.linalg.solve(g, (xc[layer].T @ y).double()).float()  # [d, d * m]
            resid = (tc[layer] @ w - torch.cat([tc[b] for b in outs], 1)).view(len(who), len(outs), d)
            target = torch.stack([tc[b] for b in outs], 1)          # centred at the fit fold's mean
            num = torch.zeros(docs, len(outs), dtype=torch.float64, device="cpu").index_add_(0, who, (resid ** 2).sum(-1).double())
            den = torch.zeros(docs, len(outs), dtype=torch.float64, device="cpu").index_add_(0, who, (target ** 2).sum(-1).double())
            for j, b in enumerate(outs):
                out[test, list(ns).index(b - layer), layer] = (num[test, j] / den[test, j]).cpu().numpy()
    return out


def last_n_scores(docs: int, ns: Sequence[int], n_layers: int) -> np.ndarray:
    """``last_n``: L - n - l for every document, [docs, len(ns), L] (NaN where l > L - n)."""
    out = np.full((docs, len(ns), n_layers), np.nan)
    for j, n in enumerate(ns):
        out[:, j, : n_layers - n + 1] = n_layers - n - np.arange(n_layers - n + 1)
    return out


@torch.no_grad()
def criteria_values(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], ns: Sequence[int],
                    fit_tokens: int = 64, ridge: float = RIDGE) -> dict[str, np.ndarray]:
    """Every criterion of every span (l, n), n in ``ns``, per document: criterion ->
    [docs, len(ns), L] float64, NaN where l > L - n. One ``runner.capture`` per batch
    (right-padded (input_ids, attention_mask) pairs, e.g. ``chunk_batches``); the batch's
    states are reduced at once, only ``fit_tokens`` sampled tokens per document are kept
    (float32, CPU: [L + 1, fit_tokens, d] each) for the linear fit."""
    big_l = arch.n_layers(model)
    ns = check_ns(ns, big_l)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in CRITERIA[:4]}
    samples: list[torch.Tensor] = []
    for ids, mask in batches:
        if bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError("criteria_values: a batch is left padded; pad on the right")
        state = runner.capture(model, ids, mask)
        for c, v in token_criteria(state.hidden, mask, ns).items():
            parts[c].append(v)
        for row in range(ids.shape[0]):
            pos = fit_positions(int(mask[row].sum()), fit_tokens).to(state.hidden[0].device)
            samples.append(torch.stack([h[row, pos].float().cpu() for h in state.hidden]))
        del state
    out = {c: np.concatenate(v) for c, v in parts.items()}
    out["linear_fit"] = linear_fit_scores(samples, ns, ridge)
    out["last_n"] = last_n_scores(len(samples), ns, big_l)
    return out


def tidy(values: dict[str, np.ndarray], ns: Sequence[int]) -> pd.DataFrame:
    """criterion -> [docs, len(ns), L] arrays as rows doc, n, layer, criterion, value (defined spans only)."""
    frames = []
    for c, arr in values.items():
        doc, j, layer = np.nonzero(~np.isnan(arr))
        frames.append(pd.DataFrame({"doc": doc, "n": np.asarray(ns)[j], "layer": layer, "criterion": c,
                                    "value": arr[doc, j, layer]}))
    return pd.concat(frames, ignore_index=True)


def criteria_key(model: nn.Module, model_name: str, chunks: torch.Tensor, ns: Sequence[int], fit_tokens: int,
                 ridge: float, dataset: str) -> str:
    """The results key of one criteria pass: model, runtime, the exact token chunks, ns and
    the linear-fit settings, and ``VERSION``."""
    from layerlab.prune.curve import tensor_hash

    return results.point_key(model_name, TABLE, {"ns": list(ns), "fit_tokens": fit_tokens, "ridge": ridge,
                                                 "folds": FOLDS, "chunks": list(chunks.shape),
                                                 "tokens": tensor_hash(chunks), "version": VERSION},
                             dataset, "test", models.runtime(model))


def stored_criteria(model: nn.Module, model_name: str, store: results.ResultStore, chunks: torch.Tensor,
                    ns: Sequence[int], fit_tokens: int = 64, ridge: float = RIDGE, batch_size: int = 8,
                    dataset: str = "wikitext2") -> pd.DataFrame:
    """The per-document criteria of ``chunks`` [docs, T] (rows doc, n, layer, criterion,
    value, plus the store's columns), computed once (``criteria_values``) and stored in
    table ``TABLE``; a rerun with the same model, runtime, chunks and settings reads them."""
    ns = check_ns(ns, arch.n_layers(model))
    key = criteria_key(model, model_name, chunks, ns, fit_tokens, ridge, dataset)
    if not store.has(TABLE, key):
        t0 = time.time()
        frame = tidy(criteria_values(model, chunk_batches(chunks, batch_size), ns, fit_tokens, ridge), ns)
        store.put(TABLE, key, frame.assign(model=model_name, technique=TABLE, dataset=dataset, split="test",
                                           metric=frame["criterion"], n_items=1, seconds=time.time() - t0,
                                           **results.runtime_columns(models.runtime(model))))
    return store.get(TABLE, key)
