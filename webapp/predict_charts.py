"""The Predict page's pictures: the probability bars and the CAM's colour scale.

Bars: values are written in a column right of the plot (never on a bar or a threshold mark), the
"above threshold" colour has its own legend entry, and the axis ends just past the largest value or
threshold instead of always at 1. Scores of a weak/unvalidated model, or of an image flagged as unlike
the training data, are drawn in one neutral colour: nothing is called above threshold.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from core.inference.cam import colorize, normalise
from core.inference.predictor import Prediction
from webapp.formatting import pretty

ABOVE_COLOUR = "#d62728"
BELOW_COLOUR = "#9bb7d4"
NEUTRAL_COLOUR = "#a9a9a9"


def axis_end(probabilities: dict[str, float], thresholds: dict[str, float]) -> float:
    """Just past the largest value or threshold (so small scores are not squeezed at the left), at most 1."""
    largest = max([*probabilities.values(), *thresholds.values(), 0.05])
    return float(min(1.0, np.ceil(largest * 1.15 * 20) / 20))


def probability_bars(
    probabilities: dict[str, float], thresholds: dict[str, float], *, findings: bool
) -> go.Figure:
    """Horizontal bars, most probable on top, each class's operating threshold marked.

    `findings`: colour the bars above their threshold (a validated model on an image that passed the
    checks); otherwise every bar is a neutral "score".
    """
    ranked = sorted(probabilities, key=probabilities.__getitem__)
    names = [pretty(label) for label in ranked]
    fig = go.Figure()
    groups = (
        [("above threshold", ABOVE_COLOUR, True), ("below threshold", BELOW_COLOUR, False)]
        if findings
        else [("score (not a finding)", NEUTRAL_COLOUR, None)]
    )
    for name, colour, above in groups:
        keep = [above is None or (probabilities[label] >= thresholds[label]) == above for label in ranked]
        fig.add_bar(
            x=[probabilities[label] if k else None for label, k in zip(ranked, keep, strict=True)],
            y=names,
            orientation="h",
            marker_color=colour,
            name=name,
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    fig.add_scatter(
        x=[thresholds[label] for label in ranked],
        y=names,
        mode="markers",
        marker={"symbol": "line-ns", "size": 16, "line": {"width": 2.5, "color": "black"}},
        name="operating threshold",
        hovertemplate="threshold %{x:.4f}<extra></extra>",
    )
    for label, name in zip(ranked, names, strict=True):
        fig.add_annotation(x=1.0, xref="paper", xanchor="left", xshift=6, y=name, yref="y", showarrow=False,
                           text=f"{probabilities[label]:.3f}", font={"size": 12})  # fmt: skip
    end = axis_end(probabilities, thresholds)
    fig.update_layout(
        barmode="overlay",
        xaxis={"range": [0, end], "title": f"probability (axis 0–{end:.2f})"},
        height=480,
        margin={"l": 10, "r": 56, "t": 10, "b": 10},
        legend={"orientation": "h", "y": -0.14},
        bargap=0.25,
    )
    return fig


def fixed_scale_cam(prediction: Prediction, label: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """The CAM of `label` on one scale shared by every finding of this image (0 = the lowest activation
    of any finding, 1 = the highest), so a weak finding's map looks weak instead of stretched to full.
    Over the original image, or over a copy resized to `size` (width, height)."""
    raw = np.asarray(prediction.cams, dtype=np.float32)
    low, high = float(raw.min()), float(raw.max())
    own = raw[prediction.labels.index(label)]
    stretched = prediction.cam(label, size)
    if high - low < 1e-12:
        return np.zeros_like(stretched)
    # cam() min-max scales this finding's map; upsampling is linear, so rescaling after it is exact.
    a, b = (float(own.min()) - low) / (high - low), (float(own.max()) - float(own.min())) / (high - low)
    out = np.zeros_like(stretched)
    window = prediction.window_at(size)
    top, left, side = round(window.top), round(window.left), max(1, round(window.side))
    y0, x0 = max(top, 0), max(left, 0)
    seen = out[y0 : top + side, x0 : left + side]
    seen[...] = a + b * stretched[y0 : top + side, x0 : left + side]
    return np.clip(out, 0.0, 1.0)


def colour_scale(width: int = 256, height: int = 14) -> np.ndarray:
    """The CAM colour map as a strip (low at the left, high at the right), RGB uint8."""
    ramp = normalise(np.linspace(0.0, 1.0, width, dtype=np.float32))
    return np.repeat(colorize(ramp)[None, :, :], height, axis=0)
