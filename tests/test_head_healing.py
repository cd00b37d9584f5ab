"""Healing by fine-tuning the head and the last blocks (prune.healing.heal_partial) and its
experiment against LoRA healing (beyond.head_healing)."""

import numpy as np
import pandas as pd
import pytest
import torch

from layerlab.beyond import head_healing
from layerlab.core.model import arch
from layerlab.prune import blocks as prune, curve as prune_curve, healing
from tiny import tiny_model

CONFIG = healing.HealConfig(rank=4, steps=12, learning_rate=3e-3, warmup_steps=2, batch_size=4, seq_len=12)


def _chunks(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(3, 40, (16, 12))  # a learnable, low-entropy stream


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_only_the_head_norm_and_last_blocks_change():
    model = prune.pruned_copy(tiny_model("llama"), [1])  # 3 blocks left; train the last 2
    before = _snapshot(model)
    partial = healing.PartialConfig(last=2, learning_rate=1e-3)
    out = healing.heal_partial(model, _chunks(), CONFIG, partial, progress=False)
    healed = out["model"]
    expected = {n for n in before if n.startswith(("model.layers.1.", "model.layers.2.", "model.norm.", "lm_head."))}
    assert set(out["trained"]) == expected
    for n, p in healed.named_parameters():
        if n in expected:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # bit-identical
    assert out["n_trained"] == sum(before[n].numel() for n in expected)
    assert all(p.requires_grad for p in healed.parameters())  # the flags it found are restored
    assert not healed.training


def test_steps_tokens_and_batches_equal_lora():
    chunks = _chunks()
    lora = healing.heal(prune.pruned_copy(tiny_model("llama"), [1]), chunks, CONFIG, progress=False)
    part = healing.heal_partial(prune.pruned_copy(tiny_model("llama"), [1]), chunks, CONFIG, progress=False)
    assert np.array_equal(lora["order"], part["order"]) and lora["order"].shape == (CONFIG.steps, CONFIG.batch_size)
    assert lora["tokens"] == part["tokens"] == CONFIG.steps * CONFIG.batch_size * chunks.shape[1]
    assert len(lora["losses"]) == len(part["losses"]) == CONFIG.steps
    # the order is the one heal drew before batch_order existed: one rng.integers call per step
    rng = np.random.default_rng(CONFIG.seed)
    assert np.array_equal(lora["order"], [rng.integers(0, len(chunks), size=CONFIG.batch_size)
                                          for _ in range(CONFIG.steps)])


def test_training_lowers_the_loss_on_the_training_batches():
    model = prune.pruned_copy(tiny_model("llama"), [1])
    chunks = _chunks()
    before, _ = prune.normalised_loss(model, chunks)
    out = healing.heal_partial(model, chunks, healing.HealConfig(steps=30, warmup_steps=3, batch_size=4),
                               healing.PartialConfig(learning_rate=3e-3), progress=False)
    after, _ = prune.normalised_loss(out["model"], chunks)
    assert after < before - 0.05
    assert out["losses"][-1] < out["losses"][0]


def test_tied_head_is_untied_and_the_embedding_kept():
    model = prune.pruned_copy(tiny_model("gpt2"), [1])  # GPT-2 ties lm_head to wte
    assert healing.head_is_tied(model)
    emb0 = arch.embedding(model).weight.detach().clone()
    out = healing.heal_partial(model, _chunks(), CONFIG, healing.PartialConfig(learning_rate=1e-3), progress=False)
    m = out["model"]
    assert not healing.head_is_tied(m) and m.config.tie_word_embeddings is False
    assert torch.equal(arch.embedding(m).weight, emb0)  # the input embedding is untouched
    assert not torch.equal(arch.head(m).weight, emb0)  # the head trained
    assert "lm_head.weight" in out["trained"] and "transformer.wte.weight" not in out["trained"]


def test_untied_head_survives_save_and_reload(tmp_path):
    from transformers import AutoModelForCausalLM

    model = prune.pruned_copy(tiny_model("llama"), [1])
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight  # a tied llama, as SmolLM2
    out = healing.heal_partial(model, _chunks(), CONFIG, healing.PartialConfig(learning_rate=1e-3), progress=False)
    out["model"].save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = _chunks()[:2]
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, out["model"](ids).logits, rtol=0, atol=1e-6)
    assert torch.equal(again.model.embed_tokens.weight, out["model"].model.embed_tokens.weight)


@pytest.mark.parametrize("tied,head_trains,embedding_changes", [("train", True, True), ("freeze", False, False)])
def test_tied_train_and_freeze(tied, head_trains, embedding_changes):
    model = prune.pruned_copy(tiny_model("gpt2"), [1])
    emb0, norm0 = arch.embedding(model).weight.detach().clone(), arch.final_norm(model).weight.detach().clone()
    out = healing.heal_partial(model, _chunks(), CONFIG, healing.PartialConfig(learning_rate=1e-3, tied=tied),
                               progress=False)
    m = out["model"]
    assert healing.head_is_tied(m)  # never untied in these modes
    assert (not torch.equal(arch.embedding(m).weight, emb0)) == embedding_changes
    assert ("lm_head.weight" in out["trained"] or "transformer.wte.weight" in out["trained"]) == head_trains
    assert not torch.equal(arch.final_norm(m).weight, norm0)


