"""Text generation with the PyTorch GPT: greedy, temperature, top-k, top-p (nucleus) sampling, and beam search.

    out = generate(model, prompt_ids, max_new_tokens=50, temperature=0.8, top_k=40, seed=0)

Sampling reshapes the next-token logits (`filtered_logits`: temperature, then top-k, then top-p), takes the softmax
and draws one token per row; the filters are the ideas of notebook 06's exercises, vectorised over (..., V).

Conventions:
- Random numbers come from one `torch.Generator` seeded once with `seed` (or, with `seed=None`, from PyTorch's
  global generator, so `llmcourse.runtime.set_seed` makes a run reproducible). Every step draws one sample per row,
  finished rows included, the same way with and without the KV-cache: both paths give identical tokens.
- Stop conditions: `max_new_tokens`, and `eos_id`. A row that emitted `eos_id` keeps emitting `eos_id`, so the
  output stays rectangular; generation ends early when every row has finished (the rest is filled with `eos_id`).
- Context longer than `block_size`: without the cache each step sees the last `block_size` tokens. The cache cannot
  slide (learned absolute positions would all shift by one), so once it holds `block_size` tokens (or when the
  prompt alone fills the context) the cached path falls back to recomputing the cropped window each step: the same
  tokens as `use_cache=False`, without the speedup.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from llmcourse.gpt import GPT, KVCache


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a one-line ValueError/TypeError for a temperature, top_k or top_p that `next_token` cannot use."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or math.isnan(temperature):
        raise TypeError(f"temperature must be a number >= 0, got {temperature!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, Integral):
            raise TypeError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None for no top-k filter), got {top_k}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, Real):
            raise TypeError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] (or None for no nucleus filter), got {top_p}")


def filtered_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """Logits (..., V) after temperature (> 0), top-k and top-p, in that order; removed tokens are -inf.

    top-k keeps every logit >= the k-th largest of its row (ties at the boundary included). top-p keeps, in order of
    decreasing probability, each token whose preceding mass is still < top_p, plus every token tied with the last
    one kept; the mass is summed in float64.
    """
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ranked = torch.sort(logits, dim=-1, descending=True).values  # (..., V)
        probs = torch.softmax(ranked.double(), dim=-1)  # (..., V)
        kept = ((torch.cumsum(probs, dim=-1) - probs) < top_p).sum(dim=-1, keepdim=True)  # (..., 1), >= 1
        logits = logits.masked_fill(logits < ranked.gather(-1, kept - 1), float("-inf"))
    return logits


def next_token(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from next-token logits (B, V): argmax when temperature is 0, else one draw from
    softmax of the filtered logits. Returns (B,) int64."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # ties: the smallest token id
    probs = torch.softmax(filtered_logits(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p),
                          dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)


def hold_eos(token: torch.Tensor, finished: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """Rows already `finished` emit `eos_id` again; rows emitting `eos_id` now are marked in `finished` (in place)."""
    if eos_id is None:
        return token
    token = token.masked_fill(finished, eos_id)
    finished |= token == eos_id
    return token


MAX_NEW_TOKENS = 100_000  # per call: more would run for hours on a laptop


def check_max_new_tokens(value) -> int:
    """`value` as an int in 0..MAX_NEW_TOKENS; a one-line TypeError/ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"max_new_tokens must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {value}")
    if value > MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens={value} is more than one call generates (at most {MAX_NEW_TOKENS:,}): even "
                         f"at 1,000 tokens/s it would take {value / 1000 / 3600:,.1f} hours; ask for fewer")
    return int(value)


