"""Quantization explorer (notebook 09): choose the bits per weight and the group size, see the error and what a row
of weights becomes.

Every combination is quantized once, when the explorer is built (symmetric group-wise quantization,
`llmcourse.qformats.quantize_groupwise_torch`); moving a control only looks the result up and redraws.

    from llmcourse.widgets.quantization import quantization_explorer
    quantization_explorer(model.transformer.h[0].mlp.c_fc.weight)
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from llmcourse.qformats import dequantize_groupwise_torch, quantize_groupwise_torch
from llmcourse.widgets.blit import blit_png, draw_background

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (8, 16, 32, 64, 128)  # plus "row": one scale per output channel
SCALE_BYTES = 2  # one float16 scale per group
N_SAMPLE = 64  # weights of one row shown in the plot


def precompute(weight, bits: tuple[int, ...] = BITS, group_sizes: tuple[int, ...] = GROUP_SIZES,
               row: int = 0) -> dict:
    """Quantize `weight` (out, in) with every bits x group size (those dividing `in`, and the whole row);
    returns {"weight", "row", "cells": {(bits, group): {...}}}, the table `quantization_data` reads."""
    w = np.asarray(weight.detach().cpu() if hasattr(weight, "detach") else weight, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"the explorer takes a weight matrix (out_features, in_features), got shape {w.shape}")
    if not 0 <= row < w.shape[0]:
        raise ValueError(f"row must lie in [0, {w.shape[0]}), got {row}")
    groups = [g for g in group_sizes if w.shape[1] % g == 0 and g < w.shape[1]] + [w.shape[1]]
    rms = float(np.sqrt(np.mean(w ** 2)))
    cells = {}
    for b in bits:
        for g in groups:
            w_hat = dequantize_groupwise_torch(*quantize_groupwise_torch(torch.from_numpy(w), b, g)).numpy()
            cells[b, g] = {"relative_rms_error": float(np.sqrt(np.mean((w - w_hat) ** 2))) / rms,
                           "max_error": float(np.abs(w - w_hat).max()),
                           "bytes_per_weight": b / 8 + SCALE_BYTES / g,
                           "sample": w_hat[row, :N_SAMPLE]}
    return {"weight": w, "row": row, "groups": groups, "bits": list(bits), "cells": cells}


def quantization_data(table: dict, bits: int, group_size: int) -> dict:
    """What the explorer shows for one choice: the cell of `precompute` plus the original sample and a summary.

    Returns a dict with "original" and "quantized" (N_SAMPLE weights of the row), "relative_rms_error",
    "max_error", "bytes_per_weight", "compression" (x smaller than float32), "group_size", "bits", "summary".
    """
    if (bits, group_size) not in table["cells"]:
        raise ValueError(f"no precomputed result for bits={bits}, group_size={group_size}; bits: {table['bits']}, "
                         f"group sizes: {table['groups']}")
    cell = table["cells"][bits, group_size]
    original = table["weight"][table["row"], :N_SAMPLE]
    compression = 4 / cell["bytes_per_weight"]
    per_row = group_size == table["weight"].shape[1]
    summary = (f"{bits} bits, {'one scale per row' if per_row else f'groups of {group_size}'}: "
               f"{cell['bytes_per_weight']:.3f} bytes/weight ({compression:.1f}x smaller than float32), "
               f"RMS error {100 * cell['relative_rms_error']:.1f}% of the weights' RMS")
    return {"original": original, "quantized": cell["sample"], "relative_rms_error": cell["relative_rms_error"],
            "max_error": cell["max_error"], "bytes_per_weight": cell["bytes_per_weight"],
            "compression": compression, "bits": bits, "group_size": group_size, "summary": summary}


class QuantizationFigure:
    """The row's first weights before/after (group boundaries dotted), and error vs size of every choice (the
    current one starred). Axes are drawn once; `render` redraws only what a choice changes."""

    def __init__(self, table: dict):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig = Figure(figsize=(11, 3.6), dpi=80)
        self.canvas = FigureCanvasAgg(self.fig)
        left, right = self.fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
        self.fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.88, wspace=0.25)
        original = table["weight"][table["row"], :N_SAMPLE]
        x = np.arange(len(original))
        left.plot(x, original, "o", ms=4, color="grey", label="float32")
        (self.steps,) = left.step(x, original, where="mid", color="tab:red", label="quantized")
        self.edges = {g: [left.axvline(e - 0.5, color="tab:blue", lw=0.6, ls=":", visible=False)
                          for e in range(g, len(x), g)] for g in table["groups"]}
        left.set_xlabel(f"input index (row {table['row']}; dotted: group boundaries)")
        left.set_ylabel("weight")
        left.legend(fontsize=8, loc="upper right")
        for b in table["bits"]:
            cells = [table["cells"][b, g] for g in table["groups"]]
            right.plot([c["bytes_per_weight"] for c in cells], [c["relative_rms_error"] for c in cells], "o-",
                       ms=3, label=f"{b} bits")
        (self.star,) = right.plot([], [], "k*", ms=14)
        right.set_yscale("log")
        right.set_xlabel("bytes per weight (codes + float16 scales)")
        right.set_ylabel("relative RMS error")
        right.legend(fontsize=7, ncol=2)
        self.title = self.fig.suptitle(" ", fontsize=10)
        self.animated = [self.steps, self.star, self.title, *(line for lines in self.edges.values() for line in lines)]
        self.background = draw_background(self.canvas, self.animated)  # redrawn by render()

    def render(self, data: dict) -> bytes:
        """PNG of the figure showing `quantization_data`'s output."""
        self.steps.set_ydata(data["quantized"])
        self.star.set_data([data["bytes_per_weight"]], [data["relative_rms_error"]])
        self.title.set_text(data["summary"])
        for g, lines in self.edges.items():
            for line in lines:
                line.set_visible(g == data["group_size"])
        return blit_png(self.canvas, self.background, self.animated)


class QuantizationExplorer:
    """The widget: a bits slider and a group-size dropdown over a precomputed table; `data` is what is shown."""

    def __init__(self, weight, row: int = 0):
        import ipywidgets as widgets

        self.table = precompute(weight, row=row)
        options = [(str(g) if g < self.table["weight"].shape[1] else "whole row", g) for g in self.table["groups"]]
        self.bits = widgets.SelectionSlider(options=self.table["bits"], value=4, description="bits")
        self.group = widgets.Dropdown(options=options, value=options[min(2, len(options) - 1)][1],
                                      description="group size")
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([widgets.HBox([self.bits, self.group]), self.image])
        self.figure = QuantizationFigure(self.table)
        self.data: dict = {}
        self.bits.observe(self.update, names="value")
        self.group.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        self.data = quantization_data(self.table, self.bits.value, self.group.value)
        self.image.value = self.figure.render(self.data)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def quantization_explorer(weight, row: int = 0) -> QuantizationExplorer:
    """Build the explorer for a weight matrix (out_features, in_features); display it as a cell's last line."""
    return QuantizationExplorer(weight, row=row)
