"""Every exercise function has a version in the package (llmcourse.course.fallbacks, what the loader hands out until the
learner's works), equal to the course's reference answer on seeded random inputs.

Integer results (ids, merges, codes, masks, positions, schedules, beam indices) must be exactly equal. Float results
use COURSE.md's tolerances: float64 rtol 1e-7 (the same formulas, at most in another order of operations: PyTorch's
attention against NumPy's, ~1e-16 apart); float32 PyTorch's own defaults, rtol 1.3e-6 / atol 1e-5 (a few ulps of
rounding on inputs of size ~1 and sums of at most a few dozen terms).
"""

import copy
from typing import Callable

import numpy as np
import pytest
import torch

from llmcourse.course import catalog, fallbacks
from llmcourse.course.loader import reference
from llmcourse.gpt import GPTConfig, random_gpt

FUNCTIONS = [(ex.module, f) for ex in catalog.EXERCISES for f in ex.functions]
ON_ITS_OWN = {"training_step"}  # it changes a model and an optimizer: test_training_step_equals_the_reference
COMPARED = [(module, function) for module, function in FUNCTIONS if function not in ON_ITS_OWN]
SEEDS = range(5)
TOL = {np.dtype(np.float64): {"rtol": 1e-7, "atol": 1e-12}, np.dtype(np.float32): {"rtol": 1.3e-6, "atol": 1e-5},
       np.dtype(np.float16): {"rtol": 0, "atol": 0}}  # float16: int4 scales, rounded from the same float32: exact


def _normal(rng, dtype, *shape):
    return rng.normal(size=shape).astype(dtype)


def _attention_args(rng, dtype):
    B, H, T, D = rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 6), rng.integers(1, 5)
    mask = rng.random((T, T)) < 0.7 if rng.random() < 0.5 else None  # some queries see nothing at all
    return (*(_normal(rng, dtype, B, H, T, D) for _ in range(3)), mask), {}


def _multihead_args(rng, dtype):
    H, D, T = rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 5)
    C = H * D
    return (_normal(rng, dtype, 2, T, C), _normal(rng, dtype, C, 3 * C), _normal(rng, dtype, 3 * C),
            _normal(rng, dtype, C, C), _normal(rng, dtype, C), int(H)), {}


def _block(rng, dtype, C):
    shapes = {"attn.w_qkv": (C, 3 * C), "attn.b_qkv": (3 * C,), "attn.w_proj": (C, C), "mlp.w_fc": (C, 4 * C),
              "mlp.b_fc": (4 * C,), "mlp.w_proj": (4 * C, C)}
    return {key: _normal(rng, dtype, *shapes.get(key, (C,))) * 0.3 for key in fallbacks.BLOCK_LAYERS}


def _merges(rng):
    merges, next_id = {}, 256
    for _ in range(rng.integers(0, 12)):
        merges[(int(rng.integers(97, next_id)), int(rng.integers(97, next_id)))] = next_id
        next_id += 1
    return {pair: i for pair, i in merges.items() if list(merges.values()).index(i) == i - 256} or {(97, 98): 256}


def _text(rng):
    return "".join(rng.choice(list("aab bc的是🙂"), size=rng.integers(0, 30)))


def _cache(rng, dtype):
    B, H, L, D = 2, 2, 6, 3
    return _normal(rng, dtype, B, H, L, D), _normal(rng, dtype, B, H, L, D)


def _append_args(rng, dtype):
    cache_k, cache_v = _cache(rng, dtype)
    T_new = int(rng.integers(1, 4))
    length = int(rng.integers(0, 6 - T_new + 1))
    return (cache_k, cache_v, length, _normal(rng, dtype, 2, 2, T_new, 3), _normal(rng, dtype, 2, 2, T_new, 3)), {}


