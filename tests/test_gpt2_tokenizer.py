"""GPT-2's tokenizer files, read by llmcourse.gpt2_tokenizer, give the ids Hugging Face `tokenizers` gives (the
test-only authority), on a byte-level BPE trained offline on the course corpus and saved in GPT-2's format."""

import random

import pytest

from llmcourse.data import load_corpus
from llmcourse.gpt2_tokenizer import ENDOFTEXT, bytes_to_unicode, load_gpt2_tokenizer

tokenizers = pytest.importorskip("tokenizers")

EXTRA = ["中文的文本，也要一样。自注意力和键值缓存。", "emoji 🙂🚀 and flags 🇫🇷", "tabs\tand\r\nnewlines\n\n\n",
         "   leading and trailing   ", "numbers 12345 ½ ² Ⅻ 3.14", "it's we'll they've I'd", "don't STOP'S", "naïve café",
         "def f(x):\n    return x ** 2  # comment", ENDOFTEXT, f"a{ENDOFTEXT}b", "<|endoftext", "ÿ\x00\x7f\u0100"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2_format")
    hf = tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator([load_corpus()[:200_000], *EXTRA], vocab_size=900, special_tokens=[ENDOFTEXT],
                           show_progress=False)
    hf.save_model(str(folder))
    return hf, folder / "vocab.json", folder / "merges.txt"


def strings(count: int, seed: int = 0) -> list[str]:
    """Snippets of the corpus at random places and lengths, mixed with other scripts, emoji and whitespace runs."""
    rng, corpus = random.Random(seed), load_corpus()
    pool = EXTRA + ["世界", "🙂", " ", "\n", "  \n ", "\t", "'s", "x" * 50, "ł", "\u200b", "١٢٣", "Ελληνικά"]
    out = []
    for _ in range(count):
        start = rng.randrange(len(corpus) - 400)
        text = corpus[start:start + rng.randint(0, 300)]
        for _ in range(rng.randint(0, 3)):
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(pool) + text[at:]
        out.append(text)
    return out


def test_ids_equal_hugging_face_on_5000_strings(files):
    hf, vocab, merges = files
    ours = load_gpt2_tokenizer(vocab, merges)
    texts = strings(5000) + EXTRA
    mismatches = [t for t in texts if ours.encode(t) != hf.encode(t).ids]
    assert not mismatches, f"{len(mismatches)} strings differ, e.g. {mismatches[0]!r}"
    for text in texts[:500]:
        assert ours.decode(ours.encode(text)) == text


def test_the_special_token_is_one_id_when_allowed_and_text_when_not(files):
    _, vocab, merges = files
    tok = load_gpt2_tokenizer(vocab, merges)
    eot = tok.special[ENDOFTEXT]
    assert tok.encode(f"hi{ENDOFTEXT}there") == tok.encode("hi") + [eot] + tok.encode("there")
    as_text = tok.encode(ENDOFTEXT, allowed_special=False)
    assert eot not in as_text and tok.decode(as_text) == ENDOFTEXT
    assert tok.decode([eot]) == ENDOFTEXT


def test_encode_iterable_equals_encode_however_the_text_is_cut(files, tmp_path):
    _, vocab, merges = files
    tok = load_gpt2_tokenizer(vocab, merges)
    text = "".join(f"line {i}:  {s}  \n\n" for i, s in enumerate(strings(150, seed=1))) + f"x{ENDOFTEXT}y'll"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8", newline="")
    with open(path, encoding="utf-8", newline="") as f:
        assert list(tok.encode_iterable(f)) == tok.encode(text)
    rng = random.Random(0)
    for _ in range(20):  # pieces cut anywhere: inside words, contractions, whitespace runs, special tokens
        cuts = sorted(rng.sample(range(1, len(text)), 300))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert list(tok.encode_iterable(pieces)) == tok.encode(text)


def test_the_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("A")] == "A"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_broken_files_are_named(tmp_path, files):
    _, vocab, merges = files
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_gpt2_tokenizer(tmp_path / "vocab.json", merges)
    (tmp_path / "bad.txt").write_text("#version: 0.2\nĠ t h\n")
    with pytest.raises(ValueError, match="line 2"):
        load_gpt2_tokenizer(vocab, tmp_path / "bad.txt")
    (tmp_path / "v.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match="byte tokens"):
        load_gpt2_tokenizer(tmp_path / "v.json", merges)


def test_a_hugging_face_gpt2_folder_loads_whole_and_computes_what_transformers_computes(files, tmp_path,
                                                                                        monkeypatch):
    """The optional cell of notebook 06: GPT-2's files in a folder named by $LLMCOURSE_GPT2 (a small random GPT-2
    here, with the tokenizer trained above)."""
    import shutil

    import torch
    import transformers

    from llmcourse.generate import generate
    from llmcourse.pretrained import GPT2_ENV, load_local_gpt2

    hf_tok, vocab, merges = files
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=hf_tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                                     n_head=4)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    shutil.copy(vocab, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    monkeypatch.delenv(GPT2_ENV, raising=False)
    assert load_local_gpt2() is None
    monkeypatch.setenv(GPT2_ENV, str(tmp_path))
    model, tok = load_local_gpt2()
    assert model.config.n_head == 4, "n_head comes from config.json"
    ids = tok.encode("The value of x is returned.")
    assert ids == hf_tok.encode("The value of x is returned.").ids
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits
    torch.testing.assert_close(model(torch.tensor([ids], device=next(model.parameters()).device)).cpu(), expected,
                               rtol=1.3e-6, atol=1e-5)
    greedy = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)[0]
    assert generate(model, torch.tensor(ids), 8, temperature=0).tolist() == greedy.tolist()
    monkeypatch.setenv(GPT2_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_local_gpt2()
