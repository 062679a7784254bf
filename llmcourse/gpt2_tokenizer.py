"""GPT-2's own tokenizer, read from its two files (`vocab.json`, `merges.txt`), so that ids equal GPT-2's exactly.

    tok = load_gpt2_tokenizer("gpt2/vocab.json", "gpt2/merges.txt")   # local files: nothing is downloaded
    tok.encode("Hello world<|endoftext|>")                              # [15496, 995, 50256] with GPT-2's files

It is the byte-level BPE of notebook 01 with three conventions of GPT-2's files:

- Tokens are written as text: each byte is shown as a printable character (`bytes_to_unicode`: the printable bytes
  as themselves, the others as characters from U+0100 on, so a space is "Ġ"), and a token is its bytes' characters.
- The merges are ranked by their line in merges.txt; ids are whatever vocab.json says (not the merge order), so the
  merges run in rank order on the course's own ids and each result is then looked up in vocab.json.
- Text is pre-split by GPT-2's pattern, whose letter and number classes (\\p{L}, \\p{N}) need the `regex` module, and
  special tokens such as `<|endoftext|>` are matched before that, as one id each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import regex

from llmcourse.files import read_json
from llmcourse.tokenizer import PreSplitEncoder, apply_merges, special_splitter

GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other 68 bytes
    (controls, space, ...) to the characters U+0100, U+0101, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


class GPT2Tokenizer(PreSplitEncoder):
    """Byte-level BPE with GPT-2's vocabulary, merge ranks, pre-split pattern and special tokens."""

    pattern = GPT2_PATTERN

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special: Iterable[str] = (ENDOFTEXT,)):
        to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        missing = [char for char in to_byte if char not in vocab]
        if missing:
            raise ValueError(f"vocab.json lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}): it is "
                             "not a byte-level BPE vocabulary")
        # The course's own ids: byte b is b, merge number r is 256 + r; `ids` translates them to vocab.json's ids.
        internal = {char: byte for char, byte in to_byte.items()}
        self.merges: dict[tuple[int, int], int] = {}
        for rank, (left, right) in enumerate(merges):
            if left not in internal or right not in internal or left + right not in vocab:
                raise ValueError(f"merge {rank + 1} ({left!r}, {right!r}) uses a token that neither vocab.json nor "
                                 "an earlier merge defines")
            if left + right in internal:
                raise ValueError(f"merge {rank + 1} ({left!r}, {right!r}) makes a token an earlier merge or byte "
                                 "already made: each merge must make a new token")
            self.merges[internal[left], internal[right]] = internal[left + right] = 256 + rank
        self.ids = [0] * (256 + len(merges))
        for text, own in internal.items():
            self.ids[own] = vocab[text]
        self.special = {token: vocab[token] for token in special if token in vocab}
        self.vocab_size = max(vocab.values()) + 1
        self._text = {i: text for text, i in vocab.items()}
        self._cache: dict[str, list[int]] = {}
        self._splitter = special_splitter(self.special)

    def _chunk_ids(self, chunk: str) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            ids = self._cache[chunk] = [self.ids[i] for i in apply_merges(list(chunk.encode("utf-8")), self.merges)]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of GPT-2 ids; bytes that do not form whole UTF-8 characters show as U+FFFD."""
        to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        out = bytearray()
        for i in ids:
            text = self._text.get(int(i))
            if text is None:
                raise ValueError(f"token id {i} is not in this vocabulary")
            out += text.encode("utf-8") if text in self.special else bytes(to_byte[c] for c in text)
        return out.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special={list(self.special)})"


def load_gpt2_tokenizer(vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> GPT2Tokenizer:
    """GPT-2's tokenizer from its local `vocab.json` and `merges.txt` (or any byte-level BPE saved in that format,
    e.g. by Hugging Face `tokenizers`). Nothing is downloaded."""
    vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist: give the local vocab.json and merges.txt of a "
                                    "GPT-2 style tokenizer")
    vocab = read_json(vocab_path, "the vocabulary")
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{str(vocab_path)!r} must map token strings to int ids")
    merges = []
    for number, line in enumerate(merges_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{str(merges_path)!r} line {number} is not two tokens separated by a space: {line!r}")
        merges.append((parts[0], parts[1]))
    return GPT2Tokenizer(vocab, merges)
