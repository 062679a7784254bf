"""The package's own implementations agree with the course's reference solutions on random inputs.

`llmcourse` implements at run time everything it needs itself (vectorised PyTorch, a heap-based BPE encoder, NumPy
layers), apart from the teaching versions in solutions/ that the exercises are graded against. Two independent
implementations that agree are a stronger check than one: each test feeds both the same seeded or hypothesis-drawn
inputs and asks for exact equality of integer outputs (ids, merges, codes, masks, positions, schedules) and agreement
of floats within the tolerance justified next to it.
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse import numpy_layers as nl
from llmcourse import tiled
from llmcourse.batching import generate_batch, left_padded, schedule_step
from llmcourse.course.loader import reference
from llmcourse.data import load_corpus
from llmcourse.generate import beam_step, filtered_logits
from llmcourse.gpt import GPTConfig, KVCache, random_gpt
from llmcourse.gradcheck import TOLERANCE, layer_checks
from llmcourse.llama import LlamaConfig, random_llama, rope_tables
from llmcourse.mlp_lm import Layers, adam_step, momentum_step, sgd_step
from llmcourse.ngram import BigramModel
from llmcourse.paged import PagedKVCache
from llmcourse.pretrained import ASSETS, NAME
from llmcourse.quantization import (QuantizedLinear, QuantizedTensor, dequantize_groupwise_torch, pack_int4_torch,
                                    quantize_groupwise_torch, quantize_model, unpack_int4_torch)
from llmcourse.speculative import verify_greedy
from llmcourse.tokenizer import BPETokenizer, apply_merges, load_tokenizer, split_chunks
from llmcourse.train import checkpoint_paths
from llmcourse.train import perplexity, training_step
from llmcourse.widgets.attention import SENTENCES, attention_maps, random_model

# float64: the same formulas, at most in another order of operations (~1e-16): COURSE.md's float64 rtol 1e-7, atol
# 1e-12 for entries ~0 by cancellation. float32: PyTorch's own float32 defaults.
TOL = {np.float64: {"rtol": 1e-7, "atol": 1e-12}, np.float32: {"rtol": 1.3e-6, "atol": 1e-5}}
TORCH_TOL = {torch.float64: TOL[np.float64], torch.float32: TOL[np.float32]}
seeds = st.integers(0, 2**32 - 1)


def close(actual, expected, dtype) -> None:
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


def approx(expected: float, dtype):
    return pytest.approx(expected, rel=TOL[dtype]["rtol"], abs=TOL[dtype]["atol"])


# -- BPE -------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_merges() -> dict[tuple[int, int], int]:
    """The 256 merges of the tokenizer shipped with the model: real merges, learned on the course corpus."""
    return load_tokenizer(checkpoint_paths(ASSETS, NAME)["tokenizer"]).merges


texts = st.text(st.sampled_from("aab bc\n  .,'s的是一🙂") | st.characters(), max_size=300)


@settings(deadline=None, max_examples=60)
@given(text=texts)
def test_encoding_matches_bpe_encode(shipped_merges, text):
    bpe_encode = reference("tokens.bpe_encode")
    # The whole text as one sequence (merges across chunks: long inputs), and chunk by chunk as the tokenizer does.
    assert apply_merges(list(text.encode()), shipped_merges) == bpe_encode(text, shipped_merges)
    expected = [i for chunk in split_chunks(text) for i in bpe_encode(chunk, shipped_merges)]
    assert BPETokenizer(shipped_merges).encode(text) == expected


def test_encoding_the_corpus_matches_bpe_encode(shipped_merges):
    text = load_corpus()[:20_000]
    assert apply_merges(list(text.encode()), shipped_merges) == reference("tokens.bpe_encode")(text, shipped_merges)


@settings(deadline=None, max_examples=60)
@given(ids=st.lists(st.integers(0, 767), max_size=40))
def test_decoding_matches_bpe_decode(shipped_merges, ids):
    tok = BPETokenizer(shipped_merges)
    ids = [i % tok.vocab_size for i in ids]  # any ids, cut characters included (decoded as U+FFFD)
    assert tok.decode(ids) == reference("tokens.bpe_decode")(ids, shipped_merges)


@settings(deadline=None, max_examples=80)
@given(ids=st.lists(st.integers(0, 3), max_size=30), pair=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_merging_one_pair_matches_merge_pair(ids, pair):
    # A small alphabet: many occurrences, overlapping ones like (1, 1) in [1, 1, 1] included.
    assert apply_merges(ids, {pair: 256}) == reference("tokens.merge_pair")(ids, pair, 256)


def _reference_training(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """BPE training from the reference building blocks: a full recount of the chunks' pairs before every merge."""
    count_pairs, merge_pair, most_frequent_pair = (reference(f"tokens.{name}") for name in
                                                   ("count_pairs", "merge_pair", "most_frequent_pair"))
    chunks = Counter(split_chunks(text))
    words = {chunk: list(chunk.encode()) for chunk in chunks}
    merges = {}
    for new_id in range(256, vocab_size):
        stats = Counter()
        for chunk, word in words.items():
            for pair, n in count_pairs(word).items():
                stats[pair] += n * chunks[chunk]
        if not stats:
            break
        pair = most_frequent_pair(stats)
        merges[pair] = new_id
        words = {chunk: merge_pair(word, pair, new_id) for chunk, word in words.items()}
    return merges


