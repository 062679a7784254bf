"""Notebook 04: a GPT forward pass in NumPy, assembled from the pieces of notebooks 02 and 03.

The model is GPT-2: token and position embeddings, `n_layer` pre-LayerNorm transformer blocks, a final LayerNorm,
and an output head tied to the token embeddings (logits = x @ wte.T). Its weights live in a plain dict, `params`:

    params = {
        "n_head": int,
        "wte": (V, C),             # token embeddings; also the output head (tied)
        "wpe": (block_size, C),    # learned position embeddings
        "blocks": [block, ...],    # n_layer dicts, block 0 first
        "ln_f.gamma": (C,), "ln_f.beta": (C,),
    }
    block = {
        "ln_1.gamma": (C,), "ln_1.beta": (C,),
        "attn.w_qkv": (C, 3C), "attn.b_qkv": (3C,),     # q, k, v projections side by side
        "attn.w_proj": (C, C), "attn.b_proj": (C,),
        "ln_2.gamma": (C,), "ln_2.beta": (C,),
        "mlp.w_fc": (C, 4C), "mlp.b_fc": (4C,),
        "mlp.w_proj": (4C, C), "mlp.b_proj": (C,),
    }

Every weight matrix is stored (in, out), so a layer is `x @ w + b`, as in notebooks 02 and 03. PyTorch's nn.Linear
stores its weight (out, in) instead: `load_weights` transposes.

Provided (not exercises): `gpt_forward`, the checks of bad input, `BLOCK_KEYS`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from .attention import multihead_attention
from .backprop import gelu_forward, layernorm_forward, linear_forward

BLOCK_KEYS = ("ln_1.gamma", "ln_1.beta", "attn.w_qkv", "attn.b_qkv", "attn.w_proj", "attn.b_proj",
              "ln_2.gamma", "ln_2.beta", "mlp.w_fc", "mlp.b_fc", "mlp.w_proj", "mlp.b_proj")
_LAYER_KEY = re.compile(r"^transformer\.h\.(\d+)\.")


# -- checks of the input (provided) ------------------------------------------------------------------------------

def _block_shapes(C: int) -> dict[str, tuple[int, ...]]:
    return {"ln_1.gamma": (C,), "ln_1.beta": (C,), "attn.w_qkv": (C, 3 * C), "attn.b_qkv": (3 * C,),
            "attn.w_proj": (C, C), "attn.b_proj": (C,), "ln_2.gamma": (C,), "ln_2.beta": (C,),
            "mlp.w_fc": (C, 4 * C), "mlp.b_fc": (4 * C,), "mlp.w_proj": (4 * C, C), "mlp.b_proj": (C,)}


def _check_block(x, block, n_head) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.dtype.kind != "f":
        raise ValueError(f"x must be a float array of shape (B, T, C), got {x.dtype} of shape {x.shape}")
    if not isinstance(block, Mapping):
        raise TypeError(f"block must be a dict of arrays (one entry of params['blocks']), got {type(block).__name__}")
    for key, shape in _block_shapes(x.shape[-1]).items():
        if key not in block:
            raise KeyError(f"block has no {key!r}; a block holds {', '.join(BLOCK_KEYS)}")
        if np.shape(block[key]) != shape:
            raise ValueError(f"block[{key!r}] has shape {np.shape(block[key])}, expected {shape} for C = "
                             f"{x.shape[-1]} (weights are stored (in, out))")
    if not isinstance(n_head, (int, np.integer)) or isinstance(n_head, bool) or n_head < 1 or x.shape[-1] % n_head:
        raise ValueError(f"n_head must be a positive int dividing C = {x.shape[-1]}, got {n_head!r}")
    return x


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor or array-like as a NumPy array of the same dtype (a copy: the model may train on)."""
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def _check_state_dict(state_dict) -> int:
    """The number of layers of a llmcourse GPT state dict; KeyError naming the first missing key."""
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        raise TypeError("load_weights takes the model's state dict: pass model.state_dict(), not the model")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict name -> tensor, got {type(state_dict).__name__}")
    layers = {int(m.group(1)) for key in state_dict if (m := _LAYER_KEY.match(key))}
    n_layer = max(layers) + 1 if layers else 0
    needed = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
    for i in range(n_layer):
        needed += [f"transformer.h.{i}.{name}" for name in (
            "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
            "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
            "mlp.c_proj.weight", "mlp.c_proj.bias")]
    for key in needed:
        if key not in state_dict:
            raise KeyError(f"state_dict has no {key!r}: pass the state_dict() of a llmcourse.gpt.GPT with "
                           "bias=True (for a Hugging Face GPT-2 file use llmcourse.gpt.load_gpt2 first)")
    if n_layer == 0:
        raise KeyError("state_dict has no transformer blocks ('transformer.h.0....'): is it a GPT's state dict?")
    return n_layer


# -- the exercises -----------------------------------------------------------------------------------------------

