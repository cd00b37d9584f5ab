import numpy as np
import pytest
from scipy.stats import binomtest

from layerlab.core.eval import evaluation as ev


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (50, 100), (99, 100), (7, 7)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = ev.wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 5000)
    lo_s, hi_s = ev.bootstrap_interval(small)
    lo_l, hi_l = ev.bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    # a normal-theory reference for the large sample
    se = large.std(ddof=1) / np.sqrt(len(large))
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_paired_difference_sees_a_shift():
    a = np.zeros(200)
    b = np.r_[np.ones(30), np.zeros(170)]
    diff, lo, hi = ev.paired_difference(a, b)
    assert diff == pytest.approx(0.15) and 0 < lo < 0.15 < hi


def test_unknown_task_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown eval task.*allowed: mmlu, mmlu_5shot, boolq"):
        ev.lm_eval(None, None, ["mmlu", "piqa"])


def test_prepared_files_are_complete_and_shuffled(tmp_path):
    folder = ev.prepare_tasks(target=tmp_path / "tasks")
    lines = (folder / "data" / "mmlu.jsonl").read_text().splitlines()
    assert len(lines) == 14042
    import json
    first = [json.loads(line)["subject"] for line in lines[:20]]
    assert len(set(first)) > 5  # a limit samples across subjects
    five = json.loads((folder / "data" / "mmlu_5shot.jsonl").read_text().splitlines()[0])
    assert five["prompt"].count("Answer:") == 6
    yaml = (folder / "layerlab_boolq.yaml").read_text()
    assert str((folder / "data").resolve()) in yaml and "@DATA@" not in yaml


@pytest.mark.smoke
def test_every_lm_eval_task_runs_on_smollm2(capsys):
    import layerlab
    model, tok = layerlab.load("smollm2-135m")
    tasks = list(ev.LM_EVAL_TASKS)
    table, raw = ev.lm_eval(model, tok, tasks, limit=3, batch_size=8)
    assert "bootstrapping" not in capsys.readouterr().out  # lm-eval's prints stay off stdout (off the book's pages)
    assert set(table["dataset"]) == set(tasks)
    for _, row in table.iterrows():
        assert row["n_items"] == 3
        assert np.isfinite(row["value"])
        if row["metric"] != "perplexity":
            assert 0.0 <= row["value"] <= 1.0
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
        else:
            assert row["value"] >= 1.0


def _data_copy(tmp_path, real: tuple[str, ...]):
    """A data dir in tmp_path: links to the real one's folders, real copies of ``real``."""
    import shutil
    from layerlab.core.io import data

    src, dest = data.data_dir(), tmp_path / "data"
    dest.mkdir()
    for entry in src.iterdir():
        if entry.name in real:
            shutil.copytree(entry, dest / entry.name)
        else:
            (dest / entry.name).symlink_to(entry)
    return dest


def test_tasks_fingerprint_follows_data_files_and_prompt_code(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERLAB_CACHE", str(tmp_path / "cache"))
    root = _data_copy(tmp_path, ("boolq",))
    base = ev.tasks_fingerprint(root)
    assert base == ev.tasks_fingerprint() == ev.tasks_fingerprint(root)  # content, not location
    f = root / "boolq" / "val.jsonl"
    original = f.read_bytes()
    edited = original.replace(b'"question": "does', b'"question": "Does', 1)
    assert edited != original
    f.write_bytes(edited)
    changed = ev.tasks_fingerprint(root)
    assert changed != base
    f.write_bytes(original)
    assert ev.tasks_fingerprint(root) == base

    def other_prompt(row: dict) -> str:
        return row["question"] + "\nAnswer (A, B, C or D):"

    monkeypatch.setattr(ev, "_mmlu_prompt", other_prompt)
    assert ev.tasks_fingerprint(root) != base
    monkeypatch.undo()
    monkeypatch.setenv("LAYERLAB_CACHE", str(tmp_path / "cache"))
    assert ev.tasks_fingerprint(root) == base
    monkeypatch.setattr(ev, "SHUFFLE_SEED", 99)
    assert ev.tasks_fingerprint(root) != base


def test_tidy_lm_eval_rows_against_a_hand_computation():
    import math

    out = {"results": {
        "layerlab_boolq": {"alias": "boolq", "acc,none": 0.62, "acc_stderr,none": 0.0488},
        "layerlab_gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.03,
                           "exact_match,flexible-extract": 0.0, "exact_match_stderr,flexible-extract": "N/A"},
        "layerlab_truthfulqa_mc2": {"alias": "mc2", "acc,none": 0.45, "acc_stderr,none": 0.02},
        "layerlab_lambada": {"alias": "lambada", "perplexity,none": 30.0, "perplexity_stderr,none": 2.0,
                             "acc,none": 0.3, "acc_stderr,none": 0.046},
    }, "n-samples": {"layerlab_boolq": {"original": 3270, "effective": 100},
                     "layerlab_gsm8k": {"original": 1319, "effective": 50},
                     "layerlab_truthfulqa_mc2": {"original": 817, "effective": 817},
                     "layerlab_lambada": {"original": 5153, "effective": 100}}}
    rows = ev.tidy_lm_eval(out, ["boolq", "gsm8k", "truthfulqa_mc2", "lambada"]).set_index(["dataset", "metric"])

    def wilson(k, n, z=1.959963984540054):  # the closed form, written out independently
        centre = (k + z * z / 2) / (n + z * z)
        half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
        return centre - half, centre + half

    expect = {("boolq", "acc"): (0.62, 100, 0.0488, wilson(62, 100)),
              ("gsm8k", "exact_match[strict-match]"): (0.1, 50, 0.03, wilson(5, 50)),
              ("gsm8k", "exact_match[flexible-extract]"): (0.0, 50, float("nan"), (0.0, wilson(0, 50)[1])),
              ("truthfulqa_mc2", "acc"): (0.45, 817, 0.02, (0.45 - 1.96 * 0.02, 0.45 + 1.96 * 0.02)),
              ("lambada", "perplexity"): (30.0, 100, 2.0, (30.0 - 3.92, 30.0 + 3.92)),
              ("lambada", "acc"): (0.3, 100, 0.046, wilson(30, 100))}
    assert set(rows.index) == set(expect)  # alias and stderr entries are not rows
    for key, (value, n, se, (lo, hi)) in expect.items():
        r = rows.loc[key]
        assert r["value"] == value and r["n_items"] == n
        assert (math.isnan(se) and math.isnan(r["stderr"])) or r["stderr"] == se
        assert r["ci_low"] == pytest.approx(lo, abs=1e-9) and r["ci_high"] == pytest.approx(hi, abs=1e-9)
