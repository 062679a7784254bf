"""Serving many requests (notebook 13): the check of speculative decoding, and a paged KV-cache on a block pool.

Speculative decoding: a cheap draft proposes k tokens, the target model scores all of them in one pass and keeps the
longest prefix it agrees with, plus one token of its own. A paged KV-cache: every sequence's keys live in
fixed-size blocks taken from one shared pool as it grows, listed in order in the sequence's block table.
The checks of bad input are provided (they run before your code), so each exercise is only the computation itself.
"""

from __future__ import annotations

import numpy as np


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_verify(target_logits, draft_tokens) -> tuple[np.ndarray, list[int]]:
    logits = np.asarray(target_logits.detach().cpu() if hasattr(target_logits, "detach") else target_logits)
    if logits.dtype.kind != "f" or logits.ndim != 2:
        raise ValueError(f"target_logits must be a 2-D float array (k + 1, V), got dtype {logits.dtype}, shape "
                         f"{logits.shape}")
    if isinstance(draft_tokens, (str, bytes)) or not hasattr(draft_tokens, "__len__"):
        raise TypeError(f"draft_tokens must be a list of token ids, got {type(draft_tokens).__name__}")
    draft = list(draft_tokens)
    if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in draft):
        raise TypeError(f"draft_tokens must be ints (token ids), got {draft!r}")
    if logits.shape[0] != len(draft) + 1:
        raise ValueError(f"target_logits must have one row per draft token plus one: {len(draft) + 1} rows for "
                         f"{len(draft)} draft tokens, got {logits.shape[0]}")
    if any(not 0 <= t < logits.shape[1] for t in draft):
        raise ValueError(f"draft token ids must lie in 0..{logits.shape[1] - 1} (the vocabulary), got {draft}")
    return logits, [int(t) for t in draft]


