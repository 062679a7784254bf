"""The package's own version of every exercise function: what the exercise loader hands a notebook until the
learner's function works.

Each function has the signature, types and checks of bad input that its exercise's docstring gives (exercises/), and
computes the way a library does, with the package's pieces: `numpy_layers`, `generate.filtered_logits`/`beam_step`,
`batching.schedule_step`, quantization's torch functions, `tokenizer.apply_merges`, PyTorch's attention. A test holds
each equal to the course's reference answer (tests/test_fallbacks.py). Nothing here reads a learner's or the course's
exercise files.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmcourse import numpy_layers as nl
from llmcourse.batching import generate_batch as _generate_batch
from llmcourse.batching import schedule_step
from llmcourse.course import catalog
from llmcourse.generate import beam_step as _beam_step
from llmcourse.generate import check_sampling_args, filtered_logits
from llmcourse.gpt import GPT, GPTConfig, KVCache, gpt_skeleton
from llmcourse.llama import rotate as _rotate
from llmcourse.mlp_lm import adam_step as _adam_step
from llmcourse.mlp_lm import momentum_step as _momentum_step
from llmcourse.mlp_lm import sgd_step as _sgd_step
from llmcourse.ngram import BigramModel, _token_ids
from llmcourse.qformats import (QuantizedTensor, pack_int4_torch, parse_scheme, quantize_groupwise_torch,
                                unpack_int4_torch)
from llmcourse.speculative import verify_greedy
from llmcourse.tiled import online_softmax as _online_softmax
from llmcourse.tiled import tiled_attention as _tiled_attention
from llmcourse.tokenizer import BPETokenizer, apply_merges
from llmcourse.train import perplexity as _perplexity
from llmcourse.train import training_step as _training_step


def _float(x: Any, name: str) -> np.ndarray:
    """`x` as a float array: float32/float64 kept, integers and bools as float64; TypeError otherwise."""
    arr = np.asarray(x)
    if arr.dtype.kind in "biu":
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    return arr


def _int(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _ids(ids: Any, vocab_size: int) -> np.ndarray:
    """Integer ids of any shape, each in 0..vocab_size-1, as int64 (TypeError / ValueError naming the bad id)."""
    ids = np.asarray(ids)
    return _token_ids(ids, vocab_size).reshape(ids.shape)


def _torch(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.require(a, requirements=["C", "W"])) for a in arrays]  # copies only when needed


# -- 00 warm-up -------------------------------------------------------------------------------------------------------

def mean_squared_error(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean over all entries of (predictions - targets) ** 2; ValueError when the shapes differ."""
    a, b = (np.asarray(values, np.float64) for values in (predictions, targets))
    if a.shape != b.shape:
        raise ValueError(f"the shapes differ: predictions {a.shape}, targets {b.shape}")
    return float(np.mean(np.square(a - b)))


# -- 01 tokens and embeddings -----------------------------------------------------------------------------------------

def count_pairs(ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """{(a, b): how often b follows a in ids}."""
    pairs: dict[tuple[int, int], int] = {}
    for pair in zip(ids, ids[1:]):
        pairs[pair] = pairs.get(pair, 0) + 1
    return pairs


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """ids with each occurrence of `pair`, left to right and not overlapping, replaced by new_id."""
    if type(pair) is not tuple or len(pair) != 2:
        raise ValueError(f"pair must be a tuple (a, b) of two ids, got {pair!r}")
    return apply_merges(list(ids), {pair: new_id})


def bpe_encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Byte-level BPE ids of text: its UTF-8 bytes with the merges applied in the order learned."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return apply_merges(list(text.encode("utf-8")), merges)


def bpe_decode(ids: Sequence[int], merges: dict[tuple[int, int], int]) -> str:
    """The text of byte-level BPE ids (a cut character shows as U+FFFD); ValueError for an unknown id."""
    table = dict(enumerate(bytes([i]) for i in range(256)))
    for (a, b), merged in merges.items():  # each pair uses only earlier ids
        table[merged] = table[a] + table[b]
    unknown = [i for i in ids if i not in table]
    if unknown:
        raise ValueError(f"token id {unknown[0]!r} is not in the vocabulary (0..255 or a merged id)")
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def bpe_train(chunk_counts: Mapping[str, int], num_merges: int) -> dict[tuple[int, int], int]:
    """The merges `BPETokenizer.train` learns from the pre-split chunks {chunk: count}: at most num_merges."""
    if isinstance(num_merges, bool) or not isinstance(num_merges, numbers.Integral):
        raise TypeError(f"num_merges is a number of merges, an int; got {type(num_merges).__name__}")
    if num_merges < 0:
        raise ValueError(f"num_merges is a number of merges, >= 0; got {num_merges}")
    for text, count in chunk_counts.items():
        if not isinstance(text, str):
            raise TypeError(f"chunks must be str, got {type(text).__name__} {text!r}")
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"chunk {text!r} has count {count!r}; counts are ints >= 1")
    return BPETokenizer.train_chunks(chunk_counts, 256 + int(num_merges)).merges


