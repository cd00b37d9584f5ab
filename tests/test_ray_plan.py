"""The Ray driver's logic without a Ray cluster: a stand-in ``ray`` module runs tasks in this
process, so these tests check what the driver decides (the probe before any shard, GPU
workers planned from a driver without a GPU, the runtime refused before any task, a shard
out of memory run again with a smaller chunk, a failed shard reported while the others'
points stay stored). tests/test_distributed.py runs the same code on a real Ray instance."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest
import torch

from layerlab.core.compute import distributed, ray_tasks
from layerlab.core.model import models
from layerlab.core.io import results
from layerlab.laser import distributed as laser_distributed, sweep as laser, rank
from tiny import facts_file, tiny_model


class _Ref:
    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs


class FakeRay(types.ModuleType):
    """Enough of ``ray`` for distributed.py and ray_tasks.py: tasks run when ``get`` asks for them."""

    def __init__(self, gpus: int = 0, cpus: int = 4):
        super().__init__("ray")
        self.gpus, self.cpus, self.submitted, self.cancelled = gpus, cpus, [], []

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": self.cpus}}]

    def remote(self, **_):
        fake = self

        def wrap(fn):
            class Task:
                def options(self, **options):
                    return self

                def remote(self, *args, **kwargs):
                    ref = _Ref(fn, args, kwargs)
                    fake.submitted.append((fn.__name__, kwargs.get("shrink", 0), args))
                    return ref
            return Task()
        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        refs = ref if isinstance(ref, list) else [ref]
        out = [r.fn(*r.args, **r.kwargs) for r in refs]
        return out if isinstance(ref, list) else out[0]

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    return str(folder)


def _gpu_probe(device, dtype, env=None):
    """What a worker on an H100 reports (this machine has no GPU)."""
    return {"dtype": "bfloat16" if dtype == "auto" else dtype, "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3",
            "host": "gpu-node", "versions": models.package_versions()}


def _storing_shard(fail: dict | None = None):
    """A LASER shard that stores a row per point under the worker's own keys; ``fail``:
    shard index -> (shrink values that raise, the exception)."""
    calls = []

    def shard(source, model_name, dataset, points, results_dir, seed, limit, data_dir, device, dtype,
              loaded=None, progress=False, env=None, marker=None, shrink=0):
        calls.append((len(points), shrink))
        for bad_shrinks, err in (fail or {}).values():
            if points and points[0] == fail_marker[0] and shrink in bad_shrinks:
                raise err
        gpu = "NVIDIA H100 80GB HBM3" if device == "cuda" else None  # the GPU _gpu_probe reports
        runtime = models.runtime_of(getattr(torch, dtype), device, models.fingerprint(source), gpu)
        task = laser.build_task(dataset, data_dir, limit, seed)
        store = results.ResultStore(results_dir)
        keyer = laser.Sweeper(distributed.key_model(runtime), None, model_name, task, store, seed=seed, limit=limit)
        for p in points:
            store.put(laser.TECHNIQUE, keyer.key([rank.Reduction(**r) for r in p]),
                      [dict(model=model_name, technique="laser", dataset=task.name, split="test", metric="acc",
                            value=0.5, n_items=task.n_items)])
        return len(points)
    fail_marker = [None]
    shard.calls, shard.fail_marker = calls, fail_marker
    return shard


POINTS = [[]] + [[rank.Reduction("mlp_in", layer, 0.5)] for layer in range(4)]


def test_a_driver_without_a_gpu_plans_gpu_workers_from_a_probe(tmp_path, model_dir, monkeypatch):
    fake = FakeRay(gpus=2)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_tasks, "_probe", _gpu_probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the driver has no GPU
    shard = _storing_shard()
    monkeypatch.setattr(laser_distributed, "_laser_shard", shard)
    ran = laser_distributed.run_laser_points(model_dir, str(facts_file(tmp_path)), POINTS, results_dir=tmp_path / "r",
                                       executor="ray", progress=False)
    assert fake.submitted[0][0] == "_gpu_probe"  # the probe runs before any shard
    assert ran["runtime"]["device"] == "cuda" and ran["runtime"]["dtype"] == "bfloat16"
    assert ran["gpu"] == "NVIDIA H100 80GB HBM3" and ran["tasks"] == 2 and ran["computed"] == len(POINTS)
    assert sum(n for n, _ in shard.calls) == len(POINTS)


def test_a_runtime_that_differs_is_refused_before_any_task(tmp_path, model_dir, monkeypatch):
    fake = FakeRay(gpus=1)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_tasks, "_probe", _gpu_probe)
    shard = _storing_shard()
    monkeypatch.setattr(laser_distributed, "_laser_shard", shard)
    here = models.runtime_of(torch.float32, "cpu", models.fingerprint(model_dir))
    with pytest.raises(ValueError, match=r"device: workers 'cuda', here 'cpu'; dtype: workers 'bfloat16', here 'float32'"):
        laser_distributed.run_laser_points(model_dir, str(facts_file(tmp_path)), POINTS, results_dir=tmp_path / "r",
                                     executor="ray", progress=False, expected_runtime=here)
    assert [name for name, *_ in fake.submitted] == ["_gpu_probe"] and not shard.calls


def test_workers_with_other_package_versions_are_refused_before_any_task(tmp_path, model_dir, monkeypatch):
    fake = FakeRay(gpus=1)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_tasks, "_probe", lambda device, dtype, env=None: {
        **_gpu_probe(device, dtype), "versions": {**models.package_versions(), "torch": "0.0.1"}})
    with pytest.raises(RuntimeError, match="other package versions.*torch: workers 0.0.1"):
        laser_distributed.run_laser_points(model_dir, str(facts_file(tmp_path)), POINTS, results_dir=tmp_path / "r",
                                     executor="ray", progress=False)
    assert len(fake.submitted) == 1


def test_an_out_of_memory_shard_runs_again_with_a_smaller_chunk(tmp_path, model_dir, monkeypatch):
    fake = FakeRay(gpus=2)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_tasks, "_probe", _gpu_probe)
    shard = _storing_shard({0: ((0, 1), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))})
    shard.fail_marker[0] = []  # the shard holding the base point runs out of memory twice
    monkeypatch.setattr(laser_distributed, "_laser_shard", shard)
    ran = laser_distributed.run_laser_points(model_dir, str(facts_file(tmp_path)), POINTS, results_dir=tmp_path / "r",
                                       executor="ray", progress=False)
    shrinks = [s for name, s, _ in fake.submitted if name == "shard"]
    assert sorted(shrinks) == [0, 0, 1, 2]  # two shards; one retried at 1/2 and 1/4 of the chunk
    assert ran["computed"] == len(POINTS)
    assert len(results.ResultStore(tmp_path / "r").keys(laser.TECHNIQUE)) == len(POINTS)


def test_a_failed_shard_is_reported_and_the_others_points_stay_stored(tmp_path, model_dir, monkeypatch):
    fake = FakeRay(gpus=2)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_tasks, "_probe", _gpu_probe)
    shard = _storing_shard({0: ((0, 1, 2, 3), torch.OutOfMemoryError("CUDA out of memory"))})
    shard.fail_marker[0] = []
    monkeypatch.setattr(laser_distributed, "_laser_shard", shard)
    with pytest.raises(RuntimeError, match=r"1 of 2 Ray tasks failed; \d of 5 points are stored .* stay there"
                                           r".*fewer items per batch.*\n  shard \d/2 \(chunk 1/8\): out of memory"):
        laser_distributed.run_laser_points(model_dir, str(facts_file(tmp_path)), POINTS, results_dir=tmp_path / "r",
                                     executor="ray", progress=False)
    stored = results.ResultStore(tmp_path / "r").keys(laser.TECHNIQUE)
    assert 0 < len(stored) < len(POINTS)  # the other shard finished and kept its points
    assert [s for name, s, _ in fake.submitted if name == "shard"].count(3) == 1  # OOM_RETRIES, then reported


def test_out_of_memory_errors_are_recognised():
    assert distributed.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    wrapped = type("RayTaskError(OutOfMemoryError)", (RuntimeError,), {})("ray::layerlab_laser ... "
                                                                          "torch.OutOfMemoryError: CUDA out of memory")
    assert distributed.is_out_of_memory(wrapped)
    assert not distributed.is_out_of_memory(ValueError("dataset: 'x' is not one of ..."))


# ---------------------------------------------------------------- the chapters' driver on Ray (planning.py)

@pytest.fixture
def lm_dir(tmp_path):
    """A tiny random Llama with a BPE tokenizer trained on the facts file (both needed to load it)."""
    import json

    import transformers as tf

    from tiny import train_bpe

    facts = facts_file(tmp_path)
    tok = train_bpe([" ".join(json.loads(line).values()) for line in open(facts)], 300)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama-bpe"
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_a_weightless_model_has_the_architecture_and_no_weights(lm_dir):
    from layerlab.core.model import arch
    from layerlab.core.compute import machine

    real, _ = models.load(lm_dir, dtype="float32", device="cpu")
    meta, tok = models.load(lm_dir, dtype="bfloat16", device="meta")
    assert {n: p.shape for n, p in meta.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in meta.parameters())  # no storage anywhere
    assert meta.layerlab_weights == real.layerlab_weights == models.fingerprint(lm_dir)
    assert (arch.n_layers(meta), arch.matrix_types(meta)) == (arch.n_layers(real), arch.matrix_types(real))
    rank.validate(meta, ["mlp_in", "q"], [0, 3], [0.5])
    with pytest.raises(ValueError, match="layers: 4 out of range"):
        rank.validate(meta, ["mlp_in"], [4], [0.5])
    assert tok.padding_side == "right" and tok.pad_token is not None
    with pytest.raises(ValueError, match="dtype: 'auto' for a weightless model"):
        models.load(lm_dir, dtype="auto", device="meta")
    assert machine.runtime_label(meta) == "`bfloat16`, weightless (meta device: no weights loaded here)"
    meta.layerlab_planned = _gpu_probe("auto", "auto")
    assert machine.runtime_label(meta) == ("`bfloat16` on the Ray workers (NVIDIA H100 80GB HBM3; "
                                           "no weights loaded on this driver)")


def _spy_loads_and_shards(monkeypatch) -> list:
    """Events in order: ("load", device) for every models.load, ("shards", n) / ("shards done",)
    around every ray_tasks.run_shards (the fake runs the workers' loads inside it)."""
    events, load, run_shards = [], models.load, ray_tasks.run_shards

    def spy_load(*a, **k):
        events.append(("load", str(k.get("device"))))
        return load(*a, **k)

    def spy_shards(fn, name, shard_args, *a):
        events.append(("shards", len(shard_args)))
        run_shards(fn, name, shard_args, *a)
        events.append(("shards done",))
    monkeypatch.setattr(models, "load", spy_load)  # the module planning and the workers load through
    monkeypatch.setattr(ray_tasks, "run_shards", spy_shards)
    return events


def test_the_laser_pipeline_on_ray_loads_the_drivers_model_after_the_tasks(tmp_path, lm_dir, monkeypatch):
    from layerlab.core.compute import machine
    from layerlab.laser import run as laser_run

    facts = str(facts_file(tmp_path))
    grid = dict(datasets=[facts], matrix_types=["mlp_in"], layers=[2, 3], rhos=[0.5], limit=20)
    kw = dict(data_dir=None, seed=0, device="cpu", dtype="float32")

    def pipeline(executor: str, results_dir):
        run = laser_run.setup(lm_dir, "smoke", results_dir, executor=executor, overrides=grid, **kw)
        header = machine.runtime_label(run["lm"])  # what the notebook's first cell shows
        sweepers, tables, _ = laser_run.run_sweeps(run, lm_dir, results_dir, executor=executor, **kw)
        return run, header, sweepers[facts], tables[facts]

    monkeypatch.setitem(sys.modules, "ray", FakeRay(gpus=0))
    events, computed_on, scores = _spy_loads_and_shards(monkeypatch), [], laser.prefix_stream.scores

    def spy_scores(model, batches, n_rows, jobs, *a):  # every LASER point is computed through it
        computed_on.extend([model] * len(jobs))
        return scores(model, batches, n_rows, jobs, *a)
    monkeypatch.setattr(laser.prefix_stream, "scores", spy_scores)
    run, header, sweeper, on_ray = pipeline("ray", tmp_path / "ray")
    assert header == "`float32` on the Ray workers (CPU; no weights loaded on this driver)"
    assert run["planned"] == models.runtime_of(torch.float32, "cpu", models.fingerprint(lm_dir))
    first = events.index(("shards", 1))
    assert not any(e[0] == "load" for e in events[:first])  # setup loaded nothing
    assert events[-2:] == [("shards done",), ("load", "cpu")]  # the driver's model: after every task ended
    assert next(run["lm"].parameters()).device.type == "cpu" and sweeper.model is run["lm"]
    # the workers computed the 3 points; the driver's model only read them
    assert len(computed_on) == 3 and not any(m is run["lm"] for m in computed_on)
    _, _, _, local = pipeline("local", tmp_path / "local")
    pd.testing.assert_frame_equal(on_ray.reset_index(drop=True), local.reset_index(drop=True), check_exact=True)


def test_cuda_workers_and_a_driver_without_cuda_are_refused_before_any_shard(tmp_path, lm_dir, monkeypatch):
    from layerlab.laser import run as laser_run
    from layerlab.painters import run as painters_run

    monkeypatch.setitem(sys.modules, "ray", FakeRay(gpus=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray_tasks, "probe_workers", lambda device, dtype, resources: _gpu_probe(device, dtype))
    events = _spy_loads_and_shards(monkeypatch)
    monkeypatch.setattr(ray_tasks, "run_shards", lambda *a: pytest.fail("a shard was submitted"))
    refused = r"the Ray workers run on CUDA \(NVIDIA H100 80GB HBM3, bfloat16\), but this driver has no CUDA GPU.*" \
              r"node with that GPU.*run_laser_points\(\.\.\.\)"
    with pytest.raises(ValueError, match=refused):
        laser_run.setup(lm_dir, "smoke", tmp_path / "r", executor="ray")
    with pytest.raises(ValueError, match=refused):
        painters_run.decoder(lm_dir, results.ResultStore(tmp_path / "r"), painters_run.config("smoke"), executor="ray")
    assert not events  # no model loaded, no shard submitted


def test_the_painters_decoder_on_ray_loads_the_drivers_model_after_the_tasks(tmp_path, lm_dir, monkeypatch):
    from layerlab.painters import grid as painters, run as painters_run

    monkeypatch.setitem(sys.modules, "ray", FakeRay(gpus=0))
    monkeypatch.setattr(painters, "informative", lambda table: ["arc_easy"])  # a random model is at chance
    events = _spy_loads_and_shards(monkeypatch)
    cfg = painters_run.config("smoke", variants=["skip"], affected=[2], loop_counts=[1], order_seeds=[0],
                              benchmarks=["arc_easy"], limit=4)
    store = results.ResultStore(tmp_path / "r")
    lm, tok, out = painters_run.decoder(lm_dir, store, cfg, executor="ray", device="cpu", dtype="float32")
    assert [e for e in events if e[0] != "load"] == [("shards", 1), ("shards done",)] * 2  # the base, then skip
    assert not any(e[0] == "load" for e in events[:events.index(("shards", 1))])  # nothing loaded before the tasks
    assert events[-2:] == [("shards done",), ("load", "cpu")] and events.count(("load", "cpu")) == 3
    assert models.runtime(lm) == models.runtime_of(torch.float32, "cpu", models.fingerprint(lm_dir))
    assert set(out["table"]["variant"]) == {"base", "skip"}
    monkeypatch.setattr(painters.prefix_eval, "lm_eval_edits", lambda *a, **k: pytest.fail("a point was recomputed"))
    local = painters_run.run_decoder(lm, tok, lm_dir, store, cfg)  # the local executor finds the same points
    pd.testing.assert_frame_equal(local["table"], out["table"])
