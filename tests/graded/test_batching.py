"""Graded tests of notebook 08 (batching): padding mask, per-row positions, one continuous-batching scheduler step."""

import numpy as np
import torch

from llmcourse.course.grading import assert_equal_ids, exercise, expect_error


def _as_int(mask) -> np.ndarray:
    return np.asarray(mask).astype(np.int64)


# -- padding_mask -------------------------------------------------------------------------------------------------

@exercise("padding_mask")
def test_padding_mask_hand_computed(impl):
    got = impl.batching.padding_mask([2, 4, 1])
    expected = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert np.asarray(got).dtype == bool, f"padding_mask should return booleans, got dtype {np.asarray(got).dtype}"
    # Booleans: exact.
    assert_equal_ids(_as_int(got), expected, what="padding_mask([2, 4, 1]) (1 = real token)")


@exercise("padding_mask")
def test_padding_mask_with_width_matches_torch(impl):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=6)
    got = impl.batching.padding_mask(lengths, width=10)
    t = torch.from_numpy(lengths)
    expected = torch.arange(10)[None, :] >= (10 - t)[:, None]  # the left-padding rule, in PyTorch
    assert_equal_ids(_as_int(got), expected.long(), what=f"padding_mask({lengths.tolist()}, width=10)")
    row_sums = np.asarray(got).sum(axis=1)
    assert (row_sums == lengths).all(), f"each row must hold as many True as its length: {row_sums} vs {lengths}"


@exercise("padding_mask")
def test_padding_mask_single_row_and_empty_prompt(impl):
    got = impl.batching.padding_mask([3])
    assert_equal_ids(_as_int(got), np.ones((1, 3), np.int64), what="padding_mask([3]) (no padding needed)")
    with expect_error(ValueError, match="at least one token", what="padding_mask([3, 0]) (a row of length 0)"):
        impl.batching.padding_mask([3, 0])


# -- row_positions ------------------------------------------------------------------------------------------------

@exercise("positions")
def test_row_positions_hand_computed(impl):
    mask = np.array([[False, False, True, True], [True, True, True, True]])
    got = impl.batching.row_positions(mask)
    # Integer positions: exact.
    assert_equal_ids(got, np.array([[0, 0, 0, 1], [0, 1, 2, 3]]), what="row_positions of lengths [2, 4]")


@exercise("positions")
def test_row_positions_match_torch_cumsum(impl):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, size=5)
    mask = np.arange(12)[None, :] >= (12 - lengths)[:, None]
    got = impl.batching.row_positions(mask)
    m = torch.from_numpy(mask)
    expected = (m.long().cumsum(-1) - 1).masked_fill(~m, 0)  # Hugging Face's position_ids for left padding
    assert_equal_ids(got, expected, what=f"row_positions for lengths {lengths.tolist()}")
    assert np.asarray(got).dtype == np.int64, f"row_positions should return int64, got {np.asarray(got).dtype}"


@exercise("positions")
def test_row_positions_real_tokens_count_from_zero(impl):
    mask = np.array([[False, False, False, True]])  # a one-token prompt after three pads
    got = impl.batching.row_positions(mask)
    assert_equal_ids(got, np.array([[0, 0, 0, 0]]), what="row_positions of a one-token row")
    full = impl.batching.row_positions(np.ones((2, 5), bool))
    assert_equal_ids(full, np.tile(np.arange(5), (2, 1)), what="row_positions without padding (0..S-1)")


# -- scheduler_step -----------------------------------------------------------------------------------------------

@exercise("scheduler_step")
def test_scheduler_step_docstring_example(impl):
    slots, finished, waiting = ["a", "b", None], [True, False, False], ["c", "d", "e"]
    got = impl.batching.scheduler_step(slots, finished, waiting)
    expected = (["c", "b", "d"], [(0, "c"), (2, "d")], ["a"])
    assert tuple(got) == expected, f"scheduler_step gave {tuple(got)}, expected {expected}"
    assert slots == ["a", "b", None] and waiting == ["c", "d", "e"], "scheduler_step must not modify its inputs"


@exercise("scheduler_step")
def test_scheduler_step_running_requests_keep_their_rows(impl):
    slots, finished = [0, 1, 2, 3], [False, True, False, True]
    new_slots, joined, left = impl.batching.scheduler_step(slots, finished, [7])
    assert left == [1, 3], f"the finished requests 1 and 3 should leave (in row order), got {left}"
    assert new_slots == [0, 7, 2, None], f"request 7 should take row 1 and row 3 stay free, got {new_slots}"
    assert joined == [(1, 7)], f"joined should be [(1, 7)], got {joined}"


