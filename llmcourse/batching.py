"""Batched generation and continuous batching with the PyTorch GPT (notebook 08).

- `generate_batch`: prompts of different lengths generated together. They are left-padded (`left_padded`), padding
  is hidden by the attention mask, and each row counts its positions from its own first token, so every row gives
  the tokens `llmcourse.generate.generate` gives for that prompt alone.
- `serve_static` and `serve_continuous`: a request queue served in fixed batches that run until their longest
  request is done, or with iteration-level scheduling (Orca, vLLM; `schedule_step`): finished rows leave after
  every step and waiting requests take their place at once.

Sampling is `llmcourse.generate.next_token`. With a `seed`, each prompt or request draws from its own generator
seeded with `seed`, exactly as `generate(prompt, seed=seed)` does, so sampled tokens are identical too.
"""

from __future__ import annotations

import time
from collections import deque
from numbers import Integral
from dataclasses import dataclass, field
from typing import Sequence

import torch

from llmcourse.generate import (check_max_new_tokens, check_sampling_args, check_token_id, check_token_ids, hold_eos,
                                next_token)
from llmcourse.gpt import GPT, KVCache


def _device(model: GPT) -> torch.device:
    return next(model.parameters()).device


def _as_list(prompt, what: str, vocab_size: int) -> list[int]:
    if hasattr(prompt, "ndim") and hasattr(prompt, "tolist"):  # a torch tensor or a NumPy array
        if prompt.ndim != 1:
            raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
        raise TypeError(f"{what} must be a list of token ids, got {type(prompt).__name__}: use tokenizer.encode(text)")
    if len(prompt) == 0:
        raise ValueError(f"{what} is empty: every prompt needs at least one token")
    return check_token_ids(prompt, vocab_size, what)


def left_padded(prompts: Sequence[Sequence[int]], device: torch.device,
                pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (B, S) int64, attention mask (B, S) bool and positions (B, S) int64 of non-empty prompts
    right-aligned in S = the longest prompt's length: `pad_id`, mask False and position 0 on the padding on the
    left; mask True and positions 0, 1, 2, ... from each row's first real token."""
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    S = int(lengths.max())
    mask = torch.arange(S, device=device)[None, :] >= (S - lengths)[:, None]  # (B, S)
    ids = torch.full(mask.shape, pad_id, dtype=torch.int64, device=device)
    ids[mask] = torch.tensor([t for p in prompts for t in p], dtype=torch.int64, device=device)  # row-major order
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, S) real tokens before each column; padding -1 -> 0
    return ids, mask, positions


def _generators(count: int, seed: int | None, device: torch.device) -> list[torch.Generator | None]:
    if seed is None:
        return [None] * count
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(count)]


def _pick(logits: torch.Tensor, generators: list, *, temperature: float, top_k, top_p) -> torch.Tensor:
    """One token per row of logits (B, V), row b drawing from generators[b]; (B,) int64."""
    if temperature == 0:
        return next_token(logits, temperature=0)
    return torch.cat([next_token(logits[b:b + 1], temperature=temperature, top_k=top_k, top_p=top_p,
                                 generator=g) for b, g in enumerate(generators)])


def _check_model_room(model: GPT, tokens: int, what: str) -> None:
    if tokens > model.config.block_size:
        raise ValueError(f"{what} needs {tokens} positions but the model's context holds {model.config.block_size}: "
                         "shorten the prompt or generate fewer tokens")


