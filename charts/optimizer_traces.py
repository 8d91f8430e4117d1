"""Charts for optimizer traces: the comparison at the rates chosen on validation, the sweep that chose
them, loss and held-out curves with seed bands, update geometry, alpha, times.

Curves show each optimizer at its chosen rate (every run when a trace has no validation split)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.optimizer_traces import INTERVAL, OptimizerTracesResult

_PALETTE = ("#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
GEOMETRY = (("rms", "update RMS", "log"), ("effective_rank", "effective rank", "linear"),
            ("neuron_cv", "neuron-norm CV", "linear"), ("sv_cv", "singular-value CV (0: orthogonal)", "linear"))
PHASE_COLOURS = {"forward": "#4C78A8", "backward": "#72B7B2", "optimizer": "#F58518", "recorder": "#BAB0AC"}


def _series(result: OptimizerTracesResult, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the shown runs (each optimizer at its chosen rate), with "series": their name."""
    if frame.empty:
        return frame
    names = result.series(result.shown_runs())
    frame = frame[frame["run_id"].isin(names)].copy()
    frame["series"] = frame["run_id"].map(names)
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
    note = f"mean over {n} seeds, band min to max" if n > 1 else "one seed"
    if not result.choices().empty and result.runs().groupby(["scope", "optimizer"])["lr"].nunique().max() > 1:
        note += "; each optimizer at its rate chosen on validation"
    return note


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


def held_out(result: OptimizerTracesResult) -> go.Figure:
    """Validation loss (what chooses checkpoints and rates) and test accuracy (chooses nothing) over training."""
    evals = _series(result, result.table("eval"))
    panels = [(m, t) for m, t in (("val_loss", "validation loss (chooses)"), ("test_accuracy", "test accuracy (reported)"))
              if m in evals]
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[t for _, t in panels] or [""])
    if not evals.empty:
        colours = _colours(evals["series"])
        for i, (metric, _) in enumerate(panels):
            _band_traces(fig, evals, "step", metric, colours, row=1, col=i + 1, legend=i == 0)
            fig.update_xaxes(title_text="step", row=1, col=i + 1)
    fig.update_layout(title=f"Held-out curves<br><sup>{_seeds_note(result)}</sup>", legend=dict(orientation="h", y=-0.2))
    return fig


def comparison(result: OptimizerTracesResult) -> go.Figure | None:
    """Test loss at the best-validation checkpoint, each optimizer at its chosen rate, with its interval."""
    table = result.compare()
    if table.empty:
        return None
    colours = _colours(table["name"])
    fig = go.Figure()
    for row in table.itertuples(index=False):
        lo, hi = row.test_loss_at_best_val_lo, row.test_loss_at_best_val_hi
        has_interval = np.isfinite(lo) and np.isfinite(hi)
        fig.add_trace(go.Scatter(
            x=[row.test_loss_at_best_val], y=[row.name], mode="markers", marker=dict(size=11, color=colours[row.name]),
            name=row.name, showlegend=False,
            error_x=dict(type="data", symmetric=False, array=[hi - row.test_loss_at_best_val],
                         arrayminus=[row.test_loss_at_best_val - lo]) if has_interval else None,
            hovertemplate=(f"{row.name}<br>lr={row.lr:.3g} (chosen on validation from {row.lr_grid})<br>"
                           f"test loss at best val %{{x:.4g}}"
                           + (f" [{lo:.4g}, {hi:.4g}]" if has_interval else "")
                           + f"<br>test accuracy {row.test_acc_at_best_val:.4f}<br>{row.seeds} seed(s)<extra></extra>")))
    adamw = table.loc[table["optimizer"] == "adamw", "test_loss_at_best_val"]
    if len(adamw):
        fig.add_vline(x=float(adamw.iloc[0]), line_dash="dot", line_color="#888",
                      annotation_text="AdamW", annotation_position="top")
    seeds = int(table["seeds"].max())
    sp = result.splits
    splits = (f"validation: {sp['val']:,} {sp.get('unit', '')} from the {sp.get('val_from', 'training data')}; "
              f"test: {sp['test']:,} {sp.get('unit', '')}, chooses nothing" if {"val", "test"} <= set(sp)
              else "test split chooses nothing")
    fig.update_layout(
        title=(f"Test loss at each run's best-validation checkpoint, at the rate chosen on validation<br>"
               f"<sup>mean and {INTERVAL:.0%} t-interval over {seeds} seed(s); {splits}</sup>"),
        xaxis_title="test loss at best validation", yaxis=dict(autorange="reversed"),
        height=160 + 38 * len(table), margin=dict(t=90))
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
    """Best validation loss against learning rate (the choice), when some optimizer ran at several rates.

    Mean over seeds with bars from the lowest to the highest seed (the log axis cannot show a t-interval
    of two seeds, which often reaches below zero); the chosen rate of each optimizer is a star.
    """
    sweep = result.sweep()
    if sweep.empty or sweep.groupby(["scope", "optimizer"])["lr"].nunique().max() < 2:
        return None
    fig = go.Figure()
    colours = _colours(sweep["name"])
    for name, g in sweep.groupby("name", sort=False):
        g = g.sort_values("lr")
        lo = (g["best_val_loss"] - g["best_val_loss_min"]).fillna(0)
        hi = (g["best_val_loss_max"] - g["best_val_loss"]).fillna(0)
        fig.add_trace(go.Scatter(x=g["lr"], y=g["best_val_loss"], mode="lines+markers", name=str(name), legendgroup=name,
                                 line_color=colours[name],
                                 error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                                 hovertemplate=f"{name}<br>lr=%{{x:.3g}}<br>best validation loss %{{y:.4g}}<extra></extra>"))
        pick = g[g["chosen"].astype(bool)]
        fig.add_trace(go.Scatter(x=pick["lr"], y=pick["best_val_loss"], mode="markers", showlegend=False,
                                 legendgroup=name, marker=dict(symbol="star", size=15, color=colours[name],
                                                               line=dict(width=1, color="black")),
                                 hovertemplate=f"{name}: chosen lr=%{{x:.3g}}<extra></extra>"))
    seeds = int(sweep["seeds"].max())
    fig.update_layout(title=(f"Learning-rate sweep on the validation split (star: the chosen rate)<br>"
                             f"<sup>best validation loss per run; mean over {seeds} seed(s), bars min to max</sup>"),
                      xaxis_title="learning rate", yaxis_title="best validation loss", xaxis_type="log", yaxis_type="log")
    return fig


def figures(result: OptimizerTracesResult) -> list[go.Figure]:
    """Every chart of the result, the comparison and the sweep first when there are any."""
    head = [f for f in (comparison(result), lr_sweep(result)) if f is not None]
    return head + [loss_curves(result, "step"), loss_curves(result, "train_s"), held_out(result),
                   update_geometry(result), per_layer(result), weight_alpha(result), time_breakdown(result)]
