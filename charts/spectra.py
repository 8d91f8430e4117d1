"""Charts for layer spectra: alpha per layer, one layer's ESD, alpha against spectral norm."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from charts.common import block_order, log_axes, title
from diagnostics.spectra import OVER_TRAINED_ALPHA, UNDER_TRAINED_ALPHA, SpectraResult, mp_bulk_density

CLASS_COLOURS = {"over-trained": "#D62728", "well-trained": "#2CA02C", "under-trained": "#FF7F0E"}
UNTRUSTED = "#9E9E9E"
# Builders the spectra page draws at full width (the rest share a row).
FULL_WIDTH = ("alpha_per_layer", "layer_esd")


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


def _interval(rows: list[dict]) -> dict | None:
    """Asymmetric error bars from alpha_ci_low / alpha_ci_high where the rows have them."""
    if not any(r.get("alpha_ci_low") is not None for r in rows):
        return None
    up = [(r["alpha_ci_high"] - r["alpha"]) if r.get("alpha_ci_high") is not None else 0.0 for r in rows]
    down = [(r["alpha"] - r["alpha_ci_low"]) if r.get("alpha_ci_low") is not None else 0.0 for r in rows]
    return dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1, width=0)


def alpha_per_layer(result: SpectraResult, names: list[str] | None = None) -> go.Figure:
    """alpha of each layer in model order with its interval, coloured by HTSR class; untrusted
    fits hollow and grey, their phase and verdict in the hover."""
    rows = _ordered_layers(result, names)
    fig = go.Figure()
    groups = [*CLASS_COLOURS, "untrusted fit"]
    for group in groups:
        picked = [
            (i, r) for i, r in enumerate(rows)
            if r["alpha"] is not None
            and (("untrusted fit" if not r["pl_trust"] else htsr_class(r["alpha"])) == group)
        ]
        if not picked:
            continue
        part = [r for _, r in picked]
        fig.add_trace(go.Scatter(
            x=[i for i, _ in picked], y=[r["alpha"] for r in part], mode="markers", name=group,
            marker=dict(color=CLASS_COLOURS.get(group, UNTRUSTED), size=8,
                        symbol="circle" if group != "untrusted fit" else "circle-open"),
            error_y=_interval(part),
            text=[f"{r['name']}<br>phase: {r.get('phase', '?')}<br>{r['pl_verdict']}" for r in part],
            hovertemplate="%{text}<br>alpha=%{y:.3f}<extra></extra>",
        ))
    for level in (OVER_TRAINED_ALPHA, UNDER_TRAINED_ALPHA):
        fig.add_hline(y=level, line_dash="dash", line_color="#555", annotation_text=f"alpha = {level:g}")
    trusted = sum(bool(r["pl_trust"]) for r in rows)
    fig.update_layout(
        **title("Power-law alpha per layer", f"{result.model_name}: {trusted} of {len(rows)} fits trusted; bars: "
                "alpha interval; hollow grey: untrusted fit", full_width=True),
        xaxis_title="layer (model order)", yaxis_title="alpha (power-law exponent)",
        legend_title="HTSR class",
    )
    return fig


def _log_hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=edges)
    widths = np.diff(edges)
    return counts / (values.size * widths)


def layer_esd(result: SpectraResult, name: str) -> go.Figure:
    """One layer's ESD on log-log axes, drawn so the phase can be read off: the MP law fitted to the
    bulk and its edge, the fitted power-law tail with its alpha interval, xmin, the detX boundary,
    the shuffled-matrix ESD and the convolution operator's ESD when they were computed."""
    row = next(r for r in result.layers if r["name"] == name)
    esd = result.esds[name]
    evals = np.asarray(esd["evals"], dtype=np.float64)
    positive = evals[evals > 0]
    rand = np.asarray(esd.get("rand_evals") or [], dtype=np.float64)
    op = np.asarray(esd.get("op_evals") or [], dtype=np.float64)
    everything = np.concatenate([positive, rand[rand > 0], op[op > 0]])
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
    if op.size:
        od = _log_hist(op[op > 0], edges)
        fig.add_trace(go.Scatter(x=centres[od > 0], y=od[od > 0], mode="lines",
                                 name="conv operator ESD (s^2, same scale factors as the slices)",
                                 line=dict(color="#8C564B", shape="hvh", dash="dash")))
    sigma, edge = row.get("mp_sigma"), row.get("mp_edge")
    if sigma and edge:
        # The MP law fitted to the bulk, weighted by the bulk's share so it overlays the histogram.
        share = 1.0 - row["num_above_mp_edge"] / max(1, row["num_evals"])
        N, M = row["N"], row["M"]
        lo = max((sigma * (math.sqrt(N) - math.sqrt(M))) ** 2, float(positive.min()))
        x = np.logspace(math.log10(lo), math.log10((sigma * (math.sqrt(N) + math.sqrt(M))) ** 2), 200)
        y = share * mp_bulk_density(x, sigma, N, M)
        keep = y > y_span[0]
        fig.add_trace(go.Scatter(x=x[keep], y=y[keep], mode="lines", name=f"MP bulk fit (sigma = {sigma:.3g})",
                                 line=dict(color="#2CA02C", width=2)))
        vertical(edge, "MP edge", "#2CA02C", "dot")
    alpha, xmin = row.get("alpha"), row.get("xmin")
    if alpha is not None and xmin is not None and math.isfinite(alpha):
        # Fitted tail density, scaled by the tail's share of the ESD so it overlays the histogram.
        tail_share = row["num_pl_spikes"] / max(1, row["num_evals"])
        x = np.logspace(math.log10(xmin), math.log10(row["xmax"]), 50)

        def law(a: float) -> np.ndarray:
            return tail_share * (a - 1) / xmin * (x / xmin) ** (-a)

        low, high = row.get("alpha_ci_low"), row.get("alpha_ci_high")
        if low is not None and high is not None and low > 1:
            band = np.concatenate([law(low), law(high)[::-1]])
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=band, fill="toself", mode="lines",
                                     line=dict(width=0), fillcolor="rgba(214,39,40,0.18)", hoverinfo="name",
                                     name=f"alpha interval [{low:.2f}, {high:.2f}] ({row.get('alpha_ci_method', '')})"))
        fig.add_trace(go.Scatter(x=x, y=law(alpha), mode="lines", name=f"power law, alpha={alpha:.2f}",
                                 line=dict(color="#D62728", width=3)))
        vertical(xmin, "xmin", "#D62728", "dash")
    if row.get("detX_val") is not None and row["detX_val"] > 0:
        vertical(row["detX_val"], "detX boundary", "#9467BD", "dashdot")
    notes = [f"{row.get('phase', '?')}", f"power law {'trusted' if row['pl_trust'] else 'not trusted'}"]
    if esd.get("subsampled"):
        notes.append("eigenvalues quantile-subsampled")
    if positive.size < evals.size:
        notes.append(f"{evals.size - positive.size} eigenvalues <= 0 not shown (log axis)")
    fig.update_layout(
        **title(f"ESD of {name}", "; ".join(notes), full_width=True), xaxis_type="log", yaxis_type="log",
        xaxis_title="eigenvalue lambda of W^T W (squared singular value)", yaxis_title="density (per unit of lambda)",
    )
    return log_axes(fig)


