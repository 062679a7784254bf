"""Graded tests of notebook 11 (from GPT-2 to Llama): RMSNorm forward and backward, SwiGLU, rotary embeddings, attention
with any mask, grouped-query attention.

Each result is compared live with PyTorch (torch.nn.functional.rms_norm and autograd, F.scaled_dot_product_attention
with and without enable_gqa, the SwiGLU module and `rotate` of llmcourse.llama, which the Llama of the chapter runs)
on small seeded inputs, with central differences for the backward pass, and with properties any correct answer has.
"""

import numpy as np
import torch
import torch.nn.functional as F

from llmcourse.course.grading import assert_allclose, exercise, expect_error
from llmcourse.gradcheck import check_gradient
from llmcourse.llama import LlamaConfig, SwiGLU, rope_tables, rotate

# float64: the learner's code and PyTorch differ only in the order of their sums, ~1e-16 relative; rtol 1e-7 is
# COURSE.md's float64 tolerance, atol 1e-12 covers entries ~0 by cancellation, far below any wrong formula's error.
F64 = {"rtol": 1e-7, "atol": 1e-12}
# float32: PyTorch's own defaults for float32 comparisons (rounding ~6e-8 per operation, a few dozen operations).
F32 = {"rtol": 1.3e-6, "atol": 1e-5}
# Central differences in float64 with h = 1e-5: a correct backward lands near 1e-10, a wrong one above 1e-3.
GRADCHECK = 1e-7


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _check_dtype(value, dtype, what: str) -> None:
    assert np.asarray(value).dtype == dtype, f"{what} has dtype {np.asarray(value).dtype}, expected " \
                                             f"{np.dtype(dtype).name} (keep the input's dtype)"


# -- rmsnorm --------------------------------------------------------------------------------------------------------

def _torch_rmsnorm(x, weight, eps=1e-6):
    return F.rms_norm(x, weight.shape, weight, eps=eps)


def _rmsnorm_case(rng, shape, dtype=np.float64):
    x = rng.normal(loc=0.5, scale=2.0, size=shape).astype(dtype)
    return x, rng.normal(size=shape[-1]).astype(dtype), rng.normal(size=shape).astype(dtype)


def _torch_rmsnorm_grads(dout, x, weight, eps=1e-6):
    xt, wt = _t(x).requires_grad_(), _t(weight).requires_grad_()
    (_torch_rmsnorm(xt, wt, eps) * _t(dout)).sum().backward()
    return xt.grad.numpy(), wt.grad.numpy()


@exercise("rmsnorm")
def test_rmsnorm_forward_matches_torch(impl):
    x, weight, _ = _rmsnorm_case(np.random.default_rng(0), (2, 3, 8))
    for eps in (1e-6, 1e-5, 0.5):  # the eps given, not a fixed one (0.5 changes every output visibly)
        assert_allclose(impl.llama.rmsnorm_forward(x, weight, eps=eps), _torch_rmsnorm(_t(x), _t(weight), eps), **F64,
                        what=f"rmsnorm_forward(x, weight, eps={eps}) (vs torch.nn.functional.rms_norm)")
    assert_allclose(impl.llama.rmsnorm_forward(x, weight), _torch_rmsnorm(_t(x), _t(weight), 1e-6), **F64,
                    what="rmsnorm_forward(x, weight) with the default eps 1e-6")


@exercise("rmsnorm")
def test_rmsnorm_forward_float32_and_one_row(impl):
    x, weight, _ = _rmsnorm_case(np.random.default_rng(1), (16,), np.float32)  # a single row: x of shape (D,)
    got = impl.llama.rmsnorm_forward(x, weight)
    _check_dtype(got, np.float32, "rmsnorm_forward for float32 inputs")
    assert_allclose(got, _torch_rmsnorm(_t(x), _t(weight)), **F32, what="rmsnorm_forward of one float32 row (D,)")


