"""Charts for optimizer traces: the comparison at the rates chosen on validation, the sweep that chose
them, loss and held-out curves with seed bands, update geometry, alpha, times.

Curves show each optimizer at its chosen rate (every run when a trace has no validation split)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from charts.common import log_axes, title
from diagnostics.optimizer_traces import INTERVAL, OptimizerTracesResult

_PALETTE = ("#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
# Update measures: column, panel title, y scale, y axis title with its unit.
GEOMETRY = (("rms", "update RMS", "log", "RMS (weight units)"),
            ("effective_rank", "effective rank", "linear", "rank (dimensions)"),
            ("neuron_cv", "neuron-norm CV", "linear", "CV (std / mean)"),
            ("sv_cv", "singular-value CV (0: orthogonal)", "linear", "CV (std / mean)"))
PHASE_COLOURS = {"forward": "#4C78A8", "backward": "#72B7B2", "optimizer": "#F58518", "recorder": "#BAB0AC"}
# Builders the optimizer traces page draws at full width (the rest share a row).
FULL_WIDTH = ("held_out", "comparison", "update_geometry", "per_layer", "lr_sweep")


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


def _seed_lines(fig: go.Figure, frame: pd.DataFrame, x: str, y: str, colours: dict) -> None:
    """Per series: each seed's run as a thin line, and over them the mean over seeds at each recorded step
    (against the mean wall time there when ``x`` is a time: seeds record at different times)."""
    for name, g in frame.groupby("series", sort=False):
        colour = colours[name]
        for (_, seed), run_rows in g.groupby(["run_id", "seed"], sort=False):
            fig.add_trace(go.Scatter(x=run_rows[x], y=run_rows[y], mode="lines", name=f"{name}, seed {seed}",
                                     legendgroup=name, showlegend=False, line=dict(color=_rgba(colour, 0.45), width=1),
                                     hovertemplate=f"{name}, seed {seed}<br>{x}=%{{x:.4g}}<br>{y}=%{{y:.4g}}"
                                                   "<extra></extra>"))
        mean = g.groupby("step")[[x, y]].mean()
        fig.add_trace(go.Scatter(x=mean[x], y=mean[y], mode="lines", name=name, legendgroup=name, line_color=colour,
                                 hovertemplate=f"{name}, mean<br>{x}=%{{x:.4g}}<br>{y}=%{{y:.4g}}<extra></extra>"))


def ema(values, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average: ``s_t = w s_(t-1) + (1 - w) x_t`` from
    ``s_0 = 0``, divided by ``1 - w^t`` so the first points are not pulled towards 0. Non-finite
    values pass through and do not advance ``t``, as in TensorBoard; ``w = 0`` gives the values."""
    values = np.asarray(values, dtype=float)
    out = values.copy()
    s, t = 0.0, 0
    for i, x in enumerate(values):
        if np.isfinite(x):
            t += 1
            s = weight * s + (1 - weight) * x
            out[i] = s / (1 - weight ** t)
    return out


def _loss_unit(result: OptimizerTracesResult) -> str:
    """The built-in benchmarks' losses are cross-entropies in nats; a loaded trace's, whatever its loop logged."""
    return "nats" if result.params.get("bench") else "as logged"


def _seeds_note(result: OptimizerTracesResult, band: bool = True) -> str:
    n = result.runs()["seed"].nunique()
    note = f"mean over {n} seeds{', band min to max' if band else ''}" if n > 1 else "one seed"
    if not result.choices().empty and result.runs().groupby(["scope", "optimizer"])["lr"].nunique().max() > 1:
        note += "; each optimizer at its rate chosen on validation"
    return note


