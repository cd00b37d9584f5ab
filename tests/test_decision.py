import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from layerlab.core.model import arch
from layerlab.core.io import results
from layerlab.core.evidence import verdicts
from layerlab.laser.sokoban import chapter as decision, claims as decision_claims, env as sokoban
from layerlab.laser import rank
from layerlab.laser.sokoban import agent as da

ENV = da.EnvConfig(size=7, n_boxes=1, tries=2, reverse_steps=30, step_limit=12)
AGENT = da.AgentConfig(width=16, depth=2, heads=2, context=3, n_train=30, steps=20, batch=16, checkpoint_every=10,
                       max_timestep=16)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_dt(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = da.build_model(sokoban.observation_size((ENV.size, ENV.size)), AGENT, ENV).eval()
    with torch.no_grad():  # no parameter left at an exact identity by the initialiser
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def window_inputs(model, n: int = 5, k: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, (n, k, sokoban.observation_size((ENV.size, ENV.size)))).astype(np.float32)
    return da._inputs(s, rng.integers(-1, 4, (n, k)), rng.normal(size=(n, k)).astype(np.float32),
                      np.tile(np.arange(k), (n, 1)), AGENT, CPU, torch.float32)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).action_preds


def test_arch_entry_reads_and_writes_every_gpt2_matrix_of_the_decision_transformer():
    model = tiny_dt()
    inputs = window_inputs(model)
    before = logits(model, inputs)
    assert arch.n_layers(model) == AGENT.depth
    assert arch.matrix_types(model) == ("q", "k", "v", "o", "mlp_in", "mlp_out")
    assert arch.head(model) is model.predict_action[0] and arch.final_norm(model) is model.encoder.ln_f
    shapes = {"q": (16, 16), "k": (16, 16), "v": (16, 16), "o": (16, 16), "mlp_in": (64, 16), "mlp_out": (16, 64)}
    for tau, shape in shapes.items():
        ref = arch.weight(model, tau, 1)
        w = ref.read()
        assert w.shape == shape
        ref.write(torch.zeros_like(w))
        assert not torch.allclose(logits(model, inputs), before), tau
        ref.write(w)
        assert torch.equal(logits(model, inputs), before)
    q = arch.weight(model, "q", 0).read()
    assert torch.equal(q, model.encoder.h[0].attn.c_attn.weight.detach().t()[:16])


def test_rank_reduction_changes_the_agent_and_restores_it_bit_for_bit():
    model = tiny_dt()
    inputs = window_inputs(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = logits(model, inputs)
    cache = rank.SVDCache(model)
    r = rank.Reduction("mlp_in", 1, 0.1)
    with rank.reduced(model, r, cache):
        assert torch.linalg.matrix_rank(arch.weight(model, "mlp_in", 1).read()) == 1
        assert not torch.allclose(logits(model, inputs), before)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="matrix_types"):
        rank.validate(model, ["gate"], [0], [0.5])


def test_demonstrations_follow_the_recorded_solutions():
    levels = ENV.levels(0, "train", 6, optimal=True)
    demos = da.demonstrations(levels)
    lengths = [len(lv.solution) for lv in levels]
    assert len(demos.actions) == sum(lengths)
    assert demos.actions.tolist() == [a for lv in levels for a in lv.solution]
    firsts = np.cumsum([0] + lengths[:-1])
    assert np.allclose(demos.rtg[firsts], demos.returns)  # return-to-go at step 0 is the whole return
    assert np.allclose(demos.returns, [-0.1 * n + 1 + 10 for n in lengths])  # one box: pushed on once
    assert np.array_equal(demos.states[firsts[1]], sokoban.observe(sokoban.batch([levels[1]]))[0])
    rng = np.random.default_rng(0)
    s, a, r, ts, valid = da.sample_windows(demos, rng, dataclasses.replace(AGENT, batch=200))
    assert s.shape == (200, AGENT.context, demos.states.shape[1])
    assert (ts[valid] >= 0).all() and valid[:, -1].all()
    # a valid window never crosses into an earlier episode: its timesteps count up by one
    for row_t, row_v in zip(ts, valid):
        assert (np.diff(row_t[row_v]) == 1).all() and (row_t[row_v][0] == 0 or row_v.all())


def test_training_is_cached_and_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    full_store = results.ResultStore(tmp_path / "a")
    model_a, info_a = da.train(full_store, ENV, AGENT, 0, CPU, torch.float32, progress=False)
    assert len(full_store.table(da.TRAIN_TECHNIQUE)) == AGENT.steps

    killed_store = results.ResultStore(tmp_path / "b")
    calls = {"n": 0}
    clip = torch.nn.utils.clip_grad_norm_

    def dies_at_step_15(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", dies_at_step_15)
    with pytest.raises(KeyboardInterrupt):
        da.train(killed_store, ENV, AGENT, 0, CPU, torch.float32, progress=False)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    checkpoint = killed_store.root / "sokoban_agents" / info_a["key"] / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=False)["step"] == 10
    model_b, info_b = da.train(killed_store, ENV, AGENT, 0, CPU, torch.float32, progress=False)
    assert info_b == info_a
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # cached: a second call trains nothing (it would fail here)
    monkeypatch.setattr(da, "demonstrations", lambda *a: (_ for _ in ()).throw(AssertionError("retrained")))
    da.train(full_store, ENV, AGENT, 0, CPU, torch.float32, progress=False)
    other = da.train_key(ENV, dataclasses.replace(AGENT, lr=5e-4), 0, CPU, torch.float32)
    assert other != info_a["key"] and da.train_key(dataclasses.replace(ENV, step_limit=10), AGENT, 0, CPU,
                                                   torch.float32) == info_a["key"]


