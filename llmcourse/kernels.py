"""The same matmuls, a faster kernel: fp32 Linear layers with weights prepacked once for oneDNN (CPU only) or on the
course's C kernel, the choice between kernels made by measuring them on the machine at hand
(`choose_linear_kernels`, for float32, int8 and int4 weights), the machine's matmul throughput over them
(`matmul_gflops`), and a GPT's blocks fused into one C call per decoding step (`fuse_blocks`).

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
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcourse import native
from llmcourse.files import atomic_write
from llmcourse.gpt import GPT, Block, Blocks, KVCache
from llmcourse.qformats import QuantizedLinear, TorchWeightOnlyLinear, quantized_linear, weight_bytes
from llmcourse.runtime import cache_dir, get_device, machine_key
from llmcourse.timing import interleaved, measure


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


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Float32 matrix-multiply throughput in GFLOP/s (2 n^3 floating-point operations per n x n product): the best
    of PyTorch's default kernel and, on a CPU with oneDNN, oneDNN's with the weight prepacked, since the course runs
    both: the roof is the fastest kernel's."""
    a = torch.randn(n, n)
    weight = torch.nn.Linear(n, n, bias=False)
    runs = [lambda: a @ weight.weight.T]
    if prepack_available("cpu"):
        packed = PrepackedLinear(weight)
        runs.append(lambda: packed(a))
    with torch.no_grad():
        best = min(min(measure(run, warmup=2, repeats=repeats).samples) for run in runs)
    return 2 * n ** 3 / best / 1e9


# -- the course's C kernels as a module ---------------------------------------------------------------------------

class NativeLinear(nn.Module):
    """An inference-only float32 nn.Linear on the course's C matrix-vector kernel (`llmcourse.native`) for inputs of
    up to NATIVE_ROWS rows (decoding); larger inputs (a prompt) go to PyTorch's matmul, which is faster there."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The same memory as the layer's (a tied output head keeps sharing the token table: no second copy).
        self.weight = nn.Parameter(linear.weight.detach().float().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self._native: native.Prepared | None = None  # the weights checked for the C kernel, on first use

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if x.numel() <= native.NATIVE_ROWS * self.in_features:
            return self.prepared()(x)
        return F.linear(x, self.weight, self.bias)

    def prepared(self) -> native.Prepared:
        """The weights checked for the C kernel once, again when their memory changed (e.g. `.data = ...`)."""
        if self._native is None or not self._native.reads(self.weight, None, self.bias):
            bias = None if self.bias is None else self.bias.data
            self._native = native.prepare(self.weight.data, bias)
        return self._native

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedBlocks(Blocks):
    """A GPT's blocks (the same modules, the same parameter names) whose decoding steps at batch 1 run in one call of
    the course's C kernels (`native.PreparedBlocks`): up to NATIVE_ROWS new tokens over a KVCache, no padding mask, on
    the CPU. Block by block, a step is ~10 PyTorch operations and 5 C calls per block, each a few microseconds warm
    and tens after the weights streamed through the CPU's caches. Anything else (a prompt, a batch, a padding mask)
    runs the blocks one by one as `Blocks` does. Every block's Linear layers must run on the C kernels (`fuse_blocks`
    makes them so)."""

    def __init__(self, blocks=None):
        super().__init__(blocks)
        self._native: native.PreparedBlocks | None = None  # the weights and caches checked for the C kernels
        self._checked_for: weakref.ref | None = None  # ... at the first step with this KVCache (set with it)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        if mask is None and isinstance(cache, KVCache) and cache.fused_attention(B, T, x.device):
            if self._native is None or self._checked_for() is not cache:  # a deep copy's _native is None
                self._native, self._checked_for = self.prepared(cache), weakref.ref(cache)
            return self._native(x.contiguous(), cache.length)
        return super().forward(x, mask, cache)

    def prepared(self, cache: KVCache) -> native.PreparedBlocks:
        """The blocks' weights and `cache`'s tensors checked for the C kernels. Checking them took ~0.4 ms for the
        GPT-2 shape (~30 us a block), a tenth of an int8 step, so a decoding step checks them at the first step of
        each KVCache only: weights changed in the middle of a generation are used from the next one on."""
        blocks = []
        for block in self:
            if not fusable(block):
                raise ValueError("every block of FusedBlocks must have its Linear layers on the C kernels "
                                 "(NativeLinear, or QuantizedLinear with kernel='native'): use fuse_blocks(model)")
            blocks.append((((block.ln_1.weight, block.ln_1.bias), (block.ln_2.weight, block.ln_2.bias)),
                           block.ln_1.eps, tuple(m.prepared() for m in _linears(block)), block.attn.n_head))
        return native.PreparedBlocks(blocks, cache.keys[:len(self)], cache.values[:len(self)])


def _linears(block: Block) -> tuple[nn.Module, ...]:
    """A GPT-2 block's four Linear layers in the order the C kernels take them."""
    return block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj


