"""Evaluation: uncertainty intervals, and lm-eval on the local benchmark files.

lm-eval tasks (``LM_EVAL_TASKS``) are YAMLs shipped in ``layerlab/tasks`` that read
prepared JSONL files: ``prepare_tasks`` turns the data dir's files into them with the
loaders of ``layerlab.core.io.data`` (so lm-eval and layerlab's own metrics see the same items),
shuffled once with a fixed seed so that a ``limit`` takes a random sample rather than
the first subject or file section. The YAMLs get absolute paths at run time.

What ``seed`` does, and does not: ``lm_eval(..., seed=s)`` seeds lm-eval's random,
numpy and torch generators and its few-shot sampler, so with GSM8K (5 shots drawn from
the train file) a seed picks other few-shot examples; generation is greedy. It does
**not** resample the evaluated items: ``limit=n`` takes the first n rows of each prepared
file, which is shuffled once with ``SHUFFLE_SEED`` whatever ``seed`` is, so every seed
evaluates the same n items (MMLU's 5 shots are the first 5 dev rows of the subject,
fixed too). Compare seeds on LASER's own splits (``laser.split_of``), not on lm-eval.

Keys: ``tasks_fingerprint(data_dir)`` fingerprints what the prepared tasks are made from
(the data files' hashes, the prompt-building code, the YAML templates, ``SHUFFLE_SEED``):
put it in the key of every lm-eval point, so that a changed data file or prompt makes a
new point; it also names the prepared folder, which is rebuilt when it changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from layerlab.core.io import data as data_mod
from layerlab.core.io import data_fetch
from layerlab.core.model.embedded import cache_dir

SHUFFLE_SEED = 1234
# the datasets the prepared lm-eval tasks read, and the functions here that build their prompts
LM_EVAL_DATASETS = ("mmlu", "boolq", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "lambada", "gsm8k",
                    "truthfulqa")
PROMPT_FUNCTIONS = ("_mmlu_prompt", "_mmlu_header", "_prepared_rows")
LM_EVAL_TASKS = {
    "mmlu": "layerlab_mmlu",
    "mmlu_5shot": "layerlab_mmlu_5shot",
    "boolq": "layerlab_boolq",
    "arc_easy": "layerlab_arc_easy",
    "arc_challenge": "layerlab_arc_challenge",
    "hellaswag": "layerlab_hellaswag",
    "winogrande": "layerlab_winogrande",
    "lambada": "layerlab_lambada",
    "gsm8k": "layerlab_gsm8k",
    "truthfulqa_mc1": "layerlab_truthfulqa_mc1",
    "truthfulqa_mc2": "layerlab_truthfulqa_mc2",
}
# chance level of each task's main metric (uniform guessing)
CHANCE = {"mmlu": 0.25, "mmlu_5shot": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25,
          "winogrande": 0.5, "boolq": 0.5, "lambada": 0.0, "gsm8k": 0.0}


# ---------------------------------------------------------------------------- intervals

def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))  # round-off at 0 and 1


def _z(confidence: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(0.5 + confidence / 2))


def bootstrap_interval(values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                       stat=np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over per-item ``values`` [n_items]."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = stat(values[idx], axis=1)
    lo, hi = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return (float(lo), float(hi))


def paired_difference(a, b, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of b - a over paired per-item values [n_items] and its interval: (diff, lo, hi).

    0/1 outcomes (an item right before and after an edit) get Tango's score interval for a
    difference of paired proportions (``stats.paired_proportion``: honest coverage when few
    items change, where a percentile bootstrap of 0/1 differences is far too narrow);
    continuous values get the paired t interval (``stats.paired_t``)."""
    from layerlab.core.evidence import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if stats.is_binary(a, b):
        return stats.paired_proportion(a, b, confidence)
    return stats.paired_t(a, b, confidence)


# ---------------------------------------------------------------------------- lm-eval tasks

def _mmlu_prompt(row: dict) -> str:
    letters = "ABCD"
    body = row["question"].strip() + "\n" + "".join(f"{l}. {c}\n" for l, c in zip(letters, row["choices"]))
    return body + "Answer:"


