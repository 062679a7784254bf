"""Graded tests of notebook 08 (batching): padding mask, per-row positions, one continuous-batching scheduler step."""

import numpy as np
import torch

from llmcourse.grading import assert_equal_ids, exercise, expect_error


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
