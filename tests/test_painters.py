import numpy as np
import pandas as pd
import pytest
import torch

from layerlab.painters import grid as painters, encoder as painters_encoder, run as painters_run
from layerlab.core.io import results
from layerlab.core.model import runner
from layerlab.painters.grid import Spec
from tiny import N_LAYERS, tiny_batch, tiny_model


class PairTokenizer:
    """Character-level stand-in for a BERT tokenizer: (text_a, text_b) -> padded ids."""

    def __call__(self, a, b=None, return_tensors="pt", padding=True, truncation=True, max_length=64):
        rows = [[3 + ord(c) % 90 for c in x][:max_length] + ([2] + [3 + ord(c) % 90 for c in y][:8] if b else [])
                for x, y in zip(a, b or [None] * len(a))]
        rows = [r[:max_length] for r in rows]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return type("Enc", (), {"input_ids": ids, "attention_mask": mask})()


def test_specs_cover_variants_seeds_and_loops():
    s = painters.specs(10, [4], ["skip", "random", "looped_parallel"], order_seeds=[0, 1, 2], loop_counts=[1, 2, 3])
    assert s[0] == Spec("base")
    assert [x.variant for x in s[1:]] == ["skip", "random", "random", "random", "looped_parallel", "looped_parallel"]
    assert {x.n_outer for x in s[1:]} == {3}
    with pytest.raises(ValueError, match="affected: 3 must be in 1..9 with the parity of 10"):
        painters.specs(10, [3], ["skip"], [0], [1])
    with pytest.raises(ValueError, match="variants: 'shuffle' is not one of"):
        painters.specs(10, [4], ["shuffle"], [0], [1])


def test_normalisation_maps_chance_to_zero_and_base_to_one():
    rows = []
    for variant, order_seed, arc, wino in (("base", 0, 0.55, 0.60), ("skip", 0, 0.25, 0.50), ("random", 0, 0.40, 0.55),
                                     ("random", 1, 0.50, 0.55)):
        for ds, v in (("arc_easy", arc), ("winogrande", wino)):
            rows.append({"variant": variant, "order_seed": order_seed, "affected": 0 if variant == "base" else 4, "n_outer": 3,
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
    feats = painters_encoder.encoder_features(model, tok, a, b, specs, batch_size=3)
    enc = tok(a, b)
    state = runner.capture(model, enc.input_ids, enc.attention_mask)
    mask = enc.attention_mask.unsqueeze(-1).float()
    for s in specs:  # reference: every block from the embeddings, no prefix reuse
        h = runner.run_blocks(model, state, state.hidden[0], s.steps(N_LAYERS))
        ref = ((h * mask).sum(1) / mask.sum(1)).numpy()
        np.testing.assert_allclose(feats[s], ref, atol=1e-5)
    assert not np.allclose(feats[specs[0]], feats[specs[1]])


def test_variants_run_only_on_the_rows_their_fixed_head_predicts():
    model = tiny_model("bert")
    tok = PairTokenizer()
    items = [{"text_a": a, "text_b": b} for a, b in (("the cat sat", "on a mat"), ("a dog ran far", "home"),
                                                      ("birds", "fly south"), ("hello world again", "and again"),
                                                      ("one more", "pair here"))]
    specs = [Spec("base"), Spec("reverse", 1), Spec("skip", 1)]
    train = np.array([True, False, True, False, False])
    feats = painters_encoder._features(model, tok, items, specs, specs[0], train)
    full = painters_encoder.encoder_features(model, tok, [r["text_a"] for r in items], [r["text_b"] for r in items], specs)
    np.testing.assert_allclose(feats[specs[0]], full[specs[0]], atol=1e-5)  # the head's train rows: unmodified only
    for s in specs[1:]:
        assert np.isnan(feats[s][train]).all()
        np.testing.assert_allclose(feats[s][~train], full[s][~train], atol=1e-5)
    # cross-fitted (no train rows): every spec on every row
    every = painters_encoder._features(model, tok, items, specs, specs[0], None)
    assert not any(np.isnan(f).any() for f in every.values())


def test_fixed_head_is_trained_once_on_the_unmodified_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] > 0).astype(int)
    base, moved = Spec("base"), Spec("reverse", 1)
    # the variant moves the information to another coordinate: a refitted probe would still
    # read it, the head trained on the unmodified features cannot
    feats = {base: x, moved: np.c_[x[:, 1:2], x[:, 0:1], x[:, 2:]]}
    preds = painters_encoder.fixed_head_predictions(feats, base, y, "classification", seed=0)
    idx, p = preds[base]
    assert sorted(idx) == list(range(300))  # cross-fitted: every item predicted once out of fold
    assert (p == y[idx]).mean() > 0.9
    idx, p = preds[moved]
    assert (p == y[idx]).mean() < 0.7
    train = np.arange(300) < 200
    idx, p = painters_encoder.fixed_head_predictions(feats, base, x[:, 1] * 2, "regression", train)[base]
    r = painters_encoder.score(p, x[idx, 1] * 2, "regression")
    assert r["metric"] == "spearman" and r["value"] > 0.9 and r["n_items"] == 100 and r["ci_low"] <= r["value"]


