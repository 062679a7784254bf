"""Graded tests of notebook 02 (self-attention): softmax, causal attention, multi-head split/merge and forward.

Each result is compared live with PyTorch's own operation (torch.softmax, scaled_dot_product_attention,
nn.MultiheadAttention) on small seeded inputs, or with a property that any correct answer has.
"""

import numpy as np
import torch
import torch.nn.functional as F

from llmcourse.course.grading import assert_allclose, exercise


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _mha_weights(rng, C, dtype=np.float64):
    """Random (w_qkv, b_qkv, w_proj, b_proj) in GPT-2's (in, out) layout, scaled so the scores stay moderate."""
    return (rng.normal(scale=C ** -0.5, size=(C, 3 * C)).astype(dtype), rng.normal(scale=0.1, size=3 * C).astype(dtype),
            rng.normal(scale=C ** -0.5, size=(C, C)).astype(dtype), rng.normal(scale=0.1, size=C).astype(dtype))


def _torch_mha(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """torch.nn.MultiheadAttention with the same weights (it stores them as (out, in)) and a causal mask."""
    B, T, C = x.shape
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    mha = torch.nn.MultiheadAttention(C, n_head, batch_first=True, dtype=dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(_t(w_qkv.T))
        mha.in_proj_bias.copy_(_t(b_qkv))
        mha.out_proj.weight.copy_(_t(w_proj.T))
        mha.out_proj.bias.copy_(_t(b_proj))
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # PyTorch: True = may NOT attend
        xt = _t(x)
        out, _ = mha(xt, xt, xt, attn_mask=future, need_weights=False)
    return out.numpy()


# -- softmax -------------------------------------------------------------------------------------------------------

@exercise("softmax")
def test_softmax_matches_torch(impl):
    x = np.random.default_rng(0).normal(scale=3.0, size=(4, 7))
    for axis in (-1, 0):
        # float64 and one exp/sum/divide per entry: only rounding differs, far below rtol 1e-7 (COURSE.md).
        assert_allclose(impl.attention.softmax(x, axis=axis), torch.softmax(_t(x), dim=axis), rtol=1e-7,
                        atol=1e-15, what=f"softmax(x, axis={axis})")  # atol: rounding of probabilities near 0


@exercise("softmax")
def test_softmax_does_not_overflow(impl):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0], [5.0, 5.0, 5.0]])
    got = impl.attention.softmax(x)
    assert np.all(np.isfinite(got)), \
        "softmax of large logits (1000) gave inf or nan: subtract the maximum before exp (stable softmax)"
    # float64; the exact values are exp of small numbers, so rounding alone differs: rtol 1e-7 (COURSE.md).
    assert_allclose(got, torch.softmax(_t(x), dim=-1), rtol=1e-7, atol=1e-15, what="softmax of large logits")


@exercise("softmax")
def test_softmax_keeps_float32_and_handles_minus_inf(impl):
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    x[:, 1] = -np.inf  # a masked entry
    got = impl.attention.softmax(x)
    assert np.asarray(got).dtype == np.float32, f"softmax of float32 input returned {np.asarray(got).dtype}: " \
                                                "keep the input's dtype"
    assert np.all(np.asarray(got)[:, 1] == 0), "softmax gave a -inf entry a non-zero probability; it must be 0"
    # float32: PyTorch's own default tolerances (rtol 1.3e-6, atol 1e-5), COURSE.md.
    assert_allclose(got, torch.softmax(_t(x), dim=-1), rtol=1.3e-6, atol=1e-5, what="softmax of float32 input")


@exercise("softmax")
def test_softmax_of_one_entry_is_one(impl):
    got = impl.attention.softmax(np.array([[3.5], [-700.0]]))
    assert_allclose(got, np.ones((2, 1)), rtol=0, atol=0, what="softmax over an axis of length 1")  # exp(0)/exp(0)


# -- causal attention ----------------------------------------------------------------------------------------------

@exercise("causal_attention")
def test_causal_attention_matches_torch_sdpa(impl):
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=(2, 3, 6, 4)) for _ in range(3))
    expected = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), is_causal=True)
    # float64: both sides do the same few sums; rounding stays near 1e-16, well within rtol 1e-7 (COURSE.md);
    # atol 1e-12 covers outputs that happen to be near 0, where a relative tolerance means nothing.
    assert_allclose(impl.attention.causal_attention(q, k, v), expected, rtol=1e-7, atol=1e-12,
                    what="causal_attention(q, k, v)")


