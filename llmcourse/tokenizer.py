"""Tokenizers: text -> list of int ids -> text. A character tokenizer and a byte-level BPE trained from scratch.

    tok = BPETokenizer.train(text, vocab_size=512)
    ids = tok.encode("Hello 世界")          # list[int]
    tok.decode(ids) == "Hello 世界"
    tok.save("tok.json"); load_tokenizer("tok.json")

Text is pre-split into chunks (`split_chunks`) that merges never cross. Training counts the pairs of each distinct
chunk once, weighted by how often the chunk occurs, and after a merge recounts only the chunks that held the pair.
Encoding applies the merges to each chunk with a heap over its adjacent pairs (`apply_merges`), in O(n log n) for a
chunk of n bytes, and caches each distinct chunk's ids. Both give exactly the merges and ids of the textbook
algorithm of notebook 01.
"""

from __future__ import annotations

import heapq
import json
import operator
import os
import re
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

FORMAT_VERSION = 1
# GPT-2's pre-split, written for Python's `re` (no \p{L}): English contractions, runs of letters, of digits, of
# other symbols (each with one optional leading space), and whitespace. Every character falls in one class, so the
# chunks always join back into the text. Merges never cross a chunk boundary.
SPLIT_PATTERN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def split_chunks(text: str) -> list[str]:
    """The pre-split chunks of text (words with their leading space, numbers, punctuation runs, whitespace)."""
    return SPLIT_PATTERN.findall(text)


def special_splitter(specials: Iterable[str]) -> re.Pattern | None:
    """A pattern matching any of the special tokens (longest first), or None when there are none."""
    ordered = sorted(set(specials), key=len, reverse=True)
    return re.compile("|".join(re.escape(token) for token in ordered)) if ordered else None


def settled_parts(text: str, pattern, specials: Collection[str], splitter) -> tuple[list[tuple[str, bool]], int]:
    """The parts of `text` (chunk or special token, and whether it is special) that no continuation of the text can
    change, and how many characters they cover: what a streaming encoder may encode and drop.

    Special tokens are split off first, so everything up to the last complete one is settled, and nothing that may
    become one is. After it, the pre-split patterns of the course and of GPT-2 decide a chunk from at most 3
    characters past its start (the contractions) and 1 past its end (the whitespace lookahead): the chunks that end
    4 or more characters before the end of the text, found with the text after them in view, are final.
    """
    partial = max((k for token in specials for k in range(1, len(token)) if text.endswith(token[:k])), default=0)
    limit = len(text) - partial
    parts: list[tuple[str, bool]] = []
    start = 0
    if splitter is not None:
        for match in splitter.finditer(text, 0, limit):
            parts += [(chunk, False) for chunk in pattern.findall(text, start, match.start())]
            parts.append((match.group(), True))
            start = match.end()
    for chunk in pattern.finditer(text, start, limit):
        if chunk.end() > limit - 4:
            break
        parts.append((chunk.group(), False))
        start = chunk.end()
    return parts, start


