"""Graded tests of notebook 12 (attention without the T x T matrix): the online softmax, tiled attention."""

import numpy as np
import torch

from llmcourse.course.grading import assert_allclose, exercise, expect_error

F32 = {"rtol": 1.3e-6, "atol": 1e-5}  # PyTorch's own float32 defaults (COURSE.md)
F64 = {"rtol": 1e-7, "atol": 1e-12}  # the same formulas in another order of operations, float64 (COURSE.md)


def _causal_mask(T: int, S: int) -> torch.Tensor:
    """(T, S) True where query i (key position S - T + i) may look: the bottom-right causal alignment."""
    return torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)


def _sdpa(q, k, v, causal: bool) -> torch.Tensor:
    q, k, v = (torch.from_numpy(a) for a in (q, k, v))
    mask = _causal_mask(q.shape[-2], k.shape[-2]) if causal else None
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# -- online_softmax -----------------------------------------------------------------------------------------------

@exercise("online_softmax")
def test_online_softmax_equals_torch_softmax_of_the_concatenation(impl):
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=n) * 3 for n in (4, 1, 7, 3)]
    got = impl.tiled.online_softmax(chunks)
    expected = torch.softmax(torch.from_numpy(np.concatenate(chunks)), dim=0)
    assert_allclose(got, expected, **F64, what="online_softmax of 4 chunks (float64)")


@exercise("online_softmax")
def test_online_softmax_rescales_when_a_later_chunk_is_larger(impl):
    # The maximum grows chunk after chunk (and jumps by 1000): the earlier sums must be rescaled every time,
    # and without subtracting a running maximum exp(1000) overflows.
    chunks = [np.array([0.0, -1.0]), np.array([5.0]), np.array([2.0, 1000.0, 999.0]), np.array([998.5])]
    got = impl.tiled.online_softmax(chunks)
    expected = torch.softmax(torch.from_numpy(np.concatenate(chunks)), dim=0)
    assert np.isfinite(np.asarray(got)).all(), "online_softmax overflowed on scores up to 1000: subtract the max"
    assert_allclose(got, expected, **F64, what="online_softmax with the maximum growing across chunks")


@exercise("online_softmax")
def test_online_softmax_float32_masked_and_empty_chunks(impl):
    rng = np.random.default_rng(1)
    chunks = [np.array([-np.inf, -np.inf], np.float32), np.zeros(0, np.float32),
              (rng.normal(size=5) * 20).astype(np.float32), np.array([-np.inf, 3.0], np.float32)]
    got = impl.tiled.online_softmax(chunks)
    assert np.asarray(got).dtype == np.float32, f"float32 chunks should give float32, got {np.asarray(got).dtype}"
    expected = torch.softmax(torch.from_numpy(np.concatenate(chunks)), dim=0)
    assert_allclose(got, expected, **F32, what="online_softmax with -inf entries and an empty chunk (float32)")


@exercise("online_softmax")
def test_online_softmax_single_chunk_and_errors(impl):
    got = impl.tiled.online_softmax([np.array([2.0, 2.0, 2.0, 2.0])])
    assert_allclose(got, np.full(4, 0.25), **F64, what="online_softmax of four equal scores")
    with expect_error(ValueError, match="finite", what="online_softmax of chunks with no finite score"):
        impl.tiled.online_softmax([np.array([-np.inf]), np.zeros(0)])
    with expect_error(ValueError, match="1-D", what="online_softmax of a 2-D chunk"):
        impl.tiled.online_softmax([np.zeros((2, 2))])


@exercise("online_softmax")
def test_online_softmax_counts_a_chunk_that_mixes_masked_and_real_scores(impl):
    # The largest score sits in a chunk that also holds -inf: the chunk still counts, only its -inf entries are 0.
    chunks = [np.array([1.0, 2.0]), np.array([-np.inf, 5.0]), np.array([0.5])]
    got = impl.tiled.online_softmax(chunks)
    expected = torch.softmax(torch.from_numpy(np.concatenate(chunks)), dim=0)
    assert_allclose(got, expected, **F64, what="online_softmax when the largest score shares a chunk with -inf")


# -- tiled_attention ----------------------------------------------------------------------------------------------