def embedding_forward(ids: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Rows of weight (V, D) picked by integer ids (S): (S + (D,))."""
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be a (V, D) matrix, got shape {weight.shape}")
    return nl.embedding_forward(_ids(ids, weight.shape[0]), weight)


def embedding_backward(ids: np.ndarray, grad_out: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, D) gradient of the embedding table: grad_out (S + (D,)) summed into the rows ids (S) picked."""
    ids, grad_out = _ids(ids, vocab_size), np.asarray(grad_out)
    if grad_out.shape[:-1] != ids.shape or grad_out.ndim != ids.ndim + 1:
        raise ValueError(f"grad_out has shape {grad_out.shape}; it must be the ids' shape {ids.shape} + (D,)")
    return nl.embedding_backward(ids, grad_out, vocab_size)


def bigram_perplexity(counts: np.ndarray, ids: Sequence[int], smoothing: float = 1.0) -> float:
    """Perplexity of the add-`smoothing` bigram model of counts (V, V) on ids (N >= 2)."""
    counts = np.array(counts, np.float64)
    if counts.shape != counts.shape[:1] * 2:
        raise ValueError(f"counts must be (V, V), got shape {counts.shape}")
    if smoothing < 0:
        raise ValueError(f"smoothing is the k of add-k smoothing, k >= 0; got {smoothing}")
    return BigramModel(counts, smoothing).perplexity(ids)


# -- 02 self-attention ------------------------------------------------------------------------------------------------

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of x along axis, in x's dtype (integers as float64)."""
    x = _float(x, "x")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {x.ndim} dimension(s)")
    return nl.softmax(x, axis=int(axis))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """softmax(q k^T / sqrt(d) + causal mask [and mask]) v by PyTorch's scaled_dot_product_attention; a query that
    may attend to nothing gets 0."""
    q, k, v = _float(q, "q"), _float(k, "k"), _float(v, "v")
    if min(q.ndim, k.ndim, v.ndim) < 2 or q.shape[-1] != k.shape[-1] or not q.shape[-2] == k.shape[-2] == v.shape[-2]:
        raise ValueError(f"q, k, v must have shapes (..., T, d), (..., T, d), (..., T, d_v), got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])  # ValueError when they do not broadcast
    T = q.shape[-2]
    allowed = np.tril(np.ones((T, T), dtype=bool))
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
        if np.broadcast_shapes(mask.shape, batch + (T, T)) != batch + (T, T):
            raise ValueError(f"mask has shape {mask.shape}, which does not broadcast to (..., T, T)")
        allowed = allowed & mask
    dtype = np.result_type(q, k, v)
    q, k, v = (np.broadcast_to(a.astype(dtype, copy=False), batch + a.shape[-2:]) for a in (q, k, v))
    out = F.scaled_dot_product_attention(*_torch(q, k, v), attn_mask=_torch(allowed)[0]).numpy()
    return np.where(allowed.any(axis=-1, keepdims=True), out, 0)  # a query with no key allowed gets 0


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """(B, T, C) -> (B, n_head, T, C // n_head), head h holding channels h * D to (h + 1) * D - 1."""
    n_head, x = _int(n_head, "n_head"), np.asarray(x)
    if x.ndim != 3 or x.shape[-1] % n_head:
        raise ValueError(f"x must have shape (B, T, C) with C divisible by n_head = {n_head}, got shape {x.shape}")
    return x.reshape(*x.shape[:2], n_head, -1).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, n_head, T, D) -> (B, T, n_head * D), the inverse of split_heads."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, n_head, T, D), got shape {x.shape}")
    return x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)


def multihead_attention(x: np.ndarray, w_qkv: np.ndarray, b_qkv: np.ndarray, w_proj: np.ndarray,
                        b_proj: np.ndarray, n_head: int) -> np.ndarray:
    """Causal multi-head self-attention of x (B, T, C) with GPT-2's (in, out) weights, in x's dtype."""
    x = _float(x, "x")
    split_heads(x, n_head)  # checks x's shape and n_head
    C = x.shape[-1]
    weights = []
    for name, a, shape in (("w_qkv", w_qkv, (C, 3 * C)), ("b_qkv", b_qkv, (3 * C,)), ("w_proj", w_proj, (C, C)),
                           ("b_proj", b_proj, (C,))):
        a = _float(a, name)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape} for n_embd C = {C}, got {a.shape}")
        weights.append(a.astype(x.dtype, copy=False))
    w_qkv, b_qkv, w_proj, b_proj = weights
    q, k, v = (split_heads(part, n_head) for part in np.split(x @ w_qkv + b_qkv, 3, axis=-1))
    return merge_heads(causal_attention(q, k, v)) @ w_proj + b_proj


# -- 03 MLP and backpropagation ---------------------------------------------------------------------------------------

def _floats(name_values: Sequence[tuple[str, Any]]) -> list[np.ndarray]:
    out = []
    for name, value in name_values:
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {value.dtype}")
        out.append(value)
    return out


def _same_shape(dout: np.ndarray, shape: tuple[int, ...]) -> None:
    if dout.shape != shape:
        raise ValueError(f"dout has shape {dout.shape} but the layer's output has shape {shape}")


def linear_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dw, db) of y = x @ w + b."""
    dout, x, w = _floats([("dout", dout), ("x", x), ("w", w)])
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"x of shape {x.shape} and w of shape {w.shape} do not fit: w must be (in, out)")
    _same_shape(dout, x.shape[:-1] + w.shape[1:])
    return nl.linear_backward(dout, x, w)


def gelu_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dout * gelu'(x), GPT-2's tanh approximation."""
    dout, x = _floats([("dout", dout), ("x", x)])
    _same_shape(dout, x.shape)
    return nl.gelu_backward(dout, x)


def layernorm_backward(dout: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                       eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta) of LayerNorm over the last axis."""
    dout, x, gamma = _floats([("dout", dout), ("x", x), ("gamma", gamma)])
    if x.ndim < 1 or gamma.shape != x.shape[-1:]:
        raise ValueError(f"gamma has shape {gamma.shape} but x has shape {x.shape}; gamma must have the shape of "
                         "x's last axis")
    _same_shape(dout, x.shape)
    return nl.layernorm_backward(dout, x, gamma, eps)


def cross_entropy_backward(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, V) gradient of the mean cross-entropy of logits (N, V) against integer targets (N,)."""
    (logits,) = _floats([("logits", logits)])
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, V) with N >= 1, got {logits.shape}")
    targets = _ids(targets, logits.shape[1])
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape (N,) = {logits.shape[:1]}, got {targets.shape}")
    return nl.cross_entropy_backward(logits, targets)


