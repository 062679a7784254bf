"""Quantization in NumPy (notebook 09): int8 per channel, int4 packed two per byte, and a matmul on int8 weights.

A float x is stored as a small integer code q and a float `scale` (and, when asymmetric, an integer `zero` point):

    q = clip(round(x / scale) + zero, qmin, qmax)        x_hat = (q - zero) * scale

Symmetric quantization has zero = 0 and codes in [-qmax, qmax] with qmax = 2**(bits - 1) - 1 (127 for int8, 7 for
int4); the scale maps the largest |x| to qmax, so nothing is clipped and every error |x - x_hat| is at most scale / 2.
Asymmetric quantization maps [min, max] onto all 2**bits codes; it pays off when values are not centred on 0.
Per tensor, one scale serves every value; per channel, each row of a weight matrix (one output channel of a Linear
layer) gets its own; group-wise, each run of `group_size` consecutive values in a row gets its own. The challenge
`quantize_state_dict` quantizes a whole GPT's weights as `llmcourse.quantization.quantize_model` stores them.

Weight matrices have the layout of `torch.nn.Linear`: (out_features, in_features), so a row is an output channel.
"""

from __future__ import annotations

import re

import numpy as np
import torch


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8 (the codes are stored as int8), got {bits!r}")
    return int(bits)


def _float_matrix(w, name: str = "w") -> np.ndarray:
    w = np.asarray(w)
    if w.dtype.kind in "biu":
        w = w.astype(np.float64)
    if w.dtype.kind != "f":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"{name} must be a matrix (out_features, in_features), got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} holds NaN or inf values, which have no quantized code")
    return w


def _check_codes(q, scale) -> tuple[np.ndarray, np.ndarray]:
    q, scale = np.asarray(q), np.asarray(scale)
    if q.ndim != 2 or q.dtype.kind not in "iu":
        raise ValueError(f"q must be an integer matrix (out_features, in_features), got {q.dtype} of shape {q.shape}")
    if scale.dtype.kind != "f" or scale.shape != (q.shape[0],):
        raise ValueError(f"scale must be a float vector with one entry per row of q, shape ({q.shape[0]},), got "
                         f"{scale.dtype} of shape {scale.shape}")
    return q, scale