@torch.no_grad()
def generate_batch(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   eos_id: int | None = None, pad_id: int = 0) -> list[torch.Tensor]:
    """Generate from prompts of different lengths in one batch; returns one 1-D tensor per prompt (the prompt and
    its `max_new_tokens` new tokens), equal to `generate(model, torch.tensor(prompt), max_new_tokens, ...)`."""
    if isinstance(prompts, torch.Tensor) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists (one per row of the batch)")
    prompts = [_as_list(p, f"prompt {i}", model.config.vocab_size) for i, p in enumerate(prompts)]
    check_sampling_args(temperature, top_k, top_p)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    eos_id = check_token_id(eos_id, model.config.vocab_size, "eos_id")
    pad_id = check_token_id(pad_id, model.config.vocab_size, "pad_id")
    device = _device(model)
    ids, mask, positions = left_padded(prompts, device, pad_id)  # (B, S) each
    B, S = ids.shape
    _check_model_room(model, S + max_new_tokens - 1, "the longest prompt plus the new tokens")
    new = torch.empty(B, max_new_tokens, dtype=torch.int64, device=device)
    if max_new_tokens:
        generators = _generators(B, seed, device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        cache = KVCache(model.config, B, S + max_new_tokens - 1, device=device, dtype=next(model.parameters()).dtype)
        logits = model(ids, cache=cache, positions=positions, attention_mask=mask, last_only=True)[:, -1]  # (B, V)
        next_pos = mask.sum(dim=1, keepdim=True)  # (B, 1) each row's next position
        for step in range(max_new_tokens):
            if step > 0:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)  # (B, S + step)
                logits = model(new[:, step - 1:step], cache=cache, positions=next_pos + step - 1,
                               attention_mask=mask, last_only=True)[:, -1]  # (B, V)
            token = _pick(logits, generators, temperature=temperature, top_k=top_k, top_p=top_p)  # (B,)
            token = hold_eos(token, finished, eos_id)
            new[:, step] = token
            if eos_id is not None and bool(finished.all()):
                new[:, step + 1:] = eos_id
                break
    return [torch.cat([torch.tensor(p, dtype=torch.int64, device=device), new[b]]) for b, p in enumerate(prompts)]


# -- serving a queue of requests ------------------------------------------------------------------------------------

def schedule_step(slots: list, finished: list[bool], waiting: list) -> tuple[list, list[tuple[int, object]], list]:
    """One iteration-level scheduling step: the requests of rows flagged `finished` leave (`left`, in row order),
    then free rows, lowest first, take `waiting` requests in order; running requests keep their rows (their
    KV-cache lives there). Returns (new slots, joined (row, request) pairs, left); the inputs are not changed."""
    left = [request for request, done in zip(slots, finished) if done]
    slots = [None if done else request for request, done in zip(slots, finished)]
    joined = list(zip([row for row, request in enumerate(slots) if request is None], waiting))
    for row, request in joined:
        slots[row] = request
    return slots, joined, left


@dataclass(frozen=True)
class Request:
    id: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival: float = 0.0  # seconds after the start of serving


@dataclass
class Completion:
    request: Request
    tokens: list[int] = field(default_factory=list)  # the new tokens only
    finished_at: float = 0.0  # seconds after the start, when the tokens were handed back

    @property
    def latency(self) -> float:
        return self.finished_at - self.request.arrival


@dataclass
class ServeReport:
    completions: dict[int, Completion]  # by request id
    seconds: float  # wall time from the start until the last request was done
    steps: int  # forward passes of the model

    @property
    def tokens(self) -> int:
        return sum(len(c.tokens) for c in self.completions.values())

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def mean_latency(self) -> float:
        return sum(c.latency for c in self.completions.values()) / len(self.completions)

    def outputs(self) -> dict[int, list[int]]:
        return {i: c.tokens for i, c in sorted(self.completions.items())}


def _check_requests(model: GPT, requests: Sequence[Request], max_batch: int) -> list[Request]:
    if not requests:
        raise ValueError("no requests to serve: give at least one Request")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"the batch size must be a positive int, got {max_batch!r}")
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be unique")
    for r in requests:
        if not isinstance(r, Request):
            raise TypeError(f"requests must be Request objects, got {type(r).__name__}")
        if len(r.prompt) == 0:
            raise ValueError(f"request {r.id} has an empty prompt: give at least one token")
        _as_list(r.prompt, f"the prompt of request {r.id}", model.config.vocab_size)
        check_max_new_tokens(r.max_new_tokens)
        if r.max_new_tokens < 1:
            raise ValueError(f"request {r.id} asks for {r.max_new_tokens} new tokens; ask for at least 1")
        _check_model_room(model, len(r.prompt) + r.max_new_tokens - 1, f"request {r.id}")
    return sorted(requests, key=lambda r: r.arrival)  # stable: equal arrivals keep their order


def _wait_until(start: float, when: float) -> None:
    delay = start + when - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