def _step_arrays(lr: float, **arrays: Any) -> list[np.ndarray]:
    """The arrays of an optimiser step as floats of param's shape; lr >= 0."""
    out = _floats(list(arrays.items()))
    for name, value in zip(list(arrays)[1:], out[1:]):
        if value.shape != out[0].shape:
            raise ValueError(f"{name} has shape {value.shape} but param has shape {out[0].shape}")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    return out


def sgd_step(param: np.ndarray, grad: np.ndarray, *, lr: float) -> np.ndarray:
    """param - lr * grad as a new array, as torch.optim.SGD."""
    return _sgd_step(*_step_arrays(lr, param=param, grad=grad), lr=lr)


def momentum_step(param: np.ndarray, grad: np.ndarray, velocity: np.ndarray, *, lr: float,
                  momentum: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """New (param, velocity) of SGD with momentum, as torch.optim.SGD(momentum=momentum)."""
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return _momentum_step(*_step_arrays(lr, param=param, grad=grad, velocity=velocity), lr=lr, momentum=momentum)


def adam_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, *, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(param, m, v) after Adam step t >= 1 (AdamW when weight_decay > 0), as torch.optim.Adam / AdamW."""
    if int(t) != t or t < 1:
        raise ValueError(f"t is the step number and starts at 1, got {t}")
    return _adam_step(param, grad, m, v, t, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


# -- 04 a GPT from NumPy to PyTorch -----------------------------------------------------------------------------------

BLOCK_LAYERS = {  # the NumPy GPT's block key -> (name in a llmcourse.gpt.GPT block, transposed)
    "ln_1.gamma": ("ln_1.weight", False), "ln_1.beta": ("ln_1.bias", False),
    "attn.w_qkv": ("attn.c_attn.weight", True), "attn.b_qkv": ("attn.c_attn.bias", False),
    "attn.w_proj": ("attn.c_proj.weight", True), "attn.b_proj": ("attn.c_proj.bias", False),
    "ln_2.gamma": ("ln_2.weight", False), "ln_2.beta": ("ln_2.bias", False),
    "mlp.w_fc": ("mlp.c_fc.weight", True), "mlp.b_fc": ("mlp.c_fc.bias", False),
    "mlp.w_proj": ("mlp.c_proj.weight", True), "mlp.b_proj": ("mlp.c_proj.bias", False),
}


def block_forward(x: np.ndarray, block: Mapping[str, np.ndarray], n_head: int, *,
                  attention: Callable[..., np.ndarray] = multihead_attention) -> np.ndarray:
    """One pre-LayerNorm GPT-2 block on the residual stream x (B, T, C), NumPy weights stored (in, out)."""
    x = np.asarray(x)
    if x.ndim != 3 or x.dtype.kind != "f":
        raise ValueError(f"x must be a float array of shape (B, T, C), got {x.dtype} of shape {x.shape}")
    if not isinstance(block, Mapping):
        raise TypeError(f"block must be a dict of arrays (one entry of params['blocks']), got {type(block).__name__}")
    C = x.shape[-1]
    wide = {"attn.w_qkv": (C, 3 * C), "attn.b_qkv": (3 * C,), "mlp.w_fc": (C, 4 * C), "mlp.b_fc": (4 * C,),
            "mlp.w_proj": (4 * C, C), "attn.w_proj": (C, C)}
    for key in BLOCK_LAYERS:
        shape = wide.get(key, (C,))
        if key not in block:
            raise KeyError(f"block has no {key!r}; a block holds {', '.join(BLOCK_LAYERS)}")
        if np.shape(block[key]) != shape:
            raise ValueError(f"block[{key!r}] has shape {np.shape(block[key])}, expected {shape} for C = {C}")
    h = nl.layernorm_forward(x, block["ln_1.gamma"], block["ln_1.beta"])
    x = x + attention(h, *(block[f"attn.{name}"] for name in ("w_qkv", "b_qkv", "w_proj", "b_proj")), n_head)
    h = nl.layernorm_forward(x, block["ln_2.gamma"], block["ln_2.beta"])
    h = nl.gelu_forward(nl.linear_forward(h, block["mlp.w_fc"], block["mlp.b_fc"]))
    return x + nl.linear_forward(h, block["mlp.w_proj"], block["mlp.b_proj"])


def load_weights(state_dict: Mapping[str, Any], n_head: int) -> dict[str, Any]:
    """The NumPy GPT's params from a llmcourse.gpt.GPT state dict: Linear weights transposed to (in, out)."""
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        raise TypeError("load_weights takes the model's state dict: pass model.state_dict(), not the model")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict name -> tensor, got {type(state_dict).__name__}")

    def get(name: str, transposed: bool = False) -> np.ndarray:
        key = f"transformer.{name}"
        if key not in state_dict:
            raise KeyError(f"state_dict has no {key!r}: pass the state_dict() of a llmcourse.gpt.GPT with bias=True")
        value = state_dict[key]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return np.ascontiguousarray(array.T) if transposed else array.copy()

    n_layer = len({key.split(".")[2] for key in state_dict if key.startswith("transformer.h.")})
    if n_layer == 0:
        raise KeyError("state_dict has no transformer blocks ('transformer.h.0....'): is it a GPT's state dict?")
    blocks = [{key: get(f"h.{i}.{name}", transposed) for key, (name, transposed) in BLOCK_LAYERS.items()}
              for i in range(n_layer)]
    final = {f"ln_f.{ours}": get(f"ln_f.{name}") for ours, name in (("gamma", "weight"), ("beta", "bias"))}
    return {"n_head": int(n_head), "wte": get("wte.weight"), "wpe": get("wpe.weight"), "blocks": blocks} | final


# -- 05 training ------------------------------------------------------------------------------------------------------

def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                  clip: float | None = 1.0) -> float:
    """One optimisation step on (x, y) (B, T); returns the mean cross-entropy before the update."""
    ids = {"x": x, "y": y}
    wrong = [name for name, t in ids.items() if not isinstance(t, torch.Tensor) or t.dim() != 2
             or t.dtype not in (torch.int32, torch.int64)]
    if wrong:
        raise ValueError(f"{wrong[0]} must be a (B, T) tensor of int64 token ids, got {ids[wrong[0]]!r:.80}")
    if y.dtype is not torch.int64:
        raise ValueError(f"the targets y must be int64, as cross-entropy takes them; got {y.dtype} (use y.long())")
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have one shape, (B, T)")
    if not (clip is None or clip > 0):
        raise ValueError(f"clip must be > 0, or None for no clipping; got {clip}")
    return _training_step(model, optimizer, x, y, clip=clip)


