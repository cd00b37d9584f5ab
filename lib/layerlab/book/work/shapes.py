"""Model shapes from config.json only (no weights): ``Shape`` (a transformer's sizes and
the weights of one block), ``model_shape`` (a registry model's cache or folder, a local folder,
``KNOWN_SHAPES``, else ``AutoConfig``) and the Sokoban agent's ``agent_shape``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from layerlab.book.estimate import AGENT  # the Sokoban chapter's model name


@dataclass(frozen=True)
class Shape:
    """A transformer's sizes (from its config.json). ``vocab``: rows of the output head
    (0: none); ``gated``: three MLP matrices (gate, up, down) rather than two."""

    name: str
    family: str            # arch.ARCHS key (the config's model_type)
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    gated: bool = True
    encoder: bool = False

    @property
    def matrices(self) -> dict[str, tuple[int, int]]:
        """Matrix type -> (out, in) of one block's weight, for the types the family has."""
        from layerlab.core.model import arch

        d, q, kv, ff = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        every = {"q": (q, d), "k": (kv, d), "v": (kv, d), "o": (d, q), "mlp_in": (ff, d), "gate": (ff, d),
                 "mlp_out": (d, ff)}
        have = arch.ARCHS[self.family].matrices if self.family in arch.ARCHS else every
        return {t: every[t] for t in arch.MATRIX_TYPES if t in have}

    @property
    def matrix_types(self) -> tuple[str, ...]:
        return tuple(self.matrices)

    @property
    def attn_params(self) -> int:
        """Weights of one block's attention (q, k, v, o; biases and norms left out)."""
        return sum(m * n for t, (m, n) in self.matrices.items() if t in ("q", "k", "v", "o"))

    @property
    def mlp_params(self) -> int:
        return (3 if self.gated else 2) * self.hidden * self.intermediate

    @property
    def block_params(self) -> int:
        return self.attn_params + self.mlp_params

    @property
    def attn_fraction(self) -> float:
        return self.attn_params / self.block_params

    def forward_flops_per_token(self, context: float, head: bool = True) -> float:
        """FLOPs of one token through every block (and the head) with ``context`` keys
        attended per block: 2 x weights + 4 x heads x head_dim x context per block."""
        per_block = 2 * self.block_params + 4 * self.heads * self.head_dim * context
        return self.layers * per_block + (2 * self.vocab * self.hidden if head else 0)


# the registry models' config.json (as ``embedded`` converts them), for a machine without the cache
KNOWN_SHAPES = {
    "smollm2-135m": Shape("smollm2-135m", "llama", 30, 576, 1536, 49152, 9, 3, 64),
    "gemma3-270m": Shape("gemma3-270m", "gemma3_text", 18, 640, 2048, 262144, 4, 1, 256),
    "qwen2.5-coder-1.5b": Shape("qwen2.5-coder-1.5b", "qwen2", 28, 1536, 8960, 151936, 12, 2, 128),
    "minilm-l6": Shape("minilm-l6", "bert", 6, 384, 1536, 0, 12, 12, 32, gated=False, encoder=True),
}


def shape_from_config(name: str, cfg: dict) -> Shape:
    """A ``Shape`` from a transformers config dict (config.json)."""
    model_type = cfg.get("model_type", "")
    heads = cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    encoder = model_type in ("bert", "roberta")
    return Shape(name, model_type, cfg["num_hidden_layers"], hidden, cfg["intermediate_size"],
                 0 if encoder else cfg["vocab_size"], heads, cfg.get("num_key_value_heads") or heads,
                 cfg.get("head_dim") or hidden // heads, gated=model_type not in ("bert", "roberta", "gpt2"),
                 encoder=encoder)


def local_folder(name: str) -> Path | None:
    """The folder holding ``name``'s config and tokenizer, if it exists without converting
    anything: a registry folder package, a registry model's converted cache, a local path."""
    from layerlab.core.model import embedded

    entry = embedded.REGISTRY.get(name)
    if entry is not None:
        try:
            folder = embedded.materialise(name) if entry.kind == "folder" else embedded.cache_dir() / name
        except ModuleNotFoundError:
            return None
        return folder if (folder / "config.json").exists() else None
    path = Path(name).expanduser()
    return path if (path / "config.json").exists() else None


def model_shape(name: str) -> Shape:
    """``name``'s shape from its config.json (no weights are read): a registry model's
    converted cache or folder, a local folder, ``KNOWN_SHAPES`` for a registry model not
    converted here, else ``AutoConfig`` (a Hugging Face id)."""
    if name == AGENT:
        return agent_shape(sokoban_config("full")["agent"])
    folder = local_folder(name)
    if folder is not None:
        return shape_from_config(name, json.loads((folder / "config.json").read_text()))
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    from transformers import AutoConfig

    return shape_from_config(name, AutoConfig.from_pretrained(name).to_dict())


def agent_shape(agent) -> Shape:
    """The Sokoban Decision Transformer's GPT-2 blocks (``sokoban.agent.build_model``):
    width, depth, heads, MLP 4 x width; its head is the 4-way action head."""
    return Shape(AGENT, "decision_transformer", agent.depth, agent.width, 4 * agent.width, 4, agent.heads,
                 agent.heads, agent.width // agent.heads, gated=False)


def sokoban_config(profile: str) -> dict:
    from layerlab.laser.sokoban import chapter

    return chapter.profile_config(profile)
