"""LASER without a search (Marchenko-Pastur ranks) and the bottom-k ablation (beyond.spectrum)."""

import numpy as np
import pandas as pd
import pytest
import torch

from layerlab.core.evidence import verdicts

from layerlab.beyond import spectrum
from layerlab.core.model import arch
from layerlab.core.io import results
from layerlab.core.eval import scoring
from layerlab.laser import rank, sweep as laser
from tiny import CharTokenizer, facts_file, tiny_model


def _planted(n: int, m: int, k: int, seed: int, strength: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, noise + a rank-k signal) [n, m]: unit-variance Gaussian noise; the signal's
    singular values strength * (1 + i / k) times the noise's bulk edge sqrt(n) + sqrt(m)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, m, generator=g, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(torch.randn(n, m, generator=g, dtype=torch.float64), full_matrices=False)
    s = strength * (1 + torch.arange(k, dtype=torch.float64) / k) * (n ** 0.5 + m ** 0.5)
    return noise, noise + (u[:, :k] * s) @ vh[:k]


@pytest.mark.parametrize("shape,k,seed", [((120, 120), 4, 0), ((96, 300), 7, 1), ((300, 96), 3, 2)])
def test_iterative_mp_rank_recovers_the_planted_rank(shape, k, seed):
    noise, w = _planted(*shape, k, seed)
    assert rank.mp_rank(w, "iterative")["k"] == k
    assert rank.mp_rank(noise, "iterative")["k"] == 0  # pure noise: nothing above the edge
    assert rank.mp_rank(w.float(), "iterative")["k"] == k  # float32 weights: the same count


def test_laserrmt_rank_is_laserrmt_formula_and_keeps_noise():
    """laserRMT's rule, recomputed with numpy: sigma = IQR(s) / 1.349 of the singular values,
    edge = sigma (1 + sqrt(beta)). Its sigma is on the scale of the singular values' spread,
    not the noise per entry, so on pure noise it keeps many components (measured, not assumed)."""
    for shape in ((120, 120), (96, 300), (64, 64)):
        noise, w = _planted(*shape, 4, 3)
        for x in (noise, w, w.to(torch.bfloat16)):
            s = np.linalg.svd(x.double().numpy(), compute_uv=False)
            q25, q75 = np.quantile(s, [0.25, 0.75])
            edge = (q75 - q25) / 1.349 * (1 + np.sqrt(min(shape) / max(shape)))
            got = rank.mp_rank(x)
            assert got["k"] == int((s > edge).sum())
            assert got["edge"] == pytest.approx(edge, rel=1e-12)
            assert rank.rank_for(got["rho"], got["max_rank"]) == max(got["k"], 1)
        assert rank.mp_rank(noise)["k"] > 0.2 * min(shape)
    with pytest.raises(ValueError, match="rule.*laserrmt, iterative"):
        rank.mp_rank(w, "median")


def test_mp_reduction_keeps_exactly_k_components():
    model = tiny_model("llama")
    cache = rank.SVDCache(model)
    for t in ("mlp_in", "mlp_out"):
        for rule in rank.MP_RULES:
            r = rank.mp_reduction(model, t, 3, cache, rule)
            w = cache.original(t, 3)
            k = rank.mp_rank(w, rule)["k"]
            approx = cache.approximation(r)
            expected = max(k, 1) if r.rho < 1 else min(w.shape)
            assert torch.linalg.matrix_rank(approx.double(), rtol=1e-5).item() == expected


