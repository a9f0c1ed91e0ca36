"""The X-ray viewer of the review page: contrast window, CAM overlay and NIH boxes in a plotly figure.

Plotly gives zoom (drag a box, scroll), pan and reset for free; `uirevision` (the image's id) keeps
the reader's zoom and pan while invert, window or CAM change the picture, and resets it for the next
image. The image travels to the browser as one PNG in an image trace, not as a JSON array of
pixels. Window presets are percentiles of the image's own grey levels (a radiograph's PNG has no
Hounsfield units): the dark lung fields, the mid-grey mediastinum, the bright bone.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from core.data.dataset import BBOX_COORDINATE_SIZE
from core.inference.cam import colorize
from webapp.formatting import pretty

# The picture sent to the browser: NIH's 1024-px originals whole (shown 1:1 where they fit, and zoom goes
# to their full resolution); larger X-rays downsampled to this, still sharp on a 2x screen.
MAX_DISPLAY_SIDE = 2048
BOX_COLOUR = "#ffb000"
PLOTLY_CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
    "toImageButtonOptions": {"format": "png", "filename": "xray"},
}


# name -> (low, high) percentiles of the image's grey levels; None: the full 0-255 range.
WINDOW_PRESETS: dict[str, tuple[float, float] | None] = {
    "Full": None,
    "Lung": (1.0, 65.0),
    "Mediastinum": (35.0, 99.0),
    "Bone": (60.0, 99.8),
}
CAM_STOPS = (0.0, 0.15, 0.35, 0.55, 0.8, 1.0)  # where the CAM colour scale's anchors lie


def preset_window(pixels: np.ndarray, preset: str) -> tuple[int, int]:
    """(level, width) of a window preset on this image (the grey levels between its percentiles)."""
    bounds = WINDOW_PRESETS.get(preset)
    if bounds is None:
        return 128, 256
    low, high = (float(v) for v in np.percentile(pixels, bounds))
    width = max(2, round(high - low))
    return int(round((low + high) / 2)), int(width)


def window_bounds(level: int, width: int) -> tuple[int, int]:
    """(low, high) grey levels of a level/width window."""
    low = int(round(level - width / 2))
    return low, low + max(int(width), 1)


def cam_colorscale() -> list[list]:
    """The CAM overlay's colour map (core.inference.cam.colorize) as a plotly colour scale."""
    colours = colorize(np.array([CAM_STOPS]))[0]
    return [[stop, f"rgb({r},{g},{b})"] for stop, (r, g, b) in zip(CAM_STOPS, colours, strict=True)]


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


def png_data_uri(image: np.ndarray) -> str:
    """A grey or RGB uint8 image as a PNG data URI (compression level 1: fast, little larger)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class EncodedPicture:
    """An image as the figure shows it: at most MAX_DISPLAY_SIDE, as a PNG data URI, with its size."""

    source: str
    width: int
    height: int


def encode_picture(image: np.ndarray) -> EncodedPicture:
    shown = downsample(image)
    return EncodedPicture(png_data_uri(shown), shown.shape[1], shown.shape[0])


def xray_figure(
    image: np.ndarray | EncodedPicture,
    boxes: Iterable[tuple[str, float, float, float, float]] = (),
    height: int | None = 640,
    *,
    uirevision: object = None,
    cam_scale: str | None = None,
) -> go.Figure:
    """A zoomable figure of a grey or RGB uint8 image, with (finding, x, y, w, h) NIH boxes drawn on it.

    `height`: None leaves it to the page (st.plotly_chart(height="stretch") sizes the figure to its
    container). `uirevision`: zoom and pan survive a new figure with the same value. `cam_scale`: the
    finding whose CAM is laid over the image; a colour bar (low to high activation) is drawn beside it.
    """
    picture = image if isinstance(image, EncodedPicture) else encode_picture(image)
    shown_width, shown_height = picture.width, picture.height
    # An image trace with our own PNG (fast compression): a tenth of plotly express' imshow time, and
    # the grey levels arrive exactly as windowed.
    figure = go.Figure(go.Image(source=picture.source, hoverinfo="skip"))
    for finding, x, y, w, h in boxes:
        x0, y0, x1, y1 = scale_box(x, y, w, h, shown_width, shown_height)
        figure.add_shape(
            type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": BOX_COLOUR, "width": 2}, name=finding
        )
        figure.add_annotation(
            x=x0, y=y0, text=pretty(finding), showarrow=False, xanchor="left", yanchor="bottom",
            font={"color": "black", "size": 12}, bgcolor=BOX_COLOUR, borderpad=2,
        )  # fmt: skip
    if cam_scale:
        # An invisible marker trace carries the colour bar: the overlay itself is part of the picture.
        colour_bar = {
            "title": {"text": f"CAM<br>{pretty(cam_scale)}", "side": "top"},
            "tickvals": [0, 1], "ticktext": ["low", "high"], "thickness": 12, "len": 0.5,
        }  # fmt: skip
        figure.add_scatter(
            x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
            marker={"colorscale": cam_colorscale(), "cmin": 0, "cmax": 1, "color": [0], "showscale": True,
                    "colorbar": colour_bar},
        )  # fmt: skip
    figure.update_xaxes(visible=False, constrain="domain")
    figure.update_yaxes(visible=False, scaleanchor="x", autorange="reversed", constrain="domain")
    figure.update_layout(
        height=height,
        uirevision=uirevision,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="pan",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        hovermode=False,
    )
    return figure
