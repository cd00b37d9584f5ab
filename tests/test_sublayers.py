"""Surgery below the block (issue #22 §2): ``schedule.Sublayer`` steps in the runner, in
scheduled models (KV cache), in the permanent edit (``schedule.apply``), in edits scored by
prefix_eval / lm_loss, against the plain per-family reference (``reference.run_sublayers``)."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from lm_eval.models.huggingface import HFLM

from layerlab.core.model import arch, edits, reference, runner, schedule, sublayer
from layerlab.core.eval import lm_loss, prefix_eval
from layerlab.core.model.schedule import Parallel, Sublayer
from test_prefix_eval import LL_TOL, token_requests, tiny_tokenizer
from tiny import N_LAYERS, tiny_batch, tiny_model

BF16 = torch.bfloat16
SEQUENTIAL = ("llama", "mistral", "qwen2", "gemma3_text", "gpt2")
PARALLEL = ("gptj", "gpt_neox", "phi")
# bf16: paths that round in a different order agree to a few bf16 units of the largest logit
REL_TOL = {torch.float32: 1e-5, BF16: 2e-2}
# steps with dropped sublayers: an attention-only and an MLP-only block, a schedule that
# starts with an MLP (no attention before it: it rides with the first cache slot), a
# repeated attention sublayer (two cache slots), and sublayers beside a parallel group
DROPS = {
    "drop_mlp1_attn2": [0, Sublayer(1, "attn"), Sublayer(2, "mlp"), 3],
    "leading_mlp": [Sublayer(0, "mlp"), Sublayer(1, "mlp"), 1, Sublayer(2, "attn"), 3, Sublayer(3, "mlp")],
    "repeated_attn": [0, Sublayer(2, "attn"), Sublayer(2, "attn"), Sublayer(1, "mlp"), 3],
    "with_parallel": [0, Sublayer(1, "attn"), Parallel((2, 3), 2), Sublayer(3, "mlp")],
}


def _close(ours, theirs, mask, dtype):
    real = mask.bool()
    a, b = ours.float().cpu()[real], theirs.float().cpu()[real]
    bound = REL_TOL[dtype] * max(1.0, float(b.abs().max()))
    diff = float((a - b).abs().max())
    assert diff <= bound, f"max |diff| {diff} > {bound}"


def _split(blocks) -> list:
    return [s for i in blocks for s in (Sublayer(i, "attn"), Sublayer(i, "mlp"))]


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("name", SEQUENTIAL)
def test_attention_then_mlp_of_a_block_is_the_block(name, dtype):
    model = tiny_model(name, dtype=dtype)
    ids, mask = tiny_batch()
    full = runner.full_logits(model, ids, mask)
    state = runner.capture(model, ids, mask)
    assert not sublayer.parallel(model)
    schedules = [_split(range(N_LAYERS))] + [list(range(i)) + _split([i]) + list(range(i + 1, N_LAYERS))
                                             for i in range(N_LAYERS)]
    for steps in schedules:
        _close(runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps)), full, mask, dtype)
        with schedule.scheduled(model, steps) as m:
            _close(runner.full_logits(m, ids, mask), full, mask, dtype)
        _close(reference.sublayer_logits(model, steps, ids, mask), full, mask, dtype)


@pytest.mark.parametrize("name", PARALLEL)
def test_parallel_blocks_add_both_sublayers_to_the_same_input(name):
    """GPT-J, Phi, NeoX (use_parallel_residual): block(h) = attn-step(h) + mlp-step(h) - h,
    and attention then MLP in sequence is another model."""
    model = tiny_model(name)
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    assert sublayer.parallel(model)
    for i in range(N_LAYERS):
        h = state.hidden[i]
        a = runner.run_blocks(model, state, h, [Sublayer(i, "attn")])
        m = runner.run_blocks(model, state, h, [Sublayer(i, "mlp")])
        assert torch.allclose(a + m - h, state.hidden[i + 1], atol=1e-5)
    split = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], _split(range(N_LAYERS))))
    assert (split - runner.full_logits(model, ids, mask))[mask.bool()].abs().max() > 1e-3


def test_neox_without_parallel_residual_is_sequential():
    model = tiny_model("gpt_neox")
    model.config.use_parallel_residual = False
    for b in arch.blocks(model):
        b.use_parallel_residual = False
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    assert not sublayer.parallel(model)
    split = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], _split(range(N_LAYERS))))
    _close(split, runner.full_logits(model, ids, mask), mask, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("label", list(DROPS))
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2", "gptj", "gpt_neox", "phi"])
def test_dropped_sublayers_runner_scheduled_and_reference_agree_and_the_cache_is_right(name, label, dtype):
    steps = DROPS[label]
    if name == "gemma3_text" and label == "with_parallel":
        pytest.skip("a parallel group of Gemma3 blocks mixes sliding and full attention (see test_reference)")
    model = tiny_model(name, dtype=dtype)
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    h = runner.run_blocks(model, state, state.hidden[0], steps)
    plain = [s for s in steps if not isinstance(s, Parallel)]
    if len(plain) == len(steps):  # the reference has no parallel groups
        _close(h, reference.run_sublayers(model, ids, mask, steps), mask, dtype)
        _close(runner.finish(model, h), reference.sublayer_logits(model, steps, ids, mask), mask, dtype)
    full = runner.full_logits(model, ids, mask)
    assert (runner.finish(model, h) - full)[mask.bool()].abs().max() > 1e-3  # something was dropped
    blocks_before = list(arch.blocks(model))
    with schedule.scheduled(model, steps) as m:
        _close(runner.full_logits(m, ids, mask), runner.finish(model, h), mask, dtype)
        with torch.no_grad():  # a prefix into the cache, then the rest from it (positions from the cache)
            first = m(ids[:1, :7], use_cache=True)
            rest = m(ids[:1, 7:], past_key_values=first.past_key_values, use_cache=True).logits
        _close(rest, runner.full_logits(m, ids[:1], mask[:1])[:, 7:], mask[:1, 7:], dtype)
        if dtype == torch.float32:  # greedy generation: the KV cache gives the uncached tokens
            prompt = ids[:1, :8]
            with torch.no_grad():
                cached = m.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
                uncached = m.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
            assert torch.equal(cached, uncached)
    assert list(arch.blocks(model)) == blocks_before and model.config.num_hidden_layers == N_LAYERS


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2", "gptj"])
def test_applied_sublayer_schedule_is_an_ordinary_checkpoint(name, tmp_path):
    """``schedule.apply``: the other sublayer's output projection zeroed; the edited model
    equals the reference, generates with a correct cache, and reloads with plain transformers."""
    import transformers as tf

    steps = DROPS["repeated_attn"] + [Sublayer(0, "mlp")]
    model = tiny_model(name)
    ids, mask = tiny_batch()
    ref = reference.sublayer_logits(model, steps, ids, mask)
    edited = copy.deepcopy(model)
    schedule.apply(edited, steps)
    _close(runner.full_logits(edited, ids, mask), ref, mask, torch.float32)
    _close(runner.full_logits(model, ids, mask), runner.full_logits(tiny_model(name), ids, mask), mask,
           torch.float32)  # the original is untouched
    prompt = ids[:1, :8]
    with torch.no_grad():
        cached = edited.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = edited.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    edited.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    _close(runner.full_logits(reloaded, ids, mask), ref, mask, torch.float32)


def test_gemma3_sublayer_positions_follow_their_blocks_types():
    model = tiny_model("gemma3_text")  # sliding, full, sliding, full
    with schedule.scheduled(model, [Sublayer(0, "mlp"), Sublayer(1, "attn"), Sublayer(1, "mlp"), 2,
                                    Sublayer(3, "mlp")]) as m:
        assert m.config.layer_types == ["full_attention", "sliding_attention"]  # MLPs ride along
        assert m.config.num_hidden_layers == 2
    assert model.config.layer_types == ["sliding_attention", "full_attention"] * 2


def sublayer_zoo(model) -> dict[str, edits.Edit]:
    L = arch.n_layers(model)
    zoo = {"unmodified": edits.unmodified(L), "whole_split": edits.from_schedule(_split(range(L)), L)}
    for label, steps in DROPS.items():
        zoo[label] = edits.from_schedule(steps, L)
    zoo["drop_attn_3"] = edits.from_schedule([0, 1, 2, Sublayer(3, "mlp")], L)
    return zoo


def test_edits_start_at_the_first_changed_block_and_describe_names_sublayers():
    L = N_LAYERS
    e = edits.from_schedule([0, 1, Sublayer(2, "mlp"), 3], L)
    assert e.start == 2 and e.steps == (Sublayer(2, "mlp"), 3)
    assert e.schedule(L) == [0, 1, Sublayer(2, "mlp"), 3]
    assert edits.from_schedule(DROPS["leading_mlp"], L).start == 0
    assert schedule.describe([0, Sublayer(1, "attn"), Parallel((2, 3), 2), np.int64(3)]) == "0 1.attn [2,3]x2 3"


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gptj"])
def test_sublayer_edits_on_a_capture_equal_the_edited_model(name, dtype):
    model = tiny_model(name, dtype=dtype)
    ids, mask = tiny_batch()
    zoo = sublayer_zoo(model)
    if name == "gemma3_text":
        zoo.pop("with_parallel")
    state = runner.capture(model, ids, mask, keep=edits.starts(zoo.values()) | {N_LAYERS})
    for label, e in zoo.items():
        ours = runner.finish(model, edits.run(model, state, e))
        with edits.applied(model, e) as m:
            theirs = runner.full_logits(m, ids, mask)
        _close(ours, theirs, mask, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_shared_loglikelihoods_and_heldout_loss_equal_each_sublayer_edited_model(dtype):
    model, tok = tiny_model("llama", dtype=dtype), tiny_tokenizer()
    zoo = sublayer_zoo(model)
    requests = token_requests()
    kw = dict(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", softmax_dtype=torch.float32)
    shared = prefix_eval.PrefixSharedLM(**kw, edits=list(zoo.values()), chunk_tokens=60)
    chunks = torch.randint(3, 97, (5, 16), generator=torch.Generator().manual_seed(0))
    losses = lm_loss.chunk_losses(model, chunks, list(zoo.values()), batch_size=2)
    for i, (label, e) in enumerate(zoo.items()):
        shared.current = i
        ours = shared._loglikelihood_tokens(requests, disable_tqdm=True)
        with edits.applied(model, e) as m:
            theirs = HFLM(**kw)._loglikelihood_tokens(requests, disable_tqdm=True)
            plain = lm_loss.chunk_losses(m, chunks, batch_size=2)[0]
        assert max(abs(a - b) for (a, _), (b, _) in zip(ours, theirs)) <= LL_TOL[dtype], label
        np.testing.assert_allclose(losses[i], plain, atol=1e-6 if dtype == torch.float32 else 2e-3, rtol=0)
    assert len({tuple(np.round(r, 6)) for r in losses}) >= len(zoo) - 1  # the edits differ ("whole_split" = unmodified)


def test_bad_sublayer_steps_are_refused_before_any_work():
    with pytest.raises(ValueError, match="sublayer part 'ffn' is not one of attn, mlp"):
        Sublayer(1, "ffn")
    with pytest.raises(ValueError, match="Sublayer block must be an integer"):
        Sublayer("1", "attn")
    with pytest.raises(ValueError, match=r"block index 9 out of range; allowed: 0..3"):
        schedule.validate([0, Sublayer(9, "attn")], 4)
    with pytest.raises(ValueError, match="members must be block indices"):
        schedule.validate([Parallel((Sublayer(1, "attn"), 2))], 4)
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    with pytest.raises(ValueError, match=r"block index 4 out of range"):
        runner.run_blocks(model, state, state.hidden[0], [Sublayer(4, "mlp")])
    with pytest.raises(ValueError, match="MLP sublayers only has no attention"):
        with schedule.scheduled(model, [Sublayer(i, "mlp") for i in range(4)]):
            pass
    assert model.config.num_hidden_layers == N_LAYERS and len(arch.blocks(model)) == N_LAYERS
    encoder = tiny_model("bert")
    calls = []
    for b in arch.blocks(encoder):
        b.register_forward_pre_hook(lambda *a: calls.append(1))
    state = runner.capture(encoder, ids, mask)
    calls.clear()
    msg = r"sublayer steps are not defined for bert \(a post-norm encoder\); supported model_type values: .*llama"
    with pytest.raises(ValueError, match=msg):
        runner.run_blocks(encoder, state, state.hidden[0], [0, Sublayer(1, "attn")])
    with pytest.raises(ValueError, match=msg):
        schedule.apply(copy.deepcopy(encoder), [0, Sublayer(1, "mlp")])
    with pytest.raises(ValueError, match=msg):
        sublayer.n_params(encoder, 0, "attn")
    assert not calls  # refused before any block ran


def test_sublayer_parameter_counts():
    model = tiny_model("llama")  # d 32, 4 heads of 8, 2 KV heads, MLP 64: q 32x32, k, v 16x32, o 32x32
    assert sublayer.n_params(model, 1, "attn") == 32 * 32 * 2 + 16 * 32 * 2 + 32
    assert sublayer.n_params(model, 1, "mlp") == 3 * 32 * 64 + 32
    gptj = tiny_model("gptj")  # the shared ln_1 counts for both parts
    block = sum(p.numel() for p in arch.blocks(gptj)[0].parameters())
    ln = sum(p.numel() for p in arch.blocks(gptj)[0].ln_1.parameters())
    assert sublayer.n_params(gptj, 0, "attn") + sublayer.n_params(gptj, 0, "mlp") == block + ln


# ---------------------------------------------------------------------------- the experiment (beyond.sublayers)

from layerlab.beyond import sublayers as exp  # noqa: E402
from layerlab.core.io import results
from layerlab.core.evidence import verdicts  # noqa: E402


def test_similarities_equal_an_independent_hook_computation():
    """LLM-Drop's criterion: cos(h, h + attn(norm h)) and cos(mid, mid + mlp(norm mid)) per
    real token, averaged over tokens; here from hooks on the norms' inputs, padding excluded."""
    model = tiny_model("llama")
    batches = [tiny_batch(seed=0), tiny_batch(seed=1, batch=2, seq=10)]
    sim, dist = exp.similarities(model, batches)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=name: seen.__setitem__(name, a[0]))
             for i, b in enumerate(arch.blocks(model))
             for name, m in ((("in", i), b.input_layernorm), (("mid", i), b.post_attention_layernorm))]
    sums, count = np.zeros((3, N_LAYERS)), 0
    try:
        for ids, mask in batches:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, use_cache=False)  # fills ``seen``
            real = mask.bool()
            cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1)[real].sum().item()  # noqa: E731
            for i in range(N_LAYERS):
                after = seen[("in", i + 1)] if i + 1 < N_LAYERS else None
                if after is None:  # the last block's output: HF's last hidden state is after the final norm
                    after = runner.capture(model, ids, mask).hidden[N_LAYERS]
                sums[:, i] += [cos(seen[("in", i)], seen[("mid", i)]), cos(seen[("mid", i)], after),
                               cos(seen[("in", i)], after)]
            count += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
    for k, kind in enumerate(("attn", "mlp", "block")):
        np.testing.assert_allclose(sim[sim.kind == kind].sort_values("block")["value"], sums[k] / count, atol=1e-5)
    assert np.isfinite(dist[1, :N_LAYERS]).all()


