"""Graded tests of notebook 07 (KV-cache): appending to a preallocated cache, attention of one query over it."""

import numpy as np
import torch

from llmcourse.grading import assert_allclose, exercise, expect_error


def _cache(rng, shape=(2, 3), max_len=8, d=4, dtype=np.float64):
    k = rng.normal(size=shape + (max_len, d)).astype(dtype)
    v = rng.normal(size=shape + (max_len, d + 1)).astype(dtype)
    return k, v


# -- cache_append -------------------------------------------------------------------------------------------------

@exercise("cache_append")
def test_cache_append_writes_after_length_in_place(impl):
    rng = np.random.default_rng(0)
    cache_k, cache_v = _cache(rng)
    before_k, before_v = cache_k.copy(), cache_v.copy()
    k_new, v_new = rng.normal(size=(2, 3, 2, 4)), rng.normal(size=(2, 3, 2, 5))
    got = impl.kv_cache.cache_append(cache_k, cache_v, 3, k_new, v_new)
    assert got == 5, f"cache_append should return the new length 3 + 2 = 5, got {got!r}"
    expected_k = torch.cat([torch.from_numpy(before_k[..., :3, :]), torch.from_numpy(k_new),
                            torch.from_numpy(before_k[..., 5:, :])], dim=-2)
    expected_v = torch.cat([torch.from_numpy(before_v[..., :3, :]), torch.from_numpy(v_new),
                            torch.from_numpy(before_v[..., 5:, :])], dim=-2)
    # A copy moves values unchanged: exact equality.
    assert_allclose(cache_k, expected_k, rtol=0, atol=0, what="cache_k after appending at positions 3..4 (in place)")
    assert_allclose(cache_v, expected_v, rtol=0, atol=0, what="cache_v after appending at positions 3..4 (in place)")


@exercise("cache_append")
def test_cache_append_step_by_step_equals_concatenation(impl):
    rng = np.random.default_rng(1)
    cache_k, cache_v = np.zeros((1, 2, 6, 3), np.float32), np.zeros((1, 2, 6, 3), np.float32)
    ks, vs = rng.normal(size=(1, 2, 6, 3)).astype(np.float32), rng.normal(size=(1, 2, 6, 3)).astype(np.float32)
    length = 0
    for start, stop in ((0, 3), (3, 4), (4, 5), (5, 6)):  # a prompt of 3, then one token at a time
        length = impl.kv_cache.cache_append(cache_k, cache_v, length, ks[..., start:stop, :], vs[..., start:stop, :])
        assert length == stop, f"after appending positions {start}..{stop - 1} the length should be {stop}, " \
                               f"got {length}"
    # Copies only: exact equality with torch.cat of the pieces.
    assert_allclose(cache_k, torch.from_numpy(ks), rtol=0, atol=0, what="cache_k filled by four appends")
    assert_allclose(cache_v, torch.from_numpy(vs), rtol=0, atol=0, what="cache_v filled by four appends")


@exercise("cache_append")
def test_cache_append_fills_the_last_position_and_then_reports_full(impl):
    rng = np.random.default_rng(2)
    cache_k, cache_v = _cache(rng, shape=(1,), max_len=4, d=2)
    k_new, v_new = rng.normal(size=(1, 1, 2)), rng.normal(size=(1, 1, 3))
    got = impl.kv_cache.cache_append(cache_k, cache_v, 3, k_new, v_new)
    assert got == 4, f"appending one position to a cache holding 3 of 4 should return 4, got {got!r}"
    assert_allclose(cache_k[..., 3:, :], k_new, rtol=0, atol=0, what="the last cache position (exact copy)")
    with expect_error(ValueError, match="full", what="cache_append at length 4 into a cache of 4 positions"):
        impl.kv_cache.cache_append(cache_k, cache_v, 4, k_new, v_new)


@exercise("cache_append")
def test_cache_append_of_nothing_changes_nothing(impl):
    rng = np.random.default_rng(3)
    cache_k, cache_v = _cache(rng)
    before_k = cache_k.copy()
    got = impl.kv_cache.cache_append(cache_k, cache_v, 2, np.zeros((2, 3, 0, 4)), np.zeros((2, 3, 0, 5)))
    assert got == 2, f"appending zero positions should leave the length at 2, got {got!r}"
    assert_allclose(cache_k, before_k, rtol=0, atol=0, what="cache_k after appending zero positions")


