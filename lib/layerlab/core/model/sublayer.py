"""Surgery below the block: run only a block's attention or only its MLP sublayer
(He et al. 2024, "What Matters in Transformers? Not All Attention Is Needed" (LLM-Drop);
Zhang et al. 2024, FinerCut).

A decoder block is two residual sublayers. Per family (``FAMILIES``, keyed by the
Hugging Face ``model_type`` as in ``arch.ARCHS``), with h the residual stream entering the
sublayer, [batch, seq, d_model]:

    attn step   h + attn_post(attn(attn_norm(h), <the block's own other arguments>))
    mlp step    h + mlp_post(mlp(mlp_norm(h)))

* Llama, Mistral, Qwen2/3 (pre-norm, sequential): attn_norm = input_layernorm,
  mlp_norm = post_attention_layernorm; the block is the attn step, then the mlp step.
* Gemma2/3: also a post-attention norm and a post-feed-forward norm on each sublayer's
  output (attn_post = post_attention_layernorm, mlp_norm = pre_feedforward_layernorm,
  mlp_post = post_feedforward_layernorm); sequential.
* GPT-2 (and the Decision Transformer's GPT-2 blocks): ln_1 / ln_2, sequential.
* GPT-J and Phi: *parallel* blocks; attention and MLP both read ln(h) of the block input
  and the block returns h + attn + mlp. "attn only" is h + attn(ln(h)) and "mlp only" is
  h + mlp(ln(h)); the two steps in sequence are then not the block (the MLP would read
  the attention's output): ``parallel(model)`` says which families are parallel.
* GPT-NeoX: input_layernorm / post_attention_layernorm, parallel when
  ``config.use_parallel_residual``.
* Encoders (BERT, RoBERTa: post-norm) are refused (``family``), before any work.

Dropping a sublayer is running the other one only. The attention step takes the
arguments the model passed its block (rotary position embeddings, mask, KV cache):
``runner.run_blocks`` passes the ones captured for that block, scheduled models those
of the position (``schedule.scheduled``), so a repeated or moved sublayer keeps its
block's attention type and gets its own KV-cache slot.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from layerlab.core.model import arch

PARTS = ("attn", "mlp")


@dataclass(frozen=True)
class Family:
    """Where a family's block keeps its sublayers (dotted paths relative to the block).

    attn_post / mlp_post: modules applied to the sublayer's output before it is added
    (Gemma's post norms; NeoX's and Phi's dropouts, identities in eval mode).
    parallel: True, or the name of a boolean config attribute, when attention and MLP
    read the same block input. tuple_output: the block returns (hidden, extra), as
    GPT-J's does, and a scheduled position must answer in that form.
    """

    attn: str
    attn_norm: str
    mlp: str
    mlp_norm: str
    attn_post: tuple[str, ...] = ()
    mlp_post: tuple[str, ...] = ()
    parallel: bool | str = False
    tuple_output: bool = False


_LLAMA = Family("self_attn", "input_layernorm", "mlp", "post_attention_layernorm")
_GEMMA = Family("self_attn", "input_layernorm", "mlp", "pre_feedforward_layernorm",
                attn_post=("post_attention_layernorm",), mlp_post=("post_feedforward_layernorm",))
_GPT2 = Family("attn", "ln_1", "mlp", "ln_2")
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "gemma2": _GEMMA, "gemma3_text": _GEMMA,
    "gpt2": _GPT2, "decision_transformer": _GPT2,
    "gptj": Family("attn", "ln_1", "mlp", "ln_1", parallel=True, tuple_output=True),
    "gpt_neox": Family("attention", "input_layernorm", "mlp", "post_attention_layernorm",
                       attn_post=("post_attention_dropout",), mlp_post=("post_mlp_dropout",),
                       parallel="use_parallel_residual"),
    "phi": Family("self_attn", "input_layernorm", "mlp", "input_layernorm", attn_post=("resid_dropout",),
                  mlp_post=("resid_dropout",), parallel=True),
}
# the modules whose parameters a sublayer owns (for counting what dropping it removes)
_OWNED = {"attn": ("attn", "attn_norm", "attn_post"), "mlp": ("mlp", "mlp_norm", "mlp_post")}


def family(model: nn.Module) -> Family:
    """The sublayer layout of ``model``'s family; ValueError naming the family and the
    supported ones for encoders (post-norm: no residual sublayer of the same form) and
    any family not in ``FAMILIES``."""
    a = arch.arch_of(model)
    if a.is_encoder or a.name not in FAMILIES:
        why = " (a post-norm encoder)" if a.is_encoder else ""
        raise ValueError(f"sublayer steps are not defined for {a.name}{why}; supported model_type values: "
                         f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[a.name]


def check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"sublayer part {part!r} is not one of {', '.join(PARTS)}")


def parallel(model: nn.Module) -> bool:
    """Whether ``model``'s blocks add attention and MLP to the same input (GPT-J, Phi,
    GPT-NeoX with use_parallel_residual): then [attn, mlp] in sequence is not the block."""
    p = family(model).parallel
    return bool(getattr(model.config, p, False)) if isinstance(p, str) else p


def modules(model: nn.Module, block: int, part: str) -> list[nn.Module]:
    """The distinct modules of sublayer ``part`` of block ``block`` (its norm, the
    attention or MLP, post norms); a norm the other part shares (GPT-J's ln_1) is listed
    under both parts."""
    check_part(part)
    spec, b = family(model), arch.blocks(model)[block]
    paths: list[str] = []
    for field in _OWNED[part]:
        value = getattr(spec, field)
        paths += list(value) if isinstance(value, tuple) else [value]
    out: list[nn.Module] = []
    for p in paths:
        m = arch._get(b, p)
        if all(m is not o for o in out):
            out.append(m)
    return out


def n_params(model: nn.Module, block: int, part: str) -> int:
    """Parameters (count) of sublayer ``part`` of block ``block``: what dropping it removes."""
    return sum(p.numel() for m in modules(model, block, part) for p in m.parameters())


@functools.lru_cache(maxsize=64)
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)


def attention_kwargs(block: nn.Module, h: torch.Tensor, rest: tuple, kw: dict) -> dict:
    """The arguments a block passes its attention: every argument the block was called
    with (``rest`` positional after the hidden state, ``kw`` keywords), bound by name to
    the block's signature, except the hidden state and cross-attention inputs."""
    bound = _signature(type(block)).bind(block, h, *rest, **kw).arguments
    params = _signature(type(block)).parameters
    out: dict = {}
    for i, (name, value) in enumerate(bound.items()):
        if i < 2 or name.startswith("encoder_"):  # self, hidden_states
            continue
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif params[name].kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def run(spec: Family, block: nn.Module, part: str, h: torch.Tensor, rest: tuple = (),
        kw: dict | None = None) -> torch.Tensor:
    """One sublayer step of ``block`` on h [batch, seq, d_model]; returns the residual
    stream after it, same shape and dtype. ``rest``/``kw``: the arguments the model passed
    the block (needed by "attn"; "mlp" ignores them)."""
    if part == "attn":
        out = arch._get(block, spec.attn)(arch._get(block, spec.attn_norm)(h), **attention_kwargs(block, h, rest,
                                                                                                  kw or {}))
        out = out[0] if isinstance(out, tuple) else out
        for path in spec.attn_post:
            out = arch._get(block, path)(out)
        return h + out
    if part == "mlp":
        out = arch._get(block, spec.mlp)(arch._get(block, spec.mlp_norm)(h))
        for path in spec.mlp_post:
            out = arch._get(block, path)(out)
        return h + out
    check_part(part)
    raise AssertionError  # unreachable


@torch.no_grad()
def zero_part(model: nn.Module, block_module: nn.Module, part: str) -> None:
    """Make ``block_module`` (a block of ``model``'s family) compute only the *other*
    sublayer, in plain-model form: the output projection of ``part`` (attention's "o",
    the MLP's "mlp_out", weight and bias) is set to zero, so that sublayer adds exactly 0
    (Gemma's post norms map 0 to 0). Used by ``schedule.apply`` (a checkpoint plain
    transformers loads; the zeros are stored, not removed)."""
    check_part(part)
    spec = arch.arch_of(model).matrices["o" if part == "attn" else "mlp_out"]
    linear = arch._get(block_module, spec.path)
    if spec.fused is not None:
        raise ValueError(f"zero_part: {spec.path} is a fused matrix")
    linear.weight.zero_()
    if getattr(linear, "bias", None) is not None:
        linear.bias.zero_()
