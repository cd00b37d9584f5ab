"""Healing, a second way (issue #22, section 3): after pruning, fine-tune only the head
(final norm + lm_head) and the last 3 remaining blocks, full-parameter (Lu et al. 2024,
"Reassessing Layer Pruning in LLMs", arXiv 2411.15558), against LoRA healing of the same
pruned model (Gromov et al.), at equal optimizer steps, batches and tokens
(``prune.healing.heal_partial`` with the LoRA run's ``HealConfig``).

Both pruning methods of ``prune.blocks`` (the similarity-chosen block and the n blocks
before the last, "deepest") at the profile's n. Per healed model: lm-eval accuracy per
item and the held-out loss per chunk (normalised by log V), through the prune chapter's
own paths (``prefix_eval.evaluate_edits`` with the unmodified edit on the healed model).
The unpruned, unhealed and LoRA-healed points are the prune chapter's own stored points
(``prune.curve``: same keys, so they are shared); the head+last points are stored under
``TECHNIQUE`` / ``ITEMS``, keyed by exactly the inputs: method, n, blocks, heal settings
(LoRA's and the partial ones), the training chunks' hash, tasks' data, loss chunks, item
limit, seed, evaluation path and runtime.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, edits as edits_mod, models
from layerlab.core.eval import evaluation, prefix_eval
from layerlab.core.compute import params
from layerlab.core.io import results
from layerlab.core.evidence import power, stats, verdicts
from layerlab.prune import blocks as prune, curve
from layerlab.prune.healing import TIED, HealConfig, PartialConfig, heal_partial

TECHNIQUE = "heal_head"
ITEMS = "heal_head_items"
HEALERS = ("unpruned", "none", "lora", "head+last")  # what a row measured: unpruned, pruned unhealed, healed
PAPER = "Lu et al."
# the abstract of arXiv 2411.15558 (README L4 of yaolu-zjut/Navigation_LLM_layer_pruning)
PAPER_CLAIM = ("pruning the final 25% of layers and then fine-tuning only lm_head and the last three remaining "
               "layers beats LoRA fine-tuning of the pruned model (abstract; Llama-3.1-8B-It, Alpaca)")
PROFILES = {
    # the prune chapter's LoRA settings and tasks per profile, so its healed points are shared
    "smoke": dict(fractions=[0.1], tasks=["arc_easy"]),
    "quick": dict(fractions=[0.3], tasks=["arc_easy"]),
    "full": dict(fractions=[0.25], tasks=["mmlu", "boolq"], heal_steps=1000),  # 25%: Lu et al.'s fraction
}
OVERRIDABLE = ("fractions", "tasks", "methods", "heal_steps", "lora_rank", "limit", "partial_lr", "last", "tied",
               *curve.TEXT_SIZES)


def profile_config(profile: str, **overrides) -> dict:
    """``prune.curve.profile_config(profile)`` (distances, text, LoRA settings, items) with
    this section's settings: fractions (n = round(f * L), one healed model per method and
    n), tasks (lm-eval), methods (pruning methods healed), partial_lr (None: LoRA's rate), last (blocks trained), tied
    (``PartialConfig.tied``); every non-None override applied and validated."""
    params.check_names(profile, PROFILES, overrides, OVERRIDABLE)
    own = dict(partial_lr=None, last=3, tied="untie", methods=list(prune.METHODS)) | PROFILES[profile]
    prune_keys = {k: v for k, v in (own | overrides).items() if k in curve.OVERRIDABLE and v is not None}
    cfg = curve.profile_config(profile, heal_fractions=own["fractions"], **prune_keys)
    cfg = params.override(cfg | own, **overrides)
    bad = [t for t in cfg["tasks"] if t not in evaluation.LM_EVAL_TASKS]
    if bad:
        raise ValueError(f"tasks: unknown {bad}; allowed: {', '.join(evaluation.LM_EVAL_TASKS)}")
    if not cfg["fractions"] or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1
                                   for f in cfg["fractions"]):
        raise ValueError(f"fractions: {cfg['fractions']!r}; allowed: a non-empty list of numbers in (0, 1)")
    lr = cfg["partial_lr"]
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ValueError(f"partial_lr: {lr!r}; allowed: a number > 0, or None (LoRA's learning rate)")
    if not cfg["methods"] or any(m not in prune.METHODS for m in cfg["methods"]):
        raise ValueError(f"methods: {cfg['methods']!r}; allowed: a non-empty list of {', '.join(prune.METHODS)}")
    if cfg["tied"] not in TIED:
        raise ValueError(f"tied: {cfg['tied']!r}; allowed: {', '.join(TIED)}")
    if isinstance(cfg["last"], bool) or not isinstance(cfg["last"], int) or cfg["last"] < 0:
        raise ValueError(f"last: {cfg['last']!r}; allowed: an integer >= 0 (blocks trained)")
    return cfg


def partial_config(cfg: dict) -> PartialConfig:
    return PartialConfig(last=cfg["last"], learning_rate=cfg["partial_lr"], tied=cfg["tied"])


def _keys(model: nn.Module, model_name: str, method: str, n: int, blocks: list[int], tasks: list[str], limit,
          loss_chunks: torch.Tensor, data_dir, seed: int, hc: HealConfig, partial: PartialConfig,
          train_chunks: torch.Tensor) -> dict[str, str]:
    """dataset -> key of one head+last-healed model's points (``prune.curve._keys``'s fields)."""
    base = {"method": method, "n": n, "blocks": blocks, "heal": hc.as_dict() | {"partial": partial.as_dict(hc)},
            "limit": limit, "seed": seed, "path": curve.EVAL_PATH, "train_chunks": curve.tensor_hash(train_chunks)}
    data = {d: {"tasks": evaluation.tasks_fingerprint(data_dir)} if d != "heldout" else
            {"loss_chunks": list(loss_chunks.shape), "loss_tokens": curve.tensor_hash(loss_chunks)}
            for d in list(tasks) + ["heldout"]}
    runtime = models.runtime(model)
    return {d: results.point_key(model_name, TECHNIQUE, base | data[d], d, "test", runtime) for d in data}


def partial_point(model: nn.Module, tokenizer, model_name: str, store, method: str, n: int, blocks: list[int],
                  tasks: list[str], limit, loss_chunks: torch.Tensor, train_chunks: torch.Tensor, hc: HealConfig,
                  partial: PartialConfig, data_dir=None, seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """Rows of one pruned model (``blocks`` dropped from a copy of ``model``) healed by
    ``heal_partial``: each task and the held-out loss, one stored point each (per-item
    rows under ``ITEMS``). Trains only when a point is missing."""
    keys = _keys(model, model_name, method, n, blocks, tasks, limit, loss_chunks, data_dir, seed, hc, partial,
                 train_chunks)
    # the prune chapter's keys of the same model's LoRA-healed, unhealed and unpruned points
    partners = {"lora_key": curve._keys(model, model_name, method, n, blocks, tasks, limit, loss_chunks, data_dir,
                                        seed, hc, train_chunks),
                "unhealed_key": curve._keys(model, model_name, method, n, blocks, tasks, limit, loss_chunks, data_dir,
                                            seed, None, None),
                "unpruned_key": curve._keys(model, model_name, "similarity", 0, [], tasks, limit, loss_chunks, data_dir,
                                            seed, None, None)}
    todo = [d for d in keys if not (store.has(TECHNIQUE, keys[d]) and store.has(ITEMS, keys[d]))]
    if todo:
        work = prune.pruned_copy(model, blocks)
        record = heal_partial(work, train_chunks, hc, partial, progress=False)
        work = record.pop("model")
        scored = prefix_eval.evaluate_edits(
            work, tokenizer, [d for d in todo if d != "heldout"], {0: edits_mod.unmodified(arch.n_layers(work))},
            limit=limit, loss_chunks=loss_chunks if "heldout" in todo else None, batch_size=batch_size,
            data_dir=data_dir, seed=seed)[0]
        rows, items = scored
        meta = dict(model=model_name, method=method, n=n, fraction=n / arch.n_layers(model),
                    n_layers=arch.n_layers(model), healed=True, healer="head+last", blocks=",".join(map(str, blocks)),
                    heal_config=str(record["config"]), heal_final_loss=float(np.mean(record["losses"][-5:])),
                    heal_tokens=record["tokens"], n_trained=record["n_trained"], limit=-1 if limit is None else limit,
                    seed=seed, **results.runtime_columns(models.runtime(model)))
        for d in todo:
            part, own = items[items.dataset == d], meta | {c: k[d] for c, k in partners.items()}
            store.put(ITEMS, keys[d], part.assign(technique=ITEMS, n_items=len(part), split="test", **own))
            store.put(TECHNIQUE, keys[d], rows[rows.dataset == d].assign(technique=TECHNIQUE, split="test", **own))
        del work
    return pd.concat([store.get(TECHNIQUE, keys[d]) for d in keys], ignore_index=True)


def _healer(rows: pd.DataFrame) -> pd.Series:
    return pd.Series(np.where(rows["n"] == 0, "unpruned", np.where(rows["healed"].astype(bool), "lora", "none")),
                     index=rows.index)


def run(lm: nn.Module, tok, model_name: str, store, cfg: dict, data_dir=None, seed: int = 0,
        distances: np.ndarray | None = None, loss_chunks: torch.Tensor | None = None,
        train_chunks: torch.Tensor | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The section's points on one model: unpruned; per method and n, pruned unhealed,
    LoRA-healed and head+last-healed. distances, loss_chunks, train_chunks: None reads
    them as the prune chapter does (``curve.distances``, ``curve.text_data``). Returns
    (rows with a ``healer`` column, their per-item rows, seconds per part; ~0 when cached)."""
    timer = {}
    t0 = time.time()
    d_map = distances if distances is not None else curve.distances(lm, tok, model_name, store, cfg, data_dir)[0]
    if loss_chunks is None or train_chunks is None:
        loss_chunks, train_chunks = curve.text_data(tok, cfg, data_dir)
    timer["distances and data"] = time.time() - t0
    big_l, tasks, limit = arch.n_layers(lm), list(cfg["tasks"]), cfg["limit"]
    hc, partial = curve.heal_config(cfg, seed), partial_config(cfg)
    partial.validate(lm)
    ns = [n for n in curve.block_counts(cfg["fractions"], big_l) if n > 0]
    plan = [(m, n, prune.blocks_for(m, d_map, big_l, n)) for m in cfg["methods"] for n in ns]
    t0 = time.time()
    raw = curve.curve_points(lm, tok, model_name, store, [("similarity", 0, [], tasks)]
                             + [(m, n, b, tasks) for m, n, b in plan], limit, loss_chunks, data_dir, seed)
    timer["unpruned and unhealed"] = time.time() - t0
    parts, items = [raw.assign(healer=_healer(raw))], [curve.items_of(store, raw)]
    for method, n, blocks in plan:
        t0 = time.time()
        lora = curve.curve_point(lm, tok, model_name, store, method, n, blocks, tasks, limit, loss_chunks, data_dir,
                                 seed, heal_config=hc, train_chunks=train_chunks)
        timer[f"LoRA, {method}"] = time.time() - t0
        t0 = time.time()
        head = partial_point(lm, tok, model_name, store, method, n, blocks, tasks, limit, loss_chunks, train_chunks,
                             hc, partial, data_dir, seed)
        timer[f"head+last, {method}"] = time.time() - t0
        parts += [lora.assign(healer="lora"), head]
        items += [curve.items_of(store, lora), curve.items_of(store, head, ITEMS)]
    rows = pd.concat(parts, ignore_index=True)
    it = pd.concat(items, ignore_index=True)
    it["healer"] = np.where(it["technique"] == ITEMS, "head+last", _healer(it))
    return rows, it, timer


