"""Fast redraws for the explorers: draw a figure's static part once, then only the artists a slider changes."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg


def draw_background(canvas: FigureCanvasAgg, animated: Iterable[Artist]):
    """Leave `animated` out of the figure, draw the rest once, and return it for `blit_png`."""
    for artist in animated:
        artist.set_animated(True)
    canvas.draw()
    return canvas.copy_from_bbox(canvas.figure.bbox)


def blit_png(canvas: FigureCanvasAgg, background, animated: Iterable[Artist]) -> bytes:
    """PNG of the figure: the saved background with `animated` drawn on top (a fraction of a full redraw)."""
    from PIL import Image

    canvas.restore_region(background)
    for artist in animated:
        canvas.figure.draw_artist(artist)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()
