"""How long the book will take on this machine, measured before it starts.

A chapter's cost is stored as *work*: the seconds it took on the machine where it was
measured times the speed of its model there (tokens per second of a plain forward pass,
same dtype), i.e. the full-model tokens it is worth (``book/costs.json``, written from a
cold run's timings by ``python -m layerlab.book.estimate --write-costs RESULTS_DIR``). Here, a
few seconds of calibration measure each model's speed in the dtype it will run in, and a
chapter's estimate is work / speed. The Sokoban chapter is scaled by its own agent's
training speed (``agent_windows_per_second``: windows per second, one thread, float32); any
other non-LM name by float32 matmul speed (GFLOP/s). The estimate assumes the
chapter's time is compute; lm-eval's set-up and Python overheads scale less than that.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from layerlab.core.model import embedded, models

COSTS = Path(__file__).resolve().parents[3] / "book" / "costs.json"
# rows x tokens of one timed forward pass: 1024 tokens, inside the chapters' own batches (LASER's
# 4096-token batches, lm-eval's 8-24 rows of 100-500 tokens). At 2 x 64 a CPU is latency-bound and
# the ratio between dtypes and ISAs is not the chapters' (#28 §2: under the AVX2 cap the plan from
# 2 x 64 said 33 min for a LASER chapter that took 16)
CALIBRATION_TOKENS = (4, 256)
# timed passes per model, after an untimed one: their median is the speed (one pass of a slow
# model is one sample of a noisy host)
CALIBRATION_PASSES = 3
MATMUL = (512, 576, 1536)      # m, k, n of the matmul that scales non-LM chapters


def chapter_id(technique: str, model: str) -> str:
    return f"{technique}/{model}"


@torch.no_grad()
def tokens_per_second(model_name: str, dtype: str = "auto", device: str = "auto", min_seconds: float = 1.0,
                      passes: int = CALIBRATION_PASSES) -> float:
    """Forward-pass speed of a registry model (or any ``layerlab.load`` name) in ``dtype``:
    tokens per second of ``CALIBRATION_TOKENS``-sized passes, the median over at least
    ``passes`` timed passes (and at least ``min_seconds``), after one untimed pass of the same
    shape. The Sokoban agent (``AGENT``) -> its training windows per second; other non-LM
    names (not loadable) -> matmul GFLOP/s."""
    if model_name == AGENT:
        return agent_windows_per_second()
    if model_name not in embedded.REGISTRY and not Path(model_name).exists() and "/" not in model_name:
        return matmul_gflops()
    lm, _ = models.load(model_name, dtype=dtype, device=device)
    rows, length = CALIBRATION_TOKENS
    ids = torch.randint(100, 1000, (rows, length), generator=torch.Generator().manual_seed(0), device="cpu").to(lm.device)
    # warm-up at the timed shape: the first pass of a shape pays for kernels, the allocator's
    # buffers and oneDNN's primitives. Two plans minutes apart differed by 25% on gemma3 under
    # the AVX2 cap, where a 16-token warm-up left one timed pass of a slow model; whether this
    # and the median remove that spread is for the next cold run to show
    lm(input_ids=ids)
    speeds, start = [], time.perf_counter()
    while len(speeds) < passes or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        lm(input_ids=ids)
        speeds.append(rows * length / (time.perf_counter() - t0))
    del lm
    return float(np.median(speeds))


AGENT = "sokoban-dt"  # the Sokoban chapter's model: trained in the chapter, calibrated by its own steps


def agent_windows_per_second(min_seconds: float = 1.0, threads: int = 1) -> float:
    """Speed of the Sokoban chapter's own work on this machine: windows per second of
    training steps (forward, backward, AdamW) of the quick profile's Decision Transformer in
    float32 on ``threads`` CPU threads (the chapter's default: 1). A float32 matmul is no
    proxy for it: on a CPU that is faster at large bf16 matmuls this small agent can be
    faster or slower, and on one thread its speed is set by latency, not by matmul width."""
    import numpy as np

    from layerlab.laser.sokoban import agent as agent_mod, env as sokoban

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg, env = agent_mod.AgentConfig(), agent_mod.EnvConfig()
        torch.manual_seed(0)
        model = agent_mod.build_model(sokoban.observation_size((env.size, env.size)), cfg, env).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(0)
        b, k, dim = cfg.batch, cfg.context, model.config.state_dim
        batch = agent_mod._inputs(rng.random((b, k, dim), dtype=np.float32), rng.integers(0, 4, (b, k)),
                                  rng.random((b, k), dtype=np.float32), rng.integers(0, 60, (b, k)), cfg, "cpu",
                                  torch.float32)
        target = torch.as_tensor(rng.integers(0, 4, (b, k)), device="cpu")

        def step() -> None:
            with torch.enable_grad():
                logits = model(**batch).action_preds
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()

        step()  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            step()
            done += b
        return done / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def matmul_gflops(min_seconds: float = 0.5) -> float:
    """float32 matmul speed of this machine (GFLOP/s), ``MATMUL``-sized."""
    m, k, n = MATMUL
    a, b = torch.randn(m, k, device="cpu"), torch.randn(k, n, device="cpu")
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        a @ b
        done += 1
    return 2 * m * k * n * done / (time.perf_counter() - start) / 1e9


def load_costs(profile: str, path: Path = COSTS) -> dict:
    """chapter id -> {work, seconds, speed, dtype, cpu} measured for ``profile`` ({} if none)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get(profile, {})


def plan_estimate(plan: list[tuple[str, str, str]], profile: str, calibrate=tokens_per_second,
                  costs: dict | None = None) -> list[dict]:
    """Per chapter (technique, model, dtype name as passed to the notebook): the speed
    measured here, the work from ``costs`` and the estimated seconds (None when no cost
    was recorded for that chapter). Each distinct (model, dtype) is calibrated once."""
    costs = load_costs(profile) if costs is None else costs
    speed: dict[tuple[str, str], float] = {}
    out = []
    for technique, model, dtype in plan:
        if (model, dtype) not in speed:
            speed[(model, dtype)] = calibrate(model, dtype)
        cost = costs.get(chapter_id(technique, model))
        est = cost["work"] / speed[(model, dtype)] if cost else None
        out.append({"chapter": technique, "model": model, "dtype": dtype, "speed": speed[(model, dtype)],
                    "estimate_s": est, "measured_on": ", ".join(str(cost[k]) for k in ("cpu", "dtype") if k in cost) if cost else None})
    return out


def summary(rows: list[dict], limit_hours: float = 2.0) -> str:
    """The plan as text: one line per chapter with its dtype and estimated minutes, the
    total, and, above ``limit_hours``, the cheaper options."""
    lines = ["[book] plan (estimated from a calibration on this machine):"]
    for r in rows:
        est = "unknown (no recorded cost)" if r["estimate_s"] is None else f"{r['estimate_s'] / 60:5.1f} min"
        dtype = r.get("resolved", r["dtype"])
        lines.append(f"[book]   {r['chapter']:<14} {r['model']:<20} {dtype:<9} {est}")
    known = [r["estimate_s"] for r in rows if r["estimate_s"] is not None]
    total = sum(known)
    if not known:
        lines.append("[book]   total unknown: no chapter of this plan has a recorded cost (book/costs.json)")
        return "\n".join(lines)
    more = " (plus the chapters without a recorded cost)" if len(known) < len(rows) else ""
    lines.append(f"[book]   total about {total / 60:.0f} min{more}, then the HTML build (~1-2 min)")
    sources = sorted({r["measured_on"] for r in rows if r.get("measured_on")})
    if sources:
        lines.append(f"[book]   (each chapter's work was recorded in a cold run on {'; '.join(sources)} and is scaled "
                     "by this machine's speed: a forward pass of each model, training steps of the Sokoban agent; "
                     "not calibrated: lm-eval's set-up, data loading and Python overheads, which scale less than "
                     "compute, and how a CPU's speed changes with the batch shape)")
    if total > limit_hours * 3600:
        lines.append(f"[book] WARNING: that is more than {limit_hours:g} hours on this machine. Cheaper options: "
                     "`make book PROFILE=smoke` (tiny grids, minutes), or run on a GPU (device auto picks CUDA), "
                     "or a machine whose CPU has avx512_bf16.")
    return "\n".join(lines)


class Progress:
    """Two progress bars on stderr while the book runs, ticking every ``tick`` seconds: the
    current chapter's elapsed time against its estimate, and the whole run's (finished
    chapters count with their estimates, so the bar's time left is the plan's). A chapter
    without an estimate shows elapsed time only."""

    def __init__(self, estimates: list[float | None], tick: float = 2.0):
        from tqdm.auto import tqdm

        self.estimates, self.tick, self.index, self._started = estimates, tick, -1, 0.0
        known = sum(e for e in estimates if e)
        self.fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s est. [{remaining} left]"
        self.unknown_fmt = "{desc}: {elapsed} elapsed (no estimate: no recorded cost)"
        self.total = tqdm(total=max(known, 1.0), desc="book", bar_format=self.fmt if known else self.unknown_fmt,
                          position=0, leave=True)
        self.chapter = tqdm(total=1.0, desc="chapter", bar_format=self.fmt, position=1, leave=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.chapter.close()
        self.total.close()

    def start(self, name: str) -> None:
        self.index += 1
        self._started = time.time()
        self.chapter.reset(total=max(self.estimates[self.index] or 1.0, 1.0))
        self.chapter.bar_format = self.fmt if self.estimates[self.index] else self.unknown_fmt
        self.chapter.set_description(name)

    def finish(self) -> None:
        self._update(done=True)

    def _update(self, done: bool = False) -> None:
        if self.index < 0:
            return
        est = self.estimates[self.index]
        elapsed = time.time() - self._started
        self.chapter.n = self.chapter.total if done else min(elapsed, self.chapter.total)
        before = sum(e for e in self.estimates[:self.index] if e)
        self.total.n = min(before + ((est or 0) if done else min(elapsed, est or 0)), self.total.total)
        self.chapter.refresh()
        self.total.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._update()


def _cold_book_rows(results_dir: str | Path, profile: str, need: str | None = None):
    """The book's timing row of each chapter's first run in ``results_dir`` for ``profile``
    (the cold run that computed everything), among rows with ``need`` recorded where given."""
    from layerlab.core.io.results import timings

    t = timings(results_dir)
    t = t[t.chapter.str.startswith("book:") & (t.profile == profile)]
    if need is not None and need in t:
        t = t[t[need].notna()]
    return t.groupby(["chapter", "model"], as_index=False, sort=False).first()


def write_costs(results_dir: str | Path, profile: str, path: Path = COSTS) -> dict:
    """Record each chapter's work (seconds x speed) from the book's timing rows
    ("book:<technique>", with ``speed``) of a cold run in ``results_dir`` (other chapters
    keep their recorded costs); returns the chapters written."""
    cold = _cold_book_rows(results_dir, profile, need="speed")
    entry = {chapter_id(r.chapter.removeprefix("book:"), r.model): {
        "work": round(float(r.seconds * r.speed), 1), "seconds": float(r.seconds), "speed": round(float(r.speed), 2),
        "dtype": r.dtype, "cpu": r.cpu, "native_bf16": bool(r.native_bf16), "measured": r.finished}
        for r in cold.itertuples()}
    allc = json.loads(path.read_text()) if path.exists() else {}
    allc.setdefault(profile, {}).update(entry)  # chapters not in this run keep their recorded costs
    path.write_text(json.dumps(allc, indent=1, sort_keys=True) + "\n")
    return entry


COLD_RUNS = COSTS.with_name("cold_runs.json")


def record_run(results_dir: str | Path, label: str, profile: str = "quick", wall_s: float | None = None,
               commit: str | None = None, path: Path = COLD_RUNS) -> dict:
    """Keep one measured cold run in ``book/cold_runs.json`` under ``label``: per chapter the
    seconds it took and the seconds the plan estimated before it started (the book's timing
    rows in ``results_dir``), the CPU, its ISA limits and the dtype, the whole run's wall time
    (``/usr/bin/time``'s, when given) and the commit. The Reproducibility page shows every run
    kept there next to its estimate, so a reader sees how far the plan was off on each machine."""
    cold = _cold_book_rows(results_dir, profile)
    if not len(cold):
        raise ValueError(f"results_dir: {results_dir} holds no book timing rows for profile {profile!r}")
    first = cold.iloc[0]
    chapters = [{"chapter": r.chapter.removeprefix("book:"), "model": r.model, "dtype": r.dtype,
                 "seconds": round(float(r.seconds), 1),
                 "estimate_s": None if r.estimate_s != r.estimate_s else round(float(r.estimate_s))}
                for r in cold.itertuples()]
    entry = {"profile": profile, "cpu": first.get("cpu"), "isa_limits": first.get("isa_limits") or "none",
             "native_bf16": bool(first.get("native_bf16")), "cores": int(first.get("cpu_cores", 0) or 0),
             "finished": str(cold.finished.max()), "commit": commit, "wall_s": wall_s,
             "chapters_s": round(sum(c["seconds"] for c in chapters), 1),
             "estimate_s": sum(c["estimate_s"] for c in chapters if c["estimate_s"] is not None), "chapters": chapters}
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[label] = entry
    path.write_text(json.dumps(runs, indent=1, sort_keys=True, default=str) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write book/costs.json from a cold run's timings, or keep a "
                                     "measured cold run in book/cold_runs.json.")
    parser.add_argument("--write-costs", metavar="RESULTS_DIR")
    parser.add_argument("--record-run", metavar="RESULTS_DIR")
    parser.add_argument("--label", help="--record-run: the run's name, e.g. 'quick, AMD EPYC, AVX2 cap'")
    parser.add_argument("--wall-s", type=float, help="--record-run: the whole run's wall seconds")
    parser.add_argument("--commit", help="--record-run: the commit the run was made at")
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args(argv)
    if bool(args.write_costs) == bool(args.record_run):
        parser.error("give one of --write-costs RESULTS_DIR or --record-run RESULTS_DIR")
    if args.record_run:
        if not args.label:
            parser.error("--record-run needs --label")
        out = record_run(args.record_run, args.label, args.profile, args.wall_s, args.commit)
    else:
        out = write_costs(args.write_costs, args.profile)
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
