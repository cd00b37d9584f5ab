"""`make gpu-check`: the GPU path of every chapter on a 7B-shaped model, in one command,
with a JSON report.

    python scripts/gpu_check.py                     # on a CUDA GPU (H100/H200: a few minutes)
    python scripts/gpu_check.py --mode cpu          # a small model on the CPU (what `make test` runs)

Steps, each timed with its peak memory (device memory on a GPU, peak RSS on the CPU):

1. tests/test_cuda.py with LAYERLAB_REQUIRE_CUDA=1 (fails, not skips, without CUDA; GPU mode only)
2. a Llama-2-7B-shaped model (random init from a config, bf16 where the GPU supports it,
   SDPA attention) built on the device, with a byte-level BPE tokenizer trained here
3. LASER: capture, SVD, 2 layers x 2 matrix types x 2 rhos through the prefix cache;
   each point's per-item nll against the edited model's own forward pass; every edited
   weight bit-identical after restore
4. distances (``prune.last_token_states``) against ``reference.gromov_distances``; one
   block dropped, held-out loss through ``prune.dropped`` and ``prune.pruned_copy``
5. Painters: a parallel and a looped-parallel schedule, runner against scheduled model
   (the same numbers), against ``reference.painters_logits``, and KV-cache generation
   against uncached generation
6. lm-eval: ``ScoredPositionsLM.loglikelihood`` on a few (context, continuation) pairs
   against ``scoring.score_full`` (the same split, the same log-likelihoods)
7. LoRA healing (two steps) and the float32 merge, on a pruned copy

Nothing is downloaded; no data files are needed. Exit status 0 only when every check
passes; the report (``--out``, default gpu_check.json) says which failed and by how much.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES = {  # Llama-2-7B, and a small one for the CPU mode
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "small": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=512),
}
# bounds on max |difference| of logits, log-likelihoods and nll, relative to the largest |logit|
# (``scale``, measured on the model): float32 round-off, and about five units in the last place
# of bf16 (8 mantissa bits: 2**-8 relative) and float16 (11 bits). A bf16 logit of 12 is only
# known to 0.0625, so an absolute bound below that could not pass, and one far above it could
# not fail. Angular distances lie in [0, 1]: absolute bounds (DISTANCE_TOL).
REL_TOL = {"float32": 2e-5, "bfloat16": 0.02, "float16": 0.004}
DISTANCE_TOL = {"float32": 1e-4, "bfloat16": 0.02, "float16": 0.005}

WORDS = ("the of and to in is was for on that with as by at from his her it an were which are this be has "
         "city river capital country language king queen music film born year people war team game school "
         "paris london rome berlin madrid france england italy germany spain french english italian german "
         "spanish church north south east west first second new old large small").split()


def sentences(n: int, seed: int, words: int = 14) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "." for _ in range(n)]


# ---------------------------------------------------------------------------- measuring

class Report:
    def __init__(self, device, out: Path):
        import torch

        self.torch, self.device, self.out = torch, device, out
        self.steps: list[dict] = []
        self.info: dict = {}

    def _peak_mb(self) -> float:
        if self.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    @contextlib.contextmanager
    def step(self, name: str):
        row = {"step": name, "ok": False}
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
        else:  # reset VmHWM so the step's peak is its own (Linux); elsewhere the process peak so far
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        start = time.perf_counter()
        try:
            yield row
            row["ok"] = all(v for k, v in row.items() if k.startswith("pass_")) if any(
                k.startswith("pass_") for k in row) else True
        except Exception as err:  # noqa: BLE001  (recorded; the other steps still run)
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc(limit=8)
        finally:
            if self.device.type == "cuda":
                self.torch.cuda.synchronize(self.device)
            row["seconds"] = round(time.perf_counter() - start, 2)
            row["peak_memory_mb"] = round(self._peak_mb(), 1)
            row["memory_kind"] = ("device (max_memory_allocated)" if self.device.type == "cuda"
                                  else "peak RSS during the step (VmHWM, reset at its start)")
            self.steps.append(row)
            print(f"[gpu-check] {name}: {'ok' if row['ok'] else 'FAILED'} ({row['seconds']} s, "
                  f"{row['peak_memory_mb']} MB){'  ' + row.get('error', '') if not row['ok'] else ''}", flush=True)
            self.write()

    def write(self) -> None:
        ok = bool(self.steps) and all(s["ok"] for s in self.steps)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({"ok": ok, **self.info, "steps": self.steps}, indent=2, default=str))


def check(row: dict, name: str, value: float, bound: float) -> None:
    """Record value, bound and ``pass_<name>`` (value <= bound; NaN fails)."""
    row[name] = float(value)
    row[f"{name}_bound"] = float(bound)
    row[f"pass_{name}"] = bool(value <= bound)


# ---------------------------------------------------------------------------- building

def train_tokenizer(vocab: int):
    """A byte-level BPE tokenizer trained here on synthetic sentences (no download)."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(sentences(2000, 0), trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.padding_side = "right"
    return tok


