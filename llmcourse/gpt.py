"""A GPT in PyTorch with the GPT-2 architecture, in one readable file (after Karpathy's nanoGPT).

Parameter names follow Hugging Face's GPT-2 layout (`transformer.h.0.attn.c_attn.weight`, ...), so a GPT-2 state
dict loads with a transpose of the Conv1D weights. Beyond plain training, `forward` takes what fast inference needs:

- `cache`: a `KVCache`; keys and values of earlier tokens are kept, so each new token costs one position's work.
- `positions`: per-row positions (B, T), for left-padded batches where rows start at different offsets.
- `attention_mask`: (B, S) booleans over every key position, past and new; False marks padding no one attends to.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcourse import native
from llmcourse.files import read_json


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # longest context, in tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = True  # GPT-2 has biases in its Linear layers and LayerNorms

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise TypeError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
            if value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self) -> int:
        """Heads of keys and values: one per query head in GPT-2 (grouped-query attention has fewer, see llama.py)."""
        return self.n_head

    @classmethod
    def gpt2(cls) -> "GPTConfig":
        """The shape of GPT-2 small (124M parameters)."""
        return cls(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for `max_len` tokens.

    Each layer's keys and values have shape (B, n_kv_head, max_len, head_dim); the first `length` positions are
    filled. Its size is 2 (K and V) x n_layer x n_kv_head x head_dim x max_len x B x bytes per element (n_kv_head is
    n_head in GPT-2; fewer with grouped-query attention).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        max_len = config.block_size if max_len is None else max_len
        if not 1 <= max_len <= config.block_size:
            raise ValueError(f"a KV-cache for this model holds 1 to {config.block_size} tokens (block_size), "
                             f"asked for {max_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.batch_size, self.max_len, self.length = batch_size, max_len, 0

    @staticmethod
    def bytes_needed(config: GPTConfig, batch_size: int, tokens: int, dtype: torch.dtype = torch.float32) -> int:
        """The formula: 2 x n_layer x n_kv_head x head_dim x tokens x batch_size x bytes per element."""
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * config.n_layer * config.n_kv_head * config.head_dim * tokens * batch_size * element

    @property
    def nbytes(self) -> int:
        """Bytes the cache's tensors occupy (allocated for max_len tokens)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def check_room(self, batch_size: int, new_tokens: int) -> None:
        if batch_size != self.batch_size:
            raise ValueError(f"this KV-cache was made for a batch of {self.batch_size} rows, got {batch_size}")
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"the KV-cache is full: it holds {self.max_len} tokens, {self.length} are used and "
                             f"{new_tokens} more were given; make a larger cache (at most block_size) or crop "
                             "the context")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values (B, n_kv_head, T, head_dim) after the cached ones; return all of them so far."""
        keys, values, T = self.keys[layer], self.values[layer], k.shape[2]
        keys.narrow(2, self.length, T).copy_(k)
        values.narrow(2, self.length, T).copy_(v)
        return keys.narrow(2, 0, self.length + T), values.narrow(2, 0, self.length + T)

    def fused_attention(self, batch_size: int, new_tokens: int, device: torch.device) -> bool:
        """Whether a decoding step may run each layer's attention in one C call (`native.attend_cached`): batch 1,
        at most native.NATIVE_ROWS new tokens, float32 on the CPU, the C kernels built."""
        return (batch_size == 1 and new_tokens <= native.NATIVE_ROWS and device.type == "cpu"
                and self.keys[0].dtype == torch.float32 and native.available())

    def advance(self, new_tokens: int) -> None:
        """Called once per forward, after every layer wrote its keys and values."""
        self.length += new_tokens

    def shift(self, offset: int) -> None:
        """Move every row's filled positions by `offset`: > 0 opens `offset` empty positions at the front (a row
        that joins a continuous batch needs room for its prompt), < 0 drops the first -offset positions (padding
        that no row attends to any more). The caller's attention mask must move the same way."""
        if not -self.length <= offset <= self.max_len - self.length:
            raise ValueError(f"cannot shift a KV-cache holding {self.length} of {self.max_len} positions by {offset}")
        old, self.length = self.length, self.length + offset
        for t in self.keys + self.values:
            if offset > 0:
                t[:, :, offset:self.length] = t[:, :, :old].clone()
            elif offset < 0:
                t[:, :, :self.length] = t[:, :, -offset:old].clone()

    def copy_row(self, row: int, source: "KVCache", source_row: int, tokens: int) -> None:
        """Copy the last `tokens` filled positions of `source`'s row `source_row` into the last `tokens` filled
        positions of `row` (right-aligned, like the rows of a left-padded batch)."""
        if not 0 <= tokens <= min(self.length, source.length):
            raise ValueError(f"cannot copy {tokens} positions: this cache holds {self.length}, the source "
                             f"{source.length}")
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values):
            mine[row, :, self.length - tokens:self.length] = theirs[source_row, :, source.length - tokens:source.length]


