import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import torch

from layerlab.core.model import models
from layerlab.core.io import results

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
    assert results.CODE_VERSION == "4"
    h100 = models.runtime_of(torch.bfloat16, "cuda", "abc", "NVIDIA H100 80GB HBM3")
    h200 = models.runtime_of(torch.bfloat16, "cuda", "abc", "NVIDIA H200")
    assert results.point_key(**{**base, "runtime": h100}) != results.point_key(**{**base, "runtime": h200})
    assert "gpu" not in models.runtime_of(torch.bfloat16, "cpu", "abc", "ignored")  # CPU keys unchanged


def test_items_hash_names_the_sample_not_its_order():
    h = results.items_hash(["a", "b", "c"])
    assert h == results.items_hash(["c", "a", "b"]) == results.items_hash(iter(["b", "c", "a"]))
    assert h != results.items_hash(["a", "b"]) and h != results.items_hash(["a", "b", "d"])
    assert h != results.items_hash(["a", "b", "c", "c"])  # a repeated item counts
    assert results.items_hash([1, 2]) == results.items_hash(["1", "2"])


def test_a_truncated_shard_is_moved_aside_with_a_warning_and_recomputed(tmp_path):
    store = results.ResultStore(tmp_path)
    store.put("t", "good", [_row(layer=1)])
    store.put("t", "cut", [_row(layer=2)])
    shard = tmp_path / "t" / "cut.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])  # a full disk / partial copy: no footer
    fresh = results.ResultStore(tmp_path)
    with pytest.warns(results.UnreadableShardWarning, match=r"cut\.parquet.*cannot be read.*computed again"):
        assert not fresh.has("t", "cut")
    assert not shard.exists()
    aside = list((tmp_path / "t").glob("cut.parquet.unreadable-*"))
    assert len(aside) == 1 and aside[0].stat().st_size > 0  # kept for inspection, out of every listing
    assert fresh.keys("t") == {"good"} and results.missing(fresh, "t", ["good", "cut"]) == ["cut"]
    calls = []
    rows = fresh.point("t", "cut", lambda: calls.append(1) or [_row(layer=2, value=0.7)])
    assert calls == [1] and rows["value"].tolist() == [0.7]
    assert sorted(fresh.table("t")["layer"]) == [1, 2]


def test_the_table_skips_an_unreadable_shard_and_get_names_it(tmp_path):
    store = results.ResultStore(tmp_path)
    store.put("t", "good", [_row(layer=1)])
    (tmp_path / "t" / "bad.parquet").write_bytes(b"PAR1 not a parquet file")
    with pytest.warns(results.UnreadableShardWarning, match="bad.parquet"):
        table = store.table()
    assert table["layer"].tolist() == [1]
    store.put("t", "bad2", [_row()])
    (tmp_path / "t" / "bad2.parquet").write_bytes(b"")
    with pytest.warns(results.UnreadableShardWarning), pytest.raises(KeyError, match="bad2"):
        store.get("t", "bad2")


def test_a_truncated_laser_shard_is_recomputed_not_fatal(tmp_path):
    """The notebook's failure mode: a truncated shard in results/ used to raise pyarrow's
    'Parquet magic bytes not found in footer'; now the point is computed again."""
    from layerlab.laser import sweep as laser, rank
    from tiny import CharTokenizer, facts_file, tiny_model

    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path)))
    store = results.ResultStore(tmp_path / "r")
    red = [rank.Reduction("mlp_in", 3, 0.5)]
    first = laser.Sweeper(model, CharTokenizer(), "tiny", task, store).point(red)
    key = laser.Sweeper(model, CharTokenizer(), "tiny", task, store).key(red)
    for technique in ("laser", "laser_items"):
        shard = tmp_path / "r" / technique / f"{key}.parquet"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"))
        with pytest.warns(results.UnreadableShardWarning, match=f"{technique}/{key}.parquet"):
            again = sweeper.point(red)
        pd.testing.assert_frame_equal(again.drop(columns=[]), first)
        assert sweeper._batches is not None  # it was computed again (the rows were tokenised)
        assert len(sweeper.items(red)) == task.n_items