@exercise("rmsnorm")
def test_rmsnorm_does_not_subtract_the_mean(impl):
    # Hand-computed: the row [3, 4] has mean square 12.5; with eps 0 and weight 1 the output is x / sqrt(12.5).
    # LayerNorm would give [-1, 1] instead.
    got = impl.llama.rmsnorm_forward(np.array([[3.0, 4.0]]), np.ones(2), eps=0.0)
    assert_allclose(got, np.array([[3.0, 4.0]]) / np.sqrt(12.5), **F64,
                    what="rmsnorm_forward([[3, 4]], ones, eps=0) (no mean subtracted, no bias)")


@exercise("rmsnorm")
def test_rmsnorm_backward_matches_torch(impl):
    x, weight, dout = _rmsnorm_case(np.random.default_rng(2), (2, 3, 8))  # (B, T, D): dweight sums over B and T
    got = impl.llama.rmsnorm_backward(dout, x, weight, 1e-6)
    assert isinstance(got, tuple) and len(got) == 2, "rmsnorm_backward must return a tuple (dx, dweight)"
    for name, value, expected in zip(("dx", "dweight"), got, _torch_rmsnorm_grads(dout, x, weight)):
        assert_allclose(value, expected, **F64, what=f"rmsnorm_backward's {name} (vs torch.autograd)")
    for name, value, expected in zip(("dx", "dweight"), impl.llama.rmsnorm_backward(dout, x, weight, eps=0.5),
                                     _torch_rmsnorm_grads(dout, x, weight, 0.5)):
        assert_allclose(value, expected, **F64, what=f"rmsnorm_backward's {name} with eps=0.5")


@exercise("rmsnorm")
def test_rmsnorm_backward_passes_gradient_check(impl):
    x, weight, dout = _rmsnorm_case(np.random.default_rng(3), (4, 6))
    dx, dweight = impl.llama.rmsnorm_backward(dout, x, weight)
    error = check_gradient(lambda x, weight: np.sum(_torch_rmsnorm(_t(x), _t(weight)).numpy() * dout),
                           {"x": x, "weight": weight}, {"x": dx, "weight": dweight})
    assert error < GRADCHECK, f"rmsnorm_backward disagrees with central differences: relative error {error:.1e}"


@exercise("rmsnorm")
def test_rmsnorm_backward_row_of_zeros_and_float32(impl):
    # Edge case: a row of zeros has root mean square sqrt(eps): outputs 0, gradients finite (eps keeps 1/rms finite).
    x, weight, dout = _rmsnorm_case(np.random.default_rng(4), (3, 16), np.float32)
    x[1] = 0.0
    assert_allclose(impl.llama.rmsnorm_forward(x, weight)[1], np.zeros(16), rtol=0, atol=0,
                    what="rmsnorm_forward of a row of zeros")
    for name, value, expected in zip(("dx", "dweight"), impl.llama.rmsnorm_backward(dout, x, weight),
                                     _torch_rmsnorm_grads(dout, x, weight)):
        _check_dtype(value, np.float32, f"rmsnorm_backward's {name} for float32 inputs")
        # float32, but 1/sqrt(1e-6) = 1000 multiplies the zero row's dx: its relative tolerance is what counts.
        assert_allclose(value, expected, rtol=F32["rtol"], atol=1e-3 if name == "dx" else F32["atol"],
                        what=f"rmsnorm_backward's {name} (float32, with a row of zeros)")


@exercise("rmsnorm")
def test_rmsnorm_rejects_bad_input(impl):
    x = np.ones((2, 4))
    # rows of ones have root mean square 1 (eps 0): the output is the weight, the gradient of a constant dout 0
    assert_allclose(impl.llama.rmsnorm_forward(x, np.arange(4.0), eps=0.0), np.tile(np.arange(4.0), (2, 1)), **F64,
                    what="rmsnorm_forward(ones((2, 4)), weight=[0, 1, 2, 3], eps=0)")
    with expect_error(ValueError, match="weight", what="rmsnorm_forward with weight of shape (1,) for D = 4 "
                                                       "(weight is not broadcast)"):
        impl.llama.rmsnorm_forward(x, np.ones(1))
    with expect_error(ValueError, match="weight", what="rmsnorm_forward with weight of shape (1, 4)"):
        impl.llama.rmsnorm_forward(x, np.ones((1, 4)))
    with expect_error(ValueError, match="dout", what="rmsnorm_backward with dout of shape (2, 3) for x (2, 4)"):
        impl.llama.rmsnorm_backward(np.ones((2, 3)), x, np.ones(4))
    with expect_error(ValueError, match="eps", what="rmsnorm_forward with eps=-1"):
        impl.llama.rmsnorm_forward(x, np.ones(4), eps=-1.0)
    with expect_error(TypeError, match="float", what="rmsnorm_forward of an integer array"):
        impl.llama.rmsnorm_forward(np.ones((2, 4), dtype=int), np.ones(4))


