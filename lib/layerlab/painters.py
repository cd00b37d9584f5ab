"""The Layers-as-Painters workflow: evaluate schedules (see ``schedule``) on decoder
benchmarks through lm-eval, normalise as the paper does, and score the encoder variants
with a head-only probe on frozen features.

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

from . import arch, evaluation, models, results, runner, schedule

TECHNIQUE = "painters"
BENCHMARKS = ("arc_easy", "arc_challenge", "hellaswag", "winogrande", "lambada", "gsm8k")
MAIN_METRIC = {"arc_easy": "acc", "arc_challenge": "acc", "hellaswag": "acc_norm", "winogrande": "acc",
               "lambada": "acc", "gsm8k": "exact_match[flexible-extract]"}
ENCODER_TASKS = ("sst2", "rte", "qnli", "mrpc", "stsb")


@dataclass(frozen=True)
class Spec:
    """One evaluated schedule: a variant applied to the middle of an L-block model with
    ``n_outer`` blocks kept at each end (so L - 2 * n_outer blocks are affected)."""

    variant: str            # "base" or one of schedule.VARIANTS
    n_outer: int = 0
    seed: int = 0           # random order only
    loops: int = 1          # looped parallel only

    def steps(self, n_layers: int) -> list:
        if self.variant == "base":
            return schedule.in_order(n_layers)
        return schedule.build(self.variant, n_layers, self.n_outer, seed=self.seed, iterations=self.loops)

    def as_dict(self) -> dict:
        return {"variant": self.variant, "n_outer": self.n_outer, "seed": self.seed, "loops": self.loops}


def specs(n_layers: int, affected: list[int], variants: list[str], seeds: list[int], loop_counts: list[int]) -> list[Spec]:
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
            if v not in schedule.VARIANTS:
                raise ValueError(f"variants: {v!r} is not one of {', '.join(schedule.VARIANTS)}")
            if v == "random":
                out += [Spec(v, n_outer, seed=s) for s in seeds]
            elif v == "looped_parallel":
                out += [Spec(v, n_outer, loops=k) for k in loop_counts if k > 1]
            else:
                out.append(Spec(v, n_outer))
    return out


def point_key(model_name: str, spec: Spec, task: str, limit: int | None, runtime: dict) -> str:
    """The results key of one (schedule, benchmark) point."""
    return results.point_key(model_name, TECHNIQUE, spec.as_dict() | {"limit": limit}, task, "test", runtime)


def evaluate(model: nn.Module, tokenizer, model_name: str, store: results.ResultStore, spec: Spec,
             tasks: list[str], limits: dict[str, int | None], data_dir=None, seed: int = 0,
             batch_size: int = 16) -> pd.DataFrame:
    """lm-eval rows of ``model`` run with ``spec``'s schedule, one stored point per task."""
    n_layers = arch.n_layers(model)
    keys = {t: point_key(model_name, spec, t, limits.get(t), models.runtime(model)) for t in tasks}
    todo = [t for t in tasks if not store.has(TECHNIQUE, keys[t])]
    if todo:
        steps = spec.steps(n_layers)
        with schedule.scheduled(model, steps):
            # one lm-eval call for every missing task with the same limit (fewer set-ups)
            for limit in sorted({limits.get(t) for t in todo}, key=str):
                group = [t for t in todo if limits.get(t) == limit]
                rows, _ = evaluation.lm_eval(model, tokenizer, group, limit=limit, batch_size=batch_size,
                                             data_dir=data_dir, seed=seed)
                rows = rows.assign(model=model_name, technique=TECHNIQUE, split="test", n_layers=n_layers,
                                   affected=0 if spec.variant == "base" else n_layers - 2 * spec.n_outer,
                                   schedule=schedule.describe(steps), **spec.as_dict())
                for t in group:
                    store.put(TECHNIQUE, keys[t], rows[rows.dataset == t])
    return pd.concat([store.get(TECHNIQUE, keys[t]) for t in tasks], ignore_index=True)


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
    (value - chance) / (base - chance), random-order seeds averaged (their spread kept
    as ``seed_sd``)."""
    keep = informative(table)
    main = main_rows(table)
    main = main[main.dataset.isin(keep)].copy()
    base = main[main.variant == "base"].set_index("dataset")["value"]
    chance = main["dataset"].map(evaluation.CHANCE)
    main["normalised"] = (main["value"] - chance) / (main["dataset"].map(base) - chance)
    grouped = main.groupby(["variant", "affected", "n_outer", "loops", "dataset"], as_index=False).agg(
        value=("value", "mean"), normalised=("normalised", "mean"), seed_sd=("normalised", "std"),
        ci_low=("ci_low", "mean"), ci_high=("ci_high", "mean"), n_items=("n_items", "first"), seeds=("seed", "nunique"))
    return grouped


def median_score(norm: pd.DataFrame) -> pd.DataFrame:
    """The paper's summary: median normalised score across benchmarks, per variant."""
    return norm.groupby(["variant", "affected", "n_outer", "loops"], as_index=False)["normalised"].median()


