"""Exercises of notebook 05: one training step of a PyTorch language model, and perplexity.

A language model maps token ids x (B, T) to logits (B, T, V): one score per vocabulary entry for the token that comes
next at each position. Training lowers the cross-entropy between those logits and the true next tokens y (B, T),
which are x shifted left by one. Perplexity, exp(mean cross-entropy), reads that loss as "the model is as unsure as
a uniform choice among this many tokens".
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                  clip: float | None = 1.0) -> float:
    """One optimisation step on the batch (x, y); returns the batch's mean cross-entropy before the update.

    In order: forward pass `logits = model(x)`, mean cross-entropy of the logits against the targets y over all
    B * T positions, backward pass, clip the global gradient norm to `clip` (skip when `clip` is None), one
    optimizer step, then zero the gradients so that the next step starts clean.

    Args:
        model: a torch.nn.Module mapping int64 ids (B, T) to float logits (B, T, V).
        optimizer: a torch.optim.Optimizer over the model's parameters (AdamW in the course).
        x: int64 tensor (B, T), input token ids.
        y: int64 tensor (B, T), target token ids: y[b, t] is the token that follows x[b, t].
        clip: float > 0, the largest allowed global L2 norm of all gradients together; None for no clipping.

    Returns:
        A Python float: the mean cross-entropy (nats per token) of `model(x)` against `y`, computed before the step.

    Raises:
        ValueError: if x or y is not a 2-D integer tensor, y is not int64 (what cross-entropy takes as targets),
            their shapes differ, or clip is not positive.

    Hint: forward, loss, backward, clip, step, clean up: in that order, and report the loss from before the step.
    More: `llmcourse hint training_step`.
    """
    raise NotImplementedError("training_step: training_step is not implemented yet; write your code here")


def perplexity(mean_cross_entropy: float) -> float:
    """Perplexity exp(mean cross-entropy) of a model whose mean cross-entropy (in nats) is given.

    A perplexity of k means the model is, on average, as unsure as a uniform choice among k outcomes: a uniform
    guess over V tokens has cross-entropy log(V) and perplexity V; a perfect model has 0 and 1.

    Args:
        mean_cross_entropy: a real number >= 0 (Python float or int, NumPy scalar, or a one-element tensor), the
            mean negative log-likelihood per token in nats (natural logarithm).

    Returns:
        A Python float >= 1.0: exp(mean_cross_entropy); float("inf") when that overflows a float.

    Raises:
        TypeError: if mean_cross_entropy is not a real number (a string, a list, a complex number, ...).
        ValueError: if it is negative or NaN.

    Hint: the exponential of the mean cross-entropy, with care for inputs that are not plain numbers and for overflow.
    More: `llmcourse hint perplexity`.
    """
    raise NotImplementedError("perplexity: perplexity is not implemented yet; write your code here")