@pytest.mark.parametrize("rho", [0.02, 0.25, 0.5, 0.9])
def test_smallest_part_is_the_last_k_triplets_and_restores_bit_identically(rho):
    model = tiny_model("llama")
    w0 = arch.weight(model, "mlp_in", 2).read().clone()
    state = {n: p.clone() for n, p in model.state_dict().items()}
    r = rank.Reduction("mlp_in", 2, rho, "smallest")
    k = rank.rank_for(rho, min(w0.shape))
    u, s, vh = np.linalg.svd(w0.double().numpy(), full_matrices=False)  # an independent SVD
    expected = (u[:, -k:] * s[-k:]) @ vh[-k:]
    with rank.reduced(model, r):
        got = arch.weight(model, "mlp_in", 2).read()
        np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-5)
        assert np.linalg.matrix_rank(got.double().numpy(), tol=1e-4) == k
    assert all(torch.equal(state[n], p) for n, p in model.state_dict().items())  # bit for bit
    # the existing parts keep their meaning and keys
    top = rank.low_rank(w0, rho, "top")
    np.testing.assert_allclose(top.double().numpy(), (u[:, :k] * s[:k]) @ vh[:k], atol=1e-5)
    bottom = rank.low_rank(w0, rho, "bottom")
    np.testing.assert_allclose(bottom.double().numpy(), (u[:, k:] * s[k:]) @ vh[k:], atol=1e-5)
    assert rank.Reduction("mlp_in", 2, rho).as_dict() == {"matrix_type": "mlp_in", "layer": 2, "rho": rho,
                                                          "part": "top"}


def test_rho_one_identities():
    w = tiny_model("llama").model.layers[1].mlp.up_proj.weight.detach()
    assert torch.equal(rank.low_rank(w, 1.0, "top"), w)
    assert torch.equal(rank.low_rank(w, 1.0, "smallest"), w)  # every component is among the smallest r
    assert torch.equal(rank.low_rank(w, 1.0, "bottom"), torch.zeros_like(w))
    # smallest k + top (r - k) = W
    r = min(w.shape)
    k = rank.rank_for(0.25, r)
    total = rank.low_rank(w, 0.25, "smallest").double() + rank.low_rank(w, (r - k) / r, "top").double()
    np.testing.assert_allclose(total.numpy(), w.double().numpy(), atol=1e-5)


def test_profile_config_validates():
    cfg = spectrum.profile_config("quick", 30, datasets=["counterfact", "fever"])
    assert cfg["layers"] == list(range(23, 30)) and cfg["matrix_types"] == ["mlp_in", "mlp_out"]
    lc = laser.profile_config("quick", 30, ("mlp_in", "mlp_out"))
    assert cfg["limits"] == {"counterfact": lc["limit"], "fever": lc["other_limit_default"]}  # the chapter's protocol
    assert cfg["rhos"] == {"counterfact": lc["rhos"], "fever": lc["other_rhos"]}  # the chapter's grids
    smoke = spectrum.profile_config("smoke", 30, limits=12, rhos=[0.1])
    assert smoke["limits"] == {"counterfact": 12} and smoke["rhos"] == {"counterfact": [0.1]}
    with pytest.raises(ValueError, match="rhos"):
        spectrum.profile_config("smoke", 30, rhos=[0.0])
    with pytest.raises(ValueError, match="profile"):
        spectrum.profile_config("medium", 30)
    with pytest.raises(ValueError, match="rules"):
        spectrum.profile_config("smoke", 30, rules=["median"])
    with pytest.raises(ValueError, match="matrix_types"):
        spectrum.profile_config("smoke", 30, matrix_types=["q"])
    with pytest.raises(ValueError, match="unknown settings"):
        spectrum.profile_config("smoke", 30, rho=[0.1])


