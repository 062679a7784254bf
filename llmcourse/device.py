"""The one place the course chooses where tensors live: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import os
from functools import lru_cache

import torch

DEVICE_ENV = "LLMCOURSE_DEVICE"


@lru_cache(maxsize=None)
def get_device() -> torch.device:
    """`$LLMCOURSE_DEVICE` if set (e.g. "cpu" to compare with a learner's laptop), else the fastest available."""
    requested = os.environ.get(DEVICE_ENV)
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
