"""Kernels chosen by measurement (llmcourse.kernels): weights prepacked for oneDNN, the course's C kernels, PyTorch's
weight-only kernels; every candidate accepted computes the same function as the plain model."""

import pytest
import torch

from llmcourse import bench, kernels, native, runtime
from llmcourse.generate import generate
from llmcourse.gpt import GPTConfig, KVCache, random_gpt
from llmcourse.quantization import bytes_read_per_step, weight_bytes
from llmcourse.timing import Measurement

pytestmark = pytest.mark.skipif(not kernels.prepack_available(), reason="this PyTorch has no oneDNN on the CPU")

CONFIG = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def models():
    plain = random_gpt(CONFIG)
    return plain, kernels.prepack_linears(plain)


def test_every_linear_is_prepacked_and_the_original_is_untouched(models):
    plain, packed = models
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    assert sum(isinstance(m, kernels.PrepackedLinear) for m in packed.modules()) == 4 * CONFIG.n_layer + 1  # + head
    assert sum(isinstance(m, torch.nn.Linear) for m in plain.modules()) == 4 * CONFIG.n_layer + 1


@torch.no_grad()
def test_same_logits_as_the_plain_model(models):
    plain, packed = models
    ids = torch.randint(0, CONFIG.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    # float32 with the additions of each dot product in another order: PyTorch's own float32 tolerances.
    torch.testing.assert_close(packed(ids), plain(ids), rtol=1.3e-6, atol=1e-5)


def test_same_tokens_with_and_without_the_cache(models):
    plain, packed = models
    prompt = torch.tensor([[5, 17, 3]])
    reference = generate(plain, prompt, 20, temperature=0.0)
    assert torch.equal(generate(packed, prompt, 20, temperature=0.0), reference)
    assert torch.equal(generate(packed, prompt, 20, temperature=0.0, use_cache=False), reference)


def test_packed_weights_are_counted(models):
    plain, packed = models
    head = CONFIG.vocab_size * CONFIG.n_embd * 4  # the tied head gets its own packed copy of the token table
    assert weight_bytes(packed) == weight_bytes(plain) + head


def test_wrong_width_is_a_clear_error(models):
    _, packed = models
    layer = packed.transformer.h[0].mlp.c_fc
    with pytest.raises(ValueError, match="expected inputs with 32 features"):
        layer(torch.zeros(2, 31))


def test_refuses_where_onednn_is_missing(models, monkeypatch):
    monkeypatch.setattr(kernels, "prepack_available", lambda device=None: False)
    with pytest.raises(RuntimeError, match="use the model as it is"):
        kernels.prepack_linears(models[0])


def test_the_roofline_counts_the_same_bytes_for_a_prepacked_model(models):
    plain, packed = models
    assert bytes_read_per_step(packed) == bytes_read_per_step(plain)
    if native.available():  # the C kernel's head shares the token table's memory (another Parameter): read whole
        assert bytes_read_per_step(kernels.fuse_blocks(plain)) == bytes_read_per_step(plain)
        chosen = {shape: kernels.KernelChoice(*shape, 1, {}, "native") for shape in
                  {(m.in_features, m.out_features) for m in plain.modules() if isinstance(m, torch.nn.Linear)}}
        assert bytes_read_per_step(kernels.tuned_linears(plain, chosen)) == bytes_read_per_step(plain)
    assert bench.roofline_tok_s(packed, 4, 10.0, 100.0) == bench.roofline_tok_s(plain, 4, 10.0, 100.0)


# -- kernels chosen by measurement -------------------------------------------------------------------------------

def test_every_candidate_kernel_computes_the_same_linear():
    weight, bias = torch.randn(48, 32) * 0.1, torch.randn(48)
    x = torch.randn(5, 32)
    expected = torch.nn.functional.linear(x, weight, bias)
    candidates = kernels.linear_candidates(weight, bias)
    assert {"default", "native"} <= set(candidates) or not native.available()
    for name, kernel in candidates.items():
        torch.testing.assert_close(kernel(x), expected, rtol=1.3e-6, atol=1e-5, msg=f"kernel {name}")


@pytest.mark.parametrize("weights", ["int8", "int4-g32", "int4-g16-mse"])
def test_quantized_candidates_equal_the_dequantized_matmul_but_bfloat16_ones(weights):
    weight, bias = torch.randn(64, 128) * 0.1, torch.randn(64)
    candidates = kernels.linear_candidates(weight, bias, weights)
    assert next(iter(candidates)) == "dequantize", "the reference comes first"
    for rows in (1, 3, 12):  # 12 rows: past NATIVE_ROWS, the native layer hands the input to PyTorch's matmul
        x = torch.randn(rows, 128)
        reference = candidates["dequantize"](x)
        for name, kernel in candidates.items():
            error = kernels._relative_error(kernel(x), reference)
            if name == "torch-bf16":
                assert error > kernels.CLOSE, "bfloat16 activations change the result: never chosen"
            else:
                assert error <= kernels.CLOSE, f"{name}: {error:.2e}"


def test_a_kernel_outside_the_tolerance_is_never_chosen_however_fast(monkeypatch):
    def fake_interleaved(runs, repeats):  # torch-bf16 timed fastest, native second
        order = {"torch-bf16": 1.0, "native": 2.0, "dequantize": 3.0}
        return {name: Measurement((order[name],)) for name in runs}

    monkeypatch.setattr(kernels, "interleaved", fake_interleaved)
    monkeypatch.setattr(kernels, "STREAM_BYTES", 0)
    monkeypatch.setattr(kernels, "PRUNE", float("inf"))  # every candidate is timed in turns
    choice = kernels.time_linear_kernels(64, 48, weights="int8")
    assert choice.errors["torch-bf16"] > kernels.CLOSE >= choice.errors["native"]
    assert choice.chosen == "native" if native.available() else "dequantize"


def test_the_choice_is_the_fastest_timed_and_remembered_per_machine(tmp_path, monkeypatch, models):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    plain = models[0]
    first = kernels.choose_linear_kernels(plain)
    for choice in first.values():
        assert set(choice.seconds) == {"default", "prepacked"} | ({"native"} if native.available() else set())
        assert choice.chosen == min(choice.seconds, key=choice.seconds.get)
    calls = []
    monkeypatch.setattr(kernels, "time_linear_kernels", lambda *a, **k: calls.append(a) or first[a[:2]])
    assert kernels.choose_linear_kernels(plain) == first and not calls, "a remembered choice is not measured again"
    if native.available():
        monkeypatch.setattr(native, "build_id", lambda: "a-new-build")
        kernels.choose_linear_kernels(plain)
        assert len(calls) == len(first), "a choice measured with another build of the C kernels is measured again"
    (tmp_path / "kernels.json").write_text("{damaged")
    monkeypatch.undo()
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path))
    assert set(kernels.choose_linear_kernels(plain)) == set(first), "a damaged cache is measured again"