def apply_merges(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """`ids` with the merges applied, the earliest-learned pair first and, for equal pairs, the leftmost first.

    A heap holds (new id, position) for every adjacent pair that has a merge; the tokens form a linked list, so a
    merge is O(log n). An entry whose pair has changed since it was pushed is skipped when popped. A merge
    (x, y) -> z only creates pairs holding z, whose merges were learned after z, so all occurrences of a pair are
    merged before any later merge: the result is that of merging each pair everywhere, in training order.
    """
    n = len(ids)
    if n < 2:
        return list(ids)
    tokens = list(ids)  # tokens[i] is meaningful while i is linked in
    after = list(range(1, n + 1))  # next live position (n: none)
    before = list(range(-1, n - 1))  # previous live position (-1: none)
    heap = [(merges[pair], i) for i, pair in enumerate(zip(ids, ids[1:])) if pair in merges]
    heapq.heapify(heap)
    while heap:
        new_id, i = heapq.heappop(heap)
        j = after[i]
        if j >= n or merges.get((tokens[i], tokens[j])) != new_id:
            continue  # stale: i or its neighbour was merged since
        tokens[i] = new_id
        after[i] = k = after[j]
        after[j] = n  # j is unlinked: its entries are stale
        if k < n:
            before[k] = i
            right = merges.get((new_id, tokens[k]))
            if right is not None:
                heapq.heappush(heap, (right, i))
        h = before[i]
        if h >= 0:
            left = merges.get((tokens[h], new_id))
            if left is not None:
                heapq.heappush(heap, (left, h))
    out, i = [], 0
    while i < n:
        out.append(tokens[i])
        i = after[i]
    return out


def _check_text(text, what: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} expects a str, got {type(text).__name__}")


def _check_ids(ids, vocab_size: int) -> list[int]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"decode expects a sequence of int token ids, got {type(ids).__name__}")
    try:
        ids = [operator.index(i) for i in ids]  # lists, tuples, NumPy arrays and tensors of ints
    except TypeError:
        raise TypeError("decode expects a sequence of int token ids; found a value that is not an integer") from None
    for i in ids:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside this tokenizer's vocabulary 0..{vocab_size - 1}")
    return ids


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters seen in training."""

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("a CharTokenizer's vocabulary must be a list of distinct single characters")
        self.chars = list(chars)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        _check_text(text, "CharTokenizer.train")
        if not text:
            raise ValueError("CharTokenizer.train needs a non-empty text to take its characters from")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        _check_text(text, "encode")
        try:
            return [self._index[c] for c in text]
        except KeyError as err:
            c = err.args[0]
            raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in this CharTokenizer's vocabulary: it was "
                             f"trained on text without it (train on text that contains it, or use BPETokenizer)"
                             ) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in _check_ids(ids, self.vocab_size))

    def to_dict(self) -> dict:
        return {"type": "char", "version": FORMAT_VERSION, "chars": self.chars}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        return _expect(load_tokenizer(path), cls)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class PreSplitEncoder(ABC):
    """Encoding shared by the byte-level BPE tokenizers (this module's and GPT-2's): special tokens are found first,
    the rest is pre-split by `pattern` into chunks, and each chunk's ids come from `_chunk_ids`."""

    pattern: re.Pattern = SPLIT_PATTERN
    special: dict[str, int]
    _splitter: re.Pattern | None

    @abstractmethod
    def _chunk_ids(self, chunk: str) -> list[int]:
        """The ids of one pre-split chunk."""

    def encode(self, text: str, *, allowed_special: bool = True) -> list[int]:
        """The ids of text; a special token in the text is its one id when `allowed_special`, else ordinary text."""
        _check_text(text, "encode")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"text is not valid Unicode: {err.reason} at character {err.start}") from None
        ids: list[int] = []
        start = 0
        if allowed_special and self._splitter is not None:
            for match in self._splitter.finditer(text):
                for chunk in self.pattern.findall(text, start, match.start()):
                    ids.extend(self._chunk_ids(chunk))
                ids.append(self.special[match.group()])
                start = match.end()
        for chunk in self.pattern.findall(text, start):
            ids.extend(self._chunk_ids(chunk))
        return ids

    def encode_iterable(self, pieces: Iterable[str]) -> Iterator[int]:
        """The ids of a text given in pieces (a file's lines, say), one at a time, equal to `encode("".join(pieces))`
        without holding the whole text: the settled part of a buffer is encoded and dropped (`settled_parts`)."""
        buffer = ""
        for piece in pieces:
            _check_text(piece, "encode_iterable")
            buffer += piece
            parts, cut = settled_parts(buffer, self.pattern, self.special, self._splitter)
            for part, is_special in parts:
                yield from [self.special[part]] if is_special else self._chunk_ids(part)
            buffer = buffer[cut:]
        yield from self.encode(buffer)


