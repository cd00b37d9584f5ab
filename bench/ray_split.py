"""The Ray row's sweep (80 LASER configurations + base, 400 CounterFact items, smollm2 float32)
split into import / load / task / sweep, run in this process, in a fresh subprocess and as a Ray task."""
import json, subprocess, sys, tempfile, time

def shard(results_dir):
    t0 = time.perf_counter()
    from layerlab.core.compute import distributed
    from layerlab.core.io import results
    from layerlab.core.model import arch
    from layerlab.laser import sweep as laser
    t1 = time.perf_counter()
    lm, tok = distributed.load("smollm2-135m", "cpu", "float32")
    t2 = time.perf_counter()
    task = laser.build_task("counterfact", None, 400, 0)
    L = arch.n_layers(lm)
    points = [[]] + [[g] for g in laser.grid(["mlp_in", "mlp_out"], range(L - 8, L), [0.01, 0.05, 0.1, 0.25, 0.5])]
    sw = laser.Sweeper(lm, tok, "smollm2-135m", task, results.ResultStore(results_dir), seed=0, limit=400)
    t3 = time.perf_counter()
    sw.points(points)
    t4 = time.perf_counter()
    import torch
    return {"import_s": t1 - t0, "load_s": t2 - t1, "task_s": t3 - t2, "sweep_s": t4 - t3, "threads": torch.get_num_threads(), "points": len(points)}

if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(shard(tmp))); sys.exit()
    out = {}
    start = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "child"], capture_output=True, text=True)
    out["subprocess"] = json.loads(p.stdout.strip().splitlines()[-1]) | {"wall_s": time.perf_counter() - start}
    print("subprocess", out["subprocess"], flush=True)
    import ray
    from layerlab.core.compute import distributed
    distributed.validate_executor("ray", None)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        r = ray.get(ray.remote(num_cpus=2, max_calls=1)(shard).remote(tmp))
        out["ray"] = r | {"wall_s": time.perf_counter() - start}
    print("ray", out["ray"], flush=True)
    ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out["local"] = shard(tmp) | {"wall_s": time.perf_counter() - start}
    print("local", out["local"], flush=True)
    json.dump(out, sys.stdout, indent=1)
