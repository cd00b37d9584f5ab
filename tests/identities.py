"""The library's exact identities, written once and checked on any device and dtype.

Each check builds a tiny random model on ``device`` in ``dtype`` and returns what the
tests compare (max abs differences, or booleans for bit-exact restores). test_dtypes.py
runs them in bfloat16 on the CPU (how CI checks the non-fp32 path); test_cuda.py runs
them on a CUDA GPU.

Tolerances (``TOL``) are absolute differences of logits or per-token nll, stated per
dtype: float32 round-off is ~1e-6; bfloat16 keeps 8 bits of mantissa, so two orders of
the same arithmetic may differ by a few units in the last place of values of size ~1-5
(~0.03), and each identity is checked against that bound, not against zero.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from layerlab.core.model import arch, runner, schedule
from layerlab.core.io import results
from layerlab.core.eval import scoring
from layerlab.laser import sweep as laser, rank
from layerlab.prune import blocks as prune
from layerlab.core.model.schedule import Parallel
from tiny import N_LAYERS, CharTokenizer, facts_file, tiny_batch, tiny_model

TOL = {torch.float32: 1e-5, torch.bfloat16: 0.05, torch.float16: 0.01}


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes (bit-exact comparison in any dtype)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _real(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool()


def runner_vs_forward(name: str, dtype: torch.dtype, device) -> float:
    """Largest |logit difference| between run_from(l) and the model's own forward, over l."""
    model = tiny_model(name, dtype=dtype, device=device)
    ids, mask = (t.to(device) for t in tiny_batch())
    ref = runner.full_logits(model, ids, mask)
    state = runner.capture(model, ids, mask)
    return max(float((runner.run_from(model, state, layer) - ref)[_real(mask)].abs().max())
               for layer in range(N_LAYERS + 1))


def prefix_laser_vs_edited_forward(tmp_path, dtype: torch.dtype, device) -> tuple[float, float]:
    """LASER per-item nll from the prefix-cached scorer against an edited model's own
    forward pass: (max |nll difference|, share of items whose correctness agrees)."""
    model = tiny_model("llama", dtype=dtype, device=device)
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, CharTokenizer(), "tiny", task, results.ResultStore(tmp_path / "r"),
                            max_tokens_per_batch=64)
    worst, agree = 0.0, []
    for red in ([], [rank.Reduction("mlp_in", 2, 0.1)], [rank.Reduction("o", 3, 0.2), rank.Reduction("q", 1, 0.5)]):
        got = sweeper.per_item(red)
        with rank.reduced(model, red):
            ref = laser.item_metrics(task, scoring.score_full(model, sweeper.scorer.batches, len(task.contexts)))
        worst = max(worst, float(np.abs(got["nll"].to_numpy() - ref["nll"].to_numpy()).max()))
        agree.append(float((got["correct"] == ref["correct"]).mean()))
    return worst, min(agree)


def restores_bit_for_bit(dtype: torch.dtype, device) -> bool:
    """Reductions, drops and schedules leave every parameter bit-identical when they end."""
    model = tiny_model("gemma3_text", dtype=dtype, device=device)
    before = state_hash(model)
    reds = [rank.Reduction(t, layer, 0.25) for t in ("q", "mlp_in", "mlp_out") for layer in (0, 3)]
    with rank.reduced(model, reds):
        changed = state_hash(model) != before
        w = arch.weight(model, "mlp_in", 0).read()
        in_dtype = w.dtype == dtype and w.device.type == torch.device(device).type
    with prune.dropped(model, [1, 2]):
        pass
    with schedule.scheduled(model, [3, Parallel((1, 2), 2), 0]):
        pass
    return changed and in_dtype and state_hash(model) == before


def schedule_identities(name: str, dtype: torch.dtype, device) -> tuple[float, float]:
    """(in-order schedule vs forward, scheduled model vs runner on a looped-parallel
    schedule): max |logit difference| each."""
    model = tiny_model(name, dtype=dtype, device=device)
    ids, mask = (t.to(device) for t in tiny_batch())
    real = _real(mask)
    ref = runner.full_logits(model, ids, mask)
    state = runner.capture(model, ids, mask)
    in_order = runner.finish(model, runner.run_blocks(model, state, state.hidden[0],
                                                      schedule.in_order(N_LAYERS)))
    steps = [0, Parallel((1, 2), 3), 2, 3]
    expected = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps))
    with schedule.scheduled(model, steps):
        got = runner.full_logits(model, ids, mask)
    return float((in_order - ref)[real].abs().max()), float((got - expected)[real].abs().max())


def kv_cache_identity(name: str, dtype: torch.dtype, device) -> float:
    """A pruned and a scheduled model, each decoding 6 tokens: the largest |logit
    difference| between the KV-cached and the uncached generation of the same tokens."""
    worst = 0.0
    model = tiny_model(name, dtype=dtype, device=device)
    prompt = tiny_batch(batch=1, seq=8)[0].to(device)
    for edit in (lambda m: prune.dropped(m, [1]), lambda m: schedule.scheduled(m, [0, 2, 2, Parallel((1, 3), 2)])):
        with edit(model), torch.no_grad():
            out = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
            cached = torch.stack(out.logits, 1)
            full = model(input_ids=out.sequences[:, :-1], use_cache=False).logits[:, prompt.shape[1] - 1:]
        worst = max(worst, float((cached - full).abs().max()))
    return worst
