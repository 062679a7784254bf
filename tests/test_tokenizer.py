"""Tokenizers, the bigram baseline and the provided code of solutions/tokens.py: round trips, PyTorch equality,
properties and bad-input errors."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.course.loader import reference
from llmcourse.data import load_corpus
from llmcourse.ngram import BigramModel
from llmcourse.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, split_chunks

TRAIN = ("The quick brown fox jumps over the lazy dog. It's 2024; the dog doesn't mind!\n"
         "    def f(x):\n        return x ** 2\n") * 20 + "语言模型把文字变成数字。🙂"
SENTENCES = ["Hello, world! The tokenizer's job is simple.", "你好，世界！大语言模型把文字变成数字。",
             "emoji 🙂👍🏽 family 👨‍👩‍👧", "tabs\tand\n\nnewlines   ", "", " ", "x"]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN, vocab_size=300)


# -- BPE tokenizer --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", SENTENCES)
def test_bpe_round_trip(bpe, text):
    ids = bpe.encode(text)
    assert all(isinstance(i, int) and 0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_compresses_what_it_was_trained_on(bpe):
    assert bpe.vocab_size == 300
    text = "The quick brown fox jumps over the lazy dog."
    assert len(bpe.encode(text)) < len(text) / 2


def test_bpe_merges_follow_training_order(bpe):
    ids = list(bpe.merges.values())
    assert ids == list(range(256, 300))
    first = next(iter(bpe.merges))
    assert bpe.token_bytes(256) == bpe.token_bytes(first[0]) + bpe.token_bytes(first[1])


def test_bpe_encode_of_training_chunks_matches_counter_training():
    """An independent trainer (Counter over the chunks, one full recount per merge) learns the same merges."""
    from collections import Counter
    text = TRAIN[:400]
    words = Counter(split_chunks(text))
    seqs = {w: list(w.encode()) for w in words}
    expected = []
    for new_id in range(256, 280):
        counts = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)
        expected.append(pair)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if tuple(seq[i:i + 2]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    assert list(BPETokenizer.train(text, 280).merges) == expected


def test_truncate_equals_training_to_that_size(bpe):
    assert bpe.truncate(270).merges == BPETokenizer.train(TRAIN, vocab_size=270).merges


def test_training_stops_when_pairs_run_out():
    tok = BPETokenizer.train("ab ab", vocab_size=1000)
    assert tok.vocab_size < 1000
    assert tok.decode(tok.encode("ab ab ba")) == "ab ab ba"
    assert BPETokenizer.train("", vocab_size=300).vocab_size == 256


@settings(deadline=None, max_examples=200)
@given(st.text())
def test_bpe_round_trips_any_text(text):
    tok = _hypothesis_tokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(deadline=None, max_examples=200)
@given(st.text())
def test_split_chunks_cover_the_text(text):
    assert "".join(split_chunks(text)) == text


def _hypothesis_tokenizer(cache={}):  # noqa: B006 - one tokenizer for all examples
    if "tok" not in cache:
        cache["tok"] = BPETokenizer.train(TRAIN + "".join(SENTENCES), vocab_size=320)
    return cache["tok"]


def test_bpe_decode_of_a_cut_character_uses_replacement(bpe):
    assert bpe.decode(list("你".encode())[:2]) == "\ufffd"  # the first 2 of the character's 3 UTF-8 bytes
    assert bpe.decode(list("a你".encode())[:3] + [98]) == "a\ufffdb"


def test_bpe_save_load(tmp_path, bpe):
    path = tmp_path / "bpe.json"
    bpe.save(path)
    for loaded in (BPETokenizer.load(path), load_tokenizer(path)):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.merges == bpe.merges
        assert loaded.encode(SENTENCES[0]) == bpe.encode(SENTENCES[0])
    assert json.loads(path.read_text())["type"] == "bpe"


def test_bpe_bad_inputs(bpe, tmp_path):
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train(TRAIN, vocab_size=100)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer.train(TRAIN, vocab_size=300.0)
    with pytest.raises(TypeError, match="expects a str"):
        bpe.encode(b"bytes")
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(TypeError, match="not an integer"):
        bpe.decode([1.5])
    assert bpe.decode(np.array([104, 105])) == bpe.decode(torch.tensor([104, 105])) == "hi"
    with pytest.raises(ValueError, match="not valid Unicode"):
        bpe.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="must create ids 256"):
        BPETokenizer({(97, 98): 300})
    char_file = tmp_path / "char.json"
    CharTokenizer.train("abc").save(char_file)
    with pytest.raises(ValueError, match="holds a CharTokenizer"):
        BPETokenizer.load(char_file)


# -- char tokenizer -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", SENTENCES)
def test_char_round_trip_on_its_training_text(text):
    tok = CharTokenizer.train("".join(SENTENCES))
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


def test_char_unknown_character_error():
    tok = CharTokenizer.train("hello world")
    with pytest.raises(ValueError, match=r"'你' \(U\+4F60\) is not in this CharTokenizer's vocabulary"):
        tok.encode("hello 你")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer.train("")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])


def test_char_save_load(tmp_path):
    tok = CharTokenizer.train("".join(SENTENCES))
    path = tmp_path / "char.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer) and loaded.chars == tok.chars
    assert CharTokenizer.load(path).encode(SENTENCES[1]) == tok.encode(SENTENCES[1])


def test_load_tokenizer_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        load_tokenizer(bad)
    bad.write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_tokenizer(bad)


# -- provided code and reference solutions against PyTorch ---------------------------------------------------------

@settings(deadline=None, max_examples=50)
@given(st.lists(st.integers(0, 9), min_size=0, max_size=40), st.integers(1, 4))
def test_embedding_forward_backward_match_torch(ids, dim):
    rng = np.random.default_rng(len(ids))
    ids = np.array(ids, dtype=np.int64)
    weight = torch.from_numpy(rng.normal(size=(10, dim))).requires_grad_()
    grad_out = rng.normal(size=(len(ids), dim))
    out = F.embedding(torch.from_numpy(ids), weight)
    out.backward(torch.from_numpy(grad_out))
    np.testing.assert_array_equal(reference("tokens.embedding_forward")(ids, weight.detach().numpy()),
                                  out.detach().numpy())
    # float64 sums of the same few terms, maybe in another order: rtol 1e-7 (course float64 rule).
    np.testing.assert_allclose(reference("tokens.embedding_backward")(ids, grad_out, 10), weight.grad.numpy(),
                               rtol=1e-7, atol=1e-12)


def test_embedding_bad_inputs():
    forward, backward = reference("tokens.embedding_forward"), reference("tokens.embedding_backward")
    with pytest.raises(ValueError, match=r"weight must have shape \(V, D\)"):
        forward(np.array([0]), np.zeros(3))
    with pytest.raises(TypeError, match="must be integers"):
        forward(np.array([0.5]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="token id 3 is outside"):
        forward(np.array([3]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="grad_out must have shape"):
        backward(np.array([0, 1]), np.zeros((2, 2, 2)), 3)


def test_bigram_counts_match_torch_bincount():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 6, size=300)
    t = torch.from_numpy(ids)
    expected = torch.bincount(t[:-1] * 6 + t[1:], minlength=36).reshape(6, 6).numpy()
    np.testing.assert_array_equal(reference("tokens.bigram_counts")(ids, 6), expected)


def test_bigram_model_perplexity_matches_torch_cross_entropy():
    rng = np.random.default_rng(6)
    train, val = rng.integers(0, 8, size=500), rng.integers(0, 8, size=100)
    model = BigramModel.fit(train, vocab_size=8, smoothing=0.5)
    logits = torch.log(torch.from_numpy(model.probs))[torch.from_numpy(val[:-1])]  # (N-1, V)
    expected = math.exp(F.cross_entropy(logits, torch.from_numpy(val[1:])).item())
    # float64 mean of 99 logs in a different order than PyTorch's: rtol 1e-7 (course float64 rule).
    assert model.perplexity(val) == pytest.approx(expected, rel=1e-7)
    np.testing.assert_allclose(model.probs.sum(axis=1), 1.0, rtol=1e-12)
    assert model.bits_per_char(val, n_chars=len(val)) == pytest.approx(99 * math.log2(expected) / 100, rel=1e-12)


def test_bigram_model_learns_a_deterministic_cycle():
    ids = [0, 1, 2, 3] * 50
    model = BigramModel.fit(ids, vocab_size=4, smoothing=0.0)
    assert model.perplexity([2, 3, 0, 1]) == pytest.approx(1.0, rel=1e-12)
    assert model.sample(0, 7, np.random.default_rng(0)) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert BigramModel.fit(ids, 4, smoothing=1.0).perplexity([0, 0]) > 1.0
    with pytest.raises(ValueError, match="smoothing must be >= 0"):
        BigramModel.fit(ids, 4, smoothing=-1)


def test_bigram_perplexity_bad_inputs():
    perplexity = reference("tokens.bigram_perplexity")
    with pytest.raises(ValueError, match="square"):
        perplexity(np.zeros((2, 3)), [0, 1], 1.0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(np.zeros((2, 2)), [0], 1.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        perplexity(np.zeros((2, 2)), [0, 2], 1.0)
    with pytest.raises(ValueError, match="smoothing is 0"):
        perplexity(np.zeros((2, 2)), [0, 1], 0.0)


def test_sinusoidal_positions_values_and_relative_property():
    pe = reference("tokens.sinusoidal_positions")(50, 8)
    assert pe.shape == (50, 8)
    np.testing.assert_allclose(pe[0], [0, 1] * 4, atol=0)  # sin 0 = 0, cos 0 = 1
    np.testing.assert_allclose(pe[3, :2], [math.sin(3), math.cos(3)], rtol=1e-15)
    np.testing.assert_allclose(pe[7, 2:4], [math.sin(7 / 10), math.cos(7 / 10)], rtol=1e-14)
    # dot(PE[p], PE[p + k]) depends on the offset k only: a sum of cos(k * frequency).
    dots = [pe[p] @ pe[p + 5] for p in range(40)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-12)
    with pytest.raises(ValueError, match="even dim"):
        reference("tokens.sinusoidal_positions")(10, 7)


def test_most_frequent_pair_breaks_ties_by_smallest_pair():
    most_frequent_pair = reference("tokens.most_frequent_pair")
    assert most_frequent_pair({(5, 1): 3, (2, 9): 3, (0, 0): 1}) == (2, 9)
    with pytest.raises(ValueError, match="no pair"):
        most_frequent_pair({})


# -- special tokens and streaming ------------------------------------------------------------------------------------

EOT = "<|endoftext|>"
DOCS = load_corpus()[:6000] + EOT + "Le deuxième document, 中文也可以。\n" * 30 + EOT + "def f(x):\n    return x\n" * 20


def test_special_tokens_are_one_id_that_no_merge_builds():
    tok = BPETokenizer.train(DOCS, vocab_size=320, special=[EOT])
    eot = tok.special[EOT]
    assert eot == tok.vocab_size - 1 and tok.vocab_size == 320
    assert all(EOT not in tok.token_bytes(i).decode("utf-8", "replace") for i in range(256, eot)), \
        "training must keep the special token out of the merges"
    ids = tok.encode(f"a{EOT}b")
    assert ids == tok.encode("a") + [eot] + tok.encode("b") and tok.decode(ids) == f"a{EOT}b"
    plain = tok.encode(EOT, allowed_special=False)
    assert eot not in plain and tok.decode(plain) == EOT


def test_special_tokens_survive_save_load_and_truncate(tmp_path):
    tok = BPETokenizer.train(DOCS, vocab_size=300, special=[EOT, "<|pad|>"])
    tok.save(tmp_path / "t.json")
    loaded = load_tokenizer(tmp_path / "t.json")
    assert loaded.special == tok.special and loaded.encode(DOCS) == tok.encode(DOCS)
    small = tok.truncate(270)
    assert small.vocab_size == 270 and list(small.special) == [EOT, "<|pad|>"]
    assert small.merges == dict(list(tok.merges.items())[:12])
    with pytest.raises(ValueError, match="distinct non-empty"):
        BPETokenizer({}, ["", EOT])


def test_encode_iterable_equals_encode_however_the_text_is_cut():
    import random

    tok = BPETokenizer.train(DOCS, vocab_size=320, special=[EOT])
    rng = random.Random(0)
    text = DOCS + "  trailing   spaces \n\n\n it's" + EOT
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), 60))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert list(tok.encode_iterable(pieces)) == tok.encode(text)
    assert list(tok.encode_iterable(text.splitlines(keepends=True))) == tok.encode(text)