def _values(items: pd.DataFrame, healer: str, dataset: str, metric: str, method: str | None, n: int | None):
    d = items[(items.healer == healer) & (items.dataset == dataset) & (items.metric == metric)]
    if method is not None:
        d = d[(d.method == method) & (d.n == n)]
    return d.groupby("item")["value"].mean()


def judge(items: pd.DataFrame, dataset: str, metric: str, method: str, n: int) -> dict:
    """head+last against LoRA on the same items of one pruned model: accuracy (0/1) by
    Tango's paired score interval of head+last − LoRA (agrees above 0), the held-out loss
    per chunk by the paired t interval (agrees below 0). Both sides are modified models, so
    the unpruned model's floor (``stats.informative``) is reported beside, not a gate."""
    lora, head = _values(items, "lora", dataset, metric, method, n), _values(items, "head+last", dataset, metric,
                                                                             method, n)
    common = lora.index.intersection(head.index)
    if not len(common):
        return {"ours": "", "interval": "", "verdict": verdicts.not_testable("no item measured for both healers", cause="no data")}
    a, b = lora.loc[common].to_numpy(float), head.loc[common].to_numpy(float)
    if metric == "loss_norm":
        d, lo, hi = stats.paired_t(a, b)
        return {"ours": f"loss / log V: LoRA {a.mean():.4f}, head+last {b.mean():.4f} ({len(a)} chunks)",
                "interval": f"head+last − LoRA {d:+.4f} [{lo:+.4f}, {hi:+.4f}] (paired t over chunks)",
                "verdict": verdicts.below(lo, hi)}
    base = _values(items, "unpruned", dataset, metric, None, None)
    _, why = stats.informative(int(base.sum()), len(base), evaluation.CHANCE[dataset]) if len(base) else \
        (False, "the unpruned model was not measured")
    d, lo, hi = stats.paired_proportion(a, b)
    cols = power.paired_binary_columns(a, b, None)
    ours = f"LoRA {100 * a.mean():.1f}%, head+last {100 * b.mean():.1f}% ({len(a)} items)"
    return {"ours": f"{ours}; {why}",  # two modified models: the unpruned model's floor is reported, not a gate
            "interval": f"head+last − LoRA {100 * d:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}] (paired score)",
            "verdict": verdicts.direction(lo, hi, power_note=cols.pop("power_note")), **cols}