@settings(deadline=None, max_examples=40)
@given(text=st.text(st.sampled_from("aaab bc\n "), max_size=200) | texts, extra=st.integers(0, 40))
def test_training_matches_the_reference_building_blocks(text, extra):
    # A 4-letter alphabet makes equal counts common, so the tie rule (the smallest pair) is exercised.
    assert BPETokenizer.train(text, 256 + extra).merges == _reference_training(text, 256 + extra)


def test_training_on_the_corpus_matches_the_reference_building_blocks():
    text = load_corpus()[:30_000]
    assert BPETokenizer.train(text, 400).merges == _reference_training(text, 400)


@settings(deadline=None, max_examples=40)
@given(text=st.text(st.sampled_from("aaab bc\n "), max_size=200) | texts, extra=st.integers(0, 40))
def test_incremental_training_matches_bpe_train(text, extra):
    chunk_counts = dict(Counter(split_chunks(text)))
    assert BPETokenizer.train_chunks(chunk_counts, 256 + extra).merges == reference("tokens.bpe_train")(chunk_counts,
                                                                                                       extra)


def test_incremental_training_on_the_corpus_matches_bpe_train():
    text = load_corpus()[:30_000]
    expected = list(reference("tokens.bpe_train")(dict(Counter(split_chunks(text))), 300).items())
    assert list(BPETokenizer.train(text, 556).merges.items()) == expected


# -- bigram model ----------------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=40)
@given(seed=seeds, vocab=st.integers(1, 12), n=st.integers(0, 200))
def test_bigram_counts_match(seed, vocab, n):
    ids = np.random.default_rng(seed).integers(0, vocab, size=n)
    np.testing.assert_array_equal(BigramModel.fit(ids, vocab).counts, reference("tokens.bigram_counts")(ids, vocab))


@settings(deadline=None, max_examples=40)
@given(seed=seeds, vocab=st.integers(1, 12), smoothing=st.sampled_from([0.0, 0.1, 1.0, 2.5]))
def test_bigram_perplexity_matches(seed, vocab, smoothing):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, size=(vocab, vocab)) * (rng.random((vocab, vocab)) < 0.7)  # some unseen pairs
    ids = rng.integers(0, vocab, size=rng.integers(2, 60))
    model = BigramModel(counts.astype(np.float64), smoothing)
    try:
        expected = reference("tokens.bigram_perplexity")(counts, ids, smoothing)
    except ValueError:  # smoothing 0 and a previous token whose row is all zeros: no probabilities to take
        with pytest.raises(ValueError, match="smoothing"):
            model.perplexity(ids)
        return
    got = model.perplexity(ids)
    if math.isinf(expected):  # smoothing 0 and an unseen transition
        assert math.isinf(got)
    else:
        assert got == pytest.approx(expected, rel=1e-7)  # float64 rule


