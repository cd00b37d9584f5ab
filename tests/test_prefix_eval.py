"""Prefix-shared evaluation (issue #19): every edit's log-likelihoods equal those of the
edited model's own forward pass, for LASER edits, drops, the deepest-layers heuristic and
every Painters variant; memory bounded by the chunk, not the number of requests."""

import numpy as np
import pytest
import torch
from lm_eval.models.huggingface import HFLM

from layerlab.core.model import arch, edits, runner, schedule
from layerlab.core.eval import lm_loss, prefix_eval
from layerlab.prune import blocks as prune
from layerlab.laser import rank
from tiny import N_LAYERS, VOCAB, tiny_batch, tiny_model

BF16 = torch.bfloat16
# bf16: the prefix path and the model's own forward pass round in different orders
# (captured masks, per-block calls); per-token log-likelihoods of size ~4.6 nats
# (log 97) then differ by a few bf16 units: 0.1 nats per request of up to 4 tokens
LL_TOL = {torch.float32: 1e-5, BF16: 0.1}


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


def edit_zoo(model) -> dict[str, edits.Edit]:
    """One edit of every kind the book scores: LASER, a similarity-style drop, the
    deepest-layers heuristic, every Painters variant, and the unmodified model."""
    L = arch.n_layers(model)
    cache = rank.SVDCache(model)
    laser = rank.Reduction("mlp_in", 2, 0.1)
    zoo = {
        "unmodified": edits.unmodified(L),
        "laser": edits.from_weights(lambda m: rank.reduced(m, laser, cache), laser.layer),
        "drop_1_2": edits.from_schedule(schedule.drop(L, [1, 2]), L),
        "deepest_2": edits.from_schedule(schedule.drop(L, prune.deepest_blocks(L, 2)), L),
    }
    for variant in schedule.VARIANTS:
        zoo[variant] = edits.from_schedule(schedule.build(variant, L, 1, seed=3, iterations=2), L)
    return zoo


def token_requests(seed: int = 0, n: int = 12) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):  # different lengths, one- and multi-token continuations, shared contexts
        ctx = [int(t) for t in rng.integers(3, VOCAB, size=3 + (i * 5) % 17)]
        for cont in ([int(rng.integers(3, VOCAB))], [int(t) for t in rng.integers(3, VOCAB, size=1 + i % 4)]):
            out.append((("", ""), ctx, cont))
    return out


def test_start_is_the_first_changed_block():
    L = 8
    assert edits.from_schedule(schedule.in_order(L), L) == edits.unmodified(L)
    assert edits.from_schedule(schedule.drop(L, [3, 4]), L).start == 3
    assert edits.from_schedule(schedule.drop(L, [3, 4]), L).steps == (5, 6, 7)
    assert edits.from_schedule(schedule.drop(L, prune.deepest_blocks(L, 2)), L).steps == (7,)
    assert edits.from_schedule(schedule.build("reverse", L, 2), L).start == 2
    assert edits.from_schedule(schedule.build("skip", L, 2), L).steps == (6, 7)
    e = edits.from_schedule(schedule.build("looped_parallel", L, 3, iterations=2), L)
    assert e.start == 3 and e.schedule(L) == schedule.build("looped_parallel", L, 3, iterations=2)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gptj"])