def check_token_id(value, vocab_size: int, name: str) -> int | None:
    """`value` (e.g. eos_id, pad_id) as an int in 0..vocab_size-1, or None; a one-line error otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a token id (an int), got {value!r}")
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be a token id in 0..{vocab_size - 1} (the model's vocabulary), got {value}")
    return int(value)


def check_token_ids(ids: list, vocab_size: int, name: str) -> list[int]:
    """A list of token ids, each an int in 0..vocab_size-1 (floats such as 1.7 are refused, not truncated)."""
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, Integral):
            raise TypeError(f"{name} must hold token ids (ints), but item {i} is {t!r}")
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name} must hold token ids in 0..{vocab_size - 1} (the model's vocabulary), but item "
                             f"{i} is {t}")
    return [int(t) for t in ids]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_prompt(prompt_ids, max_new_tokens) -> torch.Tensor:
    if not isinstance(prompt_ids, torch.Tensor):
        raise TypeError(f"prompt_ids must be a torch tensor of token ids, got {type(prompt_ids).__name__}: "
                        "use torch.tensor(tokenizer.encode(text))")
    if prompt_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    if prompt_ids.dim() not in (1, 2):
        raise ValueError(f"prompt_ids must have shape (T,) or (B, T), got {tuple(prompt_ids.shape)}")
    if prompt_ids.numel() == 0:
        raise ValueError(f"the prompt is empty (shape {tuple(prompt_ids.shape)}): give at least one token")
    check_max_new_tokens(max_new_tokens)
    return prompt_ids


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None  # PyTorch's global generator: torch.manual_seed / set_seed decide
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@torch.no_grad()
def generate(model: GPT, prompt_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True, seed: int | None = None,
             eos_id: int | None = None) -> torch.Tensor:
    """The prompt followed by `max_new_tokens` new tokens: (B, T + max_new_tokens), or (T + max_new_tokens,) for a
    1-D prompt, on the model's device.

    temperature 0 is greedy decoding (top_k and top_p then change nothing); otherwise each token is drawn from
    softmax(top_p(top_k(logits / temperature))). Rows of a (B, T) prompt are generated together and must all be
    real tokens (padding is the batching chapter's business). See the module docstring for seeds, `eos_id` and
    contexts longer than `block_size`.
    """
    prompt_ids = _check_prompt(prompt_ids, max_new_tokens)
    check_sampling_args(temperature, top_k, top_p)
    vocab_size, block_size = model.config.vocab_size, model.config.block_size
    eos_id = check_token_id(eos_id, vocab_size, "eos_id")
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab_size:
        raise ValueError(f"prompt_ids must lie in 0..{vocab_size - 1} (the model's vocabulary), got "
                         f"{prompt_ids.min().item()}..{prompt_ids.max().item()}")
    device = _device(model)
    single = prompt_ids.dim() == 1
    tokens = (prompt_ids[None] if single else prompt_ids).to(device=device, dtype=torch.int64)  # (B, T)
    B, T = tokens.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.int64, device=device)
    out[:, :T] = tokens
    generator = _make_generator(seed, device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    cache = None
    if use_cache and max_new_tokens > 0 and T < block_size:  # a prompt that fills the context skips the cache
        # The last new token is never fed back, hence T + max_new_tokens - 1 positions at most.
        cache = KVCache(model.config, B, min(T + max_new_tokens - 1, block_size), device=device,
                        dtype=next(model.parameters()).dtype)
        logits = model(tokens, cache=cache, last_only=True)[:, -1]  # (B, V) prefill
    for step in range(max_new_tokens):
        length = T + step  # tokens in out so far
        if cache is None or cache.length == block_size:  # no cache, or a full one: recompute the cropped window
            cache = None
            logits = model(out[:, max(0, length - block_size):length], last_only=True)[:, -1]  # (B, V)
        elif step > 0:
            logits = model(out[:, length - 1:length], cache=cache, last_only=True)[:, -1]  # (B, V) one new token
        token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)  # (B,)
        token = hold_eos(token, finished, eos_id)
        out[:, length] = token
        if eos_id is not None and bool(finished.all()):
            out[:, length + 1:] = eos_id
            break
    return out[0] if single else out


def beam_step(scores: torch.Tensor, log_probs: torch.Tensor,
              width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `width` best extensions of beams with scores (W,) by tokens with log_probs (W, V): (beam, token, score),
    each (width,), best first; equal scores go to the smaller beam, then the smaller token."""
    V = log_probs.shape[-1]
    best, flat = torch.sort((scores[:, None] + log_probs).flatten(), descending=True, stable=True)  # (W * V,)
    flat = flat[:width]
    return flat // V, flat % V, best[:width]


@torch.no_grad()
def beam_search(model: GPT, prompt_ids: torch.Tensor, max_new_tokens: int, beam_width: int, *,
                eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search from a 1-D prompt: keep the `beam_width` most likely continuations at every step.

    Returns (sequences, scores), best first: sequences (W, T + max_new_tokens) int64, each the prompt and its new
    tokens; scores (W,) float32, the total log-probability of each sequence's new tokens (W = beam_width, fewer
    only when the vocabulary has fewer tokens). A beam that emitted `eos_id` is finished: it keeps emitting eos at
    log-probability 0 (its score no longer changes) and competes with the open beams. There is no length
    penalty, so finished short beams are favoured. Each step recomputes the (cropped) context of every beam and keeps
    the `beam_width` best extensions (`beam_step`). beam_width 1 is greedy decoding.
    """
    prompt_ids = _check_prompt(prompt_ids, max_new_tokens)
    if prompt_ids.dim() != 1:
        raise ValueError(f"beam_search takes one prompt of shape (T,), got shape {tuple(prompt_ids.shape)}")
    if isinstance(beam_width, bool) or not isinstance(beam_width, Integral) or beam_width < 1:
        raise ValueError(f"beam_width must be an int >= 1, got {beam_width!r}")
    vocab_size, block_size = model.config.vocab_size, model.config.block_size
    eos_id = check_token_id(eos_id, vocab_size, "eos_id")
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab_size:
        raise ValueError(f"prompt_ids must lie in 0..{vocab_size - 1} (the model's vocabulary), got "
                         f"{prompt_ids.min().item()}..{prompt_ids.max().item()}")
    device = _device(model)
    beams = prompt_ids.to(device=device, dtype=torch.int64)[None]  # (1, T): one beam to start from
    scores = torch.zeros(1, device=device)  # (W,)
    finished = torch.zeros(1, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        if eos_id is not None and bool(finished.all()):
            beams = torch.cat([beams, torch.full_like(beams[:, :1], eos_id)], dim=1)  # (W, t + 1)
            continue
        logits = model(beams[:, -block_size:], last_only=True)[:, -1].float()  # (W, V)
        log_probs = torch.log_softmax(logits, dim=-1)  # (W, V)
        if eos_id is not None:  # a finished beam may only repeat eos, for free
            log_probs[finished] = float("-inf")
            log_probs[finished, eos_id] = 0.0
        width = min(beam_width, log_probs.numel())
        beam, token, scores = beam_step(scores, log_probs, width)  # (W,) each
        beams = torch.cat([beams[beam], token[:, None]], dim=1)  # (W, t + 1)
        if eos_id is not None:
            finished = finished[beam] | (token == eos_id)
    return beams, scores


@torch.no_grad()
def sequence_log_probs(model: GPT, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(B,) total log-probability (natural log) the model gives the tokens after the first `prompt_len` of each
    row of `sequences` (B, S) or (S,), each token predicted from all the tokens before it (S <= block_size)."""
    rows = (sequences[None] if sequences.dim() == 1 else sequences).to(_device(model))  # (B, S)
    S = rows.shape[1]
    if not 1 <= prompt_len <= S:
        raise ValueError(f"prompt_len must lie in 1..{S} (the sequence length), got {prompt_len}")
    if S > model.config.block_size:
        raise ValueError(f"sequences of {S} tokens do not fit the model's context of {model.config.block_size}")
    if S == prompt_len:
        return torch.zeros(rows.shape[0], device=rows.device)
    log_probs = torch.log_softmax(model(rows[:, :-1]).float(), dim=-1)  # (B, S - 1, V)
    picked = log_probs.gather(-1, rows[:, 1:, None])[..., 0]  # (B, S - 1): log p(token t + 1 | tokens <= t)
    return picked[:, prompt_len - 1:].sum(dim=-1)