def build_model(shape: str, dtype, device, tok):
    """A randomly initialised Llama of ``shape`` built directly on ``device`` in ``dtype``."""
    import torch
    import transformers as tf

    cfg = dict(SHAPES[shape])
    cfg["vocab_size"] = max(cfg["vocab_size"], len(tok))
    config = tf.LlamaConfig(**cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = tf.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.eval()
    # random init leaves the logits near zero (every check would pass trivially): scale the
    # output head so that the logits spread like a trained model's (std ~ 3)
    ids = tok(sentences(2, 9), return_tensors="pt", padding=True)["input_ids"].to(device)
    with torch.no_grad():
        std = float(model(input_ids=ids, use_cache=False).logits.float().std())
        model.lm_head.weight.mul_(3.0 / max(std, 1e-6))
    model.layerlab_weights = f"random-init-{shape}-seed0"  # models.runtime reads it (no files behind it)
    return model


# ---------------------------------------------------------------------------- the steps

def step_pytest(report: Report) -> None:
    with report.step("tests/test_cuda.py") as row:
        env = dict(os.environ, LAYERLAB_REQUIRE_CUDA="1")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        row["summary"] = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode != 0:
            row["output_tail"] = proc.stdout[-4000:] + proc.stderr[-2000:]
        row["pass_pytest"] = proc.returncode == 0


def step_laser(report: Report, model, tok, tol: float, workdir: Path, n_items: int) -> None:
    import numpy as np
    import torch

    from layerlab.core.model import arch
    from layerlab.core.io import results
    from layerlab.core.eval import scoring
    from layerlab.laser import sweep as laser, rank

    with report.step("laser: capture, SVD, prefix vs edited forward, restore") as row:
        facts = workdir / "facts.jsonl"
        rng = random.Random(1)
        with open(facts, "w") as f:
            for i in range(n_items):
                f.write(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(8 + i % 5)),
                                    "answer": rng.choice(WORDS)}) + "\n")
        task = laser.build_task(str(facts))
        sweeper = laser.Sweeper(model, tok, "gpu-check", task, results.ResultStore(workdir / "results"),
                                max_tokens_per_batch=2048)
        n = arch.n_layers(model)
        points = [[]] + [[rank.Reduction(t, layer, rho)] for layer in (n - 1, n // 2)
                         for t in ("mlp_in", "mlp_out") for rho in (0.01, 0.5)]
        worst, agree, exact = 0.0, 1.0, True
        for red in points:
            got = sweeper.per_item(red)
            with rank.reduced(model, red, sweeper.svd):
                ref = laser.item_metrics(task, scoring.score_full(model, sweeper.scorer.batches, len(task.contexts)))
            worst = max(worst, float(np.abs(got["nll"].to_numpy() - ref["nll"].to_numpy()).max()))
            agree = min(agree, float((got["correct"] == ref["correct"]).mean()))
            for r in red:  # restored bit for bit
                exact &= torch.equal(arch.weight(model, r.matrix_type, r.layer).read().cpu(),
                                     sweeper.svd.original(r.matrix_type, r.layer))
        row.update(points=len(points), items=task.n_items, svds=sweeper.svd.computed,
                   svd_cache_mb=round(sweeper.svd.nbytes() / 2**20, 1))
        check(row, "max_nll_diff", worst, tol)
        row["argmax_agreement"] = agree
        row["pass_restored_bit_for_bit"] = bool(exact)


def copy_fits(model, keep_fraction: float) -> bool:
    """Whether a copy of ``keep_fraction`` of the model's weights fits beside it: free device
    memory on a GPU, MemAvailable on the CPU (a 7B model in bf16 on a 23 GiB machine does not
    fit twice), with a fifth to spare for activations."""
    import torch

    p = next(model.parameters())
    need = keep_fraction * sum(t.numel() * t.element_size() for t in model.parameters()) * 1.2
    if p.device.type == "cuda":
        return torch.cuda.mem_get_info(p.device)[0] > need
    with open("/proc/meminfo") as f:
        free = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    return free is None or free > need


def step_prune(report: Report, model, tok, tol: float, distance_tol: float) -> None:
    import numpy as np
    import torch

    from layerlab.core.model import arch, reference
    from layerlab.core.eval import lm_loss
    from layerlab.prune import blocks as prune

    texts = sentences(8, 2, words=20)
    with report.step("prune: distances vs reference, one drop, held-out loss") as row:
        batches = prune.text_batches(tok, texts, max_length=64, batch_size=4)
        states = prune.last_token_states(model, batches)
        ours = prune.angular_distances(states)
        ids, mask = (torch.cat(t) for t in zip(*batches))
        theirs = reference.gromov_distances(model, ids, mask)
        check(row, "max_distance_diff", float(np.nanmax(np.abs(ours - theirs))), distance_tol)
        n = arch.n_layers(model)
        blocks = prune.similarity_blocks(ours, max(1, n // 8))
        chunks = lm_loss.text_chunks(tok, sentences(64, 3), 64, max_chunks=8)
        with prune.dropped(model, blocks):
            in_place, _ = lm_loss.normalised_loss(model, chunks)
        row.update(dropped=blocks, loss_norm=in_place)
        row["pass_loss_finite"] = bool(math.isfinite(in_place))
        if not copy_fits(model, 1 - len(blocks) / n):
            row["pruned_copy"] = "skipped: a pruned copy does not fit beside the model in this machine's memory"
            return
        copy = prune.pruned_copy(model, blocks)
        copied, _ = lm_loss.normalised_loss(copy, chunks)
        del copy
        # the same blocks, weights and kernels: equal up to batch-order round-off (normalised loss ~1)
        check(row, "dropped_vs_pruned_copy_loss_diff", abs(in_place - copied), tol / 10)


def step_painters(report: Report, model, tok, tol: float) -> None:
    import torch

    from layerlab.core.model import arch, reference, runner, schedule

    with report.step("painters: runner vs scheduled model vs reference, KV-cache generation") as row:
        n = arch.n_layers(model)
        enc = tok(sentences(4, 4), return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        real = mask.bool()
        worst_sched, worst_ref, same_tokens = 0.0, 0.0, True
        for variant in ("parallel", "looped_parallel"):
            steps = schedule.build(variant, n, max(1, n // 4), iterations=3)
            state = runner.capture(model, ids, mask)
            ours = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps)).float().cpu()
            del state
            with schedule.scheduled(model, steps):
                sched = runner.full_logits(model, ids, mask).float().cpu()
                prompt = ids[:1, :8].to(next(model.parameters()).device)
                with torch.no_grad():
                    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True,
                                            pad_token_id=tok.pad_token_id)
                    uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False,
                                              pad_token_id=tok.pad_token_id)
            same_tokens &= torch.equal(cached, uncached)
            ref = reference.painters_logits(model, steps, ids, mask)
            worst_sched = max(worst_sched, float((ours - sched)[real].abs().max()))
            worst_ref = max(worst_ref, float((ours - ref)[real].abs().max()))
        check(row, "runner_vs_scheduled_max_logit_diff", worst_sched, tol / 10)
        check(row, "runner_vs_reference_max_logit_diff", worst_ref, tol)
        row["pass_kv_cache_generation"] = bool(same_tokens)


def step_lm_eval(report: Report, model, tok, tol: float) -> None:
    import numpy as np
    import torch
    from lm_eval.api.instance import Instance

    from layerlab.core.eval import scoring
    from layerlab.core.eval.lm_eval_model import ScoredPositionsLM

    with report.step("lm-eval: ScoredPositionsLM vs scoring.score_full") as row:
        rng = random.Random(5)
        pairs = [(" ".join(rng.choice(WORDS) for _ in range(6 + i % 4)), " " + rng.choice(WORDS)) for i in range(12)]
        lm = ScoredPositionsLM(pretrained=model, tokenizer=tok, batch_size=4,
                               device=str(next(model.parameters()).device), softmax_dtype=torch.float32)
        requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
        with contextlib.redirect_stdout(sys.stderr):
            theirs = np.array([lp for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)])
        ctx, cont = zip(*pairs)
        ours = scoring.score_full(model, scoring.encode(tok, ctx, cont), len(pairs)).logprob
        check(row, "max_loglik_diff", float(np.abs(ours - theirs).max()), tol)


def step_heal(report: Report, model, tok) -> None:
    import torch

    from layerlab.core.model import arch
    from layerlab.prune import healing, blocks as prune

    with report.step("healing: two LoRA steps and the float32 merge (on a pruned copy)") as row:
        n = arch.n_layers(model)
        blocks = list(range(n // 2, n // 2 + max(1, n // 4)))
        if copy_fits(model, 1 - len(blocks) / n):
            work = prune.pruned_copy(model, blocks)
        else:  # the last step: prune the model itself rather than a copy that would not fit
            row["pruned"] = "in place (a copy does not fit beside the model in this machine's memory)"
            prune.drop(model, blocks)
            work = model
        before = arch.weight(work, "mlp_in", 0).read()
        chunks = torch.randint(0, len(tok), (4, 32))
        out = healing.heal(work, chunks, healing.HealConfig(rank=4, steps=2, warmup_steps=1, batch_size=1,
                                                            seq_len=32, learning_rate=1e-2), progress=False)
        healed = out["model"]
        after = arch.weight(healed, "mlp_in", 0).read()
        row.update(losses=out["losses"], dtype=str(after.dtype))
        row["pass_losses_finite"] = all(math.isfinite(x) for x in out["losses"])
        row["pass_merged_in_weights"] = bool(not torch.equal(before, after)) and not any(
            "lora" in name for name, _ in healed.named_parameters())
        row["pass_dtype_kept"] = after.dtype == before.dtype
        del work, healed


# ---------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("gpu", "cpu"), default="gpu",
                        help="gpu: the 7B shape on CUDA (fails without CUDA); cpu: a small model on the CPU")
    parser.add_argument("--shape", choices=tuple(SHAPES), default=None, help="default: 7b on gpu, small on cpu")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (layerlab's rules)")
    parser.add_argument("--items", type=int, default=None, help="LASER items (default 64 on gpu, 16 on cpu)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report")
    parser.add_argument("--skip-pytest", action="store_true", help="do not run tests/test_cuda.py first")
    args = parser.parse_args(argv)

    import torch

    from layerlab.core.model import models

    if args.mode == "gpu" and not torch.cuda.is_available():
        print("gpu-check: --mode gpu needs a CUDA GPU and a CUDA build of torch; none here "
              f"(torch {torch.__version__}). Use --mode cpu for the small CPU run.", file=sys.stderr)
        Path(args.out).write_text(json.dumps({"ok": False, "error": "no CUDA GPU", "torch": torch.__version__}))
        return 2
    device = torch.device("cuda" if args.mode == "gpu" else "cpu")
    shape = args.shape or ("7b" if args.mode == "gpu" else "small")
    dtype = models.resolve_dtype(args.dtype, device)
    dname = str(dtype).removeprefix("torch.")
    report = Report(device, Path(args.out))
    report.info = {"mode": args.mode, "shape": shape, "dtype": dname, "device": str(device),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.perf_counter()
    if args.mode == "gpu" and not args.skip_pytest:
        step_pytest(report)
    model = tok = None
    with report.step(f"build: {shape}-shaped Llama, {dname}, sdpa") as row:
        tok = train_tokenizer(1024 if shape == "7b" else 400)
        model = build_model(shape, dtype, device, tok)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            probe = tok(sentences(2, 10), return_tensors="pt", padding=True)["input_ids"].to(device)
            logits = model(input_ids=probe, use_cache=False).logits.float()
            row["logit_std"], row["logit_max"] = round(float(logits.std()), 3), round(float(logits.abs().max()), 3)
        row["weights_mb"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)
        report.info["weights_mb"] = row["weights_mb"]
    if model is not None:
        tol = REL_TOL[dname] * max(1.0, report.steps[-1]["logit_max"])
        report.info.update(tolerance=tol, tolerance_rule=f"{REL_TOL[dname]} x max |logit|")
        with tempfile.TemporaryDirectory() as tmp:
            step_laser(report, model, tok, tol, Path(tmp), args.items or (64 if args.mode == "gpu" else 16))
        step_prune(report, model, tok, tol, DISTANCE_TOL[dname])
        step_painters(report, model, tok, tol)
        step_lm_eval(report, model, tok, tol)
        step_heal(report, model, tok)
    report.info["seconds"] = round(time.perf_counter() - start, 1)
    report.write()
    ok = all(s["ok"] for s in report.steps)
    print(f"[gpu-check] {'all checks passed' if ok else 'FAILED'}; report: {args.out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
