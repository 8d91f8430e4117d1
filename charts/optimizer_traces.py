"""Charts for optimizer traces: loss and accuracy curves with seed bands, update geometry, alpha, times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.optimizer_traces import OptimizerTracesResult

_PALETTE = ("#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
GEOMETRY = (("rms", "update RMS", "log"), ("effective_rank", "effective rank", "linear"),
            ("neuron_cv", "neuron-norm CV", "linear"), ("orth_error", "orthogonality error", "linear"))
PHASE_COLOURS = {"forward": "#4C78A8", "backward": "#72B7B2", "optimizer": "#F58518", "recorder": "#BAB0AC"}


def _series(result: OptimizerTracesResult, frame: pd.DataFrame) -> pd.DataFrame:
    """Adds "series": the optimizer's label, with its learning rate when a sweep ran several."""
    if frame.empty:
        return frame
    runs = result.runs()
    several = runs.groupby("optimizer")["lr"].nunique().gt(1).to_dict()
    frame = frame.copy()
    frame["series"] = [f"{label} lr={lr:.3g}" if several.get(opt) else str(label)
                       for label, lr, opt in zip(frame["label"], frame["lr"], frame["optimizer"])]
    return frame


def _colours(names) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(dict.fromkeys(names))}


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band_traces(fig: go.Figure, frame: pd.DataFrame, x: str, y: str, colours: dict, *, row=None, col=None,
                 legend: bool = True) -> None:
    """Per series: the mean over seeds as a line and the min-max over seeds as a shaded band."""
    for name, g in frame.groupby("series", sort=False):
        stats = g.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index().dropna(subset=["mean"])
        colour = colours[name]
        kw = {} if row is None else {"row": row, "col": col}
        if stats["count"].max() > 1:
            fig.add_trace(go.Scatter(x=np.r_[stats[x], stats[x][::-1]], y=np.r_[stats["max"], stats["min"][::-1]],
                                     mode="lines", fill="toself", fillcolor=_rgba(colour, 0.18), line_width=0, hoverinfo="skip",
                                     showlegend=False, legendgroup=name), **kw)
        fig.add_trace(go.Scatter(x=stats[x], y=stats["mean"], mode="lines" if len(stats) > 3 else "lines+markers",
                                 name=name, legendgroup=name,
                                 line_color=colour, showlegend=legend,
                                 hovertemplate=f"{name}<br>{x}=%{{x:.4g}}<br>{y}=%{{y:.4g}}<extra></extra>"), **kw)


def _seeds_note(result: OptimizerTracesResult) -> str:
    n = result.runs()["seed"].nunique()
    return f"mean over {n} seeds, band min to max" if n > 1 else "one seed"


def loss_curves(result: OptimizerTracesResult, x: str = "step") -> go.Figure:
    """Training loss against step or against training wall time, log-log."""
    steps = _series(result, result.table("step"))
    fig = go.Figure()
    if not steps.empty:
        if x == "train_s" and steps["seed"].nunique() > 1:
            # Wall times differ between seeds: average each series on its mean time per record.
            steps = steps.copy()
            steps["train_s"] = steps.groupby(["series", "step"])["train_s"].transform("mean")
        _band_traces(fig, steps, x, "loss", _colours(steps["series"]))
    label = "step" if x == "step" else "training wall time (s, recorder excluded)"
    fig.update_layout(title=f"Training loss against {'step' if x == 'step' else 'wall time'}<br><sup>{_seeds_note(result)}</sup>",
                      xaxis_title=label, yaxis_title="training loss", xaxis_type="log", yaxis_type="log",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def test_accuracy(result: OptimizerTracesResult) -> go.Figure:
    evals = _series(result, result.table("eval"))
    fig = go.Figure()
    if not evals.empty and "test_accuracy" in evals:
        _band_traces(fig, evals, "step", "test_accuracy", _colours(evals["series"]))
    fig.update_layout(title=f"Held-out accuracy<br><sup>{_seeds_note(result)}</sup>", xaxis_title="step",
                      yaxis_title="test accuracy", legend=dict(orientation="h", y=-0.2))
    return fig


def update_geometry(result: OptimizerTracesResult) -> go.Figure:
    """The four update measures over training, averaged over the tracked matrices (and seeds)."""
    updates = _series(result, result.table("update"))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t, _ in GEOMETRY], vertical_spacing=0.14)
    if not updates.empty:
        colours = _colours(updates["series"])
        per_run = updates.groupby(["series", "run_id", "step"], sort=False)[[m for m, _, _ in GEOMETRY]].mean().reset_index()
        for i, (metric, _, scale) in enumerate(GEOMETRY):
            r, c = divmod(i, 2)
            _band_traces(fig, per_run, "step", metric, colours, row=r + 1, col=c + 1, legend=i == 0)
            fig.update_yaxes(type=scale, row=r + 1, col=c + 1)
    fig.update_layout(title="Geometry of the applied updates dW, mean over tracked matrices", height=620,
                      legend=dict(orientation="h", y=-0.12))
    return fig


