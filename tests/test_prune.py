import math

import numpy as np
import pytest
import torch

from layerlab.core.model import arch, runner
from layerlab.prune import blocks as prune
from tiny import DECODERS, N_LAYERS, tiny_batch, tiny_model


def test_distances_match_an_independent_computation_from_hf_hidden_states():
    model = tiny_model("llama")
    ids, mask = tiny_batch()
    states = prune.last_token_states(model, [(ids, mask)])
    d = prune.angular_distances(states)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
    last = mask.sum(1) - 1
    for n in range(1, N_LAYERS):
        for layer in range(0, N_LAYERS - n):  # both ends before the final norm: HF agrees
            a = hs[layer][torch.arange(3), last].double()
            b = hs[layer + n][torch.arange(3), last].double()
            ref = np.mean([math.acos(max(-1.0, min(1.0, float(torch.cosine_similarity(x, y, dim=0))))) / math.pi
                           for x, y in zip(a, b)])
            assert d[n, layer] == pytest.approx(ref, abs=1e-9)
    assert np.isnan(d[2, N_LAYERS - 1]) and not np.isnan(d[N_LAYERS, 0])
    # the last boundary is the last block's output before the final norm
    assert torch.allclose(arch.final_norm(model)(states[N_LAYERS].unsqueeze(0))[0],
                          hs[N_LAYERS][torch.arange(3), last].float(), atol=1e-5)


def test_best_start_and_heuristic():
    d = np.full((5, 5), np.nan)
    d[2, :3] = [0.5, 0.1, 0.3]
    assert prune.best_start(d, 2) == 1
    assert prune.similarity_blocks(d, 2) == [1, 2]
    assert prune.deepest_blocks(30, 3) == [26, 27, 28]
    with pytest.raises(ValueError, match="n: 30 out of range; allowed: 0..29"):
        prune.deepest_blocks(30, 30)


@pytest.mark.parametrize("name", DECODERS)
def test_dropping_blocks_equals_skipping_them_in_the_runner(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    expected = runner.finish(model, runner.run_blocks(model, state, state.hidden[0], [0, 3]))
    pruned = prune.pruned_copy(model, [1, 2])
    assert arch.n_layers(pruned) == 2 and pruned.config.num_hidden_layers == 2
    got = runner.full_logits(pruned, ids, mask)
    real = mask.bool()
    assert (got - expected)[real].abs().max() < 1e-5
    assert arch.n_layers(model) == N_LAYERS  # the original is untouched


def test_gemma3_layer_types_follow_their_blocks():
    model = tiny_model("gemma3_text")  # types: sliding, full, sliding, full
    pruned = prune.pruned_copy(model, [0, 3])
    assert pruned.config.layer_types == ["full_attention", "sliding_attention"]
    indices = [m.layer_idx for b in arch.blocks(pruned) for m in b.modules() if hasattr(m, "layer_idx")]
    assert set(indices) == {0, 1}


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2", "gpt_neox"])
def test_generation_with_the_kv_cache_matches_generation_without(name):
    model = prune.pruned_copy(tiny_model(name), [1])
    ids = tiny_batch(batch=1, seq=10)[0]
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_pruned_checkpoint_reloads_without_layerlab(tmp_path, name):
    from transformers import AutoModelForCausalLM
    model = tiny_model(name)
    pruned = prune.pruned_copy(model, [1, 2])
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reloaded.config._attn_implementation = "eager"
    ids, mask = tiny_batch()
    real = mask.bool()
    assert reloaded.config.num_hidden_layers == 2
    diff = (runner.full_logits(reloaded, ids, mask) - runner.full_logits(pruned, ids, mask))[real].abs().max()
    assert diff == 0


def test_dropped_context_restores_everything():
    model = tiny_model("gemma3_text")
    ids, mask = tiny_batch()
    before = runner.full_logits(model, ids, mask)
    blocks_before = list(arch.blocks(model))
    types_before = list(model.config.layer_types)
    with prune.dropped(model, [0, 2]):
        assert arch.n_layers(model) == 2
    assert list(arch.blocks(model)) == blocks_before and model.config.layer_types == types_before
    assert model.config.num_hidden_layers == N_LAYERS
    assert [m.layer_idx for b in arch.blocks(model) for m in b.modules() if hasattr(m, "layer_idx")] \
        == [i for i in range(N_LAYERS) for m in blocks_before[i].modules() if hasattr(m, "layer_idx")]
    assert torch.equal(runner.full_logits(model, ids, mask), before)


def test_bad_drops_are_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"out of range; allowed: 0..3"):
        prune.drop(model, [7])
    with pytest.raises(ValueError, match="cannot drop every block"):
        prune.drop(model, [0, 1, 2, 3])


