"""KV-cache: the NumPy pieces against PyTorch, cached vs uncached generation, the cache's size and row management."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.course.grading import assert_allclose, assert_equal_ids
from llmcourse.course.loader import reference
from llmcourse.generate import generate
from llmcourse.gpt import GPTConfig, KVCache, random_gpt

cache_append = reference("kv_cache.cache_append")
cached_attention = reference("kv_cache.cached_attention")
empty_cache = reference("kv_cache.empty_cache")
causal_attention = reference("attention.causal_attention")

TINY = GPTConfig(vocab_size=50, block_size=40, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def model():
    return random_gpt(TINY)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 9), heads=st.integers(1, 3), d=st.integers(1, 5), prompt=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_step_by_step_cached_attention_equals_causal_attention(T, heads, d, prompt, seed):
    prompt = min(prompt, T)
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(2, heads, T, d)) for _ in range(3))
    cache_k, cache_v = empty_cache((2, heads), T, d, dtype=np.float64)
    length = cache_append(cache_k, cache_v, 0, k[..., :prompt, :], v[..., :prompt, :])
    outputs = [causal_attention(q[..., :prompt, :], k[..., :prompt, :], v[..., :prompt, :])]  # prefill
    for t in range(prompt, T):  # then one token at a time
        length = cache_append(cache_k, cache_v, length, k[..., t:t + 1, :], v[..., t:t + 1, :])
        outputs.append(cached_attention(q[..., t:t + 1, :], cache_k, cache_v, length))
    # float64, one softmax per row computed in two ways: float64 rounding only.
    assert_allclose(np.concatenate(outputs, axis=-2), causal_attention(q, k, v), rtol=1e-10, atol=1e-12,
                    what="attention decoded with the cache")


def test_numpy_cache_matches_pytorch_kv_cache():
    rng = np.random.default_rng(1)
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=6)
    torch_cache = KVCache(config, batch_size=1, max_len=8, dtype=torch.float64)
    cache_k, cache_v = empty_cache((1, 2), 8, 3, dtype=np.float64)
    length = 0
    for new in (3, 1, 2):
        k, v = rng.normal(size=(1, 2, new, 3)), rng.normal(size=(1, 2, new, 3))
        all_k, all_v = torch_cache.update(0, torch.from_numpy(k), torch.from_numpy(v))
        torch_cache.advance(new)
        length = cache_append(cache_k, cache_v, length, k, v)
        assert_allclose(cache_k[..., :length, :], all_k, rtol=0, atol=0, what="NumPy cache keys")
        assert_allclose(cache_v[..., :length, :], all_v, rtol=0, atol=0, what="NumPy cache values")
        q = rng.normal(size=(1, 2, 1, 3))
        expected = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), all_k, all_v)
        # float64: COURSE.md tolerance.
        assert_allclose(cached_attention(q, cache_k, cache_v, length), expected, rtol=1e-7, atol=1e-12,
                        what="cached_attention vs SDPA over the PyTorch cache")


def test_numpy_cache_bad_input():
    cache_k, cache_v = empty_cache((1,), 2, 3)
    with pytest.raises(ValueError, match="full"):
        cache_append(cache_k, cache_v, 1, np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="k_new"):
        cache_append(cache_k, cache_v, 0, np.zeros((1, 1, 4)), np.zeros((1, 1, 3)))
    with pytest.raises(TypeError, match="NumPy array"):
        cache_append(cache_k, cache_v, 0, [[[0.0, 0.0, 0.0]]], np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="one query"):
        cached_attention(np.zeros((1, 2, 3)), cache_k, cache_v, 1)
    with pytest.raises(ValueError, match="length"):
        cached_attention(np.zeros((1, 1, 3)), cache_k, cache_v, 3)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=1.0, seed=7),
                                    dict(temperature=0.8, top_k=10, top_p=0.9, seed=3)],
                         ids=["greedy", "sampling", "top-k-top-p"])
def test_generate_with_and_without_cache_gives_identical_tokens(model, kwargs):
    prompt = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    with_cache = generate(model, prompt, 30, use_cache=True, **kwargs)
    without = generate(model, prompt, 30, use_cache=False, **kwargs)
    assert_equal_ids(with_cache, without, what="tokens generated with the KV-cache")


def test_cache_bytes_formula_matches_allocation():
    config = GPTConfig.gpt2()
    formula = KVCache.bytes_needed(config, batch_size=2, tokens=16)
    assert formula == 2 * 12 * 12 * 64 * 16 * 2 * 4
    assert KVCache(config, batch_size=2, max_len=16).nbytes == formula
    assert KVCache.bytes_needed(config, 1, 16, dtype=torch.bfloat16) == formula // 4


def test_cache_overflow_is_a_clear_error(model):
    cache = KVCache(TINY, batch_size=1, max_len=4)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match="KV-cache is full"):
        model(torch.tensor([[4, 5]]), cache=cache)
    with pytest.raises(ValueError, match="1 to 40 tokens"):
        KVCache(TINY, batch_size=1, max_len=41)


def test_cache_shift_and_copy_row_move_positions():
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=1, n_embd=2)
    cache = KVCache(config, batch_size=2, max_len=6)
    for layer in range(2):
        k = torch.arange(8.0).reshape(2, 1, 4, 1).expand(2, 1, 4, 2)
        cache.update(layer, k, -k)
    cache.advance(4)
    cache.shift(2)  # open two positions at the front
    assert cache.length == 6
    assert torch.equal(cache.keys[1][0, 0, 2:, 0], torch.arange(4.0))
    cache.shift(-3)  # drop three leading positions
    assert cache.length == 3 and torch.equal(cache.values[0][1, 0, :3, 0], -torch.tensor([5.0, 6.0, 7.0]))
    source = KVCache(config, batch_size=1, max_len=2)
    for layer in range(2):
        source.update(layer, torch.full((1, 1, 2, 2), 9.0), torch.full((1, 1, 2, 2), -9.0))
    source.advance(2)
    cache.copy_row(0, source, 0, 2)
    assert torch.equal(cache.keys[0][0, 0, :3, 0], torch.tensor([1.0, 9.0, 9.0]))  # right-aligned
    with pytest.raises(ValueError, match="cannot shift"):
        cache.shift(4)
    with pytest.raises(ValueError, match="cannot copy"):
        cache.copy_row(0, source, 0, 3)


def test_one_token_steps_on_the_c_attention_equal_pytorchs(monkeypatch):
    """At batch 1 on the CPU a decoding step runs its attention in one C call (`native.attend_cached`): the logits
    of the prompt's pass and of every step equal those of PyTorch's attention, and greedy tokens equal those without
    the cache."""
    from llmcourse import native
    from llmcourse.pretrained import load_tiny_gpt

    if not native.available():
        pytest.skip(f"the C kernels are not available: {native.unavailable_reason()}")
    model, tokenizer = load_tiny_gpt()
    prompt = torch.tensor(tokenizer.encode("The function returns"))
    steps = {}
    for fused in (True, False):
        monkeypatch.setattr(KVCache, "fused_attention", lambda self, *args, fused=fused: fused)
        cache, ids, logits = KVCache(model.config, 1, 64), prompt[None], []
        with torch.no_grad():
            for _ in range(20):
                logits.append(model(ids, cache=cache, last_only=True)[0, -1:])
                ids = logits[-1].argmax().view(1, 1)
            logits.append(model(torch.tensor([[5, 7, 11, 13]]), cache=cache)[0])  # 4 new tokens, as in speculation
        steps[fused] = torch.cat(logits)
    assert_allclose(steps[True], steps[False], rtol=1e-5, atol=1e-5, what="logits with the C attention")
    monkeypatch.undo()
    assert_equal_ids(generate(model, prompt, 30, temperature=0.0),
                     generate(model, prompt, 30, temperature=0.0, use_cache=False), what="greedy tokens")
