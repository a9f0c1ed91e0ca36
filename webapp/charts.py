"""Plotly figures shared by the pages."""

from __future__ import annotations

import plotly.graph_objects as go

from webapp.formatting import pretty

POSITIVE_COLOUR = "#d62728"
NEGATIVE_COLOUR = "#9bb7d4"


def probability_bars(
    probabilities: dict[str, float], thresholds: dict[str, float], title: str = ""
) -> go.Figure:
    """Horizontal bars, most probable on top, each class's operating threshold marked."""
    ranked = sorted(probabilities, key=probabilities.__getitem__)
    positive = [probabilities[label] >= thresholds[label] for label in ranked]
    fig = go.Figure()
    fig.add_bar(
        x=[probabilities[label] for label in ranked],
        y=[pretty(label) for label in ranked],
        orientation="h",
        marker_color=[POSITIVE_COLOUR if p else NEGATIVE_COLOUR for p in positive],
        text=[f"{probabilities[label]:.3f}" for label in ranked],
        textposition="outside",
        name="probability",
        hovertemplate="%{y}: %{x:.4f}<extra></extra>",
    )
    fig.add_scatter(
        x=[thresholds[label] for label in ranked],
        y=[pretty(label) for label in ranked],
        mode="markers",
        marker={"symbol": "line-ns", "size": 18, "line": {"width": 3, "color": "black"}},
        name="operating threshold",
        hovertemplate="threshold %{x:.4f}<extra></extra>",
    )
    fig.update_layout(
        title=title,
        xaxis={"range": [0, 1.08], "title": "probability"},
        height=460,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        legend={"orientation": "h", "y": -0.12},
        bargap=0.25,
    )
    return fig