# -- NumPy layers (notebooks 01-03) ------------------------------------------------------------------------------------

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=30)
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), scale=st.sampled_from([1.0, 30.0]))
def test_softmax_matches(dtype, seed, shape, scale):
    x = (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)
    axis = seed % len(shape)
    close(nl.softmax(x, axis=axis), reference("attention.softmax")(x, axis=axis), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=20)
@given(seed=seeds, B=st.integers(1, 4), T=st.integers(1, 3), D=st.integers(1, 6), out=st.integers(1, 5))
def test_layers_forward_and_backward_match(dtype, seed, B, T, D, out):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(dtype)  # noqa: E731
    x, w, b, gamma, beta = normal(B, T, D), normal(D, out), normal(out), normal(D), normal(D)
    pairs = [
        (nl.linear_forward(x, w, b), reference("backprop.linear_forward")(x, w, b)),
        (nl.gelu_forward(x), reference("backprop.gelu_forward")(x)),
        (nl.layernorm_forward(x, gamma, beta), reference("backprop.layernorm_forward")(x, gamma, beta)),
        (nl.gelu_backward(x * 0.5, x), reference("backprop.gelu_backward")(x * 0.5, x)),
    ]
    dout = normal(B, T, out)
    pairs += zip(nl.linear_backward(dout, x, w), reference("backprop.linear_backward")(dout, x, w))
    dout = normal(B, T, D)
    pairs += zip(nl.layernorm_backward(dout, x, gamma), reference("backprop.layernorm_backward")(dout, x, gamma))
    logits, targets = normal(B * T, out) * 3, rng.integers(0, out, size=B * T)
    pairs.append((nl.cross_entropy_backward(logits, targets),
                  reference("backprop.cross_entropy_backward")(logits, targets)))
    for got, expected in pairs:
        assert got.dtype == expected.dtype == dtype
        close(got, expected, dtype)
    assert nl.cross_entropy_forward(logits, targets) == approx(
        reference("backprop.cross_entropy_forward")(logits, targets), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=20)
@given(seed=seeds, vocab=st.integers(1, 9), shape=st.lists(st.integers(1, 4), min_size=1, max_size=2))
def test_embedding_matches(dtype, seed, vocab, shape):
    rng = np.random.default_rng(seed)
    weight, ids = rng.normal(size=(vocab, 3)).astype(dtype), rng.integers(0, vocab, size=shape)
    np.testing.assert_array_equal(nl.embedding_forward(ids, weight), reference("tokens.embedding_forward")(ids, weight))
    grad = rng.normal(size=(*shape, 3)).astype(dtype)
    close(nl.embedding_backward(ids, grad, vocab), reference("tokens.embedding_backward")(ids, grad, vocab), dtype)


def test_the_package_layers_pass_the_gradient_checks():
    for row in layer_checks(Layers.default()):
        assert row["vs central differences"] < TOLERANCE, row
        assert row["forward vs torch"] < 1e-13 and row["backward vs torch.autograd"] < 1e-13, row  # float64


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=15)
@given(seed=seeds, weight_decay=st.sampled_from([0.0, 0.1]))
def test_optimiser_steps_match(dtype, seed, weight_decay):
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(3, 4)).astype(dtype)
    zeros = np.zeros_like(start)
    sgd, sgd_ref = start, start
    momentum, momentum_ref = (start, zeros), (start, zeros)  # (param, velocity)
    adam, adam_ref = (start, zeros, zeros), (start, zeros, zeros)  # (param, m, v)
    for t in range(1, 6):  # several steps: the velocity, the moments and the bias correction matter
        grad = rng.normal(size=start.shape).astype(dtype)
        sgd, sgd_ref = sgd_step(sgd, grad, lr=0.1), reference("backprop.sgd_step")(sgd_ref, grad, lr=0.1)
        momentum = momentum_step(momentum[0], grad, momentum[1], lr=0.1, momentum=0.8)
        momentum_ref = reference("backprop.momentum_step")(momentum_ref[0], grad, momentum_ref[1], lr=0.1,
                                                           momentum=0.8)
        adam = adam_step(adam[0], grad, adam[1], adam[2], t, lr=0.01, weight_decay=weight_decay)
        adam_ref = reference("backprop.adam_step")(adam_ref[0], grad, adam_ref[1], adam_ref[2], t, lr=0.01,
                                                   weight_decay=weight_decay)
    for got, expected in [(sgd, sgd_ref), *zip(momentum, momentum_ref), *zip(adam, adam_ref)]:
        assert got.dtype == dtype
        close(got, expected, dtype)


