"""Architecture adapters: where each supported model family keeps its parts.

One table (``ARCHS``) says, per Hugging Face ``model_type``, where the block list,
token embedding, final norm and output head live, and which module holds each weight
matrix under the names the papers use:

    q, k, v, o        attention query / key / value / output projections
    mlp_in            the MLP's input projection (LASER's U_in: up_proj, fc_in, c_fc, ...)
    gate              the gate projection of gated MLPs (Llama-style), where there is one
    mlp_out           the MLP's output projection (LASER's U_out: down_proj, fc_out, ...)

Every matrix is read and written in ``nn.Linear`` orientation, shape [out_features,
in_features], whatever the storage (GPT-2's Conv1D stores the transpose; GPT-2 and
GPT-NeoX fuse q, k, v into one matrix, of which a reference selects its rows).

Below the block: how each family's block splits into its attention and MLP sublayers
(norms, post norms, sequential or parallel residual) is ``core.sublayer.FAMILIES``, keyed
by the same ``model_type``; encoders have no sublayer steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

MATRIX_TYPES = ("q", "k", "v", "o", "mlp_in", "gate", "mlp_out")


@dataclass(frozen=True)
class MatrixSpec:
    """Where one matrix type lives inside a block.

    ``fused``: (part, n_parts, interleave) for fused qkv matrices. With interleave
    False the parts are contiguous row blocks (GPT-2); with True they alternate per
    attention head (GPT-NeoX: rows laid out [head, part, head_dim]).
    """

    path: str
    conv1d: bool = False
    fused: tuple[int, int, bool] | None = None


@dataclass(frozen=True)
class Arch:
    """Where a model family keeps its parts. Paths are dotted attribute paths:
    ``blocks``, ``embed`` and ``final_norm`` relative to ``model.base_model``;
    ``head`` relative to the top-level model (None for bare encoders)."""

    name: str
    blocks: str
    embed: str
    final_norm: str | None
    head: str | None
    matrices: dict[str, MatrixSpec] = field(default_factory=dict)
    is_encoder: bool = False


def _llama_like(name: str, final_norm: str = "norm") -> Arch:
    return Arch(
        name=name,
        blocks="layers",
        embed="embed_tokens",
        final_norm=final_norm,
        head="lm_head",
        matrices={
            "q": MatrixSpec("self_attn.q_proj"),
            "k": MatrixSpec("self_attn.k_proj"),
            "v": MatrixSpec("self_attn.v_proj"),
            "o": MatrixSpec("self_attn.o_proj"),
            "mlp_in": MatrixSpec("mlp.up_proj"),
            "gate": MatrixSpec("mlp.gate_proj"),
            "mlp_out": MatrixSpec("mlp.down_proj"),
        },
    )


def _bert_like(name: str) -> Arch:
    return Arch(
        name=name,
        blocks="encoder.layer",
        embed="embeddings",
        final_norm=None,
        head=None,
        matrices={
            "q": MatrixSpec("attention.self.query"),
            "k": MatrixSpec("attention.self.key"),
            "v": MatrixSpec("attention.self.value"),
            "o": MatrixSpec("attention.output.dense"),
            "mlp_in": MatrixSpec("intermediate.dense"),
            "mlp_out": MatrixSpec("output.dense"),
        },
        is_encoder=True,
    )


ARCHS: dict[str, Arch] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    "gemma3_text": _llama_like("gemma3_text"),
    "gemma2": _llama_like("gemma2"),
    "gpt2": Arch(
        name="gpt2",
        blocks="h",
        embed="wte",
        final_norm="ln_f",
        head="lm_head",
        matrices={
            "q": MatrixSpec("attn.c_attn", conv1d=True, fused=(0, 3, False)),
            "k": MatrixSpec("attn.c_attn", conv1d=True, fused=(1, 3, False)),
            "v": MatrixSpec("attn.c_attn", conv1d=True, fused=(2, 3, False)),
            "o": MatrixSpec("attn.c_proj", conv1d=True),
            "mlp_in": MatrixSpec("mlp.c_fc", conv1d=True),
            "mlp_out": MatrixSpec("mlp.c_proj", conv1d=True),
        },
    ),
    "gptj": Arch(
        name="gptj",
        blocks="h",
        embed="wte",
        final_norm="ln_f",
        head="lm_head",
        matrices={
            "q": MatrixSpec("attn.q_proj"),
            "k": MatrixSpec("attn.k_proj"),
            "v": MatrixSpec("attn.v_proj"),
            "o": MatrixSpec("attn.out_proj"),
            "mlp_in": MatrixSpec("mlp.fc_in"),
            "mlp_out": MatrixSpec("mlp.fc_out"),
        },
    ),
    "gpt_neox": Arch(
        name="gpt_neox",
        blocks="layers",
        embed="embed_in",
        final_norm="final_layer_norm",
        head="lm_head",
        matrices={
            "q": MatrixSpec("attention.query_key_value", fused=(0, 3, True)),
            "k": MatrixSpec("attention.query_key_value", fused=(1, 3, True)),
            "v": MatrixSpec("attention.query_key_value", fused=(2, 3, True)),
            "o": MatrixSpec("attention.dense"),
            "mlp_in": MatrixSpec("mlp.dense_h_to_4h"),
            "mlp_out": MatrixSpec("mlp.dense_4h_to_h"),
        },
    ),
    "phi": Arch(
        name="phi",
        blocks="layers",
        embed="embed_tokens",
        final_norm="final_layernorm",
        head="lm_head",
        matrices={
            "q": MatrixSpec("self_attn.q_proj"),
            "k": MatrixSpec("self_attn.k_proj"),
            "v": MatrixSpec("self_attn.v_proj"),
            "o": MatrixSpec("self_attn.dense"),
            "mlp_in": MatrixSpec("mlp.fc1"),
            "mlp_out": MatrixSpec("mlp.fc2"),
        },
    ),
    "bert": _bert_like("bert"),
    "roberta": _bert_like("roberta"),
}
# transformers' DecisionTransformerModel (LASER's Sokoban agent): GPT-2 blocks under
# ``encoder``; its "embedding" is the state embedding and its head the action head.
ARCHS["decision_transformer"] = Arch(
    name="decision_transformer",
    blocks="encoder.h",
    embed="embed_state",
    final_norm="encoder.ln_f",
    head="predict_action.0",
    matrices=ARCHS["gpt2"].matrices,
)


def arch_of(model: nn.Module) -> Arch:
    """The adapter for ``model``, chosen by ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHS:
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported model_type values: "
            f"{', '.join(sorted(ARCHS))}"
        )
    return ARCHS[model_type]


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set(root: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        root = getattr(root, part)
    setattr(root, last, value)


def base_model(model: nn.Module) -> nn.Module:
    """The headless transformer inside ``model`` (itself for a bare base model)."""
    return getattr(model, "base_model", model)


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks, in execution order."""
    return _get(base_model(model), arch_of(model).blocks)


def replace_blocks(model: nn.Module, new_blocks: nn.ModuleList) -> None:
    """Swap the block list (no other bookkeeping; see ``prune`` for a full edit)."""
    _set(base_model(model), arch_of(model).blocks, new_blocks)


def n_layers(model: nn.Module) -> int:
    return len(blocks(model))


def embedding(model: nn.Module) -> nn.Module:
    return _get(base_model(model), arch_of(model).embed)


def final_norm(model: nn.Module) -> nn.Module | None:
    path = arch_of(model).final_norm
    return None if path is None else _get(base_model(model), path)


def head(model: nn.Module) -> nn.Module | None:
    """The output head (``lm_head``), or None for a bare encoder."""
    path = arch_of(model).head
    if path is None or not hasattr(model, path.split(".")[0]):
        return None
    return _get(model, path)


def matrix_types(model: nn.Module) -> tuple[str, ...]:
    """The paper names of the matrices this architecture has, in canonical order."""
    have = arch_of(model).matrices
    return tuple(t for t in MATRIX_TYPES if t in have)


@dataclass
class WeightRef:
    """One weight matrix of one block, read and written as [out_features, in_features].

    ``rows``: indices along the output dimension when the matrix is part of a fused one.
    """

    param: nn.Parameter
    conv1d: bool
    rows: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        out_dim, in_dim = (self.param.shape[1], self.param.shape[0]) if self.conv1d else tuple(self.param.shape)
        if self.rows is not None:
            out_dim = len(self.rows)
        return int(out_dim), int(in_dim)

    def read(self) -> torch.Tensor:
        """A copy of the matrix, shape [out, in], in the parameter's dtype."""
        w = self.param.detach()
        w = w.t() if self.conv1d else w
        if self.rows is not None:
            w = w.index_select(0, self.rows)
        return w.clone()

    @torch.no_grad()
    def write(self, value: torch.Tensor) -> None:
        """Overwrite the matrix in place with ``value`` of shape [out, in]."""
        if tuple(value.shape) != self.shape:
            raise ValueError(f"value has shape {tuple(value.shape)}, the matrix has {self.shape}")
        value = value.to(dtype=self.param.dtype, device=self.param.device)
        if self.conv1d:
            target, dim, value = self.param.data, 1, value.t()
        else:
            target, dim = self.param.data, 0
        if self.rows is None:
            target.copy_(value)
        else:
            target.index_copy_(dim, self.rows, value.contiguous())


def _fused_rows(spec: MatrixSpec, total_rows: int, n_heads: int, device: torch.device) -> torch.Tensor:
    part, n_parts, interleave = spec.fused  # type: ignore[misc]
    width = total_rows // n_parts
    if not interleave:
        return torch.arange(part * width, (part + 1) * width, device=device)
    head_dim = width // n_heads
    heads = torch.arange(n_heads, device=device).unsqueeze(1) * (n_parts * head_dim)
    return (heads + part * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


def weight(model: nn.Module, matrix_type: str, layer: int) -> WeightRef:
    """A reference to matrix ``matrix_type`` (a paper name, see MATRIX_TYPES) of block ``layer``."""
    arch = arch_of(model)
    if matrix_type not in arch.matrices:
        raise ValueError(
            f"matrix_type {matrix_type!r} is not available for {arch.name}; "
            f"allowed: {', '.join(matrix_types(model))}"
        )
    block_list = blocks(model)
    if not 0 <= layer < len(block_list):
        raise ValueError(f"layer {layer} out of range; allowed: 0..{len(block_list) - 1}")
    spec = arch.matrices[matrix_type]
    param = _get(block_list[layer], spec.path).weight
    rows = None
    if spec.fused is not None:
        total = param.shape[1] if spec.conv1d else param.shape[0]
        rows = _fused_rows(spec, total, model.config.num_attention_heads, param.device)
    return WeightRef(param=param, conv1d=spec.conv1d, rows=rows)


def layer_types(model: nn.Module) -> list[str] | None:
    """Per-block attention kinds (Gemma: 'sliding_attention' / 'full_attention'), if any."""
    types = getattr(model.config, "layer_types", None)
    return list(types) if types is not None else None