def test_run_dataset_pairs_variants_on_the_same_test_items(tmp_path):
    model = tiny_model("llama")
    tok = CharTokenizer()
    facts = str(facts_file(tmp_path, 40))
    cfg = spectrum.profile_config("smoke", 4, datasets=[facts], layers=[2, 3], rhos=[0.25, 0.5], limits=40)
    store = results.ResultStore(tmp_path / "r")
    res = spectrum.run_dataset(model, tok, "tiny", store, facts, cfg)
    named = res["variants"]
    assert spectrum.composed("laserrmt") in named and spectrum.composed("iterative") in named
    assert len(res["mp"]) == 2 * 2 * 2  # rules x types x layers
    # every variant's per-item rows equal a direct forward pass with the reductions applied
    task = res["sweeper"].task
    batches = scoring.encode(tok, task.contexts, task.continuations, 4096)
    for name, reds in named.items():
        with rank.reduced(model, reds):
            direct = laser.item_metrics(task, scoring.score_full(model, batches, len(task.contexts)))
        stored = res["items"][name].set_index("item").loc[direct["item"]]
        np.testing.assert_array_equal(stored["correct"].to_numpy(), direct["correct"].to_numpy())
        np.testing.assert_allclose(stored["nll"].to_numpy(), direct["nll"].to_numpy(), atol=1e-4)
    table = spectrum.compare_table(res)
    assert list(table["variant"]) == list(named)
    assert (table["n test"] == (res["sweeper"].splits == "test").sum()).all()
    rows = spectrum.claims([res], "tiny")
    assert {r["verdict"].split(":")[0] for r in rows} <= {"agrees", "disagrees", "inconclusive", "not testable"}
    # a rerun computes nothing: every point is stored
    before = len(list((tmp_path / "r").rglob("*.parquet")))
    again = spectrum.run_dataset(model, tok, "tiny", store, facts, cfg)
    assert len(list((tmp_path / "r").rglob("*.parquet"))) == before
    assert again["best"] == res["best"] and again["source"] == "stored full sweep" or res["source"] == again["source"]


def _result(base, laser_items, mp, small):
    n = len(base)
    frame = lambda c: pd.DataFrame({"item": [f"i{j}" for j in range(n)], "split": "test",  # noqa: E731
                                    "correct": np.asarray(c, float), "nll": 1.0 - np.asarray(c, float)})
    class _Task:
        kind, row_choice = "answer", np.zeros(1, int)
    class _Sweeper:
        task = _Task()
    items = {spectrum.UNMODIFIED: frame(base), spectrum.LASER: frame(laser_items),
             spectrum.composed("laserrmt"): frame(mp), spectrum.SMALLEST: frame(small)}
    return {"dataset": "x", "best": rank.Reduction("mlp_in", 3, 0.1), "items": items, "sweeper": _Sweeper(),
            "variants": {k: [] for k in items}}


