"""The speed measurements of notebooks 07-10 and `llmcourse bench`: KV-cache speedup, throughput vs batch size,
continuous vs static batching, quantization, and how far batch-1 decoding is from the memory-bandwidth limit.

Every figure is measured in this process with `llmcourse.timing.measure` (warm-up, repeats, median and spread),
as a ratio against a baseline measured in the same run, and next to its limit (the roofline):

- one decoding step reads every weight once, so a batch of B rows makes B tokens per read of the weights:
  tokens/s <= B x memory bandwidth / bytes read per step (memory bound, small B);
- each token costs 2 FLOPs per weight it multiplies: tokens/s <= matmul FLOP/s / (2 x weights) (compute bound,
  large B). The curve bends where the two limits cross.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from llmcourse.batching import Request, generate_batch, serve_continuous, serve_static
from llmcourse.costmodel import matmul_weights
from llmcourse.generate import generate
from llmcourse.gpt import GPT, GPTConfig, KVCache, random_gpt, to_gpt2_state_dict
from llmcourse import native
from llmcourse.kernels import (CLOSE, choose_linear_kernels, fuse_blocks, matmul_gflops, prepack_available,
                               prepack_linears, tuned_linears)
from llmcourse.qformats import parse_scheme
from llmcourse.quantization import SCHEMES, bytes_read_per_step, quantization_report
from llmcourse.runtime import cpu_model, get_device
from llmcourse.timing import (Measurement, decode_bound_tok_s, decoding_speed, interleaved, measure,
                              memory_bandwidth_gbs)

GPT2_NAME = "gpt2-124M shape, random weights"


def gpt2_shape_model(config: GPTConfig | None = None, seed: int = 0) -> GPT:
    """A GPT with the GPT-2 124M shape (or `config`) and random weights: weights' values do not change speed."""
    return random_gpt(config or GPTConfig.gpt2(), seed).to(get_device())


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _prompts(model: GPT, count: int, shortest: int, longest: int, seed: int) -> list[list[int]]:
    """`count` random prompts with lengths spread evenly over shortest..longest."""
    g = _rng(seed)
    lengths = torch.linspace(shortest, longest, count).round().long().tolist() if count > 1 else [longest]
    return [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]


def _stats(m: Measurement, tokens: int) -> tuple[float, float]:
    return tokens / m.median, m.spread


# -- the machine's limits -----------------------------------------------------------------------------------------

def machine() -> dict:
    return {"memory_bandwidth_gbs": memory_bandwidth_gbs(), "matmul_gflops": matmul_gflops(),
            "threads": torch.get_num_threads(), "device": str(get_device()), "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(), "cpu": cpu_model(),
            "native_kernels": native.vector_isa() or f"unavailable: {native.unavailable_reason()}"}


SPREAD_LIMIT = 0.15  # repeats whose range exceeds +-15% of their median disagree: something else ran meanwhile
DRIFT_LIMIT = 0.15  # a bandwidth reading that moved by more than 15% between the start and the end of the run
LOAD_LIMIT = 0.5  # other programs' load average per core above which they take a core's share from the bench


def _load_per_core(own_threads: int = 0) -> float | None:
    """The 1-minute load average over the number of cores (Unix), less `own_threads` (the bench's own, busy over the
    last minute when it is read at the end of a run): above LOAD_LIMIT, other programs compete for the CPU."""
    try:
        return max(0.0, os.getloadavg()[0] - own_threads) / (os.cpu_count() or 1)
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _spreads(results: dict) -> dict[str, float]:
    """Every recorded spread of the run, named by the figure it belongs to."""
    found: dict[str, float] = {}
    kv = results.get("kv_cache", {})
    for n, a, b in zip(kv.get("new_tokens", []), kv.get("no_cache_spread", []), kv.get("cache_spread", [])):
        found[f"KV-cache, {n} tokens, no cache"], found[f"KV-cache, {n} tokens, cache"] = a, b
    bt = results.get("batching", {})
    for b, spread in zip(bt.get("batch_sizes", []), bt.get("spread", [])):
        found[f"batch {b}"] = spread
    rf = results.get("roofline", {})
    for kernel in rf.get("kernels", []):
        found[f"batch-1 decoding, {kernel} kernels"] = rf[f"{kernel}_spread"]
    return found


def interference(results: dict, bandwidth_end_gbs: float, load_start: float | None,
                 load_end: float | None) -> dict:
    """Can the run's ratios be trusted? Three signs of other programs on the machine: repeats that disagree (a
    spread over SPREAD_LIMIT), a bandwidth that moved between the start and the end of the run (DRIFT_LIMIT), and a
    load average above one per core."""
    start = results["machine"]["memory_bandwidth_gbs"]
    noisy = {name: spread for name, spread in _spreads(results).items() if spread > SPREAD_LIMIT}
    drift = bandwidth_end_gbs / start - 1
    loaded = [load for load in (load_start, load_end) if load is not None and load > LOAD_LIMIT]
    reasons = []
    if abs(drift) > DRIFT_LIMIT:
        reasons.append(f"memory bandwidth {start:.1f} GB/s at the start, {bandwidth_end_gbs:.1f} at the end "
                       f"({100 * drift:+.0f}%)")
    if noisy:
        reasons.append(f"repeats disagree by more than +-{100 * SPREAD_LIMIT:.0f}% in {len(noisy)} figure(s) "
                       f"(worst: {max(noisy, key=noisy.get)}, +-{100 * max(noisy.values()):.0f}%)")
    if loaded:
        reasons.append(f"load average of other programs {max(loaded):.1f} per core: they compete for the CPU")
    return {"trusted": not reasons, "reasons": reasons, "bandwidth_start_gbs": start,
            "bandwidth_end_gbs": bandwidth_end_gbs, "bandwidth_drift": drift, "noisy_figures": noisy,
            "load_per_core": [load_start, load_end]}


def roofline_tok_s(model: GPT, batch_size: int, bandwidth_gbs: float, gflops: float, context: int = 0) -> float:
    """The limit of decoding at `batch_size`: min(memory bound, compute bound), in tokens/s."""
    step_bytes = bytes_read_per_step(model) + KVCache.bytes_needed(model.config, batch_size, context)
    memory = batch_size * decode_bound_tok_s(step_bytes, bandwidth_gbs)
    compute = gflops * 1e9 / (2 * matmul_weights(model.config))
    return min(memory, compute)


