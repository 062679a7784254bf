"""Graded tests of notebook 13 (serving many requests): the greedy check of a speculative draft, a paged KV pool."""

import numpy as np
import torch

from llmcourse.course.grading import assert_allclose, exercise, expect_error
from llmcourse.speculative import verify_greedy


# -- verify_draft -------------------------------------------------------------------------------------------------

@exercise("verify_draft")
def test_verify_draft_hand_computed(impl):
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 2.0, 0.0]])  # argmax 1, 0, 2, 1
    cases = [([1, 0, 2], (3, 1)), ([1, 0, 0], (2, 2)), ([2, 0, 2], (0, 1)), ([], (0, 1))]
    for draft, expected in cases:
        got = impl.serving.verify_draft(logits[:len(draft) + 1], draft)
        assert tuple(got) == expected, f"verify_draft(logits with argmax 1, 0, 2, 1, draft {draft}) should be " \
                                       f"{expected} (accepted, next token), got {tuple(got)}"
        assert all(type(x) is int for x in got), f"verify_draft should return two Python ints, got {got!r}"


@exercise("verify_draft")
def test_verify_draft_equals_the_package_on_random_drafts(impl):
    rng = np.random.default_rng(0)
    for trial in range(20):
        k, V = int(rng.integers(0, 6)), int(rng.integers(2, 5))
        logits = torch.from_numpy(rng.integers(0, 3, size=(k + 1, V)).astype(np.float32))  # ties: the smallest id
        draft = [int(t) for t in logits.argmax(-1)[:k]] if trial % 3 == 0 else rng.integers(0, V, size=k).tolist()
        expected = verify_greedy(logits, draft)
        got = impl.serving.verify_draft(logits, draft)
        assert tuple(got) == expected, f"verify_draft on logits {logits.tolist()}, draft {draft}: expected " \
                                       f"{expected}, got {tuple(got)}"


@exercise("verify_draft")
def test_verify_draft_rejects_the_first_token_and_errors(impl):
    got = impl.serving.verify_draft(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), [0, 0])  # NumPy logits too
    assert tuple(got) == (0, 1), f"a first draft token 0 against the target's 1: (0, 1) expected, got {tuple(got)}"
    with expect_error(ValueError, match="rows", what="verify_draft with 2 rows of logits for 2 draft tokens"):
        impl.serving.verify_draft(torch.zeros(2, 4), [1, 2])
    with expect_error(ValueError, match="vocabulary", what="verify_draft with a draft token outside the vocabulary"):
        impl.serving.verify_draft(torch.zeros(2, 4), [4])


# -- paged_append, paged_gather -----------------------------------------------------------------------------------

@exercise("paged_kv")
def test_paged_append_takes_blocks_on_demand_and_writes_through_the_table(impl):
    rng = np.random.default_rng(1)
    pool = np.zeros((6, 4, 3))
    table, free = [], [5, 4, 3, 2, 1, 0]
    x = rng.normal(size=(6, 3))
    assert impl.serving.paged_append(pool, table, free, 0, x[:5]) == 5, "appending 5 rows to an empty sequence -> 5"
    assert table == [0, 1] and free == [5, 4, 3, 2], f"5 positions in blocks of 4 take two blocks from the end of " \
                                                     f"free: table [0, 1], free [5, 4, 3, 2]; got {table}, {free}"
    assert impl.serving.paged_append(pool, table, free, 5, x[5:]) == 6, "appending 1 row at length 5 -> 6"
    assert table == [0, 1] and free == [5, 4, 3, 2], "position 5 fits block 1: no new block should be taken"
    expected = np.zeros((6, 4, 3))
    expected[0], expected[1, :2] = x[:4], x[4:6]
    assert_allclose(pool, expected, rtol=0, atol=0, what="the pool after appending 6 rows (copies: exact)")


@exercise("paged_kv")
def test_paged_kv_two_sequences_interleaved_gather_back_exactly(impl):
    rng = np.random.default_rng(2)
    pool = np.zeros((8, 2, 4), np.float32)
    free = list(range(7, -1, -1))
    tables, lengths, rows = {"a": [], "b": []}, {"a": 0, "b": 0}, {"a": [], "b": []}
    for step, seq in enumerate("aabab" * 2):  # two sequences growing in turn: their blocks interleave in the pool
        x = rng.normal(size=(1 + step % 2, 4)).astype(np.float32)
        lengths[seq] = impl.serving.paged_append(pool, tables[seq], free, lengths[seq], x)
        rows[seq].append(x)
    for seq in "ab":
        got = impl.serving.paged_gather(pool, tables[seq], lengths[seq])
        assert np.asarray(got).dtype == np.float32, f"paged_gather should keep the pool's dtype, got {got.dtype}"
        assert_allclose(got, np.concatenate(rows[seq]), rtol=0, atol=0,
                        what=f"paged_gather of sequence {seq!r} (its rows in order, exact)")
    assert sorted(tables["a"] + tables["b"] + free) == list(range(8)), "every block is in one table or free"


@exercise("paged_kv")
def test_paged_gather_reads_a_prefix_and_out_of_blocks_is_an_error(impl):
    pool = np.arange(3 * 2 * 1, dtype=np.float64).reshape(3, 2, 1)
    got = impl.serving.paged_gather(pool, [2, 0], 3)
    assert_allclose(got, np.array([[4.0], [5.0], [0.0]]), rtol=0, atol=0, what="paged_gather(table [2, 0], 3)")
    assert np.asarray(impl.serving.paged_gather(pool, [2], 0)).shape == (0, 1), "gathering 0 positions: shape (0, D)"
    with expect_error(ValueError, match="out of blocks", what="paged_append needing 2 blocks with 1 free"):
        impl.serving.paged_append(pool, [0], [1], 2, np.ones((3, 1)))
