"""Batching (notebook 08): left padding and its attention mask, per-row positions, and one step of a
continuous-batching scheduler.

Prompts of different lengths share one (B, S) tensor by *left* padding: each row's tokens are right-aligned, so the
next token of every row lands in the same last column. The padding must be invisible to the model: the attention
mask hides pad keys, and positions count only real tokens, so a row computes exactly what it would alone.
The checks of bad input are provided (they run before your code), so each exercise is only the computation itself.
The challenge at the end, `generate_batch`, is the whole batched decoding loop, and checks its own input.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .kv_cache import gpt_forward_cached


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_lengths(lengths, width) -> tuple[np.ndarray, int]:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D list of prompt lengths, got shape {lengths.shape}")
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if (lengths < 1).any():
        raise ValueError(f"every prompt needs at least one token; row {int(np.argmin(lengths))} has length "
                         f"{int(lengths.min())}")
    width = int(lengths.max()) if width is None else width
    if not isinstance(width, (int, np.integer)) or isinstance(width, bool):
        raise TypeError(f"width must be an int or None, got {type(width).__name__}")
    if width < lengths.max():
        raise ValueError(f"width {width} is shorter than the longest prompt ({int(lengths.max())} tokens)")
    return lengths.astype(np.int64), int(width)


def _check_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean (True = real token), got dtype {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (B, S), got shape {mask.shape}")
    return mask


def _check_scheduler(slots, finished, waiting) -> None:
    if not isinstance(slots, (list, tuple)) or not isinstance(finished, (list, tuple)):
        raise TypeError("slots and finished must be lists (one entry per row of the batch)")
    if len(slots) != len(finished):
        raise ValueError(f"finished must have one flag per row: {len(slots)} slots but {len(finished)} flags")
    for row, (request, done) in enumerate(zip(slots, finished)):
        if request is None and done:
            raise ValueError(f"row {row} is free (None) but marked finished")
    running = [r for r in slots if r is not None]
    if len(set(running)) != len(running):
        raise ValueError(f"a request runs in two rows at once: slots = {list(slots)}")
    if set(running) & set(waiting):
        raise ValueError(f"requests {sorted(set(running) & set(waiting))} are both running and waiting")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token-id lists into (ids (B, S) int64, mask (B, S) bool), S the longest prompt's length."""
    lengths, width = _check_lengths([len(p) for p in prompts], None)
    mask = padding_mask(lengths, width)
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    ids[mask] = np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts])  # row by row, left to right
    return ids, mask


# -- the exercises -----------------------------------------------------------------------------------------------

def padding_mask(lengths: Sequence[int], width: int | None = None) -> np.ndarray:
    """The attention mask of a left-padded batch: True at real tokens, False at padding.

    Row b holds a prompt of `lengths[b]` tokens right-aligned in `width` columns, so its first
    `width - lengths[b]` columns are padding. Example: lengths [2, 4], width 4 ->
    [[False, False, True, True], [True, True, True, True]].

    Args:
        lengths: the prompt lengths, B positive ints (a list or 1-D integer array).
        width: number of columns S; None means the longest prompt's length.

    Returns:
        Boolean array of shape (B, S): mask[b, j] is True when column j of row b holds a real token.

    Raises:
        ValueError: if `lengths` is empty, a prompt is empty (length 0), or `width` is shorter than the longest
            prompt; TypeError for non-integer lengths (checked for you before your code runs).

    Hint: a row of length L in a batch of width S starts with S - L pad columns.
    More: `llmcourse hint padding_mask`.
    """
    lengths, width = _check_lengths(lengths, width)
    raise NotImplementedError("padding_mask: padding_mask is not implemented yet; write your code here")


def row_positions(mask: np.ndarray) -> np.ndarray:
    """Position of every column of a left-padded batch: a row's real tokens are numbered 0, 1, 2, ... from its
    first real token, exactly as if the row were alone; padding columns get position 0 (they are never attended
    to, so any valid position works, and 0 always is).

    Example: mask [[False, False, True, True], [True, True, True, True]] -> [[0, 0, 0, 1], [0, 1, 2, 3]].

    Args:
        mask: boolean array (B, S), True at real tokens (as from `padding_mask`; a decoding step may append real
            columns on the right).

    Returns:
        int64 array of shape (B, S).

    Raises:
        TypeError / ValueError: if `mask` is not a boolean 2-D array (checked for you before your code runs).

    Hint: a token's position counts only the real tokens before it in its row, not the padding.
    More: `llmcourse hint positions`.
    """
    mask = _check_mask(mask)
    raise NotImplementedError("positions: row_positions is not implemented yet; write your code here")


