"""The true cost of dropping each contiguous span of blocks l..l+n-1, per document (and,
for a model above chance on MMLU, per MMLU item), cached in the results store.

Held-out cost: per document (a held-out chunk of ``seq_len`` tokens), the next-token loss
of the model with the span dropped minus the unmodified model's, both as ``lm_loss``
normalises them: nats per token divided by log(vocabulary size) (Gromov et al.'s Fig. 3
measure, the one ``prune.curve`` stores as ``loss_norm``). So a cost of 0.01 is 1% of a
uniform guess's loss. Every span of one n is scored in one ``lm_loss.chunk_losses`` call:
one capture of the unmodified prefix per batch, then only each edit's own blocks
(``edits.from_schedule(schedule.drop(...))``).

MMLU cost: per item, the unmodified model's 0/1 correctness minus the pruned model's (an
accuracy drop; its mean is the drop in accuracy), lm-eval prefix-shared
(``prefix_eval.evaluate_edits``).

Stored per n (one shard holds every start l of that n; the unmodified model is n = 0),
keyed by model, runtime, the exact token chunks (or the lm-eval tasks' fingerprint, limit
and seed) and ``VERSION``: a killed run resumes at the next n, a rerun computes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, edits as edits_mod, models, schedule
from layerlab.core.io import data, results
from layerlab.core.eval import evaluation, prefix_eval
from layerlab.core.compute import params
from layerlab.core.eval.lm_loss import chunk_losses, text_chunks
from .criteria import check_ns

TRUTH = "beyond_truth"      # per-document held-out losses: doc, n, layer, loss, base, value (= cost)
MMLU = "beyond_mmlu"        # per-item MMLU correctness: item, n, layer, acc, base, value (= cost)
VERSION = "1"
PROFILES = {
    "smoke": dict(docs=6, seq_len=64, fractions=[0.25], small_ns=[1], fit_tokens=16, n_boot=200,
                  mmlu_small_ns=[], mmlu_fractions=[0.25], mmlu_limit=8, batch_size=8),
    # sized for ~4-6 min on smollm2-135m in bf16 on 2 CPU cores: the truth map costs ~60 forward passes of
    # the documents (every start l of four n); more, shorter documents serve the bootstrap better than
    # fewer long ones, and one batch of all 24 keeps the CPU's matmuls large (1.8x faster than 8)
    # MMLU at n = 1 (Hinostroza et al.'s own setting: single layers) and, in full, 25% (Lu et al.'s). Not
    # at 12.5%: Qwen2.5-Coder-1.5B's MMLU has collapsed to chance by then (52% -> ~30% at n = 3 in the
    # deeper-layers chapter; 46% -> 23.5-33.5% for every 7-block span, 200 items), and where every span
    # costs the same the truth cannot rank spans (its rank stability was 0.62).
    "quick": dict(docs=24, seq_len=48, fractions=[0.25], small_ns=[1, 2, 4], fit_tokens=47, n_boot=1000,
                  mmlu_small_ns=[1], mmlu_fractions=[], mmlu_limit=40, batch_size=24),
    "full": dict(docs=96, seq_len=256, fractions=[0.25], small_ns=[1, 2, 4], fit_tokens=96, n_boot=2000,
                 mmlu_small_ns=[1], mmlu_fractions=[0.25], mmlu_limit=400, batch_size=16),
}
OVERRIDABLE = ("docs", "seq_len", "ns", "fit_tokens", "n_boot", "mmlu_ns", "mmlu_limit", "batch_size")


def fraction_ns(fractions: Sequence[float], n_layers: int) -> list[int]:
    """round(f * L) for each fraction f, at least 1."""
    return sorted({max(1, int(round(f * n_layers))) for f in fractions})


def profile_config(profile: str, n_layers: int, **overrides) -> dict:
    """The profile's sizes for a model of ``n_layers`` blocks, with every override that is
    not None: docs (held-out chunks), seq_len (tokens each), ns (block counts of the truth
    and criteria maps: 1, 2, 4 and 25% of the layers; smoke 1 and 25%), fit_tokens (tokens
    per document in the linear fit), n_boot, mmlu_ns (block counts of the MMLU map: 1 in
    quick, 1 and 25% in full; smoke 25%), mmlu_limit (MMLU items) and batch_size. Block counts
    outside 1..L-2 are left out of the defaults and refused in overrides."""
    params.check_names(profile, PROFILES, overrides, OVERRIDABLE)
    p = PROFILES[profile]
    fit = lambda ns: [n for n in ns if 1 <= n <= n_layers - 2]  # noqa: E731
    cfg = {k: p[k] for k in ("docs", "seq_len", "fit_tokens", "n_boot", "mmlu_limit", "batch_size")}
    cfg["ns"] = fit(sorted(set(p["small_ns"]) | set(fraction_ns(p["fractions"], n_layers))))
    cfg["mmlu_ns"] = fit(sorted(set(p["mmlu_small_ns"]) | set(fraction_ns(p["mmlu_fractions"], n_layers))))
    for name, value in overrides.items():
        if value is None:
            continue
        if name in ("ns", "mmlu_ns"):
            from layerlab.core.compute.params import as_list
            value = check_ns(as_list(name, value), n_layers) if len(as_list(name, value)) else []
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        cfg[name] = value
    if cfg["docs"] < 4:
        raise ValueError(f"docs must be >= 4 (two folds for the linear fit, a bootstrap over documents); "
                         f"got {cfg['docs']}")
    return cfg


def heldout_chunks(tokenizer, cfg: dict, data_dir=None, dataset: str = "wikitext2") -> torch.Tensor:
    """cfg['docs'] chunks of cfg['seq_len'] tokens [docs, seq_len] of held-out text:
    WikiText-2 test (the text ``prune.curve`` measures its loss on) or C4 validation."""
    split = {"wikitext2": "test", "c4": "validation"}
    if dataset not in split:
        raise ValueError(f"dataset: {dataset!r} is not one of {', '.join(split)}")
    texts = [r["text"] for r in data.load(dataset, split[dataset], data_dir=data_dir)]
    chunks = text_chunks(tokenizer, texts, cfg["seq_len"], cfg["docs"])
    if len(chunks) < cfg["docs"]:
        raise ValueError(f"{dataset} holds only {len(chunks)} chunks of {cfg['seq_len']} tokens")
    return chunks


def span_edits(n_layers: int, n: int) -> dict[int, edits_mod.Edit]:
    """start l -> the edit that drops blocks l..l+n-1, for l = 0..L-n."""
    return {layer: edits_mod.from_schedule(schedule.drop(n_layers, list(range(layer, layer + n))), n_layers)
            for layer in range(n_layers - n + 1)}


def _key(model: nn.Module, model_name: str, table: str, n: int, data_desc: dict, dataset: str) -> str:
    return results.point_key(model_name, table, {"n": n, "version": VERSION} | data_desc, dataset, "test",
                             models.runtime(model))


def _common(model: nn.Module, model_name: str, table: str, dataset: str, metric: str) -> dict:
    return dict(model=model_name, technique=table, dataset=dataset, split="test", metric=metric, n_items=1,
                n_layers=arch.n_layers(model), **results.runtime_columns(models.runtime(model)))


def true_costs(model: nn.Module, model_name: str, store: results.ResultStore, chunks: torch.Tensor,
               ns: Sequence[int], batch_size: int = 8, dataset: str = "wikitext2") -> pd.DataFrame:
    """Per document and span: rows doc, n, layer, loss (the pruned model's normalised
    loss), base (the unmodified model's), value = loss - base (the true cost; loss / log V
    units), seconds (the n's compute time). chunks: [docs, T] token ids. The unmodified
    losses are the point n = 0; each n is one point (computed, stored, then the next),
    resumable per batch of documents (``results.journaled``)."""
    from layerlab.prune.curve import tensor_hash

    big_l = arch.n_layers(model)
    ns = check_ns(ns, big_l)
    desc = {"chunks": list(chunks.shape), "tokens": tensor_hash(chunks)}
    common = _common(model, model_name, TRUTH, dataset, "loss_increase_norm")
    base_key = _key(model, model_name, TRUTH, 0, desc, dataset)
    if not store.has(TRUTH, base_key):
        t0 = time.time()
        base = chunk_losses(model, chunks, [edits_mod.unmodified(big_l)], batch_size=batch_size)[0]
        store.put(TRUTH, base_key, pd.DataFrame({"doc": np.arange(len(base)), "n": 0, "layer": -1, "loss": base,
                                                 "base": base, "value": 0.0, "seconds": time.time() - t0,
                                                 **common}))
    base = store.get(TRUTH, base_key).sort_values("doc")["loss"].to_numpy()
    frames = []
    for n in ns:
        key = _key(model, model_name, TRUTH, n, desc, dataset)
        if not store.has(TRUTH, key):
            t0 = time.time()
            spans = list(span_edits(big_l, n).items())
            with store.journal(TRUTH, [key]) as journal:
                losses = np.concatenate([  # [spans, docs]
                    results.journaled(journal, f"docs{i}-{i + batch_size}", lambda i=i: chunk_losses(
                        model, chunks[i:i + batch_size], [e for _, e in spans], batch_size=batch_size))
                    for i in range(0, len(chunks), batch_size)], axis=1)
                docs = np.arange(losses.shape[1])
                store.put(TRUTH, key, pd.concat([pd.DataFrame({"doc": docs, "n": n, "layer": layer,
                                                               "loss": losses[i], "base": base,
                                                               "value": losses[i] - base})
                                                 for i, (layer, _) in enumerate(spans)], ignore_index=True)
                          .assign(seconds=time.time() - t0, **common))
        frames.append(store.get(TRUTH, key))
    return pd.concat(frames, ignore_index=True)


def _mmlu_items(model: nn.Module, tokenizer, edits: dict, limit, data_dir, seed: int,
                batch_size: int, journal=None) -> dict[str, pd.Series]:
    """name -> the 0/1 accuracy per MMLU item (index: lm-eval's doc_id) of each edit."""
    scored = prefix_eval.evaluate_edits(model, tokenizer, ["mmlu"], edits, limit=limit, batch_size=batch_size,
                                        data_dir=data_dir, seed=seed, journal=journal)
    out = {}
    for name, (_, items) in scored.items():
        acc = items[(items.dataset == "mmlu") & (items.metric == "acc")]
        out[name] = acc.groupby("item")["value"].mean()
    return out


def mmlu_costs(model: nn.Module, tokenizer, model_name: str, store: results.ResultStore, ns: Sequence[int],
               limit: int | None, data_dir=None, seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """Per MMLU item and span: rows item, n, layer, acc (the pruned model's 0/1), base (the
    unmodified model's), value = base - acc (the true cost: an accuracy drop), for every
    start l of each n in ``ns``; ``limit`` items (lm-eval's first rows of the shuffled
    file). The unmodified model is the point n = 0; then one point per n, every start of
    that n sharing one prefix-shared lm-eval run. The rows of n = 0 (layer -1) come first:
    with ns = [] only the unmodified model runs (check ``mmlu_floor`` before the map)."""
    big_l = arch.n_layers(model)
    ns = check_ns(ns, big_l) if len(ns) else []
    desc = {"limit": limit, "seed": seed, "tasks": evaluation.tasks_fingerprint(data_dir)}
    common = _common(model, model_name, MMLU, "mmlu", "acc_drop")
    base_key = _key(model, model_name, MMLU, 0, desc, "mmlu")
    if not store.has(MMLU, base_key):
        t0 = time.time()
        acc = _mmlu_items(model, tokenizer, {"base": edits_mod.unmodified(big_l)}, limit, data_dir, seed,
                          batch_size)["base"]
        store.put(MMLU, base_key, pd.DataFrame({"item": acc.index.to_numpy(), "n": 0, "layer": -1,
                                                "acc": acc.to_numpy(), "base": acc.to_numpy(), "value": 0.0,
                                                "seconds": time.time() - t0, **common}))
    frames = [store.get(MMLU, base_key)]
    base = frames[0].set_index("item")["acc"]
    for n in ns:
        key = _key(model, model_name, MMLU, n, desc, "mmlu")
        if not store.has(MMLU, key):
            t0 = time.time()
            spans = span_edits(big_l, n)
            with store.journal(MMLU, [key]) as journal:  # hours on a CPU: resumable per chunk
                accs = _mmlu_items(model, tokenizer, {f"l{layer}": e for layer, e in spans.items()}, limit,
                                   data_dir, seed, batch_size, journal)
                rows = []
                for layer in spans:
                    acc = accs[f"l{layer}"].reindex(base.index)
                    rows.append(pd.DataFrame({"item": base.index.to_numpy(), "n": n, "layer": layer,
                                              "acc": acc.to_numpy(), "base": base.to_numpy(),
                                              "value": base.to_numpy() - acc.to_numpy()}))
                store.put(MMLU, key, pd.concat(rows, ignore_index=True).assign(seconds=time.time() - t0, **common))
        frames.append(store.get(MMLU, key))
    return pd.concat(frames, ignore_index=True)


def mmlu_floor(frame: pd.DataFrame) -> tuple[bool, str]:
    """Whether the unmodified model is informative on the MMLU items of ``frame`` (rows of
    ``mmlu_costs``; ``stats.informative`` against chance 25%): (ok, reason)."""
    from layerlab.core.evidence import stats

    base = frame.drop_duplicates("item")["base"].to_numpy()
    return stats.informative(int(base.sum()), len(base), evaluation.CHANCE["mmlu"])


def compute(model: nn.Module, tokenizer, model_name: str, store: results.ResultStore, cfg: dict, data_dir=None,
            seed: int = 0, mmlu: bool = True, dataset: str = "wikitext2") -> dict:
    """The section's measurements, each read from the store when present: the held-out
    chunks, the criteria (one capture pass; at every n of cfg['ns'] and cfg['mmlu_ns']), the
    held-out true cost at cfg['ns'], and, when ``mmlu`` and cfg['mmlu_ns'], MMLU: the
    unmodified model first, then the map at cfg['mmlu_ns'] only if it is above chance
    (``mmlu_floor``). Returns dict chunks, criteria, truth, mmlu (None when not run),
    mmlu_floor ((ok, reason) or None) and seconds (wall time per part; ~0 when cached)."""
    from .criteria import stored_criteria

    seconds, out = {}, {"mmlu": None, "mmlu_floor": None}
    t0 = time.time()
    out["chunks"] = heldout_chunks(tokenizer, cfg, data_dir, dataset)
    crit_ns = sorted(set(cfg["ns"]) | set(cfg["mmlu_ns"] if mmlu else []))
    t1 = time.time()
    out["criteria"] = stored_criteria(model, model_name, store, out["chunks"], crit_ns, cfg["fit_tokens"],
                                      batch_size=cfg["batch_size"], dataset=dataset)
    seconds["criteria"] = time.time() - t1
    t1 = time.time()
    out["truth"] = true_costs(model, model_name, store, out["chunks"], cfg["ns"], cfg["batch_size"], dataset)
    seconds["truth"] = time.time() - t1
    if mmlu and cfg["mmlu_ns"]:
        t1 = time.time()
        base = mmlu_costs(model, tokenizer, model_name, store, [], cfg["mmlu_limit"], data_dir, seed)
        out["mmlu_floor"] = mmlu_floor(base)
        out["mmlu"] = (mmlu_costs(model, tokenizer, model_name, store, cfg["mmlu_ns"], cfg["mmlu_limit"], data_dir,
                                  seed) if out["mmlu_floor"][0] else base)
        seconds["mmlu"] = time.time() - t1
    seconds["total"] = time.time() - t0
    out["seconds"] = seconds
    return out