def claims(items: pd.DataFrame, model: str) -> list[dict]:
    """One row (``prune.claims.COLUMNS``) per pruning method, n and dataset (each task's
    accuracy, the held-out loss) of "fine-tuning the head and the last 3 blocks beats LoRA
    healing", judged by ``judge``."""
    rows = []
    healed = items[items.healer == "head+last"]
    for (method, n), part in healed.groupby(["method", "n"], sort=True):
        for dataset, metric in part[["dataset", "metric"]].drop_duplicates().itertuples(index=False):
            if metric not in ("acc", "loss_norm"):
                continue
            what = "held-out loss" if dataset == "heldout" else f"{dataset} accuracy"
            rows.append({"paper": PAPER, "claim": f"fine-tuning the head and the last 3 blocks beats LoRA healing "
                                                  f"({what}; {method} pruning, n = {int(n)})",
                         "paper's number": PAPER_CLAIM, "model": model,
                         **judge(items, dataset, metric, method, int(n))})
    return rows


def summary(rows: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Per method, n and dataset: unpruned, unhealed, LoRA and head+last values; the share
    of the pruning-induced loss increase (accuracy drop) each healer recovers; and the
    paired head+last − LoRA difference with its interval (``judge``)."""
    out = []
    keep = rows[rows.metric.isin(["acc", "loss_norm"])]
    base = keep[keep.healer == "unpruned"].set_index(["dataset", "metric"])["value"]
    for (method, n), part in keep[keep.healer != "unpruned"].groupby(["method", "n"], sort=True):
        for (dataset, metric), g in part.groupby(["dataset", "metric"], sort=True):
            v = g.set_index("healer")["value"]
            row = {"method": method, "n": int(n), "dataset": dataset, "metric": metric,
                   "unpruned": base.get((dataset, metric), np.nan), **{h: v.get(h, np.nan) for h in HEALERS[1:]}}
            gap = row["none"] - row["unpruned"]
            for h in ("lora", "head+last"):
                row[f"{h} recovers %"] = 100 * (row["none"] - row[h]) / gap if gap else np.nan
            row["head+last − LoRA"] = judge(items, dataset, metric, method, int(n))["interval"]
            out.append(row)
    return pd.DataFrame(out)


PARTNERS = {"lora_key": "lora", "unhealed_key": "none", "unpruned_key": "unpruned"}


def claim_rows(store: results.ResultStore) -> list[dict]:
    """The comparison page's rows (``claims`` columns plus ``counted``) from the stored
    head+last points and their stored partners (the LoRA-healed, unhealed and unpruned
    points of the same model, data, items, seed and runtime, by the keys stored beside
    them). One model's points of several protocols (item limit, seed, runtime) are judged
    apart, labelled; only the protocol with the most items is ``counted``."""
    mine = store.table(ITEMS)
    if not len(mine) or "lora_key" not in mine:
        return []
    out = []
    for model, part in mine.groupby("model", sort=True):
        groups = list(part.groupby(["limit", "seed", "runtime_id"], sort=True))
        size = [int(g["n_items"].max()) for _, g in groups]
        for i, ((limit, seed, rid), g) in enumerate(groups):
            frames = [g.assign(healer="head+last")]
            for column, healer in PARTNERS.items():
                frames += [store.get(curve.ITEMS, k).assign(healer=healer) for k in g[column].unique()
                           if store.has(curve.ITEMS, k)]
            name = model if len(groups) == 1 else f"{model} (limit={limit}, seed={seed}, runtime_id={rid})"
            primary = i == max(range(len(groups)), key=lambda j: (size[j], j))
            out += [r | {"counted": primary} for r in claims(pd.concat(frames, ignore_index=True), name)]
    return out
