"""The Layers-as-Painters workflow: evaluate schedules (see ``schedule``) on decoder
benchmarks through lm-eval (per-item scores stored too), normalise as the paper does, and
the per-layer sensitivity lens. The encoder variants live in ``painters_encoder``, the
claims' verdicts in ``painters_claims``, the chapter's pipeline in ``painters_run``.

Normalisation (paper): for each benchmark, (score - chance) / (unmodified - chance), so
0 = chance and 1 = the unmodified model; a variant's summary is the median across
benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, models, runner, schedule
from layerlab.core.eval import evaluation, prefix_eval
from layerlab.core.io import results
from layerlab.core.model import edits as edits_mod

TECHNIQUE = "painters"
BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "winogrande", "lambada", "gsm8k")
MAIN_METRIC = {"arc_easy": "acc", "arc_challenge": "acc", "hellaswag": "acc_norm", "winogrande": "acc",
               "lambada": "acc", "gsm8k": "exact_match[flexible-extract]"}
ENCODER_TASKS = ("sst2", "rte", "qnli", "mrpc", "stsb")


@dataclass(frozen=True)
class Spec:
    """One evaluated schedule: a variant applied to the middle of an L-block model with
    ``n_outer`` blocks kept at each end (so L - 2 * n_outer blocks are affected)."""

    variant: str            # "base" or one of schedule.VARIANTS or schedule.SUBLAYER_VARIANTS
    n_outer: int = 0
    order_seed: int = 0     # random order only: the seed that draws the order of the middle blocks
    loops: int = 1          # looped parallel only

    def steps(self, n_layers: int) -> list:
        if self.variant == "base":
            return schedule.in_order(n_layers)
        return schedule.build(self.variant, n_layers, self.n_outer, seed=self.order_seed, iterations=self.loops)

    def as_dict(self) -> dict:
        return {"variant": self.variant, "n_outer": self.n_outer, "order_seed": self.order_seed, "loops": self.loops}


def specs(n_layers: int, affected: list[int], variants: list[str], order_seeds: list[int], loop_counts: list[int]) -> list[Spec]:
    """Every spec of a sweep: each variant at each number of affected middle blocks
    (must have the parity of n_layers); random order once per seed; looped parallel once
    per loop count (parallel is loop count 1)."""
    out = [Spec("base")]
    for a in affected:
        if not 0 < a < n_layers or (n_layers - a) % 2:
            raise ValueError(f"affected: {a} must be in 1..{n_layers - 1} with the parity of {n_layers} "
                             "(the same number of outer blocks at each end)")
        n_outer = (n_layers - a) // 2
        for v in variants:
            if v not in schedule.VARIANTS + schedule.SUBLAYER_VARIANTS:
                raise ValueError(f"variants: {v!r} is not one of {', '.join(schedule.VARIANTS + schedule.SUBLAYER_VARIANTS)}")
            if v == "random":
                out += [Spec(v, n_outer, order_seed=s) for s in order_seeds]
            elif v == "looped_parallel":
                out += [Spec(v, n_outer, loops=k) for k in loop_counts if k > 1]
            else:
                out.append(Spec(v, n_outer))
    return out


ITEMS = "painters_items"  # per-item correctness of each point's main metric, keyed like the point


def point_key(model_name: str, spec: Spec, task: str, limit: int | None, runtime: dict, seed: int = 0,
              data_dir=None) -> str:
    """The results key of one (schedule, benchmark) point.

    Two seeds, kept apart: ``spec.order_seed`` draws a random order of the middle blocks
    (part of the schedule); ``seed`` is lm-eval's seed (few-shot sampling). The item sample
    is the first ``limit`` items of the benchmark file shuffled once with
    ``evaluation.SHUFFLE_SEED`` (None = every item): (limit, shuffle seed) and the prepared
    tasks' fingerprint (data files, prompts, templates) name it."""
    items = {"limit": limit, "item_shuffle_seed": evaluation.SHUFFLE_SEED,
             "tasks": evaluation.tasks_fingerprint(data_dir)}
    return results.point_key(model_name, TECHNIQUE, spec.as_dict() | items | {"eval_seed": seed}, task, "test", runtime)


def item_rows(out: dict, tasks: list[str]) -> pd.DataFrame:
    """Per-item scores of each task's main metric (MAIN_METRIC) from an lm-eval result
    run with ``log_samples``: rows dataset, metric, item (lm-eval's doc_id, the position
    in the shuffled benchmark file), doc_hash, value (1.0 correct, 0.0 not)."""
    rows = prefix_eval.item_rows(out, tasks)
    return rows[rows["metric"] == rows["dataset"].map(MAIN_METRIC)].reset_index(drop=True)


