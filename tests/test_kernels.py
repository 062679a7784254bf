"""Weights prepacked for oneDNN (llmcourse.kernels): the same function as the plain model, on a faster kernel."""

import pytest
import torch

from llmcourse import bench, kernels
from llmcourse.generate import generate
from llmcourse.gpt import GPTConfig, random_gpt
from llmcourse.quantization import bytes_read_per_step, weight_bytes

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
    assert bench.roofline_tok_s(packed, 4, 10.0, 100.0) == bench.roofline_tok_s(plain, 4, 10.0, 100.0)


# -- kernels chosen by measurement -------------------------------------------------------------------------------

def test_every_candidate_kernel_computes_the_same_linear():
    weight, bias = torch.randn(48, 32) * 0.1, torch.randn(48)
    x = torch.randn(5, 32)
    expected = torch.nn.functional.linear(x, weight, bias)
    for name, kernel in kernels.linear_candidates(weight, bias).items():
        torch.testing.assert_close(kernel(x), expected, rtol=1.3e-6, atol=1e-5, msg=f"kernel {name}")


def test_the_choice_is_the_fastest_timed_and_remembered_per_machine(tmp_path, monkeypatch, models):
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    plain = models[0]
    first = kernels.choose_linear_kernels(plain)
    for choice in first.values():
        assert set(choice.seconds) == {"default", "prepacked"}
        assert choice.chosen == min(choice.seconds, key=choice.seconds.get)
    calls = []
    monkeypatch.setattr(kernels, "time_linear_kernels", lambda *a, **k: calls.append(a))
    assert kernels.choose_linear_kernels(plain) == first and not calls, "a remembered choice is not measured again"
    (tmp_path / "kernels.json").write_text("{damaged")
    monkeypatch.undo()
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    assert set(kernels.choose_linear_kernels(plain)) == set(first), "a damaged cache is measured again"


def test_a_model_on_its_chosen_kernels_computes_the_same_function(models):
    plain = models[0]
    choices = {shape: kernels.KernelChoice(*shape, 1, {"default": 2.0, "prepacked": 1.0},
                                           "prepacked" if i % 2 else "default")
               for i, shape in enumerate(sorted({(m.in_features, m.out_features) for m in plain.modules()
                                                 if isinstance(m, torch.nn.Linear)}))}
    tuned = kernels.tuned_linears(plain, choices)
    kinds = {type(m).__name__ for m in tuned.modules()}
    assert {"PrepackedLinear", "Linear"} <= kinds, "a mix of kernels, as chosen"
    ids = torch.randint(0, plain.config.vocab_size, (2, 9))
    torch.testing.assert_close(tuned(ids), plain(ids), rtol=1e-5, atol=1e-5)
