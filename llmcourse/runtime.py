"""Where and how the course runs: the device (chosen here and nowhere else), seeds, the fast mode of tests, and the
folder and machine key of what is measured or built once per machine."""

from __future__ import annotations

import os
import platform
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DEVICE_ENV = "LLMCOURSE_DEVICE"
CACHE_ENV = "LLMCOURSE_CACHE"  # what is measured or built once per machine (default ~/.cache/llmcourse)
FAST_ENV = "LLMCOURSE_FAST"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _requested_device(requested: str) -> torch.device:
    """The device `$LLMCOURSE_DEVICE` names, if it exists on this machine; a one-line ValueError if not."""
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{DEVICE_ENV}={requested!r} is not a device: use cpu, cuda, cuda:N or mps "
                         f"(or unset it to pick the best one)")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"{DEVICE_ENV}={requested!r}, but this machine has "
                         f"{torch.cuda.device_count() or 'no'} CUDA device(s): unset it or use cpu")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"{DEVICE_ENV}={requested!r}, but Apple's MPS is not available here: unset it or use cpu")
    return device


@lru_cache(maxsize=None)
def get_device() -> torch.device:
    """`$LLMCOURSE_DEVICE` if set (cpu, cuda, cuda:N or mps, checked to exist), else CUDA, then MPS, then the CPU."""
    requested = os.environ.get(DEVICE_ENV, "").strip()
    if requested:
        return _requested_device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
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


def cache_dir() -> Path:
    """Where the course keeps what it measures or builds once per machine: $LLMCOURSE_CACHE, or ~/.cache/llmcourse."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmcourse")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what `platform` knows of it elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """What a kernel choice depends on: the CPU model, the thread count and the PyTorch version."""
    return f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