def test_batched_rollout_equals_one_level_at_a_time():
    model = tiny_dt(1)
    levels = ENV.levels(0, "val", 7)
    together = da.rollout(model, levels, ENV, AGENT, 10.0, chunk=4)
    alone = pd.concat([da.rollout(model, [lv], ENV, AGENT, 10.0) for lv in levels], ignore_index=True)
    cols = ["solved", "return", "steps", "deadlocked"]
    assert np.allclose(together[cols].to_numpy(), alone[cols].to_numpy())
    assert (together["steps"] <= ENV.step_limit).all()
    ended_early = (together.solved == 0) & (together.deadlocked == 0)
    assert (together.loc[ended_early, "steps"] == ENV.step_limit).all()


def test_rollout_of_an_agent_that_pushes_right_solves_a_corridor():
    level = sokoban.parse("\n".join(["#######"] * 3 + ["#@ $ .#"] + ["#######"] * 3))
    model = tiny_dt()
    with torch.no_grad():  # action head: always "right"
        model.predict_action[0].weight.zero_()
        model.predict_action[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    env = dataclasses.replace(ENV, size=7)
    out = da.rollout(model, [level], env, AGENT, 10.0)
    assert out.solved[0] == 1 and out.steps[0] == 3
    assert out["return"][0] == pytest.approx(-0.3 + 1 + 10)


def test_select_best_prefers_solved_then_return_then_the_unmodified_agent():
    def rows(tau, layer, rho, solved, ret):
        return [{"matrix_type": tau, "layer": layer, "rho": rho, "split": "val", "metric": m, "value": v,
                 "n_items": 10} for m, v in (("solved", solved), ("return", ret))]
    table = pd.DataFrame(rows("base", -1, 1.0, 0.5, 1.0) + rows("mlp_in", 3, 0.1, 0.6, 0.0)
                         + rows("mlp_out", 2, 0.2, 0.6, 0.5))
    assert decision.select_best(table) == rank.Reduction("mlp_out", 2, 0.2)
    tie = pd.DataFrame(rows("mlp_in", 3, 0.1, 0.5, 1.0) + rows("base", -1, 1.0, 0.5, 1.0))
    assert decision.select_best(tie) is None


def test_mcnemar_is_the_exact_binomial_test_of_discordant_levels():
    base = np.array([1] * 5 + [0] * 10 + [1] * 3)
    laser = np.array([1] * 5 + [1] * 10 + [0] * 3)
    b, c, p = decision.mcnemar(base, laser)
    assert (b, c) == (3, 10)
    from math import comb
    assert p == pytest.approx(2 * sum(comb(13, k) for k in range(4)) / 2 ** 13)
    assert decision.mcnemar(base, base)[2] == 1.0


@pytest.mark.parametrize("kwargs,name", [({"profile": "huge"}, "profile"), ({"device": "tpu"}, "device"),
                                         ({"dtype": "int8"}, "dtype"), ({"n_test": 0}, "n_test"),
                                         ({"matrix_types": ["gate"]}, "matrix_types"), ({"layers": [9]}, "layers"),
                                         ({"rhos": [0]}, "rhos"), ({"train_steps": 1.5}, "train_steps"),
                                         ({"seed": -1}, "seed"), ({"rhos": "[0.5]"}, "rhos")])
def test_bad_parameters_name_the_parameter(kwargs, name):
    kwargs = {"profile": "smoke", **kwargs}
    with pytest.raises(ValueError, match=name):
        decision.configure(**kwargs)


def test_sweep_protocol_and_claim_rows(tmp_path, monkeypatch):
    store = results.ResultStore(tmp_path)
    cfg = {"env": ENV, "agent": AGENT, "device": CPU, "dtype": torch.float32}
    run = decision.prepare(store, cfg, 0, progress=False)
    table = decision.sweep(run, ["mlp_in"], [1], [0.1], n_val=12, progress=False)
    assert set(table["matrix_type"]) == {"base", "mlp_in"} and (table["n_items"] == 12).all()
    shorter = dataclasses.replace(run, env=dataclasses.replace(ENV, step_limit=6))
    assert decision.point_key(shorter, [], "val", 12) != decision.point_key(run, [], "val", 12)
    report = decision.protocol(run, table, n_test=20, profile="test")
    assert report["n_test"] == 20 and 0 <= report["base_solved"] <= 1
    d, lo, hi = report["diff_solved"]
    assert lo <= d <= hi
    # every point is stored: a second pass computes nothing
    monkeypatch.setattr(da, "rollout", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    decision.sweep(run, ["mlp_in"], [1], [0.1], n_val=12, progress=False)
    rows = decision_claims.claim_rows(store)
    assert len(rows) == 2  # the solved-rate claim and the return-moves-with-solved claim
    assert list(rows[0]) == ["paper", "claim", "paper's number", "model", "ours", "interval", "verdict", "counted",
                             "n", "statistic", "mde", "n_needed"]
    assert all(verdicts.word(r["verdict"]) in verdicts.VERDICTS for r in rows)
    stored = store.table(decision.PROTOCOL).iloc[0]
    assert {"config", "device", "dtype"} <= set(stored.index) and stored.device == "cpu"
    keys = store.table(decision.TECHNIQUE)["key"]
    assert keys.nunique() == 3 + (report["best"] is not None)  # val base, val mlp_in, test base (+ test best)
