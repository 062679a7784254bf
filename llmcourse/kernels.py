"""The same matmuls, a faster kernel: fp32 Linear layers with weights prepacked once for oneDNN (CPU only).

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

import torch
import torch.nn as nn

from llmcourse.runtime import get_device


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