# -- 07: the KV-cache -----------------------------------------------------------------------------------------------

def kv_cache_speedup(model: GPT, new_tokens: Sequence[int], *, prompt_tokens: int = 8, repeats: int = 3,
                     name: str = "", seed: int = 0) -> dict:
    """Greedy generation of each number of `new_tokens` with and without the KV-cache, timed in turns.

    Past the model's context (block_size) both paths recompute a window of block_size tokens per step (the cache
    cannot slide, see `llmcourse.generate`), so the speedup stops growing: "beyond_context" marks those lengths."""
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=_rng(seed)).to(get_device())
    outputs: dict[tuple[int, bool], torch.Tensor] = {}  # the last tokens of each run, for the identity check

    def run(n: int, cache: bool) -> Callable[[], None]:
        def once() -> None:
            outputs[n, cache] = generate(model, prompt, n, temperature=0.0, use_cache=cache)
        return once

    run(4, False)(), run(4, True)()  # warm-up
    result = {"model": name, "prompt_tokens": prompt_tokens, "new_tokens": list(new_tokens), "no_cache_tok_s": [],
              "cache_tok_s": [], "speedup": [], "no_cache_spread": [], "cache_spread": []}
    for n in new_tokens:
        times = interleaved({"no_cache": run(n, False), "cache": run(n, True)}, repeats)
        (slow, slow_spread), (fast, fast_spread) = _stats(times["no_cache"], n), _stats(times["cache"], n)
        result["no_cache_tok_s"].append(slow)
        result["cache_tok_s"].append(fast)
        result["speedup"].append(fast / slow)
        result["no_cache_spread"].append(slow_spread)
        result["cache_spread"].append(fast_spread)
    result["beyond_context"] = [prompt_tokens + n - 1 > model.config.block_size for n in new_tokens]
    result["identical_tokens"] = all(torch.equal(outputs[n, False], outputs[n, True]) for n in new_tokens)
    return result


@torch.no_grad()
def step_costs(model: GPT, contexts: Sequence[int], *, repeats: int = 2) -> dict:
    """Seconds of one decoding step at each context length: without the cache, a forward over all `c` tokens; with
    it, one new token attending over `c - 1` cached ones. Medians of `repeats` after a warm-up."""
    device = get_device()
    ids = torch.randint(0, model.config.vocab_size, (1, max(contexts)), generator=_rng(0)).to(device)
    no_cache, cache_s = [], []
    for c in contexts:
        no_cache.append(measure(lambda: model(ids[:, :c], last_only=True), warmup=1, repeats=repeats).median)
        cache = KVCache(model.config, 1, c - 1 + 1 + repeats, device=device, dtype=next(model.parameters()).dtype)
        model(ids[:, :c - 1], cache=cache)  # prefill c - 1 tokens
        one = ids[:, c - 1:c]
        cache_s.append(measure(lambda: model(one, cache=cache, last_only=True), warmup=1, repeats=repeats).median)
    return {"contexts": list(contexts), "no_cache_s": no_cache, "cache_s": cache_s}


def predicted_speedup(costs: dict, prompt_tokens: int, new_tokens: Sequence[int]) -> list[float]:
    """Speedup of generating n tokens predicted from per-step costs: without the cache, step t costs a forward over
    prompt + t tokens; with it, a prefill then one-token steps. Costs between measured contexts are interpolated
    linearly, below the shortest taken as flat (reading the weights dominates), past the longest extended along
    the last segment."""
    import numpy as np

    c = np.asarray(costs["contexts"], dtype=float)

    def at(key: str, t: int) -> float:
        y = np.asarray(costs[key], dtype=float)
        if t <= c[-1] or len(c) == 1:
            return float(np.interp(t, c, y))
        return float(y[-1] + (y[-1] - y[-2]) / (c[-1] - c[-2]) * (t - c[-1]))

    speedups = []
    for n in new_tokens:
        contexts = range(prompt_tokens, prompt_tokens + n)
        slow = sum(at("no_cache_s", t) for t in contexts)
        fast = at("no_cache_s", prompt_tokens) + sum(at("cache_s", t + 1) for t in contexts[1:])
        speedups.append(slow / fast)
    return speedups