def scheduler_step(slots: list, finished: list[bool], waiting: list) -> tuple[list, list[tuple[int, object]], list]:
    """One iteration-level scheduling step of continuous batching (Orca, vLLM): finished requests leave their rows
    and waiting requests join the free rows, so the batch stays full without waiting for its slowest row.

    Rules:
    1. Every row whose `finished` flag is True becomes free (None); its request is returned in `left`, in row order.
    2. Free rows (those just freed and those already None), lowest row index first, take the waiting requests in
       order (first come, first served) until rows or requests run out.
    3. A request that keeps running stays in its row (its KV-cache lives there): nothing moves.
    The inputs are not modified.

    Example: slots ["a", "b", None], finished [True, False, False], waiting ["c", "d", "e"] ->
    (["c", "b", "d"], [(0, "c"), (2, "d")], ["a"]); "e" keeps waiting.

    Args:
        slots: one entry per row of the batch: the id of the request running there, or None for a free row.
        finished: one bool per row: True when that row's request finished at this step (never for a None row).
        waiting: ids of the requests that have arrived and wait for a row, in arrival order.

    Returns:
        (new_slots, joined, left): new_slots, a new list as long as `slots`; joined, the (row, request id) pairs of
        the requests that got a row, in the order they were taken from `waiting`; left, the finished request ids.

    Raises:
        ValueError / TypeError: if `finished` does not match `slots`, a free row is marked finished, or a request
            is in two places at once (checked for you before your code runs).

    Hint: finished requests free their rows; waiting requests take free rows, lowest row and earliest request first.
    More: `llmcourse hint scheduler_step`.
    """
    _check_scheduler(slots, finished, waiting)
    raise NotImplementedError("scheduler_step: scheduler_step is not implemented yet; write your code here")


# -- challenge: batched generation -----------------------------------------------------------------------------------

def generate_batch(weights: dict[str, torch.Tensor], n_head: int, prompts: Sequence[Sequence[int]],
                   max_new_tokens: int, *, temperature: float = 1.0, seed: int | None = None,
                   eos_id: int | None = None, pad_id: int = 0) -> list[torch.Tensor]:
    """Generate from prompts of different lengths in one batch, with a KV-cache: the decoding loop of
    `llmcourse.batching.generate_batch`, on the GPT whose `state_dict()` is `weights`.

    1. Left-pad the prompts into ids (B, S) with `pad_id` (`left_pad`), S the longest prompt's length; the mask
       marks the real tokens and each row counts its positions from its own first token (`row_positions`).
    2. Allocate a cache for S + max_new_tokens - 1 positions: cache_k and cache_v zeros of shape
       (n_layer, B, n_head, S + max_new_tokens - 1, C // n_head) in the weights' dtype.
    3. Prefill: one `gpt_forward_cached` over the whole padded prompt (with its positions and mask); the last
       column's logits (B, V) give every row's first new token.
    4. Then each step feeds the B tokens just chosen as one new column: the mask gains a True column, and each
       row's position is its number of real tokens before it. The last new token is never fed back, so there are
       exactly max_new_tokens forward passes (none when max_new_tokens is 0).

    Choosing a token from a row's logits: temperature 0 takes the argmax (the smallest id among ties); otherwise row
    b draws `torch.multinomial(torch.softmax(logits[b:b + 1].float() / temperature, dim=-1), 1, generator=g_b)`,
    each row with a generator of its own, `g_b = torch.Generator().manual_seed(seed)` (generator=None, PyTorch's
    global one, when seed is None). Stopping: a row that has emitted `eos_id` emits `eos_id` at every later step;
    once every row has, stop and fill the rest of every row with `eos_id`.

    Each row then equals `llmcourse.generate.generate(model, torch.tensor(prompt), max_new_tokens, ...)` for its
    prompt alone, token for token: padding changes nothing.

    Args:
        weights: a GPT's state dict, as `gpt_forward_cached` takes it (float32 or float64).
        n_head: the number of attention heads.
        prompts: a list of B non-empty lists of int token ids (lengths may differ).
        max_new_tokens: int >= 0, new tokens per row.
        temperature: >= 0; 0 is greedy decoding.
        seed: the seed of every row's generator, or None.
        eos_id: the end-of-sequence token id, or None for no early stop.
        pad_id: the id written on the padding (never seen by the model).

    Returns:
        A list of B int64 tensors, tensor b of shape (len(prompts[b]) + max_new_tokens,): the prompt, then its new
        tokens.

    Raises:
        ValueError: if prompts is not a non-empty list, a prompt is empty, max_new_tokens < 0, temperature < 0, or
            the longest prompt plus max_new_tokens - 1 tokens do not fit the model's P positions.

    Hint: pad and mask once, prefill once, then one column per step: choose the tokens, hold the finished rows at
    eos, and grow the mask and the positions by one.
    More: `llmcourse hint generate_batch`.
    """
    raise NotImplementedError("generate_batch: generate_batch is not implemented yet; write your code here")