def loss_curves(result: OptimizerTracesResult, x: str = "step", log_y: bool = True, smoothing: float = 0.0,
                per_seed: bool = False) -> go.Figure:
    """Training loss against step or against training wall time (log x axis), on a log or linear y axis.

    ``smoothing`` in [0, 1) is the weight of TensorBoard's debiased EMA (:func:`ema`), applied to each run
    before the seeds are averaged. ``per_seed`` draws each seed's run under the mean instead of the
    min-max band. Losses <= 0 are left off a log axis with a note (:func:`charts.common.log_axes`).
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), not {smoothing}")
    steps = _series(result, result.table("step"))
    fig = go.Figure()
    if not steps.empty:
        steps = steps.sort_values(["run_id", "step"])
        if smoothing:
            steps["loss"] = steps.groupby("run_id")["loss"].transform(lambda v: ema(v.to_numpy(), smoothing))
        if x == "train_s" and steps["seed"].nunique() > 1 and not per_seed:
            # Wall times differ between seeds: average each series on its mean time per record.
            steps["train_s"] = steps.groupby(["series", "step"])["train_s"].transform("mean")
        colours = _colours(steps["series"])
        if per_seed:
            _seed_lines(fig, steps, x, "loss", colours)
        else:
            _band_traces(fig, steps, x, "loss", colours)
    label = "step" if x == "step" else "training wall time (s, recorder excluded)"
    notes = [_seeds_note(result, band=not per_seed)]
    if per_seed:
        notes.append("thin lines: single seeds")
    if smoothing:
        notes.append(f"EMA {smoothing:g} (debiased, as TensorBoard)")
    fig.update_layout(**title(f"Training loss against {'step' if x == 'step' else 'wall time'}", "; ".join(notes)),
                      xaxis_title=label, yaxis_title=f"training loss ({_loss_unit(result)})", xaxis_type="log",
                      yaxis_type="log" if log_y else "linear", legend=dict(orientation="h", y=-0.2))
    return log_axes(fig)


def held_out(result: OptimizerTracesResult) -> go.Figure:
    """Validation loss (what chooses checkpoints and rates) and test accuracy (chooses nothing) over training."""
    evals = _series(result, result.table("eval"))
    metrics = (("val_loss", "validation loss (chooses)", f"validation loss ({_loss_unit(result)})"),
               ("test_accuracy", "test accuracy (reported)", "test accuracy (share correct)"))
    panels = [(m, t, a) for m, t, a in metrics if m in evals]
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[t for _, t, _ in panels] or [""])
    if not evals.empty:
        colours = _colours(evals["series"])
        for i, (metric, _, axis) in enumerate(panels):
            _band_traces(fig, evals, "step", metric, colours, row=1, col=i + 1, legend=i == 0)
            fig.update_xaxes(title_text="step", row=1, col=i + 1)
            fig.update_yaxes(title_text=axis, row=1, col=i + 1)
    fig.update_layout(**title("Held-out curves", _seeds_note(result), full_width=True),
                      legend=dict(orientation="h", y=-0.2))
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
        **title("Test loss at each run's best-validation checkpoint",
                f"each optimizer at the rate chosen on validation; mean and {INTERVAL:.0%} t-interval over {seeds} "
                f"seed(s); {splits}", full_width=True),
        xaxis_title=f"test loss at best validation ({_loss_unit(result)})",
        yaxis=dict(title="optimizer", autorange="reversed"), height=200 + 38 * len(table))
    return fig


def _no_updates(fig: go.Figure) -> None:
    fig.add_annotation(text="no update records: every run ended before its first record<br>(raise the steps or "
                            "record updates more often)", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                       bgcolor="rgba(255,255,255,0.8)")


def update_geometry(result: OptimizerTracesResult) -> go.Figure:
    """The four update measures over training, averaged over the tracked matrices (and seeds)."""
    updates = _series(result, result.table("update"))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t, _, _ in GEOMETRY], vertical_spacing=0.16)
    if not updates.empty:
        colours = _colours(updates["series"])
        per_run = updates.groupby(["series", "run_id", "step"], sort=False)[[m for m, *_ in GEOMETRY]].mean().reset_index()
        for i, (metric, *_) in enumerate(GEOMETRY):
            r, c = divmod(i, 2)
            _band_traces(fig, per_run, "step", metric, colours, row=r + 1, col=c + 1, legend=i == 0)
    else:
        _no_updates(fig)
    # Titled with or without data: an empty grid still says what it would show.
    for i, (_, _, scale, axis) in enumerate(GEOMETRY):
        r, c = divmod(i, 2)
        fig.update_yaxes(type=scale, title_text=axis, row=r + 1, col=c + 1)
        fig.update_xaxes(title_text="step", row=r + 1, col=c + 1)
    fig.update_layout(title="Geometry of the applied updates dW, mean over tracked matrices", height=660,
                      legend=dict(orientation="h", y=-0.12))
    return log_axes(fig)


def per_layer(result: OptimizerTracesResult) -> go.Figure:
    """Per matrix, each measure's mean over records and seeds, one bar per optimizer."""
    updates = _series(result, result.table("update"))
    fig = make_subplots(rows=len(GEOMETRY), cols=1, subplot_titles=[t for _, t, _, _ in GEOMETRY], shared_xaxes=True,
                        vertical_spacing=0.05)
    if not updates.empty:
        colours = _colours(updates["series"])
        means = updates.groupby(["series", "matrix"], sort=False)[[m for m, *_ in GEOMETRY]].mean().reset_index()
        for i, (metric, *_) in enumerate(GEOMETRY):
            for name, g in means.groupby("series", sort=False):
                fig.add_trace(go.Bar(x=g["matrix"], y=g[metric], name=name, marker_color=colours[name],
                                     legendgroup=name, showlegend=i == 0), row=i + 1, col=1)
    else:
        _no_updates(fig)
    for i, (_, _, scale, axis) in enumerate(GEOMETRY):
        fig.update_yaxes(type=scale, title_text=axis, row=i + 1, col=1)
    fig.update_xaxes(title_text="tracked matrix", row=len(GEOMETRY), col=1)
    fig.update_layout(title="Update geometry per matrix (mean over training)", barmode="group",
                      height=220 * len(GEOMETRY) + 120, legend=dict(orientation="h", y=-0.08))
    return log_axes(fig)