def block_forward(x: np.ndarray, block: Mapping[str, np.ndarray], n_head: int, *,
                  attention: Callable[..., np.ndarray] = multihead_attention) -> np.ndarray:
    """One pre-LayerNorm transformer block of GPT-2, forward:

        h = layernorm(x; ln_1.gamma, ln_1.beta)
        x = x + attention(h, attn.w_qkv, attn.b_qkv, attn.w_proj, attn.b_proj, n_head)
        h = layernorm(x; ln_2.gamma, ln_2.beta)
        x = x + linear(gelu(linear(h; mlp.w_fc, mlp.b_fc)); mlp.w_proj, mlp.b_proj)      # the MLP

    Args:
        x: float array (float32 or float64) of shape (B, T, C), the residual stream.
        block: dict of arrays with the keys of `BLOCK_KEYS` (see the module docstring for their shapes); weight
            matrices are (in, out).
        n_head: number of attention heads; divides C.
        attention: the causal multi-head attention to use, called as
            `attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head)`; by default your `multihead_attention` of
            notebook 02.

    Returns:
        Array of shape (B, T, C) and the dtype of `x`: the residual stream after the block.

    Raises:
        KeyError, ValueError: if the block misses a key or a shape does not fit (checked for you before your code
            runs).

    Hint: two sub-layers, each reading a normalised copy of the stream and adding its result back to it.
    More: `llmcourse hint block_forward`.
    """
    x = _check_block(x, block, n_head)
    raise NotImplementedError("block_forward: block_forward is not implemented yet; write your code here")


def load_weights(state_dict: Mapping[str, Any], n_head: int) -> dict[str, Any]:
    """The NumPy GPT's `params` (see the module docstring) from the state dict of a PyTorch `llmcourse.gpt.GPT`.

    The state dict names follow GPT-2 (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`, ...).
    nn.Linear keeps its weight as (out, in), so `transformer.h.{i}.attn.c_attn.weight` is (3C, C) and becomes
    `blocks[i]["attn.w_qkv"]` of shape (C, 3C); the same transpose holds for `attn.c_proj`, `mlp.c_fc` and
    `mlp.c_proj`. Biases, LayerNorm weights (gamma) and biases (beta) and the embeddings are copied as they are;
    `lm_head.weight` is the same tensor as `transformer.wte.weight` (tied), so it needs no entry of its own.

    Args:
        state_dict: `model.state_dict()` of a `llmcourse.gpt.GPT` built with bias=True: a dict name -> tensor
            (torch tensors or NumPy arrays).
        n_head: the model's number of heads (`model.config.n_head`): shapes do not tell it.

    Returns:
        The dict `params` with keys "n_head", "wte", "wpe", "blocks" (a list of n_layer dicts with the keys of
        `BLOCK_KEYS`, block i from `transformer.h.{i}`), "ln_f.gamma" and "ln_f.beta"; every value a NumPy array
        of the state dict's dtype (not a torch tensor), except "n_head" (an int).

    Raises:
        KeyError: if a key is missing, naming it (checked for you before your code runs).
        TypeError: if given the model instead of its state dict (checked for you).

    Hint: the same numbers under other names; PyTorch's Linear stores its weight the other way round.
    More: `llmcourse hint load_weights`.
    """
    n_layer = _check_state_dict(state_dict)
    raise NotImplementedError("load_weights: load_weights is not implemented yet; write your code here")


# -- the whole model (provided) ----------------------------------------------------------------------------------

def gpt_forward(params: Mapping[str, Any], ids: np.ndarray, *, block: Callable[..., np.ndarray] = block_forward,
                attention: Callable[..., np.ndarray] | None = None,
                embedding: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Logits (B, T, V) of the NumPy GPT for token ids (B, T), in the dtype of the weights.

    `block`, `attention` and `embedding` (called as `embedding(ids, weight)`, like `embedding_forward` of
    notebook 01) choose the implementations to assemble the model from: the notebook passes yours, through the
    exercise loader. `attention=None` lets `block` use its default; `embedding=None` indexes `weight[ids]`.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
        raise ValueError(f"ids must be integer token ids of shape (B, T) with T >= 1, got {ids.dtype} of shape "
                         f"{ids.shape}")
    wte, wpe = np.asarray(params["wte"]), np.asarray(params["wpe"])
    B, T = ids.shape
    if T > wpe.shape[0]:
        raise ValueError(f"{T} tokens do not fit the model's context of {wpe.shape[0]}: crop to the last "
                         f"{wpe.shape[0]}")
    if ids.min() < 0 or ids.max() >= wte.shape[0]:
        raise ValueError(f"token ids must lie in [0, {wte.shape[0]}), got {ids.min()}..{ids.max()}")
    kwargs = {} if attention is None else {"attention": attention}
    lookup = embedding or (lambda ids, weight: weight[ids])
    x = lookup(ids, wte) + lookup(np.arange(T), wpe)  # (B, T, C): token embedding + position embedding
    for block_params in params["blocks"]:
        x = block(x, block_params, params["n_head"], **kwargs)  # (B, T, C)
    x = layernorm_forward(x, params["ln_f.gamma"], params["ln_f.beta"])  # (B, T, C)
    return x @ wte.T  # (B, T, V): the output head is the token embedding matrix (tied)
