"""Graded tests of the quantization exercises (notebook 09), checked against PyTorch where it has the operation."""

import numpy as np
import torch

from llmcourse.course.grading import assert_allclose, assert_equal_ids, exercise, expect_error


def _torch_fake_quant(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """PyTorch's per-channel quantize-then-dequantize (the op quantization-aware training uses), float32."""
    return torch.fake_quantize_per_channel_affine(
        torch.from_numpy(w), torch.from_numpy(scale), torch.zeros(len(scale), dtype=torch.int32), 0, -qmax, qmax
    ).numpy()


# -- quantize_per_channel --------------------------------------------------------------------------------------

@exercise("quantize_per_channel")
def test_per_channel_matches_torch_fake_quantize(impl):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(16, 48)) * rng.uniform(0.01, 2.0, size=(16, 1))).astype(np.float32)
    q, scale = impl.quantization.quantize_per_channel(w)
    q, scale = np.asarray(q), np.asarray(scale)
    assert q.dtype == np.int8, f"quantize_per_channel should return int8 codes, got dtype {q.dtype}"
    assert scale.shape == (16,), f"scale should have one entry per row, shape (16,), got {scale.shape}"
    # float32 scale: max|row| / 127 computed in float32, as a float32 division does it.
    expected_scale = np.abs(w).max(axis=1) / np.float32(127)
    assert_allclose(scale, expected_scale, rtol=1.3e-6, atol=0, what="scale")
    w_hat = impl.quantization.dequantize_per_channel(q, scale)
    # Same codes times the same float32 scales: PyTorch's fake quantization must agree to float32 rounding
    # (it multiplies by 1/scale instead of dividing, which may move a value by one ulp, never across a code).
    assert_allclose(w_hat, _torch_fake_quant(w, scale, 127), rtol=1.3e-6, atol=1e-7,
                    what="dequantize_per_channel(quantize_per_channel(w))")


@exercise("quantize_per_channel")
def test_per_channel_error_is_at_most_half_a_step(impl):
    rng = np.random.default_rng(1)
    w = rng.standard_t(df=3, size=(8, 100))  # heavy tails: a few large values per row
    for bits in (8, 4, 2):
        q, scale = impl.quantization.quantize_per_channel(w, bits)
        qmax = 2 ** (bits - 1) - 1
        assert np.all(np.abs(np.asarray(q)).max(axis=1) == qmax), \
            f"with bits={bits} the largest |code| of each row should be {qmax}"
        w_hat = impl.quantization.dequantize_per_channel(q, scale)
        err = np.abs(np.asarray(w_hat) - w)
        # Rounding to the nearest code: error <= scale / 2; 1e-12 allows float64 rounding of the product.
        assert np.all(err <= np.asarray(scale)[:, None] / 2 + 1e-12), \
            f"with bits={bits} some |w - w_hat| exceed scale / 2 (largest ratio {np.max(err / scale[:, None]):.3f})"


@exercise("quantize_per_channel")
def test_per_channel_rounds_exact_halves_to_even(impl):
    # max |row| = 127 gives the scale exactly 1, so w / scale are these exact halves; half to even, like np.round
    w = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]], dtype=np.float32)
    q, scale = impl.quantization.quantize_per_channel(w)
    assert np.asarray(scale).dtype == np.float32, f"scale should have w's dtype float32, got {np.asarray(scale).dtype}"
    assert_equal_ids(q, np.array([[127, 0, 2, 2, 0, -2, -2, 4]], dtype=np.int8),
                     what="the codes of 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5 at scale 1 (round half to even)")


