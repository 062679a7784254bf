"""The PyTorch GPT (llmcourse.gpt), the NumPy GPT of notebook 04 against it, GPT-2 checkpoints, and model_stats."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.course.grading import assert_allclose, assert_equal_ids
from llmcourse.course.loader import reference
from llmcourse.gpt import GPT, GPTConfig, KVCache, gpt_skeleton, load_gpt2, random_gpt, to_gpt2_state_dict
from llmcourse.model_stats import (GPT2_SIZES, count_by_component, count_by_layer, formula_parameters,
                                   parameter_table, plot_by_layer, plot_component_shares)

TINY = GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16)
# float32 on both sides, different kernels and summation orders: PyTorch's own float32 tolerances (COURSE.md 4).
RTOL32, ATOL32 = 1.3e-6, 1e-5


def _model(config: GPTConfig = TINY, seed: int = 0, dtype=torch.float32) -> GPT:
    return random_gpt(config, seed).to(dtype)


def _ids(config: GPTConfig, B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


# -- the PyTorch GPT ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_cached_generation_matches_full_forward():
    model, ids = _model(), _ids(TINY, 2, 10)
    full = model(ids)
    cache = KVCache(TINY, batch_size=2, max_len=10)
    steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(4, 10)]
    cached = torch.cat(steps, dim=1)
    assert cache.length == 10
    assert_allclose(cached, full, rtol=RTOL32, atol=ATOL32, what="logits with the KV-cache")
    assert_equal_ids(cached.argmax(-1), full.argmax(-1), what="next tokens with the KV-cache")


@torch.no_grad()
def test_left_padded_batch_matches_rows_alone():
    model = _model()
    long, short = _ids(TINY, 1, 7, seed=1), _ids(TINY, 1, 4, seed=2)
    pad = 3
    ids = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)])
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :pad] = False
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T): 0, 1, ... from each row's first real token
    batched = model(ids, positions=positions, attention_mask=mask)
    assert_allclose(batched[0], model(long)[0], rtol=RTOL32, atol=ATOL32, what="the unpadded row in a batch")
    assert_allclose(batched[1, pad:], model(short)[0], rtol=RTOL32, atol=ATOL32, what="the left-padded row")


@torch.no_grad()
def test_left_padded_batch_with_cache_matches_rows_alone():
    model = _model()
    long, short = _ids(TINY, 1, 5, seed=3), _ids(TINY, 1, 3, seed=4)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 2, dtype=torch.long), short], dim=1)])
    mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    cache = KVCache(TINY, batch_size=2, max_len=6)
    model(ids, cache=cache, positions=positions, attention_mask=mask)
    nxt = _ids(TINY, 2, 1, seed=5)
    step = model(nxt, cache=cache, positions=positions[:, -1:] + 1,
                 attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], dim=1))
    alone_long = model(torch.cat([long, nxt[:1]], dim=1))[:, -1]
    alone_short = model(torch.cat([short, nxt[1:]], dim=1))[:, -1]
    assert_allclose(step[:, 0], torch.cat([alone_long, alone_short]), rtol=RTOL32, atol=ATOL32,
                    what="a cached step of a left-padded batch")


def test_kv_cache_memory_formula_matches_allocation():
    for config, B, T, dtype in [(TINY, 3, 7, torch.float32), (GPTConfig(vocab_size=5, block_size=9, n_layer=3,
                                                                         n_head=4, n_embd=8), 2, 9, torch.bfloat16)]:
        cache = KVCache(config, batch_size=B, max_len=T, dtype=dtype)
        assert cache.nbytes == KVCache.bytes_needed(config, B, T, dtype)
    # GPT-2 small: 2 x 12 layers x 768 channels x 4 bytes = 73,728 bytes per token
    assert KVCache.bytes_needed(GPTConfig.gpt2(), 1, 1) == 73_728


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.zeros(1, 3)), "integer token ids"),
    (lambda m: m(torch.zeros(3, dtype=torch.long)), r"shape \(B, T\)"),
    (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), "T = 0"),
    (lambda m: m(torch.zeros(1, 13, dtype=torch.long)), "context of 12"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), positions=torch.zeros(1, 2, dtype=torch.long)), "positions"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), positions=torch.full((1, 3), 12)), r"positions must lie"),
    (lambda m: m(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.bool)),
     "attention_mask"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), cache=KVCache(TINY, 1, 4)), "batch of 1"),
    (lambda m: m(torch.zeros(1, 5, dtype=torch.long), cache=KVCache(TINY, 1, 4)), "full"),
])
def test_gpt_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(_model())


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=10, n_head=3), "divisible"), (dict(n_layer=0), "n_layer"), (dict(vocab_size=-1), "vocab_size")])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)
    with pytest.raises(ValueError, match="1 to 12"):
        KVCache(TINY, 1, 13)


# -- the NumPy GPT of notebook 04 against the PyTorch GPT ----------------------------------------------------------

CONFIGS = [
    TINY,
    GPTConfig(vocab_size=7, block_size=5, n_layer=1, n_head=1, n_embd=4),
    GPTConfig(vocab_size=64, block_size=32, n_layer=3, n_head=4, n_embd=32),
    GPTConfig(vocab_size=100, block_size=16, n_layer=4, n_head=8, n_embd=64),
]


def _numpy_logits(model: GPT, ids: torch.Tensor, **pieces) -> np.ndarray:
    params = reference("gpt_numpy.load_weights")(model.state_dict(), model.config.n_head)
    return reference("gpt_numpy.gpt_forward")(params, ids.numpy(), **pieces)


def _perturbed(model: GPT, seed: int) -> GPT:
    """Weights of order one: GPT-2's small init makes logits tiny and would hide errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return model


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}H{c.n_head}C{c.n_embd}")
@torch.no_grad()
def test_numpy_gpt_matches_pytorch_float32(config):
    model = _perturbed(_model(config), seed=1)
    ids = _ids(config, 2, config.block_size)
    expected = model(ids).numpy()
    got = _numpy_logits(model, ids)
    assert got.dtype == np.float32
    # Stated tolerance: every logit within 1e-5 x the largest |logit|. float32 rounding (2^-24 per operation)
    # accumulates over the layers and C-long dot products and scales with the activations, not with each logit;
    # measured: at most 1.6e-6 x the largest |logit| on these configs.
    scale = np.abs(expected).max()
    assert_allclose(got, expected, rtol=0, atol=1e-5 * scale, what="NumPy GPT logits (float32)")


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: f"L{c.n_layer}H{c.n_head}C{c.n_embd}")
@torch.no_grad()
def test_numpy_gpt_matches_pytorch_float64(config):
    model = _perturbed(_model(config, dtype=torch.float64), seed=2)
    ids = _ids(config, 3, config.block_size - 1)
    pieces = dict(embedding=reference("tokens.embedding_forward"), block=reference("gpt_numpy.block_forward"),
                  attention=reference("attention.multihead_attention"))  # as the notebook assembles them
    # float64: only rounding in a different order differs, ~1e-15; 1e-10 would catch any real discrepancy.
    assert_allclose(_numpy_logits(model, ids, **pieces), model(ids).numpy(), rtol=1e-10, atol=1e-12,
                    what="NumPy GPT logits (float64)")