def test_a_model_on_its_chosen_kernels_computes_the_same_function(models):
    plain = models[0]
    names = ("default", "prepacked", "native") if native.available() else ("default", "prepacked")
    choices = {shape: kernels.KernelChoice(*shape, 1, {"default": 2.0, "prepacked": 1.0}, names[i % len(names)])
               for i, shape in enumerate(sorted({(m.in_features, m.out_features) for m in plain.modules()
                                                 if isinstance(m, torch.nn.Linear)}))}
    tuned = kernels.tuned_linears(plain, choices)
    kinds = {type(m).__name__ for m in tuned.modules()}
    assert {"PrepackedLinear", "Linear"} <= kinds, "a mix of kernels, as chosen"
    assert "NativeLinear" in kinds or not native.available()
    ids = torch.randint(0, plain.config.vocab_size, (2, 9))
    torch.testing.assert_close(tuned(ids), plain(ids), rtol=1e-5, atol=1e-5)


def test_the_c_kernel_layers_share_the_models_weights():
    """A tied output head on the C kernel keeps reading the token table: no second copy in memory, so the weight
    bytes (and the quantization table's "x fp32" column) are the plain model's."""
    if not native.available():
        pytest.skip(f"the C kernels are not available: {native.unavailable_reason()}")
    plain = random_gpt(CONFIG)
    choices = {(m.in_features, m.out_features): kernels.KernelChoice(m.in_features, m.out_features, 1, {}, "native")
               for m in plain.modules() if isinstance(m, torch.nn.Linear)}
    tuned = kernels.tuned_linears(plain, choices)
    assert tuned.lm_head.weight.data_ptr() == tuned.transformer.wte.weight.data_ptr()
    assert weight_bytes(tuned) == weight_bytes(plain)


