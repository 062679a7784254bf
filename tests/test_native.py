"""The course's C kernels (llmcourse/native.py, llmcourse/csrc/linear.c): the same products as PyTorch's, in every
build (AVX-512, AVX2, plain C), with any thread count, and one-line errors for inputs they do not take."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcourse import native
from llmcourse.kernels import NativeLinear
from llmcourse.quantization import (dequantize_groupwise_torch, pack_int4_torch, quantize_groupwise_torch,
                                   quantized_linear)

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")

# N odd (the middle row of the two streams alone, N = 1 included), and K beyond the VNNI path's 4096-column chunks
SHAPES = [(1, 768, 2304), (3, 768, 96), (1, 3072, 64), (2, 70, 30), (8, 96, 50), (1, 256, 16), (1, 768, 51),
          (2, 64, 1), (3, 128, 33), (1, 5000, 9)]


def _flags_of_this_cpu() -> list[tuple[str, ...]]:
    """The builds this CPU can run: plain C always, AVX2 and AVX-512 when /proc/cpuinfo lists them."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    builds = [("-O3", "-fPIC", "-shared")]
    if " avx2 " in flags and " fma " in flags and " f16c " in flags:
        builds.append(("-O3", "-fPIC", "-shared", "-mavx2", "-mfma", "-mf16c"))
    if " avx512f " in flags:
        builds.append(("-O3", "-fPIC", "-shared", "-mavx512f", "-mavx2", "-mfma", "-mf16c"))
        if " avx512bw " in flags and " avx512_vnni " in flags:  # the int8 path on 16-bit integer dot products
            builds.append(("-O3", "-fPIC", "-shared", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mavx2", "-mfma",
                           "-mf16c"))
    return builds


@pytest.fixture(scope="module", params=range(4), ids=["plain", "avx2", "avx512", "avx512-vnni"])
def build(request, tmp_path_factory):
    """The kernels compiled for one instruction set (skipped where this CPU lacks it), in place of the cached one."""
    builds = _flags_of_this_cpu()
    if request.param >= len(builds):
        pytest.skip("this CPU lacks the instruction set")
    target = tmp_path_factory.mktemp("native") / "linear.so"
    native.build(target, builds[request.param])
    lib = native.declare(ctypes.CDLL(str(target)))
    assert lib.vector_width() == (1, 8, 16, 16)[request.param]
    patch = pytest.MonkeyPatch()
    patch.setattr(native, "_load", lambda: (lib, None))
    yield lib
    patch.undo()


