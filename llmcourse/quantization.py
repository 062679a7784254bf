"""Quantized GPTs: int8 and int4 weights swapped into the model, PyTorch's int8 kernel, and the size/quality/speed
report of notebook 09 and `llmcourse bench`.

Schemes (`quantize_model(model, scheme)` returns a new model; the original is untouched):

- "fp32": the model as it is (a copy).
- "int8": weight-only int8, one scale per output channel (as the exercise `quantization.quantize_per_channel`). Every
  Linear layer, the token and position embeddings and the tied output head store int8 codes plus scales; a matmul
  multiplies by the codes and scales the result (as the exercise `quantization.quantized_matmul`): on the CPU the
  course's C kernel reads the codes directly (`llmcourse.native`), elsewhere they are converted to float first.
- "int8-kernel": PyTorch's dynamic int8 Linear (fbgemm): activations are quantized on the fly and the matmul runs
  on int8 x int8 with int32 accumulation, per-channel weight scales. Embeddings are int8 as in "int8".
- "int4-g<N>", e.g. "int4-g32": weight-only int4, a float16 scale for each group of N consecutive inputs of a row
  (symmetric, codes in [-7, 7]), two codes packed per byte (as the exercise `quantization.pack_int4`).
- "int4-g<N>-mse": the same bytes, a better scale. Each group uses all 16 codes [-8, 7] (its largest-magnitude
  weight maps towards -8), and its scale is the one, among clipping ratios 0.70 .. 1.00 of that weight, that
  minimises the group's squared rounding error (`search_int4_scales`; the idea of llama.cpp's Q4 formats): clipping a
  rare large weight a little makes the steps finer for all the others.

Weights are quantized once, in PyTorch on the CPU (`quantize_groupwise_torch`, `pack_int4_torch`: the codes and
scales of notebook 09's NumPy exercises, bit for bit); a forward pass only dequantizes, on the model's device.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from llmcourse import native
from llmcourse.gpt import GPT, LanguageModel
from llmcourse.kernels import choose_linear_kernels, fusable, fuse_blocks
# The formats are defined in llmcourse.qformats (below llmcourse.kernels, which times their kernels) and offered here
# too, as notebook 09 uses them: Q.QuantizedTensor, Q.search_int4_scales, ...
from llmcourse.qformats import (  # noqa: F401
    CLIP_RATIOS, KERNELS, QuantizedEmbedding, QuantizedLinear, QuantizedTensor, TorchWeightOnlyLinear,
    dequantize_groupwise_torch, int4_clip_errors, pack_int4_torch, parse_scheme, quantize_groupwise_torch,
    quantized_linear, search_int4_scales, unpack_int4_torch, weight_bytes)
from llmcourse.timing import decoding_speed

SCHEMES = ("fp32", "int8", "int8-kernel", "int4-g32", "int4-g32-mse")  # what the report compares by default


# -- the int8 kernel: the one place that calls torch.ao.quantization ----------------------------------------------

def int8_kernel_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` whose nn.Linear layers run PyTorch's dynamic int8 kernel (fbgemm on x86 CPUs).

    `torch.ao.quantization` is deprecated in favour of torchao and warns so on every call. We silence that warning
    here, the only place the course calls it, because torchao's CPU int8 paths (`Int8WeightOnlyConfig` ->
    `torch.ops.aten._weight_int8pack_mm`, `Int8DynamicActivationInt8WeightConfig` -> `torch._int_mm`) were slower
    than fp32 at batch 1 on the CPUs we measured: several times slower on an AVX2 AMD EPYC, and 0.33x (dynamic
    int8) and 0.35x (weight-only) fp32 on the GPT-2 shape on an AVX-512 VNNI one, while this kernel was 2-3x faster
    than fp32 on the first and 5-6x on the second. When the deprecated API is removed, replace this function.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantize_per_tensor).*deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*deprecated.*", category=UserWarning,
                                module=r"torch\.ao\..*")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=False)


# -- whole models --------------------------------------------------------------------------------------------------

@torch.no_grad()
def _children(model: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, module) of every submodule of type `kind`, found before any is replaced."""
    return [(parent, name, child) for parent in list(model.modules())
            for name, child in list(parent.named_children()) if isinstance(child, kind)]