def test_plan_matches_parameters_and_drops_the_most_similar():
    model = tiny_model("llama")  # attention 3104 parameters, MLP 6176, block 9280
    sim = pd.DataFrame([{"kind": k, "block": b, "value": v} for k, vals in
                        (("attn", [0.9, 0.99, 0.95, 0.5]), ("mlp", [0.7, 0.8, 0.9, 0.6]), ("block", [0.1, 0.3, 0.2, 0.4]))
                        for b, v in enumerate(vals)])
    dist = np.full((5, 5), np.nan)
    dist[1, :4] = [0.3, 0.1, 0.2, 0.4]
    p = exp.plan(model, sim, dist, 1, exp.METHODS)
    assert p["block"]["dropped"] == [3] and p["block"]["params"] == p["block"]["target"] == 9280
    assert p["block_contiguous"]["dropped"] == [1]
    assert p["attn"]["k"] == 3 and p["attn"]["dropped"] == [0, 1, 2] and p["attn"]["params"] == 3 * 3104
    assert p["mlp"]["k"] == 2 and p["mlp"]["dropped"] == [1, 2] and p["mlp"]["params"] == 2 * 6176
    assert p["attn"]["steps"] == [Sublayer(0, "mlp"), Sublayer(1, "mlp"), Sublayer(2, "mlp"), 3]
    assert p["mlp"]["steps"] == [0, Sublayer(1, "attn"), Sublayer(2, "attn"), 3]


