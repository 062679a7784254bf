"""The count-based bigram language model of notebook 01: the baseline every later model must beat.

    model = BigramModel.fit(train_ids, vocab_size=tok.vocab_size, smoothing=0.1)
    model.perplexity(val_ids)        # per token; lower is better, vocab_size = guessing uniformly
    model.bits_per_char(val_ids, n_chars=len(val_text))   # comparable across tokenizers

Counting and the perplexity are the course's own functions from `solutions/tokens.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from llmcourse.loader import reference


@dataclass
class BigramModel:
    counts: np.ndarray  # (V, V) float64: counts[a, b] = times token b followed token a in the training ids
    smoothing: float = 0.1  # k of add-k smoothing

    @classmethod
    def fit(cls, ids: Sequence[int], vocab_size: int, smoothing: float = 0.1) -> "BigramModel":
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        return cls(reference("tokens.bigram_counts")(ids, vocab_size), smoothing)

    @property
    def vocab_size(self) -> int:
        return self.counts.shape[0]

    @property
    def probs(self) -> np.ndarray:
        """(V, V) float64: probs[a, b] = P(next = b | previous = a), rows sum to 1."""
        smoothed = self.counts + self.smoothing
        return smoothed / smoothed.sum(axis=1, keepdims=True)

    def perplexity(self, ids: Sequence[int]) -> float:
        """exp(mean negative log-likelihood per predicted token) on ids."""
        return reference("tokens.bigram_perplexity")(self.counts, ids, self.smoothing)

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
