"""The full profile's dry run (``layerlab.book.dry_run``): the plan it runs changes only sizes,
its tiny models keep their family and tokenizer, and (smoke) every chapter of the full plan
runs on them through papermill, every claim of the comparison page is computed from what
they stored, and the two pages that read the results execute on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from layerlab.book import build, dry_run

ROOT = Path(__file__).resolve().parent.parent


def _notebook_parameters(technique: str) -> set[str]:
    nb = json.loads((ROOT / "notebooks" / f"{technique}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    return {line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines()
            if "=" in line and not line.startswith((" ", "#"))}


def test_a_dry_run_changes_only_sizes_and_its_switches_each_a_notebook_parameter(tmp_path, monkeypatch):
    monkeypatch.setattr(dry_run, "tiny_copy", lambda name, folder: Path(folder) / name)
    full = build.chapter_plan("full")
    dry = dry_run.plan(full, tmp_path)
    assert len(dry) == len(full) and {t for t, _, _ in full} <= set(dry_run.SIZES) | {"laser_sokoban"}
    for (technique, model, extra), (t2, m2, e2) in zip(full, dry):
        switches = dry_run.SWITCHES.get(technique, {})
        assert t2 == technique and set(dry_run.SIZES[technique]) | set(switches) <= _notebook_parameters(technique)
        assert m2 == (str(tmp_path / model) if model != "sokoban-dt" else model)
        changed = {k for k in set(extra) | set(e2) if extra.get(k) != e2.get(k)}
        assert changed <= set(dry_run.SIZES[technique]) | set(switches) | {"encoder"}, (technique, changed)


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


@pytest.fixture(scope="module")
def dry_store(tmp_path_factory):
    """A cold dry run of the whole full plan (``make book PROFILE=full DRY_RUN=1``), in a
    fresh folder: its results store and the executed notebooks."""
    folder = tmp_path_factory.mktemp("full-dry-run")
    assert build.main(["--profile", "full", "--dry-run", "--results-dir", str(folder)]) == 0
    return folder


@pytest.mark.smoke
def test_every_chapter_of_the_full_plan_runs_on_the_tiny_models(dry_store):
    for technique, model, _ in build.chapter_plan("full"):  # each notebook ran to its last cell
        nb = json.loads((dry_store / "executed" / f"{build.executed_name(technique, model)}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"], (technique, model)
        assert all(c.get("execution_count") for c in code), (technique, model)


@pytest.mark.smoke
def test_every_claim_is_computed_from_the_dry_runs_results(dry_store):
    from layerlab.book import compare
    from layerlab.core.evidence import verdicts
    from layerlab.core.io.results import ResultStore

    table = compare.claims(ResultStore(dry_store / "results"))
    # each paper's claim functions ran on the full plan's output and returned rows, every one
    # with a verdict word (word() raises on anything else)
    for paper in ("LASER", "Gromov", "Painters", "Hinostroza", "Lu et al."):
        assert table["paper"].str.startswith(paper).any(), (paper, sorted(set(table["paper"])))
    assert set(table["verdict"].map(verdicts.word)) <= {*verdicts.VERDICTS, verdicts.NOT_RUN}
    assert not (table["verdict"].map(verdicts.word) == verdicts.NOT_RUN).any()  # full runs every claim


@pytest.mark.smoke
@pytest.mark.parametrize("page", build.RESULT_PAGES)
def test_the_pages_that_read_the_results_execute_on_the_dry_run(dry_store, page, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LAYERLAB_RESULTS", str(dry_store / "results"))
    monkeypatch.setenv("LAYERLAB_PROFILE", "full")
    nb = nbformat.read(build.BOOK / page, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(build.ROOT)}}).execute()