@exercise("tiled_attention")
def test_tiled_attention_equals_sdpa_for_blocks_that_do_and_do_not_divide_T(impl):
    rng = np.random.default_rng(2)
    q, k, v = (rng.normal(size=(2, 3, 12, 8)).astype(np.float32) for _ in range(3))
    expected = _sdpa(q, k, v, causal=True)
    for block in (1, 4, 5, 12, 64):
        got = impl.tiled.tiled_attention(q, k, v, block)
        assert np.asarray(got).dtype == np.float32, f"float32 inputs should give float32, got {np.asarray(got).dtype}"
        assert_allclose(got, expected, **F32, what=f"tiled_attention(block={block}) vs causal SDPA, T = 12 (float32)")


@exercise("tiled_attention")
def test_tiled_attention_without_mask_and_other_value_width(impl):
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(5, 4)), rng.normal(size=(9, 4))
    v = rng.normal(size=(9, 6))
    got = impl.tiled.tiled_attention(q, k, v, 4, causal=False)
    assert_allclose(got, _sdpa(q, k, v, causal=False), **F64, what="tiled_attention(causal=False), T=5, S=9, D_v=6")


@exercise("tiled_attention")
def test_tiled_attention_fewer_queries_than_keys_is_offset(impl):
    # T new queries over S cached keys: query i sits at key position S - T + i (the KV-cache layout).
    rng = np.random.default_rng(4)
    q = rng.normal(size=(2, 3, 4)).astype(np.float32)
    k, v = rng.normal(size=(2, 10, 4)).astype(np.float32), rng.normal(size=(2, 10, 4)).astype(np.float32)
    for block in (3, 4, 10):
        got = impl.tiled.tiled_attention(q, k, v, block, causal=True)
        assert_allclose(got, _sdpa(q, k, v, causal=True), **F32,
                        what=f"causal tiled_attention with T=3 queries over S=10 keys, block={block}")


@exercise("tiled_attention")
def test_tiled_attention_is_stable_with_large_scores(impl):
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(6, 4)) for _ in range(3))
    q *= 300.0  # scores in the hundreds: exp overflows without the running maximum
    got = impl.tiled.tiled_attention(q, k, v, 2)
    assert np.isfinite(np.asarray(got)).all(), "tiled_attention overflowed on large scores: subtract the running max"
    assert_allclose(got, _sdpa(q, k, v, causal=True), **F64, what="tiled_attention with scores ~1000 (float64)")


@exercise("tiled_attention")
def test_tiled_attention_keeps_a_running_maximum_per_query(impl):
    # One sequence's scores are in the thousands, another's near zero: a maximum shared by all queries would make the
    # small row's exponentials underflow to 0 (and its output 0 / 0).
    rng = np.random.default_rng(7)
    q, k, v = (rng.normal(size=(2, 5, 4)) for _ in range(3))
    q[0] *= 5000.0
    q[1] *= 0.01
    got = impl.tiled.tiled_attention(q, k, v, 2)
    assert np.isfinite(np.asarray(got)).all(), "tiled_attention gave NaN or inf for a row of small scores"
    assert_allclose(got, _sdpa(q, k, v, causal=True), **F64, what="tiled_attention with rows of very different scale")


@exercise("tiled_attention")
def test_tiled_attention_one_key_and_errors(impl):
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, 1, 2)) * 50, rng.normal(size=(3, 1, 2)), rng.normal(size=(3, 1, 5))
    # A single key gets weight exactly 1: the output is its value up to one rounding.
    assert_allclose(impl.tiled.tiled_attention(q, k, v, 4), v, rtol=1e-12, atol=0,
                    what="tiled_attention with one query over one key")
    z = np.zeros((4, 2))
    with expect_error(ValueError, match="block", what="tiled_attention with block=0"):
        impl.tiled.tiled_attention(z, z, z, 0)
    with expect_error(ValueError, match="queries", what="causal tiled_attention with 4 queries over 2 keys"):
        impl.tiled.tiled_attention(z, z[:2], z[:2], 2)
    with expect_error(TypeError, what="tiled_attention on integer arrays"):
        impl.tiled.tiled_attention(z.astype(int), z.astype(int), z.astype(int), 2)