def alpha_vs_spectral_norm(result: SpectraResult, names: list[str] | None = None) -> go.Figure:
    rows = [r for r in _ordered_layers(result, names) if r["alpha"] is not None]
    fig = go.Figure()
    for kind in sorted({r["kind"] for r in rows}):
        part = [r for r in rows if r["kind"] == kind]
        fig.add_trace(go.Scatter(
            x=[r["log_spectral_norm"] for r in part], y=[r["alpha"] for r in part], mode="markers", name=kind,
            marker=dict(symbol=["circle" if r["pl_trust"] else "circle-open" for r in part], size=8),
            text=[f"{r['name']}<br>phase: {r.get('phase', '?')}" for r in part],
            hovertemplate="%{text}<br>log10 lambda_max=%{x:.3f}<br>alpha=%{y:.3f}<extra></extra>",
        ))
    fig.update_layout(**title("alpha against log spectral norm", "hollow: untrusted fit"),
                      xaxis_title="log10 lambda_max (largest eigenvalue of W^T W)",
                      yaxis_title="alpha (power-law exponent)", legend_title="kind")
    return fig


def mean_alpha_per_block(result: SpectraResult) -> go.Figure:
    """Mean alpha of the trusted fits in each block (a block with none has no bar)."""
    by_block = result.summary.get("by_block", {})
    order = block_order(by_block)
    text = [f"{by_block[b].get('trusted', by_block[b]['count'])} of {by_block[b]['count']}" for b in order]
    fig = go.Figure(go.Bar(x=order, y=[by_block[b]["alpha"] for b in order], marker_color="#4C78A8", text=text,
                           hovertemplate="block %{x}<br>mean alpha %{y:.3f}<br>%{text} layers trusted<extra></extra>"))
    fig.update_layout(**title("Mean alpha per block", "trusted fits only; bar label: trusted of all layers"),
                      xaxis_title="block", yaxis_title="mean alpha (power-law exponent)", xaxis_type="category")
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