# -- cached_attention ---------------------------------------------------------------------------------------------

@exercise("cached_attention")
def test_cached_attention_matches_torch_sdpa(impl):
    rng = np.random.default_rng(4)
    cache_k, cache_v = _cache(rng, shape=(2, 3), max_len=8, d=4)
    cache_v = cache_v[..., :4]
    q = rng.normal(size=(2, 3, 1, 4))
    got = impl.kv_cache.cached_attention(q, cache_k, cache_v, 5)
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(cache_k[..., :5, :]), torch.from_numpy(cache_v[..., :5, :]))
    # float64 throughout, a few dot products and a softmax: the COURSE.md float64 tolerance.
    assert_allclose(got, expected, rtol=1e-7, atol=1e-12, what="cached_attention(q, cache, length=5)")


@exercise("cached_attention")
def test_cached_attention_stays_finite_for_large_scores(impl):
    rng = np.random.default_rng(6)
    cache_k, cache_v = _cache(rng, shape=(2,), max_len=6, d=4)
    cache_k = cache_k * 50.0
    q = rng.normal(size=(2, 1, 4)) * 50.0  # scores of a few thousand: exp overflows unless the maximum is subtracted
    got = np.asarray(impl.kv_cache.cached_attention(q, cache_k, cache_v, 6))
    assert np.all(np.isfinite(got)), "cached_attention gave inf or nan for large scores: the softmax inside it " \
                                     "must subtract the maximum score before exp"
    expected = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(cache_k), torch.from_numpy(cache_v))
    # float64; scores of ~1e3 carry absolute rounding ~1e-13, far inside rtol 1e-7 (COURSE.md); atol for outputs
    # near 0.
    assert_allclose(got, expected, rtol=1e-7, atol=1e-12, what="cached_attention with scores of a few thousand")


@exercise("cached_attention")
def test_cached_attention_ignores_positions_after_length(impl):
    rng = np.random.default_rng(5)
    cache_k, cache_v = _cache(rng, shape=(1, 2), max_len=6, d=3)
    q = rng.normal(size=(1, 2, 1, 3))
    got = impl.kv_cache.cached_attention(q, cache_k, cache_v, 3)
    cache_k[..., 3:, :], cache_v[..., 3:, :] = 1e3, -1e3  # garbage after the filled part
    again = impl.kv_cache.cached_attention(q, cache_k, cache_v, 3)
    # Same inputs where it matters, so the same float64 result up to rounding.
    assert_allclose(again, got, rtol=1e-12, atol=0, what="cached_attention with garbage after position length")
    assert got.shape == (1, 2, 1, 4), f"cached_attention should return shape (1, 2, 1, 4), got {got.shape}"


@exercise("cached_attention")
def test_cached_attention_equals_last_row_of_causal_attention_float32(impl):
    rng = np.random.default_rng(6)
    T, d = 7, 8
    q = rng.normal(size=(3, T, d)).astype(np.float32)
    k = rng.normal(size=(3, T, d)).astype(np.float32)
    v = rng.normal(size=(3, T, d)).astype(np.float32)
    got = impl.kv_cache.cached_attention(q[:, -1:, :], k, v, T)
    assert got.dtype == np.float32, f"cached_attention should keep float32 inputs float32, got {got.dtype}"
    full = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k),
                                                            torch.from_numpy(v), is_causal=True)
    # float32: PyTorch's own default tolerances (COURSE.md).
    assert_allclose(got, full[:, -1:, :], rtol=1.3e-6, atol=1e-5,
                    what="cached_attention vs causal attention's last row")


@exercise("cached_attention")
def test_cached_attention_over_one_position_returns_its_value(impl):
    rng = np.random.default_rng(7)
    cache_k, cache_v = _cache(rng, shape=(2,), max_len=5, d=3)
    got = impl.kv_cache.cached_attention(rng.normal(size=(2, 1, 3)) * 100, cache_k, cache_v, 1)
    # The softmax of a single score is exactly 1, so the output is the first value up to one rounding.
    assert_allclose(got, cache_v[:, :1, :], rtol=1e-12, atol=0, what="cached_attention over a single position")
    with expect_error(ValueError, match="empty", what="cached_attention over a cache of length 0"):
        impl.kv_cache.cached_attention(rng.normal(size=(2, 1, 3)), cache_k, cache_v, 0)