@exercise("causal_attention")
def test_causal_attention_with_extra_mask_matches_torch(impl):
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(2, 5, 3)) for _ in range(3))
    mask = rng.random((2, 1, 5)) < 0.7  # per-batch key mask (like padding), broadcast over queries
    mask[:, :, 0] = True  # every query can see key 0, so no row is empty
    causal = np.tril(np.ones((5, 5), dtype=bool))
    expected = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), attn_mask=_t(causal & mask))
    # float64: as above, rtol 1e-7 and atol 1e-12 for outputs near 0.
    assert_allclose(impl.attention.causal_attention(q, k, v, mask=mask), expected, rtol=1e-7, atol=1e-12,
                    what="causal_attention(q, k, v, mask) (the mask must be ANDed with the causal mask)")


@exercise("causal_attention")
def test_causal_attention_ignores_the_future(impl):
    rng = np.random.default_rng(4)
    q, k, v = (rng.normal(size=(6, 4)) for _ in range(3))
    before = impl.attention.causal_attention(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[3:] *= 300.0  # huge future scores: a softmax that saw them would underflow the visible ones
    v2[3:] = rng.normal(size=(3, 4)) * 1e3
    after = impl.attention.causal_attention(q, k2, v2)
    # Masked weights are exactly 0, so positions 0-2 see identical numbers; rtol 1e-12 allows only rounding.
    assert_allclose(after[:3], before[:3], rtol=1e-12, atol=1e-15,
                    what="causal_attention at positions 0-2 after changing keys/values of positions 3-5 "
                         "(the future must have no influence)")


@exercise("causal_attention")
def test_causal_attention_stays_finite_for_large_scores(impl):
    rng = np.random.default_rng(13)
    q, k, v = (rng.normal(size=(2, 5, 4)) for _ in range(3))
    q, k = q * 40.0, k * 40.0  # scores of several thousand: exp overflows unless the row maximum is subtracted
    got = np.asarray(impl.attention.causal_attention(q, k, v))
    assert np.all(np.isfinite(got)), "causal_attention gave inf or nan for large scores: the softmax inside it " \
                                     "must subtract each row's maximum before exp"
    expected = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), is_causal=True)
    # float64; scores near 1e4 carry absolute rounding ~1e-12, which moves the weights by ~1e-12 relative:
    # rtol 1e-7 (COURSE.md) still holds, atol 1e-12 for outputs near 0.
    assert_allclose(got, expected, rtol=1e-7, atol=1e-12, what="causal_attention with scores of several thousand")


@exercise("causal_attention")
def test_causal_attention_first_position_and_empty_rows(impl):
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(1, 4, 3)).astype(np.float32) for _ in range(3))
    got = np.asarray(impl.attention.causal_attention(q, k, v))
    assert got.dtype == np.float32, f"causal_attention of float32 input returned {got.dtype}: keep the dtype"
    # Position 0 may only look at itself: its output is v[0] with weight exp(s)/exp(s) = 1, exactly.
    assert_allclose(got[:, 0], v[:, 0], rtol=0, atol=0, what="causal_attention at position 0 (must equal v[0])")
    mask = np.ones((4, 4), dtype=bool)
    mask[2] = False  # query 2 may attend to nothing
    got = np.asarray(impl.attention.causal_attention(q, k, v, mask=mask))
    # A query with no allowed key outputs exactly 0, as torch's scaled_dot_product_attention does.
    assert_allclose(got[:, 2], np.zeros((1, 3)), rtol=0, atol=0,
                    what="causal_attention for a query whose mask allows no key (must be 0, not nan)")


# -- split and merge heads -----------------------------------------------------------------------------------------

