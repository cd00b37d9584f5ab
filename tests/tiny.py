"""Tiny random-initialised models of every supported architecture, built in the tests
(no downloads). Each has 4 blocks so that prefixes, middles and suffixes all exist."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 97
N_LAYERS = 4


def _configs() -> dict:
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128)
    return {
        "llama": (tf.LlamaConfig(**common, num_key_value_heads=2), tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(**common, num_key_value_heads=2, sliding_window=8), tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config(**common, num_key_value_heads=2), tf.Qwen2ForCausalLM),
        "gemma3_text": (tf.Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                            layer_types=["sliding_attention", "full_attention"] * 2),
                        tf.Gemma3ForCausalLM),
        "gpt2": (tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=128),
                 tf.GPT2LMHeadModel),
        "gptj": (tf.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=N_LAYERS, n_head=4, n_positions=128,
                               rotary_dim=4), tf.GPTJForCausalLM),
        "gpt_neox": (tf.GPTNeoXConfig(**common), tf.GPTNeoXForCausalLM),
        "phi": (tf.PhiConfig(**common), tf.PhiForCausalLM),
        "bert": (tf.BertConfig(**common), tf.BertModel),
        "roberta": (tf.RobertaConfig(**common, pad_token_id=1), tf.RobertaModel),
    }


ARCH_NAMES = tuple(_configs())
DECODERS = tuple(n for n in ARCH_NAMES if n not in ("bert", "roberta"))


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    config, cls = _configs()[name]
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config).eval()
    # Random init leaves some norms at exactly 1/0; perturb every parameter a little so
    # that no identity can pass by accident.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(device=device, dtype=dtype)


def tiny_batch(seed: int = 0, batch: int = 3, seq: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids with right padding: row i has seq - 2*i real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for i in range(batch):
        mask[i, seq - 2 * i:] = 0
    return ids, mask


class CharTokenizer:
    """A tiny stand-in tokenizer (one id per character) for tests on tiny random models."""
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=True):
        if isinstance(texts, str):
            return {"input_ids": [3 + ord(c) % 90 for c in texts]}
        return {"input_ids": [[1] * add_special_tokens + [3 + ord(c) % 90 for c in t] for t in texts]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def facts_file(folder, n: int = 30):
    """A user-facts JSONL of n random {"prompt", "answer"} rows (for LASER sweeps on tiny models)."""
    import json

    import numpy as np

    f = folder / "facts.jsonl"
    rng = np.random.default_rng(0)
    with open(f, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": "fact " + "".join(rng.choice(list("abcdef"), 5)),
                                 "answer": "".join(rng.choice(list("xyz"), 1 + i % 3))}) + "\n")
    return f


def train_bpe(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (no download), "<|endoftext|>" as EOS and pad."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tf.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
