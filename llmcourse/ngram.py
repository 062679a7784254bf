"""The count-based bigram language model of notebook 01: the baseline every later model must beat.

    model = BigramModel.fit(train_ids, vocab_size=tok.vocab_size, smoothing=0.1)
    model.perplexity(val_ids)        # per token; lower is better, vocab_size = guessing uniformly
    model.bits_per_char(val_ids, n_chars=len(val_text))   # comparable across tokenizers

Counting is one `np.bincount` over the pair codes a * V + b; the perplexity is vectorised over the transitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class BigramModel:
    counts: np.ndarray  # (V, V) float64: counts[a, b] = times token b followed token a in the training ids
    smoothing: float = 0.1  # k of add-k smoothing

    @classmethod
    def fit(cls, ids: Sequence[int], vocab_size: int, smoothing: float = 0.1) -> "BigramModel":
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0 (add-k with k >= 0), got {smoothing}")
        ids = _token_ids(np.asarray(ids, dtype=np.int64), vocab_size)
        pairs = ids[:-1] * vocab_size + ids[1:]  # (N - 1,) code of each transition
        counts = np.bincount(pairs, minlength=vocab_size * vocab_size).reshape(vocab_size, vocab_size)
        return cls(counts.astype(np.float64), smoothing)

    @property
    def vocab_size(self) -> int:
        return self.counts.shape[0]

    @property
    def probs(self) -> np.ndarray:
        """(V, V) float64: probs[a, b] = P(next = b | previous = a), rows sum to 1."""
        smoothed = self.counts + self.smoothing
        return smoothed / smoothed.sum(axis=1, keepdims=True)

    def perplexity(self, ids: Sequence[int]) -> float:
        """exp(mean negative log-likelihood per predicted token) on ids (at least 2); inf when a transition has
        probability 0 (smoothing 0)."""
        ids = _token_ids(ids, self.vocab_size)
        if ids.size < 2:
            raise ValueError(f"the perplexity needs at least 2 tokens, a transition, got {ids.size}")
        prev, nxt = ids[:-1], ids[1:]
        totals = (self.counts.sum(axis=1) + self.smoothing * self.vocab_size)[prev]  # (N - 1,)
        if not totals.all():
            raise ValueError("a token of ids never occurs as a previous token in the training ids and smoothing is "
                             "0: its next-token probabilities are undefined; use smoothing > 0")
        probs = (self.counts[prev, nxt] + self.smoothing) / totals  # (N - 1,)
        return float(np.exp(-np.log(probs).mean())) if probs.all() else float("inf")

    def bits_per_char(self, ids: Sequence[int], n_chars: int) -> float:
        """Total information of ids' predicted tokens in bits, divided by the characters they spell.

        Per-token perplexities of different tokenizers are not comparable (a BPE token carries several
        characters); bits per character are.
        """
        n_predicted = len(ids) - 1
        return n_predicted * math.log2(self.perplexity(ids)) / n_chars

    def sample(self, start: int, n_tokens: int, rng: np.random.Generator) -> list[int]:
        """start followed by n_tokens ids drawn one after the other from P(next | previous)."""
        probs = self.probs
        ids = [int(start)]
        for _ in range(n_tokens):
            ids.append(int(rng.choice(self.vocab_size, p=probs[ids[-1]])))
        return ids


def _token_ids(ids, vocab_size: int) -> np.ndarray:
    """ids as a 1-D int64 array; a TypeError for non-integers, a ValueError for an id outside 0..vocab_size-1."""
    ids = np.ravel(ids)
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0]
        raise ValueError(f"token id {bad} is outside the vocabulary 0..{vocab_size - 1}")
    return ids.astype(np.int64)