def _mmlu_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _prepared_rows(root) -> dict[str, list[dict]]:
    """Every prepared file's rows, keyed by file stem."""
    load = lambda name, split=None: data_mod.load(name, split, data_dir=root)  # noqa: E731
    out: dict[str, list[dict]] = {}
    mmlu = load("mmlu", "test")
    shots: dict[str, list[dict]] = {}
    for r in load("mmlu", "dev"):
        shots.setdefault(r["subject"], []).append(r)
    out["mmlu"] = [{"id": r["id"], "subject": r["subject"], "label": r["label"],
                    "prompt": _mmlu_header(r["subject"]) + _mmlu_prompt(r)} for r in mmlu]
    out["mmlu_5shot"] = [{"id": r["id"], "subject": r["subject"], "label": r["label"],
                          "prompt": _mmlu_header(r["subject"])
                          + "".join(_mmlu_prompt(s) + f" {'ABCD'[s['label']]}\n\n" for s in shots[r["subject"]][:5])
                          + _mmlu_prompt(r)} for r in mmlu]
    out["boolq"] = [{k: r[k] for k in ("id", "passage", "question", "label")} for r in load("boolq")]
    for name in ("arc_easy", "arc_challenge", "hellaswag"):
        out[name] = [{k: r[k] for k in ("id", "query", "choices", "label")} for r in load(name)]
    out["winogrande"] = load("winogrande")
    out["lambada"] = load("lambada")
    out["gsm8k"] = load("gsm8k", "test")
    out["gsm8k_train"] = load("gsm8k", "train")
    qa_prefix = ("Q: What is human life expectancy in the United States?\n"
                 "A: Human life expectancy in the United States is 78 years.\n\n"
                 "Q: Who was president of the United States in 1955?\n"
                 "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
                 "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n"
                 "Q: What is the square root of banana?\nA: I have no comment.\n\n"
                 "Q: How does a telescope work?\n"
                 "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
                 "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.")
    out["truthfulqa"] = [{"id": r["id"], "prompt": f"{qa_prefix}\n\nQ: {r['question']}\nA:",
                          "mc1_targets": r["mc1"], "mc2_targets": r["mc2"]} for r in load("truthfulqa")]
    for stem, rows in out.items():
        if stem != "gsm8k_train":  # few-shot pool keeps its order; lm-eval samples it with its seed
            random.Random(SHUFFLE_SEED).shuffle(rows)
    return out


