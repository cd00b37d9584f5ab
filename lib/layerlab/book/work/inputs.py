"""What the counts read besides the model: the ``Context`` (memory budgets, dtype, data,
tokenizer, the points seen so far), a plan entry's parameters for a chapter (``only``), and
tokens per item measured from the library's data loaders: LASER's rows, the lm-eval requests
and their model inputs, padded text batches and the encoder's text pairs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .counts import Rows, fixed_rows
from .shapes import local_folder

SAMPLE = 64  # items per dataset whose tokens are measured
LASER_MAX_LENGTH = 512  # scoring.encode's max_length
ENCODER_MAX_LENGTH = 128  # painters.encoder.encoder_features


@dataclass
class Context:
    """What the counts depend on besides the plan: whose memory budgets apply
    (``device_type`` "cuda" or "cpu": the prefix cache's state budget and the SVD cache's),
    the model dtype's bytes, the data dir, the sample size and how tokens are counted
    ("tokenizer", falling back to characters / 4, or "chars"). ``seen``: keys of the points
    counted so far in the plan (a later chapter reads them from the store)."""

    device_type: str = "cuda"
    dtype_bytes: int = 2
    data_dir: str | None = None
    sample: int = SAMPLE
    tokens: str = "tokenizer"
    seen: set = field(default_factory=set)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.device_type not in ("cuda", "cpu"):
            raise ValueError(f"device_type: {self.device_type!r} is not one of cuda, cpu")
        if self.tokens not in ("tokenizer", "chars"):
            raise ValueError(f"tokens: {self.tokens!r} is not one of tokenizer, chars")

    def memo(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def tokenizer(self, model: str):
        """The model's tokenizer where it can be read without converting a model (None: count
        characters / 4)."""
        if self.tokens == "chars":
            return None

        def load():
            folder = local_folder(model)
            if folder is None or not any((folder / f).exists() for f in ("tokenizer.json", "vocab.txt")):
                return None
            from layerlab.core.model import models

            return models.load_tokenizer(str(folder))
        return self.memo(("tokenizer", model), load)

    def prepared(self) -> dict[str, list[dict]]:
        """The lm-eval tasks' documents, as ``evaluation.prepare_tasks`` writes them."""
        from layerlab.core.eval import evaluation
        from layerlab.core.io import data

        return self.memo("prepared", lambda: evaluation._prepared_rows(data.data_dir(self.data_dir)))

    def sample_index(self, n: int) -> np.ndarray:
        return np.sort(np.random.default_rng(0).choice(n, size=min(n, self.sample), replace=False))


def _ids(tok, text: str) -> int:
    """Tokens of ``text`` (no special tokens), or characters / 4 without a tokenizer."""
    if tok is None:
        return max(1, math.ceil(len(text) / 4))
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _pair_lengths(tok, pairs: list[tuple[str, str]]) -> list[tuple[int, list[int], int]]:
    """Per pair (context tokens, the model input's ids: context + continuation but its last
    token, continuation tokens), split as lm-eval splits them (``scoring.split_pairs``);
    without a tokenizer characters / 4 and no ids."""
    if tok is None:
        return [(max(1, math.ceil(len(c) / 4)), [], max(1, math.ceil(len(t) / 4))) for c, t in pairs]
    from layerlab.core.eval import scoring

    split = scoring.split_pairs(tok, [c for c, _ in pairs], [t for _, t in pairs])
    return [(len(c), c + t[:-1], len(t)) for c, t in split]


def _source(tok) -> str:
    return "tokenizer" if tok is not None else "chars/4"


def laser_rows(ctx: Context, model: str, dataset: str, limit: int | None, seed: int = 0) -> Rows:
    """The rows a LASER sweep scores for ``dataset`` (``laser.tasks.build_task``): per row
    context + continuation cut to 512 tokens; head positions per row: the longest
    continuation in the sample (a batch computes every row's head at its longest one)."""
    def compute():
        from layerlab.laser import tasks

        task = tasks.build_task(dataset, ctx.data_dir, limit, seed)
        tok = ctx.tokenizer(model)
        idx = ctx.sample_index(len(task.contexts))
        lengths = _pair_lengths(tok, [(task.contexts[i], task.continuations[i]) for i in idx])
        total = np.array([min(c, LASER_MAX_LENGTH - t) + t for c, _, t in lengths], float)
        head = max(t for _, _, t in lengths)
        return Rows(len(task.contexts), total.mean(), (total ** 2).mean(), head, task.n_items, _source(tok))
    return ctx.memo(("laser", model, dataset, limit, seed), compute)


