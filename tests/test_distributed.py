"""Sweeps as Ray tasks (a real Ray instance with 2 CPUs, started here) store the same
tables as the local executor, survive a SIGKILLed worker, and refuse a bad address early.

The workers load the model by path, so the tests save a small random Llama with a
byte-level BPE tokenizer trained here on the benchmark text (no embedded model needed)."""

import contextlib
import os
import signal
import socket
import threading
import time

import pandas as pd
import pytest
import ray
import torch
import transformers as tf

import layerlab
from tiny import train_bpe
from layerlab.core.io import data, results
from layerlab.laser import distributed as laser_distributed
from layerlab.painters import distributed as painters_distributed
from layerlab.core.compute import distributed
from layerlab.core.model import models
from layerlab.laser import sweep as laser, rank
from layerlab.painters import grid as painters

LASER_KW = dict(seed=0, device="cpu", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    texts = [r["prompt"] + " " + r["answer"] for r in data.load("counterfact")[:3000]]
    texts += [r["query"] + " " + " ".join(r["choices"]) for r in data.load("arc_easy")[:1000]]
    tok = train_bpe(texts, 1024)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():  # random init leaves norms at exactly 1: perturb so no layer is special
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny-llama-bpe")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def raylet_pid():
    """A Ray instance with 2 CPUs for this module; yields the pid of its raylet, the parent
    of every worker process it starts."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield int(ray.get(ray.remote(lambda: os.environ["RAY_RAYLET_PID"]).remote()))
    finally:
        ray.shutdown()


def _table(root, technique: str) -> pd.DataFrame:
    t = results.ResultStore(root).table(technique)
    return t.sort_values([c for c in ("key", "split", "metric", "item", "dataset") if c in t]).reset_index(drop=True)


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sweeper(model_dir: str, results_dir, limit: int) -> laser.Sweeper:
    lm, tok = layerlab.load(model_dir, dtype="float32", device="cpu")
    task = laser.build_task("counterfact", limit=limit, seed=0)
    return laser.Sweeper(lm, tok, model_dir, task, results.ResultStore(results_dir), seed=0, limit=limit)


def test_balance_splits_by_cost_and_keeps_every_item_once():
    costs = [31, 30, 29, 3, 2, 2, 1, 1]
    groups = distributed.balance(costs, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(costs)))
    loads = [sum(costs[i] for i in g) for g in groups]
    assert max(loads) - min(loads) <= 2
    assert distributed.balance([1.0, 1.0], 5) == [[0], [1]]


@pytest.mark.smoke  # real Ray workers on real benchmark items (tens of seconds)
def test_sharded_laser_sweep_on_ray_matches_local(model_dir, raylet_pid, tmp_path):
    points = [[]] + [[r] for r in laser.grid(["mlp_in", "mlp_out", "q"], [0, 1, 2, 3], [0.05, 0.5])]
    points.append([rank.Reduction("mlp_in", 3, 0.05), rank.Reduction("q", 1, 0.5)])  # a composed point
    kw = dict(LASER_KW, limit=30)
    with _threads(1):  # as each of the 2 workers on 2 CPUs: float sums in the same order, so bit-identical
        local = laser_distributed.run_laser_points(model_dir, "counterfact", points, results_dir=tmp_path / "local", **kw)
    on_ray = laser_distributed.run_laser_points(model_dir, "counterfact", points, results_dir=tmp_path / "ray",
                                          executor="ray", workers=2, **kw)
    cpu32 = models.runtime_of(torch.float32, "cpu", models.fingerprint(model_dir))
    assert local == {"points": 26, "computed": 26, "tasks": 0, "runtime": cpu32, "gpu": None}
    assert on_ray == {"points": 26, "computed": 26, "tasks": 2, "runtime": cpu32, "gpu": None}
    assert not list((tmp_path / "ray").glob(".run-*"))  # the driver's marker for the workers is gone
    for technique in ("laser", "laser_items"):
        a, b = _table(tmp_path / "local", technique), _table(tmp_path / "ray", technique)
        assert len(a) == (26 * 6 if technique == "laser" else 26 * 30)  # 2 splits x 3 metrics; 30 items
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    # a notebook's own sweeper (model loaded here) finds every point stored by the Ray workers
    sweeper = _sweeper(model_dir, tmp_path / "ray", limit=30)
    frame = laser.sweep(sweeper, ["mlp_in", "mlp_out", "q"], [0, 1, 2, 3], [0.05, 0.5], progress=False)
    assert sweeper._scorer is None and len(frame) == 25 * 6  # read from the store: the model never ran
    again = laser_distributed.run_laser_points(model_dir, "counterfact", points, results_dir=tmp_path / "ray",
                                         executor="ray", **kw)
    assert again["computed"] == 0 and again["tasks"] == 0  # resumed: nothing to run, no task started


@pytest.mark.smoke  # real Ray workers on real benchmark items (tens of seconds)
def test_painters_grid_on_ray_matches_local(model_dir, raylet_pid, tmp_path):
    specs = painters.specs(4, [2], ["skip", "looped_parallel"], [0], [2])
    tasks = {s: ["arc_easy"] for s in specs} | {specs[0]: ["arc_easy", "winogrande"]}
    kw = dict(n_layers=4, seed=0, device="cpu", dtype="float32", batch_size=8, progress=False)
    limits = {"arc_easy": 4, "winogrande": 4}
    with _threads(1):
        local = painters_distributed.run_painters_specs(model_dir, specs, tasks, limits, results_dir=tmp_path / "local", **kw)
    on_ray = painters_distributed.run_painters_specs(model_dir, specs, tasks, limits, results_dir=tmp_path / "ray",
                                            executor="ray", workers=2, **kw)
    assert (local["computed"], local["tasks"], on_ray["computed"], on_ray["tasks"]) == (4, 0, 4, 2)
    a, b = _table(tmp_path / "local", "painters"), _table(tmp_path / "ray", "painters")
    assert set(a["variant"]) == {"base", "skip", "looped_parallel"} and len(a.groupby("key")) == 4
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def _worker_pids(raylet: int, task_name: str) -> list[int]:
    """Worker processes of this module's Ray instance that are running a task named task_name
    (Ray titles a worker ``ray::<task name>`` while it runs one)."""
    pids = []
    for entry in os.scandir("/proc"):
        try:
            if not entry.name.isdigit() or open(f"/proc/{entry.name}/cmdline", "rb").read().split(b"\0")[0] != \
                    f"ray::{task_name}".encode():
                continue
            if int(open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()[1]) == raylet:
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


@pytest.mark.smoke  # real Ray workers on real benchmark items (tens of seconds)
def test_a_worker_killed_mid_task_is_retried_and_every_point_is_stored_once(model_dir, raylet_pid, tmp_path):
    points = [[]] + [[r] for r in laser.grid(["mlp_in", "mlp_out"], [1, 2, 3], [0.05, 0.2, 0.5])]
    folder = tmp_path / "laser"
    seen: dict = {"pids": set()}
    finished = threading.Event()

    def watch_and_kill():  # every worker seen running the task; SIGKILL the first once a point is stored
        while not finished.is_set():
            pids = _worker_pids(raylet_pid, laser_distributed.TASK)
            seen["pids"].update(pids)
            if pids and "killed" not in seen and folder.exists() and any(folder.glob("*.parquet")):
                os.kill(pids[0], signal.SIGKILL)
                seen.update(killed=pids[0], stored=len(list(folder.glob("*.parquet"))))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_and_kill)
    watcher.start()
    try:
        out = laser_distributed.run_laser_points(model_dir, "counterfact", points, results_dir=tmp_path, limit=60,
                                           executor="ray", workers=2, **LASER_KW)
    finally:
        finished.set()
        watcher.join()
    assert "killed" in seen, "no worker running the LASER task was seen"
    assert 0 < seen["stored"] < len(points), "the kill did not land mid-sweep"
    assert len(seen["pids"]) == 3  # the 2 tasks' workers, and a fresh one for the killed task's retry
    table = results.ResultStore(tmp_path).table("laser")
    assert set(table["key"]) == {_sweeper(model_dir, tmp_path, limit=60).key(p) for p in points}
    assert not table.duplicated(["key", "split", "metric"]).any()
    assert (table.groupby("key").size() == 6).all()
    assert (out["computed"], out["tasks"]) == (len(points), 2)


def test_bad_ray_address_is_a_clear_error_before_any_model_load(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(distributed, "load", lambda *a: loads.append(a))
    monkeypatch.setattr(layerlab.core.model.models, "load", lambda *a, **k: loads.append(a))
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    with pytest.raises(ConnectionError, match=f"ray_address: nothing answers at '127.0.0.1:{port}'.*ray start --head"):
        laser_distributed.run_laser_points("smollm2-135m", "counterfact", [[]], results_dir=tmp_path / "r", executor="ray",
                                     ray_address=f"127.0.0.1:{port}", **LASER_KW)
    assert time.time() - start < 10 and not loads and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="ray_address: 'headnode' is not None, 'auto' or 'host:port'"):
        distributed.validate_executor("ray", "headnode")
    with pytest.raises(ValueError, match="executor: 'dask' is not one of local, ray"):
        distributed.validate_executor("dask")
