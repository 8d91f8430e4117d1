"""Charts for cylindrical steering: the cylinder's shape, the normal plane, the steering grid, baselines, layers."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.steering import SteeringResult

_BLUE, _ORANGE, _GREEN, _RED, _GREY = "#4C78A8", "#F58518", "#54A24B", "#E45756", "#BAB0AC"


def _num(value) -> float:
    """A number from a result field; None (a NaN after a JSON round trip) becomes NaN."""
    return math.nan if value is None else float(value)


def _where(result: SteeringResult) -> str:
    return f"'{result.concept.get('name', '?')}' at block {result.layer} of {result.model_name}"


def _split(result: SteeringResult, split: str) -> list[dict]:
    return [s for s in result.samples if s["split"] == split]


def summary(result: SteeringResult) -> dict:
    """The headline numbers the page shows as metrics (derived from the result, nothing recomputed)."""
    fit = _split(result, "fit")
    cos_fit = np.array([_num(s["cos_theta"]) for s in fit])
    reached = np.array([math.isfinite(_num(s["min_strength"])) for s in fit])
    work = result.work
    cached = bool(work.get("activations_cached"))
    passes = int(work.get("steering_passes", 0)) + (0 if cached else int(work.get("activation_passes", 0)))
    seconds = _num(work.get("steering_s", 0.0)) + (0.0 if cached else _num(work.get("activation_s", 0.0)))
    return {
        "mean_cos_fit": float(cos_fit.mean()) if cos_fit.size else math.nan,
        "mean_cos_heldout": _num(result.heldout.get("mean_cos_theta")),
        "plane_explained": float(sum(_num(e) for e in result.explained)),
        "reached": int(reached.sum()), "n_fit": len(fit),
        "passes": passes, "passes_per_s": passes / seconds if seconds > 0 else math.nan,
        "total_s": _num(result.timings.get("total_s")),
    }


def histograms(result: SteeringResult) -> go.Figure:
    """cos(theta_i) and |d_i|, fit and held-out triples overlaid."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cos(theta): alignment with the axis", "|d|: difference length"))
    for split, color in (("fit", _BLUE), ("held-out", _ORANGE)):
        rows = _split(result, split)
        if not rows:
            continue
        for col, field in ((1, "cos_theta"), (2, "norm")):
            fig.add_trace(go.Histogram(
                x=[_num(r[field]) for r in rows], name=f"{split} ({len(rows)})", legendgroup=split,
                showlegend=col == 1, marker_color=color, opacity=0.65, nbinsx=20,
                hovertemplate=f"{split}<br>%{{x}}: %{{y}} triples<extra></extra>",
            ), row=1, col=col)
    fig.add_vline(x=result.mean_norm, line_dash="dash", line_color="#888", row=1, col=2,
                  annotation_text="mean |d| (s = 1)", annotation_position="top right")
    fig.update_xaxes(title_text="cos(theta) (1 = along the axis)", row=1, col=1)
    fig.update_xaxes(title_text="|d| (hidden-state units)", row=1, col=2)
    fig.update_yaxes(title_text="triples", row=1, col=1)
    fig.update_layout(barmode="overlay", title=f"Difference vectors of {_where(result)}",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def normal_plane(result: SteeringResult) -> go.Figure:
    """Fit triples' normal components in the plane's 2-D basis, coloured by steerability, with sector rays."""
    fit = [s for s in _split(result, "fit") if math.isfinite(_num(s["x"])) and math.isfinite(_num(s["y"]))]
    reach = [s for s in fit if math.isfinite(_num(s["min_strength"]))]
    never = [s for s in fit if not math.isfinite(_num(s["min_strength"]))]
    radius = max((math.hypot(_num(s["x"]), _num(s["y"])) for s in fit), default=1.0) * 1.1 or 1.0
    k = len(result.sectors) or 1
    fig = go.Figure()
    for j in range(k):
        angle = 2 * math.pi * j / k
        fig.add_trace(go.Scatter(x=[0, radius * math.cos(angle)], y=[0, radius * math.sin(angle)], mode="lines",
                                 line=dict(color="#ccc", width=1, dash="dot"), hoverinfo="skip", showlegend=False))
        mid = angle + math.pi / k
        fig.add_annotation(x=0.92 * radius * math.cos(mid), y=0.92 * radius * math.sin(mid), text=str(j),
                           showarrow=False, font=dict(color="#999", size=10))

    def hover(rows):
        return [f"triple {r['index']} · sector {r['sector']}<br>{str(r['prompt'])[:60]}<br>"
                f"cos(theta) {_num(r['cos_theta']):.3f} · gain at max s {_num(r['gain_at_max']):.3g}" for r in rows]

    if never:
        fig.add_trace(go.Scatter(
            x=[_num(r["x"]) for r in never], y=[_num(r["y"]) for r in never], mode="markers",
            name=f"never reaches the threshold ({len(never)})", marker=dict(color=_GREY, size=8, symbol="circle-open"),
            text=hover(never), hovertemplate="%{text}<br>never reaches the threshold<extra></extra>",
        ))
    if reach:
        fig.add_trace(go.Scatter(
            x=[_num(r["x"]) for r in reach], y=[_num(r["y"]) for r in reach], mode="markers",
            name=f"reaches the threshold ({len(reach)})", text=hover(reach),
            customdata=[[_num(r["steerability"]), _num(r["min_strength"])] for r in reach],
            marker=dict(size=9, color=[_num(r["steerability"]) for r in reach], colorscale="Viridis", cmin=0,
                        colorbar=dict(title="steerability<br>(1 / s needed)")),
            hovertemplate="%{text}<br>steerability %{customdata[0]:.3g} (s = %{customdata[1]:.3g})<extra></extra>",
        ))
    threshold = _num(result.params.get("threshold"))
    explained = [_num(e) for e in result.explained] + [math.nan, math.nan]
    fig.update_layout(
        title=f"Normal plane of {_where(result)}<br><sup>{len(reach)} of {len(fit)} fit triples reach a concept gain of "
              f"{threshold:g} nats within the strengths tried; {k} sectors; the plane holds {explained[0]:.0%} + "
              f"{explained[1]:.0%} of the normal variance</sup>",
        xaxis_title="normal coordinate 1 (hidden-state units)", yaxis_title="normal coordinate 2 (hidden-state units)",
        yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.2),
    )
    return fig


