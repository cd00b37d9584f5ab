"""ScoredPositionsLM (logits only where scored) gives lm-eval's own numbers."""

import numpy as np
import pytest
import torch


def _loglikelihoods(cls, model, tok, requests):
    lm = cls(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", softmax_dtype=torch.float32)
    return lm._loglikelihood_tokens(requests, disable_tqdm=True)


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_same_scores_as_hflm_on_smollm2(dtype):
    from lm_eval.models.huggingface import HFLM

    import layerlab
    from layerlab.core.eval.lm_eval_model import ScoredPositionsLM

    model, tok = layerlab.load("smollm2-135m", dtype=dtype)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(10):  # contexts of different lengths, one- and multi-token continuations, shared contexts
        ctx = tok(" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat", "of", "red"], 5 + 4 * i)))["input_ids"]
        for cont in ([int(rng.integers(100, 5000))], list(rng.integers(100, 5000, size=1 + i % 4))):
            requests.append((("", ""), ctx, [int(c) for c in cont]))
    calls = []
    original = ScoredPositionsLM._positions_to_keep

    def spy(self, inps):
        keep = original(self, inps)
        calls.append((inps.shape[1], keep))
        return keep

    ScoredPositionsLM._positions_to_keep = spy
    try:
        ours = _loglikelihoods(ScoredPositionsLM, model, tok, requests)
    finally:
        ScoredPositionsLM._positions_to_keep = original
    theirs = _loglikelihoods(HFLM, model, tok, requests)
    assert [g for _, g in ours] == [g for _, g in theirs]
    np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in theirs], rtol=0, atol=1e-4)
    assert calls and all(k is not None and k < width for width, k in calls)  # it did cut positions
