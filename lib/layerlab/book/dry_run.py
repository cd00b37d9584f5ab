"""The full profile end to end before a GPU runs it.

``python -m layerlab.book --profile full --dry-run`` (``make book PROFILE=full DRY_RUN=1``)
executes every chapter of the full plan through papermill with the full profile's own
grids, variants, loop counts, tasks, datasets and seeds, on tiny random models of each
family the plan uses, and with only the sizes (items, documents, tokens, steps) cut to a
few (``SIZES``); ``scripts/claims_table.py <dir>/results`` then reads every claim of the
comparison page from its results (``make test`` does both: ``tests/test_full_dry_run.py``).
A parameter combination that breaks fails here in minutes, not hours into a GPU run. The
numbers mean nothing (random weights). On them every benchmark is at chance, so the Painters
variants are switched on there (``SWITCHES``); the Hinostroza MMLU map, which runs only where
the unmodified model is above chance, is still skipped (the chapter says so).
"""

from __future__ import annotations

from pathlib import Path

import torch

from layerlab.core.model import embedded

# Each registry model's tiny stand-in: its own config (architecture, tokenizer, special
# tokens, attention pattern, tied head, norms) with only widths and depth shrunk.
DECODER_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16)
ENCODER_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4)
ENCODERS = ("minilm-l6",)

# The parameters a dry run cuts: how much, never which (with ``SWITCHES`` below, the only ones it
# changes). Every other setting is the full profile's own.
SIZES: dict[str, dict] = {
    "laser": dict(limit=5, other_limit=5),  # 5 items: one validation item, four test items (the 20/80 split)
    "laser_sokoban": dict(n_val=1, n_test=2, train_steps=2, n_train=8, n_seeds=2),
    # MMLU's limit is per subject: 2 x 57 items; the held-out loss over a 262k-row head (Gemma 3) was
    # half of a chapter's time at the full profile's 64 x 256 tokens
    "prune": dict(limit=2, heal_steps=1, distance_docs=8, distance_len=32, loss_chunks=4, seq_len=32),
    # the GLUE head is cross-fitted in 5 folds; the per-layer lens over a 262k-row head was 150 s at 64 documents
    "painters": dict(limit=4, gsm8k_limit=1, encoder_limit=24, sim_docs=4),
    "beyond_criteria": dict(docs=4, seq_len=16, fit_tokens=8, n_boot=20, mmlu_limit=2),
    "beyond_sublayers": dict(calib_docs=2, calib_len=16, loss_docs=2, seq_len=16, limit=2),
    "beyond_healing": dict(heal_steps=1, limit=2, distance_docs=8, distance_len=32, loss_chunks=4, seq_len=32),
    "beyond_laser": dict(limits=5),
}


# What a dry run switches on besides sizes, because random weights are at chance on every
# benchmark: the Painters variants run there too (raw accuracies, in no claim), so every schedule
# of the full grid goes through lm-eval.
SWITCHES: dict[str, dict] = {"painters": dict(at_chance="run")}


def tiny_copy(name: str, folder: Path, seed: int = 0) -> Path:
    """``folder/name``: a random-initialised model of registry model ``name``'s family, in
    float32, saved with the real model's tokenizer (built once; reused when present)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    target = Path(folder) / name
    if (target / "config.json").exists():
        return target
    source = embedded.materialise(name)
    config = AutoConfig.from_pretrained(source)
    shape = ENCODER_SHAPE if name in ENCODERS else DECODER_SHAPE
    for key, value in shape.items():
        if hasattr(config, key) or key != "head_dim":
            setattr(config, key, value)
    n_layers = shape["num_hidden_layers"]
    if getattr(config, "layer_types", None):  # Gemma 3: the real sliding / full pattern, cut to n_layers
        config.layer_types = list(config.layer_types)[:n_layers]
    if hasattr(config, "max_window_layers"):
        config.max_window_layers = n_layers
    tokenizer = AutoTokenizer.from_pretrained(source)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    torch.manual_seed(seed)
    model = (AutoModel if name in ENCODERS else AutoModelForCausalLM).from_config(config, dtype=torch.float32)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # a killed build leaves no half-written model behind
    return target


def plan(chapters: list[tuple[str, str, dict]], folder: Path) -> list[tuple[str, str, dict]]:
    """The full plan's (technique, model, parameters) with each registry model replaced by
    its tiny copy (the Painters encoder too) and the chapter's ``SIZES`` applied. Models
    that are not in the registry (the Sokoban agent, trained in the chapter) stay; ``SWITCHES``
    are applied too."""
    def swap(name: str) -> str:
        return str(tiny_copy(name, folder)) if name in embedded.REGISTRY else name

    out = []
    for technique, model, extra in chapters:
        extra = {**extra, **SIZES.get(technique, {}), **SWITCHES.get(technique, {})}
        if extra.get("encoder"):
            extra["encoder"] = swap(extra["encoder"])
        out.append((technique, swap(model), extra))
    return out