@pytest.mark.skipif(not native.available(), reason="the C kernels are not built here")
@torch.no_grad()
def test_fused_blocks_compute_the_same_function_and_fall_back_where_they_do_not_apply():
    """`fuse_blocks`: a decoding step of each block in one C call (batch 1, <= 8 new tokens, a KVCache, no mask); the
    same logits as the plain model in float32's tolerance, whatever the path, and the same parameters by name."""
    plain = random_gpt(CONFIG, seed=3)
    fused = kernels.fuse_blocks(plain)
    assert isinstance(fused.transformer.h, kernels.FusedBlocks)
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert all(type(m) is torch.nn.Linear for b in plain.transformer.h for m in b.modules()
               if isinstance(m, (torch.nn.Linear, kernels.NativeLinear)))  # the original is untouched
    ids = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fused(ids), plain(ids), rtol=1.3e-6, atol=1e-5)  # no cache, batch 2: PyTorch's path
    mine, theirs = KVCache(CONFIG, 1), KVCache(CONFIG, 1)
    for start, end in ((0, 5), (5, 6), (6, 14), (14, 15)):  # prompt <= 8: fused; 8 tokens at once: fused; then steps
        torch.testing.assert_close(fused(ids[:1, start:end], cache=mine), plain(ids[:1, start:end], cache=theirs),
                                   rtol=1.3e-6, atol=1e-5)
    torch.testing.assert_close(mine.keys[1][:, :, :15], theirs.keys[1][:, :, :15], rtol=1.3e-6, atol=1e-5)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, :3] = False  # left padding: the mask path
    torch.testing.assert_close(fused(ids, attention_mask=mask), plain(ids, attention_mask=mask), rtol=1.3e-6,
                               atol=1e-5)
    prompt = ids[:1, :4]
    greedy = [generate(m, prompt, 20, temperature=0.0).tolist() for m in (fused, plain)]
    assert greedy[0] == greedy[1]


@pytest.mark.skipif(not native.available(), reason="the C kernels are not built here")
def test_quantized_models_on_the_c_kernels_have_fused_blocks_with_the_dequantized_function():
    from llmcourse.quantization import quantize_model

    plain = random_gpt(CONFIG, seed=4)
    prompt = torch.randint(0, CONFIG.vocab_size, (1, 3), generator=torch.Generator().manual_seed(5))
    for scheme in ("int8", "int4-g32"):
        on_c, reference = quantize_model(plain, scheme, kernel="native"), quantize_model(plain, scheme, "dequantize")
        assert isinstance(on_c.transformer.h, kernels.FusedBlocks)
        assert not isinstance(reference.transformer.h, kernels.FusedBlocks)
        with torch.no_grad():
            torch.testing.assert_close(on_c(prompt, cache=KVCache(CONFIG, 1)), reference(prompt), rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.skipif(not native.available(), reason="the C kernels are not built here")
def test_fused_blocks_refuse_layers_off_the_c_kernels():
    from llmcourse.quantization import quantize_model

    with pytest.raises(ValueError, match="kernel='native'"):
        kernels.fuse_blocks(quantize_model(random_gpt(CONFIG), "int8", kernel="dequantize"))
    fused = kernels.fuse_blocks(random_gpt(CONFIG))
    fused.transformer.h[1] = random_gpt(CONFIG).transformer.h[1]  # a plain block slipped in
    with pytest.raises(ValueError, match="use fuse_blocks"):
        fused(torch.zeros(1, 1, dtype=torch.long), cache=KVCache(CONFIG, 1))


@pytest.mark.skipif(not native.available(), reason="the C kernels are not built here")
@torch.no_grad()
def test_fused_blocks_read_their_current_weights_and_a_copy_its_own():
    """FusedBlocks check their weights for the C kernels at the first step of each KVCache; replaced tensors
    (`.data = ...`) are seen there, and a deep copy made after use never reads the original's memory."""
    import copy

    plain = random_gpt(CONFIG, seed=6)
    fused = kernels.fuse_blocks(plain)
    ids = torch.randint(0, CONFIG.vocab_size, (1, 4), generator=torch.Generator().manual_seed(7))
    before = fused(ids, cache=KVCache(CONFIG, 1))
    twin = copy.deepcopy(fused)
    for model in (plain, fused):
        model.transformer.h[1].mlp.c_fc.weight.data = -model.transformer.h[1].mlp.c_fc.weight.data.clone()
        model.transformer.h[0].ln_2.weight.data = model.transformer.h[0].ln_2.weight.data * 2
    torch.testing.assert_close(fused(ids, cache=KVCache(CONFIG, 1)), plain(ids), rtol=1.3e-6, atol=1e-5)
    torch.testing.assert_close(twin(ids, cache=KVCache(CONFIG, 1)), before, rtol=0, atol=0)
    assert not torch.allclose(before, plain(ids), atol=1e-3)  # the change did change the function