def test_run_on_a_capture_equals_the_edited_model(name, dtype):
    model = tiny_model(name, dtype=dtype)
    ids, mask = tiny_batch()
    zoo = edit_zoo(model)
    state = runner.capture(model, ids, mask, keep=edits.starts(zoo.values()) | {N_LAYERS})
    real = mask.bool()
    tol = {torch.float32: 1e-5, BF16: 0.05}[dtype]
    for label, e in zoo.items():
        with edits.weights_applied(model, e):
            ours = runner.finish(model, edits.run(model, state, e)).float()
        with edits.applied(model, e) as m:
            theirs = runner.full_logits(m, ids, mask).float()
        scale = max(1.0, float(theirs[real].abs().max()))
        assert float((ours - theirs)[real].abs().max()) <= tol * scale, label


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_shared_loglikelihoods_equal_hflm_on_each_edited_model(name, dtype):
    model, tok = tiny_model(name, dtype=dtype), tiny_tokenizer()
    zoo = edit_zoo(model)
    requests = token_requests()
    kw = dict(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", softmax_dtype=torch.float32)
    shared = prefix_eval.PrefixSharedLM(**kw, edits=list(zoo.values()), chunk_tokens=60)
    for i, (label, e) in enumerate(zoo.items()):
        shared.current = i
        ours = shared._loglikelihood_tokens(requests, disable_tqdm=True)
        with edits.applied(model, e):
            theirs = HFLM(**kw)._loglikelihood_tokens(requests, disable_tqdm=True)
        diff = max(abs(a - b) for (a, _), (b, _) in zip(ours, theirs))
        assert diff <= LL_TOL[dtype], (label, diff)
        if dtype == torch.float32:
            assert [g for _, g in ours] == [g for _, g in theirs], label
    # prefix computed once per batch for all edits, then only suffixes
    assert shared.model_calls["suffix"] == (len(zoo) - 1) * shared.model_calls["capture"]  # unmodified: the capture


def test_memory_is_bounded_by_the_chunk_not_the_requests():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    zoo = edit_zoo(model)
    kw = dict(pretrained=model, tokenizer=tok, batch_size=2, device="cpu", softmax_dtype=torch.float32)
    peaks = {}
    for n in (6, 24):
        lm = prefix_eval.PrefixSharedLM(**kw, edits=list(zoo.values()), chunk_tokens=40)
        peak = [0]
        original = runner.capture

        def spy(*a, **k):
            peak[0] = max(peak[0], sum(int(h.numel()) for s in lm._states.values() for h in s.hidden if h is not None))
            return original(*a, **k)

        prefix_eval.runner.capture = spy
        try:
            lm._loglikelihood_tokens(token_requests(n=n), disable_tqdm=True)
        finally:
            prefix_eval.runner.capture = original
        peaks[n] = peak[0]
        assert not lm._states  # dropped after the last chunk
    assert 0 < peaks[24] <= 1.5 * peaks[6]  # four times the requests, not four times the states


def test_chunking_keeps_shared_contexts_together_and_answers_do_not_depend_on_it():
    requests = token_requests(n=10)
    for size in (1, 50, 10_000):
        parts = prefix_eval.chunks(requests, size)
        assert sorted(map(id, sum(parts, []))) == sorted(map(id, requests))
        where = {}
        for k, part in enumerate(parts):
            for _, ctx, cont in part:
                where.setdefault(tuple(ctx) + tuple(cont[:-1]), set()).add(k)
        assert all(len(v) == 1 for v in where.values())
    model, tok = tiny_model("llama"), tiny_tokenizer()
    zoo = edit_zoo(model)
    kw = dict(pretrained=model, tokenizer=tok, batch_size=3, device="cpu", softmax_dtype=torch.float32)
    small = prefix_eval.PrefixSharedLM(**kw, edits=list(zoo.values()), chunk_tokens=1)
    big = prefix_eval.PrefixSharedLM(**kw, edits=list(zoo.values()), chunk_tokens=10_000)
    for i in range(len(zoo)):
        small.current = big.current = i
        a = small._loglikelihood_tokens(requests, disable_tqdm=True)
        b = big._loglikelihood_tokens(requests, disable_tqdm=True)
        np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=1e-5)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        prefix_eval.PrefixSharedLM(**kw, edits=[], chunk_tokens=0)


