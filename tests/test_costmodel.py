"""The cost model of notebooks 07, 09 and 10: bytes and FLOPs of a forward pass counted independently (PyTorch's
FLOP counter, the module's own bytes), the passes `generate` really makes, and the max/sum combination."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmcourse import costmodel as cm
from llmcourse import generate as gen
from llmcourse.gpt import GPT, GPTConfig, KVCache, random_gpt
from llmcourse.quantization import bytes_read_per_step

SMALL = GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=8)


def _matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "mm" in str(op))  # mm, addmm, bmm: the Linears and the head


def _attention_flops(config: GPTConfig, new: int, past: int) -> int:
    return 4 * config.n_layer * config.n_embd * (new * past + new * (new + 1) // 2)


@pytest.mark.parametrize("batch", [1, 3])
def test_flops_of_the_linears_match_pytorchs_counter(batch):
    model = random_gpt(SMALL, 0)
    ids = torch.randint(0, SMALL.vocab_size, (batch, 5), generator=torch.Generator().manual_seed(0))
    plain = cm.forward_cost(SMALL, 5, batch_size=batch)
    assert plain.flops - batch * _attention_flops(SMALL, 5, 0) == _matmul_flops(lambda: model(ids, last_only=True))
    cache = KVCache(SMALL, batch, 8)
    with torch.no_grad():
        model(ids, cache=cache)
    step = cm.forward_cost(SMALL, 1, 5, batch_size=batch, cache=True)
    counted = _matmul_flops(lambda: model(ids[:, :1], cache=cache, last_only=True))
    assert step.flops - batch * _attention_flops(SMALL, 1, 5) == counted


def test_weight_bytes_are_the_models_and_the_cache_adds_its_size():
    model = random_gpt(SMALL, 0)
    assert cm.fp32_bytes_read_per_step(SMALL) == bytes_read_per_step(model)
    plain = cm.forward_cost(SMALL, 1, 4)
    cached = cm.forward_cost(SMALL, 1, 4, cache=True, batch_size=2)
    assert cached.bytes - plain.bytes == KVCache.bytes_needed(SMALL, 2, 5)
    assert cm.forward_cost(SMALL, 1, weight_bytes=123.0).bytes == 123.0


def test_generation_steps_are_the_passes_generate_makes(monkeypatch):
    """Record (new positions, cached positions) of every forward pass of generate, past the context too."""
    calls = []
    forward = GPT.forward

    def recording(self, idx, *, cache=None, **kwargs):
        calls.append((idx.shape[1], 0 if cache is None else cache.length, cache is not None))
        return forward(self, idx, cache=cache, **kwargs)

    monkeypatch.setattr(GPT, "forward", recording)
    model = random_gpt(SMALL, 0)
    for use_cache in (False, True):
        calls.clear()
        gen.generate(model, torch.zeros(1, 3, dtype=torch.int64), 14, temperature=0.0, use_cache=use_cache)
        expected = [cm.forward_cost(SMALL, t, past, cache=c) for t, past, c in calls]
        assert cm.generation_steps(SMALL, 3, 14, use_cache=use_cache) == expected
    assert any(not c for _, _, c in calls) and any(c for _, _, c in calls)  # the cached run went past the context


def test_max_and_sum_combine_the_two_terms():
    step = cm.StepCost(bytes=2e9, flops=30e9)  # 0.2 s at 10 GB/s; 0.3 s at 100 GFLOP/s
    assert step.seconds(10.0, 100.0, "max") == pytest.approx(0.3)
    assert step.seconds(10.0, 100.0, "sum") == pytest.approx(0.5)
    assert step.intensity == 15.0
    assert cm.total([step, step]) == cm.StepCost(4e9, 60e9)
    with pytest.raises(ValueError, match="combine must be one of"):
        step.seconds(10.0, 100.0, "mean")
    with pytest.raises(ValueError, match="must be positive"):
        step.seconds(0.0, 100.0)


def test_bad_positions_are_refused():
    with pytest.raises(ValueError, match="new_positions >= 1"):
        cm.forward_cost(SMALL, 0)
    with pytest.raises(ValueError, match="do not fit the context"):
        cm.forward_cost(SMALL, 5, 10)
    with pytest.raises(ValueError, match="prompt_tokens >= 1"):
        cm.generation_steps(SMALL, 0, 4, use_cache=True)


def test_speedup_is_one_when_memory_bound_and_the_flop_ratio_when_compute_bound():
    config = GPTConfig.gpt2()
    # Infinitely fast arithmetic: every step reads the weights once either way, the cache only adds its own bytes.
    assert cm.predict_kv_speedup(config, 8, 16, 10.0, 1e12) == pytest.approx(1.0, rel=0.02)
    # Infinitely fast memory: the speedup is the ratio of FLOPs, far below the ratio of positions (the head's and
    # attention's FLOPs do not shrink with the cache).
    flops = [cm.total(cm.generation_steps(config, 8, 64, use_cache=c)).flops for c in (False, True)]
    assert cm.predict_kv_speedup(config, 8, 64, 1e12, 10.0) == pytest.approx(flops[0] / flops[1], rel=1e-3)
    # In between, the sum of the two terms is slower than their max, and the speedup grows with the length.
    short, long = (cm.predict_kv_speedup(config, 8, n, 20.0, 100.0, "sum") for n in (16, 256))
    assert 1 < short < long


def test_break_even_positions_balance_the_two_terms():
    config = GPTConfig.gpt2()
    t = cm.break_even_positions(config, 10.0, 100.0)
    linears = 2 * 12 * config.n_layer * config.n_embd ** 2 * t / 100e9
    assert linears == pytest.approx(cm.fp32_bytes_read_per_step(config) / 10e9)


def test_roofline_plot_has_a_point_per_configuration():
    import matplotlib
    matplotlib.use("Agg")
    ax = cm.plot_roofline({"a": (0.5, 5.0), "b": (20.0, 80.0)}, 10.0, 100.0, predicted={"a": (0.5, 5.0)})
    labels = [line.get_label() for line in ax.get_lines()]
    assert "a" in labels and "b" in labels
