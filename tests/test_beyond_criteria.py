"""beyond.criteria / truth / agreement: the one-pass criteria against a direct computation
from the model's own forward pass, the true cost against a really pruned model, the
store's reuse and resume, the rank statistics against scipy, bootstrap coverage, and
every verdict of the two peer claims reachable."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from layerlab.beyond import agreement, criteria, truth
from layerlab.core.model import arch, schedule
from layerlab.core.eval import lm_loss
from layerlab.core.evidence import papers, stats, verdicts
from layerlab.core.io import results
from tiny import N_LAYERS, tiny_batch, tiny_model


def chunks(seed=0, n=6, length=16):
    return torch.randint(3, 97, (n, length), generator=torch.Generator().manual_seed(seed))


def direct_states(model, ids, mask):
    """The L + 1 boundary states from the model's own forward (output_hidden_states for
    x_0..x_{L-1}; a hook on the last block for x_L, before the final norm)."""
    seen = {}
    hook = arch.blocks(model)[-1].register_forward_hook(
        lambda m, a, out: seen.setdefault("last", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    finally:
        hook.remove()
    return [h.double() for h in out.hidden_states[:N_LAYERS]] + [seen["last"].double()]


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_one_pass_criteria_equal_a_direct_computation(name):
    model = tiny_model(name)
    ids, mask = tiny_batch(batch=4, seq=12)  # right padded: 12, 10, 8, 6 real tokens
    ns, k = [1, 2], 5
    got = criteria.criteria_values(model, [(ids[:2], mask[:2]), (ids[2:], mask[2:])], ns, fit_tokens=k)
    x = direct_states(model, ids, mask)
    for n, layer in [(1, 0), (1, 3), (2, 1), (2, 2)]:
        j = ns.index(n)
        for doc in range(4):
            real = int(mask[doc].sum())
            a, b = x[layer][doc, :real], x[layer + n][doc, :real]
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
            want = {"angular_last": float(torch.arccos(cos[-1]) / math.pi),
                    "angular_mean": float((torch.arccos(cos) / math.pi).mean()),
                    "block_influence": float(1 - cos.mean()),
                    "relative_update": float(((b - a).norm(dim=-1) / b.norm(dim=-1)).mean()),
                    "last_n": N_LAYERS - n - layer}
            for c, v in want.items():
                assert got[c][doc, j, layer] == pytest.approx(v, rel=1e-5, abs=1e-6), (c, n, layer, doc)
    assert np.isnan(got["angular_mean"][:, ns.index(2), N_LAYERS - 1]).all()  # l > L - n: undefined
    # the linear fit: ridge on the sampled tokens, fitted on the other parity of documents
    for n, layer in [(1, 0), (2, 2)]:
        samples = [criteria.fit_positions(int(mask[d].sum()), k) for d in range(4)]
        xs = [x[layer][d, samples[d]].numpy() for d in range(4)]
        ys = [x[layer + n][d, samples[d]].numpy() for d in range(4)]
        for doc in range(4):
            fit = [d for d in range(4) if d % 2 != doc % 2]
            xf, yf = np.concatenate([xs[d] for d in fit]), np.concatenate([ys[d] for d in fit])
            mx, my = xf.mean(0), yf.mean(0)
            g = (xf - mx).T @ (xf - mx)
            w = np.linalg.solve(g + criteria.RIDGE * np.trace(g) / g.shape[0] * np.eye(g.shape[0]),
                                (xf - mx).T @ (yf - my))
            pred = (xs[doc] - mx) @ w + my
            want = ((ys[doc] - pred) ** 2).sum() / ((ys[doc] - my) ** 2).sum()
            assert got["linear_fit"][doc, ns.index(n), layer] == pytest.approx(want, rel=1e-4)


def test_linear_fit_is_near_zero_for_a_linear_map_and_near_one_for_noise():
    g = torch.Generator().manual_seed(0)
    d, docs, k = 8, 6, 20
    a = torch.randn(d, d, generator=g)
    samples = []
    for _ in range(docs):
        x0 = torch.randn(k, d, generator=g)
        samples.append(torch.stack([x0, x0 @ a + 3.0, torch.randn(k, d, generator=g)]))  # L = 2
    scores = criteria.linear_fit_scores(samples, [1], ridge=1e-9)
    assert np.all(scores[:, 0, 0] < 1e-6)            # x_1 is a linear map of x_0
    assert np.all(scores[:, 0, 1] > 0.8)             # x_2 is noise, unrelated to x_1


def test_true_cost_equals_the_loss_of_a_really_dropped_model_and_is_reused(tmp_path, monkeypatch):
    model, store, ch = tiny_model("qwen2"), results.ResultStore(tmp_path), chunks()
    frame = truth.true_costs(model, "tiny", store, ch, [1, 2], batch_size=4)
    base = lm_loss.chunk_losses(model, ch)[0]
    for n, layer in [(1, 0), (1, 3), (2, 1), (2, 2)]:
        pruned = copy.deepcopy(model)
        schedule.apply(pruned, schedule.drop(N_LAYERS, list(range(layer, layer + n))))
        want = lm_loss.chunk_losses(pruned, ch)[0] - base  # the pruned model's own forward pass
        got = frame[(frame.n == n) & (frame.layer == layer)].sort_values("doc")["value"].to_numpy()
        assert got == pytest.approx(want, abs=1e-5)
    assert len(frame) == len(ch) * (N_LAYERS + N_LAYERS - 1)
    calls = []
    monkeypatch.setattr(truth, "chunk_losses", lambda *a, **k: calls.append(1) or lm_loss.chunk_losses(*a, **k))
    again = truth.true_costs(model, "tiny", store, ch, [1, 2], batch_size=4)
    assert not calls and again["value"].tolist() == frame["value"].tolist()  # nothing recomputed
    key = truth._key(model, "tiny", truth.TRUTH, 2, {"chunks": list(ch.shape),
                                                     "tokens": __import__("layerlab.prune.curve").prune.curve
                                                     .tensor_hash(ch)}, "wikitext2")
    (tmp_path / truth.TRUTH / f"{key}.parquet").unlink()  # a run killed before n = 2 was stored
    truth.true_costs(model, "tiny", store, ch, [1, 2], batch_size=4)
    assert len(calls) == 2                                 # only n = 2 ran again: its two batches of documents
    other = truth.true_costs(model, "tiny", store, chunks(seed=1), [1], batch_size=4)
    assert len(calls) == 5 and not np.allclose(other["value"], frame[frame.n == 1]["value"])  # new data: new key


def test_a_truth_map_killed_between_batches_resumes_with_the_same_costs(tmp_path, monkeypatch):
    model, ch = tiny_model("llama"), chunks(n=10)
    whole = truth.true_costs(model, "tiny", results.ResultStore(tmp_path / "whole"), ch, [2], batch_size=4)
    store, calls = results.ResultStore(tmp_path / "killed"), []

    def dies_on_the_third_batch(*a, **k):  # base, then the map's first batch, then killed
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return lm_loss.chunk_losses(*a, **k)
    monkeypatch.setattr(truth, "chunk_losses", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        truth.true_costs(model, "tiny", store, ch, [2], batch_size=4)
    assert len(list((tmp_path / "killed" / results.JOURNALS).rglob("*.npy"))) == 1
    calls.clear()
    monkeypatch.setattr(truth, "chunk_losses", lambda *a, **k: calls.append(1) or lm_loss.chunk_losses(*a, **k))
    resumed = truth.true_costs(model, "tiny", store, ch, [2], batch_size=4)
    assert len(calls) == 2  # the two batches not yet done (base stored, the first batch from the journal)
    assert resumed["value"].tolist() == whole["value"].tolist()  # exact
    assert not list((tmp_path / "killed" / results.JOURNALS).rglob("*.npy"))  # removed once stored


def test_stored_criteria_are_reused(tmp_path, monkeypatch):
    model, store, ch = tiny_model("llama"), results.ResultStore(tmp_path), chunks()
    first = criteria.stored_criteria(model, "tiny", store, ch, [1, 2], fit_tokens=6, batch_size=4)
    assert set(first["criterion"]) == set(criteria.CRITERIA) and first["doc"].nunique() == len(ch)
    monkeypatch.setattr(criteria, "criteria_values", lambda *a, **k: pytest.fail("recomputed"))
    again = criteria.stored_criteria(model, "tiny", store, ch, [1, 2], fit_tokens=6, batch_size=4)
    assert again["value"].tolist() == first["value"].tolist()


def test_mmlu_costs_are_drops_per_item_and_stored_per_n(tmp_path, monkeypatch):
    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    calls = []

    def fake(model, tok, tasks, edits, limit=None, **kw):  # correctness depends on the edit
        calls.append(len(edits))
        out = {}
        for name, e in edits.items():
            acc = [float((i + e.start) % 3 != 0) for i in range(limit)]
            items = pd.DataFrame({"dataset": "mmlu", "metric": "acc", "item": range(limit), "value": acc})
            out[name] = (pd.DataFrame(), items)
        return out
    monkeypatch.setattr(truth.prefix_eval, "evaluate_edits", fake)
    base = truth.mmlu_costs(model, None, "tiny", store, [], limit=9)
    assert set(base.n) == {0} and truth.mmlu_floor(base) == stats.informative(6, 9, 0.25)  # 6 of 9 right
    frame = truth.mmlu_costs(model, None, "tiny", store, [1, 2], limit=9)
    assert calls == [1, N_LAYERS, N_LAYERS - 1]
    row = frame[(frame.n == 2) & (frame.layer == 2) & (frame["item"] == 1)].iloc[0]
    assert row["base"] == 1.0 and row["acc"] == 0.0 and row["value"] == 1.0  # (1 + 2) % 3 == 0; base: start 4
    truth.mmlu_costs(model, None, "tiny", store, [1, 2], limit=9)
    assert len(calls) == 3


def test_an_interrupted_mmlu_map_keeps_its_journal_for_the_rerun(tmp_path, monkeypatch):
    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    journals = []

    def dies_at_n2(model, tok, tasks, edits, limit=None, journal=None, **kw):
        journals.append(journal)
        if len(edits) == N_LAYERS - 1:  # the map at n = 2
            raise KeyboardInterrupt
        return {name: (pd.DataFrame(), pd.DataFrame({"dataset": "mmlu", "metric": "acc", "item": range(limit),
                                                     "value": 1.0})) for name in edits}
    monkeypatch.setattr(truth.prefix_eval, "evaluate_edits", dies_at_n2)
    with pytest.raises(KeyboardInterrupt):
        truth.mmlu_costs(model, None, "tiny", store, [1, 2], limit=4)
    base, n1, n2 = journals
    assert base is None  # the unmodified model alone is short: no journal
    assert n1 != n2 and n1.parent == n2.parent
    assert not n1.exists() and n2.is_dir()  # n = 1 stored, its journal gone; n = 2's kept for the rerun
    with pytest.raises(KeyboardInterrupt):
        truth.mmlu_costs(model, None, "tiny", store, [1, 2], limit=4)
    assert journals[3:] == [n2]  # base and n = 1 read from the store; n = 2 resumes in the same journal


def test_profiles_scale_with_the_layers_and_refuse_bad_values():
    assert truth.profile_config("quick", 30)["ns"] == [1, 2, 4, 8]
    q = truth.profile_config("quick", 28)
    assert q["ns"] == [1, 2, 4, 7] and q["mmlu_ns"] == [1]
    assert truth.profile_config("full", 28)["mmlu_ns"] == [1, 7]
    assert truth.profile_config("smoke", N_LAYERS)["ns"] == [1]
    assert truth.profile_config("quick", 30, ns="[1, 3]", docs=8)["ns"] == [1, 3]
    for bad in (dict(ns=[29]), dict(docs=2), dict(fit_tokens=0), dict(nope=1)):
        with pytest.raises(ValueError):
            truth.profile_config("quick", 30, **bad)


def test_vectorised_rank_correlations_equal_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 9)), rng.normal(size=(50, 9))
    x[:5, :3] = 1.0  # ties
    y[5:10, 2:6] = 0.0
    for i in range(50):
        assert agreement.spearman(x[i], y[i]) == pytest.approx(sps.spearmanr(x[i], y[i])[0], abs=1e-12)
        assert agreement.kendall(x[i], y[i]) == pytest.approx(sps.kendalltau(x[i], y[i])[0], abs=1e-12)
    assert np.isnan(agreement.spearman(np.ones(5), np.arange(5.0)))


def toy(docs, m, mu, nu, noise, seed):
    """[docs, 1, m] per-document truth (mean mu) and criterion (mean nu) with noise."""
    rng = np.random.default_rng(seed)
    t = mu + noise * rng.normal(size=(docs, m))
    c = nu + noise * rng.normal(size=(docs, m))
    return t[:, None, :], c[:, None, :]


def test_a_criterion_equal_to_the_truth_has_no_regret():
    t, _ = toy(20, 10, np.linspace(0, 1, 10), 0, 0.3, 1)
    table = agreement.agreement(t, {"same": t.copy()}, [1], n_boot=300)
    row = table.iloc[0]
    assert row["spearman"] == pytest.approx(1) and row["kendall"] == pytest.approx(1)
    assert row["regret"] == 0 and row["regret_lo"] == 0 and row["regret_hi"] == 0 and row["pick"] == row["best"]


def test_bootstrap_intervals_cover():
    mu = np.array([0.0, 3, 1, 4, 2, 6, 5, 8, 7, 9]) / 9    # the truth's mean per start
    nu = np.array([1.0, 0, 3, 2, 5, 4, 9, 8, 7, 6]) / 9    # the criterion's; clear minimum at l = 1
    rho, regret = sps.spearmanr(nu, mu)[0], mu[np.argmin(nu)] - mu.min()
    hits_rho = hits_regret = 0
    reps = 150
    for r in range(reps):
        t, c = toy(30, 10, mu, nu, 0.45, 100 + r)
        row = agreement.agreement(t, {"c": c}, [1], n_boot=400, seed=r).iloc[0]
        hits_rho += row["spearman_lo"] <= rho <= row["spearman_hi"]
        hits_regret += row["regret_lo"] <= regret <= row["regret_hi"]
        assert row["truth_stability"] > agreement.STABLE  # the regime where the intervals are valid
    assert hits_rho / reps >= 0.85 and hits_regret / reps >= 0.85


def test_claim_verdicts_flip_with_the_data():
    m = 10
    mu = np.linspace(0, 1, m)
    words = lambda rows: {verdicts.word(r["verdict"]) for r in rows}  # noqa: E731
    strong, _ = toy(40, m, mu, 0, 0.05, 0)
    assert words(agreement.hinostroza_rows(strong, {"angular_last": strong + 0.001}, [1], "toy", "loss")) \
        == {verdicts.DISAGREES}
    t, c = toy(40, m, mu, np.roll(mu, 5), 0.05, 1)         # a criterion unrelated to the truth
    assert words(agreement.hinostroza_rows(t, {"angular_last": c, "block_influence": c}, [1], "toy", "loss")) \
        == {verdicts.AGREES}
    t, c = toy(8, m, mu, mu, 0.6, 2)                     # few noisy documents: the interval straddles 0.7
    assert words(agreement.hinostroza_rows(t, {"angular_last": c}, [1], "toy", "loss")) == {verdicts.INCONCLUSIVE}
    t, c = toy(8, m, mu, np.roll(mu, 5), 3.0, 3)         # a weak correlation of a truth map that is mostly noise
    rows = agreement.hinostroza_rows(t, {"angular_last": c}, [1], "toy", "loss")
    assert words(rows) == {verdicts.NOT_TESTABLE} and "unstable" in rows[0]["verdict"]
    # Lu et al.: the last start (l = L - n) is cheapest, the Gromov criterion picks l = 0
    t, c = toy(30, m, 1 - mu, mu, 0.05, 3)
    rows = agreement.lu_rows(t, {"angular_last": c}, [1], "toy", "loss")
    assert words(rows) == {verdicts.AGREES} and rows[0]["paper"] == papers.LU
    assert words(agreement.lu_rows(mu[None, None] + 0 * t, {"angular_last": c}, [1], "toy", "loss")) \
        == {verdicts.DISAGREES}
    flat, c = toy(30, m, 0 * mu, mu, 0.5, 4)              # no difference in truth: inconclusive
    assert words(agreement.lu_rows(flat, {"angular_last": c}, [1], "toy", "loss")) == {verdicts.INCONCLUSIVE}
    # a tie: the criterion picks the last n itself in every resample, so the difference is 0
    # in every draw; [0, 0] admits both sides (it read "disagrees" under "below 0")
    t, c = toy(30, m, mu, 1 - mu, 0.01, 5)
    tie = agreement.lu_rows(t, {"angular_last": c}, [1], "toy", "loss")
    assert words(tie) == {verdicts.INCONCLUSIVE} and "the same span" in tie[0]["ours"]


def test_maps_and_charts_build():
    t, c = toy(6, 5, np.linspace(0, 1, 5), np.linspace(1, 0, 5), 0.1, 0)
    frame = agreement.map_frame(t, {"angular_last": c}, [1])
    assert set(frame["map"]) == {"true cost", criteria.LABELS["angular_last"]}
    assert frame.groupby("map")["marked"].sum().tolist() == [1, 1]
    table = agreement.agreement(t, {"angular_last": c}, [1], n_boot=50)
    agreement.heatmaps(frame, "maps").to_dict()
    agreement.interval_chart(table, "regret", "regret").to_dict()


class EosTokenizer:
    """CharTokenizer with an EOS id (``text_chunks`` joins texts with it)."""
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 90 for c in text]}


def test_compute_and_evaluate_on_real_heldout_text(tmp_path):
    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    cfg = truth.profile_config("smoke", N_LAYERS, ns=[1, 2], docs=6, seq_len=32)
    out = truth.compute(model, EosTokenizer(), "tiny", store, cfg, mmlu=False)
    assert out["chunks"].shape == (6, 32) and out["mmlu"] is None
    table, claims, maps = agreement.evaluate(out["criteria"], out["truth"], cfg["ns"], N_LAYERS, "tiny", "loss",
                                             n_boot=100)
    assert len(table) == len(criteria.CRITERIA) * 2 and set(table["n"]) == {1, 2}
    assert (table["regret"] >= 0).all() and (table["regret_lo"] <= table["regret"] + 1e-12).all()
    assert [r["paper"] for r in claims] == [papers.HINOSTROZA] * 4 + [papers.LU] * 2
    assert all(set(r) == set(agreement.COLUMNS) for r in claims)
    assert set(maps["map"]) == {"true cost (loss)"} | {criteria.LABELS[c] for c in criteria.CRITERIA}
    keys = {t: store.keys(t) for t in (truth.TRUTH, criteria.TABLE)}
    again = truth.compute(model, EosTokenizer(), "tiny", store, cfg, mmlu=False)
    assert {t: store.keys(t) for t in keys} == keys and again["truth"]["value"].equals(out["truth"]["value"])


def test_criteria_in_bfloat16_are_close_to_float32():
    ids, mask = tiny_batch(batch=4, seq=12)
    f32 = criteria.criteria_values(tiny_model("qwen2"), [(ids, mask)], [1, 2], fit_tokens=5)
    b16 = criteria.criteria_values(tiny_model("qwen2", dtype=torch.bfloat16), [(ids, mask)], [1, 2], fit_tokens=5)
    for c in ("angular_mean", "block_influence", "relative_update"):
        ok = ~np.isnan(f32[c])
        assert np.array_equal(ok, ~np.isnan(b16[c]))
        assert b16[c][ok] == pytest.approx(f32[c][ok], rel=0.1, abs=0.01)