def test_no_batch_needs_more_dense_logits_than_the_budget(monkeypatch):
    """A long input batched with short ones makes HFLM's log-softmax window nearly as wide as
    the long one (28 GB on Gemma3's 262k head with 5-shot MMLU): chunks keep every batch's
    rows x window x vocab under LOGIT_BUDGET, and the answers do not change."""
    rng = np.random.default_rng(3)
    requests = [(("", ""), [int(t) for t in rng.integers(3, VOCAB, size=n)], [int(rng.integers(3, VOCAB))])
                for n in (90, 40, 12, 11, 10, 9, 8, 8, 7, 6)]
    model, tok = tiny_model("llama"), tiny_tokenizer()
    vocab = model.config.vocab_size
    loose = prefix_eval.chunks(requests, 10_000, batch_size=16, vocab=vocab, logit_budget=10 ** 12)
    assert len(loose) == 1 and loose == prefix_eval.chunks(requests, 10_000)  # no vocab: tokens only
    budget = 50 * vocab  # positions x vocab
    tight = prefix_eval.chunks(requests, 10_000, batch_size=16, vocab=vocab, logit_budget=budget)
    assert len(tight) > 1 and sorted(map(id, sum(tight, []))) == sorted(map(id, requests))
    assert [len(c) for c in tight][0] == 1  # the 90-token input alone: 2 rows x a 52-position window is over

    seen, original = [], prefix_eval.scored_logits
    monkeypatch.setattr(prefix_eval, "scored_logits", lambda *a: seen.append(original(*a).numel()) or original(*a))
    kw = dict(pretrained=model, tokenizer=tok, batch_size=16, device="cpu", softmax_dtype=torch.float32,
              edits=list(edit_zoo(model).values()))
    wide = prefix_eval.PrefixSharedLM(**kw)._loglikelihood_tokens(requests, disable_tqdm=True)
    assert max(seen) > budget  # without the bound one batch holds the long input and the short ones
    monkeypatch.setattr(prefix_eval, "LOGIT_BUDGET", budget)
    seen.clear()
    bounded = prefix_eval.PrefixSharedLM(**kw)._loglikelihood_tokens(requests, disable_tqdm=True)
    assert 0 < max(seen) <= budget
    np.testing.assert_allclose([x for x, _ in bounded], [x for x, _ in wide], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_shared_heldout_loss_equals_each_edited_model(dtype):
    model = tiny_model("gemma3_text", dtype=dtype)
    zoo = edit_zoo(model)
    chunks = torch.randint(3, VOCAB, (5, 16), generator=torch.Generator().manual_seed(0))
    shared = lm_loss.chunk_losses(model, chunks, list(zoo.values()), batch_size=2)
    assert shared.shape == (len(zoo), 5)
    for i, e in enumerate(zoo.values()):
        with edits.applied(model, e) as m:
            plain = lm_loss.chunk_losses(m, chunks, batch_size=2)[0]
        tol = 1e-6 if dtype == torch.float32 else 2e-3  # normalised by log V: nats / 4.6
        np.testing.assert_allclose(shared[i], plain, atol=tol, rtol=0)


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lm_eval_edits_equal_lm_eval_on_each_edited_smollm2(dtype):
    """Real lm-eval tasks (a multiple-choice and a cloze one) on smollm2-135m: every edit's
    per-sample log-likelihoods equal plain lm-eval on the edited model."""
    import layerlab
    from layerlab.core.eval import evaluation

    model, tok = layerlab.load("smollm2-135m", dtype=dtype)
    L = arch.n_layers(model)
    cache = rank.SVDCache(model)
    red = rank.Reduction("mlp_in", 25, 0.05)
    zoo = {"unmodified": edits.unmodified(L),
           "laser": edits.from_weights(lambda m: rank.reduced(m, red, cache), red.layer),
           "similarity": edits.from_schedule(schedule.drop(L, [20, 21, 22, 23]), L),
           "deepest": edits.from_schedule(schedule.drop(L, prune.deepest_blocks(L, 4)), L),
           "random": edits.from_schedule(schedule.build("random", L, 10, seed=1), L),
           "looped_parallel": edits.from_schedule(schedule.build("looped_parallel", L, 12, iterations=2), L)}
    tasks = ["arc_easy", "lambada"]
    shared = prefix_eval.lm_eval_edits(model, tok, tasks, zoo, limit=6, batch_size=8)
    tol = {"float32": 1e-4, "bfloat16": 0.25}[dtype]  # summed nats over a continuation; bf16: see LL_TOL
    for label, e in zoo.items():
        with edits.applied(model, e):
            _, plain = evaluation.lm_eval(model, tok, tasks, limit=6, batch_size=8, log_samples=True)
        for t in tasks:
            name = evaluation.LM_EVAL_TASKS[t]
            ours = [r[0][0] for s in shared[label][1]["samples"][name] for r in s["resps"]]
            theirs = [r[0][0] for s in plain["samples"][name] for r in s["resps"]]
            assert len(ours) == len(theirs) > 0
            diff = float(np.max(np.abs(np.array(ours) - np.array(theirs))))
            assert diff <= tol, (label, t, diff)
        # the continuous scores beside 0/1: ARC-Easy's margin is > 0 exactly where acc is 1 (lm-eval's own
        # argmax), and the gold log-likelihood is lm-eval's; LAMBADA (not multiple choice) has none
        rows = prefix_eval.item_rows(shared[label][1], tasks)
        acc = rows[(rows.dataset == "arc_easy") & (rows.metric == "acc")]
        assert len(acc) == 6 and ((acc.margin > 0) == (acc.value == 1)).all()
        first = shared[label][1]["samples"][evaluation.LM_EVAL_TASKS["arc_easy"]][0]
        assert acc.gold_logprob.iloc[0] == first["filtered_resps"][int(first["target"])][0]
        assert rows[rows.dataset == "lambada"].margin.isna().all()


def test_choice_scores_of_constructed_samples():
    mc = {"target": 2, "filtered_resps": [(-3.0, False), (-1.0, True), (-2.5, False)]}
    assert prefix_eval.choice_scores(mc) == (-2.5, -1.5)
    assert prefix_eval.choice_scores({**mc, "target": "1"}) == (-1.0, 1.5)
    for bad in ({**mc, "target": 5}, {**mc, "target": "B"}, {"target": "Paris", "filtered_resps": ["Paris"]},
                {"target": 0, "filtered_resps": [(-1.0, True)]}, {}):
        assert all(np.isnan(prefix_eval.choice_scores(bad))), bad


def test_a_killed_run_resumes_from_its_journal_with_the_same_answers(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    zoo = list(edit_zoo(model).values())
    requests = token_requests(n=10)
    kw = dict(pretrained=model, tokenizer=tok, batch_size=2, device="cpu", softmax_dtype=torch.float32,
              edits=zoo, chunk_tokens=40)
    n_chunks = len(prefix_eval.chunks(requests, 40))
    assert n_chunks >= 3
    plain = prefix_eval.PrefixSharedLM(**kw)
    expected = [plain._loglikelihood_tokens(requests, disable_tqdm=True) for plain.current in range(len(zoo))]

    killed = prefix_eval.PrefixSharedLM(**kw, journal=tmp_path)
    done = []
    original = killed._compute_chunk

    def dies_on_the_third_chunk(chunk, n_layers):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return original(chunk, n_layers)

    killed._compute_chunk = dies_on_the_third_chunk
    with pytest.raises(KeyboardInterrupt):
        killed._loglikelihood_tokens(requests, disable_tqdm=True)
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not list(tmp_path.glob(".*.tmp"))

    resumed = prefix_eval.PrefixSharedLM(**kw, journal=tmp_path)
    got = [resumed._loglikelihood_tokens(requests, disable_tqdm=True) for resumed.current in range(len(zoo))]
    assert got == expected  # exact: the journal keeps every float64
    assert resumed.model_calls["chunks_resumed"] == 2
    assert resumed.model_calls["capture"] == plain.model_calls["capture"] - killed.model_calls["capture"]

    other_batching = prefix_eval.PrefixSharedLM(**{**kw, "batch_size": 3}, journal=tmp_path)
    other_batching._loglikelihood_tokens(requests, disable_tqdm=True)
    assert other_batching.model_calls["chunks_resumed"] == 0  # a different batch size pads differently


def test_a_store_journal_is_kept_when_interrupted_and_removed_when_done(tmp_path):
    from layerlab.core.io import results

    store = results.ResultStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.journal("t", ["k1", "k2"]) as j:
            (j / "chunk.json").write_text("[]")
            raise KeyboardInterrupt
    with store.journal("t", ["k1", "k2"]) as again:
        assert again == j and (again / "chunk.json").exists()
        with store.journal("t", ["k2", "k1"]) as reordered:  # edits follow the keys' order
            assert reordered != j
    assert not j.exists() and not reordered.exists()
    assert store.table().empty  # a journal holds no points
