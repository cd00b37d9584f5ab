"""The LASER datasets as scoring tasks: items, the rows to score per item, and the
paper's metrics per item (see ``layerlab.laser.sweep`` for their definitions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from layerlab.core.io import data
from layerlab.core.eval import scoring

DATASETS = ("counterfact", "hotpotqa", "fever", "truthfulqa", "epistemic_reasoning")
NOT_REPLICATED = {
    "bias_in_bios": "Bias in Bios (profession and gender) is not in the data: no fetchable public copy was found "
                    "(only pickles, which were not taken because loading a pickle can run code).",
    "qa_wikidata": "BIG-bench qa_wikidata is not in the data: the task file is in no stored snapshot.",
}


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
    """Per item: id, correct (0/1), nll (the gold answer's, nats per token), and for answer
    tasks acc@10 and first_top, for choice tasks margin (the gold choice's log-likelihood
    minus the best wrong one's, nats: > 0 where correct is 1)."""
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
    wrong = np.where(np.arange(k)[None, :] == task.labels[:, None], -np.inf, lp).max(1)
    return pd.DataFrame({"item": task.item_ids, "correct": (lp.argmax(1) == task.labels).astype(float),
                         "nll": -lp[gold] / ntok[gold], "margin": lp[gold] - wrong})