def _forward_cached_args(rng, dtype):
    """A prompt, or a few tokens after cached ones, of a plain or a left-padded batch (positions and mask)."""
    dtype = torch.float64 if dtype == np.float64 else torch.float32
    model = random_gpt(GPTConfig(vocab_size=11, block_size=8, n_layer=int(rng.integers(1, 3)), n_head=2, n_embd=8),
                       seed=int(rng.integers(99))).to(dtype)
    B, T, length = 2, int(rng.integers(1, 4)), int(rng.integers(0, 4))
    cache_k, cache_v = (torch.from_numpy(_normal(rng, np.float64, model.config.n_layer, B, 2, 7, 4)).to(dtype)
                        for _ in range(2))
    idx = torch.from_numpy(rng.integers(0, 11, size=(B, T)))
    kwargs = {}
    if rng.random() < 0.5:
        kwargs["attention_mask"] = torch.from_numpy(np.arange(length + T)[None, :] >= rng.integers(0, 2, (B, 1)))
        kwargs["positions"] = torch.from_numpy(rng.integers(0, 8, size=(B, T)))
    return (model.state_dict(), 2, idx, cache_k, cache_v, length), kwargs


def _scheduler_args(rng, dtype):
    slots = [f"r{i}" if rng.random() < 0.7 else None for i in range(4)]
    finished = [request is not None and bool(rng.random() < 0.5) for request in slots]
    return (slots, finished, [f"w{i}" for i in range(rng.integers(0, 5))]), {}


def _generate_batch_args(rng, dtype):
    model = random_gpt(GPTConfig(vocab_size=11, block_size=12, n_layer=1, n_head=2, n_embd=8),
                       seed=int(rng.integers(99))).to(torch.float64 if dtype == np.float64 else torch.float32)
    prompts = [rng.integers(0, 11, size=rng.integers(1, 5)).tolist() for _ in range(rng.integers(1, 4))]
    kwargs = {"temperature": float(rng.choice([0.0, 0.7, 1.3])), "seed": int(rng.integers(99)),
              "eos_id": int(rng.integers(0, 11)) if rng.random() < 0.5 else None, "pad_id": int(rng.integers(0, 11))}
    return (model.state_dict(), 2, prompts, int(rng.integers(0, 6))), kwargs


def _chunks(rng, dtype):
    chunks = [_normal(rng, dtype, int(rng.integers(0, 4))) * 30 for _ in range(rng.integers(1, 5))]
    return ([*chunks, np.array([-np.inf, 1.0], dtype)],), {}  # large scores, a masked one


def _tiled_args(rng, dtype):
    T, S, D = int(rng.integers(1, 5)), int(rng.integers(5, 9)), int(rng.integers(1, 4))
    return (_normal(rng, dtype, 2, T, D), _normal(rng, dtype, 2, S, D), _normal(rng, dtype, 2, S, 3),
            int(rng.integers(1, 7))), {"causal": bool(rng.random() < 0.7)}


def _paged_args(rng, dtype):
    table, free = [3, 0], [5, 1, 4, 2]
    length = int(rng.integers(0, 7))
    return (_normal(rng, dtype, 6, 3, 2), table, free, length, _normal(rng, dtype, int(rng.integers(0, 8)), 2)), {}


def _codes(rng, dtype):
    return rng.integers(-127, 128, size=(4, 6)).astype(np.int8), np.abs(_normal(rng, dtype, 4)) + 0.01


def _sdpa_args(rng, dtype):
    B, H, T_q, T_k, d = (int(rng.integers(1, high)) for high in (3, 3, 5, 6, 5))
    mask = rng.random((B, 1, T_q, T_k)) < 0.6 if rng.random() < 0.7 else None  # some queries see nothing at all
    return (_normal(rng, dtype, B, H, T_q, d), _normal(rng, dtype, B, 1, T_k, d), _normal(rng, dtype, B, H, T_k, 3),
            mask), {}


