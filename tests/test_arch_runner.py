import pytest
import torch

from layerlab.core.model import arch, runner
from tiny import ARCH_NAMES, DECODERS, N_LAYERS, tiny_batch, tiny_model


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_runner_reproduces_full_forward_from_every_layer(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    reference = runner.full_logits(model, ids, mask)
    state = runner.capture(model, ids, mask)
    assert state.n_layers == N_LAYERS
    for layer in range(N_LAYERS + 1):
        out = runner.run_from(model, state, layer)
        real = mask.bool()  # padded positions carry no meaning
        diff = (out - reference)[real].abs().max().item()
        assert diff <= 1e-5, f"{name}: from block {layer}, max abs diff {diff}"


@pytest.mark.parametrize("name", DECODERS)
def test_captured_states_match_hf_hidden_states(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
    state = runner.capture(model, ids, mask)
    for j in range(N_LAYERS):  # HF's last entry is after the final norm; ours before it
        assert torch.equal(state.hidden[j], hs[j])
    assert torch.allclose(arch.final_norm(model)(state.hidden[N_LAYERS]), hs[N_LAYERS], atol=1e-6)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_matrix_type_reads_and_writes_the_right_weights(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    before = runner.full_logits(model, ids, mask)
    for tau in arch.matrix_types(model):
        ref = arch.weight(model, tau, 1)
        w = ref.read()
        assert w.shape == ref.shape
        ref.write(w)  # writing back what was read changes nothing
        assert torch.equal(runner.full_logits(model, ids, mask), before)
        ref.write(torch.zeros_like(w))  # zeroing the matrix changes the output
        assert not torch.allclose(runner.full_logits(model, ids, mask), before), f"{name}.{tau} had no effect"
        assert torch.count_nonzero(ref.read()) == 0
        ref.write(w)
        assert torch.equal(runner.full_logits(model, ids, mask), before)


def test_fused_parts_partition_the_fused_matrix():
    for name in ("gpt2", "gpt_neox"):
        model = tiny_model(name)
        rows = torch.cat([arch.weight(model, t, 0).rows for t in ("q", "k", "v")])
        assert sorted(rows.tolist()) == list(range(96))


def test_gpt2_q_is_the_query_slice_of_c_attn():
    model = tiny_model("gpt2")
    c_attn = model.transformer.h[2].attn.c_attn.weight  # Conv1D: [in, 3*out]
    assert torch.equal(arch.weight(model, "q", 2).read(), c_attn[:, :32].t())
    assert torch.equal(arch.weight(model, "v", 2).read(), c_attn[:, 64:].t())


def test_neox_q_rows_follow_the_head_interleaved_layout():
    model = tiny_model("gpt_neox")
    qkv = model.gpt_neox.layers[0].attention.query_key_value.weight  # [heads*3*hd, d]
    per_head = qkv.view(4, 3, 8, 32)
    assert torch.equal(arch.weight(model, "k", 0).read(), per_head[:, 1].reshape(32, 32))


def test_unsupported_architecture_is_named():
    import transformers as tf
    model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, ffn_dim=32))
    with pytest.raises(ValueError, match=r"unsupported architecture 'opt'.*llama"):
        arch.blocks(model)


def test_bad_matrix_type_and_layer_are_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="matrix_type 'mlp' .*allowed: q, k, v, o, mlp_in, gate, mlp_out"):
        arch.weight(model, "mlp", 0)
    with pytest.raises(ValueError, match=r"layer 9 out of range; allowed: 0..3"):
        arch.weight(model, "q", 9)
    assert "gate" not in arch.matrix_types(tiny_model("gpt2"))


@pytest.mark.parametrize("name", DECODERS)
def test_named_states_and_stop_at(name):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    state = runner.capture(model, ids, mask)
    L = state.n_layers
    for l in range(L):
        assert state[f"resid_pre.{l}"] is state.hidden[l]
        assert state[f"resid_post.{l}"] is state.hidden[l + 1]
    # stop_at: blocks start..stop-1 give the state entering block stop, as captured
    for start, stop in ((0, L), (1, L - 1), (2, 2)):
        torch.testing.assert_close(runner.run_from(model, state, start, stop_at=stop), state.hidden[stop],
                                   rtol=1e-5, atol=1e-5)
    for bad in ("resid_mid.1", f"resid_pre.{L + 1}", "resid_post.-1", "resid_pre"):
        with pytest.raises(KeyError, match="resid_pre"):
            state[bad]
    with pytest.raises(ValueError, match="stop_at"):
        runner.run_from(model, state, 2, stop_at=1)


@pytest.mark.parametrize("name", DECODERS)
def test_check_reproduces_passes_and_catches_a_runner_that_differs(name, monkeypatch):
    model = tiny_model(name)
    ids, mask = tiny_batch()
    assert runner.check_reproduces(model, ids, mask) < 1e-4
    original = runner.run_blocks

    def one_block_short(model, state, h, steps):  # a runner that silently drops the last block
        return original(model, state, h, list(steps)[:-1])

    monkeypatch.setattr(runner, "run_blocks", one_block_short)
    with pytest.raises(RuntimeError, match="does not reproduce"):
        runner.check_reproduces(model, ids, mask)