@pytest.mark.parametrize("text", SENTENCES)
def test_attention_maps_match_causal_attention(text):
    model = random_model(seed=len(text))
    close(attention_maps(model, text), attention_maps(model, text, reference("attention.causal_attention")),
          np.float64)


# -- training (notebook 05) ------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=50)
@given(loss=st.floats(0.0, 800.0) | st.integers(0, 1000))
def test_perplexity_matches(loss):
    expected = reference("training.perplexity")(loss)
    assert perplexity(loss) == pytest.approx(expected, rel=1e-7)  # float64 rule; inf == inf past overflow


@pytest.mark.parametrize("clip", [1.0, 0.05, None])
def test_training_step_matches(clip):
    config = GPTConfig(vocab_size=29, block_size=8, n_layer=1, n_head=2, n_embd=16)
    models = [random_gpt(config, seed=3).train() for _ in range(2)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in models]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randint(0, 29, (2, 2, 8), generator=generator)
        ours = training_step(models[0], optimizers[0], x, y, clip=clip)
        expected = reference("training.training_step")(models[1], optimizers[1], x, y, clip=clip)
        assert ours == approx(expected, np.float32)  # float32 losses
    for ours, expected in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(ours, expected, **TORCH_TOL[torch.float32])
        assert ours.grad is None and expected.grad is None  # both clear the gradients


# -- decoding (notebook 06) ------------------------------------------------------------------------------------------

@st.composite
def logits(draw):
    """Logits (..., V) with ties (integer values) and some -inf entries (as after an earlier filter)."""
    rng = np.random.default_rng(draw(seeds))
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)) + [draw(st.integers(1, 30))]
    values = rng.integers(-4, 5, size=shape) * draw(st.sampled_from([0.5, 1.0, 3.0]))
    values = np.where(rng.random(shape) < 0.15, -np.inf, values)
    values[..., 0] = 1.0  # every row keeps one finite logit
    return torch.tensor(values, dtype=draw(st.sampled_from([torch.float32, torch.float64])))


def same_filter(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(got), torch.isinf(expected))  # the same tokens removed
    torch.testing.assert_close(got, expected, **TORCH_TOL[expected.dtype])  # the kept logits


@settings(deadline=None, max_examples=60)
@given(x=logits(), temperature=st.floats(0.05, 5.0), k=st.integers(1, 35), p=st.floats(0.01, 1.0))
def test_filters_match(x, temperature, k, p):
    apply_temperature, top_k_filter, top_p_filter = (reference(f"decoding.{name}") for name in
                                                     ("apply_temperature", "top_k_filter", "top_p_filter"))
    same_filter(filtered_logits(x, temperature=temperature), apply_temperature(x, temperature))
    same_filter(filtered_logits(x, top_k=k), top_k_filter(x, k))
    same_filter(filtered_logits(x, top_p=p), top_p_filter(x, p))
    same_filter(filtered_logits(x, temperature=temperature, top_k=k, top_p=p),
                top_p_filter(top_k_filter(apply_temperature(x, temperature), k), p))


@settings(deadline=None, max_examples=40)
@given(x=logits(), data=st.data())
def test_top_p_matches_at_its_boundaries(x, data):
    # p equal to the mass before a token: whether that token is kept hinges on "mass before < p", not "<=".
    probs = torch.softmax(torch.sort(x, dim=-1, descending=True).values.double(), dim=-1)
    masses = sorted({m for m in (torch.cumsum(probs, dim=-1) - probs).flatten().tolist() if 0 < m <= 1})
    for p in data.draw(st.lists(st.sampled_from(masses), max_size=4)) if masses else []:
        same_filter(filtered_logits(x, top_p=p), reference("decoding.top_p_filter")(x, p))


