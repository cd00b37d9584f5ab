"""From counted work to time: ``flops`` (FLOPs of a ``Work``), ``estimate_seconds``, the
``Device`` speeds (``H100``: stated; ``cpu_device``: calibrated here), ``device_for`` and
``work_seconds`` (an estimate, not a measurement)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .counts import TRAIN_FACTOR, Work, svd_flops, svdvals_flops
from .shapes import AGENT, Shape, agent_shape, model_shape, sokoban_config


def flops(work: Work, shape: Shape) -> dict[str, float]:
    """FLOPs of counted work (``shape``: its model's): blocks 2 x block weights x
    block_tokens; attention 4 x heads x head_dim x attn_pairs (x 2 for an encoder, which
    attends both ways); head 2 x vocab x hidden x head_tokens; train ``work.train_factor`` x
    the same terms of the training counts; svd ``svd_flops`` per SVD; host the CPU-side
    float64 spectra and fits. ``device``: what runs on the model's device."""
    per_block = 2.0 * shape.block_params
    attn = 4.0 * shape.heads * shape.head_dim * (2 if shape.encoder else 1)
    head = 2.0 * shape.vocab * shape.hidden
    out = {"blocks": per_block * work.block_tokens, "attention": attn * work.attn_pairs,
           "head": head * work.head_tokens,
           "train": (work.train_factor or TRAIN_FACTOR) * (per_block * work.train_block_tokens + attn * work.train_attn_pairs
                                    + head * work.train_head_tokens),
           "other": work.other_flops,
           "svd": sum(svd_flops(m, n) * c for (m, n), c in work.svds.items()),
           "host": work.host_flops + sum(svdvals_flops(m, n) * c for (m, n), c in work.host_svds.items())}
    out["device"] = out["blocks"] + out["attention"] + out["head"] + out["train"] + out["other"]
    out["total"] = out["device"] + out["svd"] + out["host"]
    return out


def estimate_seconds(flops: float, device_flops: float) -> float:
    """Seconds of ``flops`` at ``device_flops`` FLOP/s (a stated or calibrated speed)."""
    if not device_flops or device_flops <= 0:
        raise ValueError(f"device_flops: {device_flops!r} must be a speed > 0 (FLOP/s)")
    return flops / device_flops


@dataclass(frozen=True)
class Device:
    """A device's stated (or calibrated) speeds. ``flops``: sustained FLOP/s of the chapters'
    forward and backward passes, or ``by_model`` per model (a CPU's speed depends on the
    model's matrix sizes); ``svd_flops``: of SVDs on the device; ``host_flops``: of the
    float64 work on the host CPU; ``block_call_s``: seconds per block call, the floor set by
    kernel-launch latency (0: none); ``basis``: where the numbers come from."""

    name: str
    flops: float
    svd_flops: float
    host_flops: float
    block_call_s: float = 0.0
    basis: str = ""
    by_model: dict = field(default_factory=dict)

    def speed(self, model: str) -> float:
        return self.by_model.get(model, self.flops)


H100_PEAK_BF16 = 989e12   # FLOP/s, H100 SXM dense bf16 (NVIDIA's datasheet; 1979 is with sparsity)
H100_SUSTAINED = 0.25     # assumed share of peak for these small-batch passes of 0.1-1.5B models
H100 = Device(
    name="one NVIDIA H100 SXM (stated speed, not measured)",
    flops=H100_PEAK_BF16 * H100_SUSTAINED, svd_flops=2e11, host_flops=5e10, block_call_s=2e-4,
    basis=("assumed: bf16 dense peak 989 TFLOP/s x 0.25 sustained (small matrices: hidden 576-1536, batches of "
           "~4k tokens); SVDs at 200 GFLOP/s (cuSOLVER's fp32 SVD is bound by its bidiagonalisation, far below "
           "peak); host float64 work at 50 GFLOP/s; at least 0.2 ms per block call (eager PyTorch launches "
           "~20-30 kernels per block: the floor that small models and decoding hit)"))
DEVICES = ("h100", "cpu")
CPU_SVD_SHARE = 0.5  # assumed: LAPACK's SVD at half the CPU's float32 matmul speed


def cpu_device(models: Iterable[str], dtype: str = "auto", calibrate=None, matmul=None) -> Device:
    """This CPU, calibrated: per model its forward-pass tokens per second
    (``estimate.tokens_per_second``, 4 x 256 tokens, head at every position) x the FLOPs of
    such a token (``Shape.forward_flops_per_token``); the Sokoban agent's training windows
    per second x a window's FLOPs; SVDs and host work at the float32 matmul speed
    (``estimate.matmul_gflops``, SVDs at ``CPU_SVD_SHARE`` of it). Loads each model once."""
    from layerlab.book import estimate

    calibrate = calibrate or estimate.tokens_per_second
    matmul = matmul or estimate.matmul_gflops
    by_model = {}
    for model in dict.fromkeys(models):
        speed = calibrate(model, dtype)
        if model == AGENT:
            agent = sokoban_config("quick")["agent"]  # agent_windows_per_second times the quick agent
            shape = agent_shape(agent)
            window = 3 * agent.context
            per = TRAIN_FACTOR * window * shape.forward_flops_per_token((window + 1) / 2, head=False)
            by_model[model] = speed * per
        else:
            shape = model_shape(model)
            length = estimate.CALIBRATION_TOKENS[1]
            by_model[model] = speed * shape.forward_flops_per_token((length + 1) / 2, head=shape.vocab > 0)
    gflops = matmul() * 1e9
    return Device(name="this CPU (calibrated here)", flops=gflops, svd_flops=gflops * CPU_SVD_SHARE, host_flops=gflops,
                  basis=("calibrated: each model's forward tokens/s (estimate.tokens_per_second) x FLOPs per "
                         f"token; SVDs at {CPU_SVD_SHARE:g} x the float32 matmul speed (assumed)"), by_model=by_model)


def device_for(name: str, models: Iterable[str] = (), dtype: str = "auto", calibrate=None) -> Device:
    """The ``Device`` named ``name`` ("h100": stated; "cpu": calibrated on ``models``)."""
    if name not in DEVICES:
        raise ValueError(f"device: {name!r} is not one of {', '.join(DEVICES)}")
    return H100 if name == "h100" else cpu_device(models, dtype, calibrate)


def work_seconds(work: Work, device: Device) -> float:
    """Seconds of one model's work on ``device``: its device FLOPs at the model's speed, or
    its block calls at the launch floor if that is longer, plus SVDs and host work."""
    f = flops(work, work.model_shape())
    compute = estimate_seconds(f["device"], device.speed(work.model)) if f["device"] else 0.0
    return (max(compute, work.block_calls * device.block_call_s) + estimate_seconds(f["svd"], device.svd_flops)
            + estimate_seconds(f["host"], device.host_flops))
