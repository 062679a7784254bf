"""Sampling explorer (notebook 06): how temperature, top-k and top-p reshape the next-token distribution.

The model runs on the prompt once, when the explorer is built: its next-token logits are kept, so a slider only
re-filters V numbers, redraws the bars and draws a few tokens (milliseconds). Then a short continuation is
generated with the same settings and seed (`n_continue` tokens with the KV-cache; 0 turns it off). The filters are
the course's `decoding` exercises (through `llmcourse.generate.filtered_logits`).

    from llmcourse.widgets.sampling import sampling_explorer
    sampling_explorer(model, tokenizer, "The function returns")
"""

from __future__ import annotations

import html

import numpy as np
import torch
from matplotlib.figure import Figure

from llmcourse.generate import check_sampling_args, filtered_logits, generate
from llmcourse.gpt import GPT
from llmcourse.tokenizer import Tokenizer
from llmcourse.widgets.blit import blit_png, draw_background

N_SHOW = 20  # bars: the most likely tokens at temperature 1
N_DRAWS = 24  # tokens drawn from the reshaped distribution, shown as text
N_CONTINUE = 24  # tokens of the continuation generated with the sliders' settings


def show_token(text: str) -> str:
    """A token as a readable label: spaces as an open box, newlines and tabs as arrows."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def bar_tokens(ax, probs: np.ndarray, labels: list[str], *, outline: np.ndarray | None = None, title: str = "",
               color: str = "tab:blue") -> None:
    """Bars of token probabilities on `ax` (removed tokens, probability 0, as red stubs); `outline`: a second
    distribution over the same tokens, drawn as grey outlines behind (e.g. before a filter)."""
    x = np.arange(len(labels))
    if outline is not None:
        ax.bar(x, outline, width=0.8, fill=False, edgecolor="grey", label="before")
    probs = np.asarray(probs)
    ax.bar(x, np.where(probs > 0, probs, 0.01), width=0.55, color=np.where(probs > 0, color, "tab:red"))
    ax.set_xticks(x, labels, rotation=60, fontsize=8)
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title, fontsize=10)


@torch.no_grad()
def next_token_logits(model: GPT, tokenizer: Tokenizer, prompt: str) -> torch.Tensor:
    """(V,) float32 logits of the token after `prompt` (cropped to the model's block_size), on the CPU."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give the explorer some text to continue")
    device = next(model.parameters()).device
    idx = torch.tensor(ids[-model.config.block_size:], device=device)[None]  # (1, T)
    return model(idx, last_only=True)[0, -1].float().cpu()


def sampling_data(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, *,
                  labels: list[str], n_show: int = N_SHOW, n_draws: int = N_DRAWS, seed: int = 0) -> dict:
    """What the explorer shows for one setting of the sliders.

    Args:
        logits: (V,) next-token logits.
        temperature: >= 0; 0 is greedy (all probability on the argmax).
        top_k, top_p: the filters, None for off.
        labels: V token labels.

    Returns:
        dict with "ids" (n_show,) the tokens most likely at temperature 1, most likely first; "labels" theirs;
        "before" (n_show,) their probabilities at temperature 1 without filters; "after" (n_show,) their
        probabilities after temperature, top-k and top-p; "kept" how many of the V tokens keep a non-zero
        probability; "entropy_before"/"entropy_after" in bits; "draws" n_draws token ids sampled from "after"
        with `seed`; "summary" one sentence.
    """
    check_sampling_args(temperature, top_k, top_p)
    if logits.dim() != 1 or len(labels) != logits.shape[0]:
        raise ValueError(f"logits must have shape (V,) with one label per token, got {tuple(logits.shape)} and "
                         f"{len(labels)} labels")
    logits = logits.double()
    before = torch.softmax(logits, dim=-1)  # (V,)
    if temperature == 0:
        after = torch.zeros_like(before)
        after[logits.argmax()] = 1.0
    else:
        after = torch.softmax(filtered_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)
    ids = torch.argsort(before, descending=True, stable=True)[:n_show]
    draws = torch.multinomial(after, n_draws, replacement=True, generator=torch.Generator().manual_seed(seed))
    kept = int((after > 0).sum())

    def entropy(p: torch.Tensor) -> float:
        p = p[p > 0]
        return float(-(p * torch.log2(p)).sum())

    shown = float(after[ids].sum())
    return {
        "ids": ids.tolist(),
        "labels": [labels[i] for i in ids.tolist()],
        "before": before[ids].numpy(),
        "after": after[ids].numpy(),
        "kept": kept,
        "entropy_before": entropy(before),
        "entropy_after": entropy(after),
        "draws": draws.tolist(),
        "summary": f"{kept} of {len(labels)} tokens can be drawn; entropy {entropy(after):.2f} bits "
                   f"(was {entropy(before):.2f}); the {len(ids)} bars hold {shown:.0%} of the probability",
    }


class SamplingFigure:
    """Bars of the n_show most likely tokens: temperature 1 unfiltered (grey outline) and after the sliders
    (filled; red where a filter removed the token). Axes and labels are drawn once; `render` redraws the bars."""

    def __init__(self, labels: list[str], before: np.ndarray):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.patches import Patch

        n = len(labels)
        self.fig = Figure(figsize=(10, 3.8), dpi=90)
        self.canvas = FigureCanvasAgg(self.fig)
        ax = self.fig.subplots()
        self.fig.subplots_adjust(left=0.07, right=0.99, bottom=0.2, top=0.9)
        outline = ax.bar(range(n), before, width=0.8, fill=False, edgecolor="grey")
        self.bars = list(ax.bar(range(n), np.zeros(n), width=0.55, color="tab:blue"))
        ax.set_xticks(range(n), labels, rotation=60, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.legend([outline, Patch(color="tab:blue"), Patch(color="tab:red")],
                  ["temperature 1, no filter", "after the sliders", "removed: probability 0"],
                  loc="upper right", fontsize=9)
        self.title = ax.set_title(" ", fontsize=10)
        self.background = draw_background(self.canvas, (*self.bars, self.title))  # redrawn by render()

    def render(self, data: dict) -> bytes:
        """PNG of the figure showing `sampling_data`'s output."""
        for bar, height in zip(self.bars, data["after"]):
            bar.set_height(height)
            bar.set_color("tab:blue" if height > 0 else "tab:red")
            if height == 0:
                bar.set_height(0.01)  # a red stub marks a token the filters removed
        self.title.set_text(data["summary"])
        return blit_png(self.canvas, self.background, (*self.bars, self.title))


class SamplingExplorer:
    """The widget: temperature, top-k and top-p sliders, the bars, and tokens drawn from the reshaped distribution.
    `data` is what is shown now (the tests read it)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, prompt: str, *, seed: int = 0,
                 n_continue: int = N_CONTINUE):
        import ipywidgets as widgets

        self.model, self.tokenizer, self.prompt = model, tokenizer, prompt
        self.seed, self.n_continue = seed, n_continue
        self.logits = next_token_logits(model, tokenizer, prompt)  # (V,) computed once
        V = self.logits.shape[0]
        self.token_text = [tokenizer.decode([i]) for i in range(V)]
        self.labels = [show_token(t) for t in self.token_text]
        first = sampling_data(self.logits, 1.0, None, None, labels=self.labels)
        self.figure = SamplingFigure(first["labels"], first["before"])
        style = {"description_width": "7em"}
        self.temperature = widgets.FloatSlider(1.0, min=0.0, max=2.5, step=0.05, description="temperature",
                                               style=style, continuous_update=True)
        self.top_k = widgets.IntSlider(0, min=0, max=min(V, 100), description="top-k (0: off)", style=style)
        self.top_p = widgets.FloatSlider(1.0, min=0.05, max=1.0, step=0.01, description="top-p (1: off)",
                                         style=style)
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        header = widgets.HTML(f"<b>Prompt:</b> <code>{html.escape(prompt)}</code> &nbsp; (temperature 0 is "
                              "greedy: all probability on the most likely token)")
        self.widget = widgets.VBox([header, widgets.HBox([self.temperature, self.top_k, self.top_p]), self.image,
                                    self.text])
        self.data: dict = {}
        for slider in (self.temperature, self.top_k, self.top_p):
            slider.observe(self.update, names="value")
        self.update()

    def settings(self) -> tuple[float, int | None, float | None]:
        """The sliders as arguments of `generate`: top-k 0 and top-p 1 mean off."""
        return self.temperature.value, self.top_k.value or None, (self.top_p.value if self.top_p.value < 1 else None)

    def update(self, change=None) -> None:
        temperature, top_k, top_p = self.settings()
        self.data = sampling_data(self.logits, temperature, top_k, top_p, labels=self.labels, seed=self.seed)
        self.image.value = self.figure.render(self.data)
        draws = " ".join(f"<code>{html.escape(show_token(self.token_text[i]))}</code>" for i in self.data["draws"])
        self.text.value = f"<b>{len(self.data['draws'])} draws of the next token</b> (seed {self.seed}): {draws}"
        if self.n_continue:
            self.continuation = self.continue_prompt()
            self.text.value += (f"<br><b>A continuation</b> ({self.n_continue} tokens, seed {self.seed}): "
                                f"<code>{html.escape(self.prompt)}</code><b><code>{html.escape(self.continuation)}"
                                "</code></b>")

    def continue_prompt(self) -> str:
        """The text `generate` adds to the prompt with the sliders' settings and the explorer's seed."""
        temperature, top_k, top_p = self.settings()
        ids = torch.tensor(self.tokenizer.encode(self.prompt))
        out = generate(self.model, ids, self.n_continue, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=self.seed)
        return self.tokenizer.decode(out[len(ids):].tolist())

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def sampling_explorer(model: GPT, tokenizer: Tokenizer, prompt: str, *, seed: int = 0,
                      n_continue: int = N_CONTINUE) -> SamplingExplorer:
    """Build the classroom explorer for the token after `prompt` (display it as the last line of a cell)."""
    return SamplingExplorer(model, tokenizer, prompt, seed=seed, n_continue=n_continue)