@exercise("multihead_split_merge")
def test_split_heads_matches_torch_view_transpose(impl):
    x = np.random.default_rng(6).normal(size=(2, 5, 12))
    for n_head in (1, 3, 12):
        expected = _t(x).view(2, 5, n_head, 12 // n_head).transpose(1, 2)
        # Splitting only moves numbers: they must be identical (tolerance 0).
        assert_allclose(impl.attention.split_heads(x, n_head), expected, rtol=0, atol=0,
                        what=f"split_heads(x, n_head={n_head})")


@exercise("multihead_split_merge")
def test_split_heads_gives_each_head_its_channels(impl):
    x = np.arange(2 * 3 * 8).reshape(2, 3, 8)
    got = np.asarray(impl.attention.split_heads(x, 4))
    assert got.shape == (2, 4, 3, 2), f"split_heads((2, 3, 8), n_head=4) has shape {got.shape}, expected (2, 4, 3, 2)"
    for h in range(4):  # head h holds channels 2h and 2h+1 of every position (hand-computed layout)
        assert np.array_equal(got[:, h], x[:, :, 2 * h:2 * h + 2]), \
            f"head {h} of split_heads should hold channels {2 * h}:{2 * h + 2} of every position"


@exercise("multihead_split_merge")
def test_merge_heads_matches_torch_and_inverts_split(impl):
    y = np.random.default_rng(7).normal(size=(2, 4, 3, 5))  # (B, H, T, D)
    expected = _t(y).transpose(1, 2).reshape(2, 3, 20)
    # Merging only moves numbers: identical (tolerance 0).
    assert_allclose(impl.attention.merge_heads(y), expected, rtol=0, atol=0, what="merge_heads(y)")
    x = np.random.default_rng(8).normal(size=(3, 2, 6))
    assert_allclose(impl.attention.merge_heads(impl.attention.split_heads(x, 2)), x, rtol=0, atol=0,
                    what="merge_heads(split_heads(x, 2)) (must give x back)")


# -- multi-head attention forward ----------------------------------------------------------------------------------

@exercise("multihead_attention")
def test_multihead_attention_matches_torch_module(impl):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 7, 8))
    weights = _mha_weights(rng, 8)
    # float64; a few matmuls of length <= 24: rounding ~1e-15, so rtol 1e-7 (COURSE.md), atol 1e-12 near 0.
    assert_allclose(impl.attention.multihead_attention(x, *weights, 2), _torch_mha(x, *weights, 2), rtol=1e-7,
                    atol=1e-12, what="multihead_attention (vs torch.nn.MultiheadAttention, same weights, causal)")


@exercise("multihead_attention")
def test_multihead_attention_float32_keeps_dtype(impl):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(1, 5, 12)).astype(np.float32)
    weights = _mha_weights(rng, 12, np.float32)
    got = impl.attention.multihead_attention(x, *weights, 3)
    assert np.asarray(got).dtype == np.float32, f"multihead_attention of float32 input returned " \
                                                f"{np.asarray(got).dtype}: keep the dtype"
    # float32: PyTorch's own default tolerances (rtol 1.3e-6, atol 1e-5), COURSE.md.
    assert_allclose(got, _torch_mha(x, *weights, 3), rtol=1.3e-6, atol=1e-5, what="multihead_attention in float32")


@exercise("multihead_attention")
def test_multihead_attention_single_head_matches_sdpa(impl):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 4, 6))
    w_qkv, b_qkv, w_proj, b_proj = _mha_weights(rng, 6)
    q, k, v = (_t(x) @ _t(w_qkv) + _t(b_qkv)).split(6, dim=-1)  # q, k, v in that order
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True) @ _t(w_proj) + _t(b_proj)
    # float64: rtol 1e-7 (COURSE.md), atol 1e-12 for outputs near 0.
    assert_allclose(impl.attention.multihead_attention(x, w_qkv, b_qkv, w_proj, b_proj, 1), expected, rtol=1e-7,
                    atol=1e-12, what="multihead_attention with n_head=1 (q, k, v must be split in that order)")


@exercise("multihead_attention")
def test_multihead_attention_one_token_is_value_projection(impl):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 1, 8))
    w_qkv, b_qkv, w_proj, b_proj = _mha_weights(rng, 8)
    # With one token every head attends only to it (weight 1): out = (x W_v + b_v) W_proj + b_proj.
    expected = (x @ w_qkv[:, 16:] + b_qkv[16:]) @ w_proj + b_proj
    # float64: the same matmuls in the same order; rtol 1e-7 (COURSE.md), atol 1e-12 near 0.
    assert_allclose(impl.attention.multihead_attention(x, w_qkv, b_qkv, w_proj, b_proj, 4), expected, rtol=1e-7,
                    atol=1e-12, what="multihead_attention of a single token (must be the projected value)")
