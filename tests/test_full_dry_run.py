"""The full profile's dry run (``layerlab.book.dry_run``): the plan it runs changes only sizes,
and its tiny models keep their family and tokenizer. The run itself (``make book PROFILE=full
DRY_RUN=1``) is not in ``make test`` yet: deeper layers on Gemma 3 alone took 29 min on 2 cores
once its 28 GB allocation was fixed (``prefix_eval.LOGIT_BUDGET``, issue #28)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerlab.book import build, dry_run

ROOT = Path(__file__).resolve().parent.parent


def _notebook_parameters(technique: str) -> set[str]:
    nb = json.loads((ROOT / "notebooks" / f"{technique}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines()
            if "=" in line and not line.startswith((" ", "#"))}


def test_a_dry_run_changes_only_sizes_and_each_size_is_a_notebook_parameter(tmp_path, monkeypatch):
    monkeypatch.setattr(dry_run, "tiny_copy", lambda name, folder: Path(folder) / name)
    full = build.chapter_plan("full")
    dry = dry_run.plan(full, tmp_path)
    assert len(dry) == len(full) and {t for t, _, _ in full} <= set(dry_run.SIZES) | {"laser_sokoban"}
    for (technique, model, extra), (t2, m2, e2) in zip(full, dry):
        assert t2 == technique and set(dry_run.SIZES[technique]) <= _notebook_parameters(technique)
        assert m2 == (str(tmp_path / model) if model != "sokoban-dt" else model)
        changed = {k for k in set(extra) | set(e2) if extra.get(k) != e2.get(k)}
        assert changed <= set(dry_run.SIZES[technique]) | {"encoder"}, (technique, changed)


@pytest.mark.smoke
def test_a_tiny_copy_has_the_family_and_tokenizer_of_its_model(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from layerlab.core.model import embedded

    path = dry_run.tiny_copy("smollm2-135m", tmp_path)
    real, tiny = (AutoConfig.from_pretrained(p) for p in (embedded.materialise("smollm2-135m"), path))
    assert tiny.model_type == real.model_type and tiny.tie_word_embeddings == real.tie_word_embeddings
    assert tiny.num_hidden_layers == dry_run.DECODER_SHAPE["num_hidden_layers"] < real.num_hidden_layers
    text = "The capital of France is Paris."
    assert AutoTokenizer.from_pretrained(path)(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(embedded.materialise("smollm2-135m"))(text)["input_ids"]
    assert dry_run.tiny_copy("smollm2-135m", tmp_path) == path  # built once