def _gqa_args(rng, dtype):
    B, n_kv, group, T, S, d = 2, rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 4), rng.integers(1, 6), 4
    mask = rng.random((B, 1, T, S)) < 0.6 if rng.random() < 0.7 else None
    return (_normal(rng, dtype, B, n_kv * group, T, d), _normal(rng, dtype, B, n_kv, S, d),
            _normal(rng, dtype, B, n_kv, S, 3), mask), {}


def _swiglu_args(rng, dtype):
    D, hidden = rng.integers(1, 6), rng.integers(1, 9)
    return (_normal(rng, dtype, 2, 3, D) * 3, _normal(rng, dtype, hidden, D), _normal(rng, dtype, hidden, D),
            _normal(rng, dtype, D, hidden)), {}


INPUTS: dict[str, Callable] = {  # function -> (rng, float dtype) -> (args, kwargs)
    "mean_squared_error": lambda r, d: ((_normal(r, d, 3, 2), _normal(r, d, 3, 2)), {}),
    "count_pairs": lambda r, d: ((r.integers(0, 4, size=r.integers(0, 20)).tolist(),), {}),
    "merge_pair": lambda r, d: ((r.integers(0, 3, size=r.integers(0, 20)).tolist(),
                                 tuple(int(i) for i in r.integers(0, 3, size=2)), 256), {}),
    "bpe_encode": lambda r, d: ((_text(r), _merges(r)), {}),
    "bpe_decode": lambda r, d: ((r.integers(97, 100, size=8).tolist() + [256], _merges(r)), {}),
    "bpe_train": lambda r, d: (({_text(r): int(r.integers(1, 5)) for _ in range(r.integers(0, 6))},
                                int(r.integers(0, 20))), {}),
    "embedding_forward": lambda r, d: ((r.integers(0, 5, size=(2, 3)), _normal(r, d, 5, 4)), {}),
    "embedding_backward": lambda r, d: ((r.integers(0, 5, size=(2, 3)), _normal(r, d, 2, 3, 4), 5), {}),
    "bigram_perplexity": lambda r, d: ((r.integers(0, 5, size=(4, 4)), r.integers(0, 4, size=10)),
                                       {"smoothing": float(r.choice([0.1, 1.0, 2.5]))}),
    "softmax": lambda r, d: ((_normal(r, d, 3, 4) * 30,), {"axis": int(r.integers(-2, 2))}),
    "causal_attention": _attention_args,
    "split_heads": lambda r, d: ((_normal(r, d, 2, 3, 6), int(r.choice([1, 2, 3, 6]))), {}),
    "merge_heads": lambda r, d: ((_normal(r, d, 2, 3, 4, 2),), {}),
    "multihead_attention": _multihead_args,
    "linear_backward": lambda r, d: ((_normal(r, d, 2, 3, 5), _normal(r, d, 2, 3, 4), _normal(r, d, 4, 5)), {}),
    "gelu_backward": lambda r, d: ((_normal(r, d, 2, 3), _normal(r, d, 2, 3) * 3), {}),
    "layernorm_backward": lambda r, d: ((_normal(r, d, 2, 3, 4), _normal(r, d, 2, 3, 4), _normal(r, d, 4)), {}),
    "cross_entropy_backward": lambda r, d: ((_normal(r, d, 5, 7) * 3, r.integers(0, 7, size=5)), {}),
    "sgd_step": lambda r, d: ((_normal(r, d, 3, 2), _normal(r, d, 3, 2)), {"lr": float(r.choice([0.0, 0.1, 2.0]))}),
    "momentum_step": lambda r, d: ((*(_normal(r, d, 3, 2) for _ in range(3)),),
                                   {"lr": 0.1, "momentum": float(r.choice([0.0, 0.5, 0.9]))}),
    "adam_step": lambda r, d: ((*(_normal(r, d, 3, 2) for _ in range(3)), np.abs(_normal(r, d, 3, 2)),
                                int(r.integers(1, 10))), {"lr": 0.01, "weight_decay": float(r.choice([0, 0.1]))}),
    "block_forward": lambda r, d: ((_normal(r, d, 2, 3, 4), _block(r, d, 4), int(r.choice([1, 2, 4]))), {}),
    "load_weights": lambda r, d: ((random_gpt(GPTConfig(vocab_size=11, block_size=8, n_layer=int(r.integers(1, 3)),
                                                        n_head=2, n_embd=8), seed=int(r.integers(99))).state_dict(),
                                   2), {}),
    "perplexity": lambda r, d: ((float(r.choice([0.0, 1.5, 800.0])),), {}),
    "apply_temperature": lambda r, d: ((torch.randn(3, 7, generator=torch.Generator().manual_seed(int(r.integers(99)))),
                                        float(r.choice([0.5, 1.0, 2.0]))), {}),
    "top_k_filter": lambda r, d: ((torch.tensor(r.integers(0, 4, size=(3, 7)), dtype=torch.float32),
                                   int(r.integers(1, 9))), {}),  # small integers: ties at the boundary
    "top_p_filter": lambda r, d: ((torch.tensor(r.normal(size=(3, 7))), float(r.choice([0.1, 0.5, 0.9, 1.0]))), {}),
    "beam_step": lambda r, d: ((torch.tensor(r.integers(-3, 0, size=3), dtype=torch.float64),
                                torch.tensor(r.integers(-3, 0, size=(3, 4)), dtype=torch.float64),
                                int(r.integers(1, 13))), {}),  # integers: many ties, broken by beam then token
    "cache_append": _append_args,
    "cached_attention": lambda r, d: ((_normal(r, d, 2, 2, 1, 3), *_cache(r, d), int(r.integers(1, 7))), {}),
    "gpt_forward_cached": _forward_cached_args,
    "padding_mask": lambda r, d: ((r.integers(1, 5, size=3).tolist(),), {"width": int(r.choice([4, 6]))}),
    "row_positions": lambda r, d: ((np.arange(5)[None, :] >= r.integers(0, 5, size=(3, 1)),), {}),
    "scheduler_step": _scheduler_args,
    "generate_batch": _generate_batch_args,
    "quantize_per_channel": lambda r, d: ((_normal(r, d, 4, 6) * (r.random((4, 1)) < 0.8),),
                                          {"bits": int(r.integers(2, 9))}),  # a row of zeros now and then
    "dequantize_per_channel": lambda r, d: (_codes(r, d), {}),
    "pack_int4": lambda r, d: ((r.integers(-8, 8, size=(3, 6)),), {}),
    "unpack_int4": lambda r, d: ((r.integers(0, 256, size=(3, 4)).astype(np.uint8),), {}),
    "quantized_matmul": lambda r, d: ((_normal(r, d, 2, 6), *_codes(r, d), _normal(r, d, 4)), {}),
    "quantize_state_dict": lambda r, d: ((random_gpt(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2,
                                                               n_embd=8), seed=int(r.integers(99))).state_dict(),
                                          str(r.choice(["fp32", "int8", "int4-g2", "int4-g4", "int4-g8"]))), {}),
    "rmsnorm_forward": lambda r, d: ((_normal(r, d, 2, 3, 5) * 3, _normal(r, d, 5)),
                                     {"eps": float(r.choice([1e-6, 1e-5, 0.0]))}),
    "rmsnorm_backward": lambda r, d: ((_normal(r, d, 2, 3, 5), _normal(r, d, 2, 3, 5) * 3, _normal(r, d, 5)),
                                      {"eps": float(r.choice([1e-6, 1e-5]))}),
    "swiglu": _swiglu_args,
    "apply_rope": lambda r, d: ((_normal(r, d, 2, 3, 4, 6), r.integers(0, 50, size=(2, 1, 4))),
                                {"theta": float(r.choice([10000.0, 500000.0, 2.0]))}),
    "scaled_dot_product_attention": _sdpa_args,
    "gqa_attention": _gqa_args,
    "online_softmax": _chunks,
    "tiled_attention": _tiled_args,
    "verify_draft": lambda r, d: ((torch.tensor(r.integers(0, 3, size=(4, 3)), dtype=torch.float32),
                                   r.integers(0, 3, size=3).tolist()), {}),  # small integers: ties in the argmax
    "paged_append": _paged_args,
    "paged_gather": lambda r, d: ((_normal(r, d, 6, 3, 2), [4, 1, 2], int(r.integers(0, 10))), {}),
}


