"""Plotly figures of the Label quality page."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from webapp.formatting import pretty

POS_TO_NEG_COLOUR = "#d62728"
NEG_TO_POS_COLOUR = "#1f77b4"
REVIEWED_COLOUR = "#2ca02c"
NLP_COLOUR = "#9e9e9e"


def _values(series: pd.Series) -> list[float | None]:
    return [
        None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        for value in series
    ]


def _layout(figure: go.Figure, y_title: str, y_range: list[float]) -> go.Figure:
    figure.update_layout(
        barmode="group",
        height=380,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "y": 1.08, "x": 0},
        yaxis={"title": y_title, "range": y_range},
        bargap=0.25,
    )
    return figure


def overturn_bars(findings: pd.DataFrame) -> go.Figure:
    """Per finding: the share of NLP positives the review made negative, and of negatives made positive."""
    names = [pretty(name) for name in findings["finding"]]
    figure = go.Figure()
    for column, label, colour in (
        ("pos_to_neg_rate", "NLP positive → reviewed negative", POS_TO_NEG_COLOUR),
        ("neg_to_pos_rate", "NLP negative → reviewed positive", NEG_TO_POS_COLOUR),
    ):
        figure.add_bar(
            x=names, y=_values(findings[column]), name=label, marker_color=colour,
            hovertemplate="%{x}: %{y:.1%}<extra>" + label + "</extra>",
        )  # fmt: skip
    figure.update_yaxes(tickformat=".0%")
    return _layout(figure, "share of the NLP labels", [0, 1.02])


def kappa_bars(findings: pd.DataFrame) -> go.Figure:
    names = [pretty(name) for name in findings["finding"]]
    figure = go.Figure()
    figure.add_bar(
        x=names, y=_values(findings["kappa"]), name="kappa", marker_color=REVIEWED_COLOUR,
        hovertemplate="%{x}: κ = %{y:.2f}<extra></extra>",
    )  # fmt: skip
    return _layout(figure, "kappa", [-1, 1])


def google_bars(google: pd.DataFrame) -> go.Figure:
    """Agreement with Google's adjudicated labels: the reviewed labels beside the NLP labels."""
    figure = go.Figure()
    for column, label, colour in (
        ("reviewed_agreement", "reviewed labels", REVIEWED_COLOUR),
        ("nlp_agreement", "NLP labels", NLP_COLOUR),
    ):
        figure.add_bar(
            x=list(google["google_finding"]), y=_values(google[column]), name=label, marker_color=colour,
            hovertemplate="%{x}: %{y:.1%}<extra>" + label + "</extra>",
        )  # fmt: skip
    figure.update_yaxes(tickformat=".0%")
    return _layout(figure, "agreement with Google", [0, 1.02])
