"""Plotly figures of the Fine-tune and Models & ROC pages: training curves, ROC and PR curves."""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.labels import FINDINGS
from webapp.formatting import pretty

# One colour per compared version, the active one always first (dark blue).
PALETTE = ["#1f4e79", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
CHANCE = {"color": "#b0b0b0", "dash": "dot", "width": 1}
PLOTLY_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _shown(name: str) -> str:
    """A version name as plotly text: plotly reads tags (<a href>, <b>) in names and titles."""
    return html.escape(name)


def _layout(figure: go.Figure, height: int, **extra: Any) -> go.Figure:
    settings = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "legend": {"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        "template": "plotly_white",
    }
    figure.update_layout(**{**settings, **extra})
    return figure


def _smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected at the start (as TensorBoard draws it)."""
    out, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**n))
    return out


def loss_curve(progress: dict[str, Any]) -> go.Figure:
    """Training loss per step (x in epochs) and the validation loss per finished epoch."""
    points = progress.get("loss_history") or []
    epochs = progress.get("epochs_done") or []
    figure = go.Figure()
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        figure.add_scatter(
            x=xs,
            y=ys,
            mode="lines",
            name="training loss",
            line={"color": "#9fb6cd", "width": 1},
            hovertemplate="epoch %{x:.2f}<br>loss %{y:.4f}<extra></extra>",
        )
        if len(points) >= 10:
            figure.add_scatter(
                x=xs,
                y=_smoothed(ys),
                mode="lines",
                name="smoothed",
                line={"color": PALETTE[0], "width": 2.5},
                hovertemplate="epoch %{x:.2f}<br>smoothed %{y:.4f}<extra></extra>",
            )
    val = [(e["epoch"], e["val_loss"]) for e in epochs if e.get("val_loss") is not None]
    if val:
        figure.add_scatter(
            x=[v[0] for v in val],
            y=[v[1] for v in val],
            mode="lines+markers",
            name="validation loss",
            line={"color": PALETTE[1], "width": 2},
            marker={"size": 8},
            hovertemplate="epoch %{x}<br>val loss %{y:.4f}<extra></extra>",
        )
    total = progress.get("epochs") or max([1, *[v[0] for v in val]])
    return _layout(
        figure,
        300,
        title={"text": "Loss", "font": {"size": 14}},
        xaxis={"title": "epoch", "range": [0, total]},
        yaxis={"title": "BCE loss"},
    )


def val_auroc_curve(progress: dict[str, Any]) -> go.Figure:
    """Mean validation AUROC per finished epoch, with the per-finding values as faint lines."""
    epochs = progress.get("epochs_done") or []
    figure = go.Figure()
    xs = [e["epoch"] for e in epochs]
    for finding in FINDINGS:
        ys = [(e.get("val_auroc") or {}).get(finding) for e in epochs]
        if any(y is not None for y in ys):
            figure.add_scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=pretty(finding),
                showlegend=False,
                line={"color": "#c9d6e3", "width": 1},
                hovertemplate=f"{pretty(finding)}<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>",
            )
    figure.add_scatter(
        x=xs,
        y=[e.get("val_mean_auroc") for e in epochs],
        mode="lines+markers",
        name="mean AUROC",
        line={"color": PALETTE[0], "width": 3},
        marker={"size": 9},
        hovertemplate="epoch %{x}<br>mean AUROC %{y:.3f}<extra></extra>",
    )
    total = progress.get("epochs") or max([1, *xs])
    return _layout(
        figure,
        300,
        title={"text": "Validation AUROC per epoch", "font": {"size": 14}},
        xaxis={"title": "epoch", "range": [0.5, total + 0.5], "dtick": 1 if total <= 20 else None},
        yaxis={"title": "AUROC", "range": [0.3, 1.0]},
    )


def _curve_xy(report: dict[str, Any], kind: str, finding: str) -> tuple[list, list, float | None] | None:
    curve = (report.get(kind) or {}).get(finding)
    if not curve:
        return None
    if kind == "roc":
        return curve["fpr"], curve["tpr"], curve.get("auroc")
    return curve["recall"], curve["precision"], curve.get("average_precision")


def _operating_point(report: dict[str, Any], kind: str, finding: str) -> tuple[float, float] | None:
    """Where the version's operating threshold sits on the curve: (FPR, TPR) or (recall, precision)."""
    confusion = (report.get("confusion") or {}).get(finding)
    if not confusion:
        return None
    tp, fp, fn, tn = (confusion[k] for k in ("tp", "fp", "fn", "tn"))
    if kind == "roc":
        if tp + fn == 0 or fp + tn == 0:
            return None
        return fp / (fp + tn), tp / (tp + fn)
    if tp + fp == 0 or tp + fn == 0:
        return None
    return tp / (tp + fn), tp / (tp + fp)


def curve_overlay(reports: dict[str, dict[str, Any]], finding: str, kind: str = "roc") -> go.Figure:
    """One finding's ROC (kind "roc") or precision-recall ("pr") curve of each version, overlaid."""
    figure = go.Figure()
    if kind == "roc":
        figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name="chance", hoverinfo="skip")
    for index, (version, report) in enumerate(reports.items()):
        name = _shown(version)
        colour = PALETTE[index % len(PALETTE)]
        xy = _curve_xy(report, kind, finding)
        if xy is None:
            continue
        x, y, area = xy
        label = f"{name} ({'AUROC' if kind == 'roc' else 'AP'} {area:.3f})" if area is not None else name
        figure.add_scatter(
            x=x,
            y=y,
            mode="lines",
            name=label,
            line={"color": colour, "width": 2.5, "shape": "hv" if kind == "roc" else "linear"},
            hovertemplate=(
                "FPR %{x:.3f}<br>TPR %{y:.3f}" if kind == "roc" else "recall %{x:.3f}<br>precision %{y:.3f}"
            )
            + f"<extra>{name}</extra>",
        )
        point = _operating_point(report, kind, finding)
        if point is not None:
            threshold = (report.get("thresholds") or {}).get(finding)
            figure.add_scatter(
                x=[point[0]],
                y=[point[1]],
                mode="markers",
                showlegend=False,
                marker={
                    "color": colour,
                    "size": 11,
                    "symbol": "diamond",
                    "line": {"color": "white", "width": 1},
                },
                hovertemplate=f"operating threshold {threshold:.3f}<extra>{name}</extra>"
                if threshold is not None
                else f"operating point<extra>{name}</extra>",
            )
    if kind == "pr":
        prevalence = next(
            (
                ((r.get("pr") or {}).get(finding) or {}).get("prevalence")
                for r in reports.values()
                if ((r.get("pr") or {}).get(finding) or {}).get("prevalence") is not None
            ),
            None,
        )
        if prevalence is not None:
            figure.add_scatter(
                x=[0, 1],
                y=[prevalence, prevalence],
                mode="lines",
                line=CHANCE,
                name=f"prevalence {prevalence:.3f}",
                hoverinfo="skip",
            )
    axes = ("false positive rate", "true positive rate") if kind == "roc" else ("recall", "precision")
    # The legend sits in the corner a curve never reaches: bottom right (ROC), bottom left (PR).
    corner = {"x": 0.98, "xanchor": "right"} if kind == "roc" else {"x": 0.02, "xanchor": "left"}
    return _layout(
        figure,
        520,
        legend={
            "orientation": "v",
            "y": 0.02,
            "yanchor": "bottom",
            "bgcolor": "rgba(255,255,255,0.85)",
            **corner,
        },
        title={"text": pretty(finding), "font": {"size": 15}},
        xaxis={"title": axes[0], "range": [0, 1], "constrain": "domain"},
        yaxis={"title": axes[1], "range": [0, 1.02], "scaleanchor": "x", "scaleratio": 1},
    )


