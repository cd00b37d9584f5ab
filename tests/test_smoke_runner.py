"""The layer runner on the real embedded models (smoke)."""

import pytest
import torch

import layerlab
from layerlab.core.model import runner


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_runner_identity_on_embedded_model(name):
    model, tok = layerlab.load(name)
    batch = tok(["The Eiffel Tower is in the city of", "Water boils at a temperature of one hundred"],
                return_tensors="pt", padding=True)
    reference = runner.full_logits(model, batch.input_ids, batch.attention_mask)
    state = runner.capture(model, batch.input_ids, batch.attention_mask)
    real = batch.attention_mask.bool()
    for layer in range(0, state.n_layers + 1, 3):
        diff = (runner.run_from(model, state, layer) - reference)[real].abs().max().item()
        assert diff <= 1e-5, f"{name}: from block {layer}, max abs diff {diff}"