def evaluate_specs(model: nn.Module, tokenizer, model_name: str, store: results.ResultStore,
                   spec_tasks: dict[Spec, list[str]], limits: dict[str, int | None], data_dir=None, seed: int = 0,
                   batch_size: int = 16) -> pd.DataFrame:
    """lm-eval rows of ``model`` run with each spec's schedule on its tasks, one stored
    point per (spec, task); each point's per-item main-metric scores are stored under
    ``ITEMS`` with the same key (the paired tests of ``painters.paired`` pair variants on
    them). The missing points are computed prefix-shared (``prefix_eval.lm_eval_edits``:
    the blocks before a schedule's first changed position run once for all specs), one
    evaluation per (limit, task list); generation (GSM8K) runs on each scheduled model."""
    n_layers = arch.n_layers(model)
    runtime = models.runtime(model)
    keys = {s: {t: point_key(model_name, s, t, limits.get(t), runtime, seed, data_dir) for t in tasks}
            for s, tasks in spec_tasks.items()}
    groups: dict[tuple, list[Spec]] = {}
    for s, tasks in spec_tasks.items():
        todo = [t for t in tasks if not (store.has(TECHNIQUE, keys[s][t]) and store.has(ITEMS, keys[s][t]))]
        for limit in sorted({limits.get(t) for t in todo}, key=str):
            groups.setdefault((limit, tuple(t for t in todo if limits.get(t) == limit)), []).append(s)
    for (limit, group), specs_ in groups.items():
        edits = {s: edits_mod.from_schedule(s.steps(n_layers), n_layers) for s in specs_}
        with store.journal(TECHNIQUE, [keys[s][t] for s in specs_ for t in group]) as journal:
            scored = prefix_eval.lm_eval_edits(model, tokenizer, list(group), edits, limit=limit,
                                               batch_size=batch_size, data_dir=data_dir, seed=seed, log_samples=True,
                                               journal=journal)
            for s, (rows, out) in scored.items():
                extra = dict(model=model_name, split="test", n_layers=n_layers, eval_seed=seed,
                             affected=0 if s.variant == "base" else n_layers - 2 * s.n_outer,
                             schedule=schedule.describe(s.steps(n_layers)), **s.as_dict())
                rows = rows.assign(technique=TECHNIQUE, **extra, **results.runtime_columns(runtime))
                items = item_rows(out, list(group)).assign(technique=ITEMS, **extra,
                                                           **results.runtime_columns(runtime))
                for t in group:
                    part = items[items.dataset == t]
                    store.put(ITEMS, keys[s][t], part.assign(n_items=len(part)))
                    store.put(TECHNIQUE, keys[s][t], rows[rows.dataset == t])
    frames = [store.get(TECHNIQUE, keys[s][t]) for s, tasks in spec_tasks.items() for t in tasks]
    # no (spec, task) asked (every benchmark at chance: no variant runs) -> no rows
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def evaluate(model: nn.Module, tokenizer, model_name: str, store: results.ResultStore, spec: Spec,
             tasks: list[str], limits: dict[str, int | None], data_dir=None, seed: int = 0,
             batch_size: int = 16) -> pd.DataFrame:
    """``evaluate_specs`` for one spec."""
    return evaluate_specs(model, tokenizer, model_name, store, {spec: tasks}, limits, data_dir, seed, batch_size)