def per_layer(result: OptimizerTracesResult) -> go.Figure:
    """Per matrix, each measure's mean over records and seeds, one bar per optimizer."""
    updates = _series(result, result.table("update"))
    fig = make_subplots(rows=len(GEOMETRY), cols=1, subplot_titles=[t for _, t, _ in GEOMETRY], shared_xaxes=True,
                        vertical_spacing=0.05)
    if not updates.empty:
        colours = _colours(updates["series"])
        means = updates.groupby(["series", "matrix"], sort=False)[[m for m, _, _ in GEOMETRY]].mean().reset_index()
        for i, (metric, _, scale) in enumerate(GEOMETRY):
            for name, g in means.groupby("series", sort=False):
                fig.add_trace(go.Bar(x=g["matrix"], y=g[metric], name=name, marker_color=colours[name],
                                     legendgroup=name, showlegend=i == 0), row=i + 1, col=1)
            fig.update_yaxes(type=scale, row=i + 1, col=1)
    fig.update_layout(title="Update geometry per matrix (mean over training)", barmode="group",
                      height=220 * len(GEOMETRY) + 120, legend=dict(orientation="h", y=-0.08))
    return fig


def weight_alpha(result: OptimizerTracesResult) -> go.Figure:
    alphas = _series(result, result.table("alpha"))
    fig = go.Figure()
    if not alphas.empty:
        per_run = alphas.groupby(["series", "run_id", "step"], sort=False)["alpha"].mean().reset_index()
        _band_traces(fig, per_run, "step", "alpha", _colours(alphas["series"]))
    fig.add_hrect(y0=2, y1=6, fillcolor="#54A24B", opacity=0.07, line_width=0,
                  annotation_text="HTSR's well-trained range 2-6", annotation_position="top left")
    fig.update_layout(title="Weight ESD power-law alpha over training, mean over tracked matrices",
                      xaxis_title="step", yaxis_title="alpha", legend=dict(orientation="h", y=-0.2))
    return fig


def time_breakdown(result: OptimizerTracesResult) -> go.Figure:
    runs = _series(result, result.runs())
    fig = go.Figure()
    if not runs.empty and "ms_forward" in runs:
        means = runs.groupby("series", sort=False)[[f"ms_{p}" for p in PHASE_COLOURS]].mean()
        for phase, colour in PHASE_COLOURS.items():
            fig.add_trace(go.Bar(x=means.index, y=means[f"ms_{phase}"], name=phase, marker_color=colour,
                                 hovertemplate=f"{phase}: %{{y:.3f}} ms<extra></extra>"))
    fig.update_layout(title="Time per step (ms), mean over runs", barmode="stack", yaxis_title="ms per step",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def lr_sweep(result: OptimizerTracesResult) -> go.Figure | None:
    """Final held-out loss against learning rate, when some optimizer ran at several."""
    runs = result.runs()
    if runs.empty or "final_test_loss" not in runs or runs.groupby("optimizer")["lr"].nunique().max() < 2:
        return None
    fig = go.Figure()
    colours = _colours(runs["label"])
    for label, g in runs.groupby("label", sort=False):
        stats = g.groupby("lr")["final_test_loss"].agg(["mean", "min", "max"]).reset_index()
        fig.add_trace(go.Scatter(x=stats["lr"], y=stats["mean"], mode="lines+markers", name=str(label),
                                 line_color=colours[label],
                                 error_y=dict(type="data", symmetric=False, array=stats["max"] - stats["mean"],
                                              arrayminus=stats["mean"] - stats["min"])))
    fig.update_layout(title="Learning-rate sweep: final held-out loss", xaxis_title="learning rate",
                      yaxis_title="final test loss", xaxis_type="log", yaxis_type="log")
    return fig


def figures(result: OptimizerTracesResult) -> list[go.Figure]:
    figs = [loss_curves(result, "step"), loss_curves(result, "train_s"), test_accuracy(result),
            update_geometry(result), per_layer(result), weight_alpha(result), time_breakdown(result)]
    sweep = lr_sweep(result)
    return figs + ([sweep] if sweep is not None else [])
