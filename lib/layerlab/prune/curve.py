"""The deeper-layers chapter's runs (Gromov et al. 2024): the profiles, the cached
distance map, and the accuracy/loss curve of similarity pruning and of the "drop the
deepest layers" heuristic, each with and without LoRA healing. Every point is cached in
the results store, so a killed run resumes and a rerun computes nothing."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, models, schedule
from layerlab.core.io import data, results
from layerlab.core.eval import evaluation, prefix_eval
from layerlab.core.compute import params
from . import blocks as prune
from layerlab.core.model import edits as edits_mod
from .healing import HealConfig, heal
from layerlab.core.eval.lm_loss import text_chunks

TECHNIQUE = prune.TECHNIQUE
ITEMS = "prune_items"  # per-item results of each point (lm-eval samples, held-out chunks), keyed like the point
DOC_DISTANCES = "prune_distance_docs"  # per-document angular distances (doc, n, layer, value), keyed like the map
EVAL_PATH = "prefix-shared"  # how the points are computed (prefix_eval): part of every key
PROFILES = {
    "smoke": dict(fractions=[0, 0.1, 0.2], heal_fractions=[0.1], heal_steps=3, lora_rank=4, eval_tasks=["arc_easy"],
                  heuristic_tasks=["arc_easy"], limit=8, distance_docs=8, distance_len=64, loss_chunks=4,
                  seq_len=64, payoff_fractions=[0.2]),
    # sized for the 80-minute cold quick book (issue #13): smollm2-135m is at chance on MMLU and
    # BoolQ unpruned, so they cannot show a collapse; one healed n for both methods
    "quick": dict(fractions=[0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], heal_fractions=[0.3], heal_steps=30, lora_rank=8,
                  eval_tasks=["arc_easy", "hellaswag"], heuristic_tasks=["arc_easy"],
                  limit=40, distance_docs=64, distance_len=128, loss_chunks=16, seq_len=256,
                  payoff_fractions=[0.2, 0.4]),
    "full": dict(fractions=[round(0.05 * i, 2) for i in range(19)], heal_fractions=[round(0.05 * i, 2) for i in range(1, 19)],
                 heal_steps=1000, lora_rank=8, eval_tasks=["mmlu", "mmlu_5shot", "boolq", "arc_easy", "hellaswag"],
                 heuristic_tasks=["mmlu", "boolq"], limit=None, distance_docs=200, distance_len=256,
                 loss_chunks=64, seq_len=256, payoff_fractions=[0.25, 0.5]),
}
# the text the chapter reads: distance-map documents and their length, held-out loss chunks, chunk length
TEXT_SIZES = ("distance_docs", "distance_len", "loss_chunks", "seq_len")
OVERRIDABLE = ("fractions", "heal_fractions", "heal_steps", "lora_rank", "eval_tasks", "heuristic_tasks", "limit",
               "payoff_fractions", *TEXT_SIZES)
VARIANTS = {(False, "similarity"): "similarity", (False, "deepest"): "deepest (heuristic)",
            (True, "similarity"): "similarity + healing", (True, "deepest"): "deepest + healing"}


def profile_config(profile: str, **overrides) -> dict:
    """The profile's settings with every override that is not None (notebook parameters;
    lists may come as the strings papermill's -p passes), validated: known tasks,
    fractions in [0, 1), heal_steps, lora_rank and the text sizes (distance_docs, distance_len,
    loss_chunks, seq_len) integers >= 1."""
    params.check_names(profile, PROFILES, overrides, OVERRIDABLE)
    cfg = params.override(PROFILES[profile], **overrides)
    for name in ("eval_tasks", "heuristic_tasks"):
        bad = [t for t in cfg[name] if t not in evaluation.LM_EVAL_TASKS]
        if bad:
            raise ValueError(f"{name}: unknown {bad}; allowed: {', '.join(evaluation.LM_EVAL_TASKS)}")
    for name in ("fractions", "heal_fractions", "payoff_fractions"):
        bad = [f for f in cfg[name] if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1]
        if bad:
            raise ValueError(f"{name}: {bad} are not fractions of layers; allowed: numbers in [0, 1)")
    for name in ("heal_steps", "lora_rank", *TEXT_SIZES):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {cfg[name]!r}")
    if cfg["limit"] is not None and (isinstance(cfg["limit"], bool) or not isinstance(cfg["limit"], (int, float))
                                     or cfg["limit"] <= 0):
        raise ValueError(f"limit must be a positive number of items (or a fraction) or None; got {cfg['limit']!r}")
    return cfg


def block_counts(fractions, n_layers: int) -> list[int]:
    """The block sizes n = round(f * n_layers) for the fractions f, sorted and distinct."""
    return sorted({int(round(f * n_layers)) for f in fractions})


def distances(lm: nn.Module, tok, model: str, store: results.ResultStore, cfg: dict,
              data_dir=None) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """The (l, n) angular-distance map on C4 validation documents, computed once and stored
    (table ``prune_distance``, read by the comparison chapter). Returns (D as in
    ``prune.angular_distances``, its tidy frame, and one row per n with l*(n) and its distance)."""
    docs = [r["text"] for r in data.load("c4", data_dir=data_dir)][: cfg["distance_docs"]]
    key = results.point_key(model, "prune_distance", {"docs": cfg["distance_docs"], "max_length": cfg["distance_len"]},
                            "c4", "validation", models.runtime(lm))
    if not (store.has("prune_distance", key) and store.has(DOC_DISTANCES, key)):
        states = prune.last_token_states(lm, prune.text_batches(tok, docs, cfg["distance_len"]))
        frame = prune.distance_frame(prune.angular_distances(states))
        common = dict(model=model, dataset="c4", split="validation", metric="angular_distance")
        store.put(DOC_DISTANCES, key, doc_distances(states).assign(technique=DOC_DISTANCES, n_items=1, **common))
        store.put("prune_distance", key, frame.assign(technique="prune_distance", value=frame["distance"],
                                                      n_items=len(docs), **common))
    frame = store.get("prune_distance", key)
    big_l = arch.n_layers(lm)
    d = np.full((big_l + 1, big_l + 1), np.nan)
    d[frame["n"].to_numpy(), frame["layer"].to_numpy()] = frame["distance"].to_numpy()
    best = pd.DataFrame([{"n": n, "l*": prune.best_start(d, n), "d": d[n, prune.best_start(d, n)]}
                         for n in range(1, big_l)])
    return d, frame, best


def items_of(store, rows: pd.DataFrame, table: str = ITEMS) -> pd.DataFrame:
    """The per-item rows (``ITEMS``, or ``DOC_DISTANCES`` for a distance frame) stored under
    the keys of ``rows`` (curve or distance rows read from the store)."""
    keys = sorted(set(rows["key"])) if "key" in rows else []
    frames = [store.get(table, k) for k in keys if store.has(table, k)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def doc_distances(states: torch.Tensor) -> pd.DataFrame:
    """Per document, the angular distance arccos(cos(x_l, x_{l+n})) / pi of every (l, n)
    (``prune.angular_distances`` before its mean over documents, so claims can resample
    documents). states: [L + 1, docs, d] last-token states. Rows doc, n, layer, value."""
    unit = torch.nn.functional.normalize(states.double(), dim=-1)
    ang = (torch.arccos(torch.einsum("asd,bsd->sab", unit, unit).clamp(-1, 1)) / np.pi).cpu().numpy()  # [docs, L+1, L+1]
    big_l = states.shape[0] - 1
    ns, layers = zip(*[(n, layer) for n in range(1, big_l + 1) for layer in range(big_l - n + 1)])
    ns, layers = np.array(ns), np.array(layers)
    values = ang[:, layers, layers + ns]  # [docs, pairs]
    docs = np.repeat(np.arange(ang.shape[0]), len(ns))
    return pd.DataFrame({"doc": docs, "n": np.tile(ns, ang.shape[0]), "layer": np.tile(layers, ang.shape[0]),
                         "value": values.reshape(-1)})


def text_data(tok, cfg: dict, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_chunks, train_chunks): held-out WikiText-2 test text for the loss, and C4 plus
    WikiText-2 valid text for healing, cut into chunks of cfg['seq_len'] tokens."""
    loss_texts = [r["text"] for r in data.load("wikitext2", "test", data_dir=data_dir)]
    train_texts = ([r["text"] for r in data.load("c4", data_dir=data_dir)]
                   + [r["text"] for r in data.load("wikitext2", "valid", data_dir=data_dir)])
    return (text_chunks(tok, loss_texts, cfg["seq_len"], cfg["loss_chunks"]),
            text_chunks(tok, train_texts, cfg["seq_len"]))