def items_of(store: results.ResultStore, table: pd.DataFrame) -> pd.DataFrame:
    """The per-item rows (``ITEMS``) of the points in ``table`` (a slice of the painters table)."""
    keys = sorted(set(table["key"])) if "key" in table else []
    frames = [store.get(ITEMS, k) for k in keys if store.has(ITEMS, k)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def informative(table: pd.DataFrame) -> list[str]:
    """Benchmarks on which the unmodified model is above chance: its 95% interval
    excludes the chance level. Only these can be normalised (the paper's normalisation
    divides by base - chance)."""
    base = main_rows(table)
    base = base[base.variant == "base"]
    return [r.dataset for r in base.itertuples() if r.ci_low > evaluation.CHANCE[r.dataset]]


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each benchmark's main metric (MAIN_METRIC)."""
    return table[table["metric"] == table["dataset"].map(MAIN_METRIC)]


def normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Main-metric rows of the informative benchmarks with ``normalised`` =
    (value - chance) / (base - chance), random-order seeds' point values averaged (their
    spread kept as ``seed_sd``; ``ci_low``/``ci_high`` are NOT averaged across seeds: they
    are the pooled-seed Wilson interval of the pooled accuracy). Intervals for claims come
    from ``painters.paired`` (paired per item; seeds as a second level)."""
    keep = informative(table)
    main = main_rows(table)
    main = main[main.dataset.isin(keep)].copy()
    if main.empty:  # every benchmark at chance: nothing can be normalised
        return pd.DataFrame(columns=["variant", "affected", "n_outer", "loops", "dataset", "value", "normalised",
                                     "seed_sd", "n_items", "seeds", "ci_low", "ci_high"])
    base = main[main.variant == "base"].set_index("dataset")["value"]
    chance = main["dataset"].map(evaluation.CHANCE)
    main["normalised"] = (main["value"] - chance) / (main["dataset"].map(base) - chance)
    grouped = main.groupby(["variant", "affected", "n_outer", "loops", "dataset"], as_index=False).agg(
        value=("value", "mean"), normalised=("normalised", "mean"), seed_sd=("normalised", "std"),
        n_items=("n_items", "first"), seeds=("order_seed", "nunique"))
    # pooled over seeds: every seed's items are further draws (n_items per seed)
    n_all = grouped["n_items"] * grouped["seeds"]
    lo_hi = [evaluation.wilson_interval(v * n, int(n)) for v, n in zip(grouped["value"], n_all)]
    grouped["ci_low"] = [lo for lo, _ in lo_hi]
    grouped["ci_high"] = [hi for _, hi in lo_hi]
    return grouped


def median_score(norm: pd.DataFrame) -> pd.DataFrame:
    """The paper's summary: median normalised score across benchmarks, per variant."""
    return norm.groupby(["variant", "affected", "n_outer", "loops"], as_index=False)["normalised"].median()


@torch.no_grad()
def layer_sensitivity(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> pd.DataFrame:
    """Per block l: the next-token loss (normalised by log V) when block l is skipped, and
    when blocks l and l + 1 run swapped, against the unmodified model. Each variant reruns
    only the blocks from l on (the prefix is captured once).

    input_ids, attention_mask: [batch, seq] held-out text, one document per row. Returns
    rows: layer, variant ('skip' | 'swap_next'), doc (NaN: over all tokens; 0..batch-1:
    that document alone, so claims can resample documents), loss_norm, delta (vs
    unmodified, the same doc)."""
    import math

    n = arch.n_layers(model)
    state = runner.capture(model, input_ids, attention_mask)
    labels = input_ids.to(state.attention_mask.device)[:, 1:]
    keep = state.attention_mask[:, 1:].float()
    log_v = math.log(model.config.vocab_size)

    def loss_of(layer: int, steps) -> np.ndarray:
        """[batch + 1]: each document's mean loss, then the mean over all real tokens."""
        logits = runner.finish(model, runner.run_blocks(model, state, state.hidden[layer], steps))[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        ce = ce.view_as(keep) * keep
        per_doc = ce.sum(1) / keep.sum(1).clamp(min=1)
        return torch.cat([per_doc, (ce.sum() / keep.sum()).view(1)]).double().cpu().numpy() / log_v

    base = loss_of(n, [])
    docs = [*range(len(input_ids)), np.nan]
    rows = []
    for layer in range(n):
        variants = [("skip", range(layer + 1, n))]
        if layer + 1 < n:
            variants.append(("swap_next", [layer + 1, layer, *range(layer + 2, n)]))
        for variant, steps in variants:
            loss = loss_of(layer, steps)
            rows += [{"layer": layer, "variant": variant, "doc": d, "loss_norm": v, "delta": v - b}
                     for d, v, b in zip(docs, loss, base)]
    frame = pd.DataFrame(rows)
    frame.attrs["base"] = float(base[-1])
    return frame


@torch.no_grad()
def hidden_similarity(states: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Cosine similarity between the hidden states of every pair of block boundaries,
    averaged over real tokens (paper Fig. 3).

    states: [L + 1, batch, seq, d]; mask: [batch, seq]. Returns [L + 1, L + 1].
    """
    real = mask.bool().to(states.device)
    n_b = states.shape[0]
    total = torch.zeros(n_b, n_b, dtype=torch.float64, device="cpu")
    count = 0
    for b in range(states.shape[1]):  # one sequence at a time, float32 on the device, summed in float64 on the CPU
        vecs = torch.nn.functional.normalize(states[:, b, real[b]].float(), dim=-1)  # [L+1, tokens, d]
        total += torch.einsum("atd,btd->ab", vecs, vecs).double().cpu()
        count += vecs.shape[1]
    return total.cpu().numpy() / count
