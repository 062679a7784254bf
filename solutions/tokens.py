"""Exercises of notebook 01: byte-level BPE, the embedding lookup and its gradient, and a bigram baseline.

Byte-level BPE starts from the 256 byte values of UTF-8 text (ids 0..255), so any text, Chinese and emoji
included, has a token sequence. Training repeatedly merges the most frequent adjacent pair into a new id; the
merges are kept in an ordered dict `{(a, b): new_id}` whose ids are 256, 257, ... in the order they were learned.

Provided (not exercises): `most_frequent_pair`, `bigram_counts` and `sinusoidal_positions`. The challenge
`bpe_train` is the whole trainer, with pair counts updated after each merge instead of recounted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


# -- BPE ---------------------------------------------------------------------------------------------------------

def count_pairs(ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """How often each pair of adjacent ids occurs in `ids`.

    Args:
        ids: sequence of int token ids, length N (N may be 0 or 1).

    Returns:
        A dict {(a, b): count} with one entry per distinct adjacent pair (ids[i], ids[i + 1]), i = 0..N-2;
        the counts add up to max(N - 1, 0). Empty for fewer than two ids.

    Example:
        count_pairs([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}

    Hint: look at each pair of neighbours once, and count.
    More: `llmcourse hint bpe_merge`.
    """
    # BEGIN SOLUTION
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts
    # END SOLUTION


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` by the single id `new_id`, scanning left to right.

    Occurrences do not overlap: after a match both ids are consumed, so merging (7, 7) in [7, 7, 7] gives
    [new_id, 7]. `ids` itself is not modified.

    Args:
        ids: sequence of int token ids, length N.
        pair: the tuple (a, b) of two ids to merge.
        new_id: int, the id that replaces each occurrence of a followed by b.

    Returns:
        A new list of ints, of length N minus the number of occurrences merged.

    Raises:
        ValueError: if `pair` is not a tuple of two ids.

    Example:
        merge_pair([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]

    Hint: walk through the ids left to right; a match consumes two ids, anything else one.
    More: `llmcourse hint bpe_merge`.
    """
    # BEGIN SOLUTION
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise ValueError(f"pair must be a tuple of two ids like (101, 32), got {pair!r}")
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
    # END SOLUTION


def most_frequent_pair(counts: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The pair with the highest count; among equal counts the smallest pair, so training is deterministic."""
    if not counts:
        raise ValueError("there is no pair to merge: the text has fewer than two bytes in every chunk")
    best = max(counts.values())
    return min(pair for pair, count in counts.items() if count == best)


def bpe_encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Encode `text` as byte-level BPE token ids: its UTF-8 bytes, then the learned merges in the order learned.

    Start from `list(text.encode("utf-8"))` (ids 0..255). Then repeatedly find, among the adjacent pairs present,
    the one that was learned first (smallest id in `merges`), and merge all its occurrences; stop when no adjacent
    pair is in `merges`. Applying merges in training order is what makes encoding reproduce training.

    Args:
        text: any str (English, Chinese, emoji...); may be empty.
        merges: ordered dict {(a, b): new_id}, the ids 256, 257, ... in the order the merges were learned.

    Returns:
        A list of int token ids; [] for the empty text.

    Raises:
        TypeError: if `text` is not a str.

    Example:
        bpe_encode("abc", {(98, 99): 256, (97, 98): 257}) == [97, 256]   # (b, c) was learned first

    Hint: start from the text's bytes; repeatedly merge the pair that was learnt earliest, until none of the pairs
    present was learnt.
    More: `llmcourse hint bpe_roundtrip`.
    """
    # BEGIN SOLUTION
    if not isinstance(text, str):
        raise TypeError(f"bpe_encode expects a str, got {type(text).__name__}")
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge_pair(ids, pair, merges[pair])
    return ids
    # END SOLUTION


def bpe_decode(ids: Sequence[int], merges: dict[tuple[int, int], int]) -> str:
    """Turn byte-level BPE token ids back into text.

    Each id stands for a byte string: id b < 256 is the single byte b, and a merged id stands for the bytes of
    its pair joined, bytes(a) + bytes(b). Concatenate the bytes of all ids and decode them as UTF-8 with
    errors="replace", so a sequence cut in the middle of a character shows U+FFFD instead of raising.

    Args:
        ids: sequence of int token ids, each in 0..255 or one of the values of `merges`.
        merges: ordered dict {(a, b): new_id} as returned by training (each pair uses only earlier ids).

    Returns:
        The decoded str; "" for no ids.

    Raises:
        ValueError: if an id is neither a byte (0..255) nor a merged id (say which id).

    Example:
        bpe_decode([97, 256], {(98, 99): 256}) == "abc"

    Hint: every id stands for a fixed string of bytes; join them, then decode the bytes as UTF-8 once.
    More: `llmcourse hint bpe_roundtrip`.
    """
    # BEGIN SOLUTION
    table = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        table[new_id] = table[a] + table[b]
    pieces = []
    for i in ids:
        piece = table.get(i)
        if piece is None:
            raise ValueError(f"token id {i!r} is not in the vocabulary (0..255 or a merged id)")
        pieces.append(piece)
    return b"".join(pieces).decode("utf-8", errors="replace")
    # END SOLUTION


def bpe_train(chunk_counts: dict[str, int], num_merges: int) -> dict[tuple[int, int], int]:
    """Train byte-level BPE on pre-split text, updating the pair counts after each merge instead of recounting.

    `chunk_counts` maps each distinct chunk of the text (`Counter(split_chunks(text))` with the tokenizer's
    `split_chunks`: words with their leading space, numbers, punctuation, whitespace) to how often it occurs. A chunk
    starts as the ids of its UTF-8 bytes, and merges never cross chunks. Each step:

    1. takes the most frequent adjacent pair of all chunks, a chunk's pairs counted as often as the chunk occurs;
       among equal counts the smallest pair (as `most_frequent_pair` does);
    2. gives it the next id, 256, 257, ..., and merges it in every chunk, left to right (as `merge_pair` does).

    Training stops after `num_merges` merges, or earlier when no chunk has two tokens left. The merges are those of
    `llmcourse.tokenizer.BPETokenizer.train(text, 256 + num_merges)`, in the same order.

    Incrementally: count the pairs once at the start, and keep for each pair the chunks that contain it. After a
    merge, only those chunks change: subtract the counts of their old pairs and add those of their new pairs. A
    merge then costs work in proportion to the chunks it changes, not to the whole text (recounting everything each
    step is what `BPETokenizer.train` avoids, and so must you: a test checks that many merges take little longer than
    one, on a text whose chunks mostly take part in no merge).

    Args:
        chunk_counts: dict {chunk (str): count (int >= 1)}; may be empty.
        num_merges: int >= 0, the most merges to learn.

    Returns:
        An ordered dict {(a, b): new_id} with new_id = 256, 257, ... in the order the merges were learned; at most
        `num_merges` entries. `chunk_counts` is not modified.

    Raises:
        TypeError: if num_merges is not an int (a bool is not one) or a chunk is not a str.
        ValueError: if num_merges < 0 or a count is not an int >= 1 (say which chunk).

    Example:
        bpe_train({"ab": 1, "bc": 3}, 1) == {(98, 99): 256}

    Hint: keep a count per pair and, per pair, the set of chunks holding it; a merge updates only those chunks.
    More: `llmcourse hint bpe_train`.
    """
    # BEGIN SOLUTION
    if isinstance(num_merges, bool) or not isinstance(num_merges, int):
        raise TypeError(f"num_merges must be an int, got {type(num_merges).__name__}")
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    words, freqs = [], []
    for chunk, count in chunk_counts.items():
        if not isinstance(chunk, str):
            raise TypeError(f"every chunk must be a str, got {type(chunk).__name__} {chunk!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"the count of chunk {chunk!r} must be an int >= 1, got {count!r}")
        words.append(list(chunk.encode("utf-8")))
        freqs.append(count)
    stats: dict[tuple[int, int], int] = {}  # pair -> occurrences in the whole text
    where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of the chunks that contain it (or did)
    for index, word in enumerate(words):
        for pair, times in count_pairs(word).items():
            stats[pair] = stats.get(pair, 0) + times * freqs[index]
            where.setdefault(pair, set()).add(index)
    learned: dict[tuple[int, int], int] = {}
    for new_id in range(256, 256 + num_merges):
        if not stats:
            break
        best = most_frequent_pair(stats)
        learned[best] = new_id
        for index in where.pop(best):
            old = words[index]
            words[index] = new = merge_pair(old, best, new_id)
            for p, n in count_pairs(old).items():  # the chunk's old pairs leave the counts...
                stats[p] -= n * freqs[index]
                if stats[p] == 0:
                    del stats[p]
            for p, n in count_pairs(new).items():  # ...and its new pairs join them
                stats[p] = stats.get(p, 0) + n * freqs[index]
                where.setdefault(p, set()).add(index)
    return learned
    # END SOLUTION


# -- embeddings ---------------------------------------------------------------------------------------------------

def _check_ids(ids: np.ndarray, vocab_size: int, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{what}: token ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)].flat[0]
        raise ValueError(f"{what}: token id {bad} is outside the vocabulary 0..{vocab_size - 1}")
    return ids.astype(np.int64)


def embedding_forward(ids: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Look up the embedding vector of every token id: row `ids[...]` of `weight`.

    This equals one_hot(ids, V) @ weight, without building the one-hot matrix.

    Args:
        ids: integer array of token ids, any shape S (e.g. (B, T)), each in 0..V-1.
        weight: float array of shape (V, D), one row per token of the vocabulary.

    Returns:
        Float array of shape S + (D,), same dtype as `weight`: out[..., :] = weight[ids[...], :].

    Raises:
        ValueError: if `weight` is not 2-D, or an id is outside 0..V-1 (say which id).
        TypeError: if `ids` are not integers.

    Hint: a lookup: row `ids[...]` of the table, for every id.
    More: `llmcourse hint embedding`.
    """
    # BEGIN SOLUTION
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"embedding_forward: weight must have shape (V, D), got shape {weight.shape}")
    ids = _check_ids(ids, weight.shape[0], "embedding_forward")
    return weight[ids]
    # END SOLUTION


def embedding_backward(ids: np.ndarray, grad_out: np.ndarray, vocab_size: int) -> np.ndarray:
    """Gradient of a loss with respect to the embedding matrix, given the gradient of its output.

    Row v of the result is the sum of grad_out[...] over all positions where ids[...] == v: the gradient is
    scattered into the rows that were looked up, a token used k times receives the sum of its k gradients, and a
    token never used gets a row of zeros.

    Args:
        ids: integer array of token ids, shape S, each in 0..vocab_size-1.
        grad_out: float array of shape S + (D,), the gradient of the loss w.r.t. embedding_forward's output.
        vocab_size: V, the number of rows of the embedding matrix.

    Returns:
        Float array of shape (V, D), dtype of `grad_out`.

    Raises:
        ValueError: if grad_out's shape is not ids.shape + (D,) (say both shapes), or an id is outside 0..V-1.
        TypeError: if `ids` are not integers.

    Hint: each use of an id sends its gradient back to that id's row, and uses of the same id add up.
    More: `llmcourse hint embedding`.
    """
    # BEGIN SOLUTION
    grad_out = np.asarray(grad_out)
    ids = _check_ids(ids, vocab_size, "embedding_backward")
    if grad_out.ndim != ids.ndim + 1 or grad_out.shape[:-1] != ids.shape:
        raise ValueError(f"embedding_backward: grad_out must have shape ids.shape + (D,) = {ids.shape} + (D,), "
                         f"got {grad_out.shape}")
    grad = np.zeros((vocab_size, grad_out.shape[-1]), dtype=grad_out.dtype)
    np.add.at(grad, ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]))
    return grad
    # END SOLUTION


def sinusoidal_positions(n_positions: int, dim: int, base: float = 10000.0) -> np.ndarray:
    """The fixed position embeddings of "Attention is all you need", shape (n_positions, dim), float64.

    PE[p, 2i] = sin(p / base^(2i/dim)) and PE[p, 2i+1] = cos(p / base^(2i/dim)): each pair of columns turns at
    its own frequency, from one turn per 2*pi positions down to one per 2*pi*base.
    """
    if n_positions < 0 or dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal_positions needs n_positions >= 0 and an even dim > 0, "
                         f"got n_positions={n_positions}, dim={dim}")
    positions = np.arange(n_positions, dtype=np.float64)[:, None]  # (P, 1)
    frequencies = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # (dim/2,)
    pe = np.empty((n_positions, dim))
    pe[:, 0::2] = np.sin(positions * frequencies)
    pe[:, 1::2] = np.cos(positions * frequencies)
    return pe


# -- bigram language model ----------------------------------------------------------------------------------------

def bigram_counts(ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """counts[a, b] = how often id b directly follows id a in `ids`; shape (V, V), float64."""
    ids = _check_ids(np.asarray(ids, dtype=np.int64).reshape(-1), vocab_size, "bigram_counts")
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    return counts


def bigram_perplexity(counts: np.ndarray, ids: Sequence[int], smoothing: float = 1.0) -> float:
    """Perplexity of the add-k smoothed bigram model given by `counts` on the token sequence `ids`.

    The model predicts each next token from the previous one:
        P(b | a) = (counts[a, b] + k) / (sum_c counts[a, c] + k * V),    k = smoothing.
    The perplexity of ids (length N) is exp of the mean negative log-likelihood of its N - 1 transitions:
        exp(-(1 / (N - 1)) * sum_{t=1..N-1} log P(ids[t] | ids[t-1])).
    A model that guesses uniformly among V tokens has perplexity V; lower is better.

    Args:
        counts: float or int array of shape (V, V), counts[a, b] = times b followed a in the training text.
        ids: sequence (or 1-D array) of N >= 2 int token ids in 0..V-1, the held-out text.
        smoothing: k >= 0 added to every count, so unseen pairs keep a small probability. With k = 0 an unseen
            pair has probability 0 and the perplexity is inf (return float("inf"), with no warning).

    Returns:
        The perplexity, a Python float >= 1.

    Raises:
        ValueError: if counts is not square, ids has fewer than 2 tokens or an id outside 0..V-1, smoothing < 0,
            or a row used has no counts and k = 0 (its probabilities are undefined).

    Hint: turn smoothed counts into probabilities of next given previous, then exp of the mean negative log-probability
    of the text's pairs.
    More: `llmcourse hint bigram_perplexity`.
    """
    # BEGIN SOLUTION
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"counts must be a square (V, V) matrix, got shape {counts.shape}")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    ids = np.asarray(ids).reshape(-1)
    if ids.size < 2:
        raise ValueError(f"the perplexity needs at least 2 tokens (one transition), got {ids.size}")
    ids = _check_ids(ids, counts.shape[0], "bigram_perplexity")
    prev, nxt = ids[:-1], ids[1:]
    row_totals = counts.sum(axis=1) + smoothing * counts.shape[0]  # (V,)
    if np.any(row_totals[prev] == 0):
        raise ValueError("a token of ids never occurs as a previous token in counts and smoothing is 0: "
                         "its next-token probabilities are undefined; use smoothing > 0")
    probs = (counts[prev, nxt] + smoothing) / row_totals[prev]  # (N-1,)
    if np.any(probs == 0):
        return float("inf")
    return float(np.exp(-np.mean(np.log(probs))))
    # END SOLUTION
