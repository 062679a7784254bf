"""Attention explorer (notebook 02): which earlier characters each head of a small multi-head attention looks at.

The model is one causal multi-head attention layer over character embeddings, in GPT-2's weight layout, with
weights *constructed by hand* (not trained) so that each head shows a pattern trained transformers are known to
learn: attend to the previous character, to the first character, to earlier copies of the same character, or to
everything seen so far equally. `random_model` gives the same layer with random weights, to compare. The attention
weights are computed here, or by the `causal_attention` passed in (the notebook passes yours).

    from llmcourse.widgets.attention import attention_explorer
    attention_explorer()          # dropdown of sentences, head and query sliders, heatmap + bar chart
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from llmcourse.numpy_layers import softmax
from llmcourse.widgets.blit import blit_png, draw_background

ALPHABET = "".join(chr(c) for c in range(32, 127))  # printable ASCII: the characters the toy model knows
N_HEAD, HEAD_SIZE = 4, 16
N_EMBD = N_HEAD * HEAD_SIZE  # 64 = 16 token channels + 48 position channels
TOKEN_DIMS = HEAD_SIZE
N_FREQ = (N_EMBD - TOKEN_DIMS) // 2  # 24 sinusoid frequencies, a cos and a sin channel each
FREQS = np.pi / 2.0 ** (np.arange(N_FREQ) / 8)  # from pi down to 0.43 rad per position
MAX_LEN = 64  # positions farther apart than this may alias in the previous/first-character heads
SENTENCES = (
    "the cat sat on the mat.",
    "to be or not to be, that is the question",
    "she sells sea shells by the sea shore",
    "abcabcabcabc",
    "attention is all you need",
)
CONSTRUCTED_HEADS = ("previous character", "first character", "same character", "average of everything so far")


@dataclass(frozen=True)
class ToyAttention:
    """One causal multi-head attention layer over characters (GPT-2 layout: `x @ w + b`)."""

    token_embedding: np.ndarray  # (len(ALPHABET), TOKEN_DIMS)
    w_qkv: np.ndarray  # (C, 3C)
    b_qkv: np.ndarray  # (3C,)
    w_proj: np.ndarray  # (C, C)
    b_proj: np.ndarray  # (C,)
    head_names: tuple[str, ...]
    description: str

    @property
    def n_head(self) -> int:
        return len(self.head_names)

    def embed(self, text: str) -> np.ndarray:
        """(T, C) input of the layer: [token embedding | cos(w p) | sin(w p)] for each character at position p."""
        unknown = sorted(set(text) - set(ALPHABET))
        if unknown:
            raise ValueError(f"the toy model knows printable ASCII only; {unknown!r} is not in it")
        if not 0 < len(text) <= MAX_LEN:
            raise ValueError(f"text must have 1 to {MAX_LEN} characters, got {len(text)}")
        ids = np.array([ALPHABET.index(ch) for ch in text])
        angles = np.outer(np.arange(len(text)), FREQS)  # (T, N_FREQ)
        return np.concatenate([self.token_embedding[ids], np.cos(angles), np.sin(angles)], axis=1)  # (T, C)


def _token_embedding(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(len(ALPHABET), TOKEN_DIMS))
    return e / np.linalg.norm(e, axis=1, keepdims=True)  # unit vectors: a character matches itself best


def constructed_model(seed: int = 0) -> ToyAttention:
    """Hand-built weights whose four heads attend to: the previous character, the first character, earlier copies
    of the same character, and everything so far equally. Values carry the token embedding; the projection is
    the identity. Scores are multiplied by sqrt(HEAD_SIZE) here to cancel attention's 1 / sqrt(d)."""
    C, D = N_EMBD, HEAD_SIZE
    tok = slice(0, TOKEN_DIMS)
    cos, sin = TOKEN_DIMS + np.arange(N_FREQ), TOKEN_DIMS + N_FREQ + np.arange(N_FREQ)
    w, b = np.zeros((C, 3 * C)), np.zeros(3 * C)
    q, k, v = 0, C, 2 * C  # column offsets of the query, key and value blocks
    root = np.sqrt(D)

    # Head 0, previous character: q(i) = position features of i - 1 (a rotation by -w), k(j) = those of j, so
    # q.k = sum_f cos(w_f (i - 1 - j)), largest at j = i - 1. Uses the 8 fastest frequencies, margin 4.05.
    s0 = 3.0 * root
    for f in range(D // 2):
        c, s = np.cos(FREQS[f]), np.sin(FREQS[f])
        # cos(w(p-1)) = cos(wp) c + sin(wp) s ;  sin(w(p-1)) = sin(wp) c - cos(wp) s
        w[cos[f], q + 2 * f], w[sin[f], q + 2 * f] = s0 * c, s0 * s
        w[sin[f], q + 2 * f + 1], w[cos[f], q + 2 * f + 1] = s0 * c, -s0 * s
        w[cos[f], k + 2 * f], w[sin[f], k + 2 * f + 1] = 1.0, 1.0

    # Head 1, first character: a constant query (bias) times k(j) = sum_f cos(w_f j), which is 24 at j = 0 and
    # at most 5.9 for 0 < j < 64.
    b[q + D] = 1.0 * root
    w[cos, k + D] = 1.0

    # Head 2, same character: q = k = the token embedding; a unit vector's dot product with itself is 1, with
    # another character's at most about 0.7.
    w[tok, q + 2 * D:q + 3 * D] = 10.0 * root * np.eye(D)
    w[tok, k + 2 * D:k + 3 * D] = np.eye(D)

    # Head 3, average: the query is 0, every visible score is 0, so the weights are uniform over the prefix.

    for h in range(N_HEAD):  # every head's value is the token embedding: its output is a mix of characters
        w[tok, v + h * D:v + (h + 1) * D] = np.eye(D)
    return ToyAttention(_token_embedding(seed), w, b, np.eye(C), np.zeros(C), CONSTRUCTED_HEADS,
                        "hand-constructed weights (not trained): each head is built to show one pattern")


def random_model(seed: int = 0) -> ToyAttention:
    """The same layer with random weights (scale 1/sqrt(C)), the way an untrained model starts."""
    rng = np.random.default_rng(seed)
    C = N_EMBD
    return ToyAttention(_token_embedding(seed), rng.normal(scale=C ** -0.5, size=(C, 3 * C)), np.zeros(3 * C),
                        rng.normal(scale=C ** -0.5, size=(C, C)), np.zeros(C),
                        tuple(f"random head {h}" for h in range(N_HEAD)), "random weights (untrained)")


def attention_maps(model: ToyAttention, text: str, attention: Callable | None = None) -> np.ndarray:
    """(n_head, T, T) attention weights of `model` on `text`; row i is how query i spreads over keys 0..i.

    softmax(q k^T / sqrt(d)) over the keys j <= i; or, with `attention` (a `causal_attention(q, k, v)`), its output
    with the identity as values, whose row i is then weight row i.
    """
    x = model.embed(text)[None]  # (1, T, C)
    _, T, C = x.shape
    heads = [a.reshape(1, T, model.n_head, C // model.n_head).transpose(0, 2, 1, 3)  # (1, H, T, D)
             for a in np.split(x @ model.w_qkv + model.b_qkv, 3, axis=-1)[:2]]  # q and k, (1, T, C) each
    if attention is not None:
        return attention(*heads, np.eye(T))[0]
    q, k = heads[0][0], heads[1][0]  # (H, T, D)
    scores = (q @ np.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (H, T, T)
    return softmax(np.where(np.tri(T, dtype=bool), scores, -np.inf))  # key j > query i: weight 0


def show_char(ch: str) -> str:
    """A character as a tick label: the space as an open box so it can be seen."""
    return "\u2423" if ch == " " else ch


def _label_size(T: int) -> float:
    return 9.0 if T <= 24 else 7.0


def plot_attention(ax, weights: np.ndarray, text: str | list[str], title: str = ""):
    """Heatmap of a (T, T) attention matrix on `ax` (rows: queries, columns: keys); returns the image artist.
    `text` labels the positions: a string (one character each) or a list of token strings."""
    labels = [show_char(ch) for ch in text] if isinstance(text, str) else \
        ["".join(show_char(ch) for ch in token) for token in text]
    size = _label_size(len(text))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(text)), labels, fontsize=size, rotation=0 if isinstance(text, str) else 90)
    ax.set_yticks(range(len(text)), labels, fontsize=size)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title, fontsize=10)
    return image


