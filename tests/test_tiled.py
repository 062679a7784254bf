"""Tiled attention and the online softmax (llmcourse.tiled): equal to plain attention, with memory for the scores
that grows linearly in T (measured), not quadratically."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcourse.tiled import online_softmax, peak_bytes, tiled_attention


def reference(q, k, v, causal=True):
    T, S = q.shape[-2], k.shape[-2]
    mask = None
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)), attn_mask=mask).numpy()


@pytest.mark.parametrize("T, S, block", [(37, 37, 8), (37, 37, 37), (37, 37, 64), (32, 32, 16), (5, 40, 7),
                                         (1, 29, 4), (29, 29, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_tiled_attention_equals_attention_for_blocks_that_do_and_do_not_divide_t(T, S, block, causal):
    rng = np.random.default_rng(T * 100 + S + block)
    q, k = rng.normal(size=(2, 3, T, 16)).astype(np.float32), rng.normal(size=(2, 3, S, 16)).astype(np.float32)
    v = rng.normal(size=(2, 3, S, 8)).astype(np.float32)
    out = tiled_attention(q, k, v, block, causal=causal)
    assert out.dtype == np.float32 and out.shape == (2, 3, T, 8)
    np.testing.assert_allclose(out, reference(q, k, v, causal), rtol=1e-5, atol=1e-6)


def test_large_scores_stay_finite():
    q = np.full((1, 4, 8), 100.0, dtype=np.float32)
    out = tiled_attention(q, q, np.eye(4, 8, dtype=np.float32)[None], 2)
    assert np.isfinite(out).all()


def test_online_softmax_equals_softmax_over_the_chunks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50) * 30
    chunks = [x[:7], x[7:7], x[7:31], x[31:]]
    np.testing.assert_allclose(online_softmax(chunks), torch.softmax(torch.from_numpy(x), 0).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        online_softmax([np.array([-np.inf])])


def test_the_scores_memory_grows_linearly_in_t_measured():
    def peak(T, tiled):
        rng = np.random.default_rng(T)
        q, k, v = (rng.normal(size=(T, 32)).astype(np.float32) for _ in range(3))
        if tiled:
            return peak_bytes(lambda: tiled_attention(q, k, v, 64))
        return peak_bytes(lambda: reference_numpy(q, k, v))

    def reference_numpy(q, k, v):
        scores = q @ k.T / np.sqrt(q.shape[-1])  # (T, T)
        scores = np.where(np.tri(len(q), dtype=bool), scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)) @ v

    plain = [peak(T, False) for T in (512, 1024, 2048)]
    tiled = [peak(T, True) for T in (512, 1024, 2048)]
    assert plain[2] / plain[1] > 3.5 and plain[1] / plain[0] > 3.5, f"plain attention: {plain} (about x4 per x2)"
    assert tiled[2] / tiled[1] < 2.5 and tiled[1] / tiled[0] < 2.5, f"tiled attention: {tiled} (about x2 per x2)"
    assert tiled[2] < plain[2] / 8