def test_normalised_loss_of_a_uniform_model_is_one():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()
    chunks = torch.randint(0, 97, (4, 16))
    value, se = prune.normalised_loss(model, chunks)
    assert value == pytest.approx(1.0, abs=1e-6)


def test_healing_trains_lora_on_the_mlp_and_merges():
    model = prune.pruned_copy(tiny_model("llama"), [1])
    assert prune.mlp_module_names(model) == ["down_proj", "gate_proj", "up_proj"]
    torch.manual_seed(0)
    chunks = torch.randint(3, 40, (16, 12))  # a learnable, low-entropy stream
    before, _ = prune.normalised_loss(model, chunks)
    attn_before = arch.weight(model, "q", 0).read()
    out = prune.heal(model, chunks, prune.HealConfig(rank=4, steps=30, learning_rate=3e-3, warmup_steps=3,
                                                     batch_size=4, seq_len=12), progress=False)
    healed = out["model"]
    after, _ = prune.normalised_loss(healed, chunks)
    assert after < before
    assert torch.equal(arch.weight(healed, "q", 0).read(), attn_before)  # attention untouched
    assert not any("lora" in n for n, _ in healed.named_parameters())  # merged
    assert out["config"]["alpha"] == 4 and out["config"]["dropout"] == 0.05


def test_pruned_copy_copies_only_the_kept_weights_and_keeps_ties():
    model = tiny_model("gpt2")  # lm_head is tied to the token embedding
    before = {n: p.clone() for n, p in model.state_dict().items()}
    pruned = prune.pruned_copy(model, [1, 2], device="cpu")
    assert pruned.lm_head.weight is pruned.transformer.wte.weight
    assert not any(p.is_meta for p in pruned.parameters()) and not any(b.is_meta for b in pruned.buffers())
    mine = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in mine for p in pruned.parameters())  # a copy, not shared storage
    n_block = sum(p.numel() for p in arch.blocks(model)[0].parameters())
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in pruned.parameters()) == 2 * n_block
    assert torch.equal(arch.blocks(pruned)[1].mlp.c_fc.weight, arch.blocks(model)[3].mlp.c_fc.weight)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the original untouched
    assert arch.n_layers(model) == N_LAYERS and model.config.num_hidden_layers == N_LAYERS


def test_lora_is_merged_in_float32_then_cast():
    """bf16 base weights: W <- (W.float() + s * B @ A).to(bf16), one rounding; peft's own merge
    adds an update already rounded to bf16 (two roundings, small updates lost)."""
    from peft import LoraConfig, get_peft_model

    from layerlab.prune import healing

    model = tiny_model("llama", dtype=torch.bfloat16)
    w0 = arch.weight(model, "mlp_in", 0).read().clone()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=healing.mlp_module_names(model),
                                                  lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    for m in peft_model.modules():
        if hasattr(m, "lora_B") and "default" in getattr(m, "lora_B", {}):
            with torch.no_grad():  # a small update, as a short healing run leaves
                m.lora_B["default"].weight.copy_(1e-3 * torch.randn_like(m.lora_B["default"].weight))
    layer = peft_model.base_model.model.model.layers[0].mlp.up_proj
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    expected = (w0.float() + (b @ a) * layer.scaling["default"]).to(torch.bfloat16)
    assert healing.merge_lora(peft_model) == 4 * 3
    merged = peft_model.unload()
    got = arch.weight(merged, "mlp_in", 0).read()
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)
    assert not torch.equal(got, w0)  # the update did not round away
    assert not any("lora" in n for n, _ in merged.named_parameters())
