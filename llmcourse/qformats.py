"""How quantized weights are stored and multiplied: the torch counterparts of notebook 09's NumPy exercises
(group-wise codes and scales, int4 packing, the int4 scale search), `QuantizedTensor`, and the layers that use one
(`QuantizedLinear` with its kernels, `QuantizedEmbedding`, PyTorch's own weight-only kernels as
`TorchWeightOnlyLinear`), with the schemes' names and the bytes a model's weights occupy.

Whole models are quantized by `llmcourse.quantization` (which also offers these names); `llmcourse.kernels` times
the layers' kernels. This module imports neither, so both can import it.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcourse import native

_SCHEME = re.compile(r"^(fp32|int8|int8-kernel|int4-g(\d+)(-mse)?)$")
CLIP_RATIOS = tuple(round(0.7 + 0.02 * i, 2) for i in range(16))  # 0.70, 0.72, ..., 1.00


# -- torch counterparts of the NumPy pieces (tested equal to them) -------------------------------------------------

def _check_weight(w, name: str) -> None:
    """A one-line error unless w is a non-empty, finite, floating-point matrix."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch tensor, got "
                        f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty (rows, cols) matrix, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} holds {int((~torch.isfinite(w)).sum())} NaN or infinite value(s): a scale cannot be "
                         "computed from them; fix the weights (a diverged training run?) before quantizing")


