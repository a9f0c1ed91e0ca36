"""Plotly figures of the Label quality page. A rate or kappa resting on fewer than MIN_POSITIVES
positives is not drawn as a bar; the chart writes "too few" in its place."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from db.reader_stats import MIN_POSITIVES, Kappa
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
    for column, count, label, colour in (
        ("pos_to_neg_rate", "nlp_positive", "NLP positive → reviewed negative", POS_TO_NEG_COLOUR),
        ("neg_to_pos_rate", "nlp_negative", "NLP negative → reviewed positive", NEG_TO_POS_COLOUR),
    ):
        counts = [int(n) for n in findings[count]]
        values = [
            v if n >= MIN_POSITIVES else None for v, n in zip(_values(findings[column]), counts, strict=True)
        ]
        figure.add_bar(
            x=names, y=values, name=label, marker_color=colour, customdata=counts,
            hovertemplate="%{x}: %{y:.1%} of %{customdata}<extra>" + label + "</extra>",
        )  # fmt: skip
    too_few = [
        name for name, n in zip(names, findings["nlp_positive"], strict=True) if int(n) < MIN_POSITIVES
    ]
    _too_few_marks(figure, too_few)
    figure.update_yaxes(tickformat=".0%")
    return _layout(figure, "share of the NLP labels", [0, 1.02])


def _too_few_marks(figure: go.Figure, names: list[str]) -> None:
    for name in names:
        figure.add_annotation(
            x=name, y=0, text="too few", showarrow=False, yanchor="bottom", textangle=-90,
            font={"size": 10, "color": NLP_COLOUR},
        )  # fmt: skip


def kappa_bars(kappas: dict[str, Kappa]) -> go.Figure:
    """Fleiss' kappa per finding with its 95 % interval; "too few" where positives are fewer than 10."""
    shown = [k.value is not None and not k.too_few for k in kappas.values()]
    values = [k.value if ok else None for k, ok in zip(kappas.values(), shown, strict=True)]
    above = [
        (k.high - k.value) if ok and k.high is not None else 0
        for k, ok in zip(kappas.values(), shown, strict=True)
    ]
    below = [
        (k.value - k.low) if ok and k.low is not None else 0
        for k, ok in zip(kappas.values(), shown, strict=True)
    ]
    figure = go.Figure()
    figure.add_bar(
        x=[pretty(f) for f in kappas], y=values, name="kappa", marker_color=REVIEWED_COLOUR,
        customdata=[[k.n, k.positives] for k in kappas.values()],
        error_y={"type": "data", "symmetric": False, "array": above, "arrayminus": below},
        hovertemplate="%{x}: κ = %{y:.2f}, %{customdata[0]} images, %{customdata[1]} present<extra></extra>",
    )  # fmt: skip
    _too_few_marks(figure, [pretty(f) for f, ok in zip(kappas, shown, strict=True) if not ok])
    return _layout(figure, "kappa (95% CI)", [-1, 1])


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