# -- swiglu ---------------------------------------------------------------------------------------------------------

def _swiglu_weights(rng, D, hidden, dtype=np.float64):
    return tuple(rng.normal(scale=s ** -0.5, size=shape).astype(dtype)
                 for s, shape in ((D, (hidden, D)), (D, (hidden, D)), (hidden, (D, hidden))))


def _torch_swiglu(x, w_gate, w_up, w_down):
    """llmcourse.llama's SwiGLU module (the Llama of the chapter) with these weights."""
    D, hidden = w_gate.shape[1], w_gate.shape[0]
    module = SwiGLU(LlamaConfig(vocab_size=2, n_layer=1, n_head=1, n_kv_head=1, n_embd=D, hidden=hidden))
    module = module.to(torch.float64 if x.dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for linear, w in ((module.gate_proj, w_gate), (module.up_proj, w_up), (module.down_proj, w_down)):
            linear.weight.copy_(_t(w))
        return module(_t(x)).numpy()


@exercise("swiglu")
def test_swiglu_matches_the_llama_module(impl):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 5, 8))
    weights = _swiglu_weights(rng, 8, 22)  # hidden about 8/3 of D, as Llama's
    assert_allclose(impl.llama.swiglu(x, *weights), _torch_swiglu(x, *weights), **F64,
                    what="swiglu(x, w_gate, w_up, w_down) (vs llmcourse.llama.SwiGLU with the same weights)")


@exercise("swiglu")
def test_swiglu_gate_and_up_are_not_swapped(impl):
    # Hand-computed, D = hidden = 1: silu(2) * 3 = 2 * sigmoid(2) * 3; swapped it would be silu(3) * 2.
    got = impl.llama.swiglu(np.array([1.0]), np.array([[2.0]]), np.array([[3.0]]), np.array([[1.0]]))
    assert_allclose(got, np.array([6.0 / (1.0 + np.exp(-2.0))]), **F64,
                    what="swiglu(1, w_gate=2, w_up=3, w_down=1) (silu goes on the gate, x w_gate^T)")


@exercise("swiglu")
def test_swiglu_float32_and_large_inputs(impl):
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(3, 6)) * 200).astype(np.float32)  # gate values in the hundreds, of both signs
    weights = _swiglu_weights(rng, 6, 16, np.float32)
    got = impl.llama.swiglu(x, *weights)
    _check_dtype(got, np.float32, "swiglu for float32 inputs")
    expected = _torch_swiglu(x, *weights)
    # float32; outputs reach ~1e4, so the relative tolerance carries the comparison.
    assert_allclose(got, expected, rtol=1e-5, atol=1e-3, what="swiglu of large float32 inputs (silu(-200) is ~0)")


@exercise("swiglu")
def test_swiglu_rejects_bad_weights(impl):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 4))
    w_gate, w_up, w_down = _swiglu_weights(rng, 4, 6)
    assert_allclose(impl.llama.swiglu(np.zeros((2, 4)), w_gate, w_up, w_down), np.zeros((2, 4)), rtol=0, atol=0,
                    what="swiglu of zeros (silu(0) = 0)")
    with expect_error(ValueError, match="w_down", what="swiglu with w_down transposed, (hidden, D) instead of "
                                                      "(D, hidden)"):
        impl.llama.swiglu(x, w_gate, w_up, w_down.T)
    with expect_error(ValueError, match="w_gate", what="swiglu with w_gate stored (in, out)"):
        impl.llama.swiglu(x, w_gate.T, w_up, w_down)


