"""The sampling explorer: its data follows the sliders, the filters act as documented, and it redraws fast."""

import time

import numpy as np
import pytest
import torch

from llmcourse.gpt import GPT, GPTConfig
from llmcourse.tokenizer import CharTokenizer
from llmcourse.widgets.sampling import next_token_logits, sampling_data, sampling_explorer, show_token

LABELS = [f"t{i}" for i in range(30)]


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    return torch.randn(30, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture(scope="module")
def tiny():
    tokenizer = CharTokenizer.train("the quick brown fox jumps over the lazy dog.\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    return model, tokenizer


def test_no_filter_at_temperature_one_changes_nothing(logits):
    data = sampling_data(logits, 1.0, None, None, labels=LABELS)
    np.testing.assert_allclose(data["after"], data["before"], rtol=1e-12)
    assert data["kept"] == 30
    assert data["before"][0] == data["before"].max() and np.all(np.diff(data["before"]) <= 0)
    assert len(data["ids"]) == 20 and data["labels"] == [LABELS[i] for i in data["ids"]]
    np.testing.assert_allclose(data["before"], torch.softmax(logits.double(), -1)[data["ids"]].numpy(), rtol=1e-12)


def test_temperature_moves_the_entropy(logits):
    cold = sampling_data(logits, 0.3, None, None, labels=LABELS)
    hot = sampling_data(logits, 2.0, None, None, labels=LABELS)
    assert cold["entropy_after"] < cold["entropy_before"] < hot["entropy_after"]
    greedy = sampling_data(logits, 0.0, None, None, labels=LABELS)
    assert greedy["after"][0] == 1.0 and greedy["kept"] == 1 and greedy["entropy_after"] == 0.0
    assert set(greedy["draws"]) == {int(logits.argmax())}


def test_filters_limit_what_can_be_drawn(logits):
    top3 = sampling_data(logits, 1.0, 3, None, labels=LABELS)
    assert top3["kept"] == 3 and set(top3["draws"]) <= set(top3["ids"][:3])
    assert np.count_nonzero(top3["after"]) == 3 and np.isclose(top3["after"].sum(), 1.0)
    nucleus = sampling_data(logits, 1.0, None, 0.5, labels=LABELS)
    kept = nucleus["kept"]
    assert nucleus["before"][:kept].sum() >= 0.5 > nucleus["before"][:kept - 1].sum()
    assert "of 30 tokens can be drawn" in nucleus["summary"]


def test_draws_are_seeded(logits):
    a = sampling_data(logits, 1.2, None, None, labels=LABELS, seed=3)["draws"]
    assert a == sampling_data(logits, 1.2, None, None, labels=LABELS, seed=3)["draws"]
    assert a != sampling_data(logits, 1.2, None, None, labels=LABELS, seed=4)["draws"]


def test_bad_settings_are_rejected(logits):
    with pytest.raises(ValueError, match="temperature"):
        sampling_data(logits, -1.0, None, None, labels=LABELS)
    with pytest.raises(ValueError, match="one label per token"):
        sampling_data(logits, 1.0, None, None, labels=LABELS[:5])


def test_show_token_makes_whitespace_visible():
    assert show_token(" a\n") == "\u2423a\u21b5" and show_token("") == "\u2205"


def test_next_token_logits_match_the_model(tiny):
    model, tokenizer = tiny
    got = next_token_logits(model, tokenizer, "the fox")
    expected = model(torch.tensor([tokenizer.encode("the fox")]))[0, -1]
    torch.testing.assert_close(got, expected, rtol=1.3e-6, atol=1e-5)  # the same float32 forward
    with pytest.raises(ValueError, match="prompt is empty"):
        next_token_logits(model, tokenizer, "")


def test_explorer_redraws_at_once_when_a_slider_moves(tiny):
    model, tokenizer = tiny
    explorer = sampling_explorer(model, tokenizer, "the quick", n_continue=8)
    first_png, first_text = explorer.image.value, explorer.text.value
    assert first_png[:4] == b"\x89PNG" and "A continuation" in first_text
    start = time.perf_counter()
    explorer.top_k.value = 2
    seconds = time.perf_counter() - start
    assert explorer.data["kept"] == 2 and explorer.image.value != first_png
    assert explorer.settings() == (1.0, 2, None)
    assert seconds < 1.0, f"a slider took {seconds:.2f} s to redraw"
    explorer.temperature.value = 0.0
    assert explorer.data["kept"] == 1 and len(set(explorer.data["draws"])) == 1
    explorer.top_p.value = 0.5
    assert explorer.settings() == (0.0, 2, 0.5)
