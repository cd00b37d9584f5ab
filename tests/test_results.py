import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from layerlab import results

HERE = Path(__file__).parent


def _row(**kw):
    base = {"model": "m", "technique": "t", "dataset": "d", "split": "test", "metric": "acc",
            "value": 0.5, "n_items": 10}
    return {**base, **kw}


def test_point_key_depends_on_every_part():
    base = dict(model="m", technique="t", intervention={"rho": 0.1, "layer": 3}, dataset="d", split="test")
    k = results.point_key(**base)
    assert k == results.point_key(**{**base, "intervention": {"layer": 3, "rho": 0.1}})  # order-free
    for change in ({"model": "m2"}, {"technique": "t2"}, {"intervention": {"rho": 0.2, "layer": 3}},
                   {"dataset": "d2"}, {"split": "val"}, {"code_version": "other"}):
        assert results.point_key(**{**base, **change}) != k


def test_store_round_trip_and_tidy_table(tmp_path):
    store = results.ResultStore(tmp_path)
    store.put("t", "k1", [_row(layer=1), _row(metric="loss", value=2.0, layer=1)])
    store.put("t", "k2", [_row(layer=2)])
    store.put("u", "k3", [_row(technique="u", rank=4)])
    assert store.has("t", "k1") and not store.has("t", "k9")
    table = store.table("t")
    assert len(table) == 3 and set(table["key"]) == {"k1", "k2"}
    assert len(store.table()) == 4 and "rank" in store.table().columns
    assert results.missing(store, "t", ["k1", "k5", "k2", "k6"]) == ["k5", "k6"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_rows_without_required_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="required columns.*n_items"):
        results.ResultStore(tmp_path).put("t", "k", [{"model": "m"}])


def test_point_computes_once(tmp_path):
    store = results.ResultStore(tmp_path)
    calls = []
    compute = lambda: calls.append(1) or [_row()]  # noqa: E731
    a = store.point("t", "k", compute)
    b = store.point("t", "k", compute)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(a, b)


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    out, log = tmp_path / "results", tmp_path / "computed.log"
    cmd = [sys.executable, str(HERE / "sweep_script.py"), str(out), str(log)]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        n_done = len(list((out / "skip-one").glob("*.parquet"))) if (out / "skip-one").exists() else 0
        if n_done >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored_before = results.ResultStore(out).keys("skip-one")
    assert 4 <= len(stored_before) < 12, "the kill should land midway"
    first_log = log.read_text().split()

    subprocess.run(cmd, env=env, check=True, timeout=300)
    second_log = log.read_text().split()[len(first_log):]
    table = results.ResultStore(out).table("skip-one")
    assert len(table) == 12 and table["key"].is_unique  # every point present exactly once
    assert not set(second_log) & stored_before  # nothing already stored was recomputed
    assert set(second_log) | stored_before == set(table["key"])
    assert table["value"].notna().all()


def test_point_key_depends_on_every_runtime_field():
    rt = {"dtype": "float32", "device": "cpu", "weights": "abc",
          "versions": {"torch": "2.13.0", "transformers": "5.23.0", "lm_eval": "0.4.9"}}
    base = dict(model="m", technique="t", intervention={"rho": 0.1}, dataset="d", split="test", runtime=rt)
    k = results.point_key(**base)
    for change in ({"dtype": "bfloat16"}, {"device": "cuda"}, {"weights": "abd"},
                   {"versions": {**rt["versions"], "torch": "2.12.0"}},
                   {"versions": {**rt["versions"], "transformers": "5.22.0"}},
                   {"versions": {**rt["versions"], "lm_eval": "0.4.8"}}):
        assert results.point_key(**{**base, "runtime": {**rt, **change}}) != k
    assert results.CODE_VERSION == "3"


def test_items_hash_names_the_sample_not_its_order():
    h = results.items_hash(["a", "b", "c"])
    assert h == results.items_hash(["c", "a", "b"]) == results.items_hash(iter(["b", "c", "a"]))
    assert h != results.items_hash(["a", "b"]) and h != results.items_hash(["a", "b", "d"])
    assert h != results.items_hash(["a", "b", "c", "c"])  # a repeated item counts
    assert results.items_hash([1, 2]) == results.items_hash(["1", "2"])
