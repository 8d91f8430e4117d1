"""Charts for compare: alpha per layer over checkpoints, its mean and phases over steps, one model's
alpha against another's, the geometry of each layer's update from a base, and task-vector overlaps."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from charts.common import log_axes, title
from diagnostics.compare import CompareResult
from diagnostics.spectra import PHASES

PHASE_COLOURS = {"too-small": "#BAB0AC", "random-like": "#9ECAE9", "bulk+spikes": "#4C78A8",
                 "heavy-tailed": "#54A24B", "very-heavy-tailed": "#E45756"}
_MEAN, _ALL, _FAILED, _NULL = "#D62728", "#7F7F7F", "#E45756", "#555555"
# Builders the compare page draws at full width (the rest share a row).
FULL_WIDTH = ("alpha_heatmap", "mean_alpha_over_steps", "delta_geometry", "overlap_matrix")
# Rows of the heatmap: pixels per layer, and the height it stops growing at (plotly then thins the ticks).
ROW_PX, MAX_HEATMAP_PX = 16, 1800
# Characters of a model's name in an axis title; the whole name is in the hover and the subtitle.
SHORT_NAME = 28
# Beyond this many categories the ticks are left to plotly, which thins them; a tick array shows every one.
MAX_TICK_ARRAY = 40


def _number(value) -> float:
    """A cell as a float: None (JSON's NaN) and non-numbers become NaN."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _short(name: str, limit: int = SHORT_NAME) -> str:
    """The end of a long name (paths and checkpoint names differ at their ends)."""
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _ticks(names: list[str], limit: int = SHORT_NAME) -> dict:
    """Axis ticks that show the ends of long names (paths); the whole names stay the categories, so two
    names that end alike are still two rows, and their ticks show in full."""
    if len(names) > MAX_TICK_ARRAY:
        return {}
    short = [_short(n, limit) for n in names]
    return dict(tickmode="array", tickvals=names, ticktext=short if len(set(short)) == len(short) else names)


def ok_members(result: CompareResult) -> list[str]:
    """Names of the members whose spectra were computed, in the sweep's order (step order for a series)."""
    return [r["checkpoint"] for r in result.checkpoints if r.get("status") == "ok"]


def failed_members(result: CompareResult) -> list[dict]:
    return [r for r in result.checkpoints if r.get("status") != "ok"]


def derived_members(result: CompareResult) -> list[str]:
    """The derived models of the deltas table, in its order."""
    return list(dict.fromkeys(r["derived"] for r in result.deltas))


def layer_names(result: CompareResult) -> list[str]:
    """Every layer name, in the order the first member that has it lists its layers."""
    return list(dict.fromkeys(r["name"] for r in result.layers))


def _is_series(result: CompareResult) -> bool:
    ok = [r for r in result.checkpoints if r.get("status") == "ok"]
    return bool(ok) and all(math.isfinite(_number(r.get("step"))) for r in ok)


def _failed_note(result: CompareResult) -> str:
    n = len(failed_members(result))
    return f"; {n} that failed not shown (see the failures table)" if n else ""


def alpha_heatmap(result: CompareResult) -> go.Figure:
    """alpha of every layer (rows, model order) at every checkpoint (columns, step order); an x marks
    a cell whose power law is not trusted, a blank cell a layer with no fit."""
    members = ok_members(result)
    names = layer_names(result)
    col = {m: j for j, m in enumerate(members)}
    row = {n: i for i, n in enumerate(names)}
    z = np.full((len(names), len(members)), np.nan)
    hover = [["no fit" for _ in members] for _ in names]
    untrusted: list[tuple[str, str]] = []
    for r in result.layers:
        if r["checkpoint"] not in col:
            continue
        i, j = row[r["name"]], col[r["checkpoint"]]
        alpha = _number(r.get("alpha"))
        z[i, j] = alpha
        trusted = bool(r.get("pl_trust"))
        hover[i][j] = f"phase {r.get('phase') or '?'}, power law {'trusted' if trusted else 'not trusted'}"
        if math.isfinite(alpha) and not trusted:
            untrusted.append((r["checkpoint"], r["name"]))
    finite = z[np.isfinite(z)]
    # The colour range leaves out the few extreme fits (alpha of 20+ on a flat ESD) that would wash out the rest.
    low, high = (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if finite.size else (0.0, 1.0)
    fig = go.Figure(go.Heatmap(
        z=z, x=members, y=names, customdata=hover, colorscale="Viridis", zmin=low, zmax=max(high, low + 1e-9),
        colorbar=dict(title="alpha"), hoverongaps=False, xgap=1, ygap=1,
        hovertemplate="%{y}<br>%{x}<br>alpha = %{z:.3f}<br>%{customdata}<extra></extra>",
    ))
    if untrusted:
        # No legend: it would sit against the subtitle, which says what an x means.
        fig.add_trace(go.Scatter(
            x=[c for c, _ in untrusted], y=[n for _, n in untrusted], mode="markers", name="power law not trusted",
            marker=dict(symbol="x-thin", size=9, line=dict(width=2, color="white")), hoverinfo="skip",
            showlegend=False,
        ))
    fig.update_layout(
        **title("Power-law alpha per layer and checkpoint",
                f"{result.model_name}: {len(untrusted)} of {int(np.isfinite(z).sum())} fits not trusted (x); "
                f"blank: no fit; colours span the 2nd to 98th percentile{_failed_note(result)}", full_width=True),
        xaxis_title="checkpoint, in step order" if _is_series(result) else "model",
        yaxis_title="layer (model order)", xaxis=dict(type="category", **_ticks(members)), yaxis_type="category",
        yaxis_autorange="reversed", height=min(MAX_HEATMAP_PX, max(450, 200 + ROW_PX * len(names))),
    )
    return fig


def mean_alpha_over_steps(result: CompareResult) -> go.Figure:
    """Above: mean alpha of the trusted fits at each checkpoint over the trusted layers' own alphas,
    with the mean over every fit beside it; below: layers per phase, and how many are trusted."""
    ok = [r for r in result.checkpoints if r.get("status") == "ok"]
    series = _is_series(result)
    at = {r["checkpoint"]: int(_number(r["step"])) if series else r["checkpoint"] for r in ok}
    x = [at[r["checkpoint"]] for r in ok]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.06)
    trusted = [r for r in result.layers if r["checkpoint"] in at and r.get("pl_trust")
               and math.isfinite(_number(r.get("alpha")))]
    fig.add_trace(go.Scatter(
        x=[at[r["checkpoint"]] for r in trusted], y=[_number(r["alpha"]) for r in trusted], mode="markers",
        name="alpha of a trusted layer", marker=dict(color="rgba(76,120,168,0.35)", size=5),
        text=[r["name"] for r in trusted], hovertemplate="%{text}<br>alpha = %{y:.3f}<extra></extra>",
    ), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=x, y=[_number(r.get("mean_alpha")) for r in ok], mode="lines", name="mean alpha, every fit",
        line=dict(color=_ALL, dash="dash"), hovertemplate="mean of every fit %{y:.3f}<extra></extra>",
    ), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=x, y=[_number(r.get("mean_trusted_alpha")) for r in ok], mode="lines+markers",
        name="mean alpha, trusted fits",
        line=dict(color=_MEAN, width=3), text=[f"{int(_number(r['trusted_layers']))} of {int(_number(r['layers']))}"
                                              for r in ok],
        hovertemplate="mean of trusted fits %{y:.3f}<br>%{text} layers trusted<extra></extra>",
    ), row=1, col=1)
    for phase in PHASES:
        counts = [_number(r.get(f"n_{phase}")) for r in ok]
        if any(c > 0 for c in counts):
            fig.add_trace(go.Bar(x=x, y=counts, name=phase, marker_color=PHASE_COLOURS.get(phase, _ALL),
                                 hovertemplate=f"{phase}: %{{y}} layers<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(
        x=x, y=[_number(r.get("trusted_layers")) for r in ok], mode="lines+markers", name="trusted layers",
        line=dict(color="black"), marker=dict(symbol="diamond"), hovertemplate="%{y} layers trusted<extra></extra>",
    ), row=2, col=1)
    failed = [r for r in failed_members(result) if not series or math.isfinite(_number(r.get("step")))]
    if failed:
        fig.add_trace(go.Scatter(
            x=[int(_number(r["step"])) if series else r["checkpoint"] for r in failed], y=[0] * len(failed),
            mode="markers", name="failed checkpoint", marker=dict(symbol="x", size=11, color=_FAILED),
            text=[f"{r['checkpoint']}: {r.get('reason', '')}" for r in failed], hovertemplate="%{text}<extra></extra>",
        ), row=2, col=1)
    none_trusted = sum(1 for r in ok if not math.isfinite(_number(r.get("mean_trusted_alpha"))))
    note = f"; {none_trusted} checkpoint(s) with no trusted fit leave a gap" if none_trusted else ""
    fig.update_layout(
        **title("Mean alpha and phases over training" if series else "Mean alpha and phases per model",
                f"{result.model_name}: headline mean over trusted power laws only; points: each trusted layer's "
                f"alpha; bars: layers per phase{note}", full_width=True),
        barmode="stack", height=620, legend=dict(tracegroupgap=4),
        yaxis_title="alpha (power-law exponent)", yaxis2_title="layers (count)",
        xaxis2_title="training step" if series else "model",
    )
    # Steps as whole numbers (500,000), not with SI prefixes (500k); a list of models by their names' ends.
    if series:
        fig.update_xaxes(tickformat=",d")
    else:
        fig.update_xaxes(type="category", **_ticks(list(at.values())))
    return fig


