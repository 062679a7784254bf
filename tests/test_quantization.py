"""Quantization (notebook 09): the NumPy pieces, their PyTorch counterparts in the quantized GPT, the report and
the explorer."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse import quantization as Q
from llmcourse.course.loader import reference
from llmcourse.gpt import GPT, GPTConfig, random_gpt

quantize_groupwise = reference("quantization.quantize_groupwise")
dequantize_groupwise = reference("quantization.dequantize_groupwise")
quantize_per_channel = reference("quantization.quantize_per_channel")
dequantize_per_channel = reference("quantization.dequantize_per_channel")
pack_int4, unpack_int4 = reference("quantization.pack_int4"), reference("quantization.unpack_int4")
quantized_matmul = reference("quantization.quantized_matmul")

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_gpt(seed: int = 0) -> GPT:
    return random_gpt(TINY, seed)


# -- NumPy pieces ----------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=40)
@given(rows=st.integers(1, 5), groups=st.integers(1, 4), group_size=st.sampled_from([2, 4, 8]),
       bits=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 2 ** 16), shift=st.floats(-3, 3))
def test_groupwise_error_within_half_a_step(rows, groups, group_size, bits, symmetric, seed, shift):
    w = np.random.default_rng(seed).normal(size=(rows, groups * group_size)) + shift
    q, scale, zero = quantize_groupwise(w, bits, group_size, symmetric)
    qmin, qmax = reference("quantization.code_range")(bits, symmetric)
    assert q.dtype == np.int8 and q.min() >= qmin and q.max() <= qmax
    err = np.abs(dequantize_groupwise(q, scale, zero) - w)
    assert np.all(err <= np.repeat(scale, group_size, axis=1) / 2 * (1 + 1e-9) + 1e-12)


def test_asymmetric_beats_symmetric_on_shifted_values():
    w = np.random.default_rng(0).uniform(0.0, 1.0, size=(16, 64))  # all positive: symmetric wastes half its codes
    errors = {}
    for symmetric in (True, False):
        q, scale, zero = quantize_groupwise(w, 8, 64, symmetric)
        errors[symmetric] = np.abs(dequantize_groupwise(q, scale, zero) - w).mean()
    assert errors[False] < 0.6 * errors[True]


def test_per_channel_is_groupwise_with_one_group_per_row():
    w = np.random.default_rng(1).normal(size=(6, 20)).astype(np.float32)
    q, scale = quantize_per_channel(w)
    q2, scale2, zero2 = quantize_groupwise(w, 8, 20, True)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(scale, scale2[:, 0])
    assert not zero2.any()


def test_per_tensor_uses_one_scale():
    x = np.random.default_rng(2).normal(size=(3, 4, 5))
    q, scale, zero = reference("quantization.quantize_per_tensor")(x, 8, True)
    assert q.shape == x.shape and zero == 0
    assert scale == pytest.approx(np.abs(x).max() / 127, rel=1e-12)


def test_an_outlier_costs_per_tensor_precision_but_not_per_channel():
    w = np.random.default_rng(3).normal(size=(8, 64)) * 0.02
    w[0, 0] = 5.0  # one outlier in row 0
    q, scale, _ = reference("quantization.quantize_per_tensor")(w, 8, True)
    per_tensor = np.abs(q * scale - w)[1:].mean()
    qc, sc = quantize_per_channel(w)
    per_channel = np.abs(dequantize_per_channel(qc, sc) - w)[1:].mean()
    assert per_channel < per_tensor / 10  # the other rows keep their own small scale


def test_group_size_not_dividing_the_columns_is_a_clear_error():
    with pytest.raises(ValueError, match=r"group_size 48 does not divide the 64 columns"):
        quantize_groupwise(np.zeros((2, 64)), 4, 48)
    with pytest.raises(ValueError, match="bits"):
        quantize_groupwise(np.zeros((2, 64)), 9, 32)
    with pytest.raises(ValueError, match="NaN"):
        quantize_per_channel(np.array([[np.nan, 1.0]]))


@settings(deadline=None, max_examples=30)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=2), half=st.integers(0, 6), seed=st.integers(0, 99))
def test_int4_round_trip_any_shape(shape, half, seed):
    q = np.random.default_rng(seed).integers(-8, 8, size=(*shape, 2 * half)).astype(np.int8)
    np.testing.assert_array_equal(unpack_int4(pack_int4(q)), q)


# -- PyTorch counterparts -------------------------------------------------------------------------------------------

def test_unpack_int4_torch_equals_numpy_for_every_byte():
    packed = np.arange(256, dtype=np.uint8).reshape(4, 64)
    got = Q.unpack_int4_torch(torch.from_numpy(packed))
    assert got.dtype == torch.int8
    np.testing.assert_array_equal(got.numpy(), unpack_int4(packed))


@pytest.mark.parametrize("bits, group", [(8, None), (4, 8), (4, 16)])
def test_quantized_tensor_dequantizes_like_numpy(bits, group):
    w = torch.randn(12, 32, generator=torch.Generator().manual_seed(0))
    qt = Q.QuantizedTensor(w, bits, group)
    if bits == 8:
        q, scale = quantize_per_channel(w.numpy())
        expected = dequantize_per_channel(q, scale)
    else:
        q, scale, zero = quantize_groupwise(w.numpy(), 4, group, True)
        expected = dequantize_groupwise(q, scale.astype(np.float16).astype(np.float32), zero)
    np.testing.assert_allclose(qt.dequantize().numpy(), expected, rtol=1.3e-6, atol=1e-7)  # float32 products
    rows = torch.tensor([[3, 0], [11, 3]])
    np.testing.assert_array_equal(qt.dequantize(rows).numpy(), qt.dequantize().numpy()[rows.numpy()])


def test_int8_linear_forward_is_quantized_matmul():
    linear = torch.nn.Linear(32, 12)
    x = torch.randn(2, 3, 32)
    layer = Q.QuantizedLinear(Q.QuantizedTensor(linear.weight, 8), linear.bias)
    expected = quantized_matmul(x.numpy(), layer.weight.codes.numpy(), layer.weight.scale[:, 0].numpy(),
                                linear.bias.detach().numpy())
    with torch.no_grad():
        np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1.3e-6, atol=1e-5)  # float32 defaults


# -- quantized models -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, atol", [("fp32", 0.0), ("int8", 0.02), ("int8-kernel", 0.05), ("int4-g8", 0.3)])
def test_quantized_model_logits_stay_close(scheme, atol):
    model = tiny_gpt()
    idx = torch.randint(0, TINY.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    new = Q.quantize_model(model, scheme)
    with torch.no_grad():
        ref, got = model(idx), new(idx)
    assert got.shape == ref.shape
    # Random GPT-2-initialised weights give logits of about 0.5; the tolerance grows as the bits shrink.
    assert (got - ref).abs().max().item() <= atol
    assert new is not model and all(p.dtype == torch.float32 for p in model.parameters())


def test_quantized_model_generates_with_the_cache():
    from llmcourse.generate import generate

    new = Q.quantize_model(tiny_gpt(), "int4-g16")
    prompt = torch.tensor([1, 2, 3])
    assert torch.equal(generate(new, prompt, 6, temperature=0.0), generate(new, prompt, 6, temperature=0.0,
                                                                            use_cache=False))


def test_weight_bytes_counts_the_tied_head_once_and_shrinks():
    model = tiny_gpt()
    full = Q.weight_bytes(model)
    assert full == 4 * model.num_parameters()
    ratios = {s: Q.weight_bytes(Q.quantize_model(model, s)) / full for s in ("int8", "int8-kernel", "int4-g16")}
    assert 0.25 < ratios["int8"] < 0.35  # 1 byte per weight, LayerNorms, biases and scales stay float32
    assert ratios["int4-g16"] < ratios["int8"] < ratios["int8-kernel"]  # the kernel keeps its own head copy


def test_bytes_read_per_step_skip_the_embedding_tables_unless_the_head_reads_them():
    model = tiny_gpt()
    wte, wpe = (4 * e.weight.numel() for e in (model.transformer.wte, model.transformer.wpe))
    assert Q.bytes_read_per_step(model) == Q.weight_bytes(model) - wpe  # the tied head reads the token table
    int8 = Q.quantize_model(model, "int8")  # still tied: one int8 table, read whole by the head
    assert Q.bytes_read_per_step(int8) == Q.weight_bytes(int8) - Q.weight_bytes(int8.transformer.wpe)
    kernel = Q.quantize_model(model, "int8-kernel")  # the kernel's head has its own copy: both tables skipped
    tables = Q.weight_bytes(kernel.transformer.wte) + Q.weight_bytes(kernel.transformer.wpe)
    assert Q.bytes_read_per_step(kernel) == Q.weight_bytes(kernel) - tables
    assert 0.25 < Q.bytes_read_per_step(kernel) / Q.bytes_read_per_step(model) < 0.35


# -- int4 with searched scales ("-mse") ------------------------------------------------------------------------

@settings(deadline=None, max_examples=30)
@given(rows=st.integers(1, 6), groups=st.integers(1, 4), seed=st.integers(0, 2 ** 16), spread=st.floats(0.1, 100.0))
def test_searched_int4_scales_never_do_worse_than_absmax_and_use_all_16_codes(rows, groups, seed, spread):
    w = torch.from_numpy(np.random.default_rng(seed).standard_t(3, size=(rows, groups * 16)) * spread).float()
    codes, scale = Q.search_int4_scales(w, 16)
    assert codes.dtype == torch.int8 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    assert torch.equal(scale, scale.half().float()), "the scales are exactly what float16 stores"
    searched = ((Q.dequantize_groupwise_torch(codes, scale) - w) ** 2).unflatten(-1, (groups, 16)).sum(-1)
    # The ratio 1.00 is among the candidates: the full-range 16-code scale; the search can only lower its error.
    full_codes, full_scale = Q.search_int4_scales(w, 16, ratios=(1.0,))
    full = ((Q.dequantize_groupwise_torch(full_codes, full_scale) - w) ** 2).unflatten(-1, (groups, 16)).sum(-1)
    assert (searched <= full * (1 + 1e-6)).all()
    # At ratio 1.00 each group's largest-magnitude weight lands on code -8: the 16th code is used.
    grouped_w, grouped_codes = w.unflatten(-1, (groups, 16)), full_codes.unflatten(-1, (groups, 16))
    at_max = grouped_codes.gather(-1, grouped_w.abs().argmax(-1, keepdim=True))
    assert (at_max == -8).all()


def test_the_search_picks_the_ratio_of_least_error_per_group():
    w = torch.tensor([[1.0, 0.9, 0.8, -0.1] * 2 + [10.0, 0.5, 0.4, 0.3] * 2])  # a group without, one with an outlier
    errors = Q.int4_clip_errors(w, 8)  # (ratios, 1, 2)
    codes, scale = Q.search_int4_scales(w, 8)
    for g in range(2):
        best = min(range(len(Q.CLIP_RATIOS)), key=lambda i: (errors[i, 0, g].item(), -Q.CLIP_RATIOS[i]))
        expected = (torch.tensor(Q.CLIP_RATIOS[best]) * w[0, 8 * g:8 * g + 8].abs().max() / -8).half().float()
        # the sign follows the largest-magnitude weight (positive here), so the scale is negative
        assert scale[0, g].item() == pytest.approx(expected.item(), rel=0, abs=0)


def test_int4_mse_halves_the_perplexity_cost_of_plain_int4_on_the_shipped_model():
    from llmcourse.pretrained import load_tiny_gpt
    from llmcourse.train import evaluate, held_out_text

    model, tok = load_tiny_gpt("cpu")
    ids = tok.encode(held_out_text())
    base, plain, searched = (evaluate(m, ids).perplexity for m in (model, Q.quantize_model(model, "int4-g32"),
                                                                   Q.quantize_model(model, "int4-g32-mse")))
    assert searched / base - 1 < 0.05, f"int4-g32-mse costs {100 * (searched / base - 1):.2f}% perplexity"
    assert searched < plain
    assert Q.weight_bytes(Q.quantize_model(model, "int4-g32-mse")) == Q.weight_bytes(Q.quantize_model(model,
                                                                                                      "int4-g32"))


@pytest.mark.parametrize("scheme", ["int8", "int4-g32", "int4-g128-mse"])
def test_the_c_kernels_decode_the_shipped_model_to_the_same_tokens(scheme):
    """The course's C kernels compute the dequantized matmul in another order of additions: the same greedy tokens
    on the shipped model, logits within float32 rounding of the reference kernel's, prompt and decoding alike."""
    from llmcourse import native
    from llmcourse.generate import generate
    from llmcourse.pretrained import load_tiny_gpt

    if not native.available():
        pytest.skip(f"no C kernels here: {native.unavailable_reason()}")
    model, tok = load_tiny_gpt("cpu")
    reference, fast = (Q.quantize_model(model, scheme, kernel=k) for k in ("dequantize", "native"))
    assert {m.kernel for m in fast.modules() if isinstance(m, Q.QuantizedLinear)} == {"native"}
    for text in ("The model", "Attention is", "A cache of keys"):
        prompt = torch.tensor(tok.encode(text))
        with torch.no_grad():
            torch.testing.assert_close(fast(prompt[None, :1]), reference(prompt[None, :1]), rtol=1e-4, atol=1e-4)
        assert generate(fast, prompt, 24, temperature=0).tolist() == generate(reference, prompt, 24,
                                                                              temperature=0).tolist()


