"""Decoding (notebook 06): how a next-token distribution is reshaped before a token is drawn, and beam search.

Everything here works on PyTorch tensors, on the last axis of logits of shape (..., V) (V = vocabulary size), any
floating dtype (float32 in the course's models), on any device. Filters never change the shape: a token they
remove gets the logit -inf, so that softmax gives it probability exactly 0. `llmcourse.generate` samples with
these very functions. The checks of bad input are provided (they run before your code), so each exercise is only
the computation itself.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_logits(logits, name: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}: use torch.as_tensor(...)")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1 tokens, got shape {tuple(logits.shape)}")
    return logits


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got NaN")
    return float(value)


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


# -- the exercises -----------------------------------------------------------------------------------------------

def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scale logits by 1 / temperature: T < 1 sharpens the distribution softmax gives, T > 1 flattens it.

    Args:
        logits: tensor of shape (..., V), floating dtype (float32 or float64).
        temperature: a number > 0. (Temperature 0 means greedy decoding: `generate` takes the argmax instead.)

    Returns:
        A new tensor of the same shape and dtype: logits / temperature (-inf entries stay -inf).

    Raises:
        TypeError: logits is not a floating-point tensor, or temperature is not a number (provided).
        ValueError: temperature <= 0 (provided).

    Hint: dividing the logits spreads or squeezes the distribution without changing the order.
    More: `llmcourse hint temperature`.
    """
    logits = _check_logits(logits)
    temperature = _check_number(temperature, "temperature")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}: for greedy decoding take the argmax instead")
    # BEGIN SOLUTION
    return logits / temperature
    # END SOLUTION


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (last axis) and set all the others to -inf.

    Ties: every entry equal to the k-th largest value is kept too, so a row may keep more than k entries when
    values tie at the boundary (e.g. k=1 on [2, 2, 0] keeps both 2s). k >= V keeps every entry.

    Args:
        logits: tensor of shape (..., V), floating dtype.
        k: int >= 1, the number of tokens to keep per row.

    Returns:
        A new tensor of the same shape and dtype: kept entries unchanged, the others -inf.

    Raises:
        TypeError: logits is not a floating-point tensor, or k is not an int (provided).
        ValueError: k < 1 (provided).

    Hint: find each row's k-th largest logit; everything below it becomes -inf.
    More: `llmcourse hint top_k`.
    """
    logits = _check_logits(logits)
    k = _check_count(k, "k")
    # BEGIN SOLUTION
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))
    # END SOLUTION


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose total probability is >= p, per row.

    Probabilities are softmax(logits) over the last axis. Sort them from most to least likely and keep tokens
    while the probability mass *before* a token is still < p: so the most likely token is always kept, and the
    kept set is the shortest prefix of the sorted tokens whose mass reaches p. Ties: every token whose logit equals
    that of the least likely kept token is kept too (the result does not depend on how a sort orders ties).
    p = 1 keeps every token.

    Args:
        logits: tensor of shape (..., V), floating dtype; entries may already be -inf (e.g. after top-k).
        p: number with 0 < p <= 1, the probability mass to keep.

    Returns:
        A new tensor of the same shape and dtype: kept entries unchanged, the others -inf.

    Raises:
        TypeError: logits is not a floating-point tensor, or p is not a number (provided).
        ValueError: p outside (0, 1] (provided).

    Hint: sort by probability; keep tokens while the mass before them is still below p.
    More: `llmcourse hint top_p`.
    """
    logits = _check_logits(logits)
    p = _check_number(p, "p")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must lie in (0, 1], got {p}")
    # BEGIN SOLUTION
    if p == 1.0:
        return logits.clone()
    sorted_logits, _ = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.double(), dim=-1)  # float64: the mass is summed without drift
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (..., V)
    n_keep = (mass_before < p).sum(dim=-1, keepdim=True)  # (..., 1) >= 1: mass before the first is 0
    threshold = sorted_logits.gather(-1, n_keep - 1)  # (..., 1) logit of the least likely kept token
    return logits.masked_fill(logits < threshold, float("-inf"))
    # END SOLUTION


def beam_step(beam_scores: torch.Tensor, next_log_probs: torch.Tensor,
              beam_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of beam search: extend every beam by every token and keep the beam_width best extensions.

    Beam b extended by token t scores beam_scores[b] + next_log_probs[b, t] (the log-probability of the whole
    sequence). Candidates are ranked by that score, highest first; ties go to the smaller beam index, then the
    smaller token id (the order of the flattened (W, V) candidates), so the result is fully determined.

    Args:
        beam_scores: tensor of shape (W,), floating dtype: cumulative log-probability of each current beam.
        next_log_probs: tensor of shape (W, V), same dtype: log-probabilities of the next token for each beam
            (-inf for tokens that are ruled out).
        beam_width: int >= 1, how many extensions to keep; at most W * V.

    Returns:
        (beam_index, token, score), each of shape (beam_width,), best first: beam_index (int64) says which beam
        was extended, token (int64) by which token, score (same dtype as beam_scores) its new cumulative score.

    Raises:
        TypeError: inputs are not floating-point tensors, or beam_width is not an int (provided).
        ValueError: the shapes do not fit together, or beam_width > W * V (provided).

    Hint: every beam can be extended by every token: score all W x V extensions, keep the best W, and remember where
    each came from.
    More: `llmcourse hint beam_step`.
    """
    beam_scores = _check_logits(beam_scores, "beam_scores")
    next_log_probs = _check_logits(next_log_probs, "next_log_probs")
    beam_width = _check_count(beam_width, "beam_width")
    if beam_scores.dim() != 1 or next_log_probs.dim() != 2 or next_log_probs.shape[0] != beam_scores.shape[0]:
        raise ValueError(f"beam_scores must have shape (W,) and next_log_probs (W, V), got "
                         f"{tuple(beam_scores.shape)} and {tuple(next_log_probs.shape)}")
    if beam_width > next_log_probs.numel():
        raise ValueError(f"beam_width {beam_width} is more than the W * V = {next_log_probs.numel()} candidates")
    # BEGIN SOLUTION
    V = next_log_probs.shape[1]
    total = (beam_scores[:, None] + next_log_probs).flatten()  # (W * V,) score of every extension
    scores, flat = torch.sort(total, descending=True, stable=True)
    scores, flat = scores[:beam_width], flat[:beam_width]
    return flat // V, flat % V, scores
    # END SOLUTION
