"""Charts for layer spectra: alpha per layer, one layer's ESD, alpha against spectral norm."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from charts.common import block_order
from diagnostics.spectra import OVER_TRAINED_ALPHA, UNDER_TRAINED_ALPHA, SpectraResult

CLASS_COLOURS = {"over-trained": "#D62728", "well-trained": "#2CA02C", "under-trained": "#FF7F0E"}
UNTRUSTED = "#9E9E9E"


def htsr_class(alpha: float | None) -> str:
    if alpha is None or not math.isfinite(alpha):
        return "no fit"
    if alpha < OVER_TRAINED_ALPHA:
        return "over-trained"
    if alpha > UNDER_TRAINED_ALPHA:
        return "under-trained"
    return "well-trained"


def _ordered_layers(result: SpectraResult, names: list[str] | None = None) -> list[dict]:
    rows = [r for r in result.layers if names is None or r["name"] in names]
    order = {b: i for i, b in enumerate(block_order(r["block"] for r in rows))}
    return sorted(rows, key=lambda r: order[r["block"]])


def alpha_per_layer(result: SpectraResult, names: list[str] | None = None) -> go.Figure:
    """alpha of each layer in model order, coloured by HTSR class; untrusted fits in grey."""
    rows = _ordered_layers(result, names)
    fig = go.Figure()
    groups = {**{c: c for c in CLASS_COLOURS}, "untrusted fit": "untrusted fit"}
    for group in groups:
        picked = [
            (i, r) for i, r in enumerate(rows)
            if r["alpha"] is not None
            and (("untrusted fit" if not r["pl_trust"] else htsr_class(r["alpha"])) == group)
        ]
        if not picked:
            continue
        fig.add_trace(go.Scatter(
            x=[i for i, _ in picked], y=[r["alpha"] for _, r in picked], mode="markers", name=group,
            marker=dict(color=CLASS_COLOURS.get(group, UNTRUSTED), size=8,
                        symbol="circle" if group != "untrusted fit" else "circle-open"),
            text=[f"{r['name']}<br>{r['pl_verdict']}" for _, r in picked],
            hovertemplate="%{text}<br>alpha=%{y:.3f}<extra></extra>",
        ))
    for level in (OVER_TRAINED_ALPHA, UNDER_TRAINED_ALPHA):
        fig.add_hline(y=level, line_dash="dash", line_color="#555", annotation_text=f"alpha = {level:g}")
    fig.update_layout(
        title=f"Power-law alpha per layer: {result.model_name}", xaxis_title="layer (model order)",
        yaxis_title="alpha", legend_title="HTSR class",
    )
    return fig


def _log_hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    widths = np.diff(edges)
    return counts / (values.size * widths)


def layer_esd(result: SpectraResult, name: str) -> go.Figure:
    """One layer's ESD on log-log axes with the fitted power law, xmin, the MP edge, the detX
    boundary and the shuffled-matrix ESD when it was computed."""
    row = next(r for r in result.layers if r["name"] == name)
    esd = result.esds[name]
    evals = np.asarray(esd["evals"], dtype=np.float64)
    positive = evals[evals > 0]
    rand = np.asarray(esd["rand_evals"] or [], dtype=np.float64)
    everything = np.concatenate([positive, rand[rand > 0]]) if rand.size else positive
    edges = np.logspace(np.log10(everything.min()), np.log10(everything.max()), 60)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig = go.Figure()
    density = _log_hist(positive, edges)
    y_span = [float(density[density > 0].min()) / 3, float(density.max()) * 3]

    def vertical(x: float, label: str, colour: str, dash: str) -> None:
        # A two-point trace, not add_vline: vline annotations land in the wrong place on log axes.
        fig.add_trace(go.Scatter(x=[x, x], y=y_span, mode="lines", name=f"{label} = {x:.4g}",
                                 line=dict(color=colour, dash=dash), hoverinfo="name"))

    fig.add_trace(go.Scatter(x=centres[density > 0], y=density[density > 0], mode="lines+markers", name="ESD",
                             line=dict(color="#1F77B4", shape="hvh")))
    if rand.size:
        rd = _log_hist(rand[rand > 0], edges)
        fig.add_trace(go.Scatter(x=centres[rd > 0], y=rd[rd > 0], mode="lines", name="shuffled (randomised) ESD",
                                 line=dict(color="#FF7F0E", shape="hvh", dash="dot")))
    alpha, xmin = row.get("alpha"), row.get("xmin")
    if alpha is not None and xmin is not None and math.isfinite(alpha):
        # Fitted tail density, scaled by the tail's share of the ESD so it overlays the histogram.
        tail_share = row["num_pl_spikes"] / max(1, row["num_evals"])
        x = np.logspace(math.log10(xmin), math.log10(row["xmax"]), 50)
        y = tail_share * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"power law, alpha={alpha:.2f}",
                                 line=dict(color="#D62728", width=3)))
        vertical(xmin, "xmin", "#D62728", "dash")
    bulk = row.get("bulk_max") if row.get("bulk_max") is not None else row.get("mp_edge")
    if bulk is not None and math.isfinite(bulk) and bulk > 0:
        label = "MP bulk edge (fit)" if row.get("bulk_max") is not None else "MP edge (random-matrix)"
        vertical(bulk, label, "#2CA02C", "dot")
    if row.get("detX_val") is not None and row["detX_val"] > 0:
        vertical(row["detX_val"], "detX boundary", "#9467BD", "dashdot")
    note = " (quantile-subsampled)" if esd.get("subsampled") else ""
    fig.update_layout(
        title=f"ESD of {name}: {row['pl_verdict']}{note}", xaxis_type="log", yaxis_type="log",
        xaxis_title="eigenvalue lambda", yaxis_title="density",
    )
    return fig


def alpha_vs_spectral_norm(result: SpectraResult, names: list[str] | None = None) -> go.Figure:
    rows = [r for r in _ordered_layers(result, names) if r["alpha"] is not None]
    fig = go.Figure()
    for kind in sorted({r["kind"] for r in rows}):
        part = [r for r in rows if r["kind"] == kind]
        fig.add_trace(go.Scatter(
            x=[r["log_spectral_norm"] for r in part], y=[r["alpha"] for r in part], mode="markers", name=kind,
            text=[r["name"] for r in part], hovertemplate="%{text}<br>log10 lambda_max=%{x:.3f}<br>alpha=%{y:.3f}<extra></extra>",
        ))
    fig.update_layout(title="alpha against log spectral norm", xaxis_title="log10 lambda_max", yaxis_title="alpha",
                      legend_title="kind")
    return fig


def mean_alpha_per_block(result: SpectraResult) -> go.Figure:
    by_block = result.summary.get("by_block", {})
    order = block_order(by_block)
    fig = go.Figure(go.Bar(x=order, y=[by_block[b]["alpha"] for b in order], marker_color="#4C78A8",
                           text=[by_block[b]["count"] for b in order], hovertemplate="block %{x}<br>mean alpha %{y:.3f}<br>%{text} layers<extra></extra>"))
    fig.update_layout(title="Mean alpha per block", xaxis_title="block", yaxis_title="mean alpha", xaxis_type="category")
    return fig


def figures(result: SpectraResult) -> list[go.Figure]:
    """The report's charts: alpha per layer, alpha against spectral norm, mean alpha per block,
    and the ESD of the layer with the smallest and the largest alpha."""
    figs = [alpha_per_layer(result), alpha_vs_spectral_norm(result), mean_alpha_per_block(result)]
    fitted = [r for r in result.layers if r["alpha"] is not None and math.isfinite(r["alpha"])]
    if fitted:
        lo = min(fitted, key=lambda r: r["alpha"])["name"]
        hi = max(fitted, key=lambda r: r["alpha"])["name"]
        figs += [layer_esd(result, n) for n in dict.fromkeys([lo, hi])]
    return figs