def assert_same(got, expected) -> None:
    if isinstance(expected, dict) and "blocks" in expected:  # load_weights' params
        assert got.keys() == expected.keys() and got["n_head"] == expected["n_head"]
        for a, b in zip(got["blocks"], expected["blocks"]):
            assert_same(a, b)
        for key in ("wte", "wpe", "ln_f.gamma", "ln_f.beta"):
            assert_same(got[key], expected[key])
    elif isinstance(expected, (tuple, list)) and expected and not isinstance(expected[0], (int, str, type(None))):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert_same(a, b)
    elif isinstance(expected, dict) and expected and isinstance(next(iter(expected.values())),
                                                                (np.ndarray, torch.Tensor, tuple)):
        assert got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, (np.ndarray, torch.Tensor)):
        got, expected = (np.asarray(a) for a in (got, expected))
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, **TOL[expected.dtype])
        else:
            np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, float):
        assert type(got) is float and got == pytest.approx(expected, rel=1e-7)  # float64 results
    else:
        assert got == expected  # ints, lists of ids, dicts of pair counts, strings, schedules: exact


def test_every_exercise_function_has_a_fallback_and_inputs():
    for module, function in FUNCTIONS:
        assert callable(fallbacks.fallback(module, function)), f"{module}.{function} has no fallback"
        assert function in INPUTS or function in ON_ITS_OWN, f"{module}.{function}: add inputs to INPUTS"