def sector_polar(result: SteeringResult) -> go.Figure:
    """Mean steerability per sector of the normal plane (counts and mean gain in the hover)."""
    rows = result.sectors
    k = len(rows) or 1
    fig = go.Figure(go.Barpolar(
        theta=[(_num(r["phi_from_deg"]) + _num(r["phi_to_deg"])) / 2 for r in rows],
        r=[0.0 if not math.isfinite(_num(r["mean_steerability"])) else _num(r["mean_steerability"]) for r in rows],
        width=[360 / k] * len(rows),
        marker=dict(color=[_num(r["mean_gain"]) for r in rows], colorscale="Viridis",
                    colorbar=dict(title="mean gain<br>at max s (nats)"), line=dict(color="white", width=1)),
        customdata=[[r["sector"], r["count"], _num(r["mean_steerability"]), _num(r["mean_gain"])] for r in rows],
        hovertemplate="sector %{customdata[0]}: %{customdata[1]} triples<br>mean steerability %{customdata[2]:.3g}"
                      "<br>mean gain at max s %{customdata[3]:.3g} nats<extra></extra>",
    ))
    if not any(math.isfinite(_num(r["mean_steerability"])) and _num(r["mean_steerability"]) > 0 for r in rows):
        fig.add_annotation(text="no fit triple reaches the threshold:<br>every sector's steerability is 0",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                           bgcolor="rgba(255,255,255,0.8)")
    fig.update_layout(title=f"Steerability by sector, {_where(result)}<br><sup>radius: mean 1 / (strength needed); "
                            "0 where no triple reaches the threshold</sup>",
                      polar=dict(angularaxis=dict(direction="counterclockwise", rotation=0)))
    return fig


