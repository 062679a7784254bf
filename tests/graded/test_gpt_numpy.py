"""Graded tests of notebook 04: the transformer block forward and loading PyTorch weights into the NumPy GPT.

The expected values come live from the PyTorch GPT of `llmcourse.gpt` (same weights), in float64 so that only
rounding can differ; the block tests use the reference multi-head attention, so a block is graded on its own.
"""

import numpy as np
import torch

from llmcourse.course.grading import assert_allclose, exercise
from llmcourse.course.grading.isolation import course_function
from llmcourse.gpt import GPT, Block, GPTConfig

# Both sides compute in float64 with different summation orders: ~1e-15 relative differences are expected, a bug
# (a missing residual, a swapped LayerNorm, a forgotten transpose) shows as O(0.1). rtol 1e-7 as in COURSE.md;
# atol for entries that happen to be near zero.
RTOL64, ATOL64 = 1e-7, 1e-10
LINEAR_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights of order one (the GPT-2 init is so small that a block is nearly the identity, which tests little)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.copy_(1.0 + 0.2 * noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                    else 0.3 * noise)


def _torch_block(C: int, n_head: int, seed: int, dtype=torch.float64) -> Block:
    block = Block(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=n_head, n_embd=C)).to(dtype)
    _randomize(block, seed)
    return block


def _numpy_block(block: Block) -> dict:
    """The expected NumPy layout, written out by hand: nn.Linear weights transposed to (in, out)."""
    sd = {k: v.detach().numpy() for k, v in block.state_dict().items()}
    return {"ln_1.gamma": sd["ln_1.weight"], "ln_1.beta": sd["ln_1.bias"],
            "attn.w_qkv": sd["attn.c_attn.weight"].T, "attn.b_qkv": sd["attn.c_attn.bias"],
            "attn.w_proj": sd["attn.c_proj.weight"].T, "attn.b_proj": sd["attn.c_proj.bias"],
            "ln_2.gamma": sd["ln_2.weight"], "ln_2.beta": sd["ln_2.bias"],
            "mlp.w_fc": sd["mlp.c_fc.weight"].T, "mlp.b_fc": sd["mlp.c_fc.bias"],
            "mlp.w_proj": sd["mlp.c_proj.weight"].T, "mlp.b_proj": sd["mlp.c_proj.bias"]}


def _run_block(impl, C, n_head, B, T, seed, dtype=torch.float64):
    block = _torch_block(C, n_head, seed, dtype)
    x = torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dtype)
    with torch.no_grad():
        expected = block(x, None, None, 0).numpy()
    got = impl.gpt_numpy.block_forward(x.numpy(), _numpy_block(block), n_head,
                                       attention=course_function("attention.multihead_attention"))
    return got, expected


@exercise("block_forward")
def test_block_matches_pytorch_block(impl):
    got, expected = _run_block(impl, C=12, n_head=3, B=2, T=5, seed=0)
    assert_allclose(got, expected, rtol=RTOL64, atol=ATOL64, what="block_forward(x) (B=2, T=5, C=12, 3 heads)")


@exercise("block_forward")
def test_block_with_one_token_and_one_head(impl):
    # T = 1: the token attends only to itself; n_head = 1: one head spans all C channels.
    got, expected = _run_block(impl, C=8, n_head=1, B=3, T=1, seed=1)
    assert_allclose(got, expected, rtol=RTOL64, atol=ATOL64, what="block_forward(x) with T=1 and one head")


@exercise("block_forward")
def test_block_keeps_float32(impl):
    got, expected = _run_block(impl, C=16, n_head=4, B=2, T=7, seed=2, dtype=torch.float32)
    assert np.asarray(got).dtype == np.float32, (
        f"block_forward turned float32 input into {np.asarray(got).dtype}: keep the input's dtype")
    # float32 on both sides, different summation orders: PyTorch's own float32 tolerances (COURSE.md).
    assert_allclose(got, expected, rtol=1.3e-6, atol=1e-5, what="block_forward(x) in float32")