def alpha_a_vs_b(result: CompareResult, a: str | None = None, b: str | None = None) -> go.Figure | None:
    """Per-layer alpha of member ``b`` against member ``a`` (default: the first and the last analysed),
    matched by layer name, over the line y = x; filled where both fits are trusted. None with fewer
    than two analysed members."""
    members = ok_members(result)
    if len(members) < 2:
        return None
    a, b = a or members[0], b or members[-1]
    of = {m: {r["name"]: r for r in result.layers if r["checkpoint"] == m} for m in (a, b)}
    names = [n for n in of[a] if n in of[b] and math.isfinite(_number(of[a][n].get("alpha")))
             and math.isfinite(_number(of[b][n].get("alpha")))]
    fig = go.Figure()
    both = [n for n in names if of[a][n].get("pl_trust") and of[b][n].get("pl_trust")]
    groups = (("trusted in both", both, "circle", "#4C78A8"),
              ("not trusted in one or both", [n for n in names if n not in both], "circle-open", "#9E9E9E"))
    for label, part, symbol, colour in groups:
        if not part:
            continue
        fig.add_trace(go.Scatter(
            x=[_number(of[a][n]["alpha"]) for n in part], y=[_number(of[b][n]["alpha"]) for n in part],
            mode="markers", name=label, marker=dict(symbol=symbol, size=8, color=colour), text=part,
            hovertemplate="%{text}<br>A: %{x:.3f}<br>B: %{y:.3f}<extra></extra>",
        ))
    values = [_number(of[m][n]["alpha"]) for m in (a, b) for n in names]
    if values:
        lo, hi = min(values), max(values)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x (no change)",
                                 line=dict(color=_NULL, dash="dash"), hoverinfo="skip"))
    fig.update_layout(
        **title("alpha per layer: B against A", f"A = {a}, B = {b}; {len(names)} layers fitted in both, "
                f"{len(both)} trusted in both (filled)"),
        xaxis_title=f"alpha at A: {_short(a)}", yaxis_title=f"alpha at B: {_short(b)}", height=480,
    )
    return fig