@settings(max_examples=8, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4, 8]),
       T=st.integers(1, 6), B=st.integers(1, 3), seed=st.integers(0, 1000))
@torch.no_grad()
def test_numpy_gpt_matches_pytorch_for_any_shape(n_layer, n_head, head_dim, T, B, seed):
    config = GPTConfig(vocab_size=11, block_size=6, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim)
    model = _perturbed(_model(config, seed=seed, dtype=torch.float64), seed=seed)
    ids = _ids(config, B, T, seed=seed)
    # float64, as above.
    assert_allclose(_numpy_logits(model, ids), model(ids).numpy(), rtol=1e-10, atol=1e-12,
                    what="NumPy GPT logits")


def test_numpy_gpt_rejects_bad_input():
    load_weights, gpt_forward = reference("gpt_numpy.load_weights"), reference("gpt_numpy.gpt_forward")
    block_forward = reference("gpt_numpy.block_forward")
    model = _model()
    params = load_weights(model.state_dict(), TINY.n_head)
    with pytest.raises(ValueError, match="token ids must lie"):
        gpt_forward(params, np.array([[0, TINY.vocab_size]]))
    with pytest.raises(ValueError, match="context of 12"):
        gpt_forward(params, np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        gpt_forward(params, np.zeros(3, dtype=np.int64))
    x = np.zeros((1, 2, TINY.n_embd), dtype=np.float32)
    block = dict(params["blocks"][0])
    with pytest.raises(ValueError, match="n_head"):
        block_forward(x, block, 3)
    with pytest.raises(ValueError, match=r"attn.w_qkv.*\(16, 48\)"):
        block_forward(x, {**block, "attn.w_qkv": block["attn.w_qkv"].T}, 2)
    del block["mlp.b_fc"]
    with pytest.raises(KeyError, match="mlp.b_fc"):
        block_forward(x, block, 2)
    with pytest.raises(TypeError, match=r"model.state_dict\(\)"):
        load_weights(model, 2)
    sd = model.state_dict()
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(KeyError, match="transformer.h.1.mlp.c_fc.bias"):
        load_weights(sd, 2)
    with pytest.raises(KeyError, match="bias=True"):
        load_weights(GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, bias=False))
                     .state_dict(), 1)


