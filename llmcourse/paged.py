"""A paged KV-cache (the idea of vLLM's PagedAttention): keys and values in fixed-size blocks from one shared pool.

A contiguous cache reserves, for every request, room for the longest it may grow, so most of that memory sits empty
while the request is young, and requests that do not fit wait. Here each sequence owns a **block table**, the list
of pool blocks that hold its tokens in order; a block is taken from the pool when the sequence needs one more, and
every block goes back when the sequence finishes. Only the last block of a sequence is partly empty, so the memory
reserved but unused is under one block per sequence.

    pool = PagedKVCache(config, n_blocks=64, block_size=16)
    batch = pool.batch(["a", "b"])          # a view with the model's cache interface, rows left-padded
    logits = model(ids, cache=batch, positions=..., attention_mask=batch.mask(T))

Attention reads a sequence's keys by gathering its blocks through the table (`read`); the model's attention code is
unchanged: `PagedBatch.update` writes the new keys into their blocks and returns every row's keys gathered and
left-padded to a common length, as the contiguous cache of notebook 08 lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch


class OutOfBlocks(RuntimeError):
    """The pool has no free block left for a sequence that grows."""


class PagedKVCache:
    """A pool of `n_blocks` blocks of `block_size` positions for every layer's keys and values, and a block table and
    a length per sequence."""

    def __init__(self, config, n_blocks: int, block_size: int = 16, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        if n_blocks < 1 or block_size < 1:
            raise ValueError(f"need n_blocks >= 1 and block_size >= 1, got {n_blocks} and {block_size}")
        shape = (n_blocks, config.n_kv_head, block_size, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.block_size, self.n_blocks = block_size, n_blocks
        self.free: list[int] = list(range(n_blocks - 1, -1, -1))  # a stack: the lowest-numbered block first
        self.tables: dict[Hashable, list[int]] = {}
        self.lengths: dict[Hashable, int] = {}

    @staticmethod
    def bytes_per_block(config, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        """Keys and values of every layer for one block: 2 x n_layer x n_kv_head x block_size x head_dim x bytes."""
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * config.n_layer * config.n_kv_head * block_size * config.head_dim * element

    def reserve(self, seq: Hashable, new_tokens: int) -> None:
        """Make room for `new_tokens` more tokens of `seq` (a new sequence starts empty), taking blocks from the
        pool as needed; OutOfBlocks if it runs dry (the blocks taken so far stay with the sequence)."""
        table = self.tables.setdefault(seq, [])
        self.lengths.setdefault(seq, 0)
        need = math.ceil((self.lengths[seq] + new_tokens) / self.block_size) - len(table)
        for _ in range(need):
            if not self.free:
                raise OutOfBlocks(f"the KV pool's {self.n_blocks} blocks are all in use: sequence {seq!r} needs "
                                  f"{need} more; finish or preempt a sequence, or make the pool larger")
            table.append(self.free.pop())

    def release(self, seq: Hashable) -> None:
        """Return every block of a finished sequence to the pool."""
        self.free.extend(reversed(self.tables.pop(seq, [])))
        self.lengths.pop(seq, None)

    def _slots(self, seq: Hashable, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block index and offset inside it of positions start .. start + count - 1 of `seq`."""
        positions = torch.arange(start, start + count)
        table = torch.tensor(self.tables[seq])
        return table[positions // self.block_size], positions % self.block_size

    def write(self, layer: int, seq: Hashable, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (n_kv_head, T, head_dim) of `seq` at positions start .. start + T - 1 (already reserved)."""
        blocks, offsets = self._slots(seq, start, k.shape[1])
        self.keys[layer][blocks, :, offsets] = k.transpose(0, 1)  # (T, n_kv_head, head_dim) scattered
        self.values[layer][blocks, :, offsets] = v.transpose(0, 1)

    def read(self, layer: int, seq: Hashable, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` keys and values of `seq`, gathered through its block table: (n_kv_head, length, hd)."""
        blocks, offsets = self._slots(seq, 0, length)
        return (self.keys[layer][blocks, :, offsets].transpose(0, 1),
                self.values[layer][blocks, :, offsets].transpose(0, 1))

    def used_bytes(self) -> tuple[int, int]:
        """(bytes of the blocks in use, bytes of the positions that hold tokens): the difference is fragmentation."""
        first = self.keys[0]
        per_position = 2 * len(self.keys) * first.shape[1] * first.shape[3] * first.element_size()
        in_blocks = sum(len(t) for t in self.tables.values()) * self.block_size * per_position
        return in_blocks, sum(self.lengths.values()) * per_position

    def batch(self, seqs: Sequence[Hashable]) -> "PagedBatch":
        return PagedBatch(self, list(seqs))


class PagedBatch:
    """Sequences of a pool seen as one batch, with the interface the models' attention uses (`length`,
    `check_room`, `update`, `advance`): rows are left-padded to the longest, as in the contiguous cache."""

    def __init__(self, pool: PagedKVCache, seqs: list[Hashable]):
        self.pool, self.seqs = pool, seqs
        for seq in seqs:
            pool.tables.setdefault(seq, [])
            pool.lengths.setdefault(seq, 0)

    @property
    def length(self) -> int:
        """Columns of cached tokens the batch shows: the longest row (shorter rows are padded on the left)."""
        return max(self.pool.lengths[seq] for seq in self.seqs)

    def mask(self, new_tokens: int) -> torch.Tensor:
        """(B, length + new_tokens) True at each row's real tokens, cached and new: the attention mask to pass."""
        width = self.length + new_tokens
        filled = torch.tensor([self.pool.lengths[seq] + new_tokens for seq in self.seqs])
        device = self.pool.keys[0].device
        return torch.arange(width, device=device)[None, :] >= (width - filled.to(device))[:, None]

    def positions(self, new_tokens: int) -> torch.Tensor:
        """(B, new_tokens) each row's own positions for its new tokens."""
        lengths = torch.tensor([self.pool.lengths[seq] for seq in self.seqs])[:, None]
        return (lengths + torch.arange(new_tokens)[None, :]).to(self.pool.keys[0].device)

    def check_room(self, batch_size: int, new_tokens: int) -> None:
        if batch_size != len(self.seqs):
            raise ValueError(f"this batch has {len(self.seqs)} sequences, got {batch_size} rows")
        for seq in self.seqs:
            self.pool.reserve(seq, new_tokens)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new keys/values (B, n_kv_head, T, hd) into its blocks; return every row's keys and values
        so far, gathered and left-padded: (B, n_kv_head, length + T, hd)."""
        T, width = k.shape[2], self.length + k.shape[2]
        keys = k.new_zeros(k.shape[0], k.shape[1], width, k.shape[3])
        values = torch.zeros_like(keys)
        for row, seq in enumerate(self.seqs):
            filled = self.pool.lengths[seq]
            self.pool.write(layer, seq, filled, k[row], v[row])
            keys[row, :, width - filled - T:], values[row, :, width - filled - T:] = self.pool.read(layer, seq,
                                                                                                  filled + T)
        return keys, values

    def advance(self, new_tokens: int) -> None:
        for seq in self.seqs:
            self.pool.lengths[seq] += new_tokens


# -- continuous batching on the pool ----------------------------------------------------------------------------

@torch.no_grad()
def serve_paged(model, requests: Sequence, pool: PagedKVCache, max_batch: int, *, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None):
    """Continuous batching (`batching.serve_continuous`) with every request's keys and values in `pool`'s blocks.

    After each decoding step finished requests leave and hand their blocks back; waiting requests join (their
    prompt prefilled into blocks taken on demand) while fewer than `max_batch` run and the pool has blocks for their
    prompts. When a running request needs a block and none is free, the request that joined last is preempted: its
    blocks go back, and it waits at the head of the queue to start again from its prompt (vLLM's recomputation; with
    greedy decoding, or a seed, it produces the same tokens again). Returns a `batching.ServeReport`.
    """
    import time
    from collections import deque

    from llmcourse.batching import Completion, ServeReport, _check_requests, _generators, _pick, _wait_until
    from llmcourse.generate import check_sampling_args

    check_sampling_args(temperature, top_k, top_p)
    pending = deque(_check_requests(model, requests, max_batch))
    device = next(model.parameters()).device
    waiting: deque = deque()
    running: list = []  # in the order they joined
    completions: dict = {}
    generators: dict = {}
    last: dict = {}
    steps, start = 0, time.perf_counter()

    def pick(logits: torch.Tensor, ids: list) -> list[int]:
        return _pick(logits, [generators[i] for i in ids], temperature=temperature, top_k=top_k,
                     top_p=top_p).tolist()

    def finish(request_id) -> None:
        running.remove(request_id)
        pool.release(request_id)
        completions[request_id].finished_at = time.perf_counter() - start

    while pending or waiting or running:
        now = time.perf_counter() - start
        while pending and pending[0].arrival <= now:
            waiting.append(pending.popleft())
        while waiting and len(running) < max_batch:  # join: prefill each prompt into its own blocks
            request = waiting[0]
            try:
                pool.reserve(request.id, len(request.prompt))
            except OutOfBlocks:
                pool.release(request.id)
                if not running:
                    raise
                break
            waiting.popleft()
            running.append(request.id)
            completions[request.id] = Completion(request)
            generators[request.id] = _generators(1, seed, device)[0]
            view = pool.batch([request.id])
            ids = torch.tensor([request.prompt], device=device)
            logits = model(ids, cache=view, positions=view.positions(len(request.prompt)), last_only=True)[:, -1]
            steps += 1
            last[request.id] = pick(logits, [request.id])[0]
            completions[request.id].tokens.append(last[request.id])
            if len(completions[request.id].tokens) == request.max_new_tokens:
                finish(request.id)
        if not running:
            if pending:
                _wait_until(start, pending[0].arrival)
            continue
        for request_id in list(running):  # room for one more token each, preempting the newest if need be
            while request_id in running:
                try:
                    pool.reserve(request_id, 1)
                    break
                except OutOfBlocks:
                    victim = running.pop()
                    pool.release(victim)
                    waiting.appendleft(completions.pop(victim).request)
            if not running:
                raise OutOfBlocks(f"the pool's {pool.n_blocks} blocks cannot hold even one request: make it larger")
        view = pool.batch(running)
        ids = torch.tensor([[last[i]] for i in running], device=device)
        logits = model(ids, cache=view, positions=view.positions(1), attention_mask=view.mask(1), last_only=True)
        steps += 1
        for request_id, token in zip(list(running), pick(logits[:, -1], list(running))):
            last[request_id] = token
            completions[request_id].tokens.append(token)
            if len(completions[request_id].tokens) == completions[request_id].request.max_new_tokens:
                finish(request_id)
    return ServeReport(completions, time.perf_counter() - start, steps)


# -- how many requests fit a KV budget: contiguous reservations against pages (a simulation, no model) -----------

def simulate_kv_budget(prompt_lengths: Sequence[int], output_lengths: Sequence[int], max_new_tokens: int,
                       budget_tokens: int, *, paged: bool, block_size: int = 16) -> dict:
    """Serve requests (all waiting at step 0, in order) with continuous batching in a KV memory of `budget_tokens`
    positions, one new token per running request per step; a request ends after its `output_lengths` tokens (an
    end-of-text the server cannot foresee: it only knows the cap `max_new_tokens`).

    Contiguous: a request is admitted when prompt + max_new_tokens positions are free, and holds them to the end.
    Paged: it is admitted when the blocks of its prompt and first token are free, with one block to spare for
    every running request, and takes a block whenever it needs one; when the pool runs dry, the request admitted
    last is preempted (its blocks freed, its tokens recomputed later), as vLLM does. Returns the mean and peak
    number of requests running, the steps to serve them all, the fraction of reserved memory that held no token
    (fragmentation, averaged over steps), and the preemptions.
    """
    if len(prompt_lengths) != len(output_lengths) or not prompt_lengths:
        raise ValueError("give one prompt length and one output length per request")
    if any(n > max_new_tokens or n < 1 for n in output_lengths):
        raise ValueError(f"output lengths must lie in 1..max_new_tokens={max_new_tokens}")
    unit = block_size if paged else 1
    capacity = budget_tokens // unit  # blocks (paged) or positions (contiguous)
    waiting = list(range(len(prompt_lengths)))
    running: dict[int, int] = {}  # request -> tokens generated so far
    held: dict[int, int] = {}  # request -> units reserved
    steps, concurrency, fragmentation, preemptions = 0, [], [], 0

    def need(request: int, tokens: int) -> int:
        return math.ceil((prompt_lengths[request] + tokens) / block_size) if paged else \
            prompt_lengths[request] + max_new_tokens

    while waiting or running:
        # Admit in order while the request fits, keeping (paged) one spare block per running request, so that a
        # new request does not at once push out older ones that are about to need their next block.
        while waiting and sum(held.values()) + need(waiting[0], 1) + (len(running) if paged else 0) <= capacity:
            request = waiting.pop(0)
            running[request], held[request] = 0, need(request, 1)
        if not running:
            raise ValueError(f"request {waiting[0]} alone needs more than the budget of {budget_tokens} positions")
        for request in list(running):  # one token each; a paged request takes a block when it needs one
            if request not in running:
                continue
            while paged and need(request, running[request] + 1) > held[request]:
                if sum(held.values()) < capacity:
                    held[request] += 1
                    continue
                victim = max(running)  # the request admitted last gives its blocks back and starts over later
                del running[victim], held[victim]
                waiting.insert(0, victim)
                preemptions += 1
                if victim == request:
                    break
            if request in running:
                running[request] += 1
        filled = sum(prompt_lengths[r] + n for r, n in running.items())
        reserved = sum(held.values()) * unit
        concurrency.append(len(running))
        fragmentation.append(1 - filled / reserved if reserved else 0.0)
        for request in [r for r, n in running.items() if n == output_lengths[r]]:
            del running[request], held[request]
        steps += 1
    return {"paged": paged, "block_size": block_size if paged else None, "budget_tokens": budget_tokens,
            "mean_running": sum(concurrency) / steps, "peak_running": max(concurrency), "steps": steps,
            "fragmentation": sum(fragmentation) / steps, "preemptions": preemptions}
