"""Charts for latent directions: spectrum, eigengaps, the two SeFa variants, projector error, heatmaps, traversals."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from charts.common import log_axes, title
from diagnostics.directions import DirectionsResult

_BLUE, _ORANGE, _GREEN = "#4C78A8", "#F58518", "#54A24B"
_PALETTE = ("#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
# Builders the directions page draws at full width (the rest share a row).
FULL_WIDTH = ("traversal",)
# Gaps, errors and KL values can be tiny: 10^k ticks, not SI prefixes such as "10µ".
_POWER = dict(exponentformat="power", showexponent="all")


def _matrix_name(result: DirectionsResult) -> str:
    names = [m["name"] for m in result.matrices]
    return names[0] if len(names) == 1 else f"{len(names)} stacked matrices"


def spectrum(result: DirectionsResult) -> go.Figure:
    s = np.asarray(result.singular_values, dtype=float)
    idx = np.arange(1, len(s) + 1)
    fig = go.Figure(go.Scatter(x=idx, y=s, mode="lines+markers", marker_size=3, line_color=_BLUE, name="singular value of A"))
    fig.add_vline(x=result.k + 0.5, line_dash="dash", line_color="#888",
                  annotation_text=f"k = {result.k}", annotation_position="top right")
    fig.update_layout(
        **title("Singular values of A (raw)", f"{_matrix_name(result)} · rank {result.rank} · effective rank "
                f"{result.effective_rank:.1f} · stable rank {result.stable_rank:.1f}"),
        xaxis_title="index (largest first)", yaxis_title="singular value of A (weight units)", yaxis_type="log",
        showlegend=False,
    )
    return log_axes(fig)


def _unresolved_note(result: DirectionsResult) -> str:
    deg = result.degeneracy
    parts = [f"{label} {', '.join(map(str, result.variants[label]['unresolved']))}"
             for label in ("raw", "rownorm") if result.variants[label]["unresolved"]]
    return f"unresolved (eigengap <= {deg['threshold']:.3g}): {'; '.join(parts)}" if parts else "every direction resolved"


def eigengaps(result: DirectionsResult) -> go.Figure:
    """Relative gap to the next eigenvalue per direction, for A^T A and for the row-normalised matrix."""
    idx = [str(i) for i in range(1, result.k + 1)]
    fig = go.Figure()
    for label, name, color in (("raw", "A^T A (raw, the paper's closed form)", _BLUE),
                               ("rownorm", "R^T R, R = A with unit rows (genforce)", _ORANGE)):
        gaps = np.asarray(result.variants[label]["eigengaps"], dtype=float)
        resolved = result.variants[label]["resolved"]
        fig.add_trace(go.Bar(
            x=idx, y=gaps, name=name, marker_color=color,
            marker_pattern_shape=["" if ok else "/" for ok in resolved],
            customdata=["resolved" if ok else "unresolved" for ok in resolved],
            hovertemplate=f"{label} %{{x}}: gap %{{y:.3g}} (%{{customdata}})<extra></extra>",
        ))
    deg = result.degeneracy
    fig.add_hline(y=deg["threshold"], line_dash="dash", line_color="#888",
                  annotation_text=f"sqrt(2/n) = {deg['threshold']:.3g}, n = {deg['samples']} rows")
    fig.update_layout(
        **title("Relative eigengap (l_i - l_(i+1)) / l_i", f"{_unresolved_note(result)} · hatched: unresolved"),
        xaxis_title="direction", yaxis=dict(title="relative gap to the next eigenvalue", **_POWER), barmode="group",
        xaxis_type="category", legend=dict(orientation="h", y=-0.25),
    )
    return fig


def subspace(result: DirectionsResult) -> go.Figure:
    """Cosines of the principal angles between the rownorm and raw top-k subspaces."""
    cos = np.asarray(result.principal_cosines, dtype=float)
    degrees = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    fig = go.Figure(go.Bar(x=[str(i) for i in range(1, len(cos) + 1)], y=cos, marker_color=_GREEN, customdata=degrees,
                           hovertemplate="angle %{x}: cos %{y:.4f} (%{customdata:.2f} degrees)<extra></extra>"))
    fig.update_layout(
        **title(f"Top-{result.k} subspaces, rownorm against raw: overlap {result.subspace_overlap:.4f}",
                "cosines of the principal angles; overlap = mean squared cosine"),
        xaxis_title="principal angle", yaxis_title="cos of the angle", yaxis_range=[0, 1.02], xaxis_type="category",
    )
    return fig


def rownorm_vs_raw(result: DirectionsResult) -> go.Figure:
    cos = np.asarray(result.rownorm_vs_raw, dtype=float)
    labels = [str(i + 1) for i in range(result.k)]
    fig = go.Figure(go.Heatmap(z=cos, x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues", colorbar_title="|cos|",
                               hovertemplate="rownorm %{y} · raw %{x}: %{z:.4f}<extra></extra>"))
    caveat = ("near-degenerate: single directions are not determined, read the subspace overlap"
              if result.degeneracy["near_degenerate"] else "every direction resolved in both")
    fig.update_layout(
        **title("Directions: rownorm (genforce) against raw (A^T A)", caveat),
        xaxis_title="raw direction (eigenvector of A^T A)", yaxis_title="rownorm direction", yaxis_autorange="reversed",
        xaxis_type="category", yaxis_type="category",
    )
    return fig


def projector_error(result: DirectionsResult) -> go.Figure:
    ks = [row["k"] for row in result.projector]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ks, y=[r["equal_sv_relative"] for r in result.projector], mode="lines+markers",
                             name="equal singular values (closed form)", line_color=_ORANGE))
    fig.add_trace(go.Scatter(x=ks, y=[r["eckart_young_relative"] for r in result.projector], mode="lines+markers",
                             name="best rank k (Eckart-Young)", line_color=_BLUE, line_dash="dot"))
    frobenius = float(np.sqrt(np.sum(np.square(result.singular_values))))
    fig.add_trace(go.Scatter(x=[result.k], y=[result.fit["error"] / frobenius], mode="markers", name="fitted Householder projector",
                             marker=dict(color=_GREEN, size=12, symbol="x")))
    fig.update_layout(
        **title("Distance to the nearest rank-k projector", "relative to ||A||_F; c P: c times a rank-k partial "
                "isometry"),
        xaxis_title="k (rank)", yaxis=dict(title="||A - c P||_F / ||A||_F", **_POWER), xaxis_type="log",
        legend=dict(orientation="h", y=-0.25),
    )
    return log_axes(fig)


def fit_progress(result: DirectionsResult) -> go.Figure:
    captured = result.fit["captured"]
    fig = go.Figure(go.Scatter(x=list(range(1, len(captured) + 1)), y=captured, mode="lines", line_color=_GREEN))
    fig.add_hline(y=1.0, line_dash="dash", line_color="#888", annotation_text="s_1 + ... + s_k")
    fig.update_layout(
        title="Householder projector fit (L-BFGS)", xaxis_title="objective evaluation",
        yaxis_title="tr(U^T A V) / (s_1 + ... + s_k)",
    )
    return fig


def _heatmap(z, heading: str, subtitle: str, colorbar: str, symmetric: bool, tickformat: str = ".2f") -> go.Figure:
    z = np.asarray(z, dtype=float)
    labels = [str(i + 1) for i in range(z.shape[0])]
    limit = float(np.abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale="RdBu" if symmetric else "Blues", reversescale=symmetric,
        zmin=-limit if symmetric else 0, zmax=limit, colorbar_title=colorbar, colorbar_tickformat=tickformat,
        hovertemplate="%{y} · %{x}: %{z:.3g}<extra></extra>",
    ))
    fig.update_layout(**title(heading, subtitle), yaxis_autorange="reversed", xaxis_type="category",
                      yaxis_type="category", xaxis_title="direction", yaxis_title="direction")
    return fig


def orthogonality(result: DirectionsResult) -> go.Figure:
    worst = float(np.abs(np.asarray(result.gram_minus_identity)).max())
    # Entries are rounding-level; SI prefixes would label them "1f" (femto).
    return _heatmap(result.gram_minus_identity, f"Orthogonality N^T N - I, {result.chosen} directions",
                    f"max |entry| {worst:.2g}", "entry", True, ".0e")


def crosstalk(result: DirectionsResult) -> go.Figure:
    cos = np.asarray(result.crosstalk_cos, dtype=float)
    off = cos[~np.eye(len(cos), dtype=bool)]
    worst = float(np.abs(off).max()) if off.size else 0.0
    return _heatmap(cos, "Output cross-talk cos(A n_i, A n_j)",
                    f"{result.chosen} directions; max off-diagonal {worst:.3f}", "cos", True)


def traversal(result: DirectionsResult) -> go.Figure | None:
    """Next-token KL (language models) or embedding shift (encoders) against alpha, per direction."""
    rows = result.traversal.get("rows") or []
    if not rows:
        return None
    lm = "kl" in rows[0]
    fig = make_subplots(rows=1, cols=2 if lm else 1, subplot_titles=(
        ("KL(p_0 || p_alpha), mean over prompts", "path length KL / alpha^2") if lm
        else ("mean shift of the probe embeddings",)
    ))
    for n, j in enumerate(sorted({r["direction"] for r in rows})):
        mine = [r for r in rows if r["direction"] == j]
        x = [r["alpha"] for r in mine]
        line = {"color": _PALETTE[n % len(_PALETTE)]}
        fig.add_trace(go.Scatter(x=x, y=[r["kl" if lm else "shift"] for r in mine], mode="lines+markers",
                                 name=f"direction {j}", legendgroup=str(j), line=line), row=1, col=1)
        if lm:
            ratio = [(r["alpha"], r["kl_per_alpha2"]) for r in mine if r["alpha"] != 0]
            fig.add_trace(go.Scatter(x=[a for a, _ in ratio], y=[v for _, v in ratio], mode="lines+markers", line=line,
                                     name=f"direction {j}", legendgroup=str(j), showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="alpha (x mean input norm)")
    fig.update_yaxes(title_text="KL (nats)" if lm else "||e_alpha - e_0|| (embedding units)", **_POWER, row=1, col=1)
    if lm:
        fig.update_yaxes(title_text="KL / alpha^2 (nats)", **_POWER, row=1, col=2)
    fig.update_layout(title="Traversal along the chosen directions")
    return fig


def comparison(result: DirectionsResult) -> list[go.Figure]:
    """The two variants compared, the headline first: subspaces when the spectrum is near-degenerate."""
    pair = [subspace(result), rownorm_vs_raw(result)]
    return pair if result.degeneracy["headline"] == "subspace_overlap" else pair[::-1]


def figures(result: DirectionsResult) -> list[go.Figure]:
    figs = [spectrum(result), eigengaps(result), *comparison(result), projector_error(result), fit_progress(result),
            orthogonality(result), crosstalk(result)]
    walk = traversal(result)
    return figs + ([walk] if walk is not None else [])
