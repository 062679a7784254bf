"""KV-cache and batching speed explorer (notebooks 07-08): pick a generated length or a batch size and see the
measured speed next to its baseline and the roofline.

Nothing is measured when a slider moves: the explorer shows measurements taken before, the dicts of
`llmcourse.bench.kv_cache_speedup` and `llmcourse.bench.batch_throughput` (with `machine_limits`, for the roofline).

    from llmcourse.widgets.speed import speed_explorer
    speed_explorer(kv, batching)
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from llmcourse.bench import label_log_axes


def speed_data(kv: dict | None, batching: dict | None, new_tokens: int | None, batch_size: int | None) -> dict:
    """What the explorer shows for one choice: the measured figures at `new_tokens` and at `batch_size` (either
    measurement may be None, and then its choice is ignored).

    Returns a dict with, for the KV-cache, "kv_index" (position in the measurement lists), "no_cache_s"/"cache_s"
    (seconds to generate new_tokens), "speedup"; for batching, "batch_index", "tok_s", "over_batch1",
    "bound_tok_s" (None without a roofline), "fraction" of the bound, "ms_per_step" (one decoding step of the
    whole batch); and "summary", one line.
    """
    if kv is None and batching is None:
        raise ValueError("give the KV-cache measurement, the batching measurement, or both")
    data, lines = {}, []
    if kv is not None:
        if new_tokens not in kv["new_tokens"]:
            raise ValueError(f"no measurement at {new_tokens} new tokens; measured: {kv['new_tokens']}")
        i = kv["new_tokens"].index(new_tokens)
        data.update(kv_index=i, no_cache_s=new_tokens / kv["no_cache_tok_s"][i],
                    cache_s=new_tokens / kv["cache_tok_s"][i], speedup=kv["speedup"][i])
        lines.append(f"{new_tokens} new tokens: {data['no_cache_s']:.2f} s without the cache, {data['cache_s']:.2f} s "
                     f"with it ({data['speedup']:.1f}x faster).")
    if batching is not None:
        if batch_size not in batching["batch_sizes"]:
            raise ValueError(f"no measurement at batch size {batch_size}; measured: {batching['batch_sizes']}")
        j = batching["batch_sizes"].index(batch_size)
        tok_s, bounds = batching["tok_s"][j], batching.get("bound_tok_s")
        bound = bounds[j] if bounds else None
        data.update(batch_index=j, tok_s=tok_s, over_batch1=tok_s / batching["tok_s"][0], bound_tok_s=bound,
                    fraction=None if bound is None else tok_s / bound, ms_per_step=1e3 * batch_size / tok_s)
        roofline = "" if bound is None else f" = {100 * data['fraction']:.0f}% of the roofline ({bound:.0f} tok/s)"
        lines.append(f"Batch {batch_size}: {tok_s:.0f} tok/s, {data['over_batch1']:.1f}x batch 1, "
                     f"{data['ms_per_step']:.0f} ms per step{roofline}.")
    data["summary"] = "  ".join(lines)
    return data


def speed_figure(kv: dict | None, batching: dict | None, data: dict) -> Figure:
    """Tokens/s with and without the cache against length, and tokens/s and the roofline against batch size (the
    panels of the measurements given), the chosen points ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    panels = [p for p in (kv, batching) if p is not None]
    fig = Figure(figsize=(5 * len(panels), 3.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    if kv is not None:
        ax, n, i = axes.pop(0), kv["new_tokens"], data["kv_index"]
        ax.plot(n, kv["cache_tok_s"], "o-", label="with KV-cache")
        ax.plot(n, kv["no_cache_tok_s"], "s-", label="without")
        ax.plot([n[i]] * 2, [kv["cache_tok_s"][i], kv["no_cache_tok_s"][i]], "o", ms=14, mfc="none", mec="red")
        ax.set(xscale="log", yscale="log", xlabel="new tokens", ylabel="tokens / s",
               title=f"{data['speedup']:.1f}x at {n[i]} tokens")
        label_log_axes(ax, n)
        ax.legend(fontsize=8)
    if batching is not None:
        ax, b, j = axes.pop(0), batching["batch_sizes"], data["batch_index"]
        ax.plot(b, batching["tok_s"], "o-", label="measured")
        if batching.get("bound_tok_s"):
            ax.plot(b, batching["bound_tok_s"], "k--", label="roofline")
        ax.plot([b[j]], [batching["tok_s"][j]], "o", ms=14, mfc="none", mec="red")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens / s",
               title=f"batch {b[j]}: {data['tok_s']:.0f} tok/s")
        label_log_axes(ax, b)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class SpeedExplorer:
    """The widget: a length slider and a batch-size slider over the measured values; `data` is what is shown."""

    def __init__(self, kv: dict | None, batching: dict | None):
        import ipywidgets as widgets

        self.kv, self.batching = kv, batching
        style = {"description_width": "8em"}
        self.length = self.batch = None
        sliders = []
        if kv is not None:
            self.length = widgets.SelectionSlider(options=kv["new_tokens"], value=kv["new_tokens"][-1],
                                                  description="new tokens", style=style)
            sliders.append(self.length)
        if batching is not None:
            self.batch = widgets.SelectionSlider(options=batching["batch_sizes"], value=batching["batch_sizes"][0],
                                                 description="batch size", style=style)
            sliders.append(self.batch)
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox(sliders), self.image, self.text])
        self.data: dict = {}
        for slider in sliders:
            slider.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        value = lambda slider: None if slider is None else slider.value  # noqa: E731
        self.data = speed_data(self.kv, self.batching, value(self.length), value(self.batch))
        self.image.value = _png(speed_figure(self.kv, self.batching, self.data))
        self.text.value = self.data["summary"]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def speed_explorer(kv: dict | None = None, batching: dict | None = None) -> SpeedExplorer:
    """Build the explorer from measurements, one or both (display it as the last line of a cell)."""
    return SpeedExplorer(kv, batching)
