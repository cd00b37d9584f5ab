"""The plan as text: ``chapter_rows`` (each chapter's totals and estimated seconds),
``summary`` (labelled as an estimate, with the device's stated speeds and the assumptions) and
``plan_lines`` (a profile's plan on a device, as ``summary`` prints it)."""

from __future__ import annotations

from .assumptions import ASSUMPTIONS
from .device import DEVICES, Device, device_for, flops, work_seconds
from .inputs import SAMPLE, Context
from .plan import plan_work


def chapter_rows(chapters: list[dict], device: Device) -> list[dict]:
    """``plan_work``'s chapters with their totals and estimated seconds on ``device``."""
    out = []
    for c in chapters:
        works = c["work"]
        f = [flops(w, w.model_shape()) for w in works]
        out.append({**c, "block_tokens": sum(w.block_tokens for w in works),
                    "head_tokens": sum(w.head_tokens for w in works),
                    "train_tokens": sum(w.train_tokens for w in works),
                    "svds": sum(sum(w.svds.values()) for w in works),
                    "host_svds": sum(sum(w.host_svds.values()) for w in works),
                    "flops": sum(x["total"] for x in f), "estimate_s": sum(work_seconds(w, device) for w in works),
                    "per_model": [(w.model, w.block_tokens, work_seconds(w, device)) for w in works],
                    "sources": sorted(set().union(*(w.sources for w in works)) - {"fixed"}),
                    "agent": next((w.agent for w in works if w.agent), {})})
    return out


def summary(rows: list[dict], device: Device) -> str:
    """The plan as text, labelled as an estimate: per chapter its counted work and minutes on
    ``device``, the total, the device's stated speeds and the assumptions."""
    head = (f"[book] plan on {device.name}: estimate from counted work and a stated device speed "
            "(not a measurement)")
    lines = [head, f"[book]   {'chapter':<17}{'model':<20}{'block-tok':>10}{'head-tok':>10}{'train-tok':>10}"
                   f"{'SVDs':>7}{'PFLOP':>9}{'minutes':>9}"]
    for r in rows:
        star = "*" if "chars/4" in r["sources"] else ""
        lines.append(f"[book]   {r['chapter']:<17}{r['model']:<20}{_g(r['block_tokens']):>10}{_g(r['head_tokens']):>10}"
                     f"{_g(r['train_tokens']):>10}{r['svds']:>7}{r['flops'] / 1e15:>9.2f}{r['estimate_s'] / 60:>8.1f}"
                     f"{star}")
        for name, tokens, seconds in r["per_model"][1:]:  # a second model of the chapter (the encoder)
            lines.append(f"[book]     (of which {name}: {_g(tokens)} block-tokens, {seconds / 60:.1f} min)")
        if r["agent"]:
            a = r["agent"]
            lines.append(f"[book]     (agent: {a['train_windows']:,.0f} training windows, "
                         f"{a['rollout_level_steps']:,.0f} rollout level-steps at most, {a['seeds']} seeds)")
    total = sum(r["estimate_s"] for r in rows)
    lines.append(f"[book]   total about {total / 3600:.1f} h ({total / 60:.0f} min) of counted work; model loading, "
                 "lm-eval's set-up, data loading and Python overheads are not counted")
    lines.append(f"[book]   device: {device.basis}")
    sources = sorted({s for r in rows for s in r["sources"]})
    lines.append("[book]   tokens per item: measured on " + f"{SAMPLE} sampled items per dataset with "
                 + ("each model's tokenizer" if sources == ["tokenizer"] else
                    "each model's tokenizer, characters / 4 where marked *" if "tokenizer" in sources else
                    "characters / 4 (no tokenizer available without converting a model)"))
    lines += [f"[book]   assumed: {a}" for a in ASSUMPTIONS]
    return "\n".join(lines)


def _g(x: float) -> str:
    """A count in engineering units (k, M, G, T)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def plan_rows(plan: list[tuple[str, str, dict]], profile: str, device: str = "h100", dtype: str = "auto",
              calibrate=None, ctx: Context | None = None) -> tuple[list[dict], Device]:
    """``plan`` (a profile's (technique, model, parameters), ``build.chapter_plan``'s) counted
    and timed on ``device``: (``chapter_rows``, the ``Device``); ``profile`` names the
    chapters' own grids; ``ctx`` defaults to the device's memory budgets and dtype."""
    if device not in DEVICES:
        raise ValueError(f"device: {device!r} is not one of {', '.join(DEVICES)}")
    if ctx is None:
        ctx = Context(device_type="cuda" if device == "h100" else "cpu", dtype_bytes=dtype_bytes_for(device, dtype))
    chapters = plan_work(plan, profile, ctx)
    target = device_for(device, [w.model for c in chapters for w in c["work"]], dtype, calibrate)
    return chapter_rows(chapters, target), target


def plan_lines(plan: list[tuple[str, str, dict]], profile: str, device: str = "h100", dtype: str = "auto",
               calibrate=None, ctx: Context | None = None) -> str:
    """``plan_rows`` as ``summary`` prints it."""
    return summary(*plan_rows(plan, profile, device, dtype, calibrate, ctx))


def dtype_bytes_for(device: str, dtype: str) -> int:
    """Bytes per weight of the chapters' dtype: bf16 on a GPU ("auto"), else as resolved."""
    if dtype != "auto":
        return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    if device == "h100":
        return 2
    import torch

    from layerlab.core.model import models

    return models.auto_dtype(torch.device("cpu")).itemsize
