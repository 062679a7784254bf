"""The speed explorer: its data follows the sliders and it redraws from stored measurements, without measuring."""

import pytest

from llmcourse.widgets.speed import speed_data, speed_explorer

KV = {"model": "m", "new_tokens": [32, 64, 128], "no_cache_tok_s": [40.0, 20.0, 10.0],
      "cache_tok_s": [80.0, 80.0, 80.0],
      "speedup": [2.0, 4.0, 8.0]}
BATCHING = {"model": "m", "batch_sizes": [1, 4, 16], "tok_s": [10.0, 36.0, 80.0], "bound_tok_s": [20.0, 80.0, 100.0]}


def test_speed_data_reads_the_measurements():
    data = speed_data(KV, BATCHING, 64, 4)
    assert data["no_cache_s"] == pytest.approx(64 / 20.0) and data["cache_s"] == pytest.approx(64 / 80.0)
    assert data["speedup"] == 4.0 and data["over_batch1"] == pytest.approx(3.6)
    assert data["fraction"] == pytest.approx(36 / 80) and data["ms_per_step"] == pytest.approx(1e3 * 4 / 36)
    assert "4.0x" in data["summary"] and "45% of the roofline" in data["summary"]
    without_roofline = speed_data(KV, {k: v for k, v in BATCHING.items() if k != "bound_tok_s"}, 32, 1)
    assert without_roofline["bound_tok_s"] is None and "roofline" not in without_roofline["summary"]


def test_speed_data_rejects_unmeasured_choices():
    with pytest.raises(ValueError, match="measured"):
        speed_data(KV, BATCHING, 100, 1)
    with pytest.raises(ValueError, match="batch size 8"):
        speed_data(KV, BATCHING, 32, 8)
    with pytest.raises(ValueError, match="or both"):
        speed_data(None, None, 32, 1)


def test_explorer_callback_updates_fast():
    explorer = speed_explorer(KV, BATCHING)
    assert explorer.data["kv_index"] == 2 and explorer.data["batch_index"] == 0
    first = explorer.image.value
    explorer.batch.value = 16  # redraws from the stored numbers (no test asserts a time: see COURSE.md section 5)
    assert explorer.data["batch_index"] == 2 and explorer.image.value != first
    assert "Batch 16" in explorer.text.value
    explorer.length.value = 32
    assert explorer.data["speedup"] == 2.0
    alone = speed_explorer(batching=BATCHING)
    assert alone.length is None and "tok/s" in alone.text.value