# -- apply_rope -----------------------------------------------------------------------------------------------------

def _rope_reference(x, positions, theta=10000.0):
    """rotate of llmcourse.llama with cos/sin tables of the same formula as rope_tables, in float64."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = _t(np.asarray(positions)).to(torch.float64)[..., None] * inv_freq  # (..., T, d/2)
    angles = torch.cat([angles, angles], dim=-1)
    return rotate(_t(x), angles.cos(), angles.sin()).numpy()


@exercise("apply_rope")
def test_apply_rope_matches_rotate(impl):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(2, 3, 7, 8))  # (B, n_head, T, d)
    positions = np.arange(7)
    assert_allclose(impl.llama.apply_rope(x, positions), _rope_reference(x, positions), **F64,
                    what="apply_rope(x, arange(T)) (vs llmcourse.llama.rotate, HF's half-split layout)")
    for theta in (500000.0, 10.0):  # Llama 3's base, and a small one that turns every pair fast
        got = impl.llama.apply_rope(x, positions + 40, theta=theta)
        assert_allclose(got, _rope_reference(x, positions + 40, theta), **F64,
                        what=f"apply_rope(x, positions 40..46, theta={theta:g})")


@exercise("apply_rope")
def test_apply_rope_float32_matches_the_models_tables(impl):
    # The Llama of llmcourse.llama looks its angles up in rope_tables (float32) by position, as here.
    rng = np.random.default_rng(21)
    config = LlamaConfig(vocab_size=2, block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=32)
    cos, sin = rope_tables(config)
    x = rng.normal(size=(2, 2, 6, 16)).astype(np.float32)
    positions = rng.integers(0, 20, size=(2, 1, 6))
    got = impl.llama.apply_rope(x, positions)
    _check_dtype(got, np.float32, "apply_rope for float32 x")
    expected = rotate(_t(x), cos[_t(positions)], sin[_t(positions)]).numpy()
    # float32; positions < 20, so the float32 angles of the tables are within ~1e-6 of exact ones.
    assert_allclose(got, expected, **F32, what="apply_rope of float32 x (vs rotate with rope_tables)")


@exercise("apply_rope")
def test_apply_rope_position_zero_is_the_identity_and_lengths_are_kept(impl):
    rng = np.random.default_rng(22)
    x = rng.normal(size=(5, 10))
    got = impl.llama.apply_rope(x, np.zeros(5, dtype=np.int64))
    # cos 0 = 1 and sin 0 = 0 exactly: position 0 leaves x untouched, bit for bit.
    assert_allclose(got, x, rtol=0, atol=0, what="apply_rope at position 0 (a rotation by angle 0)")
    got = np.asarray(impl.llama.apply_rope(x, np.arange(5) * 7))
    # a rotation keeps the length of every pair (x_i, x_{i + d/2}); float64 rounding only
    assert_allclose(np.hypot(got[:, :5], got[:, 5:]), np.hypot(x[:, :5], x[:, 5:]), **F64,
                    what="the length of each pair (x_i, x_{i + d/2}) after apply_rope")


@exercise("apply_rope")
def test_apply_rope_scores_depend_only_on_the_distance(impl):
    rng = np.random.default_rng(23)
    q, k = rng.normal(size=(1, 16)), rng.normal(size=(1, 16))
    scores = [np.sum(np.asarray(impl.llama.apply_rope(q, np.array([i]))) * impl.llama.apply_rope(k, np.array([j])))
              for i, j in ((3, 0), (10, 7), (103, 100))]
    # The score of positions (i, j) depends on i - j only: three pairs at distance 3 give one score. float64;
    # angles up to ~100 rad lose ~1e-14 to rounding.
    assert_allclose(scores[1:], scores[:1] * 2, rtol=1e-9, atol=1e-12,
                    what="q.k after apply_rope at positions (10, 7) and (103, 100), against (3, 0)")


@exercise("apply_rope")
def test_apply_rope_per_row_positions_under_left_padding(impl):
    rng = np.random.default_rng(24)
    x = rng.normal(size=(2, 2, 5, 4))  # row 0 has two padding tokens in front, row 1 none
    positions = np.array([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])[:, None, :]  # (B, 1, T): the same for every head
    got = np.asarray(impl.llama.apply_rope(x, positions))
    assert_allclose(got[0, :, 2:], _rope_reference(x[0, :, 2:], np.arange(3)), **F64,
                    what="apply_rope of row 0's real tokens (positions 0, 1, 2 after two padding tokens)")
    assert_allclose(got, _rope_reference(x, positions), **F64, what="apply_rope with per-row positions (B, 1, T)")


@exercise("apply_rope")
def test_apply_rope_rejects_bad_input(impl):
    x = np.ones((1, 2, 5, 4))
    # hand-computed: the pair (1, 1) at position 1 of frequency 1 turns by 1 radian
    assert_allclose(impl.llama.apply_rope(np.ones((1, 2)), np.array([1])), [[np.cos(1) - np.sin(1),
                                                                            np.cos(1) + np.sin(1)]], **F64,
                    what="apply_rope([[1, 1]], positions [1]) (d = 2: one pair, angle 1)")
    with expect_error(ValueError, match="even", what="apply_rope of x with an odd head size d = 3"):
        impl.llama.apply_rope(np.ones((5, 3)), np.arange(5))
    with expect_error(TypeError, match="integer", what="apply_rope with float positions"):
        impl.llama.apply_rope(x, np.arange(5.0))
    with expect_error(ValueError, match=">= 0", what="apply_rope with a negative position"):
        impl.llama.apply_rope(x, np.array([0, 1, 2, 3, -1]))
    with expect_error(ValueError, match="broadcast", what="apply_rope with positions (2, 1, 5) for x (1, 2, 5, 4) "
                                                          "(positions must not enlarge x)"):
        impl.llama.apply_rope(x, np.zeros((2, 1, 5), dtype=np.int64))
    with expect_error(ValueError, match="theta", what="apply_rope with theta=0"):
        impl.llama.apply_rope(x, np.arange(5), theta=0.0)


# -- sdpa: scaled_dot_product_attention -----------------------------------------------------------------------------

def _qkv(rng, q_shape, k_shape, v_shape, dtype=np.float64):
    return tuple(rng.normal(size=shape).astype(dtype) for shape in (q_shape, k_shape, v_shape))


def _torch_sdpa(q, k, v, mask=None, gqa=False):
    return F.scaled_dot_product_attention(_t(q), _t(k), _t(v), attn_mask=None if mask is None else _t(mask),
                                          enable_gqa=gqa).numpy()


@exercise("sdpa")
def test_sdpa_matches_torch_with_more_keys_than_queries(impl):
    rng = np.random.default_rng(30)
    q, k, v = _qkv(rng, (2, 3, 4, 8), (2, 3, 9, 8), (2, 3, 9, 5))  # T_q = 4 new tokens, T_k = 9 keys, d_v = 5
    # float64; as in chapter 02: rtol 1e-7, atol 1e-12 for outputs near 0.
    assert_allclose(impl.llama.scaled_dot_product_attention(q, k, v), _torch_sdpa(q, k, v), **F64,
                    what="scaled_dot_product_attention(q, k, v), no mask (every query sees every key)")


@exercise("sdpa")
def test_sdpa_matches_torch_with_masks(impl):
    rng = np.random.default_rng(31)
    q, k, v = _qkv(rng, (2, 3, 3, 4), (2, 3, 8, 4), (2, 3, 8, 4))
    cached = np.tril(np.ones((3, 8), dtype=bool), k=5)  # 3 new tokens after 5 cached ones: causal with an offset
    padding = np.ones((2, 1, 1, 8), dtype=bool)
    padding[0, :, :, :2] = False  # row 0 has two padding keys
    for name, mask in (("(T_q, T_k) causal after 5 cached keys", cached), ("(B, 1, T_q, T_k)", cached & padding),
                       ("(B, n_head, T_q, T_k) random", rng.random((2, 3, 3, 8)) < 0.7)):
        mask = mask | (np.arange(8) == 7)  # each query keeps one key: torch agrees on empty rows (next test)
        assert_allclose(impl.llama.scaled_dot_product_attention(q, k, v, mask), _torch_sdpa(q, k, v, mask), **F64,
                        what=f"scaled_dot_product_attention with a mask {name}")


@exercise("sdpa")
def test_sdpa_fully_masked_row_gives_zeros(impl):
    rng = np.random.default_rng(32)
    q, k, v = _qkv(rng, (4, 3), (6, 3), (6, 2))
    mask = rng.random((4, 6)) < 0.6
    mask[:, 0] = True
    mask[2] = False  # query 2 may attend to nothing
    got = np.asarray(impl.llama.scaled_dot_product_attention(q, k, v, mask))
    assert np.all(np.isfinite(got)), "scaled_dot_product_attention gave nan or inf for a query whose mask row is " \
                                     "all False: its output must be 0"
    assert_allclose(got[2], np.zeros(2), rtol=0, atol=0, what="the output of a query that may attend to no key")
    assert_allclose(got, _torch_sdpa(q, k, v, mask), **F64, what="scaled_dot_product_attention with an empty row "
                                                                 "(the other rows must not change)")


@exercise("sdpa")
def test_sdpa_large_scores_float32_and_mixed_dtypes(impl):
    rng = np.random.default_rng(33)
    q, k, v = _qkv(rng, (2, 5, 4), (2, 7, 4), (2, 7, 4), np.float32)
    got = impl.llama.scaled_dot_product_attention(q * 300, k, v)  # scores in the hundreds: exp overflows unshifted
    _check_dtype(got, np.float32, "scaled_dot_product_attention of float32 inputs")
    assert_allclose(got, _torch_sdpa(q * 300, k, v), **F32, what="scaled_dot_product_attention of large float32 "
                                                                 "scores (a stable softmax)")
    got = impl.llama.scaled_dot_product_attention(q, k.astype(np.float64), v)
    _check_dtype(got, np.float64, "scaled_dot_product_attention of float32 q, v and float64 k (the wider dtype)")


@exercise("sdpa")
def test_sdpa_rejects_bad_input(impl):
    q, k, v = np.ones((2, 3, 4)), np.ones((2, 5, 4)), np.ones((2, 5, 4))
    assert_allclose(impl.llama.scaled_dot_product_attention(q, k, v * 2), np.full((2, 3, 4), 2.0), **F64,
                    what="scaled_dot_product_attention of values that are all 2 (weights sum to 1)")
    with expect_error(TypeError, match="boolean", what="scaled_dot_product_attention with a float (additive) mask"):
        impl.llama.scaled_dot_product_attention(q, k, v, np.zeros((3, 5)))
    with expect_error(ValueError, match="mask", what="scaled_dot_product_attention with a (T_k, T_q) mask"):
        impl.llama.scaled_dot_product_attention(q, k, v, np.ones((5, 3), dtype=bool))
    with expect_error(ValueError, match="mask", what="scaled_dot_product_attention with a mask (4, 3, 5) that "
                                                     "enlarges the batch of 2"):
        impl.llama.scaled_dot_product_attention(q, k, v, np.ones((4, 3, 5), dtype=bool))
    with expect_error(ValueError, match="positions", what="scaled_dot_product_attention with 5 keys and 4 values"):
        impl.llama.scaled_dot_product_attention(q, k, np.ones((2, 4, 4)))
    with expect_error(ValueError, match="last dimension", what="scaled_dot_product_attention with q and k of "
                                                               "different widths"):
        impl.llama.scaled_dot_product_attention(q, np.ones((2, 5, 3)), v)


# -- gqa_attention --------------------------------------------------------------------------------------------------

@exercise("gqa_attention")
def test_gqa_attention_matches_torch_enable_gqa(impl):
    rng = np.random.default_rng(40)
    for n_kv_head in (4, 2, 1):  # plain multi-head, grouped, multi-query
        q, k, v = _qkv(rng, (2, 4, 5, 8), (2, n_kv_head, 5, 8), (2, n_kv_head, 5, 6))
        assert_allclose(impl.llama.gqa_attention(q, k, v), _torch_sdpa(q, k, v, gqa=True), **F64,
                        what=f"gqa_attention with n_head 4, n_kv_head {n_kv_head} (vs F.scaled_dot_product_attention"
                             f"(..., enable_gqa=True))")


@exercise("gqa_attention")
def test_gqa_attention_with_masks_and_a_cache(impl):
    rng = np.random.default_rng(41)
    q, k, v = _qkv(rng, (2, 6, 2, 4), (2, 2, 7, 4), (2, 2, 7, 4))  # 2 new tokens over 7 cached keys, groups of 3
    causal = np.tril(np.ones((2, 7), dtype=bool), k=5)
    per_head = (rng.random((2, 6, 2, 7)) < 0.6) | (np.arange(7) == 0)
    for name, mask in (("(T, S) causal after 5 cached keys", causal), ("(B, n_head, T, S) per head", per_head)):
        assert_allclose(impl.llama.gqa_attention(q, k, v, mask), _torch_sdpa(q, k, v, mask, gqa=True), **F64,
                        what=f"gqa_attention with a mask {name}")
    empty = per_head.copy()
    empty[1, 4, 0] = False  # batch 1, head 4, query 0 may attend to nothing
    got = np.asarray(impl.llama.gqa_attention(q, k, v, empty))
    assert_allclose(got[1, 4, 0], np.zeros(4), rtol=0, atol=0,
                    what="gqa_attention of a query whose mask allows no key (must be 0, not nan)")


@exercise("gqa_attention")
def test_gqa_attention_gives_each_query_head_its_groups_values(impl):
    # Hand-built: value head j holds the constant j + 1 everywhere, so every output of query head h is the number of
    # the value head it read. Groups are neighbours: with 6 query heads over 2 value heads, heads 0-2 read value
    # head 0 and heads 3-5 value head 1 (np.tile-style interleaving would give 1, 2, 1, 2, 1, 2).
    q, k = np.random.default_rng(42).normal(size=(2, 1, 6, 3, 4)).astype(np.float32)[:, 0], np.zeros((1, 2, 5, 4))
    v = np.broadcast_to(np.array([1.0, 2.0])[None, :, None, None], (1, 2, 5, 4)).copy()
    got = np.asarray(impl.llama.gqa_attention(q[:1], k.astype(np.float32), v.astype(np.float32)))
    _check_dtype(got, np.float32, "gqa_attention of float32 inputs")
    expected = np.broadcast_to(np.array([1, 1, 1, 2, 2, 2], np.float32)[None, :, None, None], (1, 6, 3, 4))
    # float32; weights summing to 1 times a constant: a few ulps.
    assert_allclose(got, expected, **F32, what="gqa_attention's output per query head (value head h // 3)")


@exercise("gqa_attention")
def test_gqa_attention_rejects_bad_input(impl):
    q = np.ones((1, 6, 3, 4))
    assert_allclose(impl.llama.gqa_attention(q, np.ones((1, 2, 5, 4)), np.full((1, 2, 5, 4), 3.0)),
                    np.full((1, 6, 3, 4), 3.0), **F64, what="gqa_attention of values that are all 3")
    with expect_error(ValueError, match="multiple", what="gqa_attention with 6 query heads over 4 key/value heads"):
        impl.llama.gqa_attention(q, np.ones((1, 4, 5, 4)), np.ones((1, 4, 5, 4)))
    with expect_error(ValueError, match="4-D", what="gqa_attention of q of shape (6, 3, 4) (no batch axis)"):
        impl.llama.gqa_attention(q[0], np.ones((2, 5, 4)), np.ones((2, 5, 4)))
    with expect_error(ValueError, match="B", what="gqa_attention with q of batch 1 and k, v of batch 2 (no "
                                                  "broadcasting of the batch)"):
        impl.llama.gqa_attention(q, np.ones((2, 2, 5, 4)), np.ones((2, 2, 5, 4)))
    with expect_error(ValueError, match="mask", what="gqa_attention with a mask of shape (5, 3) for T = 3, S = 5"):
        impl.llama.gqa_attention(q, np.ones((1, 2, 5, 4)), np.ones((1, 2, 5, 4)), np.ones((5, 3), dtype=bool))