def test_glue_average_is_unnormalised_mean_and_normalised_mean():
    rows = [dict(variant=v, affected=a, loops=1, order_seed=0, dataset=d, value=val)
            for v, a, vals in (("base", 0, (0.9, 0.7, 0.8)), ("skip", 2, (0.7, 0.6, 0.4)))
            for d, val in zip(("sst2", "rte", "stsb"), vals)]
    g = painters_encoder.glue_average(pd.DataFrame(rows)).set_index("variant")
    assert g.loc["base", "glue_average"] == pytest.approx(80.0)
    assert g.loc["skip", "glue_average"] == pytest.approx(100 * (0.7 + 0.6 + 0.4) / 3)
    assert g.loc["skip", "glue_normalised"] == pytest.approx(np.mean([0.2 / 0.4, 0.1 / 0.2, 0.4 / 0.8]))


def test_keys_carry_the_seeds_and_the_item_sample():
    rt = {"dtype": "float32", "device": "cpu"}
    k = painters.point_key("m", Spec("random", 2, order_seed=1), "arc_easy", 16, rt, seed=0)
    assert k != painters.point_key("m", Spec("random", 2, order_seed=1), "arc_easy", 16, rt, seed=1)
    assert k != painters.point_key("m", Spec("random", 2, order_seed=0), "arc_easy", 16, rt, seed=0)
    assert k != painters.point_key("m", Spec("random", 2, order_seed=1), "arc_easy", 32, rt, seed=0)
    items = [{"id": 1, "text_a": "a", "text_b": None}, {"id": 2, "text_a": "b", "text_b": None}]
    h = painters_encoder.items_hash(items, None, "sst2")
    assert h != painters_encoder.items_hash(items[:1], None, "sst2")
    assert h != painters_encoder.items_hash(items, np.array([True, False]), "sst2")
    e = painters_encoder.point_key("enc", Spec("skip", 2), "sst2", 60, 0, h, rt)
    assert e != painters_encoder.point_key("enc", Spec("skip", 2), "sst2", 60, 1, h, rt)
    assert e != painters_encoder.point_key("enc", Spec("skip", 2), "sst2", 60, 0, painters_encoder.items_hash(items[:1], None, "sst2"), rt)


def test_item_rows_keep_the_main_metric_and_its_filter():
    out = {"samples": {"layerlab_arc_easy": [{"doc_id": 0, "filter": "none", "acc": 1.0, "acc_norm": 0.0},
                                             {"doc_id": 1, "filter": "none", "acc": 0.0, "acc_norm": 1.0}],
                       "layerlab_gsm8k": [{"doc_id": 0, "filter": "strict-match", "exact_match": 0.0},
                                          {"doc_id": 0, "filter": "flexible-extract", "exact_match": 1.0}]}}
    r = painters.item_rows(out, ["arc_easy", "gsm8k"])
    assert list(r[r.dataset == "arc_easy"]["value"]) == [1.0, 0.0]  # hellaswag would use acc_norm
    assert list(r[r.dataset == "gsm8k"]["value"]) == [1.0] and r[r.dataset == "gsm8k"]["metric"].iloc[0] == painters.MAIN_METRIC["gsm8k"]


def test_profiles_put_the_per_layer_lens_in_full_only():
    assert not painters_run.config("quick")["layer_sensitivity"] and painters_run.config("full")["layer_sensitivity"]
    assert painters_run.config("smoke", limit=3)["limit"] == 3
    with pytest.raises(ValueError, match="profile"):
        painters_run.config("huge")
    assert painters_run.sizes(30, None) == [8, 16, 24]


