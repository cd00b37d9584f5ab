"""Benchmark data: one data-dir setting, loaders that turn each file into uniform records,
and ``make data`` (fetch every file from its public source and verify its checksum).

The data dir is ``$LAYERLAB_DATA`` if set, else ``../shared/data`` beside the repository.
Nothing here copies data into the repository.

Record shapes (every record also has a string ``id``):
    fact QA       counterfact, hotpotqa, a user JSONL:  prompt, answer
    multiple choice  mmlu, arc_easy, arc_challenge, hellaswag, boolq, fever,
                  epistemic_reasoning:  query, choices (list[str]), label (int index)
    winogrande    sentence, option1, option2, label (0 or 1)
    truthfulqa    question, mc1 / mc2 (dict: choices list[str], labels list[int])
    gsm8k         question, answer (worked solution), target (the final number, str)
    text          lambada, wikitext2, c4:  text
    glue          sst2, rte, qnli, mrpc:  text_a, text_b (None for sst2), label (int);
                  stsb: text_a, text_b, score (float, 0..5)
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
MIRROR_ENV = "LAYERLAB_DATA_MIRROR"
DEFAULT_MIRROR = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


class DataFileMissing(FileNotFoundError):
    pass


class ChecksumMismatch(RuntimeError):
    pass


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data dir: ``override`` if given, else ``$LAYERLAB_DATA``, else ../shared/data."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("LAYERLAB_DATA")
    return Path(env).expanduser().resolve() if env else DEFAULT_DATA_DIR.resolve()


def path(relative: str, root: str | os.PathLike | None = None) -> Path:
    """Absolute path of a data file, or a clear error if it is missing."""
    full = data_dir(root) / relative
    if not full.exists():
        raise DataFileMissing(
            f"data file {relative!r} not found in the data dir {data_dir(root)} "
            "(set by LAYERLAB_DATA or the data_dir parameter; default ../shared/data). "
            "Run `make data` to fetch and verify it."
        )
    return full


def _jsonl(p: Path) -> list[dict]:
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _json(p: Path):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------- loaders

def _counterfact(split: str, root) -> list[dict]:
    files = {"all": ("edit", "train", "val"), "edit": ("edit",), "train": ("train",), "val": ("val",)}[split]
    rows = [r for part in files for r in _json(path(f"counterfact/counterfact-{part}.json", root))]
    rows.sort(key=lambda r: r["case_id"])
    return [{"id": str(r["case_id"]), "prompt": r["prompt"], "answer": r["ground_truth"],
             "subject": r["subject"], "target_new": r["target_new"]} for r in rows]


def _hotpotqa(split: str, root) -> list[dict]:
    rows = _json(path("hotpotqa/hotpot_dev_v1_simplified.json", root))
    return [{"id": str(i), "prompt": f"{r['question']} Answer:", "question": r["question"],
             "answer": r["answer"], "type": r["type"]} for i, r in enumerate(rows)]


def _fever(split: str, root) -> list[dict]:
    name = {"dev": "fever/paper_dev.jsonl", "test": "fever/paper_test_derived.jsonl"}[split]
    out = []
    for r in _jsonl(path(name, root)):
        if r["label"] not in ("SUPPORTS", "REFUTES"):
            continue  # LASER keeps the claims that are true or false
        out.append({"id": str(r["id"]), "claim": r["claim"],
                    "query": f"Consider the following claim: {r['claim']} Is this claim true or false? The claim is",
                    "choices": [" false", " true"], "label": int(r["label"] == "SUPPORTS")})
    return out


def _truthfulqa(split: str, root) -> list[dict]:
    rows = _json(path("truthfulqa/mc_task_v0.json", root))
    def targets(d):
        return {"choices": list(d), "labels": [int(v) for v in d.values()]}
    return [{"id": str(i), "question": r["question"], "mc1": targets(r["mc1_targets"]),
             "mc2": targets(r["mc2_targets"])} for i, r in enumerate(rows)]


def _epistemic(split: str, root) -> list[dict]:
    task = _json(path("bigbench/epistemic_reasoning/task.json", root))
    prefix = task.get("task_prefix", "")
    choices = ["entailment", "non-entailment"]
    out = []
    for i, ex in enumerate(task["examples"]):
        label = max(ex["target_scores"], key=ex["target_scores"].get)
        out.append({"id": str(i), "query": f"{prefix}{ex['input']}\nRelation:",
                    "choices": [" " + c for c in choices], "label": choices.index(label)})
    return out


def _mmlu(split: str, root) -> list[dict]:
    folder = data_dir(root) / "mmlu" / split
    if not folder.is_dir():
        path(f"mmlu/{split}", root)
    out = []
    for f in sorted(folder.glob(f"*_{split}.csv")):
        subject = f.name[: -len(f"_{split}.csv")]
        with open(f, encoding="utf-8", newline="") as fh:
            for i, r in enumerate(csv.DictReader(fh)):
                out.append({"id": f"{subject}/{i}", "subject": subject, "question": r["question"],
                            "choices": [r[f"choice{k}"] for k in range(4)], "label": int(r["answer"]),
                            "query": r["question"]})
    return out


def _arc(level: str) -> Callable:
    def load_arc(split: str, root) -> list[dict]:
        out = []
        for r in _jsonl(path(f"arc/ARC-{level}-{split.capitalize()}.jsonl", root)):
            labels = [c["label"] for c in r["question"]["choices"]]
            out.append({"id": r["id"], "query": r["question"]["stem"],
                        "choices": [c["text"] for c in r["question"]["choices"]],
                        "label": labels.index(r["answerKey"])})
        return out
    return load_arc


def _hellaswag(split: str, root) -> list[dict]:
    with bz2.open(path("hellaswag/hellaswag_val_full.txt.bz2", root), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    lines = lines[: len(lines) - len(lines) % 6]
    return [{"id": str(i // 6), "query": lines[i], "label": int(lines[i + 1]), "choices": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]


def _boolq(split: str, root) -> list[dict]:
    return [{"id": str(r["idx"]), "passage": r["passage"], "question": r["question"],
             "query": f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", "choices": [" no", " yes"],
             "label": int(str(r["label"]).lower() == "true")} for r in _jsonl(path("boolq/val.jsonl", root))]


def _winogrande(split: str, root) -> list[dict]:
    return [{"id": str(i), "sentence": r["sentence"], "option1": r["option1"], "option2": r["option2"],
             "label": int(r["answer"]) - 1} for i, r in enumerate(_jsonl(path("winogrande/dev.jsonl", root)))]


def _gsm8k(split: str, root) -> list[dict]:
    return [{"id": str(i), "question": r["question"], "answer": r["answer"],
             "target": r["answer"].split("####")[-1].strip().replace(",", "")}
            for i, r in enumerate(_jsonl(path(f"gsm8k/{split}.jsonl", root)))]


def _lambada(split: str, root) -> list[dict]:
    return [{"id": str(i), "text": r["text"]} for i, r in enumerate(_jsonl(path("lambada/lambada_test.jsonl", root)))]


def _wikitext2(split: str, root) -> list[dict]:
    """Articles (split at top-level ' = Title = ' headings), whitespace kept as in the file."""
    text = path(f"wikitext2/{split}.txt", root).read_text(encoding="utf-8")
    parts = re.split(r"\n(?= = [^=].* = \n)", text)
    return [{"id": str(i), "text": p.strip("\n")} for i, p in enumerate(parts) if p.strip()]


def _c4(split: str, root) -> list[dict]:
    rows = _jsonl(path("c4/c4_realnewslike_validation_first200_truncated.jsonl", root))
    return [{"id": str(i), "text": r["prompt"] + r["response"]} for i, r in enumerate(rows)]


def _tsv(p: Path) -> list[dict]:
    with open(p, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _sst2(split: str, root) -> list[dict]:
    return [{"id": str(i), "text_a": r["sentence"], "text_b": None, "label": int(r["label"])}
            for i, r in enumerate(_tsv(path("glue/sst2/dev.tsv", root)))]


def _qnli(split: str, root) -> list[dict]:
    return [{"id": r["index"], "text_a": r["question"], "text_b": r["sentence"],
             "label": int(r["label"] == "entailment")} for r in _tsv(path("glue/qnli/dev.tsv", root))]


def _rte(split: str, root) -> list[dict]:
    return [{"id": str(r["idx"]), "text_a": r["premise"], "text_b": r["hypothesis"],
             "label": int(r["label"] == "entailment")} for r in _jsonl(path("glue/rte/superglue_rte_val.jsonl", root))]


def _mrpc(split: str, root) -> list[dict]:
    rows = _tsv(path(f"glue/mrpc/msr_paraphrase_{split}.txt", root))
    return [{"id": f"{r['#1 ID']}-{r['#2 ID']}", "text_a": r["#1 String"], "text_b": r["#2 String"],
             "label": int(r["Quality"])} for r in rows]


def _stsb(split: str, root) -> list[dict]:
    out = []
    with open(path(f"glue/stsb/sts-{split}.csv", root), encoding="utf-8") as f:
        for i, line in enumerate(f):
            fields = line.rstrip("\n").split("\t")[:7]
            out.append({"id": str(i), "text_a": fields[5], "text_b": fields[6], "score": float(fields[4])})
    return out


# name -> (loader, splits; the first split is the default)
DATASETS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "counterfact": (_counterfact, ("all", "edit", "train", "val")),
    "hotpotqa": (_hotpotqa, ("dev",)),
    "fever": (_fever, ("test", "dev")),
    "truthfulqa": (_truthfulqa, ("validation",)),
    "epistemic_reasoning": (_epistemic, ("all",)),
    "mmlu": (_mmlu, ("test", "dev")),
    "arc_easy": (_arc("Easy"), ("test", "dev")),
    "arc_challenge": (_arc("Challenge"), ("test", "dev")),
    "hellaswag": (_hellaswag, ("validation",)),
    "boolq": (_boolq, ("validation",)),
    "winogrande": (_winogrande, ("dev",)),
    "gsm8k": (_gsm8k, ("test", "train")),
    "lambada": (_lambada, ("test",)),
    "wikitext2": (_wikitext2, ("test", "valid")),
    "c4": (_c4, ("validation",)),
    "sst2": (_sst2, ("dev",)),
    "qnli": (_qnli, ("dev",)),
    "rte": (_rte, ("dev",)),
    "mrpc": (_mrpc, ("test", "train")),
    "stsb": (_stsb, ("dev", "train")),
}
NOT_AVAILABLE = {
    "bias_in_bios": "Bias in Bios (LabHC/bias_in_bios) was not found in any fetchable public snapshot",
    "qa_wikidata": "BIG-bench qa_wikidata was not found in any fetchable public snapshot",
    "cola": "GLUE CoLA was not found", "mnli": "GLUE MNLI was not found (over the snapshot size cap)",
    "qqp": "GLUE QQP was not found", "wnli": "GLUE WNLI was not found",
}


def load_user_facts(file: str | os.PathLike) -> list[dict]:
    """A user's facts: JSONL of {"prompt": ..., "answer": ...}; other fields are kept.

    Rows with a missing or empty prompt/answer, and blank lines, are refused with the line number.
    """
    out = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                raise ValueError(f"{file}: line {n} is empty; every line must be a JSON object with 'prompt' and 'answer'")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: line {n} is not valid JSON ({err.msg})") from None
            for field in ("prompt", "answer"):
                if not isinstance(row, dict) or not isinstance(row.get(field), str) or not row[field].strip():
                    raise ValueError(f"{file}: line {n} has no non-empty string field {field!r}")
            out.append({"id": str(row.get("id", n)), **row})
    if not out:
        raise ValueError(f"{file}: no rows")
    return out


def load(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Records of benchmark ``name`` (see DATASETS) and ``split`` (default: its first split).

    A path to a ``.jsonl`` file loads a user's facts (``load_user_facts``).
    """
    if name not in DATASETS:
        if name.endswith(".jsonl") or Path(name).is_file():
            return load_user_facts(name)
        if name in NOT_AVAILABLE:
            raise ValueError(f"dataset {name!r} is not available here: {NOT_AVAILABLE[name]}")
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, or a path to a .jsonl file")
    loader, splits = DATASETS[name]
    split = split or splits[0]
    if split not in splits:
        raise ValueError(f"split {split!r} of {name} does not exist; allowed: {', '.join(splits)}")
    return loader(split, data_dir)