def quantize_groupwise_torch(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of each run of `group_size` columns of w (rows, cols) with its own scale.

    scale = max |w| of the group / qmax (1 for a group of zeros), codes = round(w / scale), half to even, in
    [-qmax, qmax], qmax = 2**(bits - 1) - 1. Returns (codes int8 (rows, cols), scale (rows, cols // group_size) in
    w's dtype); group_size = cols is per-channel quantization.
    """
    _check_weight(w, "w")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
    cols = w.shape[-1]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        raise ValueError(f"group_size must be a positive divisor of the {cols} columns of w, got {group_size!r}")
    qmax = 2 ** (bits - 1) - 1
    groups = w.unflatten(-1, (-1, group_size))  # (rows, groups, group_size)
    scale = groups.abs().amax(dim=-1) / qmax  # (rows, groups)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(groups / scale[..., None]).clamp(-qmax, qmax).to(torch.int8)  # (rows, groups, group_size)
    return codes.flatten(-2), scale


def dequantize_groupwise_torch(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 weights (..., cols) of int8 codes (..., cols) and their group scales (..., groups)."""
    groups = codes.unflatten(-1, (scale.shape[-1], -1)).float()  # (..., groups, group_size)
    return (groups * scale.float()[..., None]).flatten(-2)


def pack_int4_torch(codes: torch.Tensor) -> torch.Tensor:
    """int4 codes (..., 2 m) in [-8, 7] -> uint8 (..., m): code 2i in the low nibble of byte i, code 2i + 1 in the
    high one, each as its 4-bit two's complement."""
    nibbles = (codes & 0xF).to(torch.uint8)  # (..., 2 m)
    low, high = nibbles[..., 0::2], nibbles[..., 1::2]
    return low | (high << 4)


def unpack_int4_torch(packed: torch.Tensor) -> torch.Tensor:
    """`quantization.unpack_int4` in PyTorch: uint8 (..., m) -> int8 codes (..., 2 m), low nibble first."""
    signed = packed.view(torch.int8)  # the same bits, read as two's complement
    low = (signed << 4) >> 4  # move the low nibble up, then an arithmetic shift back copies its sign bit
    high = signed >> 4  # an arithmetic shift keeps the sign of the high nibble
    return torch.stack([low, high], dim=-1).flatten(-2)  # (..., m, 2) -> (..., 2 m)


def _signed_max(groups: torch.Tensor) -> torch.Tensor:
    """The largest-magnitude weight of each group (..., group_size), with its sign: (...)."""
    return groups.gather(-1, groups.abs().argmax(-1, keepdim=True)).squeeze(-1)


def _int4_scale(signed_max: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """Scales that map ratio x each group's largest-magnitude weight to code -8, rounded to float16 (as stored)."""
    scale = (signed_max * ratio / -8.0).half().float()
    return torch.where(scale != 0, scale, torch.ones_like(scale))


def int4_clip_errors(w: torch.Tensor, group_size: int, ratios=CLIP_RATIOS) -> torch.Tensor:
    """Squared rounding error of each group of w (rows, cols) at each clipping ratio: (len(ratios), rows, groups)."""
    groups = w.unflatten(-1, (-1, group_size))  # (rows, groups, group_size)
    signed_max = _signed_max(groups)  # (rows, groups)
    errors = []
    for ratio in ratios:
        scale = _int4_scale(signed_max, ratio)[..., None]  # (rows, groups, 1)
        errors.append(((torch.round(groups / scale).clamp(-8, 7) * scale - groups) ** 2).sum(-1))
    return torch.stack(errors)


def search_int4_scales(w: torch.Tensor, group_size: int, ratios=CLIP_RATIOS) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 codes (rows, cols) int8 in [-8, 7] and float16-exact scales (rows, cols // group_size) float32 whose
    rounding error is the smallest over CLIP_RATIOS, group by group (ties: the larger ratio, i.e. less clipping)."""
    _check_weight(w, "w")
    if w.shape[-1] % group_size:
        raise ValueError(f"group_size must be a positive divisor of the {w.shape[-1]} columns of w, got {group_size}")
    groups = w.unflatten(-1, (-1, group_size))  # (rows, groups, group_size)
    ratios = sorted(ratios, reverse=True)  # largest first, so argmin's first minimum prefers less clipping
    chunk = max(1, (1 << 18) // w.shape[-1])  # rows at a time: the search's temporaries stay in the CPU's cache
    best = torch.cat([torch.tensor(ratios)[int4_clip_errors(rows, group_size, ratios).argmin(0)]
                      for rows in w.split(chunk)])  # (rows, groups)
    scale = _int4_scale(_signed_max(groups), best)  # (rows, groups)
    codes = torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int8)
    return codes.flatten(-2), scale


class QuantizedTensor(nn.Module):
    """A (rows, cols) float matrix stored as int8 codes with one scale per row, or as packed int4 codes with one
    scale per group of `group_size` columns. `dequantize(rows)` gives float32 rows back."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int | None = None, *, search: bool = False):
        super().__init__()
        _check_weight(weight, "the weight")
        rows, cols = weight.shape
        if bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        if search and bits != 4:
            raise ValueError("the scale search (search=True) is for int4 weights")
        self.group_size = cols if bits == 8 else group_size  # int8: per channel, one group spanning the row
        # On the CPU, whose division is correctly rounded, so that the codes are the same on every device.
        w = weight.detach().cpu().float()
        codes, scale = (search_int4_scales(w, self.group_size) if search
                        else quantize_groupwise_torch(w, bits, self.group_size))
        if bits == 4:
            if scale.max() > torch.finfo(torch.float16).max:
                raise ValueError(f"a weight of magnitude {weight.abs().max().item():.3g} needs an int4 scale of "
                                 f"{scale.max().item():.3g}, beyond float16's largest value 65504 (weights up to "
                                 "about 4.6e5 fit): scale the weights down, or use int8")
            codes = pack_int4_torch(codes)  # (rows, cols // 2) uint8
            scale = scale.half()  # 2 bytes per group: what int4 formats store
        self.bits, self.shape = bits, (rows, cols)
        self.register_buffer("codes", codes.contiguous().to(weight.device))
        self.register_buffer("scale", scale.contiguous().to(weight.device))  # (rows, groups)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 weights: all rows (rows, cols), or the rows picked by an index tensor (..., cols)."""
        codes = self.codes if rows is None else self.codes[rows]
        scale = self.scale if rows is None else self.scale[rows]  # (..., groups)
        if self.bits == 4:
            codes = unpack_int4_torch(codes)  # (..., cols)
        return dequantize_groupwise_torch(codes, scale)  # (..., cols)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, bits={self.bits}, group_size={self.group_size}"


KERNELS = ("auto", "dequantize", "native")  # how a QuantizedLinear multiplies (see QuantizedLinear)


class QuantizedLinear(nn.Module):
    """A Linear layer with quantized weights (weight-only: activations stay float32).

    `kernel` says how it multiplies: "dequantize" turns the codes into float32 weights, then calls PyTorch's matmul
    (int8: x @ codes^T, then one scale per output, as the exercise `quantized_matmul`); "native" streams the codes
    through the course's C kernel (`llmcourse.native`), which converts them in registers, for inputs of up to
    `native.NATIVE_ROWS` rows on the CPU (decoding; a prompt still goes through PyTorch's matmul).
    """

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None, kernel: str = "dequantize"):
        super().__init__()
        self.weight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.kernel = kernel
        self._native: native.Prepared | None = None  # the weights checked for the C kernel, on first use

    def prepared(self) -> native.Prepared:
        """The C kernel's view of the weights, prepared again when a tensor was replaced (e.g. by `.to()`)."""
        w = self.weight
        if self._native is None or not self._native.reads(w.codes, w.scale, self.bias):
            bias = None if self.bias is None else self.bias.data
            self._native = (native.prepare_int8(w.codes, w.scale.view(-1), bias) if w.bits == 8
                            else native.prepare_int4(w.codes, w.scale, w.group_size, bias))
        return self._native

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        w = self.weight
        if (self.kernel == "native" and x.dtype == torch.float32 and x.is_cpu
                and x.numel() <= native.NATIVE_ROWS * x.shape[-1]):
            return self.prepared()(x)
        if w.bits == 8:
            y = F.linear(x, w.codes.to(x.dtype)) * w.scale[:, 0]
            return y if self.bias is None else y + self.bias
        return F.linear(x, w.dequantize(), self.bias)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def quantized_linear(linear: nn.Linear, weights: str, kernel: str = "dequantize") -> QuantizedLinear:
    """A QuantizedLinear of `linear`'s weight and bias, quantized as `weights`: "int8", "int4-g<N>" or
    "int4-g<N>-mse" (see the module docstring)."""
    kind, group, search = parse_scheme(weights)
    if kind not in ("int8", "int4"):
        raise ValueError(f"quantized_linear takes weight-only schemes ('int8', 'int4-g<N>[-mse]'), got {weights!r}")
    table = QuantizedTensor(linear.weight, 8 if kind == "int8" else 4, group, search=search)
    return QuantizedLinear(table, linear.bias, kernel)


class TorchWeightOnlyLinear(nn.Module):
    """PyTorch's own weight-only CPU kernels on a QuantizedLinear's codes and scales: `torch._weight_int8pack_mm`
    (int8) and `torch.ops.aten._weight_int4pack_mm_for_cpu` (int4, in its own packed layout). Both are fast only
    with bfloat16 activations (float32 ones take a slow path), so this module rounds x to bfloat16 and computes
    something else than the model: it is timed by `llmcourse.kernels` to show what it would buy, never chosen."""

    def __init__(self, layer: QuantizedLinear):
        super().__init__()
        w = layer.weight
        self.bits, self.group_size = w.bits, w.group_size
        self.bias = layer.bias
        if w.bits == 8:
            self.register_buffer("codes", w.codes)
            self.register_buffer("scale", w.scale.view(-1).to(torch.bfloat16))
        else:  # unsigned codes 0..15 standing for code + 8, scale and zero (0 here) per group, as PyTorch packs them
            unsigned = (unpack_int4_torch(w.codes).to(torch.int32) + 8).contiguous()
            self.register_buffer("codes", torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned, 2))
            scale = w.scale.t().float()  # (groups, out)
            self.register_buffer("scale", torch.stack([scale, torch.zeros_like(scale)], -1).to(torch.bfloat16))

    @staticmethod
    def supports(layer: QuantizedLinear) -> bool:
        """Whether this PyTorch has the kernel for the layer's weights (int4: rows a multiple of 16)."""
        if layer.weight.bits == 8:
            return hasattr(torch, "_weight_int8pack_mm")
        return (hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and layer.weight.shape[0] % 16 == 0
                and layer.weight.group_size in (32, 64, 128, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if self.bits == 8:
            y = torch._weight_int8pack_mm(rows, self.codes, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.codes, self.group_size, self.scale)
        y = y.float().reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class QuantizedEmbedding(nn.Module):
    """An embedding table with quantized rows: a lookup dequantizes only the rows it picks."""

    def __init__(self, weight: QuantizedTensor):
        super().__init__()
        self.weight = weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return self.weight.dequantize(idx)


# -- schemes and bytes ---------------------------------------------------------------------------------------------

def parse_scheme(scheme: str) -> tuple[str, int | None, bool]:
    """("fp32" | "int8" | "int8-kernel" | "int4", group size or None, whether int4 scales are searched ("-mse"));
    a ValueError names the valid schemes."""
    match = _SCHEME.match(scheme) if isinstance(scheme, str) else None
    if match is None:
        raise ValueError(f"unknown quantization scheme {scheme!r}: use 'fp32', 'int8', 'int8-kernel', "
                         "'int4-g<group size>' such as 'int4-g32', or 'int4-g<group size>-mse'")
    if match.group(2) is not None:
        group = int(match.group(2))
        if group < 2 or group % 2:
            raise ValueError(f"the int4 group size must be an even number >= 2, got {group} in {scheme!r}")
        return "int4", group, match.group(3) is not None
    return match.group(1), None, False



def _dynamic_linear_bytes(module: nn.Module) -> int:
    """Bytes of a dynamic int8 Linear: int8 codes, an fp32 scale and int32 zero point per row, the fp32 bias."""
    weight, bias = module._packed_params._weight_bias()
    rows = weight.shape[0]
    return weight.numel() + rows * (4 + 4) + (0 if bias is None else bias.numel() * 4)


def weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy: parameters and buffers (shared ones once), packed int8 kernels' weights and
    weights prepacked for oneDNN (`llmcourse.kernels`)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        if hasattr(module, "_packed_params") and hasattr(module._packed_params, "_weight_bias"):
            total += _dynamic_linear_bytes(module)
        total += getattr(module, "packed_bytes", 0)
    return total