@torch.no_grad()
def serve_static(model: GPT, requests: Sequence[Request], batch_size: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> ServeReport:
    """Static batching: take `batch_size` requests in arrival order, generate until the longest of them is done,
    hand all of them back together, then take the next batch."""
    queue = _check_requests(model, requests, batch_size)
    completions, steps, start = {}, 0, time.perf_counter()
    for first in range(0, len(queue), batch_size):
        batch = queue[first:first + batch_size]
        _wait_until(start, batch[-1].arrival)  # the batch is formed when its last request arrived
        longest = max(r.max_new_tokens for r in batch)
        out = generate_batch(model, [r.prompt for r in batch], longest, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed)
        steps += longest
        done = time.perf_counter() - start
        for r, row in zip(batch, out):
            completions[r.id] = Completion(r, row[len(r.prompt):len(r.prompt) + r.max_new_tokens].tolist(), done)
    return ServeReport(completions, time.perf_counter() - start, steps)


class _Rows:
    """The continuous batch: one KV-cache of `max_batch` rows, each row's requests right-aligned in it."""

    def __init__(self, model: GPT, max_batch: int, max_len: int):
        self.model, self.device = model, _device(model)
        self.cache = KVCache(model.config, max_batch, max_len, device=self.device,
                             dtype=next(model.parameters()).dtype)
        self.filled = torch.zeros(max_batch, dtype=torch.int64, device=self.device)  # (B,) tokens in each row
        self.last = torch.zeros(max_batch, 1, dtype=torch.int64, device=self.device)  # (B, 1) next input token

    def mask(self, extra: int) -> torch.Tensor:
        """(B, cache.length + extra) True at each row's real tokens: the last `filled + extra` columns."""
        width = self.cache.length + extra
        return torch.arange(width, device=self.device)[None, :] >= (width - self.filled - extra)[:, None]

    def join(self, rows: list[int], prompts: list[tuple[int, ...]]) -> torch.Tensor:
        """Prefill the prompts of requests joining `rows` and copy their keys and values in; (n, V) logits."""
        ids, mask, positions = left_padded(prompts, self.device)  # (n, P) each
        small = KVCache(self.model.config, len(rows), ids.shape[1], device=self.device, dtype=self.cache.keys[0].dtype)
        logits = self.model(ids, cache=small, positions=positions, attention_mask=mask, last_only=True)[:, -1]
        longest = ids.shape[1]
        if self.cache.length < longest:  # open room at the front for the longest joining prompt
            self.cache.shift(longest - self.cache.length)
        for i, (row, prompt) in enumerate(zip(rows, prompts)):
            self.cache.copy_row(row, small, i, len(prompt))
            self.filled[row] = len(prompt)
        return logits

    def step(self, active: list[int]) -> torch.Tensor:
        """One decoding step of the `active` rows (the others compute harmless padding); (n_active, V) logits."""
        idle = torch.ones_like(self.filled, dtype=torch.bool)
        idle[active] = False
        self.filled[idle] = 0  # free, or finished and about to leave: nothing of theirs is needed any more
        if self.cache.length == self.cache.max_len:  # drop leading columns that are padding in every row
            self.cache.shift(-(self.cache.length - int(self.filled.max())))
        mask = self.mask(1)
        logits = self.model(self.last, cache=self.cache, positions=self.filled[:, None], attention_mask=mask,
                            last_only=True)[:, -1]
        self.filled += 1
        return logits[active]


@torch.no_grad()
def serve_continuous(model: GPT, requests: Sequence[Request], max_batch: int, *, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> ServeReport:
    """Continuous (iteration-level) batching: after every decoding step finished requests leave (and are handed
    back at once) and arrived requests take the free rows (`schedule_step`), their prompts prefilled."""
    check_sampling_args(temperature, top_k, top_p)
    pending = deque(_check_requests(model, requests, max_batch))
    by_id = {r.id: r for r in pending}
    longest = max(len(r.prompt) + r.max_new_tokens - 1 for r in pending)
    rows = _Rows(model, max_batch, longest)
    slots: list = [None] * max_batch
    finished = [False] * max_batch
    waiting: list[int] = []
    generators: dict[int, torch.Generator | None] = {}
    completions: dict[int, Completion] = {}
    steps, start = 0, time.perf_counter()

    def record(row: int, token: int) -> None:
        completion = completions[slots[row]]
        completion.tokens.append(token)
        rows.last[row, 0] = token
        finished[row] = len(completion.tokens) == completion.request.max_new_tokens

    while pending or waiting or any(s is not None for s in slots):
        now = time.perf_counter() - start
        while pending and pending[0].arrival <= now:
            waiting.append(pending.popleft().id)
        slots, joined, left = schedule_step(slots, finished, waiting)
        finished = [False] * max_batch
        for request_id in left:
            completions[request_id].finished_at = time.perf_counter() - start
        waiting = waiting[len(joined):]
        if joined:
            joined_rows = [row for row, _ in joined]
            for _, request_id in joined:
                completions[request_id] = Completion(by_id[request_id])
                generators[request_id] = _generators(1, seed, rows.device)[0]
            logits = rows.join(joined_rows, [by_id[i].prompt for _, i in joined])  # (n, V)
            tokens = _pick(logits, [generators[i] for _, i in joined], temperature=temperature, top_k=top_k,
                           top_p=top_p)
            steps += 1
            for row, token in zip(joined_rows, tokens.tolist()):
                record(row, token)
        active = [row for row, s in enumerate(slots) if s is not None and not finished[row]]
        if not active:
            if not any(finished) and pending:
                _wait_until(start, pending[0].arrival)
            continue
        logits = rows.step(active)  # (n_active, V)
        tokens = _pick(logits, [generators[slots[row]] for row in active], temperature=temperature, top_k=top_k,
                       top_p=top_p)
        steps += 1
        for row, token in zip(active, tokens.tolist()):
            record(row, token)
    return ServeReport(completions, time.perf_counter() - start, steps)


# -- a picture of the two schedules (no model: each request just needs its number of steps) -------------------------

def simulate_schedule(output_lengths: Sequence[int], max_batch: int, *, continuous: bool = True,
                      scheduler_step=None) -> list[tuple[int, int, int, int]]:
    """Which request occupies which row at which decoding step, all requests waiting at step 0.

    Continuous batching runs `scheduler_step` (default: `schedule_step`) after every step; static batching takes
    `max_batch` requests at a time and starts the next batch only when the longest one is done.
    Returns (request, row, first step, last step + 1) for each request.
    """
    lengths = list(output_lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in lengths):
        raise ValueError(f"output_lengths must be a non-empty list of ints >= 1 (new tokens per request), "
                         f"got {output_lengths!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, Integral) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    lengths, max_batch = [int(n) for n in lengths], int(max_batch)
    step_fn = scheduler_step or schedule_step
    spans, remaining = [], {i: n for i, n in enumerate(lengths)}
    output_lengths = lengths
    if not continuous:
        t = 0
        for first in range(0, len(output_lengths), max_batch):
            batch = list(range(first, min(first + max_batch, len(output_lengths))))
            spans += [(r, row, t, t + output_lengths[r]) for row, r in enumerate(batch)]
            t += max(output_lengths[r] for r in batch)
        return spans
    slots, finished, waiting, started, t = [None] * max_batch, [False] * max_batch, list(remaining), {}, 0
    while waiting or any(s is not None for s in slots):
        if t > sum(lengths) + len(lengths):  # every request done one at a time would have finished by now
            raise RuntimeError(f"the scheduler made no progress after {t} steps: check that scheduler_step fills "
                               "free rows from `waiting` and frees the rows flagged `finished`")
        slots, joined, left = step_fn(slots, finished, waiting)
        waiting = waiting[len(joined):]
        for row, r in joined:
            started[r] = (row, t)
        for r in left:
            spans.append((r, started[r][0], started[r][1], t))
        for s in slots:
            if s is not None:
                remaining[s] -= 1
        finished = [s is not None and remaining[s] == 0 for s in slots]
        t += 1
    return sorted(spans)


def plot_schedule(spans: list[tuple[int, int, int, int]], ax=None, *, title: str = ""):
    """Rows of the batch against decoding steps, one coloured bar per request (its number in the bar)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 2.5))
    colors = plt.get_cmap("tab20")
    for request, row, start, stop in spans:
        ax.barh(row, stop - start, left=start, color=colors(request % 20), edgecolor="white")
        ax.text((start + stop) / 2, row, str(request), ha="center", va="center", fontsize=7)
    end = max(stop for *_, stop in spans)
    ax.set(xlabel="decoding step", ylabel="row", xlim=(0, end), title=title or f"{end} steps")
    ax.invert_yaxis()
    return ax
