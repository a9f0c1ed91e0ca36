"""The X-ray viewer of the review page: contrast window, CAM overlay and NIH boxes in a plotly figure.

Plotly gives zoom (drag a box, scroll), pan and reset for free. The image travels to the browser as
one PNG (px.imshow binary_string), not as a JSON array of pixels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image

from core.dataset import BBOX_COORDINATE_SIZE
from webapp.formatting import pretty

MAX_DISPLAY_SIDE = 1024  # larger X-rays are shown downsampled; zooming in still shows plenty of detail
BOX_COLOUR = "#ffb000"
PLOTLY_CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
    "toImageButtonOptions": {"format": "png", "filename": "xray"},
}


def apply_window(pixels: np.ndarray, low: int, high: int, invert: bool = False) -> np.ndarray:
    """Stretch the grey levels low..high of a uint8 image to 0..255 (clipping outside), like a window."""
    low, high = int(low), int(high)
    if high <= low:
        high = low + 1
    scaled = (pixels.astype(np.float32) - low) * (255.0 / (high - low))
    out = np.clip(scaled, 0, 255).round().astype(np.uint8)
    return 255 - out if invert else out


def display_size(width: int, height: int, max_side: int = MAX_DISPLAY_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def downsample(image: np.ndarray, max_side: int = MAX_DISPLAY_SIDE) -> np.ndarray:
    """Grey [H, W] or RGB [H, W, 3] uint8, shrunk to at most max_side on its longer side."""
    height, width = image.shape[:2]
    size = display_size(width, height, max_side)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def scale_box(
    x: float, y: float, w: float, h: float, shown_width: int, shown_height: int
) -> tuple[float, float, float, float]:
    """An NIH box (original 1024 px space) as (x0, y0, x1, y1) in the shown image's pixels."""
    sx, sy = shown_width / BBOX_COORDINATE_SIZE, shown_height / BBOX_COORDINATE_SIZE
    return x * sx, y * sy, (x + w) * sx, (y + h) * sy


def xray_figure(
    image: np.ndarray,
    boxes: Iterable[tuple[str, float, float, float, float]] = (),
    height: int = 560,
) -> go.Figure:
    """A zoomable figure of a grey or RGB uint8 image, with (finding, x, y, w, h) NIH boxes drawn on it."""
    shown = downsample(image)
    shown_height, shown_width = shown.shape[:2]
    # zmin/zmax fixed: plotly would otherwise stretch the grey range again and undo the window.
    figure = px.imshow(shown, binary_string=True, zmin=0, zmax=255)
    for finding, x, y, w, h in boxes:
        x0, y0, x1, y1 = scale_box(x, y, w, h, shown_width, shown_height)
        figure.add_shape(
            type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": BOX_COLOUR, "width": 2}, name=finding
        )
        figure.add_annotation(
            x=x0, y=y0, text=pretty(finding), showarrow=False, xanchor="left", yanchor="bottom",
            font={"color": "black", "size": 12}, bgcolor=BOX_COLOUR, borderpad=2,
        )  # fmt: skip
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="pan",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        hovermode=False,
    )
    return figure