def tensor_hash(t: torch.Tensor) -> str:
    """A short hash of a tensor's dtype, shape and values (token chunks in keys)."""
    values = t.detach().cpu().contiguous().numpy().tobytes()  # token ids: integer tensors
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + values).hexdigest()[:16]


def heal_config(cfg: dict, seed: int = 0) -> HealConfig:
    """The profile's LoRA healing settings (warm-up: a tenth of the steps)."""
    return HealConfig(rank=cfg["lora_rank"], steps=cfg["heal_steps"], warmup_steps=max(1, cfg["heal_steps"] // 10),
                      seq_len=cfg["seq_len"], seed=seed)




def _keys(model: nn.Module, model_name: str, method: str, n: int, blocks: list[int], tasks: list[str], limit,
          loss_chunks: torch.Tensor, data_dir, seed: int, heal_config: HealConfig | None,
          train_chunks: torch.Tensor | None) -> dict[str, str]:
    """dataset -> results key of one pruned model's points (each task and "heldout")."""
    heal_desc = heal_config.as_dict() if heal_config else None
    base = {"method": method, "n": n, "blocks": blocks, "heal": heal_desc, "limit": limit, "seed": seed,
            "path": EVAL_PATH}
    if heal_config is not None:  # what the LoRA trained on
        base["train_chunks"] = tensor_hash(train_chunks)
    # the data: the prepared lm-eval tasks (files, prompt code) or the held-out token chunks
    data = {d: {"tasks": evaluation.tasks_fingerprint(data_dir)} if d != "heldout" else
            {"loss_chunks": list(loss_chunks.shape), "loss_tokens": tensor_hash(loss_chunks)}
            for d in list(tasks) + ["heldout"]}
    runtime = models.runtime(model)
    return {d: results.point_key(model_name, TECHNIQUE, base | data[d], d, "test", runtime) for d in data}


def _store(store, keys: dict[str, str], todo: list[str], rows: pd.DataFrame, items: pd.DataFrame, meta: dict) -> None:
    """Store each missing dataset's rows and per-item rows under its key."""
    for d in todo:
        part = items[items.dataset == d]
        store.put(ITEMS, keys[d], part.assign(technique=ITEMS, n_items=len(part), split="test", **meta))
        store.put(TECHNIQUE, keys[d], rows[rows.dataset == d].assign(technique=TECHNIQUE, split="test", **meta))


def curve_points(model: nn.Module, tokenizer, model_name: str, store, points: list[tuple[str, int, list[int], list[str]]],
                 limit, loss_chunks: torch.Tensor, data_dir=None, seed: int = 0, batch_size: int = 16) -> pd.DataFrame:
    """Rows for unhealed pruned models, ``points``: (method, n, blocks dropped, lm-eval
    tasks) each; every task and the normalised held-out loss, one stored point per task
    (per-item rows under ``ITEMS``). The missing points are computed together, prefix-
    shared (``prefix_eval.evaluate_edits``: one pass of the unmodified model, then only
    each pruned model's blocks after its first dropped one), one evaluation per task list."""
    n_layers = arch.n_layers(model)
    runtime = models.runtime(model)
    keys = [_keys(model, model_name, m, n, b, t, limit, loss_chunks, data_dir, seed, None, None)
            for m, n, b, t in points]
    todo = [[d for d in k if not (store.has(TECHNIQUE, k[d]) and store.has(ITEMS, k[d]))] for k in keys]
    groups: dict[tuple, list[int]] = {}
    for i, missing in enumerate(todo):
        if missing:
            groups.setdefault(tuple(d for d in missing if d != "heldout"), []).append(i)
    for tasks, members in groups.items():
        loss = loss_chunks if any("heldout" in todo[i] for i in members) else None
        edits = {i: edits_mod.from_schedule(schedule.drop(n_layers, points[i][2]), n_layers) for i in members}
        with store.journal(TECHNIQUE, [keys[i][d] for i in members for d in todo[i]]) as journal:
            scored = prefix_eval.evaluate_edits(model, tokenizer, list(tasks), edits, limit=limit, loss_chunks=loss,
                                                batch_size=batch_size, data_dir=data_dir, seed=seed, journal=journal)
            for i, (rows, items) in scored.items():
                method, n, blocks, _ = points[i]
                meta = _meta(model_name, method, n, n_layers, blocks, None, None, limit, seed, runtime)
                _store(store, keys[i], todo[i], rows, items, meta)
    return pd.concat([store.get(TECHNIQUE, k[d]) for k in keys for d in k], ignore_index=True)


def _meta(model_name: str, method: str, n: int, n_layers: int, blocks: list[int], heal_desc, heal_final_loss,
          limit, seed: int, runtime: dict) -> dict:
    return dict(model=model_name, method=method, n=n, fraction=n / n_layers, n_layers=n_layers,
                healed=heal_desc is not None, blocks=",".join(map(str, blocks)),
                heal_config=None if heal_desc is None else str(heal_desc), heal_final_loss=heal_final_loss,
                limit=-1 if limit is None else limit, seed=seed, **results.runtime_columns(runtime))


def curve_point(model: nn.Module, tokenizer, model_name: str, store, method: str, n: int, blocks: list[int],
                tasks: list[str], limit, loss_chunks: torch.Tensor, data_dir=None, seed: int = 0,
                heal_config: HealConfig | None = None, train_chunks: torch.Tensor | None = None,
                batch_size: int = 16) -> pd.DataFrame:
    """Rows for one pruned model (``blocks`` dropped from ``model``; healed with LoRA when
    ``heal_config`` is given): each lm-eval task and the normalised held-out loss, one
    stored point per task. Healing runs once, and only if some point is missing. The key
    holds the method, n, blocks and the heal settings, so a healed heuristic point never
    reads a healed similarity point (their LoRA runs differ even where the blocks agree)."""
    if heal_config is None:
        return curve_points(model, tokenizer, model_name, store, [(method, n, blocks, tasks)], limit, loss_chunks,
                            data_dir, seed, batch_size)
    keys = _keys(model, model_name, method, n, blocks, tasks, limit, loss_chunks, data_dir, seed, heal_config,
                 train_chunks)
    todo = [d for d in keys if not (store.has(TECHNIQUE, keys[d]) and store.has(ITEMS, keys[d]))]
    if todo:
        work = prune.pruned_copy(model, blocks)
        record = heal(work, train_chunks, heal_config)
        work = record.pop("model")
        tasks_todo = [d for d in todo if d != "heldout"]
        unmodified = {0: edits_mod.unmodified(arch.n_layers(work))}
        rows, items = prefix_eval.evaluate_edits(
            work, tokenizer, tasks_todo, unmodified, limit=limit,
            loss_chunks=loss_chunks if "heldout" in todo else None, batch_size=batch_size, data_dir=data_dir,
            seed=seed)[0]  # one lm-eval call for every missing task
        meta = _meta(model_name, method, n, arch.n_layers(model), blocks, heal_config.as_dict(),
                     float(np.mean(record["losses"][-5:])), limit, seed, models.runtime(model))
        _store(store, keys, todo, rows, items, meta)
    return pd.concat([store.get(TECHNIQUE, keys[d]) for d in keys], ignore_index=True)


def run_curve(lm: nn.Module, tok, model: str, store, distances: np.ndarray, cfg: dict, data_dir=None, seed: int = 0,
              loss_chunks: torch.Tensor | None = None, train_chunks: torch.Tensor | None = None,
              heal: bool = True) -> tuple[pd.DataFrame, dict]:
    """The chapter's curve: similarity pruning at every n of cfg['fractions'] on
    cfg['eval_tasks'] plus the held-out loss; the deepest-layers heuristic at the same n
    (n > 0) on cfg['heuristic_tasks']; and, when ``heal``, both methods healed with LoRA
    at every n of cfg['heal_fractions'] (each on its own tasks). Returns (rows with a
    ``variant`` column, where the unpruned model also appears as the heuristic's n = 0;
    seconds per part: unhealed (both methods, prefix-shared), healing, healing_deepest;
    ~0 when cached)."""
    big_l = arch.n_layers(lm)
    ns = block_counts(cfg["fractions"], big_l)
    heal_ns = [n for n in block_counts(cfg["heal_fractions"], big_l) if n > 0] if heal else []
    hc = heal_config(cfg, seed) if heal_ns else None
    plan = [("similarity", "similarity", ns, cfg["eval_tasks"], None),
            ("deepest", "deepest", [n for n in ns if n > 0], cfg["heuristic_tasks"], None),
            ("healing", "similarity", heal_ns, cfg["eval_tasks"], hc),
            ("healing_deepest", "deepest", heal_ns, cfg["heuristic_tasks"], hc)]
    timer, parts = {}, []
    # the unhealed points of both methods share one prefix-shared evaluation (per task list)
    t0 = time.time()
    unhealed = [(method, n, prune.blocks_for(method, distances, big_l, n), list(tasks))
                for _, method, part_ns, tasks, hcfg in plan if hcfg is None for n in part_ns]
    parts.append(curve_points(lm, tok, model, store, unhealed, cfg["limit"], loss_chunks, data_dir, seed))
    timer["unhealed"] = time.time() - t0
    for part, method, part_ns, tasks, hcfg in plan:
        if hcfg is None:
            continue
        t0 = time.time()
        for n in part_ns:
            parts.append(curve_point(lm, tok, model, store, method, n, prune.blocks_for(method, distances, big_l, n),
                                     tasks, cfg["limit"], loss_chunks, data_dir, seed,
                                     heal_config=hcfg, train_chunks=train_chunks))
        timer[part] = time.time() - t0
    curve = pd.concat(parts, ignore_index=True)
    curve["healed"] = curve["healed"].astype(bool)
    # n = 0 is the same unmodified model for both methods: show it on the heuristic's curve too
    unpruned = curve[(curve.n == 0) & curve.dataset.isin(list(cfg["heuristic_tasks"]) + ["heldout"])]
    curve = pd.concat([curve, unpruned.assign(method="deepest")], ignore_index=True)
    curve["variant"] = [VARIANTS[(h, m)] for h, m in zip(curve["healed"], curve["method"])]
    return curve, timer
