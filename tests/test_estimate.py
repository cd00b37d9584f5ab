"""The book's plan: dtype per chapter, the estimate before it starts, the recorded costs
it comes from, and the machine each figure was produced on (issue #19)."""

import json

import pytest
import torch

from layerlab.book import build as book, estimate
from layerlab.core.compute import machine
from layerlab.core.io import results


def test_the_quick_plan_forces_no_dtype_and_dtype_overrides_only_language_models():
    assert all("dtype" not in extra for _, _, extra in book.PLANS["quick"])
    forced = book.chapter_plan("quick", "float32")
    assert all(extra.get("dtype") == "float32" for t, _, extra in forced if t in book.LANGUAGE_MODEL_CHAPTERS)
    assert all("dtype" not in extra for t, _, extra in forced if t not in book.LANGUAGE_MODEL_CHAPTERS)
    with pytest.raises(SystemExit, match=r"--dtype: 'bf16' is not one of auto, float32, bfloat16, float16"):
        book.chapter_plan("quick", "bf16")


def test_estimate_is_work_over_the_speed_measured_here():
    calls = []

    def calibrate(model, dtype):
        calls.append((model, dtype))
        return {"a": 100.0, "b": 10.0}[model]

    plan = [("laser", "a", "auto"), ("prune", "a", "auto"), ("laser", "b", "float32"), ("painters", "b", "float32")]
    costs = {"laser/a": {"work": 6000.0}, "prune/a": {"work": 12000.0}, "laser/b": {"work": 600.0}}
    rows = estimate.plan_estimate(plan, "quick", calibrate=calibrate, costs=costs)
    assert [r["estimate_s"] for r in rows] == [60.0, 120.0, 60.0, None]
    assert calls == [("a", "auto"), ("b", "float32")]  # each (model, dtype) calibrated once
    text = estimate.summary(rows)
    assert "total about 4 min (plus the chapters without a recorded cost)" in text and "WARNING" not in text
    slow = estimate.plan_estimate(plan, "quick", calibrate=lambda m, d: 0.5, costs=costs)
    text = estimate.summary(slow)
    assert "WARNING: that is more than 2 hours" in text and "PROFILE=smoke" in text and "GPU" in text
    unknown = estimate.plan_estimate(plan, "quick", calibrate=calibrate, costs={})
    assert "total unknown" in estimate.summary(unknown)


def test_costs_are_written_from_a_cold_runs_timings_and_read_back(tmp_path):
    for seconds in (300.0, 4.0):  # cold, then warm: the cold run is the cost
        results.record_timing(tmp_path, "book:laser", "a", "quick", seconds, speed=50.0, dtype="float32",
                              cpu="Some CPU", native_bf16=False)
    results.record_timing(tmp_path, "laser", "a", "quick", 290.0)  # the notebook's own row: not a book row
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"smoke": {"x/y": {"work": 1.0}}}))
    entry = estimate.write_costs(tmp_path, "quick", path=path)
    assert entry == {"laser/a": {"work": 15000.0, "seconds": 300.0, "speed": 50.0, "dtype": "float32",
                                 "cpu": "Some CPU", "native_bf16": False, "measured": entry["laser/a"]["measured"]}}
    assert estimate.load_costs("smoke", path) == {"x/y": {"work": 1.0}}  # other profiles kept
    rows = estimate.plan_estimate([("laser", "a", "auto")], "quick", calibrate=lambda m, d: 100.0,
                                  costs=estimate.load_costs("quick", path))
    assert rows[0]["estimate_s"] == pytest.approx(150.0)
    assert "recorded in a cold run on Some CPU, float32" in estimate.summary(rows)  # where the costs come from
    assert "not calibrated: lm-eval's set-up" in estimate.summary(rows)


def test_the_committed_quick_costs_cover_the_quick_plan():
    costs = estimate.load_costs("quick")
    missing = [f"{t}/{m}" for t, m, _ in book.PLANS["quick"] if f"{t}/{m}" not in costs]
    assert not missing, f"book/costs.json lacks {missing}: run the cold quick book and --write-costs"


def test_calibration_measures_a_speed():
    assert estimate.matmul_gflops(min_seconds=0.05) > 0
    assert estimate.tokens_per_second("not-a-model") > 0  # not a language model: matmul speed


def test_the_sokoban_chapter_is_calibrated_by_its_own_agents_steps_on_its_thread_count(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    speed = estimate.tokens_per_second("sokoban-dt")
    assert speed > 0 and seen[0] == 1 and torch.get_num_threads() == threads  # one thread, then restored
    assert estimate.agent_windows_per_second(min_seconds=0.2) > 0


def test_progress_bars_follow_the_plan():
    with estimate.Progress([3.0, None, 2.0], tick=0.01) as p:
        for _ in range(3):
            p.start("chapter")
            p.finish()
        assert p.total.n == pytest.approx(5.0) and p.total.total == pytest.approx(5.0)


def test_machine_info_names_the_cpu_and_what_auto_picks():
    info = machine.machine_info()
    assert info["cpu"] and info["cpu_cores"] >= 1
    assert info["native_bf16"] == ("avx512_bf16" in info["cpu_flags"] or "amx_bf16" in info["cpu_flags"])
    assert info["auto_dtype"] == ("bfloat16" if info["native_bf16"] else "float32") or info["gpu"] != "none"
    label = machine.runtime_label(torch.nn.Linear(2, 2))
    assert "`float32` on the CPU" in label and "bfloat16" in label


def test_a_recorded_cold_run_keeps_each_chapter_beside_its_estimate(tmp_path):
    machine = {"dtype": "float32", "cpu": "Some CPU", "native_bf16": False, "isa_limits": "ONEDNN_MAX_CPU_ISA=AVX2",
               "cpu_cores": 2}
    results.record_timing(tmp_path, "book:laser", "a", "quick", 300.0, estimate_s=400, **machine)
    results.record_timing(tmp_path, "book:prune", "a", "quick", 100.0, estimate_s=None, **machine)
    results.record_timing(tmp_path, "book:laser", "a", "quick", 3.0, estimate_s=5, **machine)  # warm rerun: not kept
    path = tmp_path / "cold_runs.json"
    entry = estimate.record_run(tmp_path, "capped", wall_s=500.0, commit="abc", path=path)
    assert [(c["chapter"], c["seconds"], c["estimate_s"]) for c in entry["chapters"]] == [("laser", 300.0, 400),
                                                                                        ("prune", 100.0, None)]
    assert entry["chapters_s"] == 400.0 and entry["estimate_s"] == 400 and entry["wall_s"] == 500.0
    assert entry["isa_limits"] == "ONEDNN_MAX_CPU_ISA=AVX2" and entry["cpu"] == "Some CPU"
    assert json.loads(path.read_text())["capped"]["commit"] == "abc"
    with pytest.raises(ValueError, match="results_dir"):
        estimate.record_run(tmp_path / "empty", "x", path=path)