def test_provided_code_has_no_fallback():
    with pytest.raises(KeyError, match="not an exercise"):
        fallbacks.fallback("backprop", "linear_forward")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("module, function", COMPARED, ids=[f"{m}.{f}" for m, f in COMPARED])
def test_fallback_equals_the_reference(module, function, dtype):
    ours, theirs = fallbacks.fallback(module, function), reference(f"{module}.{function}")
    for seed in SEEDS:
        args, kwargs = INPUTS[function](np.random.default_rng(seed), dtype)
        mine, yours = copy.deepcopy((args, kwargs)), copy.deepcopy((args, kwargs))
        expected = theirs(*yours[0], **yours[1])
        assert_same(ours(*mine[0], **mine[1]), expected)
        assert_same(mine, yours)  # the same changes in place (the KV-cache) and none elsewhere


def test_training_step_equals_the_reference():
    config = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)
    x, y = (torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    losses, models = [], []
    for step in (fallbacks.training_step, reference("training.training_step")):
        torch.manual_seed(0)
        model = random_gpt(config, seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses.append([step(model, optimizer, x, y, clip=clip) for clip in (1.0, None, 0.5)])
        models.append(model)
    assert losses[0] == losses[1]  # the same operations in the same order: bit for bit
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


class Keywords(dict):
    """The keyword arguments of a bad-input case (the last entry of its args)."""


TINY_STATE = random_gpt(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).state_dict()


@pytest.mark.parametrize("module, function, args, error", [
    ("warmup", "mean_squared_error", (np.zeros(2), np.zeros(3)), ValueError),
    ("tokens", "bpe_encode", (b"abc", {}), TypeError),
    ("tokens", "bpe_decode", ([999], {}), ValueError),
    ("tokens", "bpe_train", ({"ab": 0}, 3), ValueError),
    ("tokens", "embedding_forward", (np.array([5]), np.zeros((5, 2))), ValueError),
    ("attention", "softmax", (np.zeros(3), 1), ValueError),
    ("attention", "causal_attention", (np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((3, 3))), ValueError),
    ("attention", "split_heads", (np.zeros((1, 2, 5)), 2), ValueError),
    ("backprop", "sgd_step", (np.zeros(2), np.zeros(3), Keywords(lr=0.1)), ValueError),
    ("backprop", "sgd_step", (np.zeros(2), np.zeros(2), Keywords(lr=-0.1)), ValueError),
    ("backprop", "sgd_step", (np.arange(2), np.zeros(2), Keywords(lr=0.1)), TypeError),
    ("backprop", "momentum_step", (np.zeros(2), np.zeros(2), np.zeros(3), Keywords(lr=0.1)), ValueError),
    ("backprop", "momentum_step", (np.zeros(2), np.zeros(2), np.zeros(2), Keywords(lr=0.1, momentum=1.0)), ValueError),
    ("backprop", "adam_step", (np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), 0, Keywords(lr=0.1)), ValueError),
    ("training", "perplexity", ("2.0",), TypeError),
    ("decoding", "top_k_filter", (torch.zeros(3), 0), ValueError),
    ("kv_cache", "cache_append", (np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), 2, np.zeros((1, 1, 3)),
                                  np.zeros((1, 1, 3))), ValueError),
    ("kv_cache", "gpt_forward_cached", (TINY_STATE, 2, torch.zeros(1, 3, dtype=torch.int64),
                                        torch.zeros(1, 1, 2, 2, 4), torch.zeros(1, 1, 2, 2, 4), 0), ValueError),
    ("batching", "padding_mask", ([0, 2],), ValueError),
    ("batching", "generate_batch", (TINY_STATE, 2, [[1], []], 3), ValueError),
    ("quantization", "pack_int4", (np.array([8, 0]),), ValueError),
    ("quantization", "quantize_state_dict", ({}, "int8-kernel"), ValueError),
    ("llama", "rmsnorm_forward", (np.zeros((2, 3)), np.ones(2)), ValueError),
    ("llama", "rmsnorm_backward", (np.zeros((2, 2)), np.zeros((2, 3)), np.ones(3)), ValueError),
    ("llama", "swiglu", (np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3))), ValueError),
    ("llama", "apply_rope", (np.zeros((2, 3)), np.arange(2)), ValueError),
    ("llama", "apply_rope", (np.zeros((2, 4)), np.array([0.0, 1.0])), TypeError),
    ("llama", "apply_rope", (np.zeros((2, 4)), np.array([0, -1])), ValueError),
    ("llama", "scaled_dot_product_attention", (np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((4, 2)),
                                               np.ones((2, 3), bool)), ValueError),
    ("llama", "gqa_attention", (np.zeros((1, 3, 2, 4)), np.zeros((1, 2, 5, 4)), np.zeros((1, 2, 5, 4))), ValueError),
    ("tiled", "online_softmax", ([np.array([-np.inf])],), ValueError),
    ("tiled", "tiled_attention", (np.zeros((3, 2)), np.zeros((2, 2)), np.zeros((2, 2)), 2), ValueError),
    ("tiled", "tiled_attention", (np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), 0), ValueError),
    ("serving", "verify_draft", (np.zeros((2, 4)), [1, 2]), ValueError),
    ("serving", "paged_append", (np.zeros((2, 2, 1)), [0], [1], 1, np.zeros((4, 1))), ValueError),
])
def test_bad_input_raises_like_the_reference(module, function, args, error):
    *positional, keywords = args if isinstance(args[-1], Keywords) else (*args, {})
    for implementation in (fallbacks.fallback(module, function), reference(f"{module}.{function}")):
        with pytest.raises(error):
            implementation(*positional, **keywords)