@exercise("scheduler_step")
def test_scheduler_step_nothing_waiting_and_nothing_finished(impl):
    got = impl.batching.scheduler_step([None, None], [False, False], [])
    assert tuple(got) == ([None, None], [], []), f"an idle batch with no requests should stay idle, got {tuple(got)}"
    got = impl.batching.scheduler_step([None, None, None], [False] * 3, [5, 6])
    assert tuple(got) == ([5, 6, None], [(0, 5), (1, 6)], []), f"free rows fill lowest first, got {tuple(got)}"


@exercise("scheduler_step")
def test_scheduler_step_simulation_serves_everyone_once(impl):
    rng = np.random.default_rng(2)
    remaining = {r: int(n) for r, n in enumerate(rng.integers(1, 6, size=9))}  # request -> tokens still to make
    waiting, slots, served, steps = list(remaining), [None] * 3, [], 0
    finished = [False] * 3
    while waiting or any(s is not None for s in slots):
        slots, joined, left = impl.batching.scheduler_step(slots, finished, waiting)
        served += left
        taken = [request for _, request in joined]
        assert taken == waiting[:len(taken)], \
            f"requests must join first come, first served: took {taken} from {waiting}"
        waiting = waiting[len(taken):]
        assert all(s is not None for s in slots) or not waiting, f"a row is free while {waiting} wait: {slots}"
        for s in slots:
            if s is not None:
                remaining[s] -= 1
        finished = [s is not None and remaining[s] == 0 for s in slots]
        steps += 1
        assert steps < 100, "the scheduler never drains the queue"
    assert sorted(served) == list(range(9)), f"every request must leave exactly once, got {sorted(served)}"


# -- generate_batch (challenge) ------------------------------------------------------------------------------------

PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]


def _gpt(seed: int, dtype=torch.float64):
    from llmcourse.gpt import GPTConfig, random_gpt
    return random_gpt(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=seed).to(dtype)


def _check_generate_batch(impl, model, prompts, max_new_tokens: int, what: str, **kwargs) -> list:
    """The learner's rows against the package's generate_batch, and each against generate on its prompt alone."""
    from llmcourse.batching import generate_batch
    from llmcourse.generate import generate

    got = impl.batching.generate_batch(model.state_dict(), model.config.n_head, prompts, max_new_tokens, **kwargs)
    assert isinstance(got, list) and len(got) == len(prompts), \
        f"generate_batch should return a list of {len(prompts)} tensors, one per prompt, got {type(got).__name__}"
    expected = generate_batch(model, prompts, max_new_tokens, **kwargs)
    for b, (row, prompt) in enumerate(zip(got, prompts)):
        assert isinstance(row, torch.Tensor) and row.dtype == torch.int64, \
            f"row {b} should be an int64 tensor, got {getattr(row, 'dtype', type(row).__name__)}"
        # Token ids: exactly the package's, and exactly what generate gives for the prompt alone.
        assert_equal_ids(row, expected[b], what=f"row {b} ({what})")
        alone = generate(model, torch.tensor(prompt), max_new_tokens,
                         **{key: value for key, value in kwargs.items() if key != "pad_id"})
        assert_equal_ids(row, alone, what=f"row {b} ({what}) against generate on prompt {b} alone")
    return got


@exercise("generate_batch")
def test_generate_batch_greedy_matches_the_package(impl):
    _check_generate_batch(impl, _gpt(0), PROMPTS, 8, "greedy", temperature=0.0)


@exercise("generate_batch")
def test_generate_batch_sampled_rows_with_their_own_generators(impl):
    _check_generate_batch(impl, _gpt(1), PROMPTS, 8, "temperature 0.8, seed 3", temperature=0.8, seed=3)
    _check_generate_batch(impl, _gpt(2), [[7, 8], [9, 10, 11, 12]], 5, "temperature 1.5, seed 0", temperature=1.5,
                          seed=0)


def _eos_that_matters(rows: list, prompts: list) -> int:
    """A token after whose first appearance some row emits another token: held at eos, that row changes (a random
    model repeats itself a lot, so an arbitrary eos often changes nothing)."""
    for row, prompt in zip(rows, prompts):
        new = row[len(prompt):].tolist()
        for j, token in enumerate(new[:-1]):
            if token not in new[:j] and any(later != token for later in new[j + 1:]):
                return token
    raise AssertionError("no token of these rows can serve as an eos that changes them")