def measured_cache_bytes(config, batch_size: int, tokens: int) -> int:
    """Growth of a fresh Python process's resident memory when it allocates a KV-cache and writes every position
    (pages count only once written; a fresh process has no freed memory lying around to reuse). `config` is a
    GPTConfig or a LlamaConfig (whose n_kv_head sets the cache's width)."""
    import subprocess
    import sys

    kind = type(config)
    script = ("import psutil, torch\n"
              f"from {kind.__module__} import {kind.__name__}\n"
              "from llmcourse.gpt import KVCache\n"
              "process = psutil.Process()\n"
              "before = process.memory_info().rss\n"
              f"cache = KVCache({kind.__name__}(**{asdict(config)!r}), {batch_size}, {tokens})\n"
              "for t in cache.keys + cache.values:\n"
              "    t.fill_(1.0)\n"
              "print(process.memory_info().rss - before)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def kv_cache_memory(config: GPTConfig, tokens: Sequence[int], batch_size: int = 1) -> dict:
    """The cache's size from the formula and as allocated (bytes), for caches of `tokens` positions."""
    formula = [KVCache.bytes_needed(config, batch_size, n) for n in tokens]
    allocated = []
    for n in tokens:
        cache = KVCache(config, batch_size, n, device="meta")  # shapes only: nothing is allocated
        allocated.append(cache.nbytes)
    return {"tokens": list(tokens), "batch_size": batch_size, "formula_bytes": formula, "allocated_bytes": allocated}


# -- 08: batching --------------------------------------------------------------------------------------------------

def batch_throughput(model: GPT, batch_sizes: Sequence[int], *, new_tokens: int = 32, prompt_tokens: int = 8,
                     repeats: int = 3, name: str = "", check_rows: int = 4, seed: int = 0,
                     machine_limits: dict | None = None) -> dict:
    """Tokens/s of batched greedy generation (prompts of prompt_tokens // 2 .. prompt_tokens tokens, left-padded)
    at each batch size, and whether the first `check_rows` rows equal generating each prompt alone."""
    prompts = _prompts(model, max(batch_sizes), max(1, prompt_tokens // 2), prompt_tokens, seed)
    run = lambda b: lambda: generate_batch(model, prompts[:b], new_tokens, temperature=0.0)  # noqa: E731
    run(1)(), run(max(batch_sizes))()  # warm-up
    times = interleaved({str(b): run(b) for b in batch_sizes}, repeats)
    result = {"model": name, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
              "batch_sizes": list(batch_sizes), "tok_s": [], "spread": []}
    for b in batch_sizes:
        tok_s, spread = _stats(times[str(b)], b * new_tokens)
        result["tok_s"].append(tok_s)
        result["spread"].append(spread)
    result["speedup_over_batch1"] = [t / result["tok_s"][0] for t in result["tok_s"]] if batch_sizes[0] == 1 else None
    rows = min(check_rows, max(batch_sizes))
    batched = generate_batch(model, prompts[:rows], new_tokens, temperature=0.0)
    result["identical_tokens"] = all(torch.equal(row, generate(model, torch.tensor(p), new_tokens, temperature=0.0))
                                     for p, row in zip(prompts, batched))
    if machine_limits is not None:
        bw, gf = machine_limits["memory_bandwidth_gbs"], machine_limits["matmul_gflops"]
        result["bound_tok_s"] = [roofline_tok_s(model, b, bw, gf, prompt_tokens + new_tokens // 2)
                                 for b in batch_sizes]
    return result


def mixed_requests(model: GPT, count: int, *, prompt_range: tuple[int, int] = (4, 32),
                   output_range: tuple[int, int] = (4, 64), seed: int = 0) -> list[Request]:
    """`count` requests, all arrived at the start, with random prompt and output lengths in the given ranges."""
    g = _rng(seed)
    requests = []
    for i in range(count):
        p = int(torch.randint(prompt_range[0], prompt_range[1] + 1, (1,), generator=g))
        n = int(torch.randint(output_range[0], output_range[1] + 1, (1,), generator=g))
        requests.append(Request(i, tuple(torch.randint(0, model.config.vocab_size, (p,), generator=g).tolist()), n))
    return requests


def continuous_vs_static(model: GPT, requests: Sequence[Request], max_batch: int, *, repeats: int = 3) -> dict:
    """Serve the same requests with static batching, continuous batching, and continuous batching on a paged
    KV-cache (`llmcourse.paged.serve_paged`, blocks of 16 positions, a pool that holds `max_batch` of the longest
    requests), in turns; medians over `repeats`."""
    from llmcourse.paged import PagedKVCache, serve_paged

    longest = max(len(r.prompt) + r.max_new_tokens for r in requests)
    blocks = max_batch * -(-longest // 16)
    reports: dict[str, list] = {"static": [], "continuous": [], "paged": []}
    for _ in range(repeats):
        reports["static"].append(serve_static(model, requests, max_batch))
        reports["continuous"].append(serve_continuous(model, requests, max_batch))
        reports["paged"].append(serve_paged(model, requests, PagedKVCache(model.config, blocks, 16,
                                                                          device=get_device()), max_batch))
    median = lambda kind, f: statistics.median(f(r) for r in reports[kind])  # noqa: E731
    result = {"requests": len(requests), "max_batch": max_batch, "tokens": reports["static"][0].tokens}
    for kind in reports:
        result[f"{kind}_tok_s"] = median(kind, lambda r: r.tokens_per_second)
        result[f"{kind}_mean_latency_s"] = median(kind, lambda r: r.mean_latency)
        result[f"{kind}_steps"] = reports[kind][0].steps
    result["continuous_over_static"] = result["continuous_tok_s"] / result["static_tok_s"]
    result["latency_ratio"] = result["continuous_mean_latency_s"] / result["static_mean_latency_s"]
    result["identical_tokens"] = all(r.outputs() == reports["static"][0].outputs()
                                     for kind in reports for r in reports[kind])
    return result


# -- 08/10: the roofline of batch-1 decoding ------------------------------------------------------------------------

def batch1_roofline(model: GPT, bandwidth_gbs: float, *, new_tokens: int = 32, repeats: int = 3, name: str = "",
                    variants: dict[str, nn.Module] | None = None) -> dict:
    """Cached greedy decoding at batch 1 (a 1-token prompt, so `new_tokens` forward passes of one token) against
    the memory-bandwidth bound for the bytes a step reads (weights and, on average, half the final cache).

    Timed in turns with PyTorch's default kernels ("default") and each of `variants`, the same function on other
    kernels (e.g. "prepacked": `llmcourse.kernels.prepack_linears`; "chosen": `tuned_linears`, each layer on the
    kernel measured fastest for its shape; "fused": `fuse_blocks`, a step of each block in one call of the C
    kernels). The headline figures (batch1_tok_s, fraction, kernel) are the fastest.
    """
    models = {"default": model, **(variants or {})}
    speed = decoding_speed({kernel: (m, 1, True) for kernel, m in models.items()}, new_tokens=new_tokens,
                           repeats=repeats)
    prompt = torch.zeros(1, 1, dtype=torch.int64, device=get_device())
    outputs = {kernel: generate(m, prompt, new_tokens, temperature=0.0) for kernel, m in models.items()}
    step_bytes = bytes_read_per_step(model) + KVCache.bytes_needed(model.config, 1, new_tokens // 2)
    bound = decode_bound_tok_s(step_bytes, bandwidth_gbs)
    result = {"model": name, "bytes_per_token": step_bytes, "bandwidth_gbs": bandwidth_gbs, "bound_tok_s": bound,
              "kernels": list(models),
              "identical_tokens": all(torch.equal(out, outputs["default"]) for out in outputs.values())}
    for kernel, (tok_s, spread) in speed.items():
        result.update({f"{kernel}_tok_s": tok_s, f"{kernel}_spread": spread, f"{kernel}_fraction": tok_s / bound})
    best = max(models, key=lambda kernel: result[f"{kernel}_tok_s"])
    result.update(kernel=best, batch1_tok_s=result[f"{best}_tok_s"], spread=result[f"{best}_spread"],
                  fraction=result[f"{best}_fraction"])
    return result


def compare_hf(model: GPT, ours: nn.Module, *, new_tokens: int = 32, repeats: int = 3,
               bound_tok_s: float | None = None) -> dict | None:
    """Batch-1 cached greedy decoding of `new_tokens` tokens from a 1-token prompt: the course's `generate` on `ours`
    (the function of `model`, on its chosen kernels) against Hugging Face transformers' `generate` with its own
    KV-cache, on the same weights, timed in turns. None when transformers is not installed (it is a test-only
    dependency: `pip install transformers` beside the course for this comparison). With the batch-1 decoding bound
    of this machine (`bound_tok_s`), also the ratio a decoder at that bound would reach (`ratio_at_bound`): both
    read the same bytes per token, so the bound caps what any implementation can gain over transformers here."""
    try:
        import transformers
    except ImportError:
        return None
    c = model.config
    config = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                     n_layer=c.n_layer, n_head=c.n_head)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.load_state_dict(to_gpt2_state_dict(model), strict=False)  # lm_head is tied to wte, as in HF's files
    hf.tie_weights()
    prompt = torch.zeros(1, 1, dtype=torch.int64)
    run_hf = lambda: hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,  # noqa: E731
                                 do_sample=False, use_cache=True, pad_token_id=0)
    run_ours = lambda: generate(ours, prompt.to(get_device()), new_tokens, temperature=0.0)  # noqa: E731
    with torch.no_grad():
        same = run_hf()[0].tolist() == run_ours()[0].tolist()  # also the warm-up of both
        times = interleaved({"ours": run_ours, "hf": run_hf}, repeats)
        text = torch.randint(0, c.vocab_size, (1, 16), generator=_rng(0))
        ours_logits, hf_logits = model(text.to(get_device())).cpu(), hf(text).logits
    ours_tok_s, hf_tok_s = (new_tokens / times[k].median for k in ("ours", "hf"))
    # Random weights make many logits nearly equal, so greedy tokens may part where float32 rounding differs between
    # two correct implementations: the logits of one forward pass are the check that does not depend on ties.
    return {"new_tokens": new_tokens, "transformers": transformers.__version__, "ours_tok_s": ours_tok_s,
            "hf_tok_s": hf_tok_s, "ratio": ours_tok_s / hf_tok_s, "identical_tokens": same,
            "max_logit_difference": float((ours_logits - hf_logits).abs().max()),
            "spread": max(times["ours"].spread, times["hf"].spread),
            "ratio_at_bound": None if bound_tok_s is None else bound_tok_s / hf_tok_s}


# -- beyond the basics: attention without the T x T matrix, and a paged KV-cache ---------------------------------

def tiled_attention_memory(lengths: Sequence[int], *, head_dim: int = 64, block: int = 64, seed: int = 0) -> dict:
    """Peak memory allocated by causal attention of one head over T tokens (NumPy, measured with tracemalloc):
    the plain form, which builds the (T, T) scores, against tiled attention (`llmcourse.tiled`), which holds
    (T, block) at a time; and their largest difference in output."""
    import numpy as np

    from llmcourse.tiled import peak_bytes, tiled_attention

    result = {"lengths": list(lengths), "block": block, "head_dim": head_dim, "plain_bytes": [], "tiled_bytes": [],
              "max_abs_difference": 0.0}
    for T in lengths:
        rng = np.random.default_rng(seed + T)
        q, k, v = (rng.normal(size=(T, head_dim)).astype(np.float32) for _ in range(3))

        def plain(q=q, k=k, v=v):
            scores = np.where(np.tri(len(q), dtype=bool), q @ k.T / np.sqrt(head_dim), -np.inf)  # (T, T)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            return (p / p.sum(-1, keepdims=True)) @ v

        result["plain_bytes"].append(peak_bytes(plain))
        result["tiled_bytes"].append(peak_bytes(lambda: tiled_attention(q, k, v, block)))
        difference = float(np.abs(plain() - tiled_attention(q, k, v, block)).max())
        result["max_abs_difference"] = max(result["max_abs_difference"], difference)
    return result


def paged_kv(requests: int = 200, *, cap: int = 256, slots: int = 16, block_size: int = 16, seed: int = 0) -> dict:
    """Requests served at once in a KV budget of `slots` requests reserved at their longest: contiguous
    reservations against a paged cache (`llmcourse.paged.simulate_kv_budget`), on prompts of 8-64 tokens and
    answers that end after 8-`cap` tokens."""
    from llmcourse.paged import simulate_kv_budget

    rng = torch.Generator().manual_seed(seed)
    prompts = torch.randint(8, 65, (requests,), generator=rng).tolist()
    outputs = torch.randint(8, cap + 1, (requests,), generator=rng).tolist()
    budget = slots * (64 + cap)
    contiguous = simulate_kv_budget(prompts, outputs, cap, budget, paged=False)
    paged = simulate_kv_budget(prompts, outputs, cap, budget, paged=True, block_size=block_size)
    return {"requests": requests, "budget_tokens": budget, "contiguous": contiguous, "paged": paged,
            "running_ratio": paged["mean_running"] / contiguous["mean_running"]}


def speculative(*, new_tokens: int = 60, ks: Sequence[int] = (2, 4), repeats: int = 3) -> dict | None:
    """Speculative decoding with prompt lookup (no draft model) on the shipped tiny GPT, greedy, against `generate`
    with the model alone, timed in turns: on a prompt that repeats itself (code in a REPL) and on a fresh one. A
    (k + 1)-token pass of this small model costs about one pass, so the speedup is about the tokens per target pass
    minus the bookkeeping. None when the shipped model cannot be loaded."""
    from llmcourse.pretrained import load_tiny_gpt
    from llmcourse.speculative import speculative_generate

    try:
        model, tokenizer = load_tiny_gpt()
    except (FileNotFoundError, OSError):
        return None
    prompts = {"repeating": "   >>> x = 1\n   >>> x = 1\n   >>> x = 1\n   >>>", "fresh": "The function returns"}
    result: dict = {"model": "shipped tiny GPT", "draft": "prompt lookup", "new_tokens": new_tokens, "runs": []}
    runs, stats, identical = {}, {}, True
    for name, text in prompts.items():
        ids = torch.tensor(tokenizer.encode(text), device=get_device())
        alone = generate(model, ids, new_tokens, temperature=0.0)
        runs[name, 0] = lambda ids=ids: generate(model, ids, new_tokens, temperature=0.0)
        for k in ks:
            out, stats[name, k] = speculative_generate(model, ids, new_tokens, draft="lookup", k=k)
            identical &= torch.equal(out, alone)
            runs[name, k] = lambda ids=ids, k=k: speculative_generate(model, ids, new_tokens, draft="lookup", k=k)
    times = interleaved(runs, repeats)
    for (name, k), st in stats.items():
        result["runs"].append({"prompt": name, "k": k, "acceptance_rate": st.acceptance_rate,
                               "tokens_per_target_pass": st.tokens_per_target_pass,
                               "speedup": times[name, 0].median / times[name, k].median})
    result["identical_tokens"] = identical
    result["best_speedup"] = max(r["speedup"] for r in result["runs"])
    return result


# -- `llmcourse bench` ---------------------------------------------------------------------------------------------

QUANTIZATION_SCHEMES = SCHEMES + ("int4-g128", "int4-g128-mse")  # the bench also tries a larger int4 group


def _quantization(model: GPT, name: str, quick: bool, log: Callable[[str], None], bandwidth_gbs: float,
                  fp32_model: nn.Module) -> tuple[str, list[dict]] | None:
    """The quantization report (notebook 09): quality (held-out perplexity) of the shipped model, weight bytes and
    batch-1 decoding speed of `model` (the GPT-2 shape: a tiny model's speed is all per-call overhead), each scheme
    on its kernels chosen by measurement and against its own bound (the bytes a step reads / the bandwidth)."""
    try:
        from llmcourse.pretrained import load_tiny_gpt
        from llmcourse.train import held_out_text
        tiny, tokenizer = load_tiny_gpt()
    except (ImportError, FileNotFoundError, OSError) as err:
        log(f"quantization: skipped ({type(err).__name__}: {err})")
        return None
    schemes = _fitting(QUANTIZATION_SCHEMES, tiny.config.n_embd, model.config.n_embd)
    quality = quantization_report(tiny, held_out_text(), schemes, tokenizer=tokenizer,
                                  max_tokens=1024 if quick else None, measure_speed=False)
    # An "-mse" scheme stores the same bytes and runs the same kernel as its plain twin (only its scales differ), so
    # its speed is the twin's: measured once, and the GPT-2 shape is not quantized twice.
    timed = tuple(dict.fromkeys(scheme.removesuffix("-mse") for scheme in schemes))
    speed = {row["scheme"]: row for row in quantization_report(model, None, timed, new_tokens=8 if quick else 16,
                                                               repeats=2 if quick else 3, fp32_model=fp32_model)}
    fp32 = speed["fp32"]
    rows = []
    for q in quality:
        s = speed[q["scheme"].removesuffix("-mse")]
        bound = decode_bound_tok_s(s["bytes_per_step"], bandwidth_gbs)
        rows.append({"scheme": q["scheme"], "weight_bytes": s["weight_bytes"],
                     "weight_ratio": s["weight_bytes"] / fp32["weight_bytes"], "perplexity": q["perplexity"],
                     "perplexity_change": q["perplexity"] / quality[0]["perplexity"] - 1, "tok_s": s["tok_s"],
                     "speedup": s["tok_s"] / fp32["tok_s"], "bytes_per_step": s["bytes_per_step"],
                     "bound_tok_s": bound, "fraction": s["tok_s"] / bound})
    return f"perplexity: shipped tiny GPT; bytes and batch-1 speed: {name}", rows


KERNEL_WEIGHTS = ("fp32", "int8", "int4-g32", "int4-g128")  # the weight formats whose kernels the bench chooses


def _fitting(schemes: Sequence[str], *widths: int) -> tuple[str, ...]:
    """The schemes whose int4 group size divides every width (a small test model cannot have groups of 128)."""
    return tuple(s for s in schemes if (group := parse_scheme(s)[1]) is None or all(w % group == 0 for w in widths))


def run(*, quick: bool = False, config: GPTConfig | None = None, quantization: bool = True, hf: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """All the measurements, on the GPT-2 124M shape (or `config`), as one JSON-ready dict."""
    model = gpt2_shape_model(config)
    name = GPT2_NAME if config is None else f"GPTConfig({config.n_layer} layers, {config.n_embd} wide), random"
    block = model.config.block_size
    log(f"model: {name}, {model.num_parameters() / 1e6:.1f}M parameters, {torch.get_num_threads()} thread(s)")
    load_start = _load_per_core()
    results = {"quick": quick, "machine": machine()}
    limits = results["machine"]
    log(f"machine: {limits['memory_bandwidth_gbs']:.1f} GB/s, {limits['matmul_gflops']:.0f} GFLOP/s")
    repeats = 2 if quick else 3
    new_tokens = [n for n in ((16, 64) if quick else (32, 64, 128, 256, 512)) if n + 8 <= block] or [block - 8]
    log(f"kv_cache: new tokens {new_tokens} ...")  # without the cache, 512 tokens take minutes: 2 repeats
    results["kv_cache"] = kv_cache_speedup(model, new_tokens, repeats=2, name=name)
    results["kv_cache_memory"] = kv_cache_memory(model.config, [n + 8 for n in new_tokens])
    batch_sizes = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32]
    log(f"batching: batch sizes {batch_sizes} ...")
    row_tokens = 16 if quick else 32
    results["batching"] = batch_throughput(model, batch_sizes, new_tokens=row_tokens, repeats=repeats, name=name,
                                           machine_limits=limits)
    packed = prepack_linears(model) if prepack_available() else None  # the same function on a faster kernel
    if packed is not None:
        log("batching with weights prepacked for oneDNN ...")
        fast = batch_throughput(packed, batch_sizes, new_tokens=row_tokens, repeats=repeats)
        results["batching"]["prepacked_tok_s"] = fast["tok_s"]
        results["batching"]["prepacked_speedup_over_batch1"] = fast["speedup_over_batch1"]
        results["batching"]["identical_tokens"] &= fast["identical_tokens"]
    requests = mixed_requests(model, 12 if quick else 32, prompt_range=(4, min(32, block // 4)),
                              output_range=(4, min(32 if quick else 64, block // 2)))
    log(f"continuous vs static batching: {len(requests)} requests ...")
    served = continuous_vs_static(model, requests, 4 if quick else 8, repeats=1 if quick else 3)
    results["serving"] = served
    results["batching"]["continuous_over_static"] = served["continuous_over_static"]
    results["batching"]["identical_tokens"] &= served["identical_tokens"]
    log("roofline: batch-1 decoding ...")
    # The limit is the best bandwidth seen: measured again here, since other programs may have slowed the first try.
    bandwidth = max(limits["memory_bandwidth_gbs"], memory_bandwidth_gbs())
    log("kernels: every candidate for each Linear shape and weight format (measured once per machine) ...")
    choices = {weights: choose_linear_kernels(model, rows=1, weights=weights)
               for weights in _fitting(KERNEL_WEIGHTS, model.config.n_embd)}
    results["kernel_choice"] = [asdict(choice) for chosen in choices.values() for choice in chosen.values()]
    variants = {"prepacked": packed} if packed is not None else {}
    if any(choice.chosen != "default" for choice in choices["fp32"].values()):
        variants["chosen"] = tuned_linears(model, choices["fp32"])
    if native.available():  # every block on the C kernel, a step of it in one call; the head on its chosen kernel
        variants["fused"] = tuned_linears(fuse_blocks(model), choices["fp32"])
    results["roofline"] = batch1_roofline(model, bandwidth, repeats=repeats, name=name, variants=variants)
    fastest_fp32 = {"default": model, **variants}[results["roofline"]["kernel"]]
    if hf:
        log("Hugging Face transformers' generate, same weights ...")
        results["compare_hf"] = compare_hf(model, fastest_fp32, new_tokens=16 if quick else 32, repeats=repeats,
                                           bound_tok_s=results["roofline"]["bound_tok_s"])
        if results["compare_hf"] is None:
            log("compare-hf: skipped (transformers is not installed: pip install transformers)")
    if quantization:
        log("quantization ...")
        found = _quantization(model, name, quick, log, bandwidth, fastest_fp32)
        if found is not None:
            results["quantization_model"], results["quantization"] = found
    log("attention without the T x T matrix, and a paged KV-cache ...")
    results["tiled_attention"] = tiled_attention_memory([512, 1024, 2048] if quick else [512, 1024, 2048, 4096])
    results["paged_kv"] = paged_kv(60 if quick else 200)
    log("speculative decoding (prompt lookup, the shipped tiny GPT) ...")
    results["speculative"] = speculative(new_tokens=30 if quick else 60, repeats=2 if quick else 3)
    results["interference"] = interference(results, memory_bandwidth_gbs(), load_start,
                                           _load_per_core(own_threads=torch.get_num_threads()))
    if not results["interference"]["trusted"]:
        log("interference: " + "; ".join(results["interference"]["reasons"]))
    return results


def _at_bound(hf: dict) -> str:
    """What a decoder at the bandwidth bound would reach against transformers, when the bound was given."""
    at_bound = hf.get("ratio_at_bound")
    return "" if at_bound is None else f" (a decoder at the bandwidth bound: {at_bound:.2f}x)"


def format_table(results: dict) -> str:
    """The results as a plain-text table, one figure per line with its baseline or limit."""
    m, kv, bt, rf = results["machine"], results["kv_cache"], results["batching"], results["roofline"]
    sv = results.get("serving", {})
    check = results.get("interference")
    quality = ([] if check is None else ["measurements: no sign of interference"] if check["trusted"] else
               ["WARNING: other programs seem to have run during the measurements, so the ratios below may not hold:",
                *[f"  - {reason}" for reason in check["reasons"]],
                "  Close other programs (or wait for them) and run `llmcourse bench` again."])
    balance = m["matmul_gflops"] / m["memory_bandwidth_gbs"]
    lines = [f"machine: {m.get('cpu', m['processor'])}; memory bandwidth {m['memory_bandwidth_gbs']:.1f} GB/s, "
             f"matmul {m['matmul_gflops']:.0f} GFLOP/s, {m['threads']} thread(s), {m['device']}, torch {m['torch']}",
             f"balance: {balance:.0f} FLOP per byte. A float32 decoding step does 2 FLOP per 4-byte weight (0.5 FLOP "
             f"per byte) at batch 1, so it waits on memory; batch B does 0.5 B per byte, so up to ~{2 * balance:.0f} "
             "rows cost little more than one. The KV-cache removes FLOP (recomputed positions), so it pays most "
             "once a step's recomputation no longer hides behind the weight reads: long outputs.", *quality, "",
             f"KV-cache ({kv['model']}, prompt {kv['prompt_tokens']} tokens, greedy; identical tokens: "
             f"{kv['identical_tokens']})",
             f"  {'new tokens':>10}  {'no cache tok/s':>14}  {'cache tok/s':>11}  {'speedup':>7}"]
    for n, a, b, s in zip(kv["new_tokens"], kv["no_cache_tok_s"], kv["cache_tok_s"], kv["speedup"]):
        lines.append(f"  {n:>10}  {a:>14.1f}  {b:>11.1f}  {s:>6.1f}x")
    lines += ["", f"Batching ({bt['model']}, {bt['new_tokens']} new tokens per row; identical tokens: "
                  f"{bt['identical_tokens']})",
              f"  {'batch':>5}  {'tok/s':>8}  {'x batch 1':>9}  {'prepacked tok/s':>15}  {'x batch 1':>9}  "
              f"{'roofline tok/s':>14}"]
    missing = [float("nan")] * len(bt["batch_sizes"])
    for row in zip(bt["batch_sizes"], bt["tok_s"], bt["speedup_over_batch1"] or missing,
                   bt.get("prepacked_tok_s", missing), bt.get("prepacked_speedup_over_batch1", missing),
                   bt.get("bound_tok_s") or missing):
        b, t, x, pt, px, bound = row
        lines.append(f"  {b:>5}  {t:>8.1f}  {x:>8.1f}x  {pt:>15.1f}  {px:>8.1f}x  {bound:>14.1f}")
    if sv:
        lines += ["", f"Serving {sv['requests']} requests of mixed lengths, at most {sv['max_batch']} at once "
                      f"(identical outputs: {sv['identical_tokens']})",
                  f"  static:     {sv['static_tok_s']:8.1f} tok/s, mean latency {sv['static_mean_latency_s']:.2f} s, "
                  f"{sv['static_steps']} steps",
                  f"  continuous: {sv['continuous_tok_s']:8.1f} tok/s, mean latency "
                  f"{sv['continuous_mean_latency_s']:.2f} s, {sv['continuous_steps']} steps",
                  f"  continuous / static throughput: {sv['continuous_over_static']:.2f}x, mean latency "
                  f"{sv['latency_ratio']:.2f}x"]
        if "paged_tok_s" in sv:
            lines.append(f"  continuous on a paged KV-cache: {sv['paged_tok_s']:8.1f} tok/s "
                         f"({sv['paged_tok_s'] / sv['continuous_tok_s']:.2f}x the contiguous cache: the gather "
                         "through block tables costs time; what it buys is memory, below)")
    lines += ["", f"Roofline of batch-1 cached decoding ({rf['model']}): bound {rf['bound_tok_s']:.1f} tok/s "
                  f"({rf['bytes_per_token'] / 1e6:.0f} MB read per token at {rf['bandwidth_gbs']:.1f} GB/s; "
                  f"identical tokens: {rf['identical_tokens']})"]
    labels = {"default": "PyTorch's default kernels", "prepacked": "weights prepacked for oneDNN",
              "chosen": "each shape on its measured kernel", "fused": "blocks fused in C, head chosen"}
    for kernel in rf["kernels"]:
        lines.append(f"  {labels[kernel]:<30}  {rf[f'{kernel}_tok_s']:6.1f} tok/s = "
                     f"{100 * rf[f'{kernel}_fraction']:3.0f}% of the bound")
    hf = results.get("compare_hf")
    if hf:
        lines += ["", f"Against Hugging Face transformers {hf['transformers']} `generate` with its KV-cache (same "
                      f"weights, batch 1, {hf['new_tokens']} tokens; identical tokens: {hf['identical_tokens']}, "
                      f"largest logit difference {hf['max_logit_difference']:.1e}): ours {hf['ours_tok_s']:.1f} "
                      f"tok/s, transformers {hf['hf_tok_s']:.1f} tok/s = {hf['ratio']:.2f}x{_at_bound(hf)}"]
    if "tiled_attention" in results:
        ta = results["tiled_attention"]
        lines += ["", f"Causal attention of one head (head size {ta['head_dim']}), peak memory allocated, plain "
                      f"against tiled in blocks of {ta['block']} (largest difference {ta['max_abs_difference']:.1e})"]
        for T, plain, tiled in zip(ta["lengths"], ta["plain_bytes"], ta["tiled_bytes"]):
            lines.append(f"  T = {T:>5}: plain {plain / 1e6:8.1f} MB, tiled {tiled / 1e6:6.1f} MB")
    if "paged_kv" in results:
        pk = results["paged_kv"]
        lines += ["", f"KV budget of {pk['budget_tokens']:,} positions, {pk['requests']} mixed requests: requests "
                      f"running at once, paged / contiguous = {pk['running_ratio']:.2f}x"]
        for kind in ("contiguous", "paged"):
            r = pk[kind]
            lines.append(f"  {kind:<10} mean {r['mean_running']:5.1f} running, {r['steps']} steps, fragmentation "
                         f"{100 * r['fragmentation']:4.1f}%, {r['preemptions']} preemptions")
    if results.get("speculative"):
        sp = results["speculative"]
        lines += ["", f"Speculative decoding, {sp['draft']} on the {sp['model']}, greedy, {sp['new_tokens']} tokens "
                      f"(identical tokens to the model alone: {sp['identical_tokens']})"]
        for r in sp["runs"]:
            lines.append(f"  {r['prompt']:>9} prompt, k = {r['k']}: {100 * r['acceptance_rate']:3.0f}% accepted, "
                         f"{r['tokens_per_target_pass']:.2f} tokens per target pass, {r['speedup']:.2f}x")
    if results.get("kernel_choice"):
        lines += ["", "Kernels measured per Linear shape and weight format at batch 1 (median per call, weights read "
                      "from memory; the fastest that computes the same function is chosen and remembered for this "
                      "machine; * marks a kernel that computes something else: relative error in brackets)"]
        for c in results["kernel_choice"]:
            errors = c.get("errors", {})
            timed = ", ".join(f"{kernel} {1e6 * sec:.0f} us" + (f"* [{errors[kernel]:.0e}]"
                                                                  if errors.get(kernel, 0) > CLOSE else "")
                              for kernel, sec in c["seconds"].items())
            lines.append(f"  {c.get('weights', 'fp32'):<9} {c['in_features']:>5} -> {c['out_features']:<6} "
                         f"{timed}: {c['chosen']}")
    if "quantization" in results:
        lines += ["", f"Quantization ({results['quantization_model']}; each scheme on its chosen kernels, against "
                      "its own bound: the bytes one step reads / the bandwidth)",
                  f"  {'scheme':<14}  {'MB':>7}  {'x fp32':>6}  {'perplexity':>10}  {'change':>7}  {'tok/s':>7}  "
                  f"{'x fp32':>6}  {'of bound':>8}"]
        for row in results["quantization"]:
            fraction = f"{100 * row['fraction']:>7.0f}%" if "fraction" in row else ""
            lines.append(f"  {row['scheme']:<14}  {row['weight_bytes'] / 1e6:>7.1f}  {row['weight_ratio']:>6.3f}  "
                         f"{row['perplexity']:>10.2f}  {100 * row['perplexity_change']:>+6.2f}%  {row['tok_s']:>7.1f}  "
                         f"{row['speedup']:>5.2f}x  {fraction}")
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    """The headline figures of a run as a Markdown table, for the README: every figure a ratio of the same run or a
    fraction of the machine's limit, the machine named at the top (`llmcourse bench --markdown FILE.json`)."""
    m, kv, bt, rf = results["machine"], results["kv_cache"], results["batching"], results["roofline"]
    check = results.get("interference", {"trusted": True, "reasons": []})
    balance = m["matmul_gflops"] / m["memory_bandwidth_gbs"]
    rows = [("machine", f"{m.get('cpu', m['processor'])}, {m['threads']} threads, torch {m['torch']}, C kernels: "
                        f"{m.get('native_kernels', 'not measured')}"),
            ("limits", f"read bandwidth {m['memory_bandwidth_gbs']:.1f} GB/s, float32 matmul "
                       f"{m['matmul_gflops']:.0f} GFLOP/s: balance {balance:.0f} FLOP per byte"),
            ("measurements", "no sign of interference" if check["trusted"] else
             "disturbed: " + "; ".join(check["reasons"])),
            ("KV-cache vs recomputing, greedy, identical tokens: " + str(kv["identical_tokens"]).lower(),
             ", ".join(f"{s:.1f}x at {n}" for n, s in zip(kv["new_tokens"], kv["speedup"])) + " new tokens"),
            (f"batch-1 cached decoding vs its bound ({rf['bound_tok_s']:.0f} tok/s)",
             ", ".join(f"{rf[f'{k}_tok_s']:.1f} tok/s ({100 * rf[f'{k}_fraction']:.0f}%) {k}" for k in rf["kernels"])),
            ("throughput vs batch 1, by batch size, identical tokens: " + str(bt["identical_tokens"]).lower(),
             ", ".join(f"{x:.1f}x at {b}" for b, x in zip(bt["batch_sizes"][1:], bt["speedup_over_batch1"][1:]))
             + (f" (prepacked: {bt['prepacked_speedup_over_batch1'][-1]:.1f}x at {bt['batch_sizes'][-1]})"
                if "prepacked_speedup_over_batch1" in bt else ""))]
    if "continuous_over_static" in bt:
        rows.append(("continuous vs static batching, identical outputs", f"{bt['continuous_over_static']:.2f}x "
                                                                          "throughput"))
    for q in results.get("quantization", []):
        if q["scheme"] == "fp32":
            continue
        fraction = f", {100 * q['fraction']:.0f}% of its own bound" if "fraction" in q else ""
        rows.append((f"{q['scheme']}: weight bytes, perplexity change (shipped model), batch-1 tok/s",
                     f"{q['weight_ratio']:.3f}x, {100 * q['perplexity_change']:+.2f}%, {q['speedup']:.2f}x fp32"
                     + fraction))
    if results.get("speculative"):
        sp = results["speculative"]
        best = max(sp["runs"], key=lambda r: r["speedup"])
        rows.append((f"speculative decoding, {sp['draft']}, {sp['model']}, identical tokens: "
                     + str(sp["identical_tokens"]).lower(), f"{best['speedup']:.2f}x ({best['prompt']} prompt, "
                                                            f"k = {best['k']}, {100 * best['acceptance_rate']:.0f}% "
                                                            "accepted)"))
    if results.get("compare_hf"):
        hf = results["compare_hf"]
        rows.append((f"cached decoding vs transformers {hf['transformers']} `generate`, same weights (largest "
                     f"logit difference {hf['max_logit_difference']:.0e}; identical greedy tokens: "
                     f"{str(hf['identical_tokens']).lower()})", f"{hf['ratio']:.2f}x{_at_bound(hf)}"))
    return "\n".join(["| figure | measured |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def label_log_axes(ax, x_values: Sequence[int]) -> None:
    """Label log-log axes with plain numbers: x at exactly `x_values`, y at 1, 2 and 5 times powers of ten."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(x_values))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_kv_cache(kv: dict, ax=None):
    """Tokens/s with and without the cache, and the speedup, against the number of new tokens."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kv["new_tokens"], kv["cache_tok_s"], "o-", label="with KV-cache")
    ax.plot(kv["new_tokens"], kv["no_cache_tok_s"], "s-", label="without (recompute everything)")
    ax.set(xscale="log", yscale="log", xlabel="new tokens generated", ylabel="tokens / s", title=kv["model"])
    label_log_axes(ax, kv["new_tokens"])
    ax.margins(y=0.15)  # room for the speedup labels
    for n, fast, s in zip(kv["new_tokens"], kv["cache_tok_s"], kv["speedup"]):
        ax.annotate(f"{s:.1f}x", (n, fast), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    beyond = [n for n, past in zip(kv["new_tokens"], kv.get("beyond_context", [])) if past]
    if beyond:
        ax.axvspan(min(beyond) / 1.2, max(beyond) * 1.2, color="grey", alpha=0.15, label="past the context")
    ax.legend()
    return ax


def plot_batching(bt: dict, ax=None):
    """Tokens/s against batch size, with the roofline (memory bound, then compute bound) when it was computed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    ax.plot(bt["batch_sizes"], bt["tok_s"], "o-", label="measured, PyTorch's default kernels")
    if bt.get("prepacked_tok_s"):
        ax.plot(bt["batch_sizes"], bt["prepacked_tok_s"], "s-", label="measured, weights prepacked for oneDNN")
    if bt.get("bound_tok_s"):
        ax.plot(bt["batch_sizes"], bt["bound_tok_s"], "k--", label="roofline: min(B x bandwidth / bytes, FLOP/s / 2N)")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens / s", title=bt["model"])
    label_log_axes(ax, bt["batch_sizes"])
    ax.legend(loc="upper left", fontsize=8)
    return ax


def save_plots(results: dict, folder: str | Path) -> list[Path]:
    """PNG plots of the KV-cache sweep, the batching curve and (if measured) quantization, into `folder`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, plot, key in (("bench_kv_cache", plot_kv_cache, "kv_cache"),
                            ("bench_batching", plot_batching, "batching")):
        ax = plot(results[key])
        path = folder / f"{stem}.png"
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
        written.append(path)
    if "quantization" in results:
        rows = results["quantization"]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
        names = [r["scheme"] for r in rows]
        panels = (("weight_ratio", 1, "weight bytes, x fp32"), ("perplexity_change", 100, "perplexity change, %"),
                  ("speedup", 1, "tokens/s at batch 1, x fp32"))
        for ax, (key, scale, title) in zip(axes, panels):
            values = [scale * r[key] for r in rows]
            ax.bar(names, values)
            ax.bar_label(ax.containers[0], fmt="%.2f", fontsize=8)
            ax.axhline(scale * rows[0][key], color="black", lw=0.8)  # fp32, the baseline
            ax.margins(y=0.15)
            ax.set(title=title)
            ax.tick_params(axis="x", rotation=30)
        fig.suptitle(results["quantization_model"])
        fig.tight_layout()
        path = folder / "bench_quantization.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
