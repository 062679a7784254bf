"""generate() and beam_search(): cached == uncached, batches, eos, seeds, bad arguments; properties of the filters."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llmcourse.course.loader import reference
from llmcourse.generate import beam_search, check_sampling_args, generate, next_token
from llmcourse.gpt import GPT, GPTConfig, random_gpt

apply_temperature = reference("decoding.apply_temperature")
top_k_filter = reference("decoding.top_k_filter")
top_p_filter = reference("decoding.top_p_filter")
beam_step = reference("decoding.beam_step")

VOCAB, BLOCK = 23, 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs fastest on one thread; on a busy machine extra threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> GPT:
    """A tiny random GPT whose logits are far apart (embeddings with std 1), so argmax never hinges on rounding."""
    gpt = random_gpt(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        gpt.transformer.wte.weight.normal_(0.0, 1.0)
    return gpt


def prompts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


SETTINGS = [
    dict(temperature=0.0),
    dict(temperature=1.0, seed=1),
    dict(temperature=0.8, top_k=5, seed=2),
    dict(temperature=1.3, top_p=0.9, seed=3),
    dict(temperature=0.7, top_k=8, top_p=0.8, seed=4),
]


# -- cached == uncached ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", SETTINGS, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_cache_and_no_cache_give_identical_tokens(model, kwargs):
    prompt = prompts(2, 5)
    cached = generate(model, prompt, 9, use_cache=True, **kwargs)
    uncached = generate(model, prompt, 9, use_cache=False, **kwargs)
    assert cached.shape == (2, 14)
    assert torch.equal(cached, uncached), f"cached and uncached generation differ:\n{cached}\n{uncached}"
    assert torch.equal(cached[:, :5], prompt), "the output must start with the prompt"


@pytest.mark.parametrize("prompt_len", [4, BLOCK - 1, BLOCK, BLOCK + 5])
def test_context_beyond_block_size_matches_the_cropping_path(model, prompt_len):
    prompt = prompts(1, prompt_len, seed=5)[0]
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0, seed=7)):
        cached = generate(model, prompt, 2 * BLOCK, use_cache=True, **kwargs)
        uncached = generate(model, prompt, 2 * BLOCK, use_cache=False, **kwargs)
        assert cached.shape == (prompt_len + 2 * BLOCK,)
        assert torch.equal(cached, uncached)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       top_k=st.one_of(st.none(), st.integers(1, VOCAB + 3)), top_p=st.one_of(st.none(), st.floats(0.05, 1.0)))
def test_cached_equals_uncached_property(model, seed, temperature, top_k, top_p):
    prompt = prompts(2, 3, seed=seed % 1000)
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    assert torch.equal(generate(model, prompt, 6, **kwargs), generate(model, prompt, 6, use_cache=False, **kwargs))


# -- batches, shapes, seeds --------------------------------------------------------------------------------------

def test_batch_of_two_equals_each_row_alone_when_greedy(model):
    prompt = prompts(2, 6, seed=11)
    batch = generate(model, prompt, 8, temperature=0)
    for row in range(2):
        alone = generate(model, prompt[row], 8, temperature=0)
        assert torch.equal(batch[row], alone), f"row {row} of the batch differs from generating it alone"


def test_one_dimensional_prompt_gives_one_dimensional_output(model):
    out = generate(model, torch.tensor([1, 2, 3]), 4, seed=0)
    assert out.shape == (7,) and out.dtype == torch.int64
    assert out[:3].tolist() == [1, 2, 3]


def test_zero_new_tokens_returns_the_prompt(model):
    prompt = prompts(2, 4)
    for use_cache in (True, False):
        assert torch.equal(generate(model, prompt, 0, use_cache=use_cache), prompt)


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    prompt = prompts(2, 4, seed=3)
    first = generate(model, prompt, 12, temperature=1.5, seed=42)
    assert torch.equal(first, generate(model, prompt, 12, temperature=1.5, seed=42))
    assert not torch.equal(first, generate(model, prompt, 12, temperature=1.5, seed=43))


def test_seed_none_follows_the_global_generator(model):
    prompt = prompts(1, 4)
    torch.manual_seed(5)
    first = generate(model, prompt, 10, temperature=1.5)
    torch.manual_seed(5)
    assert torch.equal(first, generate(model, prompt, 10, temperature=1.5))


def test_generate_does_not_touch_the_global_generator_when_seeded(model):
    torch.manual_seed(9)
    expected = torch.rand(3)
    torch.manual_seed(9)
    generate(model, prompts(1, 3), 5, temperature=1.0, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_top_k_one_is_greedy(model):
    prompt = prompts(2, 5, seed=8)
    assert torch.equal(generate(model, prompt, 8, temperature=1.0, top_k=1, seed=0),
                       generate(model, prompt, 8, temperature=0))


def test_sampled_tokens_stay_inside_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).expand(500, 4)
    gen = torch.Generator().manual_seed(0)
    tokens = next_token(logits, temperature=1.0, top_p=0.8, generator=gen)
    assert set(tokens.tolist()) == {0, 1}  # only the two tokens of the 0.8 nucleus are ever drawn


# -- eos ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
def test_rows_keep_emitting_eos_after_it(model, use_cache):
    prompt = prompts(2, 4, seed=12)
    free = generate(model, prompt, 10, temperature=1.0, seed=6)
    eos = int(free[0, 6])  # the third token row 0 generates
    out = generate(model, prompt, 10, temperature=1.0, seed=6, eos_id=eos, use_cache=use_cache)
    assert out.shape == free.shape
    for row in range(2):
        new = out[row, 4:].tolist()
        if eos in new:
            first = new.index(eos)
            assert new[first:] == [eos] * (len(new) - first), f"row {row} emitted something after eos: {new}"
            assert new[:first] == free[row, 4:4 + first].tolist(), "tokens before eos must be those without eos"
        else:
            assert new == free[row, 4:].tolist()
    assert out[0, 4:].tolist()[2:] == [eos] * 8


def test_generation_stops_early_when_every_row_finished(model):
    prompt = prompts(1, 4, seed=13)
    greedy = generate(model, prompt, 3, temperature=0)
    eos = int(greedy[0, 4])  # the first greedy token: every row finishes at once
    out = generate(model, prompt, 20, temperature=0, eos_id=eos)
    assert out[0, 4:].tolist() == [eos] * 20


# -- bad arguments -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must lie in \(0, 1\]"),
    (dict(top_k=0), "top_k must be at least 1"),
    (dict(eos_id=VOCAB), "eos_id must be a token id"),
])
def test_bad_sampling_arguments_are_rejected(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompts(1, 3), 2, **kwargs)


def test_bad_prompts_and_lengths_are_rejected(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, torch.tensor([], dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate(model, prompts(1, 3), -1)
    with pytest.raises(TypeError, match="integer token ids"):
        generate(model, torch.zeros(3), 2)
    with pytest.raises(TypeError, match="torch tensor"):
        generate(model, [1, 2, 3], 2)
    with pytest.raises(ValueError, match="shape"):
        generate(model, torch.zeros(1, 1, 3, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, torch.tensor([VOCAB]), 2)
    with pytest.raises(TypeError, match="top_k must be an int"):
        check_sampling_args(1.0, 2.5, None)


def test_filters_reject_bad_arguments():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(logits, 0.0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\]"):
        top_p_filter(logits, 0.0)
    with pytest.raises(TypeError, match="floating-point"):
        top_k_filter(torch.zeros(2, 5, dtype=torch.int64), 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        top_p_filter(np.zeros((2, 5)), 0.5)
    with pytest.raises(ValueError, match="beam_width"):
        beam_step(torch.zeros(2), torch.zeros(2, 3), 7)
    with pytest.raises(ValueError, match="shape"):
        beam_step(torch.zeros(2), torch.zeros(3, 3), 1)


# -- beam search -------------------------------------------------------------------------------------------------

def test_beam_width_one_is_greedy(model):
    prompt = prompts(1, 5, seed=14)[0]
    sequences, scores = beam_search(model, prompt, 10, 1)
    assert torch.equal(sequences[0], generate(model, prompt, 10, temperature=0))
    log_probs = torch.log_softmax(model(sequences[:, :-1]), dim=-1)[0, 4:]  # (10, V) for each new token
    expected = log_probs.gather(-1, sequences[0, 5:, None]).sum()
    torch.testing.assert_close(scores[0], expected, rtol=1.3e-6, atol=1e-5)  # float32 sums of 10 log-probs


def test_beam_search_scores_are_sorted_and_true_log_probs(model):
    prompt = prompts(1, 4, seed=15)[0]
    sequences, scores = beam_search(model, prompt, 6, 4)
    assert sequences.shape == (4, 10) and scores.shape == (4,)
    assert torch.all(scores[:-1] >= scores[1:])
    assert len({tuple(s.tolist()) for s in sequences}) == 4, "beams must be distinct"
    log_probs = torch.log_softmax(model(sequences[:, :-1]), dim=-1)[:, 3:]  # (4, 6, V)
    expected = log_probs.gather(-1, sequences[:, 4:, None])[..., 0].sum(dim=-1)
    torch.testing.assert_close(scores, expected, rtol=1.3e-6, atol=1e-5)


def test_wider_beams_find_at_least_as_likely_a_sequence_on_a_short_horizon(model):
    # with two new tokens and a beam as wide as the vocabulary, beam search is exhaustive
    prompt = prompts(1, 4, seed=16)[0]
    _, greedy = beam_search(model, prompt, 2, 1)
    _, exhaustive = beam_search(model, prompt, 2, VOCAB)
    assert exhaustive[0] >= greedy[0]


def test_finished_beams_repeat_eos(model):
    prompt = prompts(1, 4, seed=17)[0]
    sequences, _ = beam_search(model, prompt, 6, 3)
    eos = int(sequences[0, 5])  # the best beam's second token
    finished, _ = beam_search(model, prompt, 6, 3, eos_id=eos)
    for beam in finished[:, 4:].tolist():
        if eos in beam:
            assert beam[beam.index(eos):] == [eos] * (len(beam) - beam.index(eos))


def test_beam_search_rejects_batches_and_bad_widths(model):
    with pytest.raises(ValueError, match=r"one prompt of shape \(T,\)"):
        beam_search(model, prompts(2, 3), 2, 2)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(model, prompts(1, 3)[0], 2, 0)


# -- properties of the filters -----------------------------------------------------------------------------------

distinct_rows = st.lists(st.integers(-400, 400), min_size=1, max_size=30, unique=True).map(
    lambda values: torch.tensor(values, dtype=torch.float64) / 37.0)


@settings(max_examples=100, deadline=None)
@given(logits=distinct_rows, k=st.integers(1, 40))
def test_top_k_keeps_exactly_k_largest_without_ties(logits, k):
    out = top_k_filter(logits, k)
    kept = torch.isfinite(out)
    assert int(kept.sum()) == min(k, logits.numel())
    assert torch.equal(out[kept], logits[kept])
    if not kept.all():
        assert logits[kept].min() > logits[~kept].max()


@settings(max_examples=100, deadline=None)
@given(logits=distinct_rows, p=st.floats(1e-3, 1.0))
def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p(logits, p):
    probs = torch.softmax(logits, dim=-1)
    out = top_p_filter(logits, p)
    kept = torch.isfinite(out)
    mass = float(probs[kept].sum())
    smallest = float(probs[kept].min())
    assume(abs(mass - p) > 1e-9 and abs(mass - smallest - p) > 1e-9)  # away from the boundary's rounding
    assert torch.equal(out[kept], logits[kept])
    assert mass >= p or kept.all(), f"kept mass {mass} < p = {p}"
    assert mass - smallest < p, "dropping the least likely kept token should leave less than p"
    if not kept.all():
        assert logits[kept].min() > logits[~kept].max(), "top-p must keep the most likely tokens"


@settings(max_examples=50, deadline=None)
@given(logits=distinct_rows, t=st.floats(0.05, 20.0))
def test_temperature_keeps_the_ranking_and_moves_entropy_the_right_way(logits, t):
    scaled = apply_temperature(logits, t)
    assert torch.equal(scaled.argsort(), logits.argsort())

    def entropy(x):
        prob = torch.softmax(x, dim=-1)
        return float(-(prob * torch.log(prob.clamp_min(1e-300))).sum())

    h, h_t = entropy(logits), entropy(scaled)
    assert (h_t >= h - 1e-9) if t >= 1 else (h_t <= h + 1e-9)


@settings(max_examples=50, deadline=None)
@given(W=st.integers(1, 4), V=st.integers(1, 6), seed=st.integers(0, 10_000), data=st.data())
def test_beam_step_returns_the_best_candidates(W, V, seed, data):
    width = data.draw(st.integers(1, W * V))
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(W, generator=gen, dtype=torch.float64)
    log_probs = torch.log_softmax(torch.randn(W, V, generator=gen, dtype=torch.float64), dim=-1)
    beam, token, new = beam_step(scores, log_probs, width)
    total = scores[:, None] + log_probs
    assert torch.equal(new, total[beam, token])
    assert torch.all(new[:-1] >= new[1:])
    assert len(set(zip(beam.tolist(), token.tolist()))) == width
    assert math.isclose(float(new.sum()), float(total.flatten().sort(descending=True).values[:width].sum()),
                        rel_tol=1e-12, abs_tol=1e-12)


def test_sequence_log_probs_adds_the_log_probs_of_the_new_tokens(model):
    from llmcourse.generate import sequence_log_probs

    seq = prompts(2, 7, seed=18)
    total = torch.zeros(2)
    for t in range(3, 7):  # each new token, predicted from the tokens before it
        total += torch.log_softmax(model(seq[:, :t])[:, -1], dim=-1).gather(-1, seq[:, t:t + 1])[:, 0]
    torch.testing.assert_close(sequence_log_probs(model, seq, 3), total, rtol=1.3e-6, atol=1e-5)  # float32 sums
    assert torch.equal(sequence_log_probs(model, seq[0], 7), torch.zeros(1))
    with pytest.raises(ValueError, match="prompt_len"):
        sequence_log_probs(model, seq, 0)
    with pytest.raises(ValueError, match="context"):
        sequence_log_probs(model, prompts(1, BLOCK + 1)[0], 2)


def test_numpy_numbers_are_accepted(model):
    prompt = prompts(1, 3)
    out = generate(model, prompt, np.int64(4), temperature=np.float64(0.8), top_k=np.int64(5), top_p=np.float32(0.9),
                   seed=0)
    assert torch.equal(out, generate(model, prompt, 4, temperature=0.8, top_k=5, top_p=float(np.float32(0.9)), seed=0))
