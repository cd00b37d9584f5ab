"""The LASER workflow: tasks with the paper's metrics, the (tau, l, rho) sweep with the
prefix cache, the 20% validation / 80% test protocol, greedy composition, and the
analysis of what the removed higher-order components predict (paper Fig. 5).

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

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import arch, data, evaluation, models, rank, results, scoring

TECHNIQUE = "laser"
DATASETS = ("counterfact", "hotpotqa", "fever", "truthfulqa", "epistemic_reasoning")
NOT_REPLICATED = {
    "bias_in_bios": "Bias in Bios (profession and gender) is not in the data: no fetchable public copy was found "
                    "(only pickles, which were not taken because loading a pickle can run code).",
    "qa_wikidata": "BIG-bench qa_wikidata is not in the data: the task file is in no stored snapshot.",
}


PROFILES = ("smoke", "quick", "full")
PAPER_RHOS = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.01)
# The paper's Table 1 numbers this book quotes (from the project's DESIGN.md; other cells
# of the paper's table are not transcribed here). Accuracy in %.
PAPER_TABLE1 = pd.DataFrame([
    {"dataset": "counterfact", "paper_model": "GPT-J", "paper_base": 13.1, "paper_laser": 24.0,
     "paper_best": "U_in (mlp_in), layer 27, rho 0.01"},
    {"dataset": "fever", "paper_model": "Llama-2-7B", "paper_base": 59.3, "paper_laser": 64.5, "paper_best": ""},
    {"dataset": "bias_in_bios (gender)", "paper_model": "GPT-J", "paper_base": 70.9, "paper_laser": 97.5,
     "paper_best": ""},
])


def limit_for(cfg: dict, dataset: str, full_grid: bool) -> int | None:
    """Items to sample for ``dataset`` under a profile config (``other_limit`` may be a
    per-dataset dict, with ``other_limit_default`` for the rest)."""
    if full_grid:
        return cfg["limit"]
    other = cfg["other_limit"]
    return other.get(dataset, cfg.get("other_limit_default")) if isinstance(other, dict) else other


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
        # sized for 12 minutes on 2 CPU cores (smollm2-135m: ~1.7 s per CounterFact
        # configuration at 140 items, 240 configurations); epistemic_reasoning's prompts are
        # ~5x longer than the others', so it gets half the items
        return {"datasets": list(DATASETS), "matrix_types": ["mlp_in", "mlp_out"], "layers": list(range(n_layers)),
                "rhos": [0.01, 0.05, 0.2, 0.5], "limit": 100, "other_layers": deep, "other_rhos": [0.01, 0.1, 0.5],
                "other_limit": {"epistemic_reasoning": 40}, "other_limit_default": 80,
                "greedy_layers": list(range(n_layers)), "greedy_rhos": [0.01, 0.1]}
    return {"datasets": list(DATASETS), "matrix_types": list(matrix_types), "layers": list(range(n_layers)),
            "rhos": list(PAPER_RHOS), "limit": None, "other_layers": list(range(n_layers)),
            "other_rhos": list(PAPER_RHOS), "other_limit": None, "greedy_layers": list(range(n_layers)),
            "greedy_rhos": list(PAPER_RHOS)}


@dataclass
class Task:
    """Rows to score for one dataset. Per row: context, continuation, the item it belongs
    to and its choice index. Per item: id and gold choice (0 for answer tasks)."""

    name: str
    kind: str                 # "answer" or "choice"
    accuracy: str             # "first_token", "greedy" or "choice"
    item_ids: list[str]
    contexts: list[str]
    continuations: list[str]
    row_item: np.ndarray
    row_choice: np.ndarray
    labels: np.ndarray
    items: list[dict] = field(repr=False, default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def subset(self, item_index: np.ndarray) -> "Task":
        """The same task restricted to the given items (rows follow their items)."""
        keep_items = np.asarray(item_index)
        remap = {int(old): new for new, old in enumerate(keep_items)}
        rows = np.flatnonzero(np.isin(self.row_item, keep_items))
        return Task(self.name, self.kind, self.accuracy, [self.item_ids[i] for i in keep_items],
                    [self.contexts[r] for r in rows], [self.continuations[r] for r in rows],
                    np.array([remap[int(self.row_item[r])] for r in rows]), self.row_choice[rows],
                    self.labels[keep_items], [self.items[i] for i in keep_items] if self.items else [])


def _sample(rows: list[dict], limit: int | None, seed: int) -> list[dict]:
    if limit is None or limit >= len(rows):
        return rows
    idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
    return [rows[i] for i in idx]


def dataset_name(dataset: str) -> str:
    """The name results are stored under: the benchmark name, or for a user file its
    stem and content hash (a changed file is a different dataset)."""
    if dataset in DATASETS:
        return dataset
    digest = hashlib.sha256(Path(dataset).read_bytes()).hexdigest()[:8]
    return f"{Path(dataset).stem}@{digest}"


def build_task(dataset: str, data_dir=None, limit: int | None = None, seed: int = 0) -> Task:
    """Items of a LASER dataset (a name in DATASETS or a path to a user JSONL of
    {"prompt", "answer"} rows), a random sample of ``limit`` of them if given."""
    if dataset in NOT_REPLICATED:
        raise ValueError(f"datasets: {dataset!r} cannot be run: {NOT_REPLICATED[dataset]}")
    if dataset not in DATASETS and not Path(dataset).is_file():
        raise ValueError(f"datasets: unknown {dataset!r}; allowed: {', '.join(DATASETS)}, "
                         "or a path to a JSONL file of {\"prompt\", \"answer\"} rows")
    if dataset == "truthfulqa":
        rows = []
        for q in data.load("truthfulqa", data_dir=data_dir):
            for j, (answer, label) in enumerate(zip(q["mc2"]["choices"], q["mc2"]["labels"])):
                rows.append({"id": f"{q['id']}/{j}", "label": label,
                             "query": f"{q['question']} {answer} Is this statement true or false? "
                                      "This statement is", "choices": [" false", " true"]})
    elif dataset in DATASETS:
        rows = data.load(dataset, data_dir=data_dir)
    else:
        rows = data.load_user_facts(dataset)
    items = _sample(rows, limit, seed)
    name = dataset_name(dataset)
    if dataset in ("fever", "truthfulqa", "epistemic_reasoning"):
        contexts, conts, row_item, row_choice = [], [], [], []
        for i, r in enumerate(items):
            for j, c in enumerate(r["choices"]):
                contexts.append(r["query"])
                conts.append(c)
                row_item.append(i)
                row_choice.append(j)
        return Task(name, "choice", "choice", [r["id"] for r in items], contexts, conts, np.array(row_item),
                    np.array(row_choice), np.array([r["label"] for r in items]), items)
    accuracy = "greedy" if dataset == "hotpotqa" else "first_token"
    return Task(name, "answer", accuracy, [r["id"] for r in items], [r["prompt"] for r in items],
                [" " + r["answer"].strip() for r in items], np.arange(len(items)), np.zeros(len(items), int),
                np.zeros(len(items), int), items)


def item_metrics(task: Task, s: scoring.RowScores) -> pd.DataFrame:
    """Per item: id, correct (0/1), nll, and for answer tasks acc@10 and first_top."""
    if task.kind == "answer":
        correct = s.first_rank == 0 if task.accuracy == "first_token" else s.greedy
        return pd.DataFrame({"item": task.item_ids, "correct": correct.astype(float),
                             "acc@10": (s.first_rank < 10).astype(float),
                             "nll": -s.logprob / s.n_tokens, "first_top": s.first_top})
    n, k = task.n_items, int(task.row_choice.max()) + 1
    lp = np.full((n, k), -np.inf)
    ntok = np.ones((n, k))
    lp[task.row_item, task.row_choice] = s.logprob
    ntok[task.row_item, task.row_choice] = s.n_tokens
    gold = np.arange(n), task.labels
    return pd.DataFrame({"item": task.item_ids, "correct": (lp.argmax(1) == task.labels).astype(float),
                         "nll": -lp[gold] / ntok[gold]})


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

    Each point stores summary rows under technique 'laser' and per-item rows under
    'laser_items' (for paired differences and Fig. 5), keyed by the reduction(s), the
    dataset, and the split spec (seed, limit)."""

    def __init__(self, model: nn.Module, tokenizer, model_name: str, task: Task, store: results.ResultStore,
                 seed: int = 0, limit: int | None = None, max_tokens_per_batch: int = 4096,
                 svd: rank.SVDCache | None = None):
        self.model, self.tok, self.model_name, self.task, self.store = model, tokenizer, model_name, task, store
        self.seed, self.limit = seed, limit
        self.split_spec = f"val20-test80-seed{seed}-n{task.n_items}-limit{limit}"
        self.splits = split_of(task.item_ids, seed)
        self.svd = svd or rank.SVDCache(model)
        self.max_tokens = max_tokens_per_batch
        self._scorer: scoring.PrefixScorer | None = None

    @property
    def scorer(self) -> scoring.PrefixScorer:
        if self._scorer is None:  # captured lazily: a fully cached sweep never runs the model
            batches = scoring.encode(self.tok, self.task.contexts, self.task.continuations, self.max_tokens)
            self._scorer = scoring.PrefixScorer(self.model, batches, len(self.task.contexts))
        return self._scorer

    def key(self, reductions: list[rank.Reduction]) -> str:
        return results.point_key(self.model_name, TECHNIQUE, [r.as_dict() for r in reductions],
                                 self.task.name, self.split_spec, models.runtime(self.model))

    def point(self, reductions: list[rank.Reduction]) -> pd.DataFrame:
        """Summary rows of one point (computed and stored if absent)."""
        key = self.key(reductions)
        if not self.store.has(TECHNIQUE, key):
            per_item = self.per_item(reductions)
            self.store.put("laser_items", key, per_item.assign(
                model=self.model_name, technique="laser_items", dataset=self.task.name, split=self.splits,
                metric="item", value=per_item["correct"], n_items=1))
            self.store.put(TECHNIQUE, key, summarise(per_item, self.splits, self._describe(reductions)))
        return self.store.get(TECHNIQUE, key)

    def per_item(self, reductions: list[rank.Reduction]) -> pd.DataFrame:
        start = min((r.layer for r in reductions), default=arch.n_layers(self.model))
        with rank.reduced(self.model, reductions, self.svd):
            return item_metrics(self.task, self.scorer.score(start))

    def items(self, reductions: list[rank.Reduction]) -> pd.DataFrame:
        """Stored per-item rows of a point (computing it first if needed)."""
        self.point(reductions)
        return self.store.get("laser_items", self.key(reductions))

    def validation_only(self) -> "Sweeper":
        """A sweeper over this one's validation items only (for searches that must not
        look at test items, at a fifth of the cost); its points are stored separately."""
        val = np.flatnonzero(self.splits == "val")
        sub = Sweeper(self.model, self.tok, self.model_name, self.task.subset(val), self.store,
                      self.seed, self.limit, self.max_tokens, self.svd)
        sub.split_spec = self.split_spec + "-valonly"
        sub.splits = np.array(["val"] * len(val), dtype=object)
        return sub

    def _describe(self, reductions: list[rank.Reduction]) -> dict:
        one = reductions[0] if len(reductions) == 1 else None
        return {"model": self.model_name, "technique": TECHNIQUE, "dataset": self.task.name, "protocol": self.split_spec,
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
    from tqdm import tqdm

    rank.validate(sweeper.model, matrix_types, layers, rhos)
    points = [[]] + [[r] for r in grid(matrix_types, layers, rhos)]
    frames = [sweeper.point(p) for p in tqdm(points, desc=f"LASER {sweeper.task.name}", disable=not progress,
                                        mininterval=10)]
    return pd.concat(frames, ignore_index=True)


def select_best(table: pd.DataFrame) -> rank.Reduction | None:
    """The best single reduction on the validation split: highest accuracy, ties broken
    by lower nll. The unmodified model competes too; None when it is (one of) the best,
    since it comes first in a stable sort."""
    val = table[table["split"] == "val"]
    wide = val.pivot_table(index=["matrix_type", "layer", "rho"], columns="metric", values="value").reset_index()
    wide = wide.sort_values(["acc", "nll"], ascending=[False, True], kind="stable")
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
        candidates = [(val_score(kept + [rank.Reduction(t, layer, float(rho))]), rank.Reduction(t, layer, float(rho)))
                      for t in matrix_types for rho in rhos]
        (acc, nll), best = max(candidates, key=lambda c: (c[0][0], -c[0][1]))
        if (acc, -nll) > (current[0], -current[1]):
            kept.append(best)
            current = (acc, nll)
            trace.append({"step": len(kept), "added": f"{best.matrix_type}@{best.layer}:{best.rho}",
                          "val_acc": acc, "val_nll": nll})
    final = sweeper.point(kept)
    return {"kept": kept, "trace": pd.DataFrame(trace), "table": final}


@torch.no_grad()
def component_predictions(sweeper: Sweeper, best: rank.Reduction, item_rows: list[int]) -> pd.DataFrame:
    """For the given items (answer tasks), the top-1 first-token prediction of the LASER
    model (top components kept) and of the model with only the removed higher-order
    components (part='bottom'), and the cosine similarity of each prediction's output
    embedding to the true answer's first token (paper Fig. 5)."""
    task = sweeper.task
    if task.kind != "answer":
        raise ValueError("component_predictions needs an answer task (e.g. counterfact)")
    emb = arch.head(sweeper.model).weight.detach()
    gold = [sweeper.tok(task.continuations[i], add_special_tokens=False)["input_ids"][0] for i in item_rows]
    preds = {}
    for part in ("top", "bottom"):
        r = rank.Reduction(best.matrix_type, best.layer, best.rho, part)
        with rank.reduced(sweeper.model, r, sweeper.svd):
            preds[part] = sweeper.scorer.score(best.layer).first_top[item_rows]
    cos = lambda a, b: torch.nn.functional.cosine_similarity(  # noqa: E731
        emb[a.to(emb.device)].float(), emb[b.to(emb.device)].float(), dim=-1).cpu().numpy()
    g = torch.tensor(gold)
    return pd.DataFrame({
        "prompt": [task.contexts[i] for i in item_rows],
        "answer": [task.continuations[i].strip() for i in item_rows],
        "top_prediction": [sweeper.tok.decode([t]) for t in preds["top"]],
        "bottom_prediction": [sweeper.tok.decode([t]) for t in preds["bottom"]],
        "cos_top": cos(torch.tensor(preds["top"]), g),
        "cos_bottom": cos(torch.tensor(preds["bottom"]), g),
    })