@exercise("block_forward")
def test_block_is_causal(impl):
    # Changing the last token must leave the outputs at every earlier position exactly as they were.
    block = _numpy_block(_torch_block(8, 2, seed=3))
    x = np.random.default_rng(3).normal(size=(1, 6, 8))
    changed = x.copy()
    changed[0, -1] += 1.0
    mha = course_function("attention.multihead_attention")
    a = impl.gpt_numpy.block_forward(x, block, 2, attention=mha)
    b = impl.gpt_numpy.block_forward(changed, block, 2, attention=mha)
    assert_allclose(b[:, :-1], a[:, :-1], rtol=RTOL64, atol=ATOL64,
                    what="block_forward's outputs before the changed last token (they must not see the future)")


def _torch_gpt(config: GPTConfig, seed: int) -> GPT:
    model = GPT(config).double()
    _randomize(model, seed)
    return model


@exercise("load_weights")
def test_load_weights_transposes_linear_weights(impl):
    model = _torch_gpt(GPTConfig(vocab_size=13, block_size=9, n_layer=2, n_head=2, n_embd=8), seed=10)
    sd = model.state_dict()
    params = impl.gpt_numpy.load_weights(sd, 2)
    assert isinstance(params, dict), f"load_weights should return a dict, got {type(params).__name__}"
    assert params.get("n_head") == 2, f"params['n_head'] should be 2, got {params.get('n_head')!r}"
    assert len(params.get("blocks", [])) == 2, f"params['blocks'] should hold 2 blocks, got " \
                                               f"{len(params.get('blocks', []))}"
    expected = {"wte": sd["transformer.wte.weight"], "wpe": sd["transformer.wpe.weight"],
                "ln_f.gamma": sd["transformer.ln_f.weight"], "ln_f.beta": sd["transformer.ln_f.bias"]}
    for key, value in expected.items():
        assert isinstance(params[key], np.ndarray), f"params[{key!r}] is a {type(params[key]).__name__}, " \
                                                    "expected a NumPy array"
        # a copy, not a computation: exact.
        assert_allclose(params[key], value.numpy(), rtol=0, what=f"params[{key!r}]")
    for i in range(2):
        theirs = _numpy_block(model.transformer.h[i])
        for key, value in theirs.items():
            got = params["blocks"][i][key]
            assert isinstance(got, np.ndarray), f"blocks[{i}][{key!r}] is a {type(got).__name__}, expected a " \
                                                "NumPy array"
            assert_allclose(got, value, rtol=0, what=f"params['blocks'][{i}][{key!r}] (nn.Linear is (out, in))")


@exercise("load_weights")
def test_loaded_numpy_gpt_matches_pytorch_gpt(impl):
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=3, n_head=4, n_embd=16)
    model = _torch_gpt(config, seed=11)
    ids = torch.randint(0, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model(ids).numpy()
    params = impl.gpt_numpy.load_weights(model.state_dict(), config.n_head)
    gpt_forward, block = course_function("gpt_numpy.gpt_forward"), course_function("gpt_numpy.block_forward")
    got = gpt_forward(params, ids.numpy(), block=block)
    assert_allclose(got, expected, rtol=RTOL64, atol=ATOL64, what="the NumPy GPT's logits with your loaded weights")


@exercise("load_weights")
def test_load_weights_keeps_layer_order_beyond_ten_layers(impl):
    # 11 layers: sorting key strings would put "h.10" before "h.2".
    model = _torch_gpt(GPTConfig(vocab_size=5, block_size=4, n_layer=11, n_head=1, n_embd=4), seed=12)
    params = impl.gpt_numpy.load_weights(model.state_dict(), 1)
    assert len(params["blocks"]) == 11, f"params['blocks'] should hold 11 blocks, got {len(params['blocks'])}"
    for i in (2, 10):
        expected = model.transformer.h[i].attn.c_attn.weight.detach().numpy().T
        assert_allclose(params["blocks"][i]["attn.w_qkv"], expected, rtol=0,
                        what=f"params['blocks'][{i}]['attn.w_qkv'] (block i must come from transformer.h.{i})")


@exercise("load_weights")
def test_load_weights_keeps_float32(impl):
    model = GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=2, n_embd=8))
    params = impl.gpt_numpy.load_weights(model.state_dict(), 2)
    dtypes = {key: params["blocks"][0][key].dtype for key in params["blocks"][0]}
    dtypes.update({key: params[key].dtype for key in ("wte", "wpe", "ln_f.gamma", "ln_f.beta")})
    wrong = {k: str(v) for k, v in dtypes.items() if v != np.float32}
    assert not wrong, f"load_weights changed the dtype of float32 weights: {wrong}"