def lm_eval_requests(task: str, doc: dict, shots: Sequence[dict] = ()) -> list[tuple[str, str]]:
    """(context, continuation) pairs lm-eval builds for one document of a layerlab task
    (the YAMLs in ``core/eval/tasks``; target delimiter " "); for GSM8K the one prompt
    (5 shots, "\\n\\n" between) with an empty continuation."""
    if task in ("mmlu", "mmlu_5shot"):
        return [(doc["prompt"], f" {c}") for c in "ABCD"]
    if task == "boolq":
        return [(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", f" {c}") for c in ("no", "yes")]
    if task in ("arc_easy", "arc_challenge"):
        return [(f"Question: {doc['query']}\nAnswer:", f" {c}") for c in doc["choices"]]
    if task == "hellaswag":
        return [(doc["query"], f" {c}") for c in doc["choices"]]
    if task == "winogrande":
        i = doc["sentence"].index("_")
        tail = " " + doc["sentence"][i + 1:].strip()
        return [(doc["sentence"][:i] + opt, tail) for opt in (doc["option1"], doc["option2"])]
    if task == "lambada":
        words = doc["text"].split(" ")
        return [(" ".join(words[:-1]), " " + words[-1])]
    if task == "gsm8k":
        fewshot = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
        return [(fewshot + f"Question: {doc['question']}\nAnswer:", "")]
    raise ValueError(f"task: {task!r} is not one of mmlu, mmlu_5shot, boolq, arc_easy, arc_challenge, "
                     "hellaswag, winogrande, lambada, gsm8k")


def _limited(n: int, limit) -> int:
    """lm-eval's ``limit``: a count, a fraction (< 1) of the documents, or None (all)."""
    if limit is None:
        return n
    return min(n, int(math.ceil(limit * n)) if isinstance(limit, float) and limit < 1 else int(limit))


def lm_eval_rows(ctx: Context, model: str, task: str, limit) -> Rows:
    """The model inputs lm-eval's HFLM runs for ``task`` (its first ``limit`` prepared
    documents). Requests whose context and continuation-but-the-last-token agree share one
    input (one-token continuations of one context: MMLU, BoolQ; ``prefix_eval.chunks``);
    an input is context + continuation minus its last token, its head positions the
    continuation's. GSM8K: the prompt (``tokens``), generation counted separately."""
    def compute():
        docs = ctx.prepared()[task]
        n_docs = _limited(len(docs), limit)
        tok = ctx.tokenizer(model)
        rng = np.random.default_rng(0)
        train = ctx.prepared()["gsm8k_train"]
        lengths, heads, per_doc = [], [], []
        for i in ctx.sample_index(n_docs):
            shots = [train[j] for j in rng.choice(len(train), 5, replace=False)] if task == "gsm8k" else ()
            pairs = lm_eval_requests(task, docs[i], shots)
            if task == "gsm8k":
                lengths.append(_ids(tok, pairs[0][0]) + (1 if tok is not None else 0))
                heads.append(1)
                per_doc.append(1)
                continue
            groups: dict = {}
            for j, (c, key, t) in enumerate(_pair_lengths(tok, pairs)):
                # without ids: one-token continuations of one context still share an input
                key = tuple(key) if tok is not None else (c,) if t == 1 else (j, c)
                length, head = groups.get(key, (0, 0))
                groups[key] = (max(length, c + t - 1), max(head, t))
            lengths += [g[0] for g in groups.values()]
            heads += [g[1] for g in groups.values()]
            per_doc.append(len(groups))
        lengths = np.array(lengths, float)
        return Rows(n_docs * float(np.mean(per_doc)), lengths.mean(), (lengths ** 2).mean(), float(np.mean(heads)),
                    n_docs, _source(tok))
    return ctx.memo(("lm_eval", model, task, limit), compute)


def padded_rows(ctx: Context, model: str, texts: Sequence[str], max_length: int) -> Rows:
    """Texts tokenised together, cut at ``max_length`` and padded to the longest
    (``prune.text_batches``, ``painters.run.similarity``): every row that long."""
    tok = ctx.tokenizer(model)
    # a text's first max_length x 16 characters hold more than max_length tokens
    longest = max(min(max_length, _ids(tok, t[: max_length * 16]) + 1) for t in texts)
    return fixed_rows(len(texts), longest, source=_source(tok))


def encoder_rows(ctx: Context, model: str, items: Sequence[dict]) -> Rows:
    """Text pairs through an encoder's tokenizer (``painters.encoder.encoder_features``:
    length-sorted batches, cut at 128 tokens); [CLS] and [SEP]s counted."""
    tok = ctx.tokenizer(model)
    idx = ctx.sample_index(len(items))
    lengths = np.array([min(ENCODER_MAX_LENGTH, _ids(tok, items[i]["text_a"]) + 2
                            + (_ids(tok, items[i]["text_b"]) + 1 if items[i].get("text_b") else 0))
                        for i in idx], float)
    return Rows(len(items), lengths.mean(), (lengths ** 2).mean(), 0.0, len(items), _source(tok))


def only(extra: dict, names: Iterable[str]) -> dict:
    names = set(names)
    return {k: v for k, v in extra.items() if k in names}