def weight_alpha(result: OptimizerTracesResult) -> go.Figure:
    alphas = _series(result, result.table("alpha"))
    fig = go.Figure()
    if not alphas.empty:
        per_run = alphas.groupby(["series", "run_id", "step"], sort=False)["alpha"].mean().reset_index()
        _band_traces(fig, per_run, "step", "alpha", _colours(alphas["series"]))
    fig.add_hrect(y0=2, y1=6, fillcolor="#54A24B", opacity=0.07, line_width=0,
                  annotation_text="HTSR's well-trained range 2-6", annotation_position="top left")
    fig.update_layout(**title("Weight ESD alpha over training", "power-law alpha of each weight's ESD, mean over "
                              "tracked matrices"),
                      xaxis_title="step", yaxis_title="alpha (power-law exponent)", legend=dict(orientation="h", y=-0.2))
    return fig


def time_breakdown(result: OptimizerTracesResult) -> go.Figure:
    runs = _series(result, result.runs())
    fig = go.Figure()
    if not runs.empty and "ms_forward" in runs:
        means = runs.groupby("series", sort=False)[[f"ms_{p}" for p in PHASE_COLOURS]].mean()
        for phase, colour in PHASE_COLOURS.items():
            fig.add_trace(go.Bar(x=means.index, y=means[f"ms_{phase}"], name=phase, marker_color=colour,
                                 hovertemplate=f"{phase}: %{{y:.3f}} ms<extra></extra>"))
    fig.update_layout(title="Time per step (ms), mean over runs", barmode="stack", xaxis_title="optimizer",
                      yaxis_title="time per step (ms)", legend=dict(orientation="h", y=-0.2))
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
    fig.update_layout(**title("Learning-rate sweep on the validation split (star: the chosen rate)",
                              f"best validation loss per run; mean over {seeds} seed(s), bars min to max", full_width=True),
                      xaxis_title="learning rate", yaxis_title=f"best validation loss ({_loss_unit(result)})",
                      xaxis_type="log", yaxis_type="log")
    return log_axes(fig)


def figures(result: OptimizerTracesResult) -> list[go.Figure]:
    """Every chart of the result, the comparison and the sweep first when there are any."""
    head = [f for f in (comparison(result), lr_sweep(result)) if f is not None]
    return head + [loss_curves(result, "step"), loss_curves(result, "train_s"), held_out(result),
                   update_geometry(result), per_layer(result), weight_alpha(result), time_breakdown(result)]
