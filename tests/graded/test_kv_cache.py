"""Graded tests of notebook 07 (KV-cache): appending to a preallocated cache, attention of one query over it."""

import numpy as np
import torch

from llmcourse.course.grading import assert_allclose, exercise, expect_error


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


# -- gpt_forward_cached (challenge) --------------------------------------------------------------------------------

# float64 models: the package and a correct forward differ by rounding only (another attention kernel or order of a
# sum, ~1e-16 relative), so float64's rtol 1e-7 with atol 1e-10 for logits near 0; float32: PyTorch's defaults.
F64 = dict(rtol=1e-7, atol=1e-10)
F32 = dict(rtol=1.3e-6, atol=1e-5)


def _gpt(seed: int, dtype=torch.float64):
    from llmcourse.gpt import GPTConfig, random_gpt
    return random_gpt(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=seed).to(dtype)


def _caches(model, B: int, max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caches filled with noise: positions the function must not touch keep it, and it must never be read."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    shape = (c.n_layer, B, c.n_head, max_len, c.head_dim)
    dtype = model.transformer.wte.weight.dtype
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _ids(seed: int, B: int, T: int) -> torch.Tensor:
    return torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(seed))


def _package_cache(model, B: int, max_len: int):
    from llmcourse.gpt import KVCache
    return KVCache(model.config, B, max_len, dtype=model.transformer.wte.weight.dtype)


def _check_cache(mine: torch.Tensor, theirs: list, before: torch.Tensor, filled: int, what: str, tol: dict) -> None:
    for layer, expected in enumerate(theirs):
        assert_allclose(mine[layer, :, :, :filled], expected[:, :, :filled], **tol,
                        what=f"{what}, layer {layer}, positions 0..{filled - 1}")
    assert_allclose(mine[:, :, :, filled:], before[:, :, :, filled:], rtol=0, atol=0,
                    what=f"{what} after position {filled - 1} (must not be written)")


@exercise("gpt_forward_cached")
def test_gpt_forward_cached_prefill_matches_the_package(impl):
    model, idx = _gpt(0), _ids(1, 2, 5)
    cache_k, cache_v = _caches(model, 2, 8, 2)
    before_k, before_v = cache_k.clone(), cache_v.clone()
    got = impl.kv_cache.gpt_forward_cached(model.state_dict(), 2, idx, cache_k, cache_v, 0)
    cache = _package_cache(model, 2, 8)
    with torch.no_grad():
        expected = model(idx, cache=cache)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64, \
        f"gpt_forward_cached should return a float64 tensor for float64 weights, got {getattr(got, 'dtype', got)}"
    assert_allclose(got, expected, **F64, what="the logits (B, T, V) of a prompt of 5 tokens (length 0)")
    _check_cache(cache_k, cache.keys, before_k, 5, "cache_k", F64)
    _check_cache(cache_v, cache.values, before_v, 5, "cache_v", F64)


@exercise("gpt_forward_cached")
def test_gpt_forward_cached_greedy_decoding_gives_generates_tokens(impl):
    from llmcourse.generate import generate

    model, prompt = _gpt(3), _ids(4, 1, 3)
    cache_k, cache_v = _caches(model, 1, 10, 5)
    weights = model.state_dict()
    tokens, length, step_input = prompt[0].tolist(), 0, prompt
    cache = _package_cache(model, 1, 10)
    for step in range(7):  # the prompt, then one token at a time
        logits = impl.kv_cache.gpt_forward_cached(weights, 2, step_input, cache_k, cache_v, length)
        with torch.no_grad():
            expected = model(step_input, cache=cache)
        assert_allclose(logits, expected, **F64, what=f"the logits at decoding step {step} (length {length})")
        length += step_input.shape[1]
        step_input = logits[:, -1:].argmax(dim=-1)  # (1, 1)
        tokens.append(int(step_input))
    expected_tokens = generate(model, prompt[0], 7, temperature=0.0).tolist()
    assert tokens == expected_tokens, f"greedy decoding with gpt_forward_cached gives {tokens}, generate gives " \
                                      f"{expected_tokens}"


@exercise("gpt_forward_cached")
def test_gpt_forward_cached_several_new_tokens_after_cached_ones(impl):
    model, idx = _gpt(6), _ids(7, 2, 7)
    cache_k, cache_v = _caches(model, 2, 9, 8)
    weights = model.state_dict()
    impl.kv_cache.gpt_forward_cached(weights, 2, idx[:, :4], cache_k, cache_v, 0)
    got = impl.kv_cache.gpt_forward_cached(weights, 2, idx[:, 4:], cache_k, cache_v, 4)
    with torch.no_grad():
        expected = model(idx)[:, 4:]  # no cache at all: the whole sequence at once
    assert_allclose(got, expected, **F64, what="the logits of 3 new tokens after 4 cached ones (causal among the new "
                                                "ones too) against the whole sequence without a cache")