def _check_pool(pool, table, length) -> int:
    if not isinstance(pool, np.ndarray) or pool.ndim != 3:
        raise TypeError("pool must be a NumPy array of shape (n_blocks, block_size, D)")
    if not isinstance(table, list) or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or
                                          not 0 <= b < pool.shape[0] for b in table):
        raise ValueError(f"table must be a list of block numbers in 0..{pool.shape[0] - 1}, got {table!r}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise TypeError(f"length must be an int (the tokens the sequence holds), got {type(length).__name__}")
    if not 0 <= length <= len(table) * pool.shape[1]:
        raise ValueError(f"length must lie in 0..{len(table) * pool.shape[1]} (the table's {len(table)} blocks of "
                         f"{pool.shape[1]} positions), got {length}")
    return int(length)


def _check_append(pool, table, free, length, x) -> int:
    length = _check_pool(pool, table, length)
    if not isinstance(free, list) or set(free) & set(table) or any(not 0 <= b < pool.shape[0] for b in free):
        raise ValueError("free must be a list of the pool's unused block numbers, none of them in table")
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != pool.shape[2]:
        raise ValueError(f"x must be a NumPy array of shape (T_new, {pool.shape[2]}), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    block_size = pool.shape[1]
    need = -(-(length + x.shape[0]) // block_size) - len(table)  # ceil division: blocks still to take
    if need > len(free):
        raise ValueError(f"out of blocks: the sequence needs {need} more blocks and the pool has {len(free)} free; "
                         "finish or preempt a sequence first")
    return length


# -- the exercises -----------------------------------------------------------------------------------------------

def verify_draft(target_logits, draft_tokens: list[int]) -> tuple[int, int]:
    """Greedy speculative decoding's check: how many draft tokens the target accepts, and the token that follows.

    Row i of `target_logits` is the target's prediction at the position of draft token i (for i < k), and the last
    row the prediction after all k. Draft token i is accepted when it equals the target's greedy choice (argmax) of
    row i and every earlier draft token was accepted. The pass then gives one more token: the target's choice at
    the first rejected position, or after the last draft token when all k are accepted. So a pass always yields
    accepted + 1 tokens, exactly the ones greedy decoding with the target alone would produce.

    Args:
        target_logits: float array or tensor (k + 1, V): the target's logits at the k + 1 positions.
        draft_tokens: list of k token ids (k >= 0) the draft proposed.

    Returns:
        (accepted, next_token), two Python ints: 0 <= accepted <= k, and the target's own token after the accepted
        ones. Ties in an argmax go to the smallest token id (as np.argmax and torch.argmax do).

    Raises:
        ValueError: if target_logits is not (k + 1, V) or a draft token is outside the vocabulary; TypeError if
            draft_tokens is not a list of ints (checked for you before your code runs).

    Hint: compare the draft with the target's argmax position by position and stop at the first disagreement.
    More: `llmcourse hint verify_draft`.
    """
    logits, draft = _check_verify(target_logits, draft_tokens)
    # BEGIN SOLUTION
    best = np.argmax(logits, axis=-1)  # (k + 1,) the target's greedy token at each position
    for position, proposed in enumerate(draft):
        if proposed != best[position]:
            return position, int(best[position])  # the first disagreement: the target's own token replaces it
    return len(draft), int(best[len(draft)])  # all accepted, and one more token from the last row
    # END SOLUTION


def paged_append(pool: np.ndarray, table: list[int], free: list[int], length: int, x: np.ndarray) -> int:
    """Append x's rows to a sequence stored in blocks of a shared pool, taking blocks from `free` as it grows.

    The sequence's position p lives in block table[p // block_size], at offset p % block_size. Before writing,
    take blocks from the end of `free` (`free.pop()`) and append them to `table` until the table has room for
    length + T_new positions (no more blocks than that). Then write row j of x at position length + j. Everything
    is changed in place: `pool` (only the new positions), `table` and `free`.

    Args:
        pool: float array (n_blocks, block_size, D): every sequence's blocks.
        table: the sequence's block numbers, in order (a list of ints; empty for a new sequence).
        free: the block numbers no sequence holds (a list of ints); blocks are taken from its end.
        length: the number of positions the sequence holds already.
        x: float array (T_new, D): the new positions' keys (or values).

    Returns:
        The new length, length + T_new (a Python int).

    Raises:
        ValueError: if the shapes do not fit, length does not fit the table, or `free` runs out of blocks (checked
            for you before your code runs, so nothing is changed then).

    Hint: first make the table long enough, then each new position has a block and an offset to write to.
    More: `llmcourse hint paged_kv`.
    """
    length = _check_append(pool, table, free, length, x)
    # BEGIN SOLUTION
    block_size = pool.shape[1]
    end = length + x.shape[0]
    while len(table) * block_size < end:
        table.append(free.pop())
    for j, position in enumerate(range(length, end)):
        pool[table[position // block_size], position % block_size] = x[j]
    return end
    # END SOLUTION


def paged_gather(pool: np.ndarray, table: list[int], length: int) -> np.ndarray:
    """The first `length` positions of a sequence stored in the pool, gathered in order: (length, D).

    Position p lives in block table[p // block_size] at offset p % block_size. The result is a new array (what
    attention then reads as the sequence's keys or values); the pool is left unchanged.

    Args:
        pool: float array (n_blocks, block_size, D).
        table: the sequence's block numbers, in order.
        length: how many positions to gather (0 <= length <= len(table) * block_size).

    Returns:
        Array (length, D) in the pool's dtype.

    Raises:
        ValueError: if length does not fit the table; TypeError if pool is not a 3-D array (checked for you before
            your code runs).

    Hint: the table lists the blocks in order: read them one after another and keep the first `length` rows.
    More: `llmcourse hint paged_kv`.
    """
    length = _check_pool(pool, table, length)
    # BEGIN SOLUTION
    in_order = pool[table]  # (len(table), block_size, D): the sequence's blocks one after another, a copy
    return in_order.reshape(-1, pool.shape[2])[:length]
    # END SOLUTION