def fusable(block: nn.Module) -> bool:
    """Whether `block` is a GPT-2 Block whose four Linear layers all run on the C kernels."""
    return (isinstance(block, Block) and native.available()
            and all(isinstance(layer, NativeLinear) or getattr(layer, "kernel", None) == "native"
                    for layer in _linears(block)))


@torch.no_grad()
def fuse_blocks(model: GPT, *, copy_model: bool = True) -> GPT:
    """The GPT `model` (a copy of it, eval mode, unless copy_model=False) with its blocks as FusedBlocks, their
    float32 nn.Linear layers moved to the C kernel (NativeLinear). Raises ValueError when a quantized layer does not
    run on the C kernels (quantize with kernel='native'), RuntimeError for a model off the CPU, or where the C kernels
    are not available (`native.unavailable_reason()` says why)."""
    if not native.available():
        raise RuntimeError(f"fused blocks need the course's C kernels: {native.unavailable_reason()}")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise RuntimeError(f"fused blocks run on the CPU's C kernels; this model is on {device.type}: use it as it is")
    new = copy.deepcopy(model).eval() if copy_model else model
    for block in new.transformer.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, NativeLinear(child))
        if not fusable(block):
            raise ValueError("a block's layers do not all run on the C kernels (quantize with kernel='native')")
    new.transformer.h = FusedBlocks(list(new.transformer.h))
    return new


# -- choosing a kernel by measurement -----------------------------------------------------------------------------

STREAM_BYTES = 32 << 20  # candidates are timed on copies of the weight this large in all (beyond the L2 caches)
MAX_COPIES = 64  # a small weight lives in the caches when decoding too: no more copies than this
PRUNE = 1.5  # a candidate this many times slower than the fastest at a first look is not timed further
CLOSE = 1e-5  # a candidate's largest difference from the reference, relative to the reference's largest value


@dataclass(frozen=True)
class KernelChoice:
    """The kernels timed for one Linear shape with `weights` ("fp32", "int8", "int4-g32", ...) at `rows` input rows:
    median seconds per call, each kernel's largest difference from the reference (relative to its largest output),
    and the choice: the fastest of those within CLOSE."""

    in_features: int
    out_features: int
    rows: int
    seconds: dict[str, float]
    chosen: str
    weights: str = "fp32"
    errors: dict[str, float] = field(default_factory=dict)


def _cache_file() -> Path:
    return cache_dir() / "kernels.json"


def linear_candidates(weight: torch.Tensor, bias: torch.Tensor | None, weights: str = "fp32") -> dict[str, nn.Module]:
    """The kernels that compute a Linear layer of `weight` (out, in) and `bias` on this machine, the reference first.

    "fp32": PyTorch's default ("default"), oneDNN with the weight prepacked ("prepacked") where this PyTorch has it,
    and the course's C kernel ("native") where it is built. "int8" or "int4-g<N>" (the weight quantized as
    `llmcourse.quantization` does): dequantize, then PyTorch's matmul ("dequantize", the reference), the C kernel
    ("native"), and PyTorch's own weight-only kernels ("torch-bf16": they need bfloat16 activations, so they compute
    something else, and are timed to show what that would buy).
    """
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    on_cpu = weight.device.type == "cpu"
    if weights == "fp32":
        candidates: dict[str, nn.Module] = {"default": linear.eval()}
        if prepack_available(weight.device):
            candidates["prepacked"] = PrepackedLinear(linear)
        if on_cpu and native.available():
            candidates["native"] = NativeLinear(linear)
        return candidates
    reference: QuantizedLinear = quantized_linear(linear, weights, kernel="dequantize")
    candidates = {"dequantize": reference}
    if on_cpu and native.available():
        candidates["native"] = quantized_linear(linear, weights, kernel="native")
    if on_cpu and TorchWeightOnlyLinear.supports(reference):
        candidates["torch-bf16"] = TorchWeightOnlyLinear(reference)
    return candidates


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def _replica(kernel: nn.Module, name: str, weight: torch.Tensor, bias: torch.Tensor | None, weights: str) -> nn.Module:
    """Another copy of a candidate kernel, in memory of its own (oneDNN's packed weights cannot be deep-copied: built
    again)."""
    try:
        return copy.deepcopy(kernel)
    except (NotImplementedError, RuntimeError):
        return linear_candidates(weight, bias, weights)[name]


