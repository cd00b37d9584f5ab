"""The Painters chapter's pipeline: profiles, the decoder sweep, the similarity and
per-layer lenses, and the eight questions answered from ``painters_claims`` (the same
verdict functions as the comparison table). The notebook only calls these and plots.

On Ray (``decoder``) the driver holds no model while the schedules run as tasks: it plans the
workers' runtime, sweeps on a weightless model (the tasks compute, it reads the store), and
loads the model with the workers' runtime afterwards, for the lenses computed here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from layerlab.core.model import arch, models, runner, schedule
from layerlab.core.io import data, results
from layerlab.core.compute import distributed, params, planning
from . import grid as painters, claims as painters_claims, rows as painters_rows
from . import distributed as painters_distributed

PROFILES = {
    "smoke": dict(variants=["skip", "reverse", "random", "looped_parallel"], affected=[2], loop_counts=[1, 2],
                  benchmarks=["arc_easy", "lambada"], limit=6, gsm8k_limit=1, order_seeds=[0, 1],
                  encoder_limit=60, encoder_affected=[2], sim_docs=4, layer_sensitivity=False, at_chance="skip"),
    # #29: spent where it decides. At 16 items on six benchmarks only ARC-Easy cleared the floor
    # (the other five at chance: LAMBADA and GSM8K cannot enter any claim), so a comparison of two
    # variants had 16 items and an MDE of ~47 pp. Now ARC-Easy alone at 256 items (MDE ~8-11 pp
    # between two degraded variants), at one size (the spread's smallest, 27%: the size where the
    # variants sit furthest above chance), 3 random orders, loops 1 and 3: about the same tokens
    # through the model. The claims that need two sizes (best loop count grows), GSM8K or the
    # per-layer lens are "not run" here and listed under what full adds.
    "quick": dict(variants=list(schedule.VARIANTS), affected=None, spread=[0.27], loop_counts=[1, 3],
                  benchmarks=["arc_easy"], limit=256, gsm8k_limit=3, order_seeds=[0, 1, 2], encoder_limit=200,
                  encoder_affected=[4], sim_docs=16,
                  layer_sensitivity=False, at_chance="skip"),  # #13: the per-layer lens in full only; #22: the encoder's 2-layer size too
    "full": dict(variants=list(schedule.VARIANTS + schedule.SUBLAYER_VARIANTS), affected=None, loop_counts=[1, 2, 3, 4, 6, 8],
                 benchmarks=list(painters.BENCHMARKS), limit=None, gsm8k_limit=None, order_seeds=list(range(10)),
                 encoder_limit=None, encoder_affected=[2, 4], sim_docs=64, layer_sensitivity=True, at_chance="skip"),
}


# where the variants run: "skip" leaves out the benchmarks on which the unmodified model is at
# chance (the paper's normalisation divides by base - chance); "run" runs them there too, as raw
# accuracies in no normalised score and no claim (the claims keep only benchmarks above the floor).
# The full profile's dry run uses "run": on random weights every benchmark is at chance.
AT_CHANCE = ("skip", "run")


def config(profile: str, **overrides) -> dict:
    """The profile's settings with the notebook's non-None parameters applied, validated."""
    if profile not in PROFILES:
        raise ValueError(f"profile: {profile!r} is not one of {', '.join(PROFILES)}")
    cfg = params.override(PROFILES[profile], **overrides)
    bad = [b for b in cfg["benchmarks"] if b not in painters.BENCHMARKS]
    if bad:
        raise ValueError(f"benchmarks: unknown {bad}; allowed: {', '.join(painters.BENCHMARKS)}")
    bad = [v for v in cfg["variants"] if v not in schedule.VARIANTS + schedule.SUBLAYER_VARIANTS]
    if bad:
        raise ValueError(f"variants: unknown {bad}; allowed: {', '.join(schedule.VARIANTS + schedule.SUBLAYER_VARIANTS)}")
    if any(not isinstance(k, int) or k < 1 for k in cfg["loop_counts"]):
        raise ValueError(f"loop_counts: every k must be an integer >= 1; got {cfg['loop_counts']}")
    if cfg["at_chance"] not in AT_CHANCE:
        raise ValueError(f"at_chance: {cfg['at_chance']!r} is not allowed; allowed: {', '.join(AT_CHANCE)}")
    if isinstance(cfg["sim_docs"], bool) or not isinstance(cfg["sim_docs"], int) or cfg["sim_docs"] < 1:
        raise ValueError(f"sim_docs: {cfg['sim_docs']!r} is not allowed; allowed: an integer >= 1")
    return cfg


SPREAD = (0.27, 0.53, 0.8)  # shares of the layers affected when no sizes are given


def sizes(n_layers: int, affected: list[int] | None, spread=SPREAD) -> list[int]:
    """The affected middle sizes: as given, or the ``spread`` shares of the layers (default
    27%, 53%, 80%) with the model's parity."""
    if affected is not None:
        return list(affected)
    return sorted({a - (a - n_layers) % 2 for a in (round(n_layers * f) for f in spread)})