@settings(deadline=None, max_examples=60)
@given(seed=seeds, W=st.integers(1, 5), V=st.integers(1, 12), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_beam_step_matches(seed, W, V, dtype):
    rng = np.random.default_rng(seed)
    scores = torch.tensor(rng.integers(-3, 1, size=W) * 0.5, dtype=dtype)  # ties between beams
    log_probs = torch.tensor(np.where(rng.random((W, V)) < 0.2, -np.inf, -rng.integers(0, 4, size=(W, V)) * 0.5),
                             dtype=dtype)
    width = int(rng.integers(1, W * V + 1))
    *ours, our_scores = beam_step(scores, log_probs, width)
    *expected, expected_scores = reference("decoding.beam_step")(scores, log_probs, width)
    for got, want in zip(ours, expected):  # beam index and token
        assert torch.equal(got, want)
    torch.testing.assert_close(our_scores, expected_scores, **TORCH_TOL[dtype])


# -- KV-cache (notebook 07) ------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(seed=seeds, B=st.integers(1, 3), steps=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       padded=st.booleans(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_cached_forward_matches_gpt_forward(seed, B, steps, padded, dtype):
    """Chunks of new tokens, one after the other, into one cache; left-padded rows with positions and a mask or not."""
    config = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=8)
    model = random_gpt(config, seed=seed % 100).to(dtype)
    rng = np.random.default_rng(seed)
    cache = KVCache(model.config, B, sum(steps), dtype=dtype)
    cache_k, cache_v = (torch.zeros(2, B, 2, sum(steps), 4, dtype=dtype) for _ in range(2))
    pads = rng.integers(0, steps[0], size=B) if padded else np.zeros(B, dtype=int)
    mask = torch.from_numpy(np.arange(steps[0])[None, :] >= pads[:, None])  # (B, first step)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    length = 0
    for T in steps:
        idx = torch.from_numpy(rng.integers(0, 23, size=(B, T)))
        if length:  # later chunks are real tokens, after each row's last position
            mask = torch.cat([mask, torch.ones(B, T, dtype=torch.bool)], dim=1)
            positions = positions[:, -1:] + torch.arange(1, T + 1)
        kwargs = dict(positions=positions, attention_mask=mask) if padded else {}
        with torch.no_grad():
            expected = model(idx, cache=cache, **kwargs)
        got = reference("kv_cache.gpt_forward_cached")(model.state_dict(), 2, idx, cache_k, cache_v, length, **kwargs)
        length += T
        np.testing.assert_allclose(got.numpy(), expected.numpy(), **TORCH_TOL[dtype])
        for layer in range(2):
            np.testing.assert_allclose(cache_k[layer, :, :, :length].numpy(), cache.keys[layer][:, :, :length].numpy(),
                                       **TORCH_TOL[dtype])


# -- batching (notebook 08) ------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=50)
@given(prompts=st.lists(st.lists(st.integers(0, 99), min_size=1, max_size=9), min_size=1, max_size=6),
       pad_id=st.integers(0, 99))
def test_left_padding_mask_and_positions_match(prompts, pad_id):
    ids, mask, positions = left_padded(prompts, torch.device("cpu"), pad_id)
    expected_ids, expected_mask = reference("batching.left_pad")(prompts, pad_id)
    np.testing.assert_array_equal(ids.numpy(), expected_ids)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    np.testing.assert_array_equal(mask.numpy(), reference("batching.padding_mask")([len(p) for p in prompts]))
    np.testing.assert_array_equal(positions.numpy(), reference("batching.row_positions")(expected_mask))
    assert (ids.dtype, mask.dtype, positions.dtype) == (torch.int64, torch.bool, torch.int64)


@settings(deadline=None, max_examples=80)
@given(seed=seeds, rows=st.integers(1, 6), n_waiting=st.integers(0, 8))
def test_scheduler_step_matches(seed, rows, n_waiting):
    rng = np.random.default_rng(seed)
    slots = [int(r) if rng.random() < 0.7 else None for r in rng.permutation(100)[:rows]]
    finished = [s is not None and bool(rng.random() < 0.5) for s in slots]
    waiting = [int(r) for r in rng.permutation(range(100, 200))[:n_waiting]]
    before = (list(slots), list(finished), list(waiting))
    assert schedule_step(slots, finished, waiting) == reference("batching.scheduler_step")(slots, finished, waiting)
    assert (slots, finished, waiting) == before  # neither changes its inputs


