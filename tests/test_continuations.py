"""Continuations are split as lm-eval splits them (HFLM._encode_pair): the tail of the joint
encoding of context + continuation, with the context's trailing whitespace moved over.

A SentencePiece model that adds a dummy prefix and keeps whitespace (as Llama-1/2's and
Mistral's do) is trained here, inside the test, and put behind a Hugging Face fast tokenizer
(the interface the library calls). On it, " paris" alone encodes as [▁, ▁paris] while the
tail of "the capital is paris" is [▁paris]: the old way scored the bare space token."""

from __future__ import annotations

import io
import random

import pytest
import torch

from layerlab.core.eval import scoring

spm = pytest.importorskip("sentencepiece")

WORDS = ("the capital of france is paris and the capital of italy is rome while the river in paris is "
         "seine london berlin madrid").split()


def _sentencepiece_model() -> bytes:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(500)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=40,
                                   model_type="unigram", add_dummy_prefix=True, remove_extra_whitespaces=False,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


@pytest.fixture(scope="module")
def sp_and_tok():
    """(the SentencePiece processor, a PreTrainedTokenizerFast with the same pieces and
    scores, as Llama-2's tokenizer.json builds it, BOS added)."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=_sentencepiece_model())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    core = Tokenizer(tok_models.Unigram(vocab, unk_id=0, byte_fallback=False))
    # Llama-2's tokenizer.json: always prepend '▁' (the dummy prefix), spaces become '▁'
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    return sp, tok


def test_the_wrapper_really_tokenises_as_sentencepiece(sp_and_tok):
    sp, tok = sp_and_tok
    assert len(tok) == sp.get_piece_size() > 10  # not a 3-token vocabulary
    for text in ("the capital is paris", " paris", "rome is the capital of italy", "london  berlin"):
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
    assert tok("paris")["input_ids"][0] == sp.bos_id()


def test_the_continuation_is_the_tail_of_the_joint_encoding(sp_and_tok):
    sp, tok = sp_and_tok
    word, space = sp.piece_to_id("▁paris"), sp.piece_to_id("▁")
    assert word != sp.unk_id() and space != sp.unk_id()
    # the old way: the continuation on its own starts with the bare space token
    assert tok([" paris"], add_special_tokens=False)["input_ids"][0] == [space, word]
    # the new way: the tail of the joint encoding is the word
    (ctx, cont), = scoring.split_pairs(tok, ["the capital of france is"], [" paris"])
    assert cont == [word]
    assert ctx == [sp.bos_id()] + sp.encode("the capital of france is")
    # trailing whitespace of the context moves to the continuation (lm-eval's rule)
    assert scoring.split_pairs(tok, ["the capital of france is "], ["paris"]) == [(ctx, cont)]
    batch, = scoring.encode(tok, ["the capital of france is"], [" paris"])
    assert batch.target_ids[0].tolist() == [word]
    assert batch.input_ids[0].tolist() == ctx + cont
    assert batch.target_pos[0].tolist() == [len(ctx) - 1]


def test_scores_read_the_word_not_the_space(sp_and_tok):
    """On a tiny Llama with the SentencePiece vocabulary: the first-token metrics read the word."""
    import transformers as tf

    sp, tok = sp_and_tok
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                            max_position_embeddings=64)
    config._attn_implementation = "eager"
    model = tf.LlamaForCausalLM(config).eval()
    contexts, conts = ["the capital of france is", "the river in paris is"], [" paris", " seine"]
    batches = scoring.encode(tok, contexts, conts)
    s = scoring.score_full(model, batches, 2)
    assert s.first_gold.tolist() == [sp.piece_to_id("▁paris"), sp.piece_to_id("▁seine")]
    assert sp.piece_to_id("▁") not in s.first_gold.tolist()
    assert s.n_tokens.tolist() == [1, 1]
    prefix = scoring.PrefixScorer(model, batches, 2).score(0)
    torch.testing.assert_close(torch.as_tensor(prefix.logprob), torch.as_tensor(s.logprob), rtol=1e-5, atol=1e-5)


def test_bpe_style_tokenizers_split_the_same_either_way():
    """A tokenizer without a dummy prefix (GPT-2 style, like smollm2/Qwen): the tail equals
    the continuation encoded on its own, so the split changes nothing there."""
    from tiny import CharTokenizer

    tok = CharTokenizer()
    pairs = scoring.split_pairs(tok, ["fact abc", "q"], [" xy", " z"])
    assert pairs == [(tok(["fact abc"])["input_ids"][0], tok([" xy"], add_special_tokens=False)["input_ids"][0]),
                     (tok(["q"])["input_ids"][0], tok([" z"], add_special_tokens=False)["input_ids"][0])]


def test_a_continuation_without_tokens_is_refused():
    from tiny import CharTokenizer

    with pytest.raises(ValueError, match="no tokens"):
        scoring.split_pairs(CharTokenizer(), ["abc"], [""])
