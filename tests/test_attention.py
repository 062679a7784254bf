"""The reference attention of solutions/attention.py against PyTorch, its invariants, and its errors on bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.course.loader import reference

softmax = reference("attention.softmax")
causal_attention = reference("attention.causal_attention")
split_heads = reference("attention.split_heads")
merge_heads = reference("attention.merge_heads")
multihead_attention = reference("attention.multihead_attention")

# float64: rounding only (COURSE.md rtol 1e-7; atol for entries near 0). float32: PyTorch's defaults.
TOL = {np.float64: dict(rtol=1e-7, atol=1e-12), np.float32: dict(rtol=1.3e-6, atol=1e-5)}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**31 - 1)


def _weights(rng, C, dtype):
    return (rng.normal(scale=C ** -0.5, size=(C, 3 * C)).astype(dtype), rng.normal(scale=0.1, size=3 * C).astype(dtype),
            rng.normal(scale=C ** -0.5, size=(C, C)).astype(dtype), rng.normal(scale=0.1, size=C).astype(dtype))


def _weights_of(q, k):
    """The attention matrix itself: with v = identity, output row i is row i of the weights."""
    return causal_attention(q, k, np.eye(q.shape[-2], dtype=q.dtype))


@settings(max_examples=25, deadline=None)
@given(seed=seeds, dtype=dtypes, B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 9),
       d=st.integers(1, 8))
def test_causal_attention_equals_torch_sdpa(seed, dtype, B, H, T, d):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, H, T, d)).astype(dtype) for _ in range(3))
    got = causal_attention(q, k, v)
    assert got.dtype == dtype
    expected = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)), is_causal=True).numpy()
    np.testing.assert_allclose(got, expected, **TOL[dtype])


@settings(max_examples=20, deadline=None)
@given(seed=seeds, dtype=dtypes, T=st.integers(1, 8))
def test_extra_mask_is_anded_with_the_causal_mask_like_torch(seed, dtype, T):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(2, T, 4)).astype(dtype) for _ in range(3))
    mask = rng.random((2, T, T)) < 0.6  # some rows may end up empty: torch and we both output 0 there
    expected = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)),
                                              attn_mask=torch.from_numpy(mask & np.tri(T, dtype=bool))).numpy()
    np.testing.assert_allclose(causal_attention(q, k, v, mask=mask), expected, **TOL[dtype])


@settings(max_examples=25, deadline=None)
@given(seed=seeds, dtype=dtypes, B=st.integers(1, 3), T=st.integers(1, 8), n_head=st.sampled_from([1, 2, 4]),
       head_size=st.integers(1, 5))
def test_multihead_attention_equals_torch_module(seed, dtype, B, T, n_head, head_size):
    rng = np.random.default_rng(seed)
    C = n_head * head_size
    x = rng.normal(size=(B, T, C)).astype(dtype)
    w_qkv, b_qkv, w_proj, b_proj = _weights(rng, C, dtype)
    got = multihead_attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head)
    assert got.dtype == dtype
    mha = torch.nn.MultiheadAttention(C, n_head, batch_first=True, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():  # PyTorch stores Linear weights as (out, in): the transposes of GPT-2's Conv1D layout
        mha.in_proj_weight.copy_(torch.from_numpy(w_qkv.T.copy()))
        mha.in_proj_bias.copy_(torch.from_numpy(b_qkv))
        mha.out_proj.weight.copy_(torch.from_numpy(w_proj.T.copy()))
        mha.out_proj.bias.copy_(torch.from_numpy(b_proj))
        xt = torch.from_numpy(x)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # torch's bool mask: True = blocked
        expected, _ = mha(xt, xt, xt, attn_mask=future, need_weights=False)
    np.testing.assert_allclose(got, expected.numpy(), **TOL[dtype])


@settings(max_examples=30, deadline=None)
@given(seed=seeds, T=st.integers(1, 10), d=st.integers(1, 6), scale=st.floats(0.1, 30.0))
def test_attention_weights_are_causal_distributions(seed, T, d, scale):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(scale=scale, size=(2, T, d)), rng.normal(scale=scale, size=(2, T, d))
    w = _weights_of(q, k)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-12)  # every row is a probability distribution
    assert np.all(w[:, ~np.tri(T, dtype=bool)] == 0)  # nothing above the diagonal: no weight on the future


@settings(max_examples=30, deadline=None)
@given(seed=seeds, T=st.integers(2, 10), cut=st.integers(1, 9))
def test_future_tokens_have_no_influence(seed, T, cut):
    cut = min(cut, T - 1)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, T, 8))
    weights = _weights(rng, 8, np.float64)
    changed = x.copy()
    changed[:, cut:] = rng.normal(scale=50.0, size=(1, T - cut, 8))
    before, after = multihead_attention(x, *weights, 2), multihead_attention(changed, *weights, 2)
    np.testing.assert_array_equal(after[:, :cut], before[:, :cut])  # masked weights are exactly 0


@settings(max_examples=20, deadline=None)
@given(seed=seeds, B=st.integers(2, 4), T=st.integers(1, 6))
def test_a_batch_equals_its_rows_one_by_one(seed, B, T):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, 6))
    weights = _weights(rng, 6, np.float64)
    rows = np.concatenate([multihead_attention(x[b:b + 1], *weights, 3) for b in range(B)])
    np.testing.assert_allclose(multihead_attention(x, *weights, 3), rows, rtol=1e-12, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shift=st.floats(-1e4, 1e4), dtype=dtypes)
def test_softmax_matches_torch_even_far_from_zero(seed, shift, dtype):
    x = np.random.default_rng(seed).normal(scale=5.0, size=(3, 6)).astype(dtype)
    expected = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
    np.testing.assert_allclose(softmax(x), expected, **TOL[dtype])
    # Far from zero (|x| up to 1e4) the naive exp would overflow; compare with torch on the same rounded input.
    shifted = (x + dtype(shift)).astype(dtype)
    np.testing.assert_allclose(softmax(shifted), torch.softmax(torch.from_numpy(shifted), dim=-1).numpy(),
                               **TOL[dtype])


def test_naive_softmax_overflows_and_the_stable_one_does_not():
    x = np.array([1000.0, 1001.0, 1002.0])
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x) / np.exp(x).sum()
    assert np.isnan(naive).all()
    np.testing.assert_allclose(softmax(x), softmax(x - 1000.0), rtol=1e-15)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 5), n_head=st.integers(1, 4), D=st.integers(1, 4))
def test_split_then_merge_is_the_identity(seed, B, T, n_head, D):
    x = np.random.default_rng(seed).normal(size=(B, T, n_head * D))
    heads = split_heads(x, n_head)
    assert heads.shape == (B, n_head, T, D)
    np.testing.assert_array_equal(merge_heads(heads), x)
    np.testing.assert_array_equal(heads, torch.from_numpy(x).view(B, T, n_head, D).transpose(1, 2).numpy())


def test_integer_input_is_promoted_to_float64():
    assert softmax(np.array([1, 2, 3])).dtype == np.float64


def _good():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6))
    return x, _weights(rng, 6, np.float64)


BAD_INPUTS = [
    ("softmax axis", lambda: softmax(np.zeros((2, 3)), axis=2), ValueError, r"axis 2 is out of range"),
    ("softmax strings", lambda: softmax(np.array(["a", "b"])), TypeError, r"real numbers"),
    ("q 1-D", lambda: causal_attention(np.zeros(4), np.zeros((4, 2)), np.zeros((4, 2))), ValueError,
     r"q must have shape \(\.\.\., T, d\)"),
    ("q, k widths", lambda: causal_attention(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros((4, 2))), ValueError,
     r"same last dimension d"),
    ("k, v lengths", lambda: causal_attention(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((5, 2))), ValueError,
     r"k and v must have the same number of positions"),
    ("q, k lengths", lambda: causal_attention(np.zeros((3, 2)), np.zeros((4, 2)), np.zeros((4, 2))), ValueError,
     r"as many queries as keys"),
    ("batch dims", lambda: causal_attention(np.zeros((2, 4, 2)), np.zeros((3, 4, 2)), np.zeros((3, 4, 2))),
     ValueError, r"do not broadcast"),
    ("mask size", lambda: causal_attention(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((4, 2)),
                                           mask=np.ones((3, 3), bool)), ValueError,
     r"mask has shape \(3, 3\), which does not broadcast to \(\.\.\., T, T\) = \(4, 4\)"),
    ("mask batch", lambda: causal_attention(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((4, 2)),
                                            mask=np.ones((2, 4, 4), bool)), ValueError,
     r"mask has shape \(2, 4, 4\), which does not broadcast to \(\.\.\., T, T\) = \(4, 4\)"),
    ("mask dtype", lambda: causal_attention(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((4, 2)),
                                            mask=np.zeros((4, 4))), TypeError, r"mask must be boolean"),
    ("split 2-D", lambda: split_heads(np.zeros((4, 6)), 2), ValueError, r"x must have shape \(B, T, C\)"),
    ("split divisible", lambda: split_heads(np.zeros((1, 4, 10)), 3), ValueError,
     r"n_embd \(C = 10\) is not divisible by n_head = 3"),
    ("split n_head 0", lambda: split_heads(np.zeros((1, 4, 10)), 0), ValueError, r"n_head must be a positive int"),
    ("merge 3-D", lambda: merge_heads(np.zeros((1, 4, 10))), ValueError, r"x must have shape \(B, n_head, T, D\)"),
    ("mha divisible", lambda: multihead_attention(*_good()[:1], *_good()[1], 4), ValueError,
     r"n_embd \(C = 6\) is not divisible by n_head = 4"),
    ("mha w_qkv", lambda: multihead_attention(_good()[0], np.zeros((6, 6)), *_good()[1][1:], 2), ValueError,
     r"w_qkv must have shape \(6, 18\) for n_embd C = 6, got \(6, 6\)"),
    ("mha b_proj", lambda: multihead_attention(_good()[0], *_good()[1][:3], np.zeros(5), 2), ValueError,
     r"b_proj must have shape \(6,\)"),
    ("mha x 2-D", lambda: multihead_attention(_good()[0][0], *_good()[1], 2), ValueError,
     r"x must have shape \(B, T, C\)"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_one_line_error(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)