@exercise("gpt_forward_cached")
def test_gpt_forward_cached_with_positions_and_an_attention_mask(impl):
    from llmcourse.batching import left_padded

    model = _gpt(9)
    ids, mask, positions = left_padded([[5, 6], [1, 2, 3, 4, 7]], torch.device("cpu"), pad_id=0)  # (2, 5) each
    cache_k, cache_v = _caches(model, 2, 8, 10)
    before_k = cache_k.clone()
    weights = model.state_dict()
    cache = _package_cache(model, 2, 8)
    got = impl.kv_cache.gpt_forward_cached(weights, 2, ids, cache_k, cache_v, 0, positions, mask)
    with torch.no_grad():
        expected = model(ids, cache=cache, positions=positions, attention_mask=mask)
    assert_allclose(got, expected, **F64, what="the logits of a left-padded batch (positions and attention_mask)")
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], dim=1)  # (2, 6): the new token is real
    step, next_positions = torch.tensor([[8], [9]]), positions[:, -1:] + 1
    got = impl.kv_cache.gpt_forward_cached(weights, 2, step, cache_k, cache_v, 5, next_positions, mask)
    with torch.no_grad():
        expected = model(step, cache=cache, positions=next_positions, attention_mask=mask)
    assert_allclose(got, expected, **F64, what="the logits of the next token of a left-padded batch")
    _check_cache(cache_k, cache.keys, before_k, 6, "cache_k", F64)
    with torch.no_grad():  # row 0 alone, without padding: the same last logits
        alone = model(torch.tensor([[5, 6, 8]]), positions=torch.tensor([[0, 1, 2]]))[:, -1]
    assert_allclose(got[0, -1], alone[0], **F64, what="row 0's logits against the same prompt alone, unpadded")


@exercise("gpt_forward_cached")
def test_gpt_forward_cached_float32(impl):
    model, idx = _gpt(11, torch.float32), _ids(12, 3, 4)
    cache_k, cache_v = _caches(model, 3, 6, 13)
    got = impl.kv_cache.gpt_forward_cached(model.state_dict(), 2, idx, cache_k, cache_v, 0)
    with torch.no_grad():
        expected = model(idx)
    assert got.dtype == torch.float32, f"float32 weights should give float32 logits, got {got.dtype}"
    assert_allclose(got, expected, **F32, what="the float32 logits of a prompt of 4 tokens")


@exercise("gpt_forward_cached")
def test_gpt_forward_cached_rejects_bad_input(impl):
    model = _gpt(14)
    weights, idx = model.state_dict(), _ids(15, 2, 3)
    cache_k, cache_v = _caches(model, 2, 8, 16)
    impl.kv_cache.gpt_forward_cached(weights, 2, idx, cache_k, cache_v, 0)  # a valid call first
    impl.kv_cache.gpt_forward_cached(weights, 2, idx, cache_k, cache_v, 5)  # valid: fills the cache to its end
    with expect_error(ValueError, match="full", what="gpt_forward_cached of 3 tokens at length 6 of a cache of 8"):
        impl.kv_cache.gpt_forward_cached(weights, 2, idx, cache_k, cache_v, 6)
    long_k, long_v = _caches(model, 2, 20, 17)
    with expect_error(ValueError, what="gpt_forward_cached at positions 15..17 of a model with 16 positions"):
        impl.kv_cache.gpt_forward_cached(weights, 2, idx, long_k, long_v, 15)
    bad = [("a 1-D idx", (idx[0], cache_k, cache_v, 0, None, None)),
           ("a float idx", (idx.double(), cache_k, cache_v, 0, None, None)),
           ("an idx of T = 0", (idx[:, :0], cache_k, cache_v, 0, None, None)),
           ("a cache of the wrong head_dim", (idx, cache_k[..., :4], cache_v[..., :4], 0, None, None)),
           ("a cache for another batch size", (idx, cache_k[:, :1], cache_v[:, :1], 0, None, None)),
           ("a negative length", (idx, cache_k, cache_v, -1, None, None)),
           ("positions of the wrong shape", (idx, cache_k, cache_v, 0, torch.zeros(2, 2, dtype=torch.int64), None)),
           ("positions past the context", (idx, cache_k, cache_v, 0, torch.full((2, 3), 16), None)),
           ("negative positions", (idx, cache_k, cache_v, 0, torch.full((2, 3), -1), None)),
           ("an attention_mask of the wrong width",
            (idx, cache_k, cache_v, 0, None, torch.ones(2, 4, dtype=torch.bool)))]
    for what, args in bad:
        with expect_error(ValueError, what=f"gpt_forward_cached with {what}"):
            impl.kv_cache.gpt_forward_cached(weights, 2, *args)