def curve_grid(reports: dict[str, dict[str, Any]], kind: str = "roc") -> go.Figure:
    """All 14 findings in a 4×4 grid, each panel with every version's curve."""
    columns = 4
    rows = math.ceil(len(FINDINGS) / columns)
    titles = []
    for finding in FINDINGS:
        areas = []
        for report in reports.values():
            xy = _curve_xy(report, kind, finding)
            if xy is not None and xy[2] is not None:
                areas.append(f"{xy[2]:.2f}")
        titles.append(f"{pretty(finding)}" + (f" ({' / '.join(areas)})" if areas else " (undefined)"))
    figure = make_subplots(
        rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.07
    )
    for c, finding in enumerate(FINDINGS):
        row, col = c // columns + 1, c % columns + 1
        if kind == "roc":
            figure.add_scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line=CHANCE,
                showlegend=False,
                hoverinfo="skip",
                row=row,
                col=col,
            )
        for index, (version, report) in enumerate(reports.items()):
            name = _shown(version)
            xy = _curve_xy(report, kind, finding)
            if xy is None:
                continue
            figure.add_scatter(
                x=xy[0],
                y=xy[1],
                mode="lines",
                name=name,
                legendgroup=name,
                showlegend=c == 0,
                line={"color": PALETTE[index % len(PALETTE)], "width": 1.8},
                hovertemplate=f"{pretty(finding)}<br>%{{x:.3f}}, %{{y:.3f}}<extra>{name}</extra>",
                row=row,
                col=col,
            )
    figure.update_xaxes(range=[0, 1], showticklabels=False)
    figure.update_yaxes(range=[0, 1.02], showticklabels=False)
    figure.update_annotations(font_size=11)
    return _layout(figure, 240 * rows, legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0})


def reliability_diagram(reports: dict[str, dict[str, Any]], finding: str) -> go.Figure:
    """Observed positive rate against mean predicted probability per bin, one line per version; the
    diagonal is perfect calibration and each marker's size follows its bin's image count."""
    figure = go.Figure()
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=CHANCE, name="perfectly calibrated",
                       hoverinfo="skip")  # fmt: skip
    for index, (version, report) in enumerate(reports.items()):
        row = ((report.get("calibration") or {}).get("classes") or {}).get(finding)
        if not row:
            continue
        points = row["reliability"]
        name = _shown(version)
        largest = max(points["count"] or [1])
        figure.add_scatter(
            x=points["mean_predicted"],
            y=points["observed"],
            mode="lines+markers",
            name=f"{name} (ECE {row['ece']:.3f}, {row['n_pos']} positives)",
            line={"color": PALETTE[index % len(PALETTE)], "width": 2},
            marker={"size": [8 + 14 * (c / largest) ** 0.5 for c in points["count"]]},
            customdata=points["count"],
            hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>%{customdata} images"
            + f"<extra>{name}</extra>",
        )
    return _layout(
        figure,
        460,
        legend={
            "orientation": "v",
            "y": 0.98,
            "yanchor": "top",
            "x": 0.02,
            "xanchor": "left",
            "bgcolor": "rgba(255,255,255,0.85)",
        },  # fmt: skip
        title={"text": f"Reliability: {pretty(finding)}", "font": {"size": 15}},
        xaxis={"title": "mean predicted probability (bin)", "range": [0, 1], "constrain": "domain"},
        yaxis={"title": "observed positive rate", "range": [0, 1.02], "scaleanchor": "x", "scaleratio": 1},
    )