def test_claims_reach_every_verdict():
    n = 200
    ones, zeros = np.ones(n), np.zeros(n)
    half = np.r_[np.ones(n // 2), np.zeros(n // 2)]
    agree = spectrum.claims([_result(half, half, half, zeros)], "m")
    assert [verdicts.word(r["verdict"]) for r in agree] == ["agrees", "agrees"]
    disagree = spectrum.claims([_result(half, half, zeros, ones)], "m")
    assert [verdicts.word(r["verdict"]) for r in disagree] == ["disagrees", "disagrees"]
    mixed = half.copy()
    mixed[:6] = 0  # 6 items lost of 200: the interval straddles -5 pp
    swapped = half.copy()
    swapped[:3], swapped[-3:] = 0, 1  # 3 lost, 3 gained: the interval straddles 0
    unsure = spectrum.claims([_result(half, half, mixed, swapped)], "m")
    assert [verdicts.word(r["verdict"]) for r in unsure] == ["inconclusive", "inconclusive"]
    assert all(r["n"] == n and r["mde"].endswith("pp") for r in unsure)
    # both claims compare two modified models: an unmodified model at chance is reported, not a gate
    at_chance = spectrum.claims([_result(zeros, half, half, half)], "m")
    assert [verdicts.word(r["verdict"]) for r in at_chance] == ["agrees", "inconclusive"]
    assert "(unmodified: 0 of 200 correct unmodified (< 20))" in at_chance[0]["ours"]


def test_swapped_predictions_match_direct_edits(tmp_path):
    from layerlab.laser import analysis

    model = tiny_model("llama")
    tok = CharTokenizer()
    task = laser.build_task(str(facts_file(tmp_path)))
    sweeper = laser.Sweeper(model, tok, "tiny", task, results.ResultStore(tmp_path / "r"), max_tokens_per_batch=64)
    best = rank.Reduction("mlp_in", 2, 0.25)
    generic = {tok(" ")["input_ids"][0]}
    frame = spectrum.swapped_predictions(sweeper, best, generic)
    test = np.flatnonzero(sweeper.splits == "test")
    k = rank.rank_for(0.25, 32)
    versions = {"full": [], "kept": [rank.Reduction("mlp_in", 2, 0.25, "smallest")],
                "removed": [rank.Reduction("mlp_in", 2, (32 - k) / 32, "top")]}
    right = {}
    for name, reds in versions.items():
        with rank.reduced(model, reds):
            s = scoring.score_full(model, sweeper.scorer.batches, len(task.contexts))
        assert (frame[f"{name}_id"].to_numpy() == s.first_top[test]).all()
        right[name] = s.first_rank[test] == 0
    expect = np.where(right["full"], "correct before", np.where(right["kept"], "corrected", "still wrong"))
    assert (frame["group"].to_numpy() == expect).all()
    assert analysis.summary(frame)["items"].sum() == len(test)
    with pytest.raises(ValueError, match="keeps every component"):
        spectrum.swapped_predictions(sweeper, rank.Reduction("mlp_in", 2, 1.0), generic)


def test_spectrum_points_stay_out_of_the_laser_chapters_table(tmp_path):
    """Bottom-k and MP points share (matrix type, layer, rho) with LASER's grid points: stored in
    the chapter's table they made its selection see two rows per point (the smoke book's comparison
    page failed on it). The variants' sweeper keeps its own tables."""
    from layerlab.core.io import results
    from layerlab.laser import rank, sweep as laser
    from tiny import CharTokenizer, facts_file, tiny_model

    model = tiny_model("llama")
    task = laser.build_task(str(facts_file(tmp_path, 20)))
    store = results.ResultStore(tmp_path / "r")
    chapter = laser.Sweeper(model, CharTokenizer(), "tiny", task, store, max_tokens_per_batch=128)
    variants = laser.Sweeper(model, CharTokenizer(), "tiny", task, store, max_tokens_per_batch=128,
                             technique=spectrum.TECHNIQUE)
    top = [rank.Reduction("mlp_in", 3, 0.5)]
    table = laser.sweep(chapter, ["mlp_in"], [3], [0.5], progress=False)
    variants.points([top, [rank.Reduction("mlp_in", 3, 0.5, "smallest")]])
    assert len(store.table("laser")) == len(table)  # nothing added to the chapter's table
    assert set(store.table(spectrum.TECHNIQUE)["technique"]) == {spectrum.TECHNIQUE}
    assert variants.key(top) != chapter.key(top)
    laser.select_best(store.table("laser"))  # one row per point: no "mixes protocols" error


def test_quick_keeps_the_variants_the_claims_compare_and_full_every_matrix_alone():
    import pandas as pd
    from layerlab.beyond import spectrum
    from layerlab.laser import rank
    assert spectrum.profile_config("quick", 30)["per_matrix"] is False
    assert spectrum.profile_config("full", 30)["per_matrix"] is True
    with pytest.raises(ValueError, match="per_matrix: 'no'; allowed: True or False"):
        spectrum.profile_config("quick", 30, per_matrix="no")
    mp = pd.DataFrame({"rule": ["laserrmt", "laserrmt"],
                       "reduction": [rank.Reduction("mlp_in", 28, 0.6), rank.Reduction("mlp_out", 29, 1.0)]})
    best = rank.Reduction("mlp_in", 29, 0.1)
    few = spectrum.variants(best, mp, per_matrix=False)
    assert set(few) == {spectrum.UNMODIFIED, spectrum.LASER, spectrum.SMALLEST, spectrum.composed("laserrmt")}
    assert few[spectrum.composed("laserrmt")] == [rank.Reduction("mlp_in", 28, 0.6)]  # rho = 1 changes nothing
    every = spectrum.variants(best, mp)
    assert set(every) - set(few) == {"MP (laserRMT edge) mlp_in@28", "MP (laserRMT edge) mlp_out@29"}
