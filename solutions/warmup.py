"""Warm-up exercise of notebook 00: one small function, to see how writing and grading an exercise works."""

import numpy as np


def mean_squared_error(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean of the squared differences between `predictions` and `targets`.

    Args:
        predictions: array of any shape, float.
        targets: array of the same shape as `predictions`.

    Returns:
        A Python float: mean over all entries of (predictions - targets) ** 2.

    Raises:
        ValueError: if the two shapes differ (say which shapes you got).

    Hint: the mean, over every entry, of the squared difference.
    More: `llmcourse hint warmup_mean_squared_error`.
    """
    # BEGIN SOLUTION
    predictions, targets = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions have shape {predictions.shape} but targets have shape {targets.shape}")
    return float(np.mean((predictions - targets) ** 2))
    # END SOLUTION