def perplexity(mean_cross_entropy: float) -> float:
    """exp(mean cross-entropy in nats) (inf when that overflows) of a real number >= 0 or a one-element tensor."""
    value = mean_cross_entropy
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"mean_cross_entropy must be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"mean_cross_entropy must be a real number, got {type(value).__name__}")
    if not value >= 0:  # NaN included
        raise ValueError(f"a mean cross-entropy is >= 0 nats, got {value}")
    return _perplexity(float(value))


# -- 06 decoding ------------------------------------------------------------------------------------------------------

def _logits(logits: Any, name: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}: use torch.as_tensor(...)")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1 tokens, got shape {tuple(logits.shape)}")
    return logits


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature (> 0), a new tensor."""
    check_sampling_args(temperature, None, None)
    if temperature == 0:
        raise ValueError("temperature must be > 0: temperature 0 is greedy decoding (take the argmax)")
    return filtered_logits(_logits(logits), temperature=temperature)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits with every entry below the k-th largest of its row set to -inf (ties at the boundary kept)."""
    check_sampling_args(1.0, k, None)
    return filtered_logits(_logits(logits), top_k=k)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """logits with the tokens outside the nucleus of probability mass p set to -inf."""
    check_sampling_args(1.0, None, p)
    return filtered_logits(_logits(logits), top_p=p)