@exercise("quantize_per_channel")
def test_per_channel_zero_row_and_outlier(impl):
    w = np.array([[0.0, 0.0, 0.0, 0.0], [0.5, -1.0, 0.25, 100.0]], dtype=np.float64)
    q, scale = impl.quantization.quantize_per_channel(w)
    assert np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0), \
        f"a row of zeros must get a positive finite scale (1.0), got scales {scale}"
    assert np.asarray(scale)[0] == 1.0, f"a row of zeros gets the scale 1 (the docstring's choice), got {scale[0]}"
    # Hand-computed: the outlier 100 sets the scale 100/127, so 0.5 -> round(0.635) = 1, -1 -> round(-1.27) = -1,
    # 0.25 -> round(0.3175) = 0: small weights lose their precision next to an outlier.
    assert_equal_ids(q, np.array([[0, 0, 0, 0], [1, -1, 0, 127]], dtype=np.int8), what="codes")
    assert_allclose(impl.quantization.dequantize_per_channel(q, scale)[0], np.zeros(4), rtol=0, atol=0,
                    what="the dequantized row of zeros")


@exercise("quantize_per_channel")
def test_dequantize_per_channel_is_codes_times_scale(impl):
    q = np.array([[-127, 0, 127], [3, -2, 1]], dtype=np.int8)
    scale = np.array([0.5, 2.0], dtype=np.float32)
    w_hat = impl.quantization.dequantize_per_channel(q, scale)
    assert np.asarray(w_hat).dtype == np.float32, f"the result should have scale's dtype float32, got {w_hat.dtype}"
    # Integers times powers of two are exact in float32.
    assert_allclose(w_hat, [[-63.5, 0.0, 63.5], [6.0, -4.0, 2.0]], rtol=0, atol=0, what="dequantize_per_channel")


# -- int4_pack -----------------------------------------------------------------------------------------------------

@exercise("int4_pack")
def test_pack_int4_hand_computed(impl):
    q = np.array([1, -1, 7, -8, 0, 0], dtype=np.int8)
    packed = impl.quantization.pack_int4(q)
    assert np.asarray(packed).dtype == np.uint8, f"pack_int4 should return uint8, got {np.asarray(packed).dtype}"
    # [1, -1] -> 0b1111_0001 = 241; [7, -8] -> 0b1000_0111 = 135; [0, 0] -> 0 (low nibble is the even code).
    assert_equal_ids(packed, np.array([241, 135, 0], dtype=np.uint8), what="pack_int4([1, -1, 7, -8, 0, 0])")


@exercise("int4_pack")
def test_int4_round_trip(impl):
    rng = np.random.default_rng(2)
    q = rng.integers(-8, 8, size=(3, 5, 16)).astype(np.int8)
    packed = impl.quantization.pack_int4(q)
    assert np.asarray(packed).shape == (3, 5, 8), f"pack_int4 of shape (3, 5, 16) should give (3, 5, 8), got " \
                                                  f"{np.asarray(packed).shape}"
    back = impl.quantization.unpack_int4(packed)
    assert np.asarray(back).dtype == np.int8, f"unpack_int4 should return int8, got {np.asarray(back).dtype}"
    assert_equal_ids(back, q, what="unpack_int4(pack_int4(q))")


@exercise("int4_pack")
def test_unpack_every_byte_matches_torch_bit_operations(impl):
    every = np.arange(256, dtype=np.uint8)
    got = impl.quantization.unpack_int4(every)
    t = torch.arange(256, dtype=torch.int32)  # the nibbles by PyTorch's own bit operations, sign-extended
    low, high = t & 0xF, t >> 4
    expected = torch.stack([low - 16 * (low >= 8), high - 16 * (high >= 8)], dim=-1).flatten().numpy()
    assert_equal_ids(np.asarray(got).astype(np.int64), expected.astype(np.int64), what="unpack_int4(0..255)")
    assert_equal_ids(impl.quantization.pack_int4(np.asarray(got)), every, what="pack_int4(unpack_int4(0..255))")


@exercise("int4_pack")
def test_pack_int4_edge_cases(impl):
    empty = impl.quantization.pack_int4(np.zeros((2, 0), dtype=np.int8))
    assert np.asarray(empty).shape == (2, 0), f"pack_int4 of shape (2, 0) should give (2, 0), got " \
                                              f"{np.asarray(empty).shape}"
    with expect_error(ValueError, match="even", what="pack_int4 of 5 codes (an odd count)"):
        impl.quantization.pack_int4(np.zeros(5, dtype=np.int8))
    with expect_error(ValueError, match=r"\[-8, 7\]", what="pack_int4([8, 0]) (8 is no int4 code)"):
        impl.quantization.pack_int4(np.array([8, 0], dtype=np.int8))