def test_profiles_are_validated():
    assert exp.profile_config("quick", 30)["blocks"] == [2, 3, 6]
    assert exp.profile_config("full", 28)["tasks"] == ["mmlu"]
    with pytest.raises(ValueError, match="profile: 'fast' is not one of smoke, quick, full"):
        exp.profile_config("fast", 30)
    with pytest.raises(ValueError, match="methods: .* must include 'attn'"):
        exp.profile_config("quick", 30, methods=["mlp"])
    with pytest.raises(ValueError, match=r"fractions: \[1.5\]"):
        exp.profile_config("quick", 30, fractions="[1.5]")
    with pytest.raises(ValueError, match="unknown settings"):
        exp.profile_config("quick", 30, rhos=[0.1])


def test_run_stores_points_that_equal_the_reference_and_resumes(tmp_path, monkeypatch):
    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    cfg = exp.profile_config("smoke", N_LAYERS)  # one block's worth
    batches = [tiny_batch(seed=2)]
    chunks = torch.randint(3, 97, (6, 16), generator=torch.Generator().manual_seed(0))
    points, items, _ = exp.run(model, None, "tiny", store, cfg, text_data=(batches, chunks))
    assert set(points.method) == {"none", *exp.METHODS} and (points.dataset == "heldout").all()
    for r in points.itertuples():
        steps = [Sublayer(int(s.split(".")[0]), s.split(".")[1]) if "." in s else int(s) for s in r.schedule.split()]
        logits = reference.sublayer_logits(model, steps, chunks, torch.ones_like(chunks))
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), chunks[:, 1:].flatten(), reduction="none")
        per_doc = ce.view(len(chunks), -1).mean(1).double().numpy() / np.log(97)
        mine = items[(items.method == r.method)].sort_values("item")["value"].to_numpy()
        np.testing.assert_allclose(mine, per_doc, atol=1e-5)
        assert r.value == pytest.approx(per_doc.mean(), abs=1e-5)
    table = exp.damage(points, items)
    assert len(table) == len(exp.METHODS) + 1 and table["parameters removed"].max() > 0

    def fail(*a, **k):
        raise AssertionError("recomputed a stored point")
    monkeypatch.setattr(exp.prefix_eval, "evaluate_edits", fail)
    monkeypatch.setattr(exp, "similarities", fail)
    again, _, _ = exp.run(model, None, "tiny", store, cfg, text_data=(batches, chunks))
    assert sorted(again["value"]) == sorted(points["value"])
    rows = exp.claim_rows(store)
    assert {r["model"] for r in rows} == {"tiny"} and all(r["paper"] == exp.LLM_DROP for r in rows)