def quantize_model(model: LanguageModel, scheme: str, kernel: str = "auto") -> nn.Module:
    """A new model with the weights of `model` (a GPT or a Llama) quantized by `scheme` (see the module docstring);
    eval mode. Every embedding table and every Linear layer is quantized; an output head tied to the token table
    stays tied (one quantized table, two uses).

    `kernel` (weight-only schemes): "dequantize" or "native" for every layer (see QuantizedLinear), or "auto": on
    the CPU with the course's C kernels built, the kernel measured fastest for each layer's shape among those that
    compute the same result (`llmcourse.kernels.choose_linear_kernels`, measured once per machine and remembered);
    "dequantize" elsewhere. When every layer of a GPT's blocks runs on the C kernels, the blocks become FusedBlocks
    (`llmcourse.kernels.fuse_blocks`): the same kernels, a decoding step of all the blocks in one C call.

    Raises ValueError for an unknown scheme or kernel, or an int4 group size that does not divide the inputs of
    every layer.
    """
    kind, group, search = parse_scheme(scheme)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: use one of {', '.join(map(repr, KERNELS))}")
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(f"the model's {name} holds NaN or infinite values: quantize a model whose weights are "
                             "finite (a diverged training run?)")
    if kind == "int4":
        widths = sorted({m.in_features for m in model.modules() if isinstance(m, nn.Linear)}
                        | {m.embedding_dim for m in model.modules() if isinstance(m, nn.Embedding)})
        if any(width % group for width in widths):
            raise ValueError(f"group size {group} does not divide every layer's inputs ({', '.join(map(str, widths))}"
                             f"; n_embd = {model.config.n_embd}): choose a common divisor, such as 32 or 16")
    if kind == "int8-kernel":
        new = int8_kernel_linears(model)  # every nn.Linear, the output head included (fbgemm keeps its own copy)
    else:
        new = copy.deepcopy(model)
    if kind == "fp32":
        return new.eval()
    bits = 4 if kind == "int4" else 8
    tables = {}  # id of an embedding's weight -> its quantized table (a tied head then shares it)
    for parent, name, embedding in _children(new, nn.Embedding):
        tables[id(embedding.weight)] = QuantizedTensor(embedding.weight, bits, group, search=search)
        setattr(parent, name, QuantizedEmbedding(tables[id(embedding.weight)]))
    if kind != "int8-kernel":
        for parent, name, linear in _children(new, nn.Linear):
            table = tables.get(id(linear.weight)) or QuantizedTensor(linear.weight, bits, group, search=search)
            setattr(parent, name, QuantizedLinear(table, linear.bias))
        _set_kernels(model, new, scheme.removesuffix("-mse"), kernel)
        on_cpu = next(model.parameters()).device.type == "cpu"
        if isinstance(new, GPT) and on_cpu and all(map(fusable, new.transformer.h)):
            fuse_blocks(new, copy_model=False)  # every layer on the C kernels: a step of all the blocks in one call
    return new.eval()


def _set_kernels(model: nn.Module, quantized: nn.Module, weights: str, kernel: str) -> None:
    """Set the kernel of every QuantizedLinear of `quantized` (the copy of `model`), as quantize_model documents."""
    device = next(model.parameters()).device
    if kernel == "auto":
        if device.type != "cpu" or not native.available():
            kernel = "dequantize"
        else:
            choices = choose_linear_kernels(model, 1, weights=weights)
    for module in quantized.modules():
        if isinstance(module, QuantizedLinear):
            rows, cols = module.weight.shape
            module.kernel = choices[(cols, rows)].chosen if kernel == "auto" else kernel


def bytes_read_per_step(model: nn.Module) -> int:
    """Bytes of weights one decoding step reads (at batch 1, per token): `weight_bytes(model)` but the embedding
    tables, of which a step reads one row per token (negligible), unless the output head multiplies by the same
    table (tied weights, read whole). Works for a GPT or a Llama and for quantized or prepacked copies of them,
    whose heads may keep a copy of the token table of their own."""
    head = getattr(model.lm_head, "weight", None)

    def read_whole(table) -> bool:  # the head's own table: the same object, or a tensor sharing its memory
        return table is head or (isinstance(table, torch.Tensor) and isinstance(head, torch.Tensor)
                                 and table.data_ptr() == head.data_ptr())

    tables = [m for m in model.modules()
              if isinstance(m, (nn.Embedding, QuantizedEmbedding)) and not read_whole(m.weight)]
    return weight_bytes(model) - sum(weight_bytes(e) for e in tables)


# -- measuring ----------------------------------------------------------------------------------------------------

def quantization_report(model: LanguageModel, val_ids_or_text=None, schemes=SCHEMES, *, tokenizer=None,
                        max_tokens: int | None = 4096, new_tokens: int = 16, repeats: int = 3,
                        measure_speed: bool = True, fp32_model: nn.Module | None = None) -> list[dict]:
    """Size, quality and speed of `model` under each quantization scheme, measured in one process.

    Args:
        model: a GPT or a Llama, e.g. the shipped tiny model or `GPT(GPTConfig.gpt2())`.
        val_ids_or_text: held-out token ids (1-D), or text (then `tokenizer` encodes it), or None to skip quality.
        schemes: scheme names (see the module docstring), e.g. ("fp32", "int8", "int8-kernel", "int4-g32").
        max_tokens: evaluate perplexity on the first max_tokens held-out tokens (None: all of them).
        new_tokens, repeats: greedy decoding of new_tokens tokens at batch 1 with the KV-cache, timed `repeats`
            times after a warm-up, interleaved across schemes; skipped (tok_s None) without `measure_speed`.
        fp32_model: the same function as `model` on other kernels (`llmcourse.kernels.tuned_linears`), to time as
            the "fp32" row: quantized models run on the kernels measured fastest, so fp32 should too.

    Returns:
        One dict per scheme, in order: {"scheme": str, "weight_bytes": int (stored), "bytes_per_step": int (read
        by one decoding step, `bytes_read_per_step`), "perplexity": float per token or None, "tok_s": float, median
        tokens/s, or None}.
    """
    from llmcourse.train import evaluate

    ids = val_ids_or_text
    if isinstance(ids, str):
        if tokenizer is None:
            raise ValueError("val_ids_or_text is text: pass the model's tokenizer as tokenizer=... to encode it")
        ids = tokenizer.encode(ids)
    models = {scheme: fp32_model if scheme == "fp32" and fp32_model is not None else quantize_model(model, scheme)
              for scheme in schemes}
    speed = (decoding_speed({s: (m, 1, True) for s, m in models.items()}, new_tokens=new_tokens, repeats=repeats)
             if measure_speed else {s: (None, None) for s in models})
    rows = []
    for scheme, m in models.items():
        perplexity = None if ids is None else evaluate(m, ids, max_tokens=max_tokens).perplexity
        rows.append({"scheme": scheme, "weight_bytes": weight_bytes(m), "bytes_per_step": bytes_read_per_step(m),
                     "perplexity": perplexity, "tok_s": speed[scheme][0]})
    return rows
