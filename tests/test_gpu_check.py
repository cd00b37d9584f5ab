"""`make gpu-check`'s script in its CPU mode (a small model), so that it cannot rot where
no GPU is: every step runs and passes, the report says so, and the GPU mode refuses a
machine without CUDA instead of skipping."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
STEPS = ("build", "laser", "prune", "painters", "lm-eval", "healing")


def _run(*args, out: Path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_cpu_mode_runs_every_step_and_passes(tmp_path):
    out = tmp_path / "report.json"
    proc = _run("--mode", "cpu", "--dtype", "float32", out=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["mode"] == "cpu" and report["dtype"] == "float32"
    names = [s["step"] for s in report["steps"]]
    assert [n.split(":")[0].split(" ")[0] for n in names] == list(STEPS)
    for s in report["steps"]:
        assert s["ok"] and s["seconds"] >= 0 and s["peak_memory_mb"] > 0, s
        for key in [k for k in s if k.startswith("pass_")]:
            assert s[key] is True, (s["step"], key)
    laser = report["steps"][1]
    assert laser["points"] == 9 and laser["svds"] == 4  # 2 layers x 2 matrix types: one SVD each
    # bounds are stated in the report and scale with the logits (they can fail)
    assert 0 < report["tolerance"] < 1e-3 and laser["max_nll_diff_bound"] == report["tolerance"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_mode_fails_without_cuda(tmp_path):
    out = tmp_path / "report.json"
    proc = _run("--mode", "gpu", out=out)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    assert json.loads(out.read_text())["ok"] is False


def test_a_check_records_its_bound_and_can_fail():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    row = {}
    gpu_check.check(row, "diff", 0.5, 0.1)
    gpu_check.check(row, "nan", float("nan"), 1.0)
    gpu_check.check(row, "small", 0.01, 0.1)
    assert row["pass_diff"] is False and row["pass_nan"] is False and row["pass_small"] is True
    assert row["diff_bound"] == 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_test_cuda_fails_rather_than_skips_when_cuda_is_required():
    env = dict(os.environ, LAYERLAB_REQUIRE_CUDA="1", HF_HUB_OFFLINE="1")
    env.pop("LAYERLAB_TEST_DEVICE", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                           "-k", "restores_bit_for_bit"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "LAYERLAB_REQUIRE_CUDA is set, but no CUDA GPU here" in proc.stdout
    assert "2 errors" in proc.stdout or "2 failed" in proc.stdout
    env.pop("LAYERLAB_REQUIRE_CUDA")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                           "-k", "restores_bit_for_bit"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "2 skipped" in proc.stdout