# ---------------------------------------------------------------------------- encoder

@torch.no_grad()
def encoder_features(model: nn.Module, tokenizer, texts_a: list[str], texts_b: list[str | None] | None,
                     specs_: list[Spec], max_length: int = 128, batch_size: int = 64) -> dict[Spec, np.ndarray]:
    """Mean-pooled last-layer features [n, d] of an encoder under each schedule.

    The state entering the first changed block is captured once per batch and reused for
    every spec with the same ``n_outer`` (the prefix is shared)."""
    n_layers = arch.n_layers(model)
    out: dict[Spec, list[np.ndarray]] = {s: [] for s in specs_}
    pairs = texts_b is not None and texts_b[0] is not None
    order = np.argsort([len(a) + (len(b) if pairs else 0) for a, b in zip(texts_a, texts_b or texts_a)], kind="stable")
    for i in range(0, len(texts_a), batch_size):  # length-sorted batches: little padding
        idx = order[i:i + batch_size]
        a = [texts_a[j] for j in idx]
        b = [texts_b[j] for j in idx] if pairs else None
        enc = tokenizer(a, b, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        state = runner.capture(model, enc.input_ids, enc.attention_mask)
        mask = state.attention_mask.unsqueeze(-1).float()
        for s in specs_:
            start = 0 if s.variant == "base" else s.n_outer
            steps = schedule.as_runner_steps(s.steps(n_layers))[start:]
            h = runner.run_blocks(model, state, state.hidden[start], steps)
            out[s].append(((h.float() * mask).sum(1) / mask.sum(1)).cpu().numpy())
    inverse = np.argsort(order)
    return {s: np.concatenate(v)[inverse] for s, v in out.items()}


def probe(features: np.ndarray, target: np.ndarray, kind: str, train: np.ndarray | None = None,
          folds: int = 5, seed: int = 0) -> dict:
    """Head-only probe on frozen features: logistic regression (accuracy; F1 too for
    MRPC-style pairs) or ridge regression (Spearman), with a standard-scaled input.

    train: boolean mask of training rows (evaluated on the rest); None = stratified
    ``folds``-fold cross-validation, every item predicted once out of fold.
    Returns {metric, value, ci_low, ci_high, n_items} (accuracy: Wilson; Spearman:
    bootstrap over items)."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    est = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)) if kind == "classification"
           else make_pipeline(StandardScaler(), Ridge(alpha=10.0)))
    if train is None:
        split = (StratifiedKFold if kind == "classification" else KFold)(folds, shuffle=True, random_state=seed)
        pred = cross_val_predict(est, features, target, cv=split)
        truth = target
    else:
        est.fit(features[train], target[train])
        pred, truth = est.predict(features[~train]), target[~train]
    n = len(truth)
    if kind == "classification":
        correct = (pred == truth).astype(float)
        lo, hi = evaluation.wilson_interval(correct.sum(), n)
        return {"metric": "acc", "value": float(correct.mean()), "ci_low": lo, "ci_high": hi, "n_items": n}
    rho = float(spearmanr(pred, truth).statistic)
    rng = np.random.default_rng(seed)
    boots = [spearmanr(pred[idx], truth[idx]).statistic for idx in rng.integers(0, n, size=(500, n))]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"metric": "spearman", "value": rho, "ci_low": float(lo), "ci_high": float(hi), "n_items": n}


@torch.no_grad()
def layer_sensitivity(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> pd.DataFrame:
    """Per block l: the next-token loss (normalised by log V) when block l is skipped, and
    when blocks l and l + 1 run swapped, against the unmodified model. Each variant reruns
    only the blocks from l on (the prefix is captured once).

    input_ids, attention_mask: [batch, seq] held-out text. Returns rows: layer, variant
    ('skip' | 'swap_next'), loss_norm, delta (vs unmodified)."""
    import math

    n = arch.n_layers(model)
    state = runner.capture(model, input_ids, attention_mask)
    labels = input_ids.to(state.attention_mask.device)[:, 1:]
    keep = state.attention_mask[:, 1:].bool()

    def loss_of(layer: int, steps) -> float:
        logits = runner.finish(model, runner.run_blocks(model, state, state.hidden[layer], steps))[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        return float(ce.view_as(labels.float())[keep].mean()) / math.log(model.config.vocab_size)

    base = loss_of(n, [])
    rows = []
    for layer in range(n):
        rows.append({"layer": layer, "variant": "skip", "loss_norm": loss_of(layer, range(layer + 1, n))})
        if layer + 1 < n:
            rows.append({"layer": layer, "variant": "swap_next",
                         "loss_norm": loss_of(layer, [layer + 1, layer, *range(layer + 2, n)])})
    frame = pd.DataFrame(rows)
    frame["delta"] = frame["loss_norm"] - base
    frame.attrs["base"] = base
    return frame