def check_inputs(config, idx: torch.Tensor, cache: KVCache | None, positions: torch.Tensor | None) -> torch.Tensor:
    """The checks of a forward pass, with one clear line for each mistake; the positions (B, T) to use."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"idx must be a torch tensor of token ids (B, T), got {type(idx).__name__}: use "
                        "torch.tensor([ids])")
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx must be integer token ids of shape (B, T), got {idx.dtype} of shape "
                         f"{tuple(idx.shape)}")
    B, T = idx.shape
    past = 0 if cache is None else cache.length
    if T == 0:
        raise ValueError("idx holds no tokens (T = 0): give at least one token")
    low, high = idx.min().item(), idx.max().item()  # one look at the ids, so that a wrong one is named here
    if low < 0 or high >= config.vocab_size:
        raise ValueError(f"idx must hold token ids in 0..{config.vocab_size - 1} (the model's vocabulary), "
                         f"got {low}..{high}")
    if cache is not None:
        cache.check_room(B, T)
    if positions is None:
        if past + T > config.block_size:
            raise ValueError(f"{past + T} tokens do not fit the model's context of {config.block_size}: "
                             "crop the context to the last block_size tokens")
        positions = torch.arange(past, past + T, device=idx.device).expand(B, T)
    elif positions.shape != (B, T):
        raise ValueError(f"positions must have the shape of idx {(B, T)}, got {tuple(positions.shape)}")
    elif positions.numel() and (positions.min() < 0 or positions.max() >= config.block_size):
        raise ValueError(f"positions must lie in [0, {config.block_size}), got {positions.min().item()}.."
                         f"{positions.max().item()}")
    return positions


def attention_mask_for(B: int, T: int, past: int, attention_mask: torch.Tensor | None,
                       device: torch.device) -> torch.Tensor | None:
    """(B, 1, T, S) booleans, True where query i may attend key j; None when no key is hidden from any query but by
    plain causal attention (no padding, and nothing cached or a single new token)."""
    if attention_mask is None and (past == 0 or T == 1):
        return None
    S = past + T
    query_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1) position of each new token
    key_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    allowed = (key_pos <= query_pos)[None, None]  # (1, 1, T, S) causal
    if attention_mask is not None:
        if attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask must have shape (B, cached + new tokens) = {(B, S)}, "
                             f"got {tuple(attention_mask.shape)}")
        # A padding query would see no key at all (NaN); letting it see itself keeps it finite and harmless.
        allowed = allowed & attention_mask.bool()[:, None, None, :] | (key_pos == query_pos)[None, None]
    return allowed


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        if mask is None and isinstance(cache, KVCache) and cache.fused_attention(B, T, x.device):
            # Decoding on the CPU: the same causal attention in one call of the course's C kernel (llmcourse.native)
            y = native.attend_cached(self.c_attn(x), cache.keys[layer], cache.values[layer], cache.length)
            return self.c_proj(y)
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hd), S = cached + T
        if mask is None:  # causal attention (a single new token may see every cached one)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, T, S)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's GELU is the tanh approximation


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.ModuleList):
    """The transformer's blocks, applied in turn; block `layer` reads and writes layer `layer` of the KV-cache."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        for layer, block in enumerate(self):
            x = block(x, mask, cache, layer)  # (B, T, C)
        return x


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation, used by `apply`: N(0, 0.02) for Linear and Embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class LanguageModel(nn.Module):
    """What the course's language models share: `config` (vocab_size, block_size, ...) and a parameter count."""

    config: GPTConfig

    def num_parameters(self) -> int:
        """Parameters counted once (a tied head is the embedding matrix)."""
        return sum(p.numel() for p in self.parameters())


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            h=Blocks(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: the output head reuses the token embeddings
        self.apply(init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled down by depth
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx: torch.Tensor, *, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T); (B, 1, vocab_size) with `last_only`.

        `positions` (B, T) default to past, past + 1, ... where past is the number of cached tokens;
        `attention_mask` (B, past + T) marks real tokens True and padding False.
        """
        positions = check_inputs(self.config, idx, cache, positions)  # (B, T)
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        fused = attention_mask is None and isinstance(cache, KVCache) and cache.fused_attention(B, T, idx.device)
        mask = None if fused else attention_mask_for(B, T, past, attention_mask, idx.device)  # fused: causal in C
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.h(x, mask, cache)  # through every block in turn (B, T, C)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C): generation needs only the next token's logits
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)


def attention_weights(model: GPT, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Each head's attention weights (B, n_head, T, T) in block `layer` for token ids (B, T): the causal softmax that
    the block's attention applies, recomputed from the block's input (captured by a hook during a forward pass)."""
    n_layer = model.config.n_layer
    if isinstance(layer, bool) or not isinstance(layer, Integral) or not -n_layer <= layer < n_layer:
        raise ValueError(f"layer must be a block index in 0..{n_layer - 1} (or -1 for the last), got {layer!r}")
    block = model.transformer.h[layer]
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model(ids)
            x = block.ln_1(captured[0])  # (B, T, C): what the attention reads
            B, T, C = x.shape
            q, k, _ = block.attn.c_attn(x).split(C, dim=2)
            q, k = (t.view(B, T, model.config.n_head, -1).transpose(1, 2) for t in (q, k))  # (B, nh, T, hd)
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
            future = torch.ones(T, T, dtype=torch.bool, device=ids.device).triu(1)
            return scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    finally:
        handle.remove()


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A GPT freshly initialised from `seed`, in eval mode, on the CPU: for tests and speed measurements, where the
    weights' values do not matter."""
    torch.manual_seed(seed)
    return GPT(config).eval()


# -- GPT-2 checkpoints in the Hugging Face layout ----------------------------------------------------------------

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # (in, out) in HF
_HF_BUFFER = r"h\.\d+\.attn\.(bias|masked_bias)"  # the causal-mask buffers of older HF checkpoints, not weights


def _hf_shapes(V: int, P: int, C: int, n_layer: int) -> dict[str, tuple[int, ...]]:
    """Every weight of a GPT-2 checkpoint (keys without `transformer.`) and its shape, Conv1D weights (in, out)."""
    block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C), "attn.c_attn.bias": (3 * C,),
             "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
             "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C),
             "mlp.c_proj.bias": (C,)}
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def _read_checkpoint(source) -> tuple[dict[str, torch.Tensor], str, bool]:
    """The state dict in `source` (a dict, or a .safetensors/.bin/.pt/.pth file), how to name it in errors, and
    whether its tensors are the caller's (a dict) rather than freshly read."""
    if isinstance(source, Mapping):
        state, what = dict(source), "the state dict"
    else:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source must be a state dict or the path of a checkpoint file, got "
                            f"{type(source).__name__}")
        path = os.fspath(source)
        what = f"checkpoint file {path!r}"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {what}: give the path of a local .safetensors, .bin or .pt file "
                                    "(nothing is downloaded)")
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in (".safetensors", ".bin", ".pt", ".pth"):
            raise ValueError(f"{what} has an unknown format {suffix!r}: use .safetensors, .bin, .pt or .pth")
        try:
            if suffix == ".safetensors":
                from safetensors.torch import load_file  # imported only when a .safetensors file is read

                state = load_file(path, device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file raises whatever its reader raises
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"{what} is not a readable {suffix} checkpoint: {reason}") from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{what} holds a {type(state).__name__}, not a state dict (name -> tensor)")
        state = dict(state)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{what}: {key!r} is a {type(value).__name__}, not a tensor")
    return state, what, isinstance(source, Mapping)


