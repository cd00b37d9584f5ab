"""A real, slow-enough sweep for the kill-and-resume test.

For every (skipped block, batch seed) of a tiny Llama, the next-token loss with that block
left out, computed through the layer runner and stored through the results store. Each
computed key is appended to LOG before it is stored, so the test can see what ran.

    python sweep_script.py RESULTS_DIR LOG
"""

import sys
import time

import torch

from layerlab.core.io import results
from layerlab.core.model import runner
from tiny import N_LAYERS, tiny_batch, tiny_model

store = results.ResultStore(sys.argv[1])
log_path = sys.argv[2]
model = tiny_model("llama")
points = [(layer, seed) for seed in range(3) for layer in range(N_LAYERS)]
for layer, seed in points:
    key = results.point_key("tiny-llama", "skip-one", {"layer": layer}, "random", f"seed{seed}")
    if store.has("skip-one", key):
        continue
    ids, mask = tiny_batch(seed)
    state = runner.capture(model, ids, mask)
    h = runner.run_blocks(model, state, state.hidden[layer], [j for j in range(layer + 1, N_LAYERS)])
    logits = runner.finish(model, h)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()
    with open(log_path, "a") as f:
        f.write(key + "\n")
    time.sleep(0.4)  # leave room for the kill to land between computing and storing
    store.put("skip-one", key, [{"model": "tiny-llama", "technique": "skip-one", "dataset": "random",
                                  "split": f"seed{seed}", "metric": "loss", "value": loss, "n_items": 3,
                                  "layer": layer}])
