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


def speed_data(kv: dict, batching: dict, new_tokens: int, batch_size: int) -> dict:
    """What the explorer shows for one choice: the measured figures at `new_tokens` and at `batch_size`.

    Returns a dict with "kv_index"/"batch_index" (positions in the measurement lists), "no_cache_s"/"cache_s"
    (seconds to generate new_tokens), "speedup", "tok_s" (at batch_size), "over_batch1", "bound_tok_s" (None
    without a roofline), "fraction" of the bound, "ms_per_step" (one decoding step of the whole batch), "summary".
    """
    if new_tokens not in kv["new_tokens"]:
        raise ValueError(f"no measurement at {new_tokens} new tokens; measured: {kv['new_tokens']}")
    if batch_size not in batching["batch_sizes"]:
        raise ValueError(f"no measurement at batch size {batch_size}; measured: {batching['batch_sizes']}")
    i, j = kv["new_tokens"].index(new_tokens), batching["batch_sizes"].index(batch_size)
    tok_s = batching["tok_s"][j]
    bounds = batching.get("bound_tok_s")
    bound = bounds[j] if bounds else None
    data = {"kv_index": i, "batch_index": j, "no_cache_s": new_tokens / kv["no_cache_tok_s"][i],
            "cache_s": new_tokens / kv["cache_tok_s"][i], "speedup": kv["speedup"][i], "tok_s": tok_s,
            "over_batch1": tok_s / batching["tok_s"][0], "bound_tok_s": bound,
            "fraction": None if bound is None else tok_s / bound, "ms_per_step": 1e3 * batch_size / tok_s}
    roofline = "" if bound is None else f" = {100 * data['fraction']:.0f}% of the roofline ({bound:.0f} tok/s)"
    data["summary"] = (f"{new_tokens} new tokens: {data['no_cache_s']:.2f} s without the cache, "
                       f"{data['cache_s']:.2f} s with it ({data['speedup']:.1f}x faster).  Batch {batch_size}: "
                       f"{tok_s:.0f} tok/s, {data['over_batch1']:.1f}x batch 1, {data['ms_per_step']:.0f} ms per "
                       f"step{roofline}")
    return data


def speed_figure(kv: dict, batching: dict, data: dict) -> Figure:
    """Two panels: tokens/s with and without the cache against length; tokens/s and roofline against batch size;
    the chosen points ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(10, 3.6), dpi=90)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    n = kv["new_tokens"]
    left.plot(n, kv["cache_tok_s"], "o-", label="with KV-cache")
    left.plot(n, kv["no_cache_tok_s"], "s-", label="without")
    i = data["kv_index"]
    left.plot([n[i]] * 2, [kv["cache_tok_s"][i], kv["no_cache_tok_s"][i]], "o", ms=14, mfc="none", mec="red")
    left.set(xscale="log", yscale="log", xlabel="new tokens", ylabel="tokens / s",
             title=f"{data['speedup']:.1f}x at {n[i]} tokens")
    left.set_xticks(n, [str(x) for x in n])
    left.legend(fontsize=8)
    b = batching["batch_sizes"]
    right.plot(b, batching["tok_s"], "o-", label="measured")
    if batching.get("bound_tok_s"):
        right.plot(b, batching["bound_tok_s"], "k--", label="roofline")
    j = data["batch_index"]
    right.plot([b[j]], [batching["tok_s"][j]], "o", ms=14, mfc="none", mec="red")
    right.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens / s",
              title=f"batch {b[j]}: {data['tok_s']:.0f} tok/s")
    right.set_xticks(b, [str(x) for x in b])
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


class SpeedExplorer:
    """The widget: a length slider and a batch-size slider over the measured values; `data` is what is shown."""

    def __init__(self, kv: dict, batching: dict):
        import ipywidgets as widgets

        self.kv, self.batching = kv, batching
        style = {"description_width": "8em"}
        self.length = widgets.SelectionSlider(options=kv["new_tokens"], value=kv["new_tokens"][-1],
                                              description="new tokens", style=style)
        self.batch = widgets.SelectionSlider(options=batching["batch_sizes"], value=batching["batch_sizes"][0],
                                             description="batch size", style=style)
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.length, self.batch]), self.image, self.text])
        self.data: dict = {}
        for slider in (self.length, self.batch):
            slider.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        self.data = speed_data(self.kv, self.batching, self.length.value, self.batch.value)
        self.image.value = _png(speed_figure(self.kv, self.batching, self.data))
        self.text.value = self.data["summary"]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def speed_explorer(kv: dict, batching: dict) -> SpeedExplorer:
    """Build the explorer from measurements (display it as the last line of a cell)."""
    return SpeedExplorer(kv, batching)