@exercise("generate_batch")
def test_generate_batch_holds_finished_rows_at_eos(impl):
    from llmcourse.batching import generate_batch

    for seed, kwargs in ((7, dict(temperature=0.0)), (4, dict(temperature=1.2, seed=5))):
        model = _gpt(seed)
        free = generate_batch(model, PROMPTS, 8, **kwargs)
        eos = _eos_that_matters(free, PROMPTS)
        held = _check_generate_batch(impl, model, PROMPTS, 8, f"{kwargs}, eos_id {eos}", eos_id=eos, **kwargs)
        assert any(a.tolist() != b.tolist() for a, b in zip(held, free))  # eos_id changed something
    model, prompt = _gpt(4), [[7, 30, 2]]  # one row, sampled: it finishes, then the rest is eos
    eos = _eos_that_matters(generate_batch(model, prompt, 8, temperature=1.2, seed=5), prompt)
    got = _check_generate_batch(impl, model, prompt, 8, f"one row, eos_id {eos}", temperature=1.2, seed=5,
                                eos_id=eos)
    first = got[0].tolist().index(eos, len(prompt[0]))
    assert got[0][first:].tolist() == [eos] * (len(got[0]) - first), \
        f"once every row has emitted eos_id, the rest is eos_id: got new tokens {got[0][1:].tolist()}"
    # Every row finishes after new tokens of its own: those stay as they were (only what follows eos_id is eos_id).
    pairs = [[PROMPTS[i], PROMPTS[j]] for i in range(len(PROMPTS)) for j in range(i + 1, len(PROMPTS))]
    for seed, prompts in ((seed, prompts) for seed in range(10) for prompts in pairs):
        model = _gpt(seed)
        rows = [row.tolist()[len(p):] for row, p in zip(generate_batch(model, prompts, 8, temperature=0.0), prompts)]
        late = [t for t in set(rows[0]) & set(rows[1]) if max(r.index(t) for r in rows) >= 1]
        if late:
            _check_generate_batch(impl, model, prompts, 8, f"two greedy rows, both finishing, eos_id {min(late)}",
                                  temperature=0.0, eos_id=min(late))
            break
    else:
        raise AssertionError("no model and pair of prompts has a token both rows emit, one after another token")


@exercise("generate_batch")
def test_generate_batch_float32_pad_id_and_no_new_tokens(impl):
    model = _gpt(5, torch.float32)
    a = _check_generate_batch(impl, model, PROMPTS, 6, "float32, greedy, pad_id 0", temperature=0.0)
    b = _check_generate_batch(impl, model, PROMPTS, 6, "float32, greedy, pad_id 39", temperature=0.0, pad_id=39)
    for b_row, (x, y) in enumerate(zip(a, b)):
        assert_equal_ids(x, y, what=f"row {b_row} with pad_id 39 against pad_id 0 (padding is never seen)")
    got = impl.batching.generate_batch(model.state_dict(), 2, PROMPTS, 0)
    for row, prompt in zip(got, PROMPTS):
        assert_equal_ids(row, torch.tensor(prompt), what="generate_batch with max_new_tokens 0 (the prompt itself)")


@exercise("generate_batch")
def test_generate_batch_rejects_bad_input(impl):
    model = _gpt(6)
    weights = model.state_dict()
    impl.batching.generate_batch(weights, 2, PROMPTS, 2, temperature=0.0)  # a valid call first
    bad = [("no prompts", ([], 2), {}), ("an empty prompt", ([[1, 2], []], 2), {}),
           ("a tensor of prompts", (torch.tensor([[1, 2]]), 2), {}),
           ("max_new_tokens -1", (PROMPTS, -1), {}), ("temperature -0.5", (PROMPTS, 2), {"temperature": -0.5}),
           ("a prompt of 14 tokens and 4 new ones in 16 positions", ([list(range(14))], 4), {"temperature": 0.0})]
    for what, args, kwargs in bad:
        with expect_error(ValueError, what=f"generate_batch with {what}"):
            impl.batching.generate_batch(weights, 2, *args, **kwargs)
    got = impl.batching.generate_batch(weights, 2, [list(range(14))], 3, temperature=0.0)  # 14 + 3 - 1 = 16: fits
    assert len(got[0]) == 17, "a prompt of 14 tokens and 3 new ones fit 16 positions (the last one is never fed back)"
