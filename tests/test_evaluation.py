import numpy as np
import pytest
from scipy.stats import binomtest

from layerlab import evaluation as ev


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
def test_every_lm_eval_task_runs_on_smollm2():
    import layerlab
    model, tok = layerlab.load("smollm2-135m")
    tasks = list(ev.LM_EVAL_TASKS)
    table, raw = ev.lm_eval(model, tok, tasks, limit=3, batch_size=8)
    assert set(table["dataset"]) == set(tasks)
    for _, row in table.iterrows():
        assert row["n_items"] == 3
        assert np.isfinite(row["value"])
        if row["metric"] != "perplexity":
            assert 0.0 <= row["value"] <= 1.0
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
        else:
            assert row["value"] >= 1.0