def _synthetic(attn_shift: float, comp_shift: float, noise: float, ratio: float = 1.0, n_docs: int = 30,
               dataset: str = "heldout", base_acc: float | None = None):
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.05, n_docs)
    metric = "loss_norm" if dataset == "heldout" else "acc"
    pts, its = [], []
    for method, n, shift in (("none", 0, 0.0), ("attn", 3, attn_shift), ("mlp", 3, comp_shift)):
        vals = base + shift + (rng.normal(0, noise, n_docs) if n else 0)
        if base_acc is not None:
            vals = (rng.random(n_docs) < (base_acc if not n else base_acc - shift)).astype(float)
        its += [{"method": method, "n_blocks": n, "dataset": dataset, "metric": metric, "item": i, "value": v}
                for i, v in enumerate(vals)]
        pts.append({"method": method, "n_blocks": n, "dataset": dataset, "metric": metric, "value": vals.mean(),
                    "k": 4 * (method == "attn"), "params_removed": 100 * ratio if n else 0, "block_params_removed": 100,
                    "dropped": ""})
    return pd.DataFrame(pts), pd.DataFrame(its)


def test_claim_verdicts_are_all_reachable():
    word = lambda rows: verdicts.word(rows[0]["verdict"])  # noqa: E731
    assert word(exp.claims(*_synthetic(0.01, 0.2, 0.01), "m")) == verdicts.AGREES
    assert word(exp.claims(*_synthetic(0.2, 0.01, 0.01), "m")) == verdicts.DISAGREES
    assert word(exp.claims(*_synthetic(0.1, 0.1, 0.2), "m")) == verdicts.INCONCLUSIVE
    assert word(exp.claims(*_synthetic(0.01, 0.2, 0.01, ratio=1.5), "m")) == verdicts.NOT_TESTABLE
    at_chance = exp.claims(*_synthetic(0.0, 0.0, 0.0, n_docs=60, dataset="mmlu", base_acc=0.25), "m")
    assert word(at_chance) == verdicts.NOT_TESTABLE and "chance" in at_chance[0]["verdict"]


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sublayer_paths_agree_on_smollm2(dtype):
    """The real model: attention then MLP of every block is the model; a drop of attention
    and MLP sublayers gives one answer on the runner, the scheduled model and the reference."""
    import layerlab

    model, tok = layerlab.load("smollm2-135m", dtype=dtype)
    enc = tok(["The capital of France is Paris, and", "Two plus two equals"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    torch_dtype = model.dtype
    L = arch.n_layers(model)
    state = runner.capture(model, ids, mask)
    _close(runner.finish(model, runner.run_blocks(model, state, state.hidden[0], _split(range(L)))),
           runner.full_logits(model, ids, mask), mask, torch_dtype)
    steps = [Sublayer(i, "mlp") if i in (10, 17, 23) else Sublayer(i, "attn") if i == 5 else i for i in range(L)]
    ours = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], steps))
    _close(ours, reference.sublayer_logits(model, steps, ids, mask), mask, torch_dtype)
    with schedule.scheduled(model, steps) as m:
        _close(runner.full_logits(m, ids, mask), ours, mask, torch_dtype)
