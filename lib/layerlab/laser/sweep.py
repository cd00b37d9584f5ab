"""The LASER workflow: the (tau, l, rho) sweep with the prefix cache, the 20% validation /
80% test protocol and greedy composition. Beside it: the tasks (``laser_tasks``), the
claims judged by intervals (``laser_claims``) and the Fig. 5 analysis (``laser_analysis``).

Metrics per item (all from one teacher-forced pass, see ``scoring``):
    answer tasks (CounterFact, HotpotQA, user facts; context = prompt, continuation =
    " " + answer):  acc = the answer's first token is the top-1 prediction (CounterFact,
    user facts) or greedy decoding would emit the whole answer (HotpotQA: every answer
    token is the argmax, case-sensitive); acc@10 = first token in the top 10;
    nll = mean negative log-likelihood per answer token (nats).
    choice tasks (FEVER, TruthfulQA as true/false, BIG-bench epistemic_reasoning):
    acc = the gold choice has the highest summed log-probability; nll = mean negative
    log-likelihood per token of the gold choice.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
from torch import nn

from layerlab.core.model import arch, models
from layerlab.core.eval import evaluation, prefix_stream, scoring
from layerlab.core.evidence import papers
from layerlab.core.io import results
from . import rank
from .tasks import DATASETS, NOT_REPLICATED, Task, build_task, dataset_name, item_metrics  # noqa: F401

TECHNIQUE = "laser"
PROFILES = ("smoke", "quick", "full")

def limit_for(cfg: dict, dataset: str, full_grid: bool) -> int | None:
    """Items to sample for ``dataset`` under a profile config (``other_limit`` may be a
    per-dataset dict, with ``other_limit_default`` for the rest)."""
    if full_grid:
        return cfg["limit"]
    other = cfg["other_limit"]
    return other.get(dataset, cfg.get("other_limit_default")) if isinstance(other, dict) else other


def spread_layers(n_layers: int, count: int = 8) -> list[int]:
    """About ``count`` layers evenly spread over both halves, plus the last three (where the
    paper finds its gains): 30 layers -> 0, 4, ..., 28 and 27, 29."""
    step = -(-n_layers // count)
    return sorted(set(range(0, n_layers, step)) | set(range(max(0, n_layers - 3), n_layers)))


def profile_config(profile: str, n_layers: int, matrix_types: tuple[str, ...]) -> dict:
    """Default grids of a profile. CounterFact gets the full layer grid; the other
    datasets a reduced one (the deepest quarter of the layers, where the paper finds the
    gains). full is the paper's grid: every matrix type, layer and rho, all items."""
    if profile not in PROFILES:
        raise ValueError(f"profile: {profile!r} is not one of {', '.join(PROFILES)}")
    deep = list(range(n_layers - max(1, n_layers // 4), n_layers))
    if profile == "smoke":
        return {"datasets": ["counterfact", "fever"], "matrix_types": ["mlp_in", "mlp_out"],
                "layers": list(range(n_layers - 2, n_layers)), "rhos": [0.01, 0.5], "limit": 40,
                "other_layers": [n_layers - 1], "other_rhos": [0.01], "other_limit": 20,
                "greedy_layers": [n_layers - 1, n_layers - 2], "greedy_rhos": [0.01]}
    if profile == "quick":
        # #29: spent where it decides. CounterFact gets fewer configurations and four times the
        # items (about 60 points x 400 items instead of 240 x 100, the same item-points): the
        # Table 1 gain row had an MDE of ~11 pp at 80 test items against a smallest effect of
        # 3.6 pp (items needed: 240-700). Layers every ~L/8 plus the last three (both halves, so
        # "late-layer MLP" can be falsified) and the attention output matrix (so "attention is
        # harmless" and the MLP half can be). The other datasets (Table 1's side-by-side numbers;
        # FEVER's gain row needs 4,000+ items, out of any quick budget) keep 80 items at one rho,
        # which pays for CounterFact's. epistemic_reasoning's prompts are ~5x longer than the
        # others', so it gets half the items.
        return {"datasets": list(DATASETS), "matrix_types": ["mlp_in", "mlp_out", "o"], "layers": spread_layers(n_layers),
                "rhos": [0.01, 0.1], "limit": 400, "other_layers": deep, "other_rhos": [0.01],
                "other_limit": {"epistemic_reasoning": 40}, "other_limit_default": 80,
                "greedy_layers": spread_layers(n_layers), "greedy_rhos": [0.01, 0.1]}
    return {"datasets": list(DATASETS), "matrix_types": list(matrix_types), "layers": list(range(n_layers)),
            "rhos": list(papers.LASER_RHOS), "limit": None, "other_layers": list(range(n_layers)),
            "other_rhos": list(papers.LASER_RHOS), "other_limit": None, "greedy_layers": list(range(n_layers)),
            "greedy_rhos": list(papers.LASER_RHOS)}


def split_of(item_ids: list[str], seed: int, val_fraction: float = 0.2) -> np.ndarray:
    """'val' or 'test' per item: a seeded random 20/80 split (the paper's protocol)."""
    order = np.random.default_rng(seed).permutation(len(item_ids))
    labels = np.array(["test"] * len(item_ids), dtype=object)
    labels[order[: int(round(val_fraction * len(item_ids)))]] = "val"
    return labels


def summarise(per_item: pd.DataFrame, splits: np.ndarray, base_row: dict) -> list[dict]:
    """Tidy rows (one per split x metric) with 95% intervals: Wilson for accuracies,
    normal-theory for the mean nll."""
    rows = []
    for split in ("val", "test"):
        part = per_item[splits == split]
        n = len(part)
        if n == 0:
            continue
        for metric in [c for c in ("correct", "acc@10", "nll") if c in part]:
            v = part[metric].to_numpy()
            if metric == "nll":
                se = v.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
                lo, hi = v.mean() - 1.96 * se, v.mean() + 1.96 * se
            else:
                lo, hi = evaluation.wilson_interval(v.sum(), n)
            rows.append({**base_row, "split": split, "metric": "acc" if metric == "correct" else metric,
                         "value": float(v.mean()), "n_items": n, "ci_low": lo, "ci_high": hi})
    return rows


class Sweeper:
    """Runs LASER points for one (model, task) with the prefix cache, storing every point.

    Memory is bounded by the model, not by the data: points are scored by
    ``prefix_stream.scores``, which keeps at most ``state_bytes`` of residual states
    ("auto": 64 MiB on a CPU, 2 GiB on a GPU; None: no limit), cutting the items into
    chunks when they do not fit. The SVD cache has its own byte budget (``rank.SVDCache``;
    pass one cache as ``svd`` to every dataset's sweeper of a chapter run; it recomputes an
    SVD it evicted, see there). Call ``release`` when a dataset is done.

    Each point stores summary rows under technique 'laser' and per-item rows under
    'laser_items' (for paired differences and Fig. 5), keyed by the reduction(s), the
    dataset, and the split spec (seed, limit)."""

    def __init__(self, model: nn.Module, tokenizer, model_name: str, task: Task, store: results.ResultStore,
                 seed: int = 0, limit: int | None = None, max_tokens_per_batch: int = 4096,
                 svd: rank.SVDCache | None = None, state_bytes: int | str | None = "auto",
                 technique: str = TECHNIQUE):
        self.technique = technique  # where points are stored: "laser" (the chapter) or another table
        self.model, self.tok, self.model_name, self.task, self.store = model, tokenizer, model_name, task, store
        self.seed, self.limit = seed, limit
        self.split_spec = f"val20-test80-seed{seed}-n{task.n_items}-limit{limit}"
        self.splits = split_of(task.item_ids, seed)
        self.svd = svd or rank.SVDCache(model)
        self.max_tokens = max_tokens_per_batch
        self.state_bytes = prefix_stream.budget(model, state_bytes)
        self._batches: list[scoring.Batch] | None = None
        self._scorer: scoring.PrefixScorer | None = None

    @property
    def batches(self) -> list[scoring.Batch]:
        """The task's rows, tokenised once (on the CPU)."""
        if self._batches is None:
            self._batches = scoring.encode(self.tok, self.task.contexts, self.task.continuations, self.max_tokens)
        return self._batches

    @property
    def scorer(self) -> scoring.PrefixScorer:
        """A PrefixScorer over every row, within the same state budget (for direct use)."""
        if self._scorer is None:  # captured lazily: a fully cached sweep never runs the model
            self._scorer = scoring.PrefixScorer(self.model, self.batches, len(self.task.contexts),
                                                max_bytes=self.state_bytes)
        return self._scorer

    def release(self) -> None:
        """Drop the tokenised rows and any prefix cache; rebuilt if needed."""
        self._scorer = self._batches = None

    def key(self, reductions: list[rank.Reduction]) -> str:
        return results.point_key(self.model_name, self.technique, [r.as_dict() for r in reductions],
                                 self.task.name, self.split_spec, models.runtime(self.model))

    def _stored(self, key: str) -> bool:
        # both shards of the point must read (an unreadable one is moved aside and recomputed)
        return self.store.has(self.technique, key) and self.store.has(f"{self.technique}_items", key)

    def row_scores(self, edits: list[list[rank.Reduction]]):
        """Yields (index into ``edits``, scoring.RowScores) for each list of reductions,
        streamed within the state budget (deepest start first; nothing stored)."""
        start = lambda reds: min((r.layer for r in reds), default=arch.n_layers(self.model))  # noqa: E731
        jobs = [(start(reds), partial(rank.reduced, self.model, reds, self.svd)) for reds in edits]
        yield from prefix_stream.scores(self.model, self.batches, len(self.task.contexts), jobs, self.state_bytes)

    def points(self, points: list[list[rank.Reduction]], progress: bool = False) -> list[pd.DataFrame]:
        """Summary rows of each point; the missing ones are computed together (the
        unedited prefix is shared by all of them) and each is stored as it completes."""
        from tqdm import tqdm

        keys = [self.key(p) for p in points]
        todo = list({k: p for k, p in zip(keys, points) if not self._stored(k)}.items())
        done = tqdm(total=len(todo), desc=f"LASER {self.task.name}", disable=not progress, mininterval=10)
        # nothing to compute: the rows are not even tokenised (a released sweeper reads its points for free)
        for i, scores in (self.row_scores([p for _, p in todo]) if todo else ()):
            key, reductions = todo[i]
            per_item = item_metrics(self.task, scores)
            self.store.put(f"{self.technique}_items", key, per_item.assign(
                model=self.model_name, technique=f"{self.technique}_items", dataset=self.task.name, split=self.splits,
                metric="item", value=per_item["correct"], n_items=1))
            self.store.put(self.technique, key, summarise(per_item, self.splits, self._describe(reductions)))
            done.update()
        done.close()
        return [self.store.get(self.technique, k) for k in keys]

    def point(self, reductions: list[rank.Reduction]) -> pd.DataFrame:
        """Summary rows of one point (computed and stored if absent)."""
        return self.points([reductions])[0]

    def per_item(self, reductions: list[rank.Reduction]) -> pd.DataFrame:
        """Per-item metrics of one point, computed now (not stored)."""
        return item_metrics(self.task, next(self.row_scores([reductions]))[1])

    def items(self, reductions: list[rank.Reduction]) -> pd.DataFrame:
        """Stored per-item rows of a point (computing it first if needed)."""
        self.point(reductions)
        return self.store.get(f"{self.technique}_items", self.key(reductions))

    def validation_only(self) -> "Sweeper":
        """A sweeper over this one's validation items only (for searches that must not
        look at test items, at a fifth of the cost); its points are stored separately."""
        val = np.flatnonzero(self.splits == "val")
        sub = Sweeper(self.model, self.tok, self.model_name, self.task.subset(val), self.store,
                      self.seed, self.limit, self.max_tokens, self.svd, self.state_bytes, self.technique)
        sub.split_spec = self.split_spec + "-valonly"
        sub.splits = np.array(["val"] * len(val), dtype=object)
        return sub

    def _describe(self, reductions: list[rank.Reduction]) -> dict:
        one = reductions[0] if len(reductions) == 1 else None
        return {"model": self.model_name, **results.runtime_columns(models.runtime(self.model)), "technique": self.technique, "dataset": self.task.name, "protocol": self.split_spec,
                "matrix_type": one.matrix_type if one else ("base" if not reductions else "composed"),
                "layer": one.layer if one else -1, "rho": one.rho if one else 1.0,
                "part": one.part if one else "top", "n_reductions": len(reductions),
                "reductions": ";".join(f"{r.matrix_type}@{r.layer}:{r.rho}" for r in reductions)}


def grid(matrix_types, layers, rhos) -> list[rank.Reduction]:
    """Every single reduction of the grid, deepest layer first (so that early stops
    still cover the layers where LASER helps most in the paper)."""
    return [rank.Reduction(t, layer, float(rho)) for layer in sorted(layers, reverse=True)
            for t in matrix_types for rho in rhos]


def sweep(sweeper: Sweeper, matrix_types, layers, rhos, progress: bool = True) -> pd.DataFrame:
    """The base model and every (tau, l, rho) of the grid; returns their summary rows."""
    rank.validate(sweeper.model, matrix_types, layers, rhos)
    points = [[]] + [[r] for r in grid(matrix_types, layers, rhos)]
    return pd.concat(sweeper.points(points, progress=progress), ignore_index=True)


def select_best(table: pd.DataFrame) -> rank.Reduction | None:
    """The best single reduction on the validation split of one protocol's table: highest
    accuracy, ties broken by lower nll, then by the unmodified model (None when it is one
    of the best), then deeper layer, matrix type and larger rho (a fixed order, never the
    table's row order). Compositions (n_reductions > 1) do not compete. Raises ValueError
    when the table holds two rows for one (matrix_type, layer, rho, split, metric), i.e.
    points of several protocols (seeds, limits, dtypes, code versions): filter first."""
    t = table[table["n_reductions"] <= 1] if "n_reductions" in table else table
    point = ["matrix_type", "layer", "rho", "split", "metric"]
    dup = t.duplicated(point, keep=False)
    if dup.any():
        where = t[dup].iloc[0]
        cols = [c for c in ("protocol", "runtime", "runtime_id", "code_version") if c in t]
        raise ValueError(f"select_best: {int(dup.sum())} rows share a point (e.g. {where.matrix_type}, layer "
                         f"{where.layer}, rho {where.rho}, {where.split} {where.metric}): the table mixes protocols "
                         f"({', '.join(f'{c}: {sorted(map(str, t[c].unique()))}' for c in cols)}); "
                         "keep the rows of one protocol")
    val = t[t["split"] == "val"]
    wide = val.pivot(index=["matrix_type", "layer", "rho"], columns="metric", values="value").reset_index()
    wide["modified"] = wide["matrix_type"] != "base"
    wide = wide.sort_values(["acc", "nll", "modified", "layer", "matrix_type", "rho"],
                            ascending=[False, True, True, False, True, False], kind="stable")
    top = wide.iloc[0]
    if top["matrix_type"] == "base":
        return None
    return rank.Reduction(top["matrix_type"], int(top["layer"]), float(top["rho"]))


def protocol(sweeper: Sweeper, table: pd.DataFrame) -> dict:
    """The paper's protocol: best reduction chosen on validation, base and LASER on test
    with 95% intervals, and the paired differences (bootstrap) of accuracy and nll."""
    best = select_best(table)
    chosen = [best] if best else []
    base_items = sweeper.items([])
    best_items = sweeper.items(chosen)
    test = base_items["split"] == "test"
    out = {"dataset": sweeper.task.name, "model": sweeper.model_name, "n_test": int(test.sum()),
           "n_val": int((~test).sum()), "best": best}
    for name, items in (("base", base_items), ("laser", best_items)):
        correct = items.loc[test, "correct"].to_numpy()
        out[f"{name}_acc"] = float(correct.mean())
        out[f"{name}_acc_ci"] = evaluation.wilson_interval(correct.sum(), len(correct))
        out[f"{name}_nll"] = float(items.loc[test, "nll"].mean())
    for metric in ("correct", "nll"):
        diff, lo, hi = evaluation.paired_difference(base_items.loc[test, metric], best_items.loc[test, metric])
        out[f"diff_{'acc' if metric == 'correct' else 'nll'}"] = (diff, lo, hi)
    return out


def greedy(sweeper: Sweeper, matrix_types, layers, rhos, progress: bool = True) -> dict:
    """Greedy composition (paper Sec. 5.1 style): from the deepest layer downward, try
    every (tau, rho) at that layer on top of the reductions kept so far, and keep the
    best one if it improves validation accuracy (ties: lower nll). Candidates are scored
    on the validation items only, each a stored point; the final composition is then
    scored on validation and test. Returns the kept reductions, the trace, and the final
    summary rows."""
    from tqdm import tqdm

    rank.validate(sweeper.model, matrix_types, layers, rhos)
    search = sweeper.validation_only()

    def val_score(reds):
        t = search.point(reds)
        v = t[t["split"] == "val"].set_index("metric")["value"]
        return float(v["acc"]), float(v["nll"])

    kept: list[rank.Reduction] = []
    current = val_score(kept)
    trace = [{"step": 0, "added": "base", "val_acc": current[0], "val_nll": current[1]}]
    for layer in tqdm(sorted(layers, reverse=True), desc=f"greedy {sweeper.task.name}",
                      disable=not progress, mininterval=10):
        step = [rank.Reduction(t, layer, float(rho)) for t in matrix_types for rho in rhos]
        search.points([kept + [r] for r in step])  # scored together: one capture of the prefix below the layer
        candidates = [(val_score(kept + [r]), r) for r in step]
        (acc, nll), best = max(candidates, key=lambda c: (c[0][0], -c[0][1]))
        if (acc, -nll) > (current[0], -current[1]):
            kept.append(best)
            current = (acc, nll)
            trace.append({"step": len(kept), "added": f"{best.matrix_type}@{best.layer}:{best.rho}",
                          "val_acc": acc, "val_nll": nll})
    final = sweeper.point(kept)
    return {"kept": kept, "trace": pd.DataFrame(trace), "table": final}
