import time

import pytest
import torch

import layerlab
from layerlab import models, runner
from tiny import tiny_batch, tiny_model


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match="unknown model 'smollm'.*smollm2-135m, gemma3-270m, minilm-l6"):
        layerlab.load("smollm")


def test_hub_id_unavailable_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OSError, match="not cached locally.*offline.*local folder"):
        layerlab.load("someone/not-a-real-model-xyz")


def test_local_folder_loads(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")),
                                  eos_token="a", unk_token="<unk>")
    tok.save_pretrained(tmp_path)
    loaded, tokenizer = layerlab.load(str(tmp_path))
    ids, mask = tiny_batch()
    real = mask.bool()  # eager (tiny) vs sdpa (loaded) attention: equal to float tolerance
    diff = (runner.full_logits(loaded, ids, mask) - runner.full_logits(model, ids, mask))[real].abs().max()
    assert diff < 1e-5
    assert tokenizer.pad_token == "a"


@pytest.mark.smoke
def test_smollm2_loads_from_the_safetensors_cache_in_seconds():
    layerlab.load("smollm2-135m")  # converts the GGUF on first use
    assert (models.cache_dir() / "smollm2-135m" / "model.safetensors").exists()
    start = time.time()
    model, tok = layerlab.load("smollm2-135m")
    assert time.time() - start < 10
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


@pytest.mark.smoke
def test_minilm_loads_as_an_encoder():
    model, tok = layerlab.load("minilm-l6")
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