def test_bf16_updates_accumulate_in_float32_masters():
    """At lr 1e-5 one AdamW step (~1e-5) is below half a bf16 ulp of weights ~0.02 (~6e-5):
    a bf16 optimiser would round every step away; float32 masters accumulate them."""
    model = prune.pruned_copy(tiny_model("llama", dtype=torch.bfloat16), [1])
    w0 = arch.weight(model, "mlp_in", 2).read().clone()
    cfg = healing.HealConfig(steps=20, warmup_steps=1, batch_size=4)
    out = healing.heal_partial(model, _chunks(), cfg, healing.PartialConfig(learning_rate=1e-5), progress=False)
    w1 = arch.weight(out["model"], "mlp_in", 2).read()
    assert w1.dtype == torch.bfloat16
    assert (w1 != w0).float().mean() > 0.05


@pytest.mark.parametrize("bad,match", [(dict(tied="sometimes"), "tied: 'sometimes'; allowed: untie, train, freeze"),
                                       (dict(last=7), r"last: 7 blocks; allowed: integers 0\.\.3"),
                                       (dict(last=-1), "last: -1"),
                                       (dict(learning_rate=0), "learning_rate: 0; allowed: a number > 0")])
def test_bad_config_is_refused_before_training(bad, match):
    model = prune.pruned_copy(tiny_model("llama"), [1])
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        healing.heal_partial(model, _chunks(), CONFIG, healing.PartialConfig(**bad), progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_profile_config_validates():
    cfg = head_healing.profile_config("quick")
    assert cfg["last"] == 3 and cfg["partial_lr"] is None and len(cfg["fractions"]) == 1
    assert cfg["heal_steps"] == prune_curve.profile_config("quick")["heal_steps"]  # LoRA points shared with the chapter
    assert head_healing.profile_config("full")["tasks"] == ["mmlu", "boolq"]
    assert head_healing.profile_config("quick", heal_steps=5, partial_lr=1e-5)["heal_steps"] == 5
    with pytest.raises(ValueError, match="tasks"):
        head_healing.profile_config("quick", tasks=["nope"])
    with pytest.raises(ValueError, match="fractions"):
        head_healing.profile_config("quick", fractions=[0.0])
    with pytest.raises(ValueError, match="profile"):
        head_healing.profile_config("medium")
    with pytest.raises(ValueError, match="tied"):
        head_healing.profile_config("quick", tied="both")
    with pytest.raises(ValueError, match="methods: \\['random'\\]; allowed: a non-empty list of similarity, deepest"):
        head_healing.profile_config("quick", methods=["random"])
    assert head_healing.profile_config("quick")["methods"] == ["similarity", "deepest"]
    with pytest.raises(ValueError, match="partial_lr"):
        head_healing.profile_config("quick", partial_lr=-1.0)


def _items(values: dict[str, np.ndarray], dataset: str = "heldout", metric: str = "loss_norm") -> pd.DataFrame:
    rows = []
    for healer, v in values.items():
        rows.append(pd.DataFrame({"dataset": dataset, "metric": metric, "item": np.arange(len(v)), "value": v,
                                  "healer": healer, "method": "similarity", "n": 3}))
    return pd.concat(rows, ignore_index=True)


def test_claims_reach_every_verdict():
    rng = np.random.default_rng(0)
    base = 0.6 + 0.05 * rng.standard_normal(40)
    better = _items({"lora": base, "head+last": base - 0.02 + 0.001 * rng.standard_normal(40)})
    worse = _items({"lora": base, "head+last": base + 0.02 + 0.001 * rng.standard_normal(40)})
    unsure = _items({"lora": base, "head+last": base + 0.01 * rng.standard_normal(40)})
    words = [head_healing.judge(i, "heldout", "loss_norm", "similarity", 3)["verdict"] for i in (better, worse, unsure)]
    assert words == ["agrees", "disagrees", "inconclusive"]
    acc = np.r_[np.ones(60), np.zeros(40)]
    gained = acc.copy()
    gained[60:80] = 1
    qa = _items({"lora": acc, "head+last": gained, "unpruned": acc}, "arc_easy", "acc")
    assert head_healing.judge(qa, "arc_easy", "acc", "similarity", 3)["verdict"].startswith("agrees")
    lost = acc.copy()
    lost[:20] = 0
    assert head_healing.judge(_items({"lora": acc, "head+last": lost, "unpruned": acc}, "arc_easy", "acc"),
                              "arc_easy", "acc", "similarity", 3)["verdict"].startswith("disagrees")
    # two modified models compared: an unpruned model at chance is reported beside, not a gate
    chance = _items({"lora": acc, "head+last": gained, "unpruned": np.r_[np.ones(26), np.zeros(74)]},
                    "arc_easy", "acc")
    row = head_healing.judge(chance, "arc_easy", "acc", "similarity", 3)
    assert row["verdict"].startswith("agrees") and "Wilson lower bound" in row["ours"] and row["n"] == 100


def test_run_stores_both_healers_and_recomputes_nothing(tmp_path, monkeypatch):
    from layerlab.core.eval import lm_loss
    from layerlab.core.io import results
    from tiny import tiny_batch

    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    ids, mask = tiny_batch()
    d = prune.angular_distances(prune.last_token_states(model, [(ids, mask)]))
    cfg = head_healing.profile_config("smoke", fractions=[0.5], tasks=[], heal_steps=3, lora_rank=2, last=1)
    cfg["seq_len"] = 16
    loss, train = _chunks(1)[:, :12], _chunks(2)
    rows, items, timer = head_healing.run(model, None, "tiny", store, cfg, distances=d, loss_chunks=loss,
                                          train_chunks=train)
    assert set(rows["healer"]) == set(head_healing.HEALERS) and set(items["healer"]) == set(head_healing.HEALERS)
    assert set(rows[rows.healer == "head+last"]["method"]) == {"similarity", "deepest"}
    # the stored head+last point equals an independent run of heal_partial on the pruned model
    blocks = prune.deepest_blocks(4, 2)
    hc = prune_curve.heal_config(cfg, 0)
    twin = healing.heal_partial(prune.pruned_copy(model, blocks), train, hc, head_healing.partial_config(cfg),
                                progress=False)["model"]
    per_chunk = lm_loss.chunk_losses(twin, loss)[0]
    mine = items[(items.healer == "head+last") & (items.method == "deepest")].sort_values("item")
    np.testing.assert_allclose(mine["value"].to_numpy(), per_chunk, atol=1e-6)
    assert {r["verdict"].split(":")[0] for r in head_healing.claims(items, "tiny")} <= {
        "agrees", "disagrees", "inconclusive", "not testable"}
    assert len(head_healing.summary(rows, items)) == 2  # one row per method (held-out loss)

    def fail(*a, **k):
        raise AssertionError("trained again")
    monkeypatch.setattr(head_healing, "heal_partial", fail)
    monkeypatch.setattr(prune_curve, "heal", fail)
    again, _, _ = head_healing.run(model, None, "tiny", store, cfg, distances=d, loss_chunks=loss, train_chunks=train)
    assert sorted(again["value"]) == sorted(rows["value"])
    with pytest.raises(AssertionError, match="trained again"):  # other partial settings: another key
        head_healing.run(model, None, "tiny", store, dict(cfg, partial_lr=1e-4), distances=d, loss_chunks=loss,
                         train_chunks=train)


@pytest.mark.parametrize("name", ["qwen2", "gemma3_text", "gpt_neox", "phi", "gptj", "mistral"])
def test_every_decoder_trains_only_its_head_norm_and_last_block(name):
    from tiny import tiny_model as build

    model = prune.pruned_copy(build(name), [1])
    before = _snapshot(model)
    emb0 = arch.embedding(model).weight.detach().clone()
    tied = healing.head_is_tied(model)
    out = healing.heal_partial(model, _chunks(), healing.HealConfig(steps=2, warmup_steps=1, batch_size=2),
                               healing.PartialConfig(last=1, learning_rate=1e-3), progress=False)
    m = out["model"]
    last = arch.blocks(m)[-1]
    wanted = {id(p) for mod in (last, arch.final_norm(m), arch.head(m)) for p in mod.parameters()}
    for n, p in m.named_parameters():
        if n not in before:  # the head's own copy of a tied matrix
            assert tied and p is arch.head(m).weight
            continue
        assert torch.equal(p, before[n]) != (id(p) in wanted), n
    assert torch.equal(arch.embedding(m).weight, emb0)  # never the input embedding


def test_claim_rows_read_the_store_alone(tmp_path):
    from layerlab.core.io import results
    from tiny import tiny_batch

    model, store = tiny_model("llama"), results.ResultStore(tmp_path)
    ids, mask = tiny_batch()
    d = prune.angular_distances(prune.last_token_states(model, [(ids, mask)]))
    cfg = head_healing.profile_config("smoke", fractions=[0.5], tasks=[], heal_steps=3, lora_rank=2, last=1)
    rows, items, _ = head_healing.run(model, None, "tiny", store, cfg, distances=d, loss_chunks=_chunks(1)[:, :12],
                                      train_chunks=_chunks(2))
    from_store = head_healing.claim_rows(store)
    direct = head_healing.claims(items, "tiny")
    assert [r["interval"] for r in from_store] == [r["interval"] for r in direct] and len(direct) == 2
    assert all(r["counted"] for r in from_store)
