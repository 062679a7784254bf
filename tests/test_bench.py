"""`llmcourse bench`: the JSON schema, the table and the plots, on a tiny model in seconds (no time assertions)."""

import json
from dataclasses import replace

import pytest

from llmcourse import bench, cli, kernels, native, runtime
from llmcourse.gpt import GPTConfig, KVCache
from llmcourse.llama import LlamaConfig
from llmcourse.kernels import prepack_available

TINY = GPTConfig(vocab_size=64, block_size=300, n_layer=2, n_head=2, n_embd=16)
LIMITS = {"memory_bandwidth_gbs": 10.0, "matmul_gflops": 100.0, "threads": 1, "device": "cpu", "torch": "x",
          "processor": "x"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the machine's limits are measured elsewhere; here the schema
        patch.setenv(runtime.CACHE_ENV, str(tmp_path_factory.mktemp("kernel_cache")))
        patch.setattr(bench, "machine", lambda: dict(LIMITS))
        patch.setattr(bench, "memory_bandwidth_gbs", lambda: LIMITS["memory_bandwidth_gbs"])
        return bench.run(quick=True, config=TINY, quantization=False, log=lambda line: None)


def test_json_schema(results):
    json.dumps(results)  # JSON-ready
    assert set(results["machine"]) >= {"memory_bandwidth_gbs", "matmul_gflops"}
    kv = results["kv_cache"]
    assert set(kv) >= {"model", "new_tokens", "no_cache_tok_s", "cache_tok_s", "speedup", "identical_tokens"}
    assert len(kv["new_tokens"]) == len(kv["no_cache_tok_s"]) == len(kv["cache_tok_s"]) == len(kv["speedup"]) >= 2
    assert kv["identical_tokens"] is True
    bt = results["batching"]
    assert set(bt) >= {"model", "batch_sizes", "tok_s", "identical_tokens", "continuous_over_static"}
    assert bt["batch_sizes"][0] == 1 and len(bt["tok_s"]) == len(bt["batch_sizes"])
    assert bt["identical_tokens"] is True and bt["continuous_over_static"] > 0
    rf = results["roofline"]
    assert set(rf) >= {"model", "batch1_tok_s", "bound_tok_s", "fraction"}
    assert rf["fraction"] == pytest.approx(rf["batch1_tok_s"] / rf["bound_tok_s"])
    assert rf["batch1_tok_s"] == max(rf[f"{kernel}_tok_s"] for kernel in rf["kernels"])
    assert rf["identical_tokens"] is True  # prepacked weights: the same function, the same greedy tokens
    assert ("prepacked" in rf["kernels"]) == prepack_available()
    assert ("prepacked_tok_s" in bt) == prepack_available()  # the batching sweep on the faster kernel too
    assert results["serving"]["continuous_steps"] < results["serving"]["static_steps"]
    assert results["serving"]["paged_tok_s"] > 0
    assert results["serving"]["identical_tokens"] is True  # static, continuous and paged alike


def test_table_and_plots(results, tmp_path):
    table = bench.format_table(results)
    for heading in ("KV-cache", "Batching", "Serving", "Roofline"):
        assert heading in table
    paths = bench.save_plots(results, tmp_path)
    assert [p.name for p in paths] == ["bench_kv_cache.png", "bench_batching.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_the_kernel_of_each_linear_shape_is_chosen_by_measurement_and_reported(results):
    shapes = {(c["in_features"], c["out_features"]) for c in results["kernel_choice"]}
    assert shapes == {(16, 48), (16, 16), (16, 64), (64, 16)}  # c_attn, attn/mlp projections, c_fc, and the head
    assert {c["weights"] for c in results["kernel_choice"]} == {"fp32", "int8"}  # int4 groups of 32 > 16 columns
    for choice in results["kernel_choice"]:
        accepted = {k: sec for k, sec in choice["seconds"].items() if choice["errors"][k] <= kernels.CLOSE}
        assert choice["chosen"] == min(accepted, key=accepted.get)
    assert "Kernels measured per Linear shape" in bench.format_table(results)


def test_speculative_decoding_figures(results):
    sp = results["speculative"]
    assert sp["identical_tokens"] is True, "greedy speculative decoding gives the model's own tokens"
    runs = {(r["prompt"], r["k"]): r for r in sp["runs"]}
    assert runs["repeating", 4]["acceptance_rate"] > runs["fresh", 4]["acceptance_rate"]
    assert "Speculative decoding, prompt lookup" in bench.format_table(results)


def test_tiled_attention_and_paged_kv_figures(results):
    ta, pk = results["tiled_attention"], results["paged_kv"]
    assert ta["max_abs_difference"] < 1e-5
    assert ta["plain_bytes"][-1] / ta["plain_bytes"][0] > 10  # T x 4: the (T, T) scores grow 16x
    assert ta["tiled_bytes"][-1] / ta["tiled_bytes"][0] < 6  # (T, block): about 4x
    assert pk["running_ratio"] > 1.5 and pk["paged"]["fragmentation"] < pk["contiguous"]["fragmentation"]
    table = bench.format_table(results)
    assert "peak memory allocated" in table and "paged / contiguous" in table


def test_the_run_says_whether_its_ratios_can_be_trusted(results):
    check = results["interference"]
    assert set(check) >= {"trusted", "reasons", "bandwidth_start_gbs", "bandwidth_end_gbs", "noisy_figures"}
    assert check["trusted"] == (not check["reasons"])
    assert ("no sign of interference" in bench.format_table(results)) == check["trusted"]


def test_interference_is_reported_with_its_reasons(results):
    quiet = {**results, "machine": dict(LIMITS), "kv_cache": {**results["kv_cache"]},
             "batching": {**results["batching"], "spread": [0.01] * len(results["batching"]["batch_sizes"])},
             "roofline": {**results["roofline"], **{f"{k}_spread": 0.02 for k in results["roofline"]["kernels"]}}}
    quiet["kv_cache"]["no_cache_spread"] = quiet["kv_cache"]["cache_spread"] = [0.05] * len(quiet["kv_cache"]
                                                                                            ["new_tokens"])
    assert bench.interference(quiet, 10.5, 0.3, 0.4)["trusted"]
    assert not bench.interference(quiet, 10.5, 0.3, 0.6)["trusted"], "others kept more than half the cores busy"
    slowed = bench.interference(quiet, 6.0, 0.3, 0.4)  # the bandwidth fell by 40% during the run
    assert not slowed["trusted"] and "10.0 GB/s at the start, 6.0 at the end (-40%)" in slowed["reasons"][0]
    quiet["batching"]["spread"][1] = 0.4
    noisy = bench.interference(quiet, 10.0, 0.3, 2.5)
    assert not noisy["trusted"] and noisy["noisy_figures"] == {f"batch {quiet['batching']['batch_sizes'][1]}": 0.4}
    assert any("load average of other programs 2.5 per core" in reason for reason in noisy["reasons"])
    table = bench.format_table({**results, "interference": noisy})
    assert "WARNING" in table and "batch 4, +-40%" in table


def test_the_load_read_at_the_end_leaves_out_the_benchs_own_threads(monkeypatch):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (2.2, 0.0, 0.0))
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert bench._load_per_core() == pytest.approx(1.1)
    assert bench._load_per_core(own_threads=2) == pytest.approx(0.1), "the bench's two busy threads are its own"
    assert bench._load_per_core(own_threads=4) == 0.0


def test_cache_memory_formula_equals_allocation():
    memory = bench.kv_cache_memory(GPTConfig.gpt2(), [16, 256], batch_size=2)
    assert memory["formula_bytes"] == memory["allocated_bytes"] == [KVCache.bytes_needed(GPTConfig.gpt2(), 2, n)
                                                                    for n in (16, 256)]


def test_predicted_speedup_from_step_costs():
    costs = {"contexts": [10, 110], "no_cache_s": [1.0, 11.0], "cache_s": [1.0, 1.0]}  # 0.1 s per context token
    # n = 2 after a prompt of 10: without the cache steps at contexts 10 and 11 (1.0 + 1.1 s); with it 1.0 + 1.0 s.
    assert bench.predicted_speedup(costs, 10, [2]) == [pytest.approx(2.1 / 2.0)]
    # Past the last measured context the cost follows the last segment: a step at context 120 costs 12 s.
    assert bench.predicted_speedup(costs, 120, [1]) == [pytest.approx(12.0 / 12.0)]
    # Below the first it stays flat: 1.0 s at context 5.
    assert bench.predicted_speedup(costs, 5, [2]) == [pytest.approx(2.0 / 2.0)]


def test_measured_cache_bytes_matches_the_formula():
    config = GPTConfig(vocab_size=10, block_size=4096, n_layer=4, n_head=4, n_embd=256)
    formula = KVCache.bytes_needed(config, 1, 4096)  # 32 MiB: large enough to dwarf the process's noise
    assert abs(bench.measured_cache_bytes(config, 1, 4096) - formula) < 0.1 * formula


def test_measured_cache_bytes_of_a_llama_follows_its_kv_heads():
    config = LlamaConfig(vocab_size=10, block_size=4096, n_layer=8, n_head=8, n_kv_head=2, n_embd=512, hidden=64)
    formula = KVCache.bytes_needed(config, 1, 4096)  # 2 of 8 heads of 64, 8 layers: 32 MiB, a quarter of multi-head's
    assert formula == KVCache.bytes_needed(replace(config, n_kv_head=8), 1, 4096) // 4
    assert abs(bench.measured_cache_bytes(config, 1, 4096) - formula) < 0.1 * formula


def test_roofline_bends_from_memory_to_compute_bound():
    model = bench.gpt2_shape_model(TINY)
    bounds = [bench.roofline_tok_s(model, b, 10.0, 100.0) for b in (1, 2, 1024, 4096)]
    assert bounds[1] == pytest.approx(2 * bounds[0])  # memory bound: twice the rows, twice the tokens per read
    assert bounds[2] == bounds[3]  # compute bound: flat


def test_cli_bench_writes_json_and_plots(tmp_path, monkeypatch):
    run = bench.run
    monkeypatch.setattr(bench, "run", lambda quick, hf: run(quick=quick, config=TINY, quantization=False,
                                                            log=lambda line: None))
    monkeypatch.setattr(bench, "machine", lambda: dict(LIMITS))
    monkeypatch.setattr(bench, "memory_bandwidth_gbs", lambda: LIMITS["memory_bandwidth_gbs"])
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--json", str(out), "--plots", str(tmp_path), "--threads", "1"]) == 0
    assert json.loads(out.read_text())["quick"] is True
    assert (tmp_path / "bench_batching.png").exists()


def test_quantization_rows_take_quality_from_the_shipped_model_and_speed_from_the_bench_model(results, tmp_path):
    model = bench.gpt2_shape_model(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=64))
    name, rows = bench._quantization(model, "a small random GPT", quick=True, log=lambda line: None,
                                     bandwidth_gbs=10.0, fp32_model=model)
    assert "shipped tiny GPT" in name and "a small random GPT" in name
    for row in rows:  # each scheme against its own bound: the bytes one step reads at 10 GB/s
        assert row["bound_tok_s"] == pytest.approx(10e9 / row["bytes_per_step"])
        assert row["fraction"] == pytest.approx(row["tok_s"] / row["bound_tok_s"])
    assert [r["scheme"] for r in rows] == ["fp32", "int8", "int8-kernel", "int4-g32", "int4-g32-mse"]
    fp32, int8 = rows[0], rows[1]
    plain, searched = rows[3], rows[4]  # same bytes and kernel, so the speed measured once; better perplexity
    assert searched["weight_bytes"] == plain["weight_bytes"] and searched["tok_s"] == plain["tok_s"]
    assert searched["perplexity"] < plain["perplexity"]
    assert fp32["weight_ratio"] == fp32["speedup"] == 1.0 and fp32["perplexity_change"] == 0.0
    assert int8["weight_bytes"] < fp32["weight_bytes"] <= 4 * 64 * 64 * 14  # the small model's bytes, not the shipped
    # The shipped model's held-out perplexity: int8 weights change it by well under a percent (notebook 09).
    assert abs(int8["perplexity_change"]) < 0.01
    with_rows = {**results, "quantization_model": name, "quantization": rows}
    assert "int4-g32" in bench.format_table(with_rows)
    assert bench.save_plots(with_rows, tmp_path)[-1].name == "bench_quantization.png"