def test_auto_picks_each_layers_kernel_from_the_measured_choice(monkeypatch):
    from llmcourse import kernels, native

    model = tiny_gpt()
    if not native.available():
        assert {m.kernel for m in Q.quantize_model(model, "int8").modules()
                if isinstance(m, Q.QuantizedLinear)} == {"dequantize"}
        return
    seen = []

    def fake_choose(m, rows, *, weights):  # every shape "measured": native for the head, dequantize elsewhere
        seen.append(weights)
        return {(c.in_features, c.out_features): kernels.KernelChoice(
            c.in_features, c.out_features, rows, {}, "native" if c.out_features == TINY.vocab_size else "dequantize",
            weights) for c in m.modules() if isinstance(c, torch.nn.Linear)}

    monkeypatch.setattr(Q, "choose_linear_kernels", fake_choose)
    quantized = Q.quantize_model(model, "int4-g16-mse")
    assert seen == ["int4-g16"], "an -mse scheme runs its plain twin's kernel"
    assert quantized.lm_head.kernel == "native"
    assert {quantized.transformer.h[0].mlp.c_fc.kernel} == {"dequantize"}
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        Q.quantize_model(model, "int8", kernel="fast")


@pytest.mark.parametrize("scheme, bound", [("int8", 0.01), ("int4-g32-mse", 0.08)])
def test_the_shipped_llama_quantizes_like_the_gpt(scheme, bound):
    """Every embedding and Linear of a Llama (untied head, grouped-query attention) quantized; the perplexity
    change within the GPT's bounds; cached decoding unchanged."""
    from llmcourse.generate import generate
    from llmcourse.pretrained import load_tiny_llama
    from llmcourse.train import evaluate, held_out_text

    model, tok = load_tiny_llama("cpu")
    quantized = Q.quantize_model(model, scheme)
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in quantized.modules())
    assert Q.bytes_read_per_step(quantized) < Q.bytes_read_per_step(model) / (3.5 if scheme == "int8" else 6)
    ids = tok.encode(held_out_text())[:4096]
    change = evaluate(quantized, ids).perplexity / evaluate(model, ids).perplexity - 1
    assert abs(change) < bound, f"{scheme} changes the Llama's perplexity by {100 * change:+.2f}%"
    prompt = torch.tensor(tok.encode("The model"))
    assert torch.equal(generate(quantized, prompt, 12, temperature=0),
                       generate(quantized, prompt, 12, temperature=0, use_cache=False))


