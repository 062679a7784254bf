"""The same matmuls, a faster kernel: fp32 Linear layers with weights prepacked once for oneDNN (CPU only), and
the choice between kernels made by measuring them on the machine at hand (`choose_linear_kernels`).

Decoding at batch 1 is a chain of matrix-vector products, so its speed is how fast a kernel streams the weights
from memory. PyTorch's default CPU matmul calls Intel's MKL, which on some CPUs (AMD's, for one) takes a generic
code path: on the AMD EPYC this course was measured on it streamed weights at ~17 GB/s, under half of what the
memory delivers (41-48 GB/s). oneDNN, the other CPU library inside PyTorch, reads a weight reordered once into its
own blocked layout at 35-45 GB/s, and its batched matmuls were ~2.5x faster too. That reorder is what
`torch.compile`'s "freezing" pass does for CPU inference; here it is done by hand, for every nn.Linear of a model.

The model computes the same function: only the order of the floating-point additions changes (a relative
difference of ~1e-6 in float32, tested). The reorder has a cost: a packed copy of each weight (a tied output head
then has its own copy, as the embedding lookup still needs the plain table), and no gradients (inference only).

This module is the one place that calls oneDNN's private operators (`torch.ops.mkldnn._reorder_linear_weight`,
`torch.ops.mkldnn._linear_pointwise`, which `torch.compile` uses); `prepack_available()` says whether this
PyTorch has them. On a GPU there is nothing to do: cuBLAS already streams weights at full speed.
"""

from __future__ import annotations

import copy
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcourse.files import atomic_write
from llmcourse.runtime import get_device
from llmcourse.timing import interleaved

CACHE_ENV = "LLMCOURSE_CACHE"  # where kernel choices are remembered (default ~/.cache/llmcourse)


def prepack_available(device: torch.device | str | None = None) -> bool:
    """True when this PyTorch can run prepacked oneDNN Linear layers on `device` (default: the course's device,
    `llmcourse.runtime.get_device()`): a CPU, with oneDNN."""
    ops = torch.ops.mkldnn
    return (torch.device(device or get_device()).type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


class PrepackedLinear(nn.Module):
    """An inference-only nn.Linear whose weight (out, in) is kept in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().contiguous()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)  # opaque: read only by oneDNN
        self.packed_bytes = weight.numel() * weight.element_size()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features in the last dimension, got "
                             f"shape {tuple(x.shape)}")
        return torch.ops.mkldnn._linear_pointwise(x.float(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@torch.no_grad()
def prepack_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) whose nn.Linear layers are PrepackedLinear; the original is untouched.

    Raises RuntimeError where oneDNN is not available (not a CPU model, or a PyTorch built without it): there the
    default kernels are the ones to use.
    """
    device = next(model.parameters()).device
    if not prepack_available(device):
        raise RuntimeError(f"prepacked oneDNN Linear layers need a CPU PyTorch with oneDNN; this model is on "
                           f"{device.type} (mkldnn available: {torch.backends.mkldnn.is_available()}): use the model "
                           "as it is")
    new = copy.deepcopy(model).eval()
    for parent in list(new.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PrepackedLinear(child))
    return new


# -- choosing a kernel by measurement -----------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelChoice:
    """The kernels timed for one Linear shape at `rows` input rows, their median seconds per call, and the choice."""

    in_features: int
    out_features: int
    rows: int
    seconds: dict[str, float]
    chosen: str


def _machine_key() -> str:
    """What a kernel choice depends on: the CPU model, the thread count and the PyTorch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def _cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmcourse") / "kernels.json"


def linear_candidates(weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, nn.Module]:
    """The fp32 kernels that compute `F.linear(x, weight, bias)` on this machine: PyTorch's default, and oneDNN with
    the weight prepacked where this PyTorch has it."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    candidates: dict[str, nn.Module] = {"default": linear.eval()}
    if prepack_available(weight.device):
        candidates["prepacked"] = PrepackedLinear(linear)
    return candidates


@torch.no_grad()
def time_linear_kernels(in_features: int, out_features: int, rows: int = 1, *, repeats: int = 30,
                        seed: int = 0) -> KernelChoice:
    """Time every candidate kernel on a random (out, in) weight and `rows` input rows, interleaved, and choose the
    fastest among those whose output equals the default's within float32 tolerance (rtol 1.3e-6, atol 1e-5)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    bias = torch.randn(out_features, generator=generator) * 0.02
    x = torch.randn(rows, in_features, generator=generator)
    candidates = linear_candidates(weight, bias)
    reference = F.linear(x, weight, bias)
    exact = {name: k for name, k in candidates.items() if torch.allclose(k(x), reference, rtol=1.3e-6, atol=1e-5)}
    timings = interleaved({name: (lambda k=k: k(x)) for name, k in exact.items()}, repeats)
    seconds = {name: m.median for name, m in timings.items()}
    return KernelChoice(in_features, out_features, rows, seconds, min(seconds, key=seconds.get))


def choose_linear_kernels(model: nn.Module, rows: int = 1, *,
                          remember: bool = True) -> dict[tuple[int, int], KernelChoice]:
    """The kernel to use for each distinct (in, out) shape of the model's nn.Linear layers at `rows` input rows,
    measured once per machine (CPU model, threads, PyTorch version) and remembered in $LLMCOURSE_CACHE/kernels.json
    (default ~/.cache/llmcourse), like an autotuner. `remember=False` measures afresh and stores nothing."""
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)})
    file, key = _cache_file(), _machine_key()
    stored: dict = {}
    if remember and file.is_file():
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            stored = {}  # a damaged cache is measured again and rewritten
    known = stored.get(key, {})
    choices = {}
    for shape in shapes:
        entry = known.get(f"{shape[0]}x{shape[1]}@{rows}")
        choices[shape] = KernelChoice(**entry) if entry else time_linear_kernels(*shape, rows)
        known[f"{shape[0]}x{shape[1]}@{rows}"] = asdict(choices[shape])
    if remember:
        stored[key] = known
        text = json.dumps(stored, indent=1) + "\n"
        atomic_write(file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return choices


@torch.no_grad()
def tuned_linears(model: nn.Module, choices: dict[tuple[int, int], KernelChoice]) -> nn.Module:
    """A copy of `model` (eval mode) whose nn.Linear layers run the kernel chosen for their shape."""
    new = copy.deepcopy(model).eval()
    for parent in list(new.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                choice = choices[(child.in_features, child.out_features)].chosen
                if choice == "prepacked":
                    setattr(parent, name, PrepackedLinear(child))
    return new