def _grid_heatmap(result: SteeringResult, field: str, title: str, colorbar: str, colorscale: str,
                  symmetric: bool) -> go.Figure:
    """A (penalty x strength) heatmap of one grid field, cells annotated; symmetric scales are centred on 0."""
    strengths = sorted({_num(g["s"]) for g in result.grid})
    penalties = sorted({_num(g["p"]) for g in result.grid})
    z = np.full((len(penalties), len(strengths)), np.nan)
    for g in result.grid:
        z[penalties.index(_num(g["p"])), strengths.index(_num(g["s"]))] = _num(g[field])
    finite = np.abs(z[np.isfinite(z)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{s:g}" for s in strengths], y=[f"{p:g}" for p in penalties], colorscale=colorscale,
        zmid=0 if symmetric else None, zmin=-limit if symmetric else None, zmax=limit if symmetric else None,
        texttemplate="%{z:.3g}", colorbar_title=colorbar,
        hovertemplate="s = %{x} · p = %{y}: %{z:.4g}<extra></extra>",
    ))
    samples = len(result.baseline_scores.get("grid_samples", []))
    fig.update_layout(
        title=f"{title}<br><sup>{_where(result)}; mean over {samples} triples spread around the normal plane</sup>",
        xaxis_title=f"strength s (x mean |d| = {result.mean_norm:.3g})",
        yaxis_title="penalty p (0: own direction, 1: axis only)", xaxis_type="category", yaxis_type="category",
    )
    return fig


def concept_gain(result: SteeringResult) -> go.Figure:
    return _grid_heatmap(result, "concept_gain", "Concept gain on held-out prompts",
                         "nats<br>(change of log P)", "RdBu", True)


def corruption(result: SteeringResult) -> go.Figure:
    return _grid_heatmap(result, "corruption", "Corruption of neutral text",
                         "nats / token<br>(change of NLL)", "RdBu_r", True)


def baseline_cosines(result: SteeringResult) -> go.Figure:
    names = list(result.baselines.get("names", []))
    cos = np.array([[_num(v) for v in row] for row in result.baselines.get("cosines", [])])
    fig = go.Figure(go.Heatmap(z=cos, x=names, y=names, zmin=-1, zmax=1, zmid=0, colorscale="RdBu",
                               texttemplate="%{z:.3f}", colorbar_title="cos",
                               hovertemplate="%{y} · %{x}: %{z:.4f}<extra></extra>"))
    b = result.baselines
    fig.update_layout(
        title=f"Axis against the baselines, {_where(result)}<br><sup>held-out accuracy: probe "
              f"{_num(b.get('probe_heldout_accuracy')):.0%}, axis {_num(b.get('axis_heldout_accuracy')):.0%}</sup>",
        yaxis_autorange="reversed", xaxis_title="direction", yaxis_title="direction",
    )
    return fig


def layer_sweep(result: SteeringResult) -> go.Figure | None:
    """Axis norm, mean cos(theta) and normal spread ratio at every block; None without a sweep."""
    rows = result.sweep
    if not rows:
        return None
    layers = [r["layer"] for r in rows]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("axis norm |a|", "mean cos(theta)", "normal spread / |a|"))
    series = ((1, "axis_norm", _BLUE), (2, "mean_cos_theta", _GREEN), (3, "spread_ratio", _RED))
    for row, field, color in series:
        fig.add_trace(go.Scatter(x=layers, y=[_num(r[field]) for r in rows], mode="lines+markers", line_color=color,
                                 name=field, showlegend=False,
                                 hovertemplate="block %{x}: %{y:.4g}<extra></extra>"), row=row, col=1)
        fig.add_vline(x=result.layer, line_dash="dash", line_color="#888", row=row, col=1)
    fig.update_yaxes(title_text="hidden-state units", row=1, col=1)
    fig.update_yaxes(title_text="cos", row=2, col=1)
    fig.update_yaxes(title_text="ratio", row=3, col=1)
    fig.update_xaxes(tickformat="d", dtick=1 if len(layers) <= 16 else None)
    fig.update_xaxes(title_text="block (decoder layer output)", row=3, col=1)
    fig.update_layout(title=f"Layer sweep for '{result.concept.get('name', '?')}' on {result.model_name}"
                            f"<br><sup>the {result.n_fit} fit triples at every block; dashed: the "
                            f"analysed block {result.layer}</sup>", height=620)
    return fig


def figures(result: SteeringResult) -> list[go.Figure]:
    """Histograms, normal plane, sectors, concept gain, corruption, baseline cosines, then the sweep if any."""
    figs = [histograms(result), normal_plane(result), sector_polar(result), concept_gain(result),
            corruption(result), baseline_cosines(result)]
    sweep = layer_sweep(result)
    return figs + ([sweep] if sweep is not None else [])