@settings(deadline=None, max_examples=25)
@given(seed=seeds, prompts=st.lists(st.lists(st.integers(0, 22), min_size=1, max_size=6), min_size=1, max_size=4),
       max_new_tokens=st.integers(0, 6), temperature=st.sampled_from([0.0, 0.7, 1.5]),
       eos_id=st.none() | st.integers(0, 22), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_generate_batch_matches_the_reference_loop(seed, prompts, max_new_tokens, temperature, eos_id, dtype):
    config = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=8)
    model = random_gpt(config, seed=seed % 100).to(dtype)
    kwargs = dict(temperature=temperature, seed=seed % 1000, eos_id=eos_id)
    expected = reference("batching.generate_batch")(model.state_dict(), 2, prompts, max_new_tokens, **kwargs)
    got = generate_batch(model, prompts, max_new_tokens, **kwargs)
    assert [row.tolist() for row in got] == [row.tolist() for row in expected]  # token ids: exactly


# -- quantization (notebook 09) --------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=60)
@given(seed=seeds, rows=st.integers(1, 6), groups=st.integers(1, 4), group_size=st.sampled_from([1, 2, 4, 8, 32]),
       bits=st.integers(2, 8), dtype=st.sampled_from([np.float32, np.float64]), halves=st.booleans())
def test_groupwise_quantization_matches(seed, rows, groups, group_size, bits, dtype, halves):
    rng = np.random.default_rng(seed)
    shape, qmax = (rows, groups * group_size), 2 ** (bits - 1) - 1
    if halves:  # every group's largest |w| is qmax * 2^e, so w / scale hits x.5 exactly: rounding half to even
        w = rng.integers(-2 * qmax, 2 * qmax + 1, size=shape) / 2
        w[:, ::group_size] = qmax * rng.choice([-1, 1], size=(rows, groups))
        w = w * 2.0 ** rng.integers(-3, 4, size=(rows, 1))
    else:  # rows of zeros (scale 1) and of very different magnitudes
        w = rng.normal(size=shape) * rng.choice([0.0, 0.01, 1.0, 100.0], size=(rows, 1))
    w = w.astype(dtype)
    codes, scale = quantize_groupwise_torch(torch.from_numpy(w), bits, group_size)
    expected_codes, expected_scale, zero = reference("quantization.quantize_groupwise")(w, bits, group_size, True)
    np.testing.assert_array_equal(codes.numpy(), expected_codes)
    # Scales exactly: the same correctly rounded IEEE division max|w| / qmax, and the codes must be bit-for-bit.
    np.testing.assert_array_equal(scale.numpy(), expected_scale)
    if dtype == np.float32:  # the package dequantizes to float32
        expected = reference("quantization.dequantize_groupwise")(expected_codes, expected_scale, zero)
        close(dequantize_groupwise_torch(codes, scale).numpy(), expected, np.float32)
    if bits == 8:  # one group per row is the exercise quantize_per_channel
        codes, scale = quantize_groupwise_torch(torch.from_numpy(w), 8, w.shape[1])
        expected_codes, expected_scale = reference("quantization.quantize_per_channel")(w, 8)
        np.testing.assert_array_equal(codes.numpy(), expected_codes)
        np.testing.assert_array_equal(scale[:, 0].numpy(), expected_scale)  # exactly, as above
        if dtype == np.float32:
            close(dequantize_groupwise_torch(codes, scale).numpy(),
                  reference("quantization.dequantize_per_channel")(expected_codes, expected_scale), np.float32)


@settings(deadline=None, max_examples=40)
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=0, max_size=2), pairs=st.integers(1, 8))
def test_int4_packing_matches(seed, shape, pairs):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-8, 8, size=(*shape, 2 * pairs)).astype(np.int8)
    packed = pack_int4_torch(torch.from_numpy(codes))
    np.testing.assert_array_equal(packed.numpy(), reference("quantization.pack_int4")(codes))
    some_bytes = rng.integers(0, 256, size=(*shape, pairs)).astype(np.uint8)
    np.testing.assert_array_equal(unpack_int4_torch(torch.from_numpy(some_bytes)).numpy(),
                                  reference("quantization.unpack_int4")(some_bytes))


