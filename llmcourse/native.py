"""The course's own C kernels for decoding (`llmcourse/csrc/linear.c`): matrix-vector products with float32, int8 or
int4 weights, built on first use with the C compiler at hand and loaded with ctypes.

Why our own: decoding at batch 1 streams every weight once per token, so int8 and int4 weights (4x and 8x fewer
bytes than float32) should decode several times faster. PyTorch 2.13's kernels did not get there on the CPUs we
measured: dequantizing to float32 and calling the float matmul reads the int8 codes, then writes and reads a
float32 copy (slower than float32 alone); `torch._weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` are fast
only with bfloat16 activations (which changes what the model computes by more than int8 weights do) and crawl with
float32 ones (1395 us against 192 us for float32 on a 768x2304 layer); `torch.compile` of dequantize-then-matmul was
2-5x slower than float32 in our runs. The kernel that is used for each layer is still chosen by measuring every
candidate on the machine at hand (`llmcourse.kernels`): these kernels are candidates, not a decision.

Between the products, a decoding step runs ~10 small operations per block (layer norms, attention over the
KV-cache, GELU, residual additions) and makes every call from Python; after a block's weights have streamed through
the CPU's caches each of them costs tens of microseconds. `PreparedBlocks` runs a step of all of a GPT-2's blocks in
one call (`gpt_blocks_step`), the products on these kernels and the rest in C: `llmcourse.kernels.fuse_blocks`.

The library is compiled once per machine (CPU model and compiler flags) into $LLMCOURSE_CACHE/native/ with
`-O3 -march=native -fopenmp`, so it uses AVX-512 or AVX2 where the CPU has them. Without a compiler (`cc`, or $CC),
or with LLMCOURSE_NATIVE=0, `available()` is False and `unavailable_reason()` says why; the course then runs on
PyTorch's kernels alone. Inputs must be float32 CPU tensors, as decoding on the CPU uses.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from llmcourse.runtime import cache_dir, cpu_model

SOURCE = Path(__file__).with_name("csrc") / "linear.c"
NATIVE_ENV = "LLMCOURSE_NATIVE"  # "0" turns the C kernels off
NATIVE_ROWS = 8  # inputs of more rows (a prompt) are faster on PyTorch's matmul, which reuses each weight it loads
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared")
VECTOR_ISA = {16: "AVX-512", 8: "AVX2", 1: "plain C"}

def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(target: Path, flags: tuple[str, ...] = FLAGS, compiler: str | None = None) -> None:
    """Compile SOURCE into the shared library `target` with `flags`, and OpenMP when the compiler has it (Apple's
    clang has not: one thread). Raises OSError with the compiler's last line of error."""
    compiler = compiler or _compiler()
    if compiler is None:
        raise OSError("no C compiler found (install gcc or clang, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        errors: list[str] = []
        for openmp in (["-fopenmp"], []):
            run = subprocess.run([compiler, *flags, *openmp, str(SOURCE), "-o", str(built)], capture_output=True,
                                 text=True, timeout=120)
            if run.returncode == 0:
                os.replace(built, target)  # atomic: a test process building at the same time sees all or nothing
                return
            lines = run.stderr.strip().splitlines()
            errors = [line for line in lines if "error" in line][:1] or lines[-1:] or [f"exit status {run.returncode}"]
        raise OSError(f"{compiler} could not compile {SOURCE.name}: {errors[0]}")


class Matrix(ctypes.Structure):
    """A weight matrix for the C functions (`matrix` in linear.c): W (N, K) in one of the formats FORMATS."""
    _fields_ = [("kind", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int), ("G", ctypes.c_int),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


FORMATS = {"f32": 0, "int8": 1, "int4": 2}  # the `kind` of a Matrix


class BlockWeights(ctypes.Structure):
    """A GPT-2 block's weights for `gpt_blocks_step` (`block` in linear.c)."""
    _fields_ = [("C", ctypes.c_int), ("H", ctypes.c_int), ("eps", ctypes.c_float), ("ln1_w", ctypes.c_void_p),
                ("ln1_b", ctypes.c_void_p), ("ln2_w", ctypes.c_void_p), ("ln2_b", ctypes.c_void_p),
                ("attn", Matrix), ("proj", Matrix), ("fc", Matrix), ("out", Matrix)]


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give the library's functions their C signatures: addresses (`Tensor.data_ptr()`, or None), ints and floats,
    which ctypes converts fastest (a decoding step makes a few dozen calls)."""
    address, integer, matrix = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(Matrix)
    lib.linear.argtypes = [matrix, address, integer, address, address]
    lib.attend_cached.argtypes = [address, integer, integer, integer, address, address, integer, integer, address]
    addresses = ctypes.POINTER(ctypes.c_void_p)
    lib.gpt_blocks_step.argtypes = [ctypes.POINTER(BlockWeights), integer, address, integer, addresses, addresses,
                                    integer, integer, address, address]
    lib.vector_width.restype = ctypes.c_int
    for function in (lib.linear, lib.attend_cached, lib.gpt_blocks_step):
        function.restype = None
    return lib


def _digest(compiler: str) -> str:
    """What the built library depends on: the source, the compiler and flags, and the CPU (for -march=native)."""
    return hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS, cpu_model())).encode()).hexdigest()[:16]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library, None) or (None, why not)."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None, f"turned off ({NATIVE_ENV}=0)"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (install gcc or clang, or set CC)"
    target = cache_dir() / "native" / f"linear-{_digest(compiler)}.so"
    try:
        if not target.is_file():
            build(target, FLAGS, compiler)
        return declare(ctypes.CDLL(str(target))), None
    except (OSError, subprocess.SubprocessError) as err:
        return None, str(err)


def available() -> bool:
    """True when the C kernels are built and loaded (see `unavailable_reason()` otherwise)."""
    return _load()[0] is not None


def unavailable_reason() -> str | None:
    """Why the C kernels cannot be used here, or None when they can."""
    return _load()[1]


def build_id() -> str | None:
    """Which build of the kernels this process uses (a digest of the source, compiler, flags and CPU), None when
    they are not available: a kernel choice measured with another build is measured again."""
    return _digest(_compiler()) if available() else None


def vector_isa() -> str | None:
    """The vector instructions the kernels were compiled for on this machine: "AVX-512", "AVX2" or "plain C"."""
    lib = _load()[0]
    return None if lib is None else VECTOR_ISA[lib.vector_width()]


def _library() -> ctypes.CDLL:
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"the course's C kernels are not available here: {reason}")
    return lib


def _bias(bias: torch.Tensor | None, out_features: int) -> torch.Tensor | None:
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (out_features,)
                             or not bias.is_contiguous() or bias.device.type != "cpu"):
        raise ValueError(f"bias must be a contiguous float32 CPU vector of {out_features}, got {bias.dtype} "
                         f"{tuple(bias.shape)} on {bias.device.type}")
    return bias


def _address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class Prepared:
    """A weight matrix (N, K) checked once for one of the C kernels: `prepared(x)` is x @ W^T + bias, (..., N), for
    x (..., K) float32 on the CPU. A decoding step makes ~50 such products; checking the weight's dtype, shape and
    layout on each would cost about as much as the call itself, so layers prepare their weights once
    (`QuantizedLinear` does) and only x is checked per call. It keeps the tensors, and reads their addresses at
    each call, so a copy of it (`copy.deepcopy` of a model) stays valid."""

    def __init__(self, kind: str, out_features: int, in_features: int, tensors: tuple, extra: tuple = ()):
        self.kind, self.out_features, self.in_features = kind, out_features, in_features
        self.tensors, self.extra = tensors, extra  # (weight or codes, scale or None, bias or None), (group size,)
        _library()  # fails here, with the reason, when the kernels are not available

    def reads(self, *tensors: torch.Tensor | None) -> bool:
        """Whether it reads the memory of these tensors (weight or codes, scale or None, bias or None): a layer whose
        tensor was replaced (`.to()`, `.data = ...`) prepares its weights again."""
        for mine, theirs in zip(self.tensors, tensors):  # runs on every call of a layer: kept plain
            if (mine is None) != (theirs is None) or (mine is not None and mine.data_ptr() != theirs.data_ptr()):
                return False
        return len(tensors) == len(self.tensors)

    def matrix(self) -> Matrix:
        """The weights as the C functions take them, at their current addresses."""
        weight, scale, bias = self.tensors
        return Matrix(FORMATS[self.kind], self.out_features, self.in_features, self.extra[0] if self.extra else 0,
                      weight.data_ptr(), _address(scale), _address(bias))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        N, K, shape = self.out_features, self.in_features, x.shape
        if x.dtype != torch.float32 or not x.is_cpu or shape[-1] != K:
            raise ValueError(f"the C kernels take float32 CPU inputs with {K} features in the last dimension, "
                             f"got {x.dtype} on {x.device.type} with shape {tuple(shape)}")
        rows = x.view(-1, K) if x.is_contiguous() else x.reshape(-1, K).contiguous()
        y = torch.empty(*shape[:-1], N)
        M = rows.shape[0]
        # int8 and int4 kernels read x rewritten (16-bit parts, or transposed): their buffer, held until the call ends
        scratch = None if self.kind == "f32" else torch.empty(M * K + M)
        _library().linear(self.matrix(), rows.data_ptr(), M, _address(scratch), y.data_ptr())
        return y


def prepare(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Prepared:
    """A float32 weight (N, K) for `F.linear`-like products on the C kernel."""
    if weight.dtype != torch.float32 or weight.dim() != 2 or not weight.is_contiguous() \
            or weight.device.type != "cpu":
        raise ValueError(f"weight must be a contiguous float32 (N, K) CPU matrix, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    N, K = weight.shape
    return Prepared("f32", N, K, (weight, None, _bias(bias, N)))


def prepare_int8(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> Prepared:
    """int8 codes (N, K) with a float32 scale (N,) per row: W = codes * scale[:, None]."""
    if codes.dtype != torch.int8 or codes.dim() != 2 or not codes.is_contiguous() or codes.device.type != "cpu":
        raise ValueError(f"codes must be a contiguous int8 (N, K) CPU matrix, got {codes.dtype} "
                         f"{tuple(codes.shape)}")
    N, K = codes.shape
    if scale.dtype != torch.float32 or scale.numel() != N or not scale.is_contiguous() \
            or scale.device.type != "cpu":
        raise ValueError(f"scale must hold {N} contiguous float32 values (one per row), got {scale.dtype} "
                         f"{tuple(scale.shape)}")
    return Prepared("int8", N, K, (codes, scale, _bias(bias, N)))


def prepare_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None) -> Prepared:
    """int4 weights W (N, K): packed uint8 (N, K / 2), column 2i in the low nibble of byte i and 2i + 1 in the high
    one (two's complement), scale float16 (N, K / group_size), one per group of columns."""
    if packed.dtype != torch.uint8 or packed.dim() != 2 or not packed.is_contiguous() \
            or packed.device.type != "cpu":
        raise ValueError(f"packed must be a contiguous uint8 (N, K / 2) CPU matrix, got {packed.dtype}")
    N, K = packed.shape[0], 2 * packed.shape[1]
    if group_size < 2 or K % group_size or scale.dtype != torch.float16 or scale.shape != (N, K // group_size) \
            or not scale.is_contiguous() or scale.device.type != "cpu":
        raise ValueError(f"scale must be a contiguous float16 ({N}, {K} / group_size) matrix with group_size "
                         f"dividing {K}, got {scale.dtype} {tuple(scale.shape)} and group_size {group_size}")
    return Prepared("int4", N, K, (packed, scale, _bias(bias, N)), (group_size,))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for float32 weight (N, K) and x (..., K) on the CPU."""
    return prepare(weight, bias)(x)


def linear_int8(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ (codes * scale[:, None])^T + bias: codes int8 (N, K), scale float32 (N,) one per row."""
    return prepare_int8(codes, scale, bias)(x)


def linear_int4(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T + bias for int4 weights W (N, K) (the layout of `prepare_int4`)."""
    return prepare_int4(packed, scale, group_size, bias)(x)


def attend_cached(qkv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int) -> torch.Tensor:
    """The attention of T new tokens over a layer's KV-cache at batch 1, in one call: their keys and values (from
    `qkv`, (1, T, 3 C): query, key, value, heads in order) are written at positions `position` .. `position + T - 1`
    of `keys` and `values` (1, H, max_len, D), and the result (1, T, C) is, for each head, causal attention: new
    token t attends to positions 0 .. position + t."""
    _, H, max_len, D = keys.shape
    T = qkv.shape[1] if qkv.dim() == 3 else 0
    if (qkv.dtype != torch.float32 or keys.dtype != torch.float32 or values.dtype != torch.float32
            or qkv.shape != (1, T, 3 * H * D) or T == 0 or keys.shape[0] != 1 or values.shape != keys.shape
            or not (qkv.is_contiguous() and keys.is_contiguous() and values.is_contiguous())
            or not 0 <= position <= max_len - T):
        raise ValueError(f"attend_cached takes contiguous float32 CPU tensors: qkv (1, T, 3 x {H} x {D}), caches "
                         f"(1, H, max_len, D) with room for the T new positions after `position`; got qkv "
                         f"{tuple(qkv.shape)}, keys {tuple(keys.shape)} {keys.dtype}, values {tuple(values.shape)}, "
                         f"position {position}")
    y = torch.empty(1, T, H * D)
    _library().attend_cached(qkv.data_ptr(), T, H, D, keys.data_ptr(), values.data_ptr(), max_len, position,
                             y.data_ptr())
    return y


def block_weights(norms: tuple[tuple[torch.Tensor, torch.Tensor | None], ...], eps: float,
                  linears: tuple[Prepared, Prepared, Prepared, Prepared], n_head: int) -> BlockWeights:
    """A GPT-2 block's weights for `gpt_blocks_step`, checked: the two LayerNorms' (weight, bias or None) and eps, the
    four products prepared for the C kernels (c_attn, attention c_proj, c_fc, mlp c_proj; any formats), the number of
    heads; the MLP's activation is GPT-2's tanh GELU."""
    attn, proj, fc, out = linears
    C, F = attn.in_features, fc.out_features
    if ((attn.in_features, attn.out_features, proj.in_features, proj.out_features, fc.in_features, out.in_features,
         out.out_features) != (C, 3 * C, C, C, C, F, C) or C % n_head
            or any(t is not None and (t.dtype != torch.float32 or t.shape != (C,) or not t.is_contiguous()
                                      or not t.is_cpu) for norm in norms for t in norm)):
        raise ValueError(f"a GPT block for the C kernels has linears of shapes (3C, C), (C, C), (F, C), (C, F), "
                         f"LayerNorms of C float32 values on the CPU and C a multiple of n_head; got linears "
                         f"{[(m.out_features, m.in_features) for m in linears]}, n_head {n_head}")
    (w1, b1), (w2, b2) = norms
    return BlockWeights(C, n_head, eps, w1.data_ptr(), _address(b1), w2.data_ptr(), _address(b2),
                        *(m.matrix() for m in linears))


class PreparedBlocks:
    """GPT-2 blocks (`block_weights` of each) and their layers' KV-caches (1, H, max_len, D), checked once:
    `prepared(x, position)` is a decoding step of all of them, in one call: x (1, T <= NATIVE_ROWS, C) through each
    block in turn, x + attention(ln_1(x)), then + mlp(ln_2(.)), each attention over its layer's cache as
    `attend_cached` computes it (the new keys and values written at `position` ..). It keeps the tensors it was given,
    so their memory stays valid while it lives; a deep copy of it is None (a copied model prepares its own)."""

    def __init__(self, blocks: list[tuple], keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.weights = (BlockWeights * len(blocks))(*(block_weights(*block) for block in blocks))
        self.blocks, self.keys, self.values = blocks, keys, values
        C = self.weights[0].C
        if len(keys) != len(blocks) or len(values) != len(blocks) or any(
                b.C != C for b in self.weights) or any(
                k.dtype != torch.float32 or not k.is_cpu or not k.is_contiguous() or k.dim() != 4 or k.shape[0] != 1
                or k.shape[1] * k.shape[3] != C or k.shape != keys[0].shape for k in [*keys, *values]):
            raise ValueError(f"blocks of width {C} take one pair of contiguous float32 CPU caches (1, H, max_len, D) "
                             f"per block, H D = {C}, all of one shape; got {len(blocks)} blocks, caches "
                             f"{sorted({tuple(k.shape) for k in [*keys, *values]})}")
        self.width, self.hidden, self.max_len = C, max(b.fc.N for b in self.weights), keys[0].shape[2]
        self.key_addresses = (ctypes.c_void_p * len(keys))(*(k.data_ptr() for k in keys))
        self.value_addresses = (ctypes.c_void_p * len(values))(*(v.data_ptr() for v in values))

    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __call__(self, x: torch.Tensor, position: int) -> torch.Tensor:
        C, T = self.width, x.shape[1] if x.dim() == 3 else 0
        if (x.dtype != torch.float32 or not x.is_cpu or x.shape != (1, T, C) or not 1 <= T <= NATIVE_ROWS
                or not x.is_contiguous() or not 0 <= position <= self.max_len - T):
            raise ValueError(f"a decoding step of the blocks takes x (1, T <= {NATIVE_ROWS}, {C}) float32 on the CPU "
                             f"and T more positions in caches of {self.max_len}; got x {tuple(x.shape)} {x.dtype} at "
                             f"position {position}")
        y = torch.empty_like(x)
        F = self.hidden
        work = torch.empty(T * (5 * C + F) + T * (max(C, F) + 1))  # activations, then the int8 / int4 kernels' buffer
        _library().gpt_blocks_step(self.weights, len(self.blocks), x.data_ptr(), T, self.key_addresses,
                                   self.value_addresses, self.max_len, position, work.data_ptr(), y.data_ptr())
        return y