def delta_geometry(result: CompareResult, derived: str | None = None) -> go.Figure | None:
    """For one derived model (default: the first), each layer's update dW = W_derived - W_base in model
    order: its size relative to the base, its stable and effective rank, and the principal angles
    between its top-k singular subspaces and the base's, beside the angle a random subspace would make.
    None without deltas."""
    chosen = derived or next(iter(derived_members(result)), None)
    if chosen is None:
        return None
    rows = [r for r in result.deltas if r["derived"] == chosen]
    shown, left_out = [], {}
    for r in rows:
        if math.isfinite(_number(r.get("rel_size"))) and not r.get("reason"):
            shown.append(r)
        else:  # counted by the reason's kind ("only in base", "shape differs", "no change")
            why = str(r.get("reason") or "no value").split(":")[0]
            left_out[why] = left_out.get(why, 0) + 1
    x = list(range(len(shown)))
    names = [r["name"] for r in shown]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05, row_heights=[0.3, 0.3, 0.4])

    def markers(column: str, label: str, row: int, colour: str, symbol: str = "circle", size: int = 7) -> None:
        fig.add_trace(go.Scatter(
            x=x, y=[_number(r.get(column)) for r in shown], mode="markers", name=label, text=names,
            marker=dict(color=colour, symbol=symbol, size=size),
            hovertemplate=f"%{{text}}<br>{label}: %{{y:.4g}}<extra></extra>",
        ), row=row, col=1)

    markers("rel_size", "|dW|_F / |W_base|_F", 1, "#4C78A8")
    markers("stable_rank", "stable rank of dW", 2, "#F58518")
    markers("effective_rank", "effective rank of dW", 2, "#54A24B", "diamond")
    markers("angle_left_mean_deg", "mean angle, left (output side)", 3, "#4C78A8")
    markers("angle_left_min_deg", "smallest angle, left", 3, "#4C78A8", "triangle-down", 6)
    markers("angle_right_mean_deg", "mean angle, right (input side)", 3, "#E45756", "square", 6)
    # A random subspace's mean cos^2 against the base's top-k is overlap_left_null (k/N): drawn as the
    # angle with that cos^2, so "orthogonal" and "random" are told apart on the angle scale.
    null = [math.degrees(math.acos(math.sqrt(min(1.0, _number(r.get("overlap_left_null"))))))
            if math.isfinite(_number(r.get("overlap_left_null"))) else math.nan for r in shown]
    fig.add_trace(go.Scatter(
        x=x, y=null, mode="lines", name="random subspace, left (cos^2 = k/N)", line=dict(color=_NULL, dash="dot",
                                                                                        shape="hvh"),
        text=names, hovertemplate="%{text}<br>random subspace: %{y:.1f} degrees<extra></extra>",
    ), row=3, col=1)
    base = next((r["base"] for r in rows), "")
    skipped = "; ".join(f"{n} {why}" for why, n in left_out.items())
    k = result.params.get("k", "")
    fig.update_layout(
        **title(f"Update from the base, per layer: {_short(chosen, 40)}",
                f"dW = {chosen} - {base}; angles between the top-{k} singular subspaces of W_base and of dW "
                f"(0: inside the base's dominant directions, 90: orthogonal)"
                + (f"; not shown: {skipped}" if skipped else ""), full_width=True),
        height=760, yaxis_type="log", yaxis_title="relative size", yaxis2_title="rank of dW",
        yaxis3_title="angle (degrees)", yaxis3_range=[0, 92], xaxis3_title="layer (model order)",
    )
    return log_axes(fig)