def explorer_data(maps: np.ndarray, text: str, head: int, query: int, head_names: tuple[str, ...]) -> dict:
    """What the explorer draws for one choice: the head's (T, T) matrix and the weights of one query.

    Args:
        maps: (n_head, T, T) weights of `text`, from `attention_maps`.
        head, query: the head and the query position chosen with the sliders.

    Returns:
        dict with "weights" (T, T), "row" (T,) = weights[query], "title", "summary" (a sentence saying which key
        gets the most weight), and the "query" and "text" it shows.
    """
    n_head, T, _ = maps.shape
    if not (0 <= head < n_head and 0 <= query < T):
        raise ValueError(f"head must be in 0..{n_head - 1} and query in 0..{T - 1}, got head {head}, query {query}")
    row = maps[head, query]
    top = int(np.argmax(row))
    return {
        "weights": maps[head],
        "row": row,
        "title": f"head {head}: {head_names[head]}",
        "summary": f"query {query} ({show_char(text[query])!r}) puts {row[top]:.0%} of its attention on key {top} "
                   f"({show_char(text[top])!r})",
        "query": query,
        "text": text,
    }


class ExplorerFigure:
    """The explorer's figure for one sentence: heatmap with the query's row framed, and that row as bars.

    Axes, ticks and labels are drawn once; `render` redraws only what a slider changes (the image, the frame, the
    bars and the titles) over that background and encodes a PNG, which takes milliseconds instead of a full draw.
    """

    def __init__(self, text: str):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.patches import Rectangle

        T, labels = len(text), [show_char(ch) for ch in text]
        self.fig = Figure(figsize=(11, 5.2), dpi=90)
        self.canvas = FigureCanvasAgg(self.fig)
        heat, bars = self.fig.subplots(1, 2, width_ratios=(1, 1.1))
        self.fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1, top=0.93, wspace=0.12)
        self.image = plot_attention(heat, np.zeros((T, T)), text)
        bars.set_xticks(range(T), labels, fontsize=_label_size(T))
        self.frame = heat.add_patch(Rectangle((-0.5, -0.5), T, 1, fill=False, edgecolor="red", linewidth=2))
        self.bars = list(bars.bar(range(T), np.zeros(T)))
        bars.set_ylim(0, 1)
        bars.set_ylabel("attention weight")
        self.titles = (heat.title, bars.title)
        self.dynamic = [self.image, self.frame, *self.bars, *self.titles]
        self.background = draw_background(self.canvas, self.dynamic)  # redrawn by render()

    def render(self, data: dict) -> bytes:
        """PNG of the figure showing `explorer_data`'s output."""
        q = data["query"]
        self.image.set_data(data["weights"])
        self.frame.set_y(q - 0.5)
        for j, (bar, height) in enumerate(zip(self.bars, data["row"])):
            bar.set_height(height)
            bar.set_color("tab:blue" if j <= q else "lightgray")
        self.titles[0].set_text(data["title"])
        self.titles[1].set_text(data["summary"])
        return blit_png(self.canvas, self.background, self.dynamic)