def test_machine_limits_are_measured_with_the_fastest_pattern_and_kernel(monkeypatch):
    from llmcourse import kernels, timing

    calls = []
    real = timing.measure

    def spy(fn, **kwargs):
        calls.append(fn)
        return real(fn, **kwargs)

    monkeypatch.setattr(timing, "measure", spy)
    monkeypatch.setattr(kernels, "measure", spy)
    assert timing.memory_bandwidth_gbs(megabytes=8, repeats=1) > 0
    reads = 2 + native.available()  # a sum, a copy, and the C kernel's matrix-vector product: the best is the limit
    assert len(calls) == reads
    assert kernels.matmul_gflops(n=64, repeats=1) > 0
    assert len(calls) == reads + 1 + prepack_available()  # the default matmul, and oneDNN's where there is one


def test_the_bandwidth_is_the_best_read_rate_found(monkeypatch):
    """The C kernel's matrix-vector product is the third read timed: reported faster, it sets the limit."""
    from llmcourse import timing

    if not native.available():
        pytest.skip("the C kernels are not built here")
    seconds = iter([1.0, 1.0, 1e-3])  # the sum, the copy, the C kernel's product
    monkeypatch.setattr(timing, "measure", lambda fn, **kw: (fn(), timing.Measurement((next(seconds),)))[1])
    assert timing.memory_bandwidth_gbs(megabytes=8, repeats=1) == pytest.approx(8 * 1024 * 1024 / 1e-3 / 1e9)