# -- GPT-2 checkpoints in the Hugging Face layout -----------------------------------------------------------------

def _hf_state_dict(config: GPTConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """A GPT-2 state dict as Hugging Face's GPT2LMHeadModel has it, built by hand: Conv1D weights (in, out),
    lm_head tied, the attention-mask buffers of older versions included."""
    gen = torch.Generator().manual_seed(seed)
    C, sd = config.n_embd, {}

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    sd["transformer.wte.weight"], sd["transformer.wpe.weight"] = rand(config.vocab_size, C), rand(config.block_size, C)
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": rand(C), p + "ln_1.bias": rand(C),
                   p + "attn.bias": torch.tril(torch.ones(config.block_size, config.block_size))[None, None],
                   p + "attn.masked_bias": torch.tensor(-1e4),
                   p + "attn.c_attn.weight": rand(C, 3 * C), p + "attn.c_attn.bias": rand(3 * C),
                   p + "attn.c_proj.weight": rand(C, C), p + "attn.c_proj.bias": rand(C),
                   p + "ln_2.weight": rand(C), p + "ln_2.bias": rand(C),
                   p + "mlp.c_fc.weight": rand(C, 4 * C), p + "mlp.c_fc.bias": rand(4 * C),
                   p + "mlp.c_proj.weight": rand(4 * C, C), p + "mlp.c_proj.bias": rand(C)})
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = rand(C), rand(C)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def _expected_logits(sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward written directly on the Hugging Face tensors (x @ W for Conv1D), independent of GPT."""
    import torch.nn.functional as F

    w = {k.removeprefix("transformer."): v for k, v in sd.items()}
    C, n_head = w["wte.weight"].shape[1], TINY.n_head
    B, T = ids.shape
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    i = 0
    while f"h.{i}.ln_1.weight" in w:
        p = f"h.{i}."
        h = F.layer_norm(x, (C,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = (h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / (C // n_head) ** 0.5
        att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = F.gelu(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        i += 1
    return F.layer_norm(x, (C,), w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T


@torch.no_grad()
def test_load_gpt2_from_hugging_face_layout():
    sd = _hf_state_dict()
    model = load_gpt2(sd, n_head=TINY.n_head)
    assert model.config == TINY
    assert model.lm_head.weight is model.transformer.wte.weight, "the head must stay tied"
    assert model.num_parameters() == formula_parameters(TINY)
    ids = _ids(TINY, 2, TINY.block_size)
    # weights of order one make logits of order 10-100 after two layers: float32 rounding, relative 1e-5.
    assert_allclose(model(ids), _expected_logits(sd, ids), rtol=1e-5, atol=1e-4, what="logits of the loaded GPT-2")


@torch.no_grad()
def test_load_gpt2_accepts_keys_without_prefix_and_does_not_share_memory():
    sd = {k.removeprefix("transformer."): v for k, v in _hf_state_dict().items() if k != "lm_head.weight"}
    model = load_gpt2(sd, n_head=TINY.n_head)
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, sd["h.1.mlp.c_fc.weight"].T)
    sd["wte.weight"].zero_()
    sd["h.0.ln_1.weight"].zero_()
    assert model.transformer.wte.weight.abs().sum() > 0 and model.transformer.h[0].ln_1.weight.abs().sum() > 0, \
        "the loaded model must own its weights"


@torch.no_grad()
def test_to_gpt2_state_dict_round_trip():
    model = _model()
    sd = to_gpt2_state_dict(model)
    assert "lm_head.weight" not in sd and "transformer.h.0.attn.c_attn.weight" in sd
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (TINY.n_embd, 3 * TINY.n_embd)  # Conv1D (in, out)
    again = load_gpt2(sd, n_head=TINY.n_head)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), f"{name} changed in the round trip"
    assert set(to_gpt2_state_dict(model, prefix="")) == {k.removeprefix("transformer.") for k in sd}
    ids = _ids(TINY, 1, 6)
    assert torch.equal(model(ids), again(ids))


def test_load_gpt2_from_files(tmp_path):
    from safetensors.torch import save_file

    model = _model(seed=3)
    sd = to_gpt2_state_dict(model)
    save_file(sd, tmp_path / "model.safetensors")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    torch.save(sd, tmp_path / "gpt2.pt")
    ids = _ids(TINY, 2, 5)
    with torch.no_grad():
        expected = model(ids)
        for name in ("model.safetensors", "pytorch_model.bin", "gpt2.pt"):
            loaded = load_gpt2(tmp_path / name, n_head=TINY.n_head)
            assert torch.equal(loaded(ids), expected), f"logits differ after loading {name}"
            assert loaded.num_parameters() == model.num_parameters()


def test_load_gpt2_guesses_n_head_like_gpt2():
    config = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=128)
    assert load_gpt2(to_gpt2_state_dict(_model(config))).config.n_head == 2  # 128 // 64
    with pytest.raises(ValueError, match="pass n_head="):
        load_gpt2(_hf_state_dict())  # n_embd 16: no guess


def _without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("change, error, match", [
    (lambda sd: _without(sd, "transformer.h.1.mlp.c_proj.bias"), KeyError, "h.1.mlp.c_proj.bias"),
    (lambda sd: _without(_without(sd, "transformer.wte.weight"), "lm_head.weight"), KeyError, "wte.weight"),
    (lambda sd: {**sd, "transformer.h.0.attn.c_attn.weight": sd["transformer.h.0.attn.c_attn.weight"].T},
     ValueError, r"h.0.attn.c_attn.weight.*\(48, 16\).*\(16, 48\)"),
    (lambda sd: {**sd, "transformer.h.0.attn.rotary.weight": torch.zeros(3)}, ValueError, "rotary"),
    (lambda sd: {**sd, "lm_head.weight": sd["lm_head.weight"] + 1}, ValueError, "lm_head.weight"),
    (lambda sd: {**sd, "transformer.ln_f.bias": [0.0] * 16}, ValueError, "ln_f.bias.*not a tensor"),
])
def test_load_gpt2_rejects_bad_state_dicts(change, error, match):
    with pytest.raises(error, match=match):
        load_gpt2(change(_hf_state_dict()), n_head=TINY.n_head)


def test_load_gpt2_rejects_bad_files(tmp_path):
    (tmp_path / "notes.safetensors").write_text("not a checkpoint")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "weights.npz").write_bytes(b"")
    for name, match in [("notes.safetensors", "notes.safetensors.*not a readable"),
                        ("notes.pt", "notes.pt.*not a readable"), ("list.pt", "list.pt.*not a state dict"),
                        ("weights.npz", "unknown format")]:
        with pytest.raises(ValueError, match=match):
            load_gpt2(tmp_path / name, n_head=2)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_gpt2(tmp_path / "missing.safetensors")


# -- model_stats ---------------------------------------------------------------------------------------------------

def test_gpt2_parameter_counts_are_the_published_ones():
    published = {"GPT-2 small": 124_439_808, "GPT-2 medium": 354_823_168, "GPT-2 large": 774_030_080,
                 "GPT-2 XL": 1_557_611_200}
    for name, config in GPT2_SIZES.items():
        assert sum(count_by_component(config).values()) == published[name] == formula_parameters(config), name


@settings(max_examples=15, deadline=None)
@given(n_layer=st.integers(1, 4), n_head=st.integers(1, 4), head_dim=st.integers(1, 8),
       vocab=st.integers(1, 50), block=st.integers(1, 20), bias=st.booleans())
def test_formula_matches_the_module(n_layer, n_head, head_dim, vocab, block, bias):
    config = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim,
                       bias=bias)
    assert sum(r.total for r in count_by_layer(config)) == formula_parameters(config) \
        == gpt_skeleton(config).num_parameters()


def test_count_by_layer_of_a_real_model():
    model = _model()
    rows = count_by_layer(model)
    assert [r.layer for r in rows] == ["wte (= lm_head)", "wpe", "block 0", "block 1", "ln_f"]
    assert sum(r.total for r in rows) == model.num_parameters()
    C = TINY.n_embd
    assert rows[2].counts == {"embedding": 0, "attention": 4 * C * C + 4 * C, "mlp": 8 * C * C + 5 * C,
                              "layernorm": 4 * C}


def test_parameter_table_and_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = parameter_table(GPTConfig.gpt2(), blocks_shown=2)
    assert "124,439,808" in table and "blocks 2-11" in table and "474.7" in table  # 124.4M x 4 bytes = 474.7 MiB
    assert parameter_table(TINY).count("block ") == 2
    ax = plot_by_layer(TINY)
    assert len(ax.get_yticklabels()) == 5
    ax = plot_component_shares({"tiny": TINY, **GPT2_SIZES})
    assert len(ax.patches) == 4 * 5
    plt.close("all")


def test_attention_weights_are_the_ones_the_block_applies():
    """Weights @ values, heads merged and projected, give the block's attention output exactly (float64)."""
    from llmcourse.gpt import attention_weights

    config = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = random_gpt(config, seed=3).double()
    ids = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(3))
    weights = attention_weights(model, ids, layer=1)  # (B, nh, T, T)
    assert weights.shape == (2, 2, 6, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64))
    assert not weights.triu(1).any(), "a query attends to a later position"
    captured = []
    handle = model.transformer.h[1].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        model(ids)
        handle.remove()
        block = model.transformer.h[1]
        x = block.ln_1(captured[0])
        v = block.attn.c_attn(x).split(8, dim=2)[2].view(2, 6, 2, 4).transpose(1, 2)  # (B, nh, T, hd)
        y = block.attn.c_proj((weights @ v).transpose(1, 2).reshape(2, 6, 8))
        expected = block.attn(x, None, None, 1)
    # float64 and a few sums in another order than PyTorch's fused kernel: rounding only.
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
