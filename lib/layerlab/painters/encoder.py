"""The encoder side of Layers as Painters (the paper's BERT appendix): a task head is
trained ONCE on the unmodified encoder's frozen features, then every variant is applied
only at evaluation (variant features -> the same fixed head), as the paper fine-tunes
BERT and changes the layers at test time. Refitting a head per variant would measure what
is still linearly readable and make every variant look harmless.

Scores per task (accuracy; Spearman for STS-B), the unnormalised GLUE average the paper
reports, and the normalised one ((score - chance) / (unmodified - chance)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from layerlab.core.model import arch, models, runner, schedule
from layerlab.core.io import data, data_fetch, results
from layerlab.core.eval import evaluation
from .grid import Spec

TECHNIQUE = "painters_encoder"
ITEMS = "painters_encoder_items"
TASKS = ("sst2", "rte", "qnli", "mrpc", "stsb")
CHANCE = {"sst2": 0.5, "rte": 0.5, "qnli": 0.5, "mrpc": 0.5, "stsb": 0.0}  # uniform guessing
# (train split, test split); None: only one split here, so out-of-fold cross-fitting on it
SPLITS = {"sst2": None, "rte": None, "qnli": None, "mrpc": ("train", "test"), "stsb": ("train", "dev")}
FOLDS = 5


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
            steps = s.steps(n_layers)[start:]
            h = runner.run_blocks(model, state, state.hidden[start], steps)
            out[s].append(((h.float() * mask).sum(1) / mask.sum(1)).cpu().numpy())
    inverse = np.argsort(order)
    return {s: np.concatenate(v)[inverse] for s, v in out.items()}



def _features(model: nn.Module, tokenizer, items: list[dict], specs_: list[Spec], base: Spec,
              train: np.ndarray | None) -> dict[Spec, np.ndarray]:
    """``encoder_features`` of every spec, where a variant needs only the rows its fixed head
    predicts: with a train/test split (``train`` mask) the unmodified encoder runs on every
    row (the head is fitted on its train rows) and the variants on the test rows only (their
    train rows are NaN, never read); cross-fitted tasks (train None) predict every row."""
    a, b = [r["text_a"] for r in items], [r.get("text_b") for r in items]
    if train is None or not train.any():
        return encoder_features(model, tokenizer, a, b, specs_)
    out = encoder_features(model, tokenizer, a, b, [base])
    variants = [s for s in specs_ if s != base]
    test = np.flatnonzero(~train)
    if variants and len(test):
        part = encoder_features(model, tokenizer, [a[i] for i in test], [b[i] for i in test], variants)
        for s, f in part.items():
            out[s] = np.full((len(items), f.shape[1]), np.nan, dtype=f.dtype)
            out[s][test] = f
    return out


def kind_of(task: str) -> str:
    return "regression" if task == "stsb" else "classification"


def sample(task: str, limit: int | None, seed: int, data_dir=None) -> tuple[list[dict], np.ndarray | None]:
    """The items of ``task`` (a seeded sample of at most ``limit`` per split) and the
    train mask (None: one split, cross-fitted in FOLDS folds)."""
    rng = np.random.default_rng([seed, TASKS.index(task)])

    def pick(rows):
        if not limit or limit >= len(rows):
            return rows
        return [rows[i] for i in sorted(rng.choice(len(rows), limit, replace=False))]
    if SPLITS[task] is None:
        return pick(data.load(task, data_dir=data_dir)), None
    tr, te = (pick(data.load(task, s, data_dir=data_dir)) for s in SPLITS[task])
    return tr + te, np.r_[np.ones(len(tr), bool), np.zeros(len(te), bool)]


def items_hash(items: list[dict], train: np.ndarray | None, task: str, data_dir=None) -> str:
    """The item sample for the keys: ``results.items_hash`` of the items' ids with their
    role (train / test / cross-fitted) and the task's data files' fingerprint."""
    role = ["cv"] * len(items) if train is None else ["train" if t else "test" for t in train]
    ids = [f"{r}:{x.get('id')}" for r, x in zip(role, items)]
    return results.items_hash(ids) + "-" + data_fetch.files_fingerprint([task], data_dir)


def _estimator(kind: str):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)) if kind == "classification"
            else make_pipeline(StandardScaler(), Ridge(alpha=10.0)))


def fixed_head_predictions(features: dict, base: Spec, target: np.ndarray, kind: str,
                           train: np.ndarray | None = None, folds: int = FOLDS, seed: int = 0) -> dict:
    """Predictions of a head fitted ONCE on the unmodified features (``features[base]``)
    and applied unchanged to every spec's features.

    train: boolean mask of training rows (the head predicts the rest); None = ``folds``
    cross-fitting: a head per fold, fitted on the base features of the other folds, so
    every item is predicted once out of fold. Returns {spec: (test index, predictions)}."""
    from sklearn.model_selection import KFold, StratifiedKFold
    if train is None:
        split = (StratifiedKFold if kind == "classification" else KFold)(folds, shuffle=True, random_state=seed)
        counts = np.unique(target, return_counts=True)[1] if kind == "classification" else [len(target)]
        if max(counts) < folds:
            raise ValueError(f"encoder_limit: {len(target)} items give no class {folds} items for the {folds}-fold "
                             f"cross-fitted head; allowed: more items (about {folds * len(counts)} or more)")
        parts = list(split.split(features[base], target))
    else:
        parts = [(np.flatnonzero(train), np.flatnonzero(~train))]
    out = {s: ([], []) for s in features}
    for tr, te in parts:
        head = _estimator(kind).fit(features[base][tr], target[tr])
        for s, f in features.items():
            out[s][0].append(te)
            out[s][1].append(head.predict(f[te]))
    return {s: (np.concatenate(i), np.concatenate(p)) for s, (i, p) in out.items()}


def score(pred: np.ndarray, truth: np.ndarray, kind: str, seed: int = 0, n_boot: int = 500) -> dict:
    """{metric, value, ci_low, ci_high, n_items}: accuracy (Wilson) or Spearman (bootstrap over items)."""
    from scipy.stats import spearmanr
    n = len(truth)
    if kind == "classification":
        correct = (pred == truth).astype(float)
        lo, hi = evaluation.wilson_interval(correct.sum(), n)
        return {"metric": "acc", "value": float(correct.mean()), "ci_low": lo, "ci_high": hi, "n_items": n}
    rng = np.random.default_rng(seed)
    boots = [spearmanr(pred[i], truth[i]).statistic for i in rng.integers(0, n, size=(n_boot, n))]
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return {"metric": "spearman", "value": float(spearmanr(pred, truth).statistic), "ci_low": float(lo),
            "ci_high": float(hi), "n_items": n}


def point_key(encoder: str, spec: Spec, task: str, limit: int | None, seed: int, item_hash: str, runtime: dict) -> str:
    """Key of one (spec, task) encoder point: the schedule, the sample (seed that draws
    it, limit, hash of its items) and the head protocol."""
    return results.point_key(encoder, TECHNIQUE, spec.as_dict() | {"limit": limit, "sample_seed": seed,
                             "items": item_hash, "head": "fixed-on-base"}, task, "test", runtime)


def evaluate(model: nn.Module, tokenizer, encoder: str, store: results.ResultStore, specs_: list[Spec],
             limit: int | None, seed: int = 0, data_dir=None, tasks=TASKS) -> pd.DataFrame:
    """Every (spec, task) point, computed if not stored: one row each (dataset, metric,
    value, ci_low, ci_high, n_items, variant, affected, ...); per-item predictions under ``ITEMS``."""
    n_layers = arch.n_layers(model)
    base = Spec("base")
    # post-norm encoders have no residual sublayers of the decoder's form: sublayer variants are decoder-only
    specs_ = [base] + [s for s in specs_ if s != base and s.variant not in schedule.SUBLAYER_VARIANTS]
    frames = []
    for task in tasks:
        items, train = sample(task, limit, seed, data_dir)
        kind = kind_of(task)
        target = np.array([r["score"] if kind == "regression" else r["label"] for r in items])
        h = items_hash(items, train, task, data_dir)
        keys = {s: point_key(encoder, s, task, limit, seed, h, models.runtime(model)) for s in specs_}
        todo = [s for s in specs_ if not store.has(TECHNIQUE, keys[s])]
        if todo:
            feats = _features(model, tokenizer, items, sorted(set(todo) | {base}, key=specs_.index), base, train)
            preds = fixed_head_predictions(feats, base, target, kind, train, seed=seed)
            for s in todo:
                idx, pred = preds[s]
                extra = dict(model=encoder, dataset=task, split="test", sample_seed=seed, n_layers=n_layers,
                             affected=0 if s.variant == "base" else n_layers - 2 * s.n_outer, **s.as_dict())
                row = score(pred, target[idx], kind, seed) | extra | {"technique": TECHNIQUE}
                store.put(ITEMS, keys[s], pd.DataFrame({"item": idx, "pred": pred.astype(float),
                          "target": target[idx].astype(float)}).assign(metric=row["metric"], value=pred.astype(float),
                          n_items=len(idx), **(extra | {"technique": ITEMS})))
                store.put(TECHNIQUE, keys[s], [row])
        frames += [store.get(TECHNIQUE, keys[s]) for s in specs_]
    return pd.concat(frames, ignore_index=True)


def glue_average(table: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, affected, loops): each task's score (random-order seeds averaged),
    the unnormalised GLUE average (mean across tasks, in %, as the paper reports) and the
    normalised one (mean of (score - chance) / (unmodified - chance))."""
    t = table.groupby(["variant", "affected", "loops", "dataset"], as_index=False)["value"].mean()
    base = t[t.variant == "base"].set_index("dataset")["value"]
    chance = t["dataset"].map(CHANCE)
    t["normalised"] = (t["value"] - chance) / (t["dataset"].map(base) - chance)
    wide = t.pivot_table(index=["variant", "affected", "loops"], columns="dataset", values="value")
    wide["glue_average"] = 100 * wide[[c for c in TASKS if c in wide]].mean(axis=1)
    wide["glue_normalised"] = t.groupby(["variant", "affected", "loops"])["normalised"].mean()
    return wide.reset_index()