@pytest.mark.parametrize("group", [8, 16, 32])
def test_int4_weights_match_the_reference_chain(group):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(group))
    qt = QuantizedTensor(w, 4, group)
    codes, scale, _ = reference("quantization.quantize_groupwise")(w.numpy(), 4, group, True)
    np.testing.assert_array_equal(qt.codes.numpy(), reference("quantization.pack_int4")(codes))
    np.testing.assert_array_equal(qt.scale.numpy(), scale.astype(np.float16))  # the same float32 -> float16 rounding


@settings(deadline=None, max_examples=20)
@given(seed=seeds, out=st.integers(1, 9), inputs=st.integers(1, 16), bias=st.booleans())
def test_int8_linear_matches_quantized_matmul(seed, out, inputs, bias):
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(inputs, out, bias=bias)
    with torch.no_grad():
        for parameter in linear.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    layer = QuantizedLinear(QuantizedTensor(linear.weight, 8), linear.bias)
    x = torch.randn(3, 2, inputs, generator=generator)
    expected = reference("quantization.quantized_matmul")(
        x.numpy(), layer.weight.codes.numpy(), layer.weight.scale[:, 0].numpy(),
        None if linear.bias is None else linear.bias.detach().numpy())
    with torch.no_grad():
        close(layer(x).numpy(), expected, np.float32)