def run_decoder(lm, tok, model: str, store: results.ResultStore, cfg: dict, seed: int = 0, data_dir=None,
                executor: str = "local", ray_address=None, workers=None, device="auto", dtype="auto") -> dict:
    """The decoder sweep. Every benchmark on the unmodified model first: a benchmark at
    chance cannot be normalised (the paper divides by base - chance), so variants run only
    on the others; GSM8K (generative, slow) only for skip, parallel and looped parallel
    (k=3) at the middle size. On Ray every schedule, the unmodified one too, runs as Ray
    tasks and is read from the store, so ``lm`` may be weightless (``planning.skeleton``:
    its plan is the runtime the tasks must run). ``cfg["at_chance"]`` "run": the variants run
    on the benchmarks at chance too (``AT_CHANCE``). Returns {table, items, norm, med_main,
    base_main, skipped (the benchmarks at chance), limits, affected, n_layers, specs, at_chance}."""
    L = arch.n_layers(lm)
    cfg = dict(cfg, affected=sizes(L, cfg["affected"], cfg.get("spread", SPREAD)))
    all_specs = painters.specs(L, cfg["affected"], cfg["variants"], cfg["order_seeds"], cfg["loop_counts"])
    limits = {b: (cfg["gsm8k_limit"] if b == "gsm8k" else cfg["limit"]) for b in cfg["benchmarks"]}
    ray = None if executor != "ray" else {
        "runtime": getattr(lm, "layerlab_planned", None) or models.runtime(lm),
        "args": dict(device=device, dtype=dtype, ray_address=ray_address, workers=workers)}
    base_table = _evaluate(lm, tok, model, store, {all_specs[0]: cfg["benchmarks"]}, limits, seed, data_dir, ray)
    above = painters.informative(base_table)
    useful = above if cfg["at_chance"] == "skip" else list(cfg["benchmarks"])
    mid_outer = (L - cfg["affected"][len(cfg["affected"]) // 2]) // 2
    gsm_specs = {s for s in all_specs if s.n_outer == mid_outer and (
        s.variant in ("skip", "parallel") or (s.variant == "looped_parallel" and s.loops == 3))}
    spec_tasks = {s: [b for b in useful if b != "gsm8k" or s in gsm_specs] for s in all_specs[1:]}
    table = pd.concat([base_table, _evaluate(lm, tok, model, store, spec_tasks, limits, seed, data_dir, ray)],
                      ignore_index=True)
    norm = painters.normalise(table)
    return dict(table=table, items=painters.items_of(store, table), norm=norm, limits=limits, n_layers=L,
                med_main=painters.median_score(norm[norm.dataset != "gsm8k"]), base_main=painters.main_rows(base_table),
                skipped=[b for b in cfg["benchmarks"] if b not in above], affected=cfg["affected"], specs=all_specs,
                at_chance=cfg["at_chance"])


def _evaluate(lm, tok, model: str, store: results.ResultStore, spec_tasks: dict, limits: dict, seed: int,
              data_dir, ray: dict | None) -> pd.DataFrame:
    """``painters.evaluate_specs`` here, or with ``ray`` ({"runtime": the one the tasks must
    run, "args": run_painters_specs's device, dtype, ray_address, workers}) as Ray tasks whose
    stored rows are then read under that runtime's keys: the driver's model does not compute."""
    if ray is None:
        return painters.evaluate_specs(lm, tok, model, store, spec_tasks, limits, data_dir, seed)
    runtime = ray["runtime"]
    painters_distributed.run_painters_specs(model, list(spec_tasks), spec_tasks, limits, n_layers=arch.n_layers(lm),
                                   results_dir=store.root, seed=seed, data_dir=data_dir, executor="ray",
                                   expected_runtime=runtime, **ray["args"])
    keys = [painters.point_key(model, s, t, limits.get(t), runtime, seed, data_dir)
            for s, ts in spec_tasks.items() for t in ts]
    frames = [store.get(painters.TECHNIQUE, k) for k in keys]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # no variant asked: no rows


def decoder(model: str, store: results.ResultStore, cfg: dict, seed: int = 0, data_dir=None, executor: str = "local",
            ray_address=None, workers=None, device="auto", dtype="auto") -> tuple:
    """(lm, tok, out): the decoder loaded and swept (``run_decoder``). On Ray no model is held
    here while the tasks run: the workers' runtime is planned first (``planning.plan_ray``,
    refused at once when this driver could not load it), the sweep runs on a weightless model,
    and the model is loaded with the workers' runtime only afterwards
    (``planning.load_planned``), for the lenses computed here (``similarity``, ``layer_sensitivity``)."""
    if executor != "ray":
        distributed.validate_executor(executor, ray_address)
        lm, tok = models.load(model, dtype=dtype, device=device)
        return lm, tok, run_decoder(lm, tok, model, store, cfg, seed, data_dir)
    planned = planning.plan_ray(model, device, dtype, ray_address, workers)
    out = run_decoder(planning.skeleton(model, planned)[0], None, model, store, cfg, seed, data_dir, executor,
                      ray_address, workers, device, dtype)
    return (*planning.load_planned(model, planned), out)


def similarity(lm, tok, model: str, store: results.ResultStore, n_docs: int, data_dir=None, max_length: int = 128) -> dict:
    """Hidden-state cosine similarity between every pair of block boundaries (Fig. 3) on
    ``n_docs`` WikiText-2 documents, and per document the contrast the shared-space claim
    is judged on (``painters_contrasts.middle_contrast``: middle-to-middle minus
    middle-to-ends cosine on centred states: each boundary's mean state over all real
    tokens subtracted), stored under ``painters_claims.SIMILARITY`` with a ``doc`` column.
    Returns {sim [L+1, L+1], doc_contrast [docs], enc (the tokenised batch)}."""
    from .contrasts import CONTRAST, middle_contrast

    texts = [r["text"] for r in data.load("wikitext2", "test", data_dir=data_dir)][:n_docs]
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    state = runner.capture(lm, enc.input_ids, enc.attention_mask)
    states = torch.stack(state.hidden)  # [L+1, docs, T, d]
    sim = painters.hidden_similarity(states, enc.attention_mask)
    real = enc.attention_mask.bool().to(states.device)
    centre = states[:, real].float().mean(1)  # [L+1, d]: each boundary's mean over every real token
    centred = states.float() - centre[:, None, None, :]
    contrast = middle_contrast(np.stack([painters.hidden_similarity(centred[:, i:i + 1], enc.attention_mask[i:i + 1])
                                         for i in range(len(texts))]))
    key = results.point_key(model, painters_claims.SIMILARITY, {"docs": n_docs, "max_length": max_length,
                                                                "measure": CONTRAST}, "wikitext2", "test",
                            models.runtime(lm))
    if not store.has(painters_claims.SIMILARITY, key):
        store.put(painters_claims.SIMILARITY, key, pd.DataFrame({
            "model": model, "technique": painters_claims.SIMILARITY, "dataset": "wikitext2", "split": "test",
            "metric": CONTRAST, "value": contrast, "n_items": 1, "doc": np.arange(len(contrast)),
            **results.runtime_columns(models.runtime(lm))}))
    return {"sim": sim, "doc_contrast": contrast, "enc": enc}


def layer_sensitivity(lm, model: str, store: results.ResultStore, enc, n_docs: int) -> pd.DataFrame:
    """The per-layer skip / swap lens (stored as ``painters_layer`` rows for the atlas)."""
    key = results.point_key(model, "painters_layer", {"docs": n_docs, "max_length": 128}, "wikitext2", "test",
                            models.runtime(lm))
    if not store.has("painters_layer", key):
        sens = painters.layer_sensitivity(lm, enc.input_ids, enc.attention_mask)
        store.put("painters_layer", key, sens.assign(model=model, technique="painters_layer", dataset="wikitext2",
                                                     split="test", metric="delta_loss_norm", value=sens["delta"],
                                                     n_items=int(enc.attention_mask.sum())))
    return store.get("painters_layer", key)


QUESTIONS = [  # the paper's eight questions and the claims that answer them
    ("Do layers share a representation space?", ["shared_space"]),
    ("Are all layers necessary?", ["not_all_needed"]),
    ("Do middle layers do the same thing?", ["middle_repeat_worst"]),
    ("Does the layer order matter?", ["order"]),
    ("Can we run the layers in parallel?", ["parallel_gsm8k", "parallel_between"]),
    ("Does order matter more for some tasks?", []),
    ("Does looping help parallel layers?", ["looped_parallel", "best_loops_grow"]),
    ("Which variants hurt least?", ["least_degrading"]),
]


def answers(out: dict, model: str, doc_contrast=None) -> str:
    """Markdown: the eight questions, each answered by the claim rows of
    ``painters_rows.model_rows`` at the middle affected size (the same functions and
    thresholds as the comparison chapter); ``doc_contrast`` from ``similarity``."""
    rows = painters_rows.model_rows(out["items"], model, doc_contrast=doc_contrast)
    a_mid = out["affected"][len(out["affected"]) // 2]
    by_claim = {}
    for r in rows:
        key = next(k for k, v in painters_claims.PAINTERS_CLAIMS.items() if v == r["claim"])
        if str(r["ours"]).startswith(f"{a_mid} layers") or key not in by_claim:
            by_claim[key] = r
    lines = []
    for i, (q, keys) in enumerate(QUESTIONS):
        if not keys:  # descriptive: spread of normalised scores across variants per benchmark
            n = out["norm"]
            spread = n[(n.variant != "base") & (n.affected == a_mid)].groupby("dataset")["normalised"].agg(lambda x: x.max() - x.min())
            ans = ("spread of normalised scores across variants at the middle size: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in spread.sort_values(ascending=False).items())
                   + " (descriptive; the paper: math and reasoning are the most order-sensitive).")
        else:
            ans = " ".join("; ".join(x for x in (by_claim[k]["ours"], by_claim[k]["interval"]) if x)
                           + f" → **{by_claim[k]['verdict']}** (paper: {by_claim[k]['claim']})."
                           for k in keys if k in by_claim)
        lines.append(f"{i + 1}. **{q}** {ans}")
    return "\n".join(lines)
