"""Batching: padded batches equal one-by-one generation; static and continuous serving give identical outputs."""

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.batching import Request, generate_batch, serve_continuous, serve_static, simulate_schedule
from llmcourse.course.grading import assert_equal_ids
from llmcourse.course.loader import reference
from llmcourse.generate import generate
from llmcourse.gpt import GPTConfig, random_gpt

padding_mask = reference("batching.padding_mask")
row_positions = reference("batching.row_positions")
scheduler_step = reference("batching.scheduler_step")
left_pad = reference("batching.left_pad")

TINY = GPTConfig(vocab_size=60, block_size=48, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def model():
    return random_gpt(TINY)


def _requests(count: int, seed: int, arrival_step: float = 0.0) -> list[Request]:
    rng = random.Random(seed)
    return [Request(i, tuple(rng.randrange(60) for _ in range(rng.randint(1, 9))), rng.randint(1, 25),
                    arrival=i * arrival_step) for i in range(count)]


def _alone(model, requests, **kwargs) -> dict[int, list[int]]:
    return {r.id: generate(model, torch.tensor(r.prompt), r.max_new_tokens, **kwargs)[len(r.prompt):].tolist()
            for r in requests}


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 10), min_size=1, max_size=6), extra=st.integers(0, 3))
def test_mask_and_positions_match_pytorch(lengths, extra):
    width = max(lengths) + extra
    mask = padding_mask(lengths, width)
    m = torch.arange(width)[None, :] >= (width - torch.tensor(lengths))[:, None]
    assert_equal_ids(mask.astype(np.int64), m.long(), what="padding_mask")
    expected = (m.long().cumsum(-1) - 1).masked_fill(~m, 0)
    assert_equal_ids(row_positions(mask), expected, what="row_positions")


def test_left_pad_right_aligns_every_prompt():
    ids, mask = left_pad([[5, 6], [1, 2, 3]], pad_id=9)
    assert_equal_ids(ids, np.array([[9, 5, 6], [1, 2, 3]]), what="left-padded ids")
    assert mask.tolist() == [[False, True, True], [True, True, True]]


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=1.0, top_k=12, seed=4)],
                         ids=["greedy", "sampling"])
def test_batched_generation_equals_one_by_one(model, kwargs):
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3], [5], [8, 9, 7, 9]]
    batched = generate_batch(model, prompts, 20, **kwargs)
    for prompt, row in zip(prompts, batched):
        assert_equal_ids(row, generate(model, torch.tensor(prompt), 20, **kwargs), what=f"batched row {prompt}")


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_batched_generation_equals_one_by_one_property(model, lengths, seed):
    rng = random.Random(seed)
    prompts = [[rng.randrange(60) for _ in range(n)] for n in lengths]
    batched = generate_batch(model, prompts, 6, temperature=0.0)
    for prompt, row in zip(prompts, batched):
        assert_equal_ids(row, generate(model, torch.tensor(prompt), 6, temperature=0.0), what="batched row")


def test_batched_generation_stops_rows_at_eos(model):
    prompts = [[1, 2], [3, 4, 5]]
    alone = [generate(model, torch.tensor(p), 10, temperature=0.0) for p in prompts]
    eos = int(alone[0][4])  # a token the first row emits at its third step
    batched = generate_batch(model, prompts, 10, temperature=0.0, eos_id=eos)
    for prompt, row in zip(prompts, batched):
        assert_equal_ids(row, generate(model, torch.tensor(prompt), 10, temperature=0.0, eos_id=eos),
                         what="batched row with eos")


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=1.0, seed=11)],
                         ids=["greedy", "sampling"])
def test_static_and_continuous_serving_give_identical_outputs(model, kwargs):
    requests = _requests(11, seed=0)
    expected = _alone(model, requests, **kwargs)
    static = serve_static(model, requests, 4, **kwargs)
    continuous = serve_continuous(model, requests, 4, **kwargs)
    assert static.outputs() == expected, "static batching changed some request's tokens"
    assert continuous.outputs() == expected, "continuous batching changed some request's tokens"
    assert continuous.steps < static.steps, "continuous batching should need fewer model calls than static batching"
    assert static.tokens == continuous.tokens == sum(r.max_new_tokens for r in requests)


def test_continuous_serving_with_arrivals_and_a_full_cache(model):
    # Requests arrive over time, and the longest request fills the cache exactly (block_size), so rows get compacted.
    requests = _requests(7, seed=1, arrival_step=0.01) + [Request(99, (1, 2, 3), TINY.block_size - 2, arrival=0.0)]
    report = serve_continuous(model, requests, 3)
    assert report.outputs() == _alone(model, requests, temperature=0.0)
    assert all(c.latency > 0 for c in report.completions.values())


def test_scheduler_keeps_rows_of_running_requests():
    slots, joined, left = scheduler_step([1, 2, 3], [False, True, False], [4, 5])
    assert (slots, joined, left) == ([1, 4, 3], [(1, 4)], [2])
    with pytest.raises(ValueError, match="free"):
        scheduler_step([None], [True], [])
    with pytest.raises(ValueError, match="two rows"):
        scheduler_step([1, 1], [False, False], [])


def test_simulated_schedules_give_every_request_its_steps():
    lengths = [5, 2, 8, 3, 3, 6, 1, 4]
    static, continuous = simulate_schedule(lengths, 3, continuous=False), simulate_schedule(lengths, 3)
    for spans in (static, continuous):
        assert sorted(r for r, *_ in spans) == list(range(8))
        assert all(stop - start == lengths[r] for r, _, start, stop in spans)
        for row in range(3):  # a row runs one request at a time
            busy = sorted((start, stop) for _, r, start, stop in spans if r == row)
            assert all(a[1] <= b[0] for a, b in zip(busy, busy[1:]))
    assert max(s[3] for s in continuous) == 12 < max(s[3] for s in static) == 18


def test_bad_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="non-empty list"):
        generate_batch(model, [], 3)
    with pytest.raises(ValueError, match="at least one token"):
        generate_batch(model, [[1, 2], []], 3)
    with pytest.raises(ValueError, match="context holds 48"):
        generate_batch(model, [[1] * 40], 10)
    with pytest.raises(ValueError, match="no requests"):
        serve_continuous(model, [], 2)
    with pytest.raises(ValueError, match="empty prompt"):
        serve_static(model, [Request(0, (), 3)], 2)
    with pytest.raises(ValueError, match="request 0 needs 50 positions"):
        serve_continuous(model, [Request(0, (1,) * 30, 21)], 2)