def test_bad_schemes_are_clear_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        Q.quantize_model(model, "int3")
    with pytest.raises(ValueError, match="group size 12 does not divide every layer's inputs"):
        Q.quantize_model(model, "int4-g12")
    with pytest.raises(ValueError, match="even"):
        Q.quantize_model(model, "int4-g1")


def test_quantization_report_rows():
    model = tiny_gpt()
    ids = torch.randint(0, TINY.vocab_size, (200,), generator=torch.Generator().manual_seed(2))
    rows = Q.quantization_report(model, ids, ("fp32", "int8", "int4-g16"), new_tokens=3, repeats=1)
    assert [r["scheme"] for r in rows] == ["fp32", "int8", "int4-g16"]
    assert all(set(r) == {"scheme", "weight_bytes", "bytes_per_step", "perplexity", "tok_s"} for r in rows)
    assert all(r["tok_s"] > 0 and r["perplexity"] > 1 for r in rows)
    assert rows[1]["weight_bytes"] < rows[0]["weight_bytes"]
    assert all(r["bytes_per_step"] == Q.bytes_read_per_step(Q.quantize_model(model, r["scheme"])) for r in rows)
    assert Q.quantization_report(model, None, ("fp32",), new_tokens=2, repeats=1)[0]["perplexity"] is None
    unmeasured = Q.quantization_report(model, ids, ("fp32",), measure_speed=False)[0]
    assert unmeasured["tok_s"] is None and unmeasured["perplexity"] == rows[0]["perplexity"]
    with pytest.raises(ValueError, match="tokenizer"):
        Q.quantization_report(model, "some text", ("fp32",))


# -- the explorer -----------------------------------------------------------------------------------------------

def test_explorer_data_and_callback():
    from llmcourse.widgets.quantization import N_SAMPLE, QuantizationExplorer, quantization_data

    w = np.random.default_rng(0).normal(size=(8, 128)).astype(np.float32)
    explorer = QuantizationExplorer(w)
    table = explorer.table
    assert table["groups"] == [8, 16, 32, 64, 128]
    errors = [quantization_data(table, b, 32)["relative_rms_error"] for b in table["bits"]]
    assert errors == sorted(errors, reverse=True)  # more bits, less error
    data = quantization_data(table, 8, 128)
    assert data["quantized"].shape == (N_SAMPLE,) and data["compression"] == pytest.approx(4 / (1 + 2 / 128))
    explorer.bits.value, explorer.group.value = 2, 8  # what a click does
    assert explorer.data["bits"] == 2 and explorer.data["group_size"] == 8 and explorer.image.value[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no precomputed result"):
        quantization_data(table, 7, 32)