class BPETokenizer(PreSplitEncoder):
    """Byte-level BPE: 256 byte tokens, one token per learned merge (ids 256, 257, ... in merge order), then the
    special tokens, such as "<|endoftext|>", each one id that no merge produces."""

    def __init__(self, merges: dict[tuple[int, int], int], special: Sequence[str] = ()):
        merges = {(int(a), int(b)): int(new) for (a, b), new in merges.items()}
        for rank, ((a, b), new_id) in enumerate(merges.items()):
            if new_id != 256 + rank or not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge number {rank} is ({a}, {b}) -> {new_id}: merges must create ids 256, 257, "
                                 f"... in order, each from ids that exist before it")
        special = list(special)
        if any(not isinstance(t, str) or not t for t in special) or len(set(special)) != len(special):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {special!r}")
        self.merges = merges
        self.special = {token: 256 + len(merges) + i for i, token in enumerate(special)}  # token -> id
        self._splitter = special_splitter(special)
        self._cache: dict[str, list[int]] = {}  # chunk -> ids
        self._bytes: list[bytes] | None = None  # id -> the bytes it stands for, built on first use

    @classmethod
    def train(cls, text: str, vocab_size: int = 512, *, special: Sequence[str] = (),
              verbose: bool = False) -> "BPETokenizer":
        """Learn vocab_size - 256 - len(special) merges from text (fewer if the text runs out of pairs).

        Each step merges the most frequent adjacent pair (the smallest pair among equal counts) into the next id.
        Pairs are counted once per distinct chunk, weighted by the chunk's count; a heap of (-count, pair) finds the
        most frequent pair, its entries checked against the current counts when they reach the top. Occurrences of
        the special tokens in the text are cut out first, so no merge ever builds (part of) one.
        """
        _check_text(text, "BPETokenizer.train")
        splitter = special_splitter(special)
        pieces = splitter.split(text) if splitter else [text]
        if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and special:
            vocab_size -= len(special)
        merges = cls.train_chunks(Counter(chunk for piece in pieces for chunk in split_chunks(piece)), vocab_size,
                                  verbose=verbose).merges
        return cls(merges, special)

    @classmethod
    def train_chunks(cls, chunk_counts: dict[str, int], vocab_size: int = 512, *,
                     verbose: bool = False) -> "BPETokenizer":
        """`train` on text already pre-split: {chunk: how often it occurs}, e.g. Counter(split_chunks(text))."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 for byte-level BPE (one token per byte value), "
                             f"got {vocab_size}")
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        stats: Counter[tuple[int, int]] = Counter()  # pair -> occurrences in the whole text
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words that contain it
        for index, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                stats[pair] += freq
                where[pair].add(index)
        heap = [(-n, pair) for pair, n in stats.items()]
        heapq.heapify(heap)

        merges: dict[tuple[int, int], int] = {}
        for new_id in range(256, vocab_size):
            while heap and stats[heap[0][1]] != -heap[0][0]:
                heapq.heappop(heap)  # a count that has changed since it was pushed
            if not heap:
                break
            pair = heap[0][1]
            merges[pair] = new_id
            changed = set()  # pairs whose count may have changed
            for index in where.pop(pair):
                old, freq = words[index], freqs[index]
                words[index] = new = apply_merges(old, {pair: new_id})
                for p in zip(old, old[1:]):
                    stats[p] -= freq
                    changed.add(p)
                for p in zip(new, new[1:]):
                    stats[p] += freq
                    changed.add(p)
                    where[p].add(index)
            for p in changed:
                if stats[p] > 0:
                    heapq.heappush(heap, (-stats[p], p))
                else:
                    del stats[p]
            if verbose and (new_id - 255) % 100 == 0:
                print(f"merge {new_id - 255}/{vocab_size - 256}")
        return cls(merges)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special)

    def truncate(self, vocab_size: int) -> "BPETokenizer":
        """The tokenizer with only the first merges, vocab_size tokens in all (its special tokens kept): what
        training to that size would give."""
        low = 256 + len(self.special)
        if not low <= vocab_size <= self.vocab_size:
            raise ValueError(f"vocab_size must be between {low} and {self.vocab_size}, got {vocab_size}")
        return BPETokenizer(dict(list(self.merges.items())[: vocab_size - low]), list(self.special))

    def _chunk_ids(self, chunk: str) -> list[int]:
        chunk_ids = self._cache.get(chunk)
        if chunk_ids is None:
            chunk_ids = self._cache[chunk] = apply_merges(list(chunk.encode("utf-8")), self.merges)
        return chunk_ids

    def decode(self, ids) -> str:
        """Text of the ids; a byte sequence that is not valid UTF-8 (a cut character) shows as U+FFFD."""
        table = self._table()
        return b"".join([table[i] for i in _check_ids(ids, self.vocab_size)]).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for."""
        return self._table()[_check_ids([token_id], self.vocab_size)[0]]

    def _table(self) -> list[bytes]:
        """id -> the bytes it stands for: the 256 bytes, each merge's two parts joined in order, the specials' text."""
        if self._bytes is None:
            self._bytes = [bytes([i]) for i in range(256)]
            for a, b in self.merges:
                self._bytes.append(self._bytes[a] + self._bytes[b])
            self._bytes += [token.encode("utf-8") for token in self.special]
        return self._bytes

    def to_dict(self) -> dict:
        return {"type": "bpe", "version": FORMAT_VERSION, "merges": [list(pair) for pair in self.merges],
                "special": list(self.special)}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        return _expect(load_tokenizer(path), cls)

    def __repr__(self) -> str:
        special = f", special={list(self.special)}" if self.special else ""
        return f"BPETokenizer(vocab_size={self.vocab_size}{special})"


Tokenizer = CharTokenizer | BPETokenizer


def show_tokens(tokenizer: Tokenizer, text: str, sep: str = "|") -> str:
    """text with `sep` between its tokens; a BPE token that holds part of a character shows its bytes (\\xe4)."""
    ids = tokenizer.encode(text)
    if isinstance(tokenizer, CharTokenizer):
        return sep.join(tokenizer.decode([i]) for i in ids)
    return sep.join(tokenizer.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids)


def _expect(tokenizer: Tokenizer, cls: type) -> Tokenizer:
    if not isinstance(tokenizer, cls):
        raise ValueError(f"the file holds a {type(tokenizer).__name__}, not a {cls.__name__}: use load_tokenizer")
    return tokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A CharTokenizer or BPETokenizer from the JSON file written by its `save`."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file {str(file)!r} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        kind = data["type"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(f"{str(file)!r} is not a tokenizer file written by CharTokenizer.save or "
                         f"BPETokenizer.save") from None
    if kind not in ("char", "bpe"):
        raise ValueError(f"{str(file)!r} holds an unknown tokenizer type {kind!r} (expected 'char' or 'bpe')")
    try:
        if kind == "char":
            return CharTokenizer(data["chars"])
        return BPETokenizer({(a, b): 256 + rank for rank, (a, b) in enumerate(data["merges"])},
                            data.get("special", []))
    except (KeyError, TypeError, ValueError) as err:
        field = "chars" if kind == "char" else "merges"
        raise ValueError(f"{str(file)!r} is a damaged {kind} tokenizer file: its {field!r} entry is missing or "
                         f"malformed ({type(err).__name__}: {err}); re-create it with the tokenizer's save") from None