@pytest.mark.smoke
def test_evaluate_matches_lm_eval_on_the_unscheduled_and_the_edited_model(tmp_path):
    """The identity schedule scores as the plain model; skipping the middle scores as the
    model with those blocks really dropped (independent computations through lm-eval)."""
    import layerlab
    from layerlab.core.eval import evaluation
    from layerlab.prune import blocks as prune
    lm, tok = layerlab.load("smollm2-135m")
    store = results.ResultStore(tmp_path)
    limits = {"arc_easy": 8}
    got = painters.evaluate(lm, tok, "smollm2", store, Spec("base"), ["arc_easy"], limits, batch_size=8)
    ref, _ = evaluation.lm_eval(lm, tok, ["arc_easy"], limit=8, batch_size=8)
    pd.testing.assert_series_equal(got.set_index("metric")["value"], ref.set_index("metric")["value"])
    skip = painters.evaluate(lm, tok, "smollm2", store, Spec("skip", 14), ["arc_easy"], limits, batch_size=8)
    with prune.dropped(lm, [14, 15]):
        ref, _ = evaluation.lm_eval(lm, tok, ["arc_easy"], limit=8, batch_size=8)
    pd.testing.assert_series_equal(skip.set_index("metric")["value"], ref.set_index("metric")["value"])
    items = painters.items_of(store, skip)
    assert len(items) == 8 and items["value"].mean() == pytest.approx(skip.set_index("metric").loc["acc", "value"])


def test_layer_sensitivity_matches_an_independent_edit():
    from layerlab.prune import blocks as prune
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    sens = painters.layer_sensitivity(model, ids, mask)
    assert len(sens) == (2 * N_LAYERS - 1) * (len(ids) + 1)  # every document, then over all tokens
    with prune.dropped(model, [2]), torch.no_grad():  # a real edit, the model's own forward pass
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    ce, real = ce.view(ids.shape[0], -1), mask[:, 1:].bool()
    skip2 = sens[(sens.layer == 2) & (sens.variant == "skip")]
    assert skip2[skip2.doc.isna()]["loss_norm"].iloc[0] == pytest.approx(float(ce[real].mean()) / np.log(97), rel=1e-5)
    for d in range(len(ids)):
        ref = float(ce[d][real[d]].mean()) / np.log(97)
        assert skip2[skip2.doc == d]["loss_norm"].iloc[0] == pytest.approx(ref, rel=1e-5)


def test_encoder_evaluate_stores_points_and_items_and_resumes(tmp_path):
    model, tok = tiny_model("bert"), PairTokenizer()
    store = results.ResultStore(tmp_path)
    specs = [Spec("base"), Spec("skip", 1), Spec("random", 1, order_seed=1)]
    t = painters_encoder.evaluate(model, tok, "tiny", store, specs, limit=30, tasks=("sst2", "stsb"))
    assert len(t) == 6 and set(t["metric"]) == {"acc", "spearman"}
    assert len(store.keys(painters_encoder.ITEMS)) == 6
    assert set(t[t.dataset == "stsb"]["n_items"]) == {30}  # trained on 30 of train, scored on 30 of dev
    again = painters_encoder.evaluate(model, tok, "tiny", store, specs, limit=30, tasks=("sst2", "stsb"))
    pd.testing.assert_frame_equal(t, again)  # read back, not recomputed
    assert len(painters_encoder.glue_average(t)) == 3


def test_a_profile_can_run_one_size_of_the_spread():
    assert painters_run.sizes(30, None, [0.27]) == [8] and painters_run.sizes(28, None, [0.27]) == [8]
    assert painters_run.PROFILES["quick"]["spread"] == [0.27]


def test_config_checks_at_chance_and_sim_docs_and_the_head_names_encoder_limit():
    assert painters_run.config("full")["at_chance"] == "skip"  # the paper's protocol unless asked
    assert painters_run.config("full", at_chance="run", sim_docs=4)["sim_docs"] == 4
    with pytest.raises(ValueError, match="at_chance.*allowed: skip, run"):
        painters_run.config("full", at_chance="always")
    with pytest.raises(ValueError, match="sim_docs"):
        painters_run.config("quick", sim_docs=0)
    base = Spec("base", 0, 0, 1)
    features, target = {base: np.random.default_rng(0).normal(size=(8, 3))}, np.array([0, 1] * 4)
    with pytest.raises(ValueError, match="encoder_limit: 8 items"):  # 4 per class, 5 folds
        painters_encoder.fixed_head_predictions(features, base, target, "classification")
    features, target = {base: np.random.default_rng(0).normal(size=(20, 3))}, np.array([0, 1] * 10)
    assert len(painters_encoder.fixed_head_predictions(features, base, target, "classification")[base][0]) == 20
