"""Where and how the course runs: the device (chosen here and nowhere else), seeds, and the fast mode of tests."""

from __future__ import annotations

import os
import random
from functools import lru_cache

import numpy as np
import torch

DEVICE_ENV = "LLMCOURSE_DEVICE"
FAST_ENV = "LLMCOURSE_FAST"


@lru_cache(maxsize=None)
def get_device() -> torch.device:
    """`$LLMCOURSE_DEVICE` if set (e.g. "cpu"), else CUDA, then Apple's MPS, then the CPU."""
    requested = os.environ.get(DEVICE_ENV)
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and PyTorch; return a fresh NumPy generator with that seed for code that takes one."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def fast_mode() -> bool:
    """True under test (`LLMCOURSE_FAST=1`): notebooks shorten training loops, never skip a check."""
    return os.environ.get(FAST_ENV, "") not in ("", "0")