# -- quantized_matmul ----------------------------------------------------------------------------------------------

@exercise("quantized_matmul")
def test_quantized_matmul_matches_torch_linear(impl):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 24))
    q = rng.integers(-127, 128, size=(10, 24)).astype(np.int8)
    scale = rng.uniform(1e-3, 1e-1, size=10)
    bias = rng.normal(size=10)
    got = impl.quantization.quantized_matmul(x, q, scale, bias)
    expected = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(q).double()
                                          * torch.from_numpy(scale)[:, None], torch.from_numpy(bias))
    # float64 throughout; scaling before or after the sum only reorders roundings.
    assert_allclose(got, expected, rtol=1e-7, atol=1e-12, what="quantized_matmul(x, q, scale, bias)")


@exercise("quantized_matmul")
def test_quantized_matmul_without_bias_keeps_float32(impl):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    q = rng.integers(-127, 128, size=(6, 16)).astype(np.int8)
    scale = rng.uniform(1e-3, 1e-1, size=6).astype(np.float32)
    got = impl.quantization.quantized_matmul(x, q, scale)
    assert np.asarray(got).dtype == np.float32, f"float32 x should give a float32 result, got {np.asarray(got).dtype}"
    expected = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(q).float()
                                          * torch.from_numpy(scale)[:, None])
    # float32: PyTorch's default tolerances; sums of 16 products of size ~1 stay well within atol 1e-5.
    assert_allclose(got, expected, rtol=1.3e-6, atol=1e-5, what="quantized_matmul(x, q, scale)")
    # float64 scale and bias with float32 x: the result still has x's dtype, as the docstring says
    got = impl.quantization.quantized_matmul(x, q, scale.astype(np.float64), np.ones(6))
    assert np.asarray(got).dtype == np.float32, \
        f"float32 x with float64 scale and bias should give a float32 result (x's dtype), got {np.asarray(got).dtype}"
    assert_allclose(got, expected.numpy() + 1.0, rtol=1.3e-6, atol=1e-5,
                    what="quantized_matmul(x, q, scale, bias) with float64 scale and bias")


@exercise("quantized_matmul")
def test_quantized_matmul_single_vector_and_zero_codes(impl):
    x = np.array([1.0, 2.0, 3.0])
    q = np.array([[1, 0, -1], [0, 0, 0]], dtype=np.int8)
    scale = np.array([0.5, 4.0])
    bias = np.array([0.25, -1.0])
    got = impl.quantization.quantized_matmul(x, q, scale, bias)
    # Hand-computed: row 0: (1 - 3) * 0.5 + 0.25 = -0.75; row 1: zero codes leave only the bias -1. Exact in float64.
    assert_allclose(got, [-0.75, -1.0], rtol=0, atol=0, what="quantized_matmul of a 1-D x")


# -- quantize_state_dict (challenge) -------------------------------------------------------------------------------

def _tiny_gpt(seed: int, n_embd: int = 16):
    from llmcourse.gpt import GPTConfig, random_gpt
    return random_gpt(GPTConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=n_embd), seed=seed)


QUANTIZED = ["transformer.wte.weight", "transformer.wpe.weight"] + [
    f"transformer.h.{i}.{name}.weight" for i in range(2) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                      "mlp.c_proj")]