def _overlap_matrix(result: CompareResult, column: str, layer: str | None) -> tuple[list[str], np.ndarray, float]:
    """The models, their ``column`` between every pair (mean over layers unless ``layer``; 1 on the
    diagonal: a task vector against itself), and the mean null."""
    models = list(dict.fromkeys([m for r in result.overlaps for m in (r["a"], r["b"])]))
    at = {m: i for i, m in enumerate(models)}
    sums, counts = np.zeros((len(models),) * 2), np.zeros((len(models),) * 2)
    nulls = []
    for r in result.overlaps:
        if layer is not None and r["name"] != layer:
            continue
        value = _number(r.get(column))
        if not math.isfinite(value):
            continue
        i, j = at[r["a"]], at[r["b"]]
        for p, q in ((i, j), (j, i)):
            sums[p, q] += value
            counts[p, q] += 1
        null = _number(r.get("null"))
        if math.isfinite(null):
            nulls.append(null)
    with np.errstate(invalid="ignore"):
        z = sums / counts
    np.fill_diagonal(z, 1.0)
    return models, z, float(np.mean(nulls)) if nulls else math.nan


def overlap_matrix(result: CompareResult, layer: str | None = None) -> go.Figure | None:
    """Task vectors of every pair of derived models: their cosine and the overlap of their top-k left
    singular subspaces (mean cos^2 of the principal angles), averaged over layers or for one ``layer``.
    None with fewer than two derived models."""
    if not result.overlaps:
        return None
    models, cosine, _ = _overlap_matrix(result, "cosine", layer)
    _, overlap, null = _overlap_matrix(result, "subspace_overlap", layer)
    # One y axis for both panels (the same models), so the left panel's colour bar has the gap to itself.
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, shared_yaxes=True,
                        subplot_titles=["cosine of the task vectors", "overlap of top-k subspaces (mean cos^2)"])
    fig.add_trace(go.Heatmap(z=cosine, x=models, y=models, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                             texttemplate="%{z:.2f}", colorbar=dict(title="cosine", x=0.455, thickness=14),
                             hovertemplate="%{y} · %{x}<br>cosine %{z:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=overlap, x=models, y=models, zmin=0, zmax=1, colorscale="Blues",
                             texttemplate="%{z:.2f}", colorbar=dict(title="overlap", x=1.0, thickness=14),
                             hovertemplate="%{y} · %{x}<br>overlap %{z:.3f}<extra></extra>"), row=1, col=2)
    where = f"layer {layer}" if layer is not None else f"mean over {len({r['name'] for r in result.overlaps})} layers"
    base = next((r["base"] for r in result.overlaps), "")
    fig.update_layout(
        **title("Task-vector overlap between fine-tunes",
                f"task vector = model - {base}; {where}; random subspaces overlap about "
                + (f"{null:.3g}" if math.isfinite(null) else "k/N") + " (k/N); 0: orthogonal, no interference",
                full_width=True),
        height=max(420, 200 + 40 * len(models)),
        xaxis_title="derived model", yaxis_title="derived model", xaxis2_title="derived model",
    )
    fig.update_xaxes(type="category", **_ticks(models, 24))
    fig.update_yaxes(type="category", autorange="reversed", **_ticks(models, 24))
    return fig


def figures(result: CompareResult) -> list[go.Figure]:
    """The report's charts: the alpha heatmap, mean alpha and phases over steps, the last member's
    alpha against the first's, the update geometry of the first and the last derived model, and the
    task-vector overlaps."""
    figs = [alpha_heatmap(result), mean_alpha_over_steps(result), alpha_a_vs_b(result)]
    derived = derived_members(result)
    figs += [delta_geometry(result, d) for d in dict.fromkeys(derived[:1] + derived[-1:])]
    figs.append(overlap_matrix(result))
    return [f for f in figs if f is not None]