@torch.no_grad()
def time_linear_kernels(in_features: int, out_features: int, rows: int = 1, *, weights: str = "fp32",
                        repeats: int = 10, seed: int = 0) -> KernelChoice:
    """Time every candidate kernel (`linear_candidates`) on a random (out, in) weight and `rows` input rows, and
    choose the fastest among those whose output is the reference's within CLOSE.

    Decoding reads a model's weights from memory, not from the CPU's caches, so each candidate is timed on a
    series of copies of its weight (up to STREAM_BYTES in all, at most MAX_COPIES), called in turn; the
    candidates take turns too (`interleaved`), so that a change of the machine's load hits them alike. Those far
    behind at a first look (PRUNE) keep that one timing.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    bias = torch.randn(out_features, generator=generator) * 0.02
    x = torch.randn(rows, in_features, generator=generator)
    candidates = linear_candidates(weight, bias, weights)
    reference = next(iter(candidates.values()))(x)
    errors = {name: _relative_error(kernel(x), reference) for name, kernel in candidates.items()}
    exact = [name for name in candidates if errors[name] <= CLOSE]
    runs, calls, first = {}, {}, {}
    for name, kernel in candidates.items():
        count = min(MAX_COPIES, STREAM_BYTES // weight_bytes(kernel))
        copies = [kernel] + [_replica(kernel, name, weight, bias, weights) for _ in range(count - 1)]
        runs[name] = lambda copies=copies: [k(x) for k in copies]
        calls[name] = len(copies)
        runs[name]()  # warm-up
        first[name] = measure(runs[name], warmup=0, repeats=1).median / calls[name]  # a first look
    # Only the candidates within PRUNE of the fastest exact one are timed further, in turns.
    fastest = min(first[name] for name in exact)
    contenders = {name: run for name, run in runs.items() if first[name] <= PRUNE * fastest}
    seconds = {**first, **{name: m.median / calls[name] for name, m in interleaved(contenders, repeats).items()}}
    return KernelChoice(in_features, out_features, rows, seconds, min(exact, key=seconds.get), weights, errors)


def choose_linear_kernels(model: nn.Module, rows: int = 1, *, weights: str = "fp32",
                          remember: bool = True) -> dict[tuple[int, int], KernelChoice]:
    """The kernel to use for each distinct (in, out) shape of the model's nn.Linear layers at `rows` input rows, for
    weights stored as `weights` ("fp32", "int8", "int4-g32", ...), measured once per machine (CPU model, threads,
    PyTorch version) and set of candidates, and remembered in $LLMCOURSE_CACHE/kernels.json (default
    ~/.cache/llmcourse), like an autotuner. `remember=False` measures afresh and stores nothing."""
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)})
    file, key = _cache_file(), machine_key()
    stored: dict = {}
    if remember and file.is_file():
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            stored = {}  # a damaged cache is measured again and rewritten
    known = stored.get(key, {})
    # A new candidate, or a new build of the C kernels: measure again.
    candidates = f"native={native.build_id()},prepacked={prepack_available()}"
    choices = {}
    for shape in shapes:
        entry_key = f"{weights}:{shape[0]}x{shape[1]}@{rows}:{candidates}"
        entry = known.get(entry_key)
        choices[shape] = (KernelChoice(**entry) if entry
                          else time_linear_kernels(*shape, rows, weights=weights))
        known[entry_key] = asdict(choices[shape])
    if remember:
        stored[key] = known
        text = json.dumps(stored, indent=1) + "\n"
        atomic_write(file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return choices


@torch.no_grad()
def tuned_linears(model: nn.Module, choices: dict[tuple[int, int], KernelChoice]) -> nn.Module:
    """A copy of `model` (eval mode) whose float32 nn.Linear layers run the kernel chosen for their shape."""
    new = copy.deepcopy(model).eval()
    swap = {"prepacked": PrepackedLinear, "native": NativeLinear}
    for parent in list(new.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                choice = choices[(child.in_features, child.out_features)].chosen
                if choice in swap:
                    setattr(parent, name, swap[choice](child))
    return new