def _check_int4(q) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise TypeError(f"q must hold integer codes, got dtype {q.dtype}")
    if q.ndim < 1 or q.shape[-1] % 2:
        raise ValueError(f"the last dimension of q must be even (two codes share a byte), got shape {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"int4 codes must lie in [-8, 7], got values from {q.min()} to {q.max()}")
    return q


def _check_packed(packed) -> np.ndarray:
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be a uint8 array (two int4 codes per byte), got dtype {packed.dtype}")
    if packed.ndim < 1:
        raise ValueError("packed must have at least one dimension, got a scalar")
    return packed


def _check_matmul(x, q, scale, bias) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    q, scale = _check_codes(q, scale)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != q.shape[1]:
        raise ValueError(f"x must have shape (..., in_features) = (..., {q.shape[1]}) to match q {q.shape}, "
                         f"got {x.shape}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (q.shape[0],):
            raise ValueError(f"bias must have shape (out_features,) = ({q.shape[0]},), got {bias.shape}")
    return x, q, scale, bias


# -- provided: per-tensor and group-wise quantization, symmetric or asymmetric -------------------------------------

def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): [-(2**(b-1) - 1), 2**(b-1) - 1] when symmetric, all 2**b codes [-2**(b-1), 2**(b-1) - 1] else."""
    bits = _check_bits(bits)
    top = 2 ** (bits - 1) - 1
    return (-top if symmetric else -top - 1), top


def quantize_groupwise(w: np.ndarray, bits: int = 4, group_size: int = 32, symmetric: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize each run of `group_size` consecutive values of every row of `w` with its own scale (and zero).

    Returns (q, scale, zero): q int8 of w's shape, scale (rows, cols // group_size) in w's float dtype, zero int8 of
    the same shape (all 0 when symmetric). group_size = cols is per channel; the asymmetric range always includes 0,
    so that 0 stays exact. A group of zeros gets scale 1.
    """
    w = _float_matrix(w)
    bits = _check_bits(bits)
    rows, cols = w.shape
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if cols % group_size:
        divisors = [g for g in (8, 16, 32, 64, 128, 256) if cols % g == 0] or [cols]
        raise ValueError(f"group_size {group_size} does not divide the {cols} columns of w: choose a divisor of "
                         f"{cols}, such as {', '.join(map(str, divisors[:3]))}")
    qmin, qmax = code_range(bits, symmetric)
    groups = w.reshape(rows, cols // group_size, group_size)  # (rows, n_groups, group_size)
    if symmetric:
        scale = np.abs(groups).max(axis=-1) / qmax  # (rows, n_groups)
        zero = np.zeros_like(scale)
    else:
        low, high = np.minimum(groups.min(axis=-1), 0), np.maximum(groups.max(axis=-1), 0)
        scale = (high - low) / (qmax - qmin)
        zero = np.clip(np.round(qmin - low / np.where(scale > 0, scale, 1)), qmin, qmax)
    scale = np.where(scale > 0, scale, 1).astype(w.dtype)
    q = np.clip(np.round(groups / scale[..., None]) + zero[..., None], qmin, qmax)
    return q.reshape(rows, cols).astype(np.int8), scale, zero.astype(np.int8)


def dequantize_groupwise(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None) -> np.ndarray:
    """Undo `quantize_groupwise`: (q - zero) * scale, each scale (and zero) spread over its group of columns."""
    q, scale = np.asarray(q), np.asarray(scale)
    rows, cols = q.shape
    group_size = cols // scale.shape[1]
    groups = q.reshape(rows, scale.shape[1], group_size).astype(scale.dtype)
    if zero is not None:
        groups = groups - np.asarray(zero)[..., None]
    return (groups * scale[..., None]).reshape(rows, cols)


def quantize_per_tensor(x: np.ndarray, bits: int = 8, symmetric: bool = True) -> tuple[np.ndarray, float, int]:
    """One scale (and zero) for the whole array: returns (q int8 of x's shape, scale, zero)."""
    x = np.asarray(x)
    q, scale, zero = quantize_groupwise(x.reshape(1, -1), bits, x.size, symmetric)
    return q.reshape(x.shape), float(scale[0, 0]), int(zero[0, 0])


# -- the exercises -----------------------------------------------------------------------------------------------

def quantize_per_channel(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization: each row of `w` (one output channel) gets its own scale.

    With qmax = 2**(bits - 1) - 1 (127 for int8):

        scale[i] = max_j |w[i, j]| / qmax
        q[i, j] = clip(round(w[i, j] / scale[i]), -qmax, qmax)

    so the largest value of each row maps to +-qmax and every error |w - q * scale| is at most scale / 2. A row of
    zeros gets scale 1 (any scale represents it exactly, and this one avoids dividing by 0). Round half to even,
    like `np.round` and PyTorch.

    Args:
        w: float array of shape (out_features, in_features), float32 or float64.
        bits: bits per code, 2 to 8.

    Returns:
        (q, scale): q int8 of shape (out_features, in_features) with values in [-qmax, qmax]; scale of shape
        (out_features,) in w's dtype, all positive.

    Raises:
        ValueError / TypeError: if `w` is not a finite float matrix or `bits` is not 2..8 (checked for you).

    Hint: each output row gets the scale that maps its largest magnitude to the largest code.
    More: `llmcourse hint quantize_per_channel`.
    """
    w = _float_matrix(w)
    bits = _check_bits(bits)
    # BEGIN SOLUTION
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=1) / qmax  # (out,)
    scale = np.where(scale > 0, scale, 1).astype(w.dtype)
    q = np.clip(np.round(w / scale[:, None]), -qmax, qmax)
    return q.astype(np.int8), scale
    # END SOLUTION


def dequantize_per_channel(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The floats that per-channel codes stand for: w_hat[i, j] = q[i, j] * scale[i].

    Args:
        q: integer codes of shape (out_features, in_features) (int8 from `quantize_per_channel`).
        scale: float array of shape (out_features,), one scale per row.

    Returns:
        Array of shape (out_features, in_features) in scale's dtype.

    Raises:
        ValueError: if q is not an integer matrix or scale does not have one entry per row (checked for you).

    Hint: multiply each row's codes by its scale.
    More: `llmcourse hint quantize_per_channel`.
    """
    q, scale = _check_codes(q, scale)
    # BEGIN SOLUTION
    return q.astype(scale.dtype) * scale[:, None]
    # END SOLUTION


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack int4 codes two per byte: byte i holds code 2i in its low 4 bits and code 2i + 1 in its high 4 bits.

    A code in [-8, 7] is stored as its 4-bit two's complement, `q & 0xF` (so -1 -> 0b1111, 7 -> 0b0111):

        packed[..., i] = (q[..., 2i] & 0xF) | ((q[..., 2i + 1] & 0xF) << 4)

    Example: codes [1, -1] -> 0b1111_0001 = 241.

    Args:
        q: integer array of shape (..., n), n even, values in [-8, 7].

    Returns:
        uint8 array of shape (..., n // 2).

    Raises:
        ValueError / TypeError: if q is not integer, n is odd, or a value lies outside [-8, 7] (checked for you).

    Hint: two 4-bit codes fit in one byte: the even one in the low half, the odd one in the high half.
    More: `llmcourse hint int4_pack`.
    """
    q = _check_int4(q)
    # BEGIN SOLUTION
    nibbles = (q.astype(np.int16) & 0xF).astype(np.uint8)  # two's complement low 4 bits
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
    # END SOLUTION


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Undo `pack_int4`: two signed int4 codes from every byte, low nibble first.

    A nibble v in [0, 15] stands for v when v <= 7 and for v - 16 when v >= 8 (two's complement).

    Args:
        packed: uint8 array of shape (..., m).

    Returns:
        int8 array of shape (..., 2 m) with values in [-8, 7]; `unpack_int4(pack_int4(q)) == q`.

    Raises:
        TypeError / ValueError: if packed is not a uint8 array with at least one dimension (checked for you).

    Hint: split each byte into its two halves, then give the halves their signs back.
    More: `llmcourse hint int4_pack`.
    """
    packed = _check_packed(packed)
    # BEGIN SOLUTION
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).astype(np.int8)  # (..., m, 2)
    nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)
    return nibbles.reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    # END SOLUTION


def quantized_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A Linear layer with per-channel int8 weights: y = x @ (q * scale[:, None]).T + bias, without building the
    float weight matrix.

    Output channel i uses only row i of the weights, so its scale factors out of the sum over the inputs:

        y[..., i] = sum_j x[..., j] * q[i, j] * scale[i] = (sum_j x[..., j] * q[i, j]) * scale[i]

    Multiply x by the integer codes first, then scale each output column once. Fused int8 kernels do the same, and
    also quantize x so that the inner sum runs on integers.

    Args:
        x: float array of shape (..., in_features), float32 or float64.
        q: integer codes of shape (out_features, in_features).
        scale: float array of shape (out_features,).
        bias: optional float array of shape (out_features,).

    Returns:
        Array of shape (..., out_features) in x's dtype.

    Raises:
        ValueError / TypeError: for shapes that do not fit together or a non-float x (checked for you).

    Hint: x @ (q * scale).T, without building the dequantized matrix: the scale can be applied after the product.
    More: `llmcourse hint quantized_matmul`.
    """
    x, q, scale, bias = _check_matmul(x, q, scale, bias)
    # BEGIN SOLUTION
    y = (x @ q.T.astype(x.dtype)) * scale.astype(x.dtype)  # (..., out)
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y
    # END SOLUTION


# -- challenge ------------------------------------------------------------------------------------------------------

QUANTIZED_LAYERS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def quantize_state_dict(state_dict: dict[str, torch.Tensor], scheme: str) -> dict[str, object]:
    """Quantize the weights of a whole GPT, as `llmcourse.quantization.quantize_model(model, scheme)` stores them.

    `state_dict` is `model.state_dict()` of a `llmcourse.gpt.GPT`. The matrices that get quantized are the token and
    position embeddings, "transformer.wte.weight" (V, C) and "transformer.wpe.weight" (P, C), and the weight of every
    Linear layer of every block: the keys ending in "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight" and
    "mlp.c_proj.weight", stored (out_features, in_features). Each becomes a tuple (codes, scale) of tensors, computed
    from the weight converted to float32, every row (output channel) quantized on its own:

    - "int8": symmetric per-channel int8 (`quantize_per_channel(w, 8)`): codes int8 (rows, cols), scale float32
      (rows, 1).
    - "int4-g<N>", e.g. "int4-g32": symmetric int4 with one scale per group of N consecutive columns
      (`quantize_groupwise(w, 4, N)`, codes in [-7, 7]), the codes packed two per byte (`pack_int4`): codes uint8
      (rows, cols // 2), scale float16 (rows, cols // N), rounded to float16 after the codes are computed.
    - "fp32": nothing is quantized.

    Every other entry (biases, LayerNorm weights and biases) is kept as it is. "lm_head.weight" is left out: the
    output head is tied to the token embeddings and multiplies by their quantized table. The input is not modified.

    Args:
        state_dict: dict name -> tensor, the state dict of a GPT (any float dtype).
        scheme: "int8", "int4-g<N>" (N an even number >= 2 that divides n_embd C) or "fp32".

    Returns:
        A new dict with every key of `state_dict` but "lm_head.weight", in the same order: (codes, scale) for the
        matrices listed above (unless "fp32"), the tensor itself for the others.

    Raises:
        ValueError: for an unknown scheme (name the valid ones; "int8-kernel" is PyTorch's kernel, not a format),
            an int4 group size that is odd or < 2, or one that does not divide the columns of a matrix to quantize.

    Hint: walk over the state dict once; quantize the embeddings and the blocks' Linear weights with the exercises of
    this notebook, keep the rest, and leave out the tied output head.
    More: `llmcourse hint quantize_state_dict`.
    """
    # BEGIN SOLUTION
    match = re.fullmatch(r"(fp32|int8)|int4-g(\d+)", scheme) if isinstance(scheme, str) else None
    if match is None:
        raise ValueError(f"unknown scheme {scheme!r}: use 'fp32', 'int8' or 'int4-g<group size>' such as 'int4-g32'")
    group = None if match.group(2) is None else int(match.group(2))
    if group is not None and (group < 2 or group % 2):
        raise ValueError(f"the int4 group size must be an even number >= 2, got {group}")
    out: dict[str, object] = {}
    for name, value in state_dict.items():
        if name == "lm_head.weight":
            continue  # tied to the token embeddings
        quantized = name in ("transformer.wte.weight", "transformer.wpe.weight") or name.endswith(QUANTIZED_LAYERS)
        if scheme == "fp32" or not quantized:
            out[name] = value
            continue
        w = value.detach().cpu().float().numpy()  # (rows, cols)
        if group is None:
            q, scale = quantize_per_channel(w, 8)
            out[name] = (torch.from_numpy(q), torch.from_numpy(scale[:, None]))
        else:
            if w.shape[1] % group:
                raise ValueError(f"the group size {group} does not divide the {w.shape[1]} columns of {name}")
            q, scale, _ = quantize_groupwise(w, 4, group)
            out[name] = (torch.from_numpy(pack_int4(q)), torch.from_numpy(scale.astype(np.float16)))
    return out
    # END SOLUTION
