"""Surgery below the block (issue #22 §2): drop attention or MLP sublayers instead of
whole blocks, at equal parameters removed (He et al. 2024, LLM-Drop; FinerCut).

Criterion (LLM-Drop, ``layer_drop.py`` with ``layer_drop_norm``): for each sublayer, the
cosine similarity between its input, the residual stream h entering its norm, and its
output h + sublayer(norm(h)), per token, averaged over every real (non-pad) token of the
calibration documents; the k *most* similar sublayers are dropped, one shot. All scores
come from one capture pass of the unmodified model (``similarities``). Whole blocks are
chosen by the block-level analogue (cosine of a block's input and output, averaged over
tokens: LLM-Drop's "block drop", non-contiguous) and by Gromov et al.'s contiguous
criterion (last-token angular distance, ``prune.blocks``).

Equal parameters: for n whole blocks the attention (or MLP) arm drops the number k of
most-similar sublayers whose parameter count is closest to the n blocks' (both counts
are stored). Each pruned model is an ``edits.Edit`` of ``schedule.Sublayer`` steps scored
prefix-shared: held-out next-token loss per document (WikiText-2 test articles, the first
``seq_len`` tokens of each, so every interval is paired over documents) and, in the full
profile, MMLU per item. Every point is cached in the results store, keyed exactly by its
inputs (``_key``).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, edits as edits_mod, models, runner
from layerlab.core.io import data, results
from layerlab.core.eval import evaluation, prefix_eval
from layerlab.core.compute import params
from layerlab.core.model import schedule, sublayer
from layerlab.core.model.schedule import Sublayer
from layerlab.prune import blocks as prune
from layerlab.prune.curve import tensor_hash
from .sublayer_claims import (FINERCUT, ITEMS, LABELS, LLM_DROP, LLM_DROP_STATEMENT, METHODS,  # noqa: F401
                              PARAM_TOLERANCE, SIMILARITY, TECHNIQUE, claim_rows, claims, damage)

__all__ = ["FINERCUT", "ITEMS", "LABELS", "LLM_DROP", "LLM_DROP_STATEMENT", "METHODS", "PARAM_TOLERANCE", "PROFILES",
           "SIMILARITY", "TECHNIQUE", "block_params", "calibration_id", "claim_rows", "claims", "damage", "doc_chunks",
           "plan", "profile_config", "run", "similarities", "similarity_table", "texts"]
PROFILES = {
    "smoke": dict(fractions=[0.25], methods=list(METHODS), calib_docs=4, calib_len=32, loss_docs=4, seq_len=32,
                  tasks=[], limit=8, batch_size=8),
    "quick": dict(fractions=[0.05, 0.1, 0.2], methods=list(METHODS), calib_docs=32, calib_len=128, loss_docs=32,
                  seq_len=128, tasks=[], limit=None, batch_size=8),
    "full": dict(fractions=[0.04, 0.07, 0.1, 0.15, 0.2], methods=list(METHODS), calib_docs=128, calib_len=256,
                 loss_docs=60, seq_len=256, tasks=["mmlu"], limit=None, batch_size=8),
}
OVERRIDABLE = ("fractions", "methods", "calib_docs", "calib_len", "loss_docs", "seq_len", "tasks", "limit",
               "batch_size")


def profile_config(profile: str, n_layers: int | None = None, **overrides) -> dict:
    """The profile's settings (notebook overrides that are not None applied and validated),
    plus, given ``n_layers``, ``blocks``: the whole-block counts n = round(f * n_layers) >= 1."""
    params.check_names(profile, PROFILES, overrides, OVERRIDABLE)
    cfg = params.override(PROFILES[profile], **overrides)
    bad = [f for f in cfg["fractions"] if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1]
    if bad:
        raise ValueError(f"fractions: {bad} are not fractions of layers; allowed: numbers in (0, 1)")
    bad = [m for m in cfg["methods"] if m not in METHODS]
    if bad or "attn" not in cfg["methods"]:
        raise ValueError(f"methods: {cfg['methods']!r} must include 'attn' and only {', '.join(METHODS)}")
    bad = [t for t in cfg["tasks"] if t not in evaluation.LM_EVAL_TASKS]
    if bad:
        raise ValueError(f"tasks: unknown {bad}; allowed: {', '.join(evaluation.LM_EVAL_TASKS)}")
    for name in ("calib_docs", "calib_len", "loss_docs", "seq_len", "batch_size"):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], int) or cfg[name] < (2 if "docs" in name else 1):
            raise ValueError(f"{name} must be an integer >= {2 if 'docs' in name else 1}; got {cfg[name]!r}")
    if n_layers is None:
        return cfg
    cfg["blocks"] = sorted({max(1, int(round(f * n_layers))) for f in cfg["fractions"]})
    if cfg["blocks"][-1] >= n_layers:
        raise ValueError(f"fractions {cfg['fractions']} drop every block of a {n_layers}-block model")
    return cfg


# ---------------------------------------------------------------------------- data

def doc_chunks(tokenizer, texts: list[str], length: int, n_docs: int) -> torch.Tensor:
    """[docs, length] token ids: the first ``length`` tokens of each of the first ``n_docs``
    texts that have that many (one chunk per document, so losses pair over documents)."""
    rows = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == n_docs:
            break
    if len(rows) < 2:
        raise ValueError(f"fewer than 2 documents of {length} tokens")
    return torch.tensor(rows, device="cpu")


def texts(cfg: dict, tokenizer, data_dir=None) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """(calibration batches of C4 validation documents, right padded; held-out chunks of
    WikiText-2 test articles, ``doc_chunks``)."""
    calib = [r["text"] for r in data.load("c4", data_dir=data_dir)][: cfg["calib_docs"]]
    held = [r["text"] for r in data.load("wikitext2", "test", data_dir=data_dir)]
    return (prune.text_batches(tokenizer, calib, cfg["calib_len"], cfg["batch_size"]),
            doc_chunks(tokenizer, held, cfg["seq_len"], cfg["loss_docs"]))


# ---------------------------------------------------------------------------- the criterion

@torch.no_grad()
def similarities(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[pd.DataFrame, np.ndarray]:
    """One capture pass per batch of the unmodified model. Returns (rows kind, block,
    value, tokens: the cosine of input and output averaged over every real token, for kind
    "attn" (h vs h + attn(norm(h))), "mlp" (its input: the stream after attention, or h for
    parallel blocks, vs that + mlp(norm(.))) and "block" (block input vs output); Gromov's
    last-token angular distances D[n, l] as ``prune.angular_distances``)."""
    spec, par = sublayer.family(model), sublayer.parallel(model)
    blocks = arch.blocks(model)
    n = len(blocks)
    sums, count, last_states = torch.zeros(3, n, dtype=torch.float64, device="cpu"), 0, []

    def cos_sum(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)[real].double().sum().cpu()

    for ids, mask in batches:
        state = runner.capture(model, ids, mask)
        real = state.attention_mask.bool()
        for j in range(n):
            h, out = state.hidden[j], state.hidden[j + 1]
            rest, kw = state.block_args[j]
            mid = sublayer.run(spec, blocks[j], "attn", h, rest, kw)
            mlp_in = h if par else mid
            mlp_out = sublayer.run(spec, blocks[j], "mlp", h) if par else out
            sums[0, j] += cos_sum(h, mid, real)
            sums[1, j] += cos_sum(mlp_in, mlp_out, real)
            sums[2, j] += cos_sum(h, out, real)
        count += int(real.sum())
        last = (state.attention_mask.sum(1) - 1)
        rows = torch.arange(ids.shape[0], device=last.device)
        last_states.append(torch.stack([h[rows, last].float().cpu() for h in state.hidden]))
    mean = (sums / count).cpu().numpy()
    frame = pd.DataFrame([{"kind": kind, "block": j, "value": float(mean[i, j]), "tokens": count}
                          for i, kind in enumerate(("attn", "mlp", "block")) for j in range(n)])
    return frame, prune.angular_distances(torch.cat(last_states, dim=1))


def block_params(model: nn.Module, block: int) -> int:
    """Parameters (count) of block ``block``: what dropping it removes."""
    return sum(p.numel() for p in arch.blocks(model)[block].parameters())


def plan(model: nn.Module, sim: pd.DataFrame, distances: np.ndarray, n_blocks: int, methods) -> dict[str, dict]:
    """Per method, what it drops for the size of ``n_blocks`` whole blocks: dict with
    ``dropped`` (block indices, sorted), ``k`` (how many units), ``params``
    (parameters removed), ``target`` (the "block" arm's parameters: the n most similar
    blocks) and ``steps`` (the schedule). Sublayer arms take the k most similar sublayers
    whose summed parameters are closest to the target (ties: the smaller k)."""
    n_layers = arch.n_layers(model)
    def top(kind: str) -> list[int]:  # most similar first
        return sim[sim.kind == kind].sort_values(["value", "block"], ascending=[False, True])["block"].tolist()

    chosen = top("block")[:n_blocks]
    target = sum(block_params(model, b) for b in chosen)
    out = {}
    for method in methods:
        if method in ("block", "block_contiguous"):
            dropped = chosen if method == "block" else prune.similarity_blocks(distances, n_blocks)
            out[method] = dict(dropped=sorted(dropped), k=n_blocks, params=sum(block_params(model, b) for b in dropped),
                               steps=schedule.drop(n_layers, dropped))
            continue
        order = top(method)
        sizes = np.cumsum([sublayer.n_params(model, b, method) for b in order])
        k = int(np.argmin(np.abs(sizes - target))) + 1
        dropped = sorted(order[:k])
        keep = "mlp" if method == "attn" else "attn"
        out[method] = dict(dropped=dropped, k=k, params=int(sizes[k - 1]),
                           steps=[Sublayer(i, keep) if i in dropped else i for i in range(n_layers)])
    for d in out.values():
        d["target"] = target
    return out


# ---------------------------------------------------------------------------- the points

def calibration_id(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """What the criterion saw, for keys: documents, padded length and a hash of the token ids and masks."""
    ids = torch.cat([torch.cat([i.flatten(), m.flatten()]) for i, m in batches])
    return {"docs": sum(len(i) for i, _ in batches), "length": int(batches[0][0].shape[1]), "tokens": tensor_hash(ids)}


def _key(model: nn.Module, model_name: str, intervention: dict, dataset: str, cfg: dict, calib: dict,
         chunks: torch.Tensor, data_dir, seed: int) -> str:
    """The results key of one point: the model (name and ``models.runtime``), what is dropped
    (method, n, the dropped units and the schedule), the calibration that chose them, and
    the data (lm-eval tasks' fingerprint, items and seed; or the held-out token chunks' hash)."""
    what = ({"tasks": evaluation.tasks_fingerprint(data_dir), "limit": cfg["limit"], "seed": seed}
            if dataset != "heldout" else {"chunks": list(chunks.shape), "tokens": tensor_hash(chunks)})
    return results.point_key(model_name, TECHNIQUE, intervention | {"calibration": calib, "data": what}, dataset,
                             "test", models.runtime(model))


def similarity_table(model: nn.Module, model_name: str, store: results.ResultStore, cfg: dict,
                     batches: list) -> tuple[pd.DataFrame, np.ndarray]:
    """``similarities``, computed once and stored (table ``SIMILARITY``; the distances as
    kind "gromov", block = l, n in their own column)."""
    key = results.point_key(model_name, SIMILARITY, calibration_id(batches), "c4", "validation", models.runtime(model))
    if not store.has(SIMILARITY, key):
        sim, dist = similarities(model, batches)
        d = prune.distance_frame(dist).rename(columns={"layer": "block", "distance": "value"})
        gromov = d[["n", "block", "value"]].assign(kind="gromov", tokens=sim["tokens"].iloc[0])
        rows = pd.concat([sim.assign(n=0), gromov], ignore_index=True)
        store.put(SIMILARITY, key, rows.assign(model=model_name, technique=SIMILARITY, dataset="c4",
                                               split="validation", metric="cosine",
                                               n_items=sum(len(i) for i, _ in batches)))
    rows, big_l = store.get(SIMILARITY, key), arch.n_layers(model)
    sim, g = rows[rows.kind != "gromov"][["kind", "block", "value"]].reset_index(drop=True), rows[rows.kind == "gromov"]
    dist = np.full((big_l + 1, big_l + 1), np.nan)
    dist[g["n"].to_numpy(int), g["block"].to_numpy(int)] = g["value"].to_numpy()
    return sim, dist


def run(model: nn.Module, tokenizer, model_name: str, store: results.ResultStore, cfg: dict, data_dir=None,
        seed: int = 0, text_data: tuple | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Every point of the profile (``cfg`` from ``profile_config``): the unmodified model and,
    per block count n and method, the pruned model; the missing ones scored together,
    prefix-shared. ``text_data``: (calibration batches, held-out chunks) instead of
    ``texts``. Returns (point rows, per-item rows, seconds per part)."""
    timer, t0, n_layers = {}, time.time(), arch.n_layers(model)
    batches, chunks = text_data if text_data is not None else texts(cfg, tokenizer, data_dir)
    sim, dist = similarity_table(model, model_name, store, cfg, batches)
    timer["similarity"], t0, calib = time.time() - t0, time.time(), calibration_id(batches)
    points = [dict(method="none", n_blocks=0, k=0, dropped=[], params=0, target=0, steps=list(range(n_layers)))]
    for n in cfg["blocks"]:
        points += [dict(p, method=m, n_blocks=n) for m, p in plan(model, sim, dist, n, cfg["methods"]).items()]
    datasets = list(cfg["tasks"]) + ["heldout"]
    keys = [{d: _key(model, model_name, {"method": p["method"], "n": p["n_blocks"], "dropped": p["dropped"],
                                         "schedule": schedule.describe(p["steps"])}, d, cfg, calib, chunks, data_dir,
                  seed)
             for d in datasets} for p in points]
    todo = [i for i, k in enumerate(keys)
            if not all(store.has(TECHNIQUE, v) and store.has(ITEMS, v) for v in k.values())]
    if todo:
        e = {i: edits_mod.from_schedule(points[i]["steps"], n_layers) for i in todo}
        with store.journal(TECHNIQUE, [v for i in todo for v in keys[i].values()]) as journal:
            scored = prefix_eval.evaluate_edits(model, tokenizer, list(cfg["tasks"]), e, limit=cfg["limit"],
                                                loss_chunks=chunks, batch_size=cfg["batch_size"], data_dir=data_dir,
                                                seed=seed, journal=journal)
            runtime = results.runtime_columns(models.runtime(model))
            for i, (rows, items) in scored.items():
                p = points[i]
                meta = dict(model=model_name, method=p["method"], n_blocks=p["n_blocks"], n_layers=n_layers,
                            k=p["k"], dropped=",".join(map(str, p["dropped"])), params_removed=p["params"],
                            block_params_removed=p["target"], schedule=schedule.describe(p["steps"]), seed=seed,
                            limit=-1 if cfg["limit"] is None else cfg["limit"], **runtime)
                for d, key in keys[i].items():
                    part = items[items.dataset == d]
                    store.put(ITEMS, key, part.assign(technique=ITEMS, split="test", n_items=1, **meta))
                    store.put(TECHNIQUE, key, rows[rows.dataset == d].assign(technique=TECHNIQUE, split="test",
                                                                             **meta))
    timer["points"] = time.time() - t0
    stored = [v for k in keys for v in k.values()]
    return (pd.concat([store.get(TECHNIQUE, v) for v in stored], ignore_index=True),
            pd.concat([store.get(ITEMS, v) for v in stored], ignore_index=True), timer)