def beam_step(beam_scores: torch.Tensor, next_log_probs: torch.Tensor,
              beam_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(beam_index, token, score) of the beam_width best extensions, best first, ties to the smaller beam then token."""
    beam_scores, next_log_probs = _logits(beam_scores, "beam_scores"), _logits(next_log_probs, "next_log_probs")
    if isinstance(beam_width, bool) or not isinstance(beam_width, numbers.Integral):
        raise TypeError(f"beam_width must be an int, got {type(beam_width).__name__}")
    if beam_scores.dim() != 1 or next_log_probs.dim() != 2 or next_log_probs.shape[0] != beam_scores.shape[0]:
        raise ValueError(f"beam_scores must have shape (W,) and next_log_probs (W, V), got "
                         f"{tuple(beam_scores.shape)} and {tuple(next_log_probs.shape)}")
    if not 1 <= beam_width <= next_log_probs.numel():
        raise ValueError(f"beam_width must lie in 1..{next_log_probs.numel()} (W * V candidates), got {beam_width}")
    return _beam_step(beam_scores, next_log_probs, int(beam_width))


# -- 07 KV-cache ------------------------------------------------------------------------------------------------------

def _cache_shapes(cache_k: Any, cache_v: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(cache_k, np.ndarray) or not isinstance(cache_v, np.ndarray):
        raise TypeError("cache_k and cache_v must be NumPy arrays (from empty_cache)")
    if cache_k.ndim < 2 or cache_k.shape[:-1] != cache_v.shape[:-1]:
        raise ValueError(f"cache_k {cache_k.shape} and cache_v {cache_v.shape} must have shapes (..., max_len, D) "
                         "with the same leading dimensions")
    return cache_k, cache_v


def _length(length: Any, max_len: int, low: int) -> int:
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or not low <= length <= max_len:
        raise ValueError(f"length must be an int in {low}..{max_len} (the cache's max_len), got {length!r}")
    return int(length)


def cache_append(cache_k: np.ndarray, cache_v: np.ndarray, length: int, k_new: np.ndarray,
                 v_new: np.ndarray) -> int:
    """Write k_new, v_new (..., T_new, D) at positions length.. of the cache, in place; return length + T_new."""
    cache_k, cache_v = _cache_shapes(cache_k, cache_v)
    length = _length(length, cache_k.shape[-2], 0)
    k_new, v_new = _cache_shapes(k_new, v_new)
    if k_new.shape[:-2] != cache_k.shape[:-2] or (k_new.shape[-1], v_new.shape[-1]) != (cache_k.shape[-1],
                                                                                         cache_v.shape[-1]):
        raise ValueError(f"k_new {k_new.shape} and v_new {v_new.shape} do not fit the cache {cache_k.shape}, "
                         f"{cache_v.shape}")
    end = length + k_new.shape[-2]
    if end > cache_k.shape[-2]:
        raise ValueError(f"the cache is full: {length} + {k_new.shape[-2]} positions do not fit max_len "
                         f"{cache_k.shape[-2]}")
    for cache, new in ((cache_k, k_new), (cache_v, v_new)):
        cache[..., length:end, :] = new  # in place: nothing is reallocated
    return end


def cached_attention(q: np.ndarray, cache_k: np.ndarray, cache_v: np.ndarray, length: int) -> np.ndarray:
    """Attention of the query q (..., 1, D) over the first `length` cached keys and values: (..., 1, D_v)."""
    cache_k, cache_v = _cache_shapes(cache_k, cache_v)
    q = np.asarray(q)
    if q.dtype.kind != "f" or cache_k.dtype.kind != "f" or cache_v.dtype.kind != "f":
        raise TypeError("q, cache_k and cache_v must be float arrays")
    if q.shape[:-2] != cache_k.shape[:-2] or q.shape[-2:] != (1, cache_k.shape[-1]):
        raise ValueError(f"q must have shape (..., 1, D) = {cache_k.shape[:-2] + (1, cache_k.shape[-1])}, got "
                         f"{q.shape}")
    length = _length(length, cache_k.shape[-2], 1)
    dtype = np.result_type(q, cache_k, cache_v)
    q, k, v = (a.astype(dtype, copy=False) for a in (q, cache_k[..., :length, :], cache_v[..., :length, :]))
    return F.scaled_dot_product_attention(*_torch(q, k, v)).numpy()


def _gpt(weights: Mapping[str, torch.Tensor], n_head: int) -> GPT:
    """The llmcourse GPT whose state dict is `weights` (its config read from the shapes), sharing their memory."""
    (V, C), P = weights["transformer.wte.weight"].shape, weights["transformer.wpe.weight"].shape[0]
    n_layer = 1 + max(int(key.split(".")[2]) for key in weights if key.startswith("transformer.h."))
    model = gpt_skeleton(GPTConfig(vocab_size=V, block_size=P, n_layer=n_layer, n_head=int(n_head), n_embd=C))
    model.load_state_dict(dict(weights), strict=True, assign=True)
    return model.to(weights["transformer.wte.weight"].dtype).eval()


def gpt_forward_cached(weights: Mapping[str, torch.Tensor], n_head: int, idx: torch.Tensor, cache_k: torch.Tensor,
                       cache_v: torch.Tensor, length: int, positions: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of `GPT.forward` on new tokens idx (B, T) with a cache (n_layer, B, n_head, max_len, head_dim)
    holding `length` positions, written in place."""
    model = _gpt(weights, n_head)
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"idx must be a (B, T) tensor of token ids, got {idx!r:.80}")
    config = model.config
    shape = (config.n_layer, idx.shape[0], config.n_head, cache_k.shape[-2] if cache_k.dim() == 5 else 0,
             config.head_dim)
    if cache_k.shape != shape or cache_v.shape != shape:
        raise ValueError(f"cache_k and cache_v must have shape (n_layer, B, n_head, max_len, head_dim), got "
                         f"{tuple(cache_k.shape)} and {tuple(cache_v.shape)}")
    if not 0 <= length <= shape[3]:
        raise ValueError(f"length must lie in 0..{shape[3]} (the cache's max_len), got {length}")
    cache = KVCache(config, idx.shape[0], 1, dtype=cache_k.dtype)
    cache.keys, cache.values = list(cache_k.unbind(0)), list(cache_v.unbind(0))  # views: the model writes into them
    cache.max_len, cache.length = shape[3], int(length)
    with torch.no_grad():
        return model(idx, cache=cache, positions=positions, attention_mask=attention_mask)


# -- 08 batching ------------------------------------------------------------------------------------------------------

def padding_mask(lengths: Sequence[int], width: int | None = None) -> np.ndarray:
    """(B, S) bool mask of prompts of `lengths` right-aligned in `width` columns (default: the longest)."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"lengths must be a non-empty list of prompt lengths, got shape {lengths.shape}")
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.min() < 1:
        raise ValueError(f"every prompt needs at least one token, got lengths {lengths.tolist()}")
    width = int(lengths.max()) if width is None else _int(width, "width")
    if width < lengths.max():
        raise ValueError(f"width {width} is shorter than the longest prompt ({lengths.max()})")
    return np.arange(width)[None, :] >= (width - lengths)[:, None]


def row_positions(mask: np.ndarray) -> np.ndarray:
    """int64 (B, S) positions 0, 1, 2, ... of each row's real tokens from its first one; 0 on padding."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (B, S), got {mask.shape}")
    return np.maximum(np.cumsum(mask, axis=1, dtype=np.int64) - 1, 0) * mask


def scheduler_step(slots: list, finished: list[bool], waiting: list) -> tuple[list, list[tuple[int, object]], list]:
    """One continuous-batching step: finished rows free up, free rows take waiting requests, lowest row first."""
    if len(finished) != len(slots):
        raise ValueError(f"finished has {len(finished)} flags for {len(slots)} rows")
    if any(done and request is None for request, done in zip(slots, finished)):
        raise ValueError("a free row (None) cannot be finished")
    running = [request for request in slots if request is not None]
    if len(set(running + list(waiting))) != len(running) + len(waiting):
        raise ValueError("a request is in two places at once (two rows, or a row and the waiting list)")
    return schedule_step(slots, finished, waiting)


def generate_batch(weights: Mapping[str, torch.Tensor], n_head: int, prompts: Sequence[Sequence[int]],
                   max_new_tokens: int, *, temperature: float = 1.0, seed: int | None = None,
                   eos_id: int | None = None, pad_id: int = 0) -> list[torch.Tensor]:
    """`batching.generate_batch` on the GPT whose state dict is `weights`: one int64 tensor per prompt, the prompt
    and its max_new_tokens new tokens."""
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise ValueError(f"max_new_tokens is a number of tokens, an int; got {max_new_tokens!r}")
    return _generate_batch(_gpt(weights, n_head), prompts, max_new_tokens, temperature=temperature, seed=seed,
                           eos_id=eos_id, pad_id=pad_id)