def _gpt2_folder(folder, n_head: int | None) -> tuple[str, int | None]:
    """The weights file of a Hugging Face GPT-2 folder, and n_head from its config.json (unless given)."""
    config_file = os.path.join(folder, "config.json")
    if n_head is None and os.path.isfile(config_file):
        n_head = read_json(config_file, "the model's config").get("n_head")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name), n_head
    raise FileNotFoundError(f"{os.fspath(folder)!r} holds no model.safetensors or pytorch_model.bin: put GPT-2's "
                            "weights there (nothing is downloaded)")


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Makes weight initialisation a no-op (on the meta device there is nothing to fill, and PyTorch's meta
    kernels for random init are slow to load)."""

    INIT = frozenset({"normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "zero_", "ones_",
                      "fill_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.INIT:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def gpt_skeleton(config: GPTConfig) -> GPT:
    """A GPT of this shape on PyTorch's "meta" device: no memory, no init, in milliseconds even for GPT-2 XL.

    Good for counting parameters, and for loading a checkpoint with `load_state_dict(..., assign=True)`."""
    with torch.device("meta"), _SkipInit():
        return GPT(config)


def load_gpt2(source, n_head: int | None = None) -> GPT:
    """A GPT with the weights of a GPT-2 state dict in the Hugging Face layout. Nothing is downloaded.

    `source` is a dict name -> tensor, the path (str or Path) of a local `.safetensors`, `.bin`, `.pt` or `.pth`
    file, or a Hugging Face model folder (its `model.safetensors` or `pytorch_model.bin`, and `n_head` from its
    `config.json`). Keys may carry the `transformer.` prefix (HF's GPT2LMHeadModel) or not (GPT2Model);
    `lm_head.weight`, if present, must equal the token embeddings (GPT-2 ties them); the mask buffers
    `attn.bias`/`attn.masked_bias` are ignored. HF's Conv1D weights are stored (in, out) and are transposed into
    nn.Linear's (out, in).

    The config comes from the tensors' shapes, except `n_head`, which shapes cannot tell: it defaults to
    n_embd // 64, as in every GPT-2 size. The model is float32, on the CPU: move it with `.to(get_device())`.
    Raises KeyError naming a missing key, ValueError naming a wrong shape, an unexpected key or an unreadable file.
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        source, n_head = _gpt2_folder(source, n_head)
    state, what, callers = _read_checkpoint(source)
    weights, head = {}, None
    for key, value in state.items():
        short = key.removeprefix("transformer.")
        if short == "lm_head.weight":
            head = value
        elif not re.fullmatch(_HF_BUFFER, short):
            weights[short] = value
    for key in ("wte.weight", "wpe.weight"):
        if key not in weights:
            raise KeyError(f"{what} has no {key!r} (nor 'transformer.{key}'): is it a GPT-2 state dict? Its first "
                           f"keys are {list(state)[:5]}")
        if weights[key].dim() != 2:
            raise ValueError(f"{what}: {key!r} has shape {tuple(weights[key].shape)}, expected a matrix")
    (V, C), P = weights["wte.weight"].shape, weights["wpe.weight"].shape[0]
    layers = [int(m.group(1)) for key in weights if (m := re.match(r"h\.(\d+)\.", key))]
    n_layer = max(layers) + 1 if layers else 0
    if n_head is None:
        if C % 64:
            raise ValueError(f"cannot guess n_head for n_embd = {C} (GPT-2 uses n_embd // 64): pass n_head=")
        n_head = C // 64
    config = GPTConfig(vocab_size=V, block_size=P, n_layer=n_layer, n_head=n_head, n_embd=C)  # checks the values
    expected = _hf_shapes(V, P, C, n_layer)
    unexpected = [key for key in weights if key not in expected]
    if unexpected:
        raise ValueError(f"{what} holds keys a GPT-2 does not have: {unexpected[:5]}")
    ours = {}
    for key, shape in expected.items():
        if key not in weights:
            raise KeyError(f"{what} has no {key!r} (nor 'transformer.{key}'): the checkpoint is incomplete")
        value = weights[key]
        if tuple(value.shape) != shape:
            raise ValueError(f"{what}: {key!r} has shape {tuple(value.shape)}, expected {shape} (Hugging Face "
                             "layout: Conv1D weights are (in, out); a llmcourse GPT's own state dict loads with "
                             "model.load_state_dict)")
        value = value.to(torch.float32, copy=callers)  # the model must not share memory with the caller's dict
        ours[f"transformer.{key}"] = (value.t() if key.endswith(_CONV1D) else value).contiguous()
    if head is not None and (head.shape != (V, C) or not torch.equal(head.float(), ours["transformer.wte.weight"])):
        raise ValueError(f"{what}: 'lm_head.weight' differs from the token embeddings 'wte.weight'; GPT-2 ties "
                         "them and so does this GPT")
    model = gpt_skeleton(config)  # no memory and no random init: every weight is assigned from the checkpoint
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    model.load_state_dict(ours, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign replaced both Parameters: tie them again
    return model.eval()


def to_gpt2_state_dict(model: GPT, *, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """The model's weights as a GPT-2 state dict in the Hugging Face layout, the inverse of `load_gpt2`.

    Linear weights are transposed to Conv1D's (in, out); `lm_head.weight` is left out (tied to `wte.weight`, as in
    HF's saved files). Tensors are contiguous CPU copies, ready for `safetensors.torch.save_file` or `torch.save`.
    `prefix=""` gives the keys of HF's GPT2Model.
    """
    if not model.config.bias:
        raise ValueError("GPT-2 has biases in its Linear layers and LayerNorms; this model was built with bias=False")
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        short = key.removeprefix("transformer.")
        value = value.detach().cpu()
        out[prefix + short] = (value.t() if short.endswith(_CONV1D) else value).contiguous().clone()
    return out
