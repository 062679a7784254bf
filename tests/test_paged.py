"""The paged KV-cache (llmcourse.paged): blocks on demand from a shared pool, tokens identical to generation with
the contiguous cache, blocks back in the pool when a sequence ends, fragmentation under one block per sequence."""

import pytest
import torch

from llmcourse.batching import Request, serve_continuous
from llmcourse.generate import generate
from llmcourse.gpt import GPTConfig, random_gpt
from llmcourse.llama import LlamaConfig, random_llama
from llmcourse.paged import OutOfBlocks, PagedKVCache

GPT_MODEL = random_gpt(GPTConfig(vocab_size=50, block_size=64, n_layer=2, n_head=2, n_embd=16), seed=0)
LLAMA_MODEL = random_llama(LlamaConfig(vocab_size=50, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                       hidden=64), seed=1)
PROMPTS = {"a": [1, 2, 3], "b": [7], "c": [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]}


@torch.no_grad()
def paged_greedy(model, prompts, new_tokens, block_size):
    pool = PagedKVCache(model.config, n_blocks=64, block_size=block_size)
    last, out = {}, {seq: [] for seq in prompts}
    for seq, prompt in prompts.items():  # each prompt prefilled on its own
        batch = pool.batch([seq])
        ids = torch.tensor([prompt])
        logits = model(ids, cache=batch, positions=batch.positions(len(prompt)), attention_mask=batch.mask(len(prompt)))
        last[seq] = int(logits[0, -1].argmax())
    seqs = list(prompts)
    for _ in range(new_tokens):  # then decoded together, one token per row per step
        for seq in seqs:
            out[seq].append(last[seq])
        batch = pool.batch(seqs)
        ids = torch.tensor([[last[seq]] for seq in seqs])
        logits = model(ids, cache=batch, positions=batch.positions(1), attention_mask=batch.mask(1))
        last = {seq: int(logits[i, -1].argmax()) for i, seq in enumerate(seqs)}
    return out, pool


@pytest.mark.parametrize("model", [GPT_MODEL, LLAMA_MODEL], ids=["gpt", "llama"])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_tokens_equal_the_contiguous_cache(model, block_size):
    out, pool = paged_greedy(model, PROMPTS, 12, block_size)
    for seq, prompt in PROMPTS.items():
        expected = generate(model, torch.tensor(prompt), 12, temperature=0)[len(prompt):].tolist()
        assert out[seq] == expected, f"sequence {seq}"
    used, filled = pool.used_bytes()
    assert used - filled < len(PROMPTS) * PagedKVCache.bytes_per_block(model.config, block_size)


def test_blocks_are_taken_on_demand_and_returned():
    pool = PagedKVCache(GPT_MODEL.config, n_blocks=4, block_size=4)
    pool.reserve("x", 5)  # two blocks
    assert pool.tables["x"] == [0, 1] and len(pool.free) == 2
    pool.lengths["x"] = 5
    pool.reserve("x", 3)  # still two blocks: 8 positions
    assert len(pool.tables["x"]) == 2
    with pytest.raises(OutOfBlocks, match="all in use"):
        pool.reserve("y", 9)
    pool.release("x")
    pool.release("y")
    assert sorted(pool.free) == [0, 1, 2, 3] and not pool.tables


def test_a_sequence_reads_back_what_was_written_across_blocks():
    pool = PagedKVCache(GPT_MODEL.config, n_blocks=8, block_size=3)
    pool.reserve("s", 7)
    k, v = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    pool.write(0, "s", 0, k[:, :4], v[:, :4])
    pool.write(0, "s", 4, k[:, 4:], v[:, 4:])
    got_k, got_v = pool.read(0, "s", 7)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)


def mixed_workload(count=200, seed=0):
    """Prompts of 8-64 tokens; answers that end at an end-of-text after 8-256 tokens, under a cap of 256."""
    rng = torch.Generator().manual_seed(seed)
    prompts = torch.randint(8, 65, (count,), generator=rng).tolist()
    outputs = torch.randint(8, 257, (count,), generator=rng).tolist()
    return prompts, outputs


def test_pages_fit_at_least_twice_the_requests_of_contiguous_reservations_in_the_same_memory():
    from llmcourse.paged import simulate_kv_budget

    prompts, outputs = mixed_workload()
    budget = 16 * (64 + 256)  # room for 16 requests reserved at their longest
    contiguous = simulate_kv_budget(prompts, outputs, 256, budget, paged=False)
    paged = simulate_kv_budget(prompts, outputs, 256, budget, paged=True, block_size=16)
    assert contiguous["preemptions"] == 0  # reservations never run out
    assert paged["mean_running"] >= 2 * contiguous["mean_running"], (paged, contiguous)
    assert paged["steps"] < contiguous["steps"]  # the same work served sooner
    assert paged["fragmentation"] < 0.10 < contiguous["fragmentation"], (paged, contiguous)


def test_a_dry_pool_preempts_and_still_serves_everything():
    from llmcourse.paged import simulate_kv_budget

    prompts, outputs = mixed_workload(40, seed=1)
    tight = simulate_kv_budget(prompts, outputs, 256, 2 * (64 + 256), paged=True, block_size=16)
    assert tight["preemptions"] > 0 and tight["steps"] > 0
    with pytest.raises(ValueError, match="alone needs more"):
        simulate_kv_budget([100], [10], 256, 64, paged=False)


def _requests(count: int, seed: int) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    return [Request(i, tuple(torch.randint(0, 50, (int(torch.randint(1, 12, (1,), generator=g)),),
                                           generator=g).tolist()),
                    int(torch.randint(1, 16, (1,), generator=g))) for i in range(count)]


@pytest.mark.parametrize("model", [GPT_MODEL, LLAMA_MODEL], ids=["gpt", "llama"])
def test_continuous_batching_on_pages_gives_the_contiguous_caches_tokens(model):
    from llmcourse.paged import serve_paged

    requests = _requests(9, seed=3)
    expected = serve_continuous(model, requests, 3).outputs()
    pool = PagedKVCache(model.config, n_blocks=64, block_size=4)
    report = serve_paged(model, requests, pool, 3)
    assert report.outputs() == expected
    assert len(pool.free) == pool.n_blocks and not pool.tables, "every block is back in the pool"


def test_a_dry_pool_preempts_the_newest_request_and_the_tokens_stay_the_same():
    from llmcourse.paged import serve_paged

    requests = _requests(8, seed=4)
    expected = serve_continuous(GPT_MODEL, requests, 4).outputs()
    roomy = serve_paged(GPT_MODEL, requests, PagedKVCache(GPT_MODEL.config, n_blocks=64, block_size=4), 4)
    tight_pool = PagedKVCache(GPT_MODEL.config, n_blocks=8, block_size=4)  # 32 positions for 4 rows
    tight = serve_paged(GPT_MODEL, requests, tight_pool, 4)
    assert tight.outputs() == roomy.outputs() == expected
    assert tight.steps > roomy.steps, "preempted requests started again: more forward passes"
    assert len(tight_pool.free) == tight_pool.n_blocks
    with pytest.raises(OutOfBlocks, match="blocks"):
        serve_paged(GPT_MODEL, [Request(0, tuple(range(20)), 4)], PagedKVCache(GPT_MODEL.config, 2, 4), 2)