def test_compare_hf_times_transformers_generate_on_the_same_weights(results):
    pytest.importorskip("transformers", reason="transformers is a test-only dependency (the dev extra)")
    model = bench.gpt2_shape_model(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32))
    result = bench.compare_hf(model, model, new_tokens=6, repeats=1, bound_tok_s=1000.0)
    assert result["identical_tokens"] is True, "the same weights must give the same greedy tokens"
    assert result["max_logit_difference"] < 1e-4
    assert result["ratio"] == pytest.approx(result["ours_tok_s"] / result["hf_tok_s"])
    assert result["ratio_at_bound"] == pytest.approx(1000.0 / result["hf_tok_s"])
    line = bench.format_table({**results, "compare_hf": result})
    assert "Against Hugging Face transformers" in line and f"{result['ratio']:.2f}x" in line
    assert f"a decoder at the bandwidth bound: {result['ratio_at_bound']:.2f}x" in line
    assert "bandwidth bound" in bench.markdown_table({**results, "compare_hf": result})


def test_markdown_table_of_a_saved_run(results, tmp_path, capsys):
    table = bench.markdown_table(results)
    assert table.startswith("| figure | measured |") and "KV-cache vs recomputing" in table
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(results))
    assert cli.main(["bench", "--markdown", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == table


def test_the_bench_measures_a_llama_unchanged():
    """Issue 14: the bench's pieces take any of the course's models (grouped-query KV-cache, rotary positions)."""
    from llmcourse.llama import LlamaConfig, random_llama
    from llmcourse.quantization import quantization_report

    model = random_llama(LlamaConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                     hidden=64), seed=0)
    assert bench.batch1_roofline(model, 10.0, new_tokens=4, repeats=1)["identical_tokens"] is True
    assert bench.kv_cache_speedup(model, [4], repeats=1)["identical_tokens"] is True
    assert bench.batch_throughput(model, [1, 2], new_tokens=4, repeats=1)["identical_tokens"] is True
    rows = quantization_report(model, None, ("fp32", "int8", "int4-g16"), new_tokens=2, repeats=1)
    assert [r["bytes_per_step"] < rows[0]["bytes_per_step"] for r in rows[1:]] == [True, True]