@pytest.mark.parametrize("scheme", ["int8", "int4-g8", "int4-g32", "fp32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantize_model_stores_what_quantize_state_dict_gives(scheme, dtype):
    model = random_gpt(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=3).to(dtype)
    expected = reference("quantization.quantize_state_dict")(model.state_dict(), scheme)
    packaged = quantize_model(model, scheme)
    assert list(expected) == [key for key in model.state_dict() if key != "lm_head.weight"]
    for key, value in expected.items():
        if isinstance(value, tuple):  # codes and scales: bit for bit
            stored = packaged.get_submodule(key.removesuffix(".weight")).weight
            assert torch.equal(stored.codes, value[0]) and torch.equal(stored.scale, value[1]), key
            assert (stored.codes.dtype, stored.scale.dtype) == (value[0].dtype, value[1].dtype), key
        else:
            assert scheme == "fp32" or not key.endswith(("wte.weight", "wpe.weight", "c_attn.weight", "c_proj.weight",
                                                         "c_fc.weight")), key
            assert torch.equal(packaged.state_dict()[key], value), key


# -- Llama (notebook 11) ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("seed", range(3))
def test_llama_block_matches_the_reference_pieces(seed, n_kv_head):
    # llmcourse.llama's block (nn.RMSNorm, rotate with rope_tables, SDPA with enable_gqa, SwiGLU) against the same
    # block put together from the reference's NumPy functions, on a left-padded batch with per-row positions.
    config = LlamaConfig(vocab_size=11, block_size=16, n_layer=1, n_head=4, n_kv_head=n_kv_head, n_embd=32, hidden=88)
    block = random_llama(config, seed=seed).model.layers[0]
    ref = {name: reference(f"llama.{name}") for name in ("rmsnorm_forward", "apply_rope", "gqa_attention", "swiglu")}
    rng = np.random.default_rng(seed)
    B, T, C, hd = 2, 6, config.n_embd, config.head_dim
    x = rng.normal(size=(B, T, C)).astype(np.float32)
    real = np.arange(T)[None, :] >= np.array([[2], [0]])  # row 0 has two padding tokens in front
    positions = np.maximum(np.cumsum(real, axis=1) - 1, 0)  # (B, T)
    mask = np.tril(np.ones((T, T), dtype=bool))[None, None] & real[:, None, None, :]  # (B, 1, T, T)
    mask |= np.eye(T, dtype=bool)  # padding queries see themselves: no empty rows
    weights = {name: p.detach().numpy() for name, p in block.state_dict().items()}

    h = ref["rmsnorm_forward"](x, weights["input_layernorm.weight"], config.rms_norm_eps)
    q, k, v = ((h @ weights[f"self_attn.{n}_proj.weight"].T).reshape(B, T, -1, hd).transpose(0, 2, 1, 3)
               for n in "qkv")
    q, k = (ref["apply_rope"](a, positions[:, None, :], config.rope_theta) for a in (q, k))
    y = ref["gqa_attention"](q, k, v, mask).transpose(0, 2, 1, 3).reshape(B, T, C)
    x2 = x + y @ weights["self_attn.o_proj.weight"].T
    h = ref["rmsnorm_forward"](x2, weights["post_attention_layernorm.weight"], config.rms_norm_eps)
    expected = x2 + ref["swiglu"](h, *(weights[f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down")))

    cos, sin = (table[torch.from_numpy(positions)][:, None] for table in rope_tables(config))  # (B, 1, T, hd)
    with torch.no_grad():
        got = block(torch.from_numpy(x), (cos, sin), torch.from_numpy(mask), None, 0).numpy()
    close(got, expected, np.float32)  # float32, positions < 6: the tables' float32 angles are within ~1e-7


# -- attention without the T x T matrix, serving (notebooks 12 and 13) -----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=30)
@given(seed=seeds, sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5), scale=st.sampled_from([1.0, 300.0]))
def test_online_softmax_matches(dtype, seed, sizes, scale):
    rng = np.random.default_rng(seed)
    chunks = [(rng.normal(size=n) * scale).astype(dtype) for n in sizes] + [np.array([0.5], dtype)]
    close(tiled.online_softmax(chunks).astype(dtype), reference("tiled.online_softmax")(chunks), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(deadline=None, max_examples=30)
@given(seed=seeds, T=st.integers(1, 9), extra=st.integers(0, 6), block=st.integers(1, 10), causal=st.booleans())
def test_tiled_attention_matches(dtype, seed, T, extra, block, causal):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, T, 4)).astype(dtype)
    k, v = (rng.normal(size=(2, T + extra, 4)).astype(dtype) for _ in range(2))
    got = tiled.tiled_attention(q, k, v, block, causal=causal)
    assert got.dtype == dtype
    close(got, reference("tiled.tiled_attention")(q, k, v, block, causal), dtype)


@settings(deadline=None, max_examples=60)
@given(seed=seeds, k=st.integers(0, 6), vocab=st.integers(2, 5))
def test_verify_greedy_matches_verify_draft(seed, k, vocab):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.integers(0, 3, size=(k + 1, vocab)).astype(np.float32))  # ties in the argmax
    draft = logits.argmax(-1)[:k].tolist() if seed % 2 else rng.integers(0, vocab, size=k).tolist()
    assert verify_greedy(logits, draft) == reference("serving.verify_draft")(logits, draft)


@settings(deadline=None, max_examples=30)
@given(seed=seeds, block_size=st.integers(1, 5), steps=st.lists(st.integers(1, 4), min_size=1, max_size=6))
def test_paged_cache_matches_paged_append_and_gather(seed, block_size, steps):
    # One layer, one head of width 3: the package's pool (n_blocks, heads, block_size, D) against the exercise's
    # (n_blocks, block_size, D), fed the same keys; the same blocks taken in the same order, the same keys read back.
    config = GPTConfig(vocab_size=5, block_size=64, n_layer=1, n_head=1, n_embd=3)
    n_blocks = -(-sum(steps) // block_size)
    cache, pool = PagedKVCache(config, n_blocks, block_size), np.zeros((n_blocks, block_size, 3), np.float32)
    table, free = [], list(range(n_blocks - 1, -1, -1))  # the package's free stack: the lowest block first
    rng, length = np.random.default_rng(seed), 0
    for n in steps:
        x = rng.normal(size=(n, 3)).astype(np.float32)
        cache.reserve("s", n)
        cache.write(0, "s", length, torch.from_numpy(x)[None], torch.from_numpy(x)[None])
        cache.lengths["s"] = length = reference("serving.paged_append")(pool, table, free, length, x)
        assert cache.tables["s"] == table
    keys, _ = cache.read(0, "s", length)
    np.testing.assert_array_equal(keys[0].numpy(), reference("serving.paged_gather")(pool, table, length))