# -- 09 quantization --------------------------------------------------------------------------------------------------

def _matrix(w: Any, name: str = "w") -> np.ndarray:
    w = np.asarray(w)
    if w.dtype.kind != "f" or w.ndim != 2 or not np.isfinite(w).all():
        raise ValueError(f"{name} must be a finite float matrix, got {w.dtype} of shape {w.shape}")
    return w


def quantize_per_channel(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, one scale per row) of symmetric per-channel quantization with `bits` bits (2..8)."""
    w = _matrix(w)
    if not 2 <= _int(bits, "bits") <= 8:
        raise ValueError(f"bits must be 2..8, got {bits}")
    codes, scale = quantize_groupwise_torch(torch.from_numpy(w), bits, w.shape[1])
    return codes.numpy(), scale[:, 0].numpy()


def dequantize_per_channel(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q[i, j] * scale[i], in scale's dtype."""
    q, scale = np.asarray(q), np.asarray(scale)
    if q.dtype.kind not in "iu" or q.ndim != 2 or scale.shape != q.shape[:1]:
        raise ValueError(f"q must be an integer matrix and scale have one entry per row, got {q.dtype} {q.shape} "
                         f"and {scale.shape}")
    return np.multiply(q, scale[:, None], dtype=scale.dtype)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """uint8 (..., n // 2): code 2i in the low nibble of byte i, code 2i + 1 in the high one."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise TypeError(f"q must be integer codes, got dtype {q.dtype}")
    if q.ndim < 1 or q.shape[-1] % 2 or (q.size and (q.min() < -8 or q.max() > 7)):
        raise ValueError(f"q must have an even last dimension and values in [-8, 7], got shape {q.shape}")
    return pack_int4_torch(torch.from_numpy(q.astype(np.int8))).numpy()


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """int8 (..., 2 m) codes in [-8, 7] of uint8 (..., m), low nibble first."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be a uint8 array, got dtype {packed.dtype}")
    if packed.ndim < 1:
        raise ValueError("packed must have at least one dimension")
    return unpack_int4_torch(torch.from_numpy(packed)).numpy()


def quantized_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ (q * scale[:, None]).T + bias, scaling the output columns of x @ q.T, in x's dtype."""
    x, q, scale = np.asarray(x), np.asarray(q), np.asarray(scale)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a float array, got dtype {x.dtype}")
    if q.dtype.kind not in "iu" or q.ndim != 2 or x.shape[-1:] != q.shape[1:] or scale.shape != q.shape[:1] or (
            bias is not None and np.shape(bias) != q.shape[:1]):
        raise ValueError(f"x (..., in), q (out, in), scale (out,) and bias (out,) do not fit: x {x.shape}, q "
                         f"{q.shape}, scale {scale.shape}, bias {np.shape(bias)}")
    y = (x @ q.T.astype(x.dtype)) * scale.astype(x.dtype)
    return y if bias is None else y + np.asarray(bias).astype(x.dtype)


_QUANTIZED = ("transformer.wte.weight", "transformer.wpe.weight", "attn.c_attn.weight", "attn.c_proj.weight",
              "mlp.c_fc.weight", "mlp.c_proj.weight")  # the matrices quantize_model stores quantized


def quantize_state_dict(state_dict: Mapping[str, torch.Tensor], scheme: str) -> dict[str, Any]:
    """What `quantization.quantize_model` stores, as data: (codes, scale) of each QuantizedTensor it makes, the other
    weights as they are, the tied output head left out."""
    if scheme == "int8-kernel":
        raise ValueError("'int8-kernel' is PyTorch's int8 kernel, not a way to store weights: use 'fp32', 'int8' or "
                         "'int4-g<group size>'")
    kind, group, searched = parse_scheme(scheme)
    if searched:
        raise ValueError(f"{scheme!r} searches its int4 scales, which this exercise does not ask for: use 'fp32', "
                         "'int8' or 'int4-g<group size>'")
    out: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        if key == "lm_head.weight":
            continue
        if kind == "fp32" or not key.endswith(_QUANTIZED):
            out[key] = tensor
            continue
        table = QuantizedTensor(tensor, 4 if kind == "int4" else 8, group)  # ValueError when group does not divide
        out[key] = (table.codes, table.scale)
    return out


# -- 11 from GPT-2 to Llama ----------------------------------------------------------------------------------------

def _eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


