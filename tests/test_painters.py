import numpy as np
import pandas as pd
import pytest
import torch

from layerlab import painters, runner, schedule
from layerlab.painters import Spec
from tiny import N_LAYERS, tiny_batch, tiny_model


class PairTokenizer:
    """Character-level stand-in for a BERT tokenizer: (text_a, text_b) -> padded ids."""

    def __call__(self, a, b=None, return_tensors="pt", padding=True, truncation=True, max_length=64):
        rows = [[3 + ord(c) % 90 for c in x][:max_length] + ([2] + [3 + ord(c) % 90 for c in y][:8] if b else [])
                for x, y in zip(a, b or [None] * len(a))]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return type("Enc", (), {"input_ids": ids, "attention_mask": mask})()


def test_specs_cover_variants_seeds_and_loops():
    s = painters.specs(10, [4], ["skip", "random", "looped_parallel"], seeds=[0, 1, 2], loop_counts=[1, 2, 3])
    assert s[0] == Spec("base")
    assert [x.variant for x in s[1:]] == ["skip", "random", "random", "random", "looped_parallel", "looped_parallel"]
    assert {x.n_outer for x in s[1:]} == {3}
    with pytest.raises(ValueError, match="affected: 3 must be in 1..9 with the parity of 10"):
        painters.specs(10, [3], ["skip"], [0], [1])
    with pytest.raises(ValueError, match="variants: 'shuffle' is not one of"):
        painters.specs(10, [4], ["shuffle"], [0], [1])


def test_normalisation_maps_chance_to_zero_and_base_to_one():
    rows = []
    for variant, seed, arc, wino in (("base", 0, 0.55, 0.60), ("skip", 0, 0.25, 0.50), ("random", 0, 0.40, 0.55),
                                     ("random", 1, 0.50, 0.55)):
        for ds, v in (("arc_easy", arc), ("winogrande", wino)):
            rows.append({"variant": variant, "seed": seed, "affected": 0 if variant == "base" else 4, "n_outer": 3,
                         "loops": 1, "dataset": ds, "metric": "acc", "value": v, "ci_low": v - .04, "ci_high": v + .04,
                         "n_items": 50})
    norm = painters.normalise(pd.DataFrame(rows)).set_index(["variant", "dataset"])
    assert norm.loc[("base", "arc_easy"), "normalised"] == pytest.approx(1.0)
    assert norm.loc[("skip", "arc_easy"), "normalised"] == pytest.approx(0.0)
    assert norm.loc[("skip", "winogrande"), "normalised"] == pytest.approx(0.0)
    assert norm.loc[("random", "arc_easy"), "normalised"] == pytest.approx(((0.4 - .25) / .3 + (0.5 - .25) / .3) / 2)
    assert norm.loc[("random", "arc_easy"), "seeds"] == 2
    med = painters.median_score(painters.normalise(pd.DataFrame(rows))).set_index("variant")["normalised"]
    assert med["base"] == pytest.approx(1.0)
    # a benchmark on which the unmodified model is at chance cannot be normalised: it is left out
    at_chance = pd.DataFrame(rows).assign(ci_low=lambda d: d["value"] - 0.2)
    assert painters.informative(at_chance) == ["arc_easy"]
    assert set(painters.normalise(at_chance)["dataset"]) == {"arc_easy"}


def test_encoder_features_with_a_shared_prefix_match_a_full_run():
    model = tiny_model("bert")
    tok = PairTokenizer()
    a = ["the cat sat", "a dog ran far", "birds", "hello world again"]
    b = ["on a mat", "home", "fly south", "and again"]
    specs = [Spec("base"), Spec("reverse", 1), Spec("looped_parallel", 1, loops=2)]
    feats = painters.encoder_features(model, tok, a, b, specs, batch_size=3)
    enc = tok(a, b)
    state = runner.capture(model, enc.input_ids, enc.attention_mask)
    mask = enc.attention_mask.unsqueeze(-1).float()
    for s in specs:  # reference: every block from the embeddings, no prefix reuse
        h = runner.run_blocks(model, state, state.hidden[0], schedule.as_runner_steps(s.steps(N_LAYERS)))
        ref = ((h * mask).sum(1) / mask.sum(1)).numpy()
        np.testing.assert_allclose(feats[s], ref, atol=1e-5)
    assert not np.allclose(feats[specs[0]], feats[specs[1]])


def test_probe_learns_a_separable_task_and_reports_intervals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] > 0).astype(int)
    r = painters.probe(x, y, "classification")
    assert r["value"] > 0.9 and r["ci_low"] <= r["value"] <= r["ci_high"] and r["n_items"] == 200
    score = x[:, 1] * 2 + rng.normal(scale=0.1, size=200)
    train = np.arange(200) < 150
    r = painters.probe(x, score, "regression", train=train)
    assert r["metric"] == "spearman" and r["value"] > 0.9 and r["n_items"] == 50


def test_layer_sensitivity_matches_an_independent_edit():
    from layerlab import prune
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    sens = painters.layer_sensitivity(model, ids, mask)
    assert len(sens) == 2 * N_LAYERS - 1
    with prune.dropped(model, [2]):  # a real edit, the model's own forward pass
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    ref = float(ce.view(ids.shape[0], -1)[mask[:, 1:].bool()].mean()) / np.log(97)
    got = sens[(sens.layer == 2) & (sens.variant == "skip")]["loss_norm"].iloc[0]
    assert got == pytest.approx(ref, rel=1e-5)