def test_the_kernels_are_built_and_loaded_here():
    assert native.available(), native.unavailable_reason()
    assert native.vector_isa() in ("AVX-512", "AVX2", "plain C")


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_float32_kernel_equals_torch(build, M, K, N):
    g = torch.Generator().manual_seed(K + N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    torch.testing.assert_close(native.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(native.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_kernel_equals_the_dequantized_matmul(build, M, K, N):
    g = torch.Generator().manual_seed(K * N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    x[0, : K // 3] *= 1000.0  # a wide range of activations: the 16-bit parts of the VNNI path must keep the small ones
    codes, scale = quantize_groupwise_torch(w, 8, K)
    expected = F.linear(x, dequantize_groupwise_torch(codes, scale), b)
    error = (native.linear_int8(x, codes, scale.view(-1), b) - expected).abs().max() / expected.abs().max()
    assert error < 1e-5, f"largest difference {error:.1e} of the largest output"  # float32 sums in another order


@pytest.mark.parametrize("group", [2, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int4_kernel_equals_the_dequantized_matmul(build, M, K, N, group):
    if K % group:
        pytest.skip("the group size does not divide K")
    g = torch.Generator().manual_seed(K + group)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    codes, scale = quantize_groupwise_torch(w, 4, group)
    codes[0, :8] = torch.tensor([-8, -7, -1, 0, 1, 6, 7, -8], dtype=torch.int8)[: min(8, K)]  # every sign and edge
    scale = scale.half()
    expected = F.linear(x, dequantize_groupwise_torch(codes, scale.float()))
    out = native.linear_int4(x, pack_int4_torch(codes), scale, group)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_leading_dimensions_and_thread_counts_change_nothing():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 256, generator=g), torch.randn(40, 256, generator=g)
    codes, scale = quantize_groupwise_torch(w, 4, 32)
    packed, scale = pack_int4_torch(codes), scale.half()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.linear_int4(x, packed, scale, 32)
        torch.set_num_threads(2)
        two = native.linear_int4(x, packed, scale, 32)
    finally:
        torch.set_num_threads(threads)
    assert one.shape == (2, 3, 40)
    torch.testing.assert_close(one, two, rtol=0, atol=0)  # each output is one thread's sum, whatever the split


def test_one_openmp_runtime_in_the_process():
    """The library must use PyTorch's libgomp, not load a second OpenMP runtime whose threads would fight it."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux's /proc")
    assert native.available()
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libomp" in line or "libiomp" in line}
    assert len(runtimes) <= 1, runtimes


def test_bad_inputs_get_one_line_errors():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="float32 CPU inputs with 16 features"):
        native.linear(torch.randn(2, 15), w)
    with pytest.raises(ValueError, match="float32 CPU inputs"):
        native.linear(torch.randn(2, 16, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="contiguous float32"):
        native.linear(torch.randn(2, 16), w.t())
    with pytest.raises(ValueError, match="int8"):
        native.linear_int8(torch.randn(1, 16), w, torch.ones(8))
    with pytest.raises(ValueError, match="one per row"):
        native.linear_int8(torch.randn(1, 16), w.to(torch.int8), torch.ones(7))
    with pytest.raises(ValueError, match="group_size"):
        native.linear_int4(torch.randn(1, 16), torch.zeros(8, 8, dtype=torch.uint8), torch.ones(8, 3).half(), 5)
    with pytest.raises(ValueError, match="bias"):
        native.linear(torch.randn(1, 16), w, torch.ones(7))


def test_turned_off_by_the_environment_with_a_reason():
    env = {**os.environ, native.NATIVE_ENV: "0"}
    code = "from llmcourse import native; print(native.available(), native.unavailable_reason())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"False turned off ({native.NATIVE_ENV}=0)"


def test_a_nan_in_the_input_comes_out_as_nan_not_garbage():
    """The VNNI int8 path turns x into integers; a NaN or infinity must not become one."""
    w = torch.randn(8, 64)
    codes, scale = quantize_groupwise_torch(w, 8, 64)
    x = torch.randn(2, 64)
    x[1, 5] = float("nan")
    out = native.linear_int8(x, codes, scale.view(-1))
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()


@pytest.mark.parametrize("weights", ["int8", "int4-g32", "fp32"])
def test_layers_prepare_their_weights_once_and_again_when_they_change(weights):
    """A layer checks its weights for the C kernel once (`native.Prepared`); a copy of the model must use its own
    tensors, and a layer whose tensors were replaced must use the new ones, never stale memory."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 16, bias=False)
    layer = NativeLinear(linear) if weights == "fp32" else quantized_linear(linear, weights, kernel="native")
    x = torch.randn(1, 64)
    first = layer(x)  # prepared here
    twin = copy.deepcopy(layer)
    if weights == "fp32":
        layer.weight.data = -layer.weight.data  # new memory behind the same parameter
        expected = F.linear(x, layer.weight)
    else:
        layer.weight.codes = (-layer.weight.codes if weights == "int8"  # a new buffer
                              else pack_int4_torch(quantize_groupwise_torch(-linear.weight.detach(), 4, 32)[0]))
        expected = copy.deepcopy(layer)
        expected.kernel = "dequantize"
        expected = expected(x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), -first, rtol=0.1, atol=0.1)  # the weights did change
    torch.testing.assert_close(twin(x), first, rtol=0, atol=0)


@pytest.mark.parametrize("H,D,position,T", [(12, 64, 0, 1), (12, 64, 37, 1), (4, 24, 9, 3), (1, 5, 3, 2),
                                            (3, 80, 200, 1), (12, 64, 0, 8), (2, 16, 5, 8)])
def test_attention_of_new_tokens_over_the_cache_equals_torch(build, H, D, position, T):
    """`attend_cached` writes the new keys and values into the caches and attends causally over them."""
    g = torch.Generator().manual_seed(H * D + position + T)
    max_len = position + T + 2
    keys, values = torch.randn(1, H, max_len, D, generator=g), torch.randn(1, H, max_len, D, generator=g)
    qkv = torch.randn(1, T, 3 * H * D, generator=g)
    q, k, v = qkv.view(T, 3, H, D).permute(1, 2, 0, 3)  # 3 x (H, T, D)
    out = native.attend_cached(qkv, keys, values, position)
    torch.testing.assert_close(keys[0, :, position:position + T], k, rtol=0, atol=0)
    torch.testing.assert_close(values[0, :, position:position + T], v, rtol=0, atol=0)
    S = position + T
    causal = torch.arange(S)[None, :] <= torch.arange(position, S)[:, None]  # (T, S): token t sees 0..position + t
    expected = F.scaled_dot_product_attention(q[None], keys[:, :, :S], values[:, :, :S], attn_mask=causal)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(1, T, H * D), rtol=1e-5, atol=1e-6)


def test_attention_over_the_cache_refuses_what_it_cannot_take():
    keys = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="room for the T new positions"):
        native.attend_cached(torch.zeros(1, 2, 48), keys, keys.clone(), 3)
    with pytest.raises(ValueError, match="qkv \\(1, T, 3 x 2 x 8\\)"):
        native.attend_cached(torch.zeros(1, 1, 47), keys, keys.clone(), 0)
    with pytest.raises(ValueError, match="float32"):
        native.attend_cached(torch.zeros(1, 1, 48), keys.double(), keys.double(), 0)


def _block_and_cache(C: int, H: int, F_: int, bias: bool, seed: int, weights: str, max_len: int):
    """A GPT-2 Block (hidden width F_) with random weights, its layers on the C kernels in the format `weights`, and a
    random KV-cache (1, H, max_len, C / H) pair."""
    from llmcourse.gpt import Block, GPTConfig

    torch.manual_seed(seed)
    block = Block(GPTConfig(vocab_size=8, block_size=max_len, n_layer=1, n_head=H, n_embd=C, bias=bias)).eval()
    if F_ != 4 * C:
        block.mlp.c_fc, block.mlp.c_proj = nn.Linear(C, F_, bias=bias), nn.Linear(F_, C, bias=bias)
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)  # large enough for GELU's tails and a sharp softmax
    layers = [block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj]
    prepared = tuple(native.prepare(m.weight.data, None if m.bias is None else m.bias.data) if weights == "fp32"
                     else quantized_linear(m, weights, kernel="native").prepared() for m in layers)
    reference = [m if weights == "fp32" else quantized_linear(m, weights, kernel="dequantize") for m in layers]
    keys, values = (torch.randn(1, H, max_len, C // H) for _ in range(2))
    return block, prepared, reference, keys, values


@pytest.mark.parametrize("weights", ["fp32", "int8", "int4-g32"])
@pytest.mark.parametrize("C,H,F_,T,position,bias", [(64, 4, 256, 1, 0, True), (64, 4, 256, 1, 20, False),
                                                    (96, 3, 160, 8, 5, True), (128, 2, 96, 3, 9, True)])
def test_a_whole_block_step_equals_the_block_in_pytorch(build, weights, C, H, F_, T, position, bias):
    """`PreparedBlocks` (gpt_blocks_step in C) of one block: LayerNorm, the four products (any format), attention over the cache, GELU and both residual
    connections in one call, against the same Block computed by PyTorch with the same (dequantized) weights."""
    block, prepared, reference, keys, values = _block_and_cache(C, H, F_, bias, C + T + position, weights,
                                                                position + T + 1)
    x = torch.randn(1, T, C) * 2
    norms = ((block.ln_1.weight, block.ln_1.bias), (block.ln_2.weight, block.ln_2.bias))
    k0, v0 = keys.clone(), values.clone()
    out = native.PreparedBlocks([(norms, block.ln_1.eps, prepared, H)], [keys], [values])(x, position)
    with torch.no_grad():  # the block by hand, on PyTorch's ops: ln, qkv, attention over the cache, gelu
        qkv = reference[0](block.ln_1(x)).view(T, 3, H, C // H).permute(1, 2, 0, 3)  # 3 x (H, T, D)
        k0[0, :, position:position + T], v0[0, :, position:position + T] = qkv[1], qkv[2]
        S = position + T
        causal = torch.arange(S)[None, :] <= torch.arange(position, S)[:, None]
        att = F.scaled_dot_product_attention(qkv[0][None], k0[:, :, :S], v0[:, :, :S], attn_mask=causal)
        h = x + reference[1](att.transpose(1, 2).reshape(1, T, C))
        expected = h + reference[3](F.gelu(reference[2](block.ln_2(h)), approximate="tanh"))
    torch.testing.assert_close(keys, k0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, v0, rtol=1e-5, atol=1e-5)
    assert float((out - expected).abs().max() / expected.abs().max()) < 1e-5


def test_a_whole_block_step_refuses_what_it_cannot_take():
    block, prepared, _, keys, values = _block_and_cache(32, 2, 128, True, 0, "fp32", 12)
    norms = ((block.ln_1.weight, block.ln_1.bias), (block.ln_2.weight, block.ln_2.bias))
    step = native.PreparedBlocks([(norms, 1e-5, prepared, 2)], [keys], [values])
    with pytest.raises(ValueError, match="T <= 8"):
        step(torch.zeros(1, 9, 32), 0)
    with pytest.raises(ValueError, match="T more positions in caches of 12"):
        step(torch.zeros(1, 2, 32), 11)
    with pytest.raises(ValueError, match="H D = 32"):
        native.PreparedBlocks([(norms, 1e-5, prepared, 2)], [keys[:, :1]], [values[:, :1]])
    with pytest.raises(ValueError, match="one pair of contiguous"):
        native.PreparedBlocks([(norms, 1e-5, prepared, 2)] * 2, [keys], [values])
    with pytest.raises(ValueError, match="linears of shapes"):
        native.PreparedBlocks([(norms, 1e-5, prepared[::-1], 2)], [keys], [values])
    with pytest.raises(ValueError, match="LayerNorms of C float32"):
        native.PreparedBlocks([(((block.ln_1.weight.double(), None),) * 2, 1e-5, prepared, 2)], [keys], [values])
