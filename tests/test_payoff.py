"""The pruned checkpoint's cost is measured where the model runs (the device type of the
model the key's runtime describes), from a copy built on the CPU."""

import pytest
import torch

from layerlab.core.model import arch
from layerlab.prune import payoff, blocks as prune
from tiny import tiny_model


def test_measure_checkpoint_runs_on_the_models_device_type_and_says_where(tmp_path):
    model = prune.pruned_copy(tiny_model("llama"), [1], device="cpu")
    m = payoff.measure_checkpoint(model, tmp_path / "ckpt", n_new_tokens=4)
    assert m["measured_on"] == "cpu" and m["layers"] == arch.n_layers(model) == 3
    assert m["tokens_per_s"] > 0 and m["peak_rss_mb"] > 0 and m["checkpoint_mb"] > 0
    if not torch.cuda.is_available():
        with pytest.raises(Exception):  # asked for a GPU that is not there: no silent CPU timing
            payoff.measure_checkpoint(model, tmp_path / "ckpt2", n_new_tokens=4, device="cuda")
