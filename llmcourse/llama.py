"""A Llama in PyTorch: the GPT of `gpt.py` with the four changes every open model since 2023 shares.

1. RMSNorm instead of LayerNorm: rescale by the root mean square, no mean subtracted, no bias.
2. A SwiGLU MLP: down(silu(gate(x)) * up(x)), three matrices instead of two, hidden width about 8/3 of the model's.
3. Rotary position embeddings (RoPE) instead of learned positions: each query and key is rotated, pair of features by
   pair, by an angle proportional to its position, so their dot product depends only on the distance between them.
   Keys are cached already rotated; per-row positions make left-padded batches work as in GPT-2.
4. Grouped-query attention: n_kv_head key/value heads, each shared by n_head / n_kv_head query heads, so the KV-cache
   is n_kv_head / n_head the size of GPT-2's.

Parameter names follow Hugging Face's `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj.weight`, ...), so its state
dicts, and Qwen2's (the same architecture with biases on q, k and v), load as they are:

    model = load_llama("path/to/folder")      # config.json + *.safetensors, nothing downloaded
    generate(model, prompt_ids, 20)           # llmcourse.generate, the KV-cache and batching work unchanged
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from numbers import Integral
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcourse.files import read_json
from llmcourse.gpt import KVCache, LanguageModel, attention_mask_for, check_inputs, init_weights


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    block_size: int = 2048  # longest context, in tokens (HF: max_position_embeddings)
    n_layer: int = 16
    n_head: int = 16
    n_kv_head: int = 4  # key/value heads; n_head must be a multiple (n_kv_head = n_head is plain multi-head)
    n_embd: int = 1024
    hidden: int = 2816  # the SwiGLU MLP's width (HF: intermediate_size), about 8/3 n_embd rounded up
    head_dim_: int | None = None  # None: n_embd // n_head (HF: head_dim, when a model sets it)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: True

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
                raise ValueError(f"LlamaConfig.{f.name} must be a positive integer, got {value!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}): each "
                             "key/value head serves the same number of query heads")
        if self.head_dim_ is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or set head_dim_")
        if self.head_dim % 2:
            raise ValueError(f"the head size must be even for rotary embeddings (pairs of features), got "
                             f"{self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_ or self.n_embd // self.n_head

    @classmethod
    def from_hf(cls, hf: Mapping) -> "LlamaConfig":
        """From a Hugging Face Llama or Qwen2 `config.json` (as a dict)."""
        kind = hf.get("model_type", "llama")
        if kind not in ("llama", "qwen2"):
            raise ValueError(f"config.json describes a {kind!r} model; load_llama reads 'llama' and 'qwen2' ones")
        ropes = [hf.get("rope_scaling") or {}, hf.get("rope_parameters") or {}]  # transformers 4 and 5
        rope = {**ropes[0], **ropes[1]}
        scaled = any(r.get("rope_type", r.get("type", "default")) not in ("default", None) for r in ropes)
        unsupported = {"rotary scaling": scaled,
                       "sliding-window attention": bool(hf.get("use_sliding_window")),
                       "an activation other than SiLU": hf.get("hidden_act", "silu") != "silu"}
        for what, present in unsupported.items():
            if present:
                raise ValueError(f"this model uses {what}, which llmcourse's Llama does not implement: its logits "
                                 "would differ")
        n_head = hf["num_attention_heads"]
        return cls(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                   n_layer=hf["num_hidden_layers"], n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head,
                   n_embd=hf["hidden_size"], hidden=hf["intermediate_size"],
                   head_dim_=hf.get("head_dim") if hf.get("head_dim") not in (None, hf["hidden_size"] // n_head)
                   else None,
                   rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                   rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                   tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                   qkv_bias=kind == "qwen2" or bool(hf.get("attention_bias", False)))


def rope_tables(config: LlamaConfig, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (block_size, head_dim) of every position: the angle of feature pair i at position p is
    p / rope_theta^(2i / head_dim), and each angle appears twice (for the pair's two halves, as in HF's layout)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    angles = torch.arange(config.block_size, device=device).float()[:, None] * inv_freq[None, :]  # (P, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (P, d)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, T, d) rotated by the angles of its positions, cos/sin (B, 1, T, d): the pair (x_i, x_{i + d/2})
    becomes (x_i cos - x_{i + d/2} sin, x_{i + d/2} cos + x_i sin)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = rotate(q, *rope), rotate(k, *rope)  # keys are cached already rotated
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hd)
        gqa = self.n_kv_head != self.n_head  # each key/value head serves n_head / n_kv_head query heads
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)  # one token sees all
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)  # mask (B, 1, T, S)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.hidden, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.hidden, bias=False)
        self.down_proj = nn.Linear(config.hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """Pre-norm block: x + attn(rmsnorm(x)), then x + mlp(rmsnorm(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(LanguageModel):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
            layers=nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layer)),
            norm=nn.RMSNorm(config.n_embd, eps=config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, head_dim): not weights
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(init_weights)

    def forward(self, idx: torch.Tensor, *, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T); (B, 1, vocab_size) with `last_only`. `cache`,
        `positions` and `attention_mask` work as in `GPT.forward`."""
        positions = check_inputs(self.config, idx, cache, positions)  # (B, T)
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        mask = attention_mask_for(B, T, past, attention_mask, idx.device)
        rope = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, hd) each
        x = self.model.embed_tokens(idx)  # (B, T, C): no position embedding, positions live in the rotations
        for layer, block in enumerate(self.model.layers):
            x = block(x, rope, mask, cache, layer)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(self.model.norm(x))  # (B, T, vocab_size)


def random_llama(config: LlamaConfig, seed: int = 0) -> Llama:
    """A Llama freshly initialised from `seed`, in eval mode, on the CPU."""
    torch.manual_seed(seed)
    return Llama(config).eval()


# -- Hugging Face checkpoints ------------------------------------------------------------------------------------

def _read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json: load_llama reads a Hugging Face model folder "
                                "(config.json and *.safetensors) from disk; nothing is downloaded")
    hf = read_json(config_file, "the model's config")
    files = sorted(folder.glob("*.safetensors"))  # one file, or the shards of model.safetensors.index.json
    if not files:
        raise FileNotFoundError(f"{str(folder)!r} has no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file, device="cpu"))
    return hf, state


@torch.no_grad()
def load_llama(source, config: LlamaConfig | None = None) -> Llama:
    """A Llama (eval mode, CPU) with the weights of a Hugging Face Llama or Qwen2 checkpoint. Nothing is downloaded.

    `source` is a local folder with `config.json` and `*.safetensors` (sharded ones included), or a state dict with
    HF's names, then with `config`. Every weight must be there with its shape; the rotary tables are recomputed.
    """
    if isinstance(source, (str, os.PathLike)):
        hf, state = _read_folder(Path(source))
        config = config or LlamaConfig.from_hf(hf)
    elif isinstance(source, Mapping):
        if config is None:
            raise ValueError("a state dict does not say the model's shape: pass config=LlamaConfig(...) too")
        state = dict(source)
    else:
        raise TypeError(f"source must be a folder path or a state dict, got {type(source).__name__}")
    model = Llama(config)
    expected = model.state_dict()
    if config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
    missing = [k for k in expected if state.get(k) is None]
    unexpected = [k for k in state if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fit a Llama of this config: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{name} has shape {tuple(state[name].shape)}, the config says {tuple(tensor.shape)}")
        tensor.copy_(state[name].to(torch.float32))
    return model.eval()