class AttentionExplorer:
    """The widget: sentence dropdown, head and query sliders, and the figure. The attention maps are computed up
    front and each sentence's figure background is drawn once, so a slider only redraws what it changes. `data` is
    what is shown now (the tests read it)."""

    def __init__(self, sentences: tuple[str, ...] = SENTENCES, model: ToyAttention | None = None,
                 attention: Callable | None = None):
        import ipywidgets as widgets

        if not sentences:
            raise ValueError("give the explorer at least one sentence")
        self.model = model or constructed_model()
        self.maps = {text: attention_maps(self.model, text, attention) for text in sentences}  # text -> (H, T, T)
        self.figures: dict[str, ExplorerFigure] = {}  # text -> its figure, drawn when first shown
        self.sentence = widgets.Dropdown(options=list(sentences), description="sentence",
                                         layout=widgets.Layout(width="32em"))
        self.head = widgets.IntSlider(0, min=0, max=self.model.n_head - 1, description="head")
        T = len(sentences[0])
        self.query = widgets.IntSlider(T - 1, min=0, max=T - 1, description="query pos")
        self.image = widgets.Image(format="png")
        note = widgets.HTML(f"<b>Model:</b> one causal attention layer with {self.model.n_head} heads over "
                            f"characters, {self.model.description}.")
        self.widget = widgets.VBox([note, self.sentence, widgets.HBox([self.head, self.query]), self.image])
        self.data: dict = {}
        self.sentence.observe(self._new_sentence, names="value")
        self.head.observe(self.update, names="value")
        self.query.observe(self.update, names="value")
        self.update()

    def _new_sentence(self, change=None) -> None:
        T = len(self.sentence.value)
        with self.query.hold_trait_notifications():
            self.query.value = min(self.query.value, T - 1)
            self.query.max = T - 1
        self.update()

    def update(self, change=None) -> None:
        text = self.sentence.value
        self.data = explorer_data(self.maps[text], text, self.head.value, self.query.value, self.model.head_names)
        if text not in self.figures:
            self.figures[text] = ExplorerFigure(text)
        self.image.value = self.figures[text].render(self.data)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def attention_explorer(sentences: tuple[str, ...] = SENTENCES, model: ToyAttention | None = None,
                       attention: Callable | None = None) -> AttentionExplorer:
    """Build the classroom explorer (display it by leaving it as the last line of a cell); `attention` is the
    `causal_attention` to compute the maps with (default: `attention_maps`' own)."""
    return AttentionExplorer(tuple(sentences), model, attention)