def _rmsnorm_inputs(x: Any, weight: Any, eps: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    x, weight = _floats([("x", x), ("weight", weight)])
    if x.ndim < 1 or weight.shape != x.shape[-1:]:
        raise ValueError(f"weight has shape {weight.shape}; it must be the shape of x's last axis, x being {x.shape}")
    xt, wt = _torch(x, weight.astype(x.dtype, copy=False))
    return xt, wt, _eps(eps)


def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """weight * x / sqrt(mean(x^2) + eps) over the last axis by torch's rms_norm, in x's dtype."""
    xt, wt, eps = _rmsnorm_inputs(x, weight, eps)
    return F.rms_norm(xt, wt.shape, wt, eps=eps).numpy()


def rmsnorm_backward(dout: np.ndarray, x: np.ndarray, weight: np.ndarray,
                     eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(dx (..., D), dweight (D,)) of RMSNorm, by torch.autograd through rms_norm, in x's dtype."""
    xt, wt, eps = _rmsnorm_inputs(x, weight, eps)
    (grad_out,) = _floats([("dout", dout)])
    _same_shape(grad_out, tuple(xt.shape))
    (grad_out,) = _torch(grad_out.astype(xt.numpy().dtype))
    xt, wt = xt.detach().requires_grad_(), wt.detach().requires_grad_()
    dx, dweight = torch.autograd.grad(F.rms_norm(xt, wt.shape, wt, eps=eps), (xt, wt), grad_out)
    return dx.numpy(), dweight.numpy()


def swiglu(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """down(silu(gate(x)) * up(x)) with nn.Linear-layout weights (out, in), as llmcourse.llama.SwiGLU, in x's dtype."""
    x, *weights = _floats([("x", x), ("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)])
    if x.ndim < 1:
        raise ValueError("x must have shape (..., D), got a scalar")
    hidden, D = weights[0].shape[0] if weights[0].ndim == 2 else 0, x.shape[-1]
    if not hidden or [w.shape for w in weights] != [(hidden, D), (hidden, D), (D, hidden)]:
        raise ValueError(f"for x (..., {D}) the weights must be (hidden, {D}), (hidden, {D}) and ({D}, hidden), got "
                         f"{[w.shape for w in weights]}")
    xt, gate, up, down = _torch(x, *(w.astype(x.dtype, copy=False) for w in weights))
    return F.linear(F.silu(F.linear(xt, gate)) * F.linear(xt, up), down).numpy()


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """x (..., T, d) rotated pair (i, i + d/2) by positions / theta^(2i/d), by llmcourse.llama.rotate, in x's dtype."""
    (x,), positions = _floats([("x", x)]), np.asarray(positions)
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"x must have shape (..., T, d) with d even, got shape {x.shape}")
    if positions.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers, got dtype {positions.dtype}")
    if np.broadcast_shapes(positions.shape, x.shape[:-1]) != x.shape[:-1]:  # ValueError when they do not broadcast
        raise ValueError(f"positions {positions.shape} does not broadcast to x's (..., T) = {x.shape[:-1]}")
    if positions.size and positions.min() < 0:
        raise ValueError("positions must be >= 0")
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 1:
        raise ValueError(f"theta must be a number > 1, got {theta!r}")
    d = x.shape[-1]
    frequencies = np.power(float(theta), -np.arange(0, d, 2) / d)  # (d/2,)
    angles = np.concatenate([np.multiply.outer(positions, frequencies)] * 2, axis=-1)  # (..., T, d)
    cos, sin = _torch(np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype))
    return _rotate(*_torch(x), cos, sin).numpy()


def scaled_dot_product_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                                 mask: np.ndarray | None = None) -> np.ndarray:
    """softmax(q k^T / sqrt(d), boolean mask) v by PyTorch's scaled_dot_product_attention; a query that may attend to
    no key gets 0."""
    q, k, v = _floats([("q", q), ("k", k), ("v", v)])
    if min(q.ndim, k.ndim, v.ndim) < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"q, k, v must have shapes (..., T_q, d), (..., T_k, d), (..., T_k, d_v), got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])  # ValueError when they do not broadcast
    dtype = np.result_type(q, k, v)
    q, k, v = (np.broadcast_to(a.astype(dtype, copy=False), batch + a.shape[-2:]) for a in (q, k, v))
    return _attend(q, k, v, mask, batch + (q.shape[-2], k.shape[-2]), gqa=False)


def gqa_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Attention of q (B, n_head, T, d) over k, v (B, n_kv_head, S, .), query head h reading key/value head
    h // (n_head // n_kv_head): PyTorch's scaled_dot_product_attention with enable_gqa."""
    q, k, v = _floats([("q", q), ("k", k), ("v", v)])
    if not q.ndim == k.ndim == v.ndim == 4 or k.shape[:2] != v.shape[:2] or k.shape[0] != q.shape[0] or \
            k.shape[2:] != (v.shape[2], q.shape[3]):
        raise ValueError(f"q, k, v must be (B, n_head, T, d), (B, n_kv_head, S, d), (B, n_kv_head, S, d_v), got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"n_head = {q.shape[1]} must be a multiple of n_kv_head = {k.shape[1]}")
    dtype = np.result_type(q, k, v)
    q, k, v = (a.astype(dtype, copy=False) for a in (q, k, v))
    return _attend(q, k, v, mask, q.shape[:3] + k.shape[2:3], gqa=True)


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any, scores_shape: tuple[int, ...], *,
            gqa: bool) -> np.ndarray:
    """PyTorch's attention of q over k, v under a boolean mask broadcastable to scores_shape (None: every key);
    a query with no key allowed gets 0."""
    if mask is None:
        return F.scaled_dot_product_attention(*_torch(q, k, v), enable_gqa=gqa).numpy()
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {mask.dtype}")
    if np.broadcast_shapes(mask.shape, scores_shape) != scores_shape:
        raise ValueError(f"mask has shape {mask.shape}, which does not broadcast to (..., T_q, T_k) = {scores_shape}")
    out = F.scaled_dot_product_attention(*_torch(q, k, v, np.broadcast_to(mask, scores_shape)), enable_gqa=gqa)
    return np.where(mask.any(axis=-1, keepdims=True), out.numpy(), 0)



# -- 12 attention without the T x T matrix -------------------------------------------------------------------------

def online_softmax(chunks: Sequence[np.ndarray]) -> np.ndarray:
    """softmax of the concatenated 1-D chunks, streamed (llmcourse.tiled), in the chunks' float dtype."""
    if isinstance(chunks, np.ndarray) or not hasattr(chunks, "__iter__"):
        raise TypeError(f"chunks must be a list of 1-D arrays, got {type(chunks).__name__}")
    chunks = [_float(c, f"chunk {i}") for i, c in enumerate(chunks)]
    if any(c.ndim != 1 for c in chunks):
        raise ValueError(f"every chunk must be 1-D, got shapes {[c.shape for c in chunks]}")
    if any(np.isnan(c).any() or (c == np.inf).any() for c in chunks):
        raise ValueError("the chunks hold NaN or +inf: scores must be finite, or -inf where masked")
    dtype = np.result_type(*chunks, np.float32)
    return _online_softmax(chunks).astype(dtype)  # ValueError when no value is finite


def tiled_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int, causal: bool = True) -> np.ndarray:
    """Attention over keys in tiles of `block` (llmcourse.tiled), causal with query i at key position S - T + i."""
    q, k, v = (np.asarray(a) for a in (q, k, v))
    if any(a.dtype.kind != "f" for a in (q, k, v)):
        raise TypeError("q, k and v must be float arrays")
    if min(q.ndim, k.ndim, v.ndim) < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q (..., T, D), k (..., S, D) and v (..., S, D_v) do not fit: {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if k.shape[-2] == 0:
        raise ValueError("there are no keys (S = 0)")
    block = _int(block, "block")
    dtype = np.result_type(q, k, v)
    return _tiled_attention(q, k, v, block, causal=causal).astype(dtype)



# -- 13 serving many requests --------------------------------------------------------------------------------------

def verify_draft(target_logits: Any, draft_tokens: Sequence[int]) -> tuple[int, int]:
    """(accepted, next token) of greedy speculative decoding (llmcourse.speculative.verify_greedy)."""
    logits = torch.as_tensor(np.asarray(target_logits.detach().cpu() if isinstance(target_logits, torch.Tensor)
                                        else target_logits))
    if not logits.is_floating_point() or logits.dim() != 2:
        raise ValueError(f"target_logits must be a 2-D float (k + 1, V) array, got {tuple(logits.shape)}")
    if isinstance(draft_tokens, (str, bytes)) or not hasattr(draft_tokens, "__len__"):
        raise TypeError(f"draft_tokens must be a list of token ids, got {type(draft_tokens).__name__}")
    if any(isinstance(t, bool) or not isinstance(t, numbers.Integral) for t in draft_tokens):
        raise TypeError(f"draft_tokens must be ints, got {list(draft_tokens)!r}")
    draft = [int(t) for t in draft_tokens]
    if logits.shape[0] != len(draft) + 1 or any(not 0 <= t < logits.shape[1] for t in draft):
        raise ValueError(f"target_logits {tuple(logits.shape)} must have len(draft) + 1 = {len(draft) + 1} rows and "
                         f"every draft token must lie in 0..{logits.shape[1] - 1}, got {draft}")
    return verify_greedy(logits, draft)


def _table(pool: Any, table: Any, length: Any) -> int:
    if not isinstance(pool, np.ndarray) or pool.ndim != 3:
        raise TypeError("pool must be a NumPy array (n_blocks, block_size, D)")
    if not isinstance(table, list) or any(not isinstance(b, numbers.Integral) or not 0 <= b < len(pool)
                                          for b in table):
        raise ValueError(f"table must be a list of block numbers in 0..{len(pool) - 1}, got {table!r}")
    if isinstance(length, bool) or not isinstance(length, numbers.Integral):
        raise TypeError(f"length must be an int, got {type(length).__name__}")
    return _length(length, len(table) * pool.shape[1], 0)


def paged_append(pool: np.ndarray, table: list[int], free: list[int], length: int, x: np.ndarray) -> int:
    """Write x (T_new, D) at positions length.. of the sequence, taking blocks from the end of `free` into `table`
    as needed, all in place; return length + T_new. ValueError (nothing changed) when the free blocks run out."""
    length = _table(pool, table, length)
    if not isinstance(free, list) or set(free) & set(table):
        raise ValueError("free must be a list of unused block numbers, none of them in table")
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != pool.shape[2]:
        raise ValueError(f"x must have shape (T_new, {pool.shape[2]}), got {getattr(x, 'shape', type(x).__name__)}")
    block_size, end = pool.shape[1], length + len(x)
    need = -(-end // block_size) - len(table)
    if need > len(free):
        raise ValueError(f"out of blocks: the sequence needs {need} more, the pool has {len(free)} free")
    table.extend(free.pop() for _ in range(max(need, 0)))
    positions = np.arange(length, end)
    pool[np.asarray(table, dtype=np.int64)[positions // block_size], positions % block_size] = x
    return end


def paged_gather(pool: np.ndarray, table: list[int], length: int) -> np.ndarray:
    """The sequence's first `length` positions (length, D), read through its block table."""
    length = _table(pool, table, length)
    positions = np.arange(length)
    return pool[np.asarray(table, dtype=np.int64)[positions // pool.shape[1]], positions % pool.shape[1]]



def gpt_forward(params: Mapping[str, Any], ids: np.ndarray, *, block: Callable[..., np.ndarray] = block_forward
                ) -> np.ndarray:
    """Logits (B, T, V) of the NumPy GPT whose weights `load_weights` gave, for token ids (B, T): code the course
    provides in exercises/gpt_numpy.py, here for the grader of a student release."""
    ids = np.asarray(ids)
    wte, wpe = np.asarray(params["wte"]), np.asarray(params["wpe"])
    x = wte[ids] + wpe[:ids.shape[1]]  # (B, T, C)
    for layer in params["blocks"]:
        x = block(x, layer, params["n_head"])
    return nl.layernorm_forward(x, params["ln_f.gamma"], params["ln_f.beta"]) @ wte.T  # (B, T, V), tied head


PROVIDED = {"gpt_numpy": ("gpt_forward",)}  # provided code the graded tests call, by module


def fallback(module: str, function: str) -> Callable:
    """The package's version of the exercise function (or provided function of PROVIDED) `module.function`;
    KeyError for anything else."""
    known = catalog.exercise_of(module, function) is not None or function in PROVIDED.get(module, ())
    if not known or function not in globals():
        raise KeyError(f"{module}.{function} is not an exercise function")
    return globals()[function]