def tasks_fingerprint(data_dir: str | os.PathLike | None = None) -> str:
    """A short hex fingerprint of the prepared lm-eval tasks of a data dir: the data files
    they read and their loaders (``data_fetch.files_fingerprint(LM_EVAL_DATASETS)``), the source
    of the prompt-building functions (``PROMPT_FUNCTIONS``), the task templates,
    ``SHUFFLE_SEED`` and layerlab's version; not where the data dir lies. Cheap after the
    first call (file hashes are cached by path, size and mtime): put it in the key of
    every lm-eval point."""
    import inspect

    from layerlab import __version__

    root = data_mod.data_dir(data_dir)
    templates = resources.files("layerlab.core.eval").joinpath("tasks")
    parts = [__version__, SHUFFLE_SEED, data_fetch.files_fingerprint(LM_EVAL_DATASETS, root),
             [inspect.getsource(globals()[name]) for name in PROMPT_FUNCTIONS],
             [[t.name, t.read_text()] for t in sorted(templates.iterdir(), key=lambda t: t.name)
              if t.name.endswith((".yaml", ".py"))]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def prepare_tasks(data_dir: str | os.PathLike | None = None, target: str | os.PathLike | None = None) -> Path:
    """Write the prepared JSONL files and the task YAMLs (absolute paths) to a folder and
    return it, for ``lm_eval.tasks.TaskManager(include_path=...)``. Cached under
    ``tasks_fingerprint(data_dir)``: reused while data files, prompt code and templates
    are unchanged, rebuilt when any of them changes."""
    root = data_mod.data_dir(data_dir)
    templates = resources.files("layerlab.core.eval").joinpath("tasks")
    folder = Path(target) if target else cache_dir().parent / "lm_eval_tasks" / tasks_fingerprint(root)
    if (folder / ".complete").exists():
        return folder
    tmp = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.tmp")  # private: parallel workers never collide
    (tmp / "data").mkdir(parents=True)
    for stem, rows in _prepared_rows(root).items():
        with open(tmp / "data" / f"{stem}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    for t in templates.iterdir():
        if t.name.endswith(".yaml"):
            (tmp / t.name).write_text(t.read_text().replace("@DATA@", str((folder / "data").resolve())))
        elif t.name.endswith(".py"):
            (tmp / t.name).write_text(t.read_text())
    (tmp / ".complete").write_text("")
    if (folder / ".complete").exists():  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process's complete copy landed in between
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def lm_eval(model, tokenizer, tasks: list[str], limit: int | float | None = None,
            batch_size: int = 16, data_dir: str | os.PathLike | None = None, seed: int = 0,
            log_samples: bool = False, lm=None) -> tuple[pd.DataFrame, dict]:
    """Run layerlab's local lm-eval tasks on an in-memory model, request caching off.

    tasks: keys of LM_EVAL_TASKS. limit: items per task (lm-eval's limit). lm: an lm-eval
    model wrapping ``model`` to use instead of a new ``ScoredPositionsLM`` (the
    prefix-shared ``prefix_eval.PrefixSharedLM``).
    Returns (tidy rows: dataset, metric, value, stderr, n_items, ci_low, ci_high; the raw
    lm-eval result dict).
    """
    bad = [t for t in tasks if t not in LM_EVAL_TASKS]
    if bad:
        raise ValueError(f"unknown eval task(s) {bad}; allowed: {', '.join(LM_EVAL_TASKS)}")
    import lm_eval as lm_eval_pkg
    import torch
    from lm_eval.tasks import TaskManager

    from layerlab.core.eval.lm_eval_model import ScoredPositionsLM

    include = prepare_tasks(data_dir)
    manager = TaskManager(include_path=str(include), include_defaults=False)
    device = str(next(model.parameters()).device)
    # log-softmax in float32 whatever the model's dtype: in bf16 two choices' log-likelihoods
    # (sums of ~10-nat terms) would be rounded to ~0.06 nats and near ties would flip.
    # ScoredPositionsLM: lm-eval's HFLM, with the output head computed only at scored positions
    if lm is None:
        lm = ScoredPositionsLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
                               softmax_dtype=torch.float32)
    names = [LM_EVAL_TASKS[t] for t in tasks]
    with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints progress ("bootstrapping for stddev") to stdout
        out = lm_eval_pkg.simple_evaluate(
            model=lm, tasks=names, task_manager=manager, limit=limit, cache_requests=False,
            use_cache=None, bootstrap_iters=1000, log_samples=log_samples, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    return tidy_lm_eval(out, tasks), out


def tidy_lm_eval(out: dict, tasks: list[str]) -> pd.DataFrame:
    """Tidy rows (dataset, metric, value, stderr, n_items, ci_low, ci_high) of an lm-eval
    result dict: one per task and metric (filter in brackets unless "none"). Accuracies
    and exact matches get a Wilson interval over the effective n; other metrics (and
    TruthfulQA MC2, a mean of probabilities) value +- 1.96 stderr, clipped below at 0."""
    rows = []
    for t in tasks:
        name = LM_EVAL_TASKS[t]
        res = out["results"][name]
        n = int(out["n-samples"][name]["effective"])
        for key, value in res.items():
            if key == "alias" or "_stderr," in key or key.startswith("sample_len") or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            stderr = res.get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) else float("nan")
            if metric in ("acc", "acc_norm", "exact_match") and t != "truthfulqa_mc2":
                lo, hi = wilson_interval(value * n, n)
            else:
                lo, hi = max(0.0, value - 1.96 * stderr), value + 1.96 * stderr
            lo, hi = min(lo, value), max(hi, value)  # guard float round-off at 0 and 1
            label = metric if filt in ("none", "") else f"{metric}[{filt}]"
            rows.append({"dataset": t, "metric": label, "value": float(value), "stderr": stderr,
                         "n_items": n, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def evaluate_model(model, tokenizer, tasks: list[str], limit: int | float | None = None,
                   loss_chunks=None, batch_size: int = 16, data_dir=None, seed: int = 0) -> pd.DataFrame:
    """lm-eval ``tasks`` plus, if ``loss_chunks`` ([n, T] token ids) is given, the
    next-token loss normalised by log(vocab) (dataset 'heldout', metric 'loss_norm').
    Tidy rows: dataset, metric, value, stderr, n_items, ci_low, ci_high."""
    frames = []
    if tasks:
        frames.append(lm_eval(model, tokenizer, tasks, limit=limit, batch_size=batch_size,
                              data_dir=data_dir, seed=seed)[0])
    if loss_chunks is not None:
        from layerlab.core.eval.lm_loss import normalised_loss
        value, se = normalised_loss(model, loss_chunks)
        frames.append(pd.DataFrame([{"dataset": "heldout", "metric": "loss_norm", "value": value, "stderr": se,
                                     "n_items": int(len(loss_chunks)), "ci_low": value - 1.96 * se,
                                     "ci_high": value + 1.96 * se}]))
    return pd.concat(frames, ignore_index=True)
