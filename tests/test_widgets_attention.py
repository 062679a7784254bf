"""The attention explorer: its hand-built heads show their patterns, and its controls change what it draws."""

import time

import numpy as np
import pytest

from llmcourse.widgets.attention import (SENTENCES, attention_explorer, attention_maps, constructed_model,
                                         explorer_data, random_model)


@pytest.fixture(scope="module")
def model():
    return constructed_model()


@pytest.mark.parametrize("text", SENTENCES)
def test_constructed_heads_show_their_patterns(model, text):
    maps = attention_maps(model, text)  # (H, T, T)
    T = len(text)
    assert maps.shape == (4, T, T)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(maps, k=1) == 0), "no head may look at the future"
    previous, first, same, average = maps
    assert np.all(previous[np.arange(1, T), np.arange(T - 1)] > 0.99)
    assert np.all(first[:, 0] > 0.99)
    for i, ch in enumerate(text):
        copies = [j for j in range(i + 1) if text[j] == ch]
        assert same[i, copies].sum() > 0.95, f"query {i} ({ch!r}) gives too little weight to earlier {ch!r}"
    np.testing.assert_allclose(average, np.tri(T) / np.arange(1, T + 1)[:, None], rtol=1e-12)


def test_random_model_has_no_such_pattern():
    maps = attention_maps(random_model(), SENTENCES[0])
    assert maps[:, 1:].max() < 0.99  # diffuse weights: nothing like the constructed heads' near-one-hot rows


def test_model_rejects_unknown_characters_and_long_text(model):
    with pytest.raises(ValueError, match="printable ASCII"):
        model.embed("naïve")
    with pytest.raises(ValueError, match="1 to 64 characters"):
        model.embed("x" * 65)


def test_explorer_data_follows_the_sliders(model):
    text = SENTENCES[0]
    maps = attention_maps(model, text)
    a = explorer_data(maps, text, head=0, query=5, head_names=model.head_names)
    b = explorer_data(maps, text, head=0, query=6, head_names=model.head_names)
    c = explorer_data(maps, text, head=1, query=6, head_names=model.head_names)
    assert int(np.argmax(a["row"])) == 4 and int(np.argmax(b["row"])) == 5  # the previous character
    assert int(np.argmax(c["row"])) == 0 and c["title"] == "head 1: first character"
    assert "key 5" in b["summary"]
    with pytest.raises(ValueError, match="query in 0..22"):
        explorer_data(maps, text, head=0, query=len(text), head_names=model.head_names)


def test_explorer_widget_redraws_when_a_control_moves():
    explorer = attention_explorer(SENTENCES[:2])
    first_png, first_row = explorer.image.value, explorer.data["row"].copy()
    assert first_png[:8] == b"\x89PNG\r\n\x1a\n"
    start = time.perf_counter()
    explorer.query.value = 3
    seconds = time.perf_counter() - start
    assert seconds < 1.0, f"a slider took {seconds:.2f} s to redraw"  # ~0.05 s on an idle laptop
    assert explorer.data["query"] == 3 and not np.array_equal(explorer.data["row"], first_row)
    assert explorer.image.value != first_png
    explorer.head.value = 2
    assert explorer.data["title"] == "head 2: same character"
    explorer.sentence.value = SENTENCES[1]
    assert explorer.query.max == len(SENTENCES[1]) - 1 and explorer.data["text"] == SENTENCES[1]
    assert explorer.data["weights"].shape == (len(SENTENCES[1]),) * 2


def test_maps_use_the_attention_they_are_given(model):
    from llmcourse.course.loader import reference

    calls = []

    def recording(q, k, v, mask=None):
        calls.append(q.shape)
        return reference("attention.causal_attention")(q, k, v, mask)

    text = SENTENCES[3]
    np.testing.assert_array_equal(attention_maps(model, text, attention=recording), attention_maps(model, text))
    assert calls == [(1, 4, len(text), 16)]