def _check_against_quantize_model(got, model, scheme: str) -> None:
    """Codes and scales of every quantized matrix exactly those `quantize_model` stores; the rest unchanged."""
    from llmcourse.quantization import quantize_model

    state = model.state_dict()
    packaged = quantize_model(model, scheme)
    assert isinstance(got, dict), f"quantize_state_dict should return a dict, got {type(got).__name__}"
    expected_keys = [key for key in state if key != "lm_head.weight"]
    assert list(got) == expected_keys, f"quantize_state_dict({scheme!r}) should keep every key but " \
                                       f"'lm_head.weight', in order; got {list(got)}"
    for key in expected_keys:
        if key in QUANTIZED:
            assert isinstance(got[key], tuple) and len(got[key]) == 2, \
                f"{key} should become a tuple (codes, scale) under {scheme!r}, got {type(got[key]).__name__}"
            stored = packaged.get_submodule(key.removesuffix(".weight")).weight
            for what, mine, theirs in (("codes", got[key][0], stored.codes), ("scale", got[key][1], stored.scale)):
                assert isinstance(mine, torch.Tensor) and mine.dtype == theirs.dtype, \
                    f"{what} of {key} should be a {theirs.dtype} tensor, got {getattr(mine, 'dtype', type(mine))}"
                # Integer codes, and scales computed by the same float32 operations: exact equality.
                assert_allclose(mine.float(), theirs.float(), rtol=0, atol=0, what=f"{what} of {key} ({scheme})")
        else:
            assert isinstance(got[key], torch.Tensor) and got[key].dtype == state[key].dtype, \
                f"{key} is not quantized: it should stay a {state[key].dtype} tensor"
            assert_allclose(got[key], state[key], rtol=0, atol=0, what=f"{key} (kept as it is)")


@exercise("quantize_state_dict")
def test_quantize_state_dict_int8_stores_what_quantize_model_stores(impl):
    model = _tiny_gpt(0)
    _check_against_quantize_model(impl.quantization.quantize_state_dict(model.state_dict(), "int8"), model, "int8")


@exercise("quantize_state_dict")
def test_quantize_state_dict_int4_groups_packed_with_float16_scales(impl):
    model = _tiny_gpt(1)
    for scheme in ("int4-g8", "int4-g2", "int4-g16"):  # several groups per row, the smallest group, one per row
        _check_against_quantize_model(impl.quantization.quantize_state_dict(model.state_dict(), scheme), model,
                                      scheme)


@exercise("quantize_state_dict")
def test_quantize_state_dict_quantizes_float64_weights_from_float32(impl):
    model = _tiny_gpt(2).double()
    with torch.no_grad():  # a row of zeros: scale 1, codes 0
        model.transformer.h[0].mlp.c_fc.weight[3] = 0.0
    for scheme in ("int8", "int4-g4"):
        _check_against_quantize_model(impl.quantization.quantize_state_dict(model.state_dict(), scheme), model,
                                      scheme)


@exercise("quantize_state_dict")
def test_quantize_state_dict_fp32_keeps_every_weight(impl):
    model = _tiny_gpt(3)
    state = model.state_dict()
    got = impl.quantization.quantize_state_dict(state, "fp32")
    assert list(got) == [key for key in state if key != "lm_head.weight"], \
        "quantize_state_dict(..., 'fp32') should keep every key but 'lm_head.weight', in order"
    for key, value in got.items():
        assert isinstance(value, torch.Tensor), f"{key} should stay a tensor under 'fp32'"
        assert_allclose(value, state[key], rtol=0, atol=0, what=f"{key} under 'fp32' (unchanged)")


@exercise("quantize_state_dict")
def test_quantize_state_dict_rejects_bad_schemes(impl):
    state = _tiny_gpt(4).state_dict()
    impl.quantization.quantize_state_dict(state, "int4-g8")  # a valid call first
    for scheme in ("int3", "int8-kernel", "int4", "int4-g3", "int4-g0", "int4-g12", 8):
        with expect_error(ValueError, what=f"quantize_state_dict(state_dict, {scheme!r})"):
            impl.quantization.quantize_state_dict(state, scheme)
    # Group sizes that divide every row of a 12-wide model but are not even numbers >= 2, as the docstring asks.
    wide12 = _tiny_gpt(4, n_embd=12).state_dict()
    for scheme in ("int4-g3", "int4-g1"):
        with expect_error(ValueError, what=f"quantize_state_dict(state_dict of n_embd 12, {scheme!r}): the group "
                                           "size must be an even number >= 2"):
            impl.quantization.quantize_state_dict(wide12, scheme)
