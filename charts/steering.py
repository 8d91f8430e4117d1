"""Charts for cylindrical steering: gains and rates beside their random null under both protocols,
coherence, the cylinder's shape, the normal plane, baselines and the layer sweep."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from charts.common import log_axes, title
from diagnostics.steering import DIRECTION_NAMES, SteeringResult

_BLUE, _ORANGE, _GREEN, _RED, _GREY = "#4C78A8", "#F58518", "#54A24B", "#E45756", "#BAB0AC"
_PURPLE, _BROWN, _TEAL = "#B279A2", "#9D755D", "#72B7B2"
_DIRECTIONS = (("axis", _BLUE), ("pc1", _GREEN), ("probe", _PURPLE), ("control", _BROWN))
# One colour per self-steering penalty; the axis keeps blue in every chart.
_PENALTY_COLOURS = (_ORANGE, _RED, _TEAL, "#EECA3B", "#FF9DA6", "#79706E")
_NULL_FILL = "rgba(150, 150, 150, 0.25)"
_GAIN = "gain: change of the log expected number of concept words in a teacher-forced window of the response"
_HEIGHT = 600  # the wrapped subtitle and the legend below need room beside the plot
# Builders the steering page draws at full width (the rest share a row).
FULL_WIDTH = ("layer_sweep",)


def _num(value) -> float:
    """A number from a result field; None (a NaN after a JSON round trip) becomes NaN."""
    return math.nan if value is None else float(value)


def _where(result: SteeringResult) -> str:
    return f"'{result.concept.get('name', '?')}' at block {result.layer} of {result.model_name}"


def _split(result: SteeringResult, split: str) -> list[dict]:
    return [s for s in result.samples if s["split"] == split]


def unit_label(result: SteeringResult) -> str:
    """What one unit of strength is: 'x |a|' (the reference) or 'x mean |d|'."""
    return "x |a|" if result.params.get("unit") == "axis" else "x mean |d|"


def _strength_axis(result: SteeringResult) -> str:
    return f"strength s ({unit_label(result)}; 1 = {_num(result.unit_value):.3g} hidden-state units)"


def _prompts(result: SteeringResult) -> str:
    return f"{result.n_steered} held-out prompts"


def _penalty_colour(index: int) -> str:
    return _PENALTY_COLOURS[index % len(_PENALTY_COLOURS)]


def _band(block: dict | None) -> dict:
    block = block or {}
    return {k: _num(block.get(k)) for k in ("value", "lo", "hi")}


def summary(result: SteeringResult) -> dict:
    """The headline numbers the page shows as metrics (derived from the result, nothing recomputed)."""
    head, u, work = result.summary, result.uncertainty, result.work
    cached = bool(work.get("activations_cached"))
    passes = int(work.get("steering_passes", 0)) + (0 if cached else int(work.get("activation_passes", 0)))
    seconds = _num(work.get("steering_s", 0.0)) + (0.0 if cached else _num(work.get("activation_s", 0.0)))
    selfs = result.self_steering
    return {
        "verdict": head.get("verdict", ""), "concept_in_text": bool(head.get("concept_in_text")),
        "best_axis": head.get("best_axis"), "best_self": head.get("best_self"),
        "ppl_limit": _num(head.get("ppl_limit")),
        "unsteered": {"value": _num(result.unsteered.get("rate")), "lo": _num(result.unsteered.get("rate_lo")),
                      "hi": _num(result.unsteered.get("rate_hi"))},
        "split_half_cos": _band(u.get("split_half_cos")), "mean_cos_heldout": _band(u.get("mean_cos_heldout")),
        "mean_cos_fit_loo": _band(u.get("mean_cos_fit_loo")),
        "self_penalty": _num(selfs[0]["p"]) if selfs else math.nan,
        "self_reaching": sum(math.isfinite(_num(r["min_strength"])) for r in selfs), "n_steered": len(selfs),
        "unit": unit_label(result),
        "passes": passes, "passes_per_s": passes / seconds if seconds > 0 else math.nan,
        "total_s": _num(result.timings.get("total_s")),
    }


def _rows(rows: list[dict], **match) -> list[dict]:
    chosen = [r for r in rows if all(r.get(k) == v or (isinstance(v, float) and math.isclose(_num(r.get(k)), v))
                                     for k, v in match.items())]
    return sorted(chosen, key=lambda r: _num(r["s"]))


def _penalties(result: SteeringResult) -> list[float]:
    return sorted({_num(g["p"]) for g in result.grid})


def _interval_trace(rows: list[dict], field: str, name: str, colour: str, group: str, customdata: list,
                    hovertemplate: str) -> go.Scatter:
    """``field`` against s with its ``field_lo`` / ``field_hi`` interval as error bars."""
    y = np.array([_num(r[field]) for r in rows])
    return go.Scatter(
        x=[_num(r["s"]) for r in rows], y=y, mode="lines+markers", name=name, legendgroup=group,
        line=dict(color=colour), marker=dict(size=8),
        error_y=dict(type="data", symmetric=False, array=np.array([_num(r[f"{field}_hi"]) for r in rows]) - y,
                     arrayminus=y - np.array([_num(r[f"{field}_lo"]) for r in rows]), color=colour),
        customdata=customdata, hovertemplate=hovertemplate,
    )


def _gain_trace(rows: list[dict], name: str, colour: str, group: str) -> go.Scatter:
    return _interval_trace(
        rows, "concept_gain", name, colour, group,
        [[_num(r["concept_gain_lo"]), _num(r["concept_gain_hi"]), _num(r["null_gain"]), _num(r["null_q95"]),
          _num(r["fraction_reaching"]), _num(r["ppl_ratio"])] for r in rows],
        f"{name}<br>s = %{{x:.3g}}: gain %{{y:.3g}} nats (95% CI %{{customdata[0]:.3g}} to "
        "%{customdata[1]:.3g})<br>null mean %{customdata[2]:.3g}, 95th percentile %{customdata[3]:.3g}"
        "<br>prompts above the null's 95th percentile: %{customdata[4]:.0%}"
        "<br>ppl_ratio %{customdata[5]:.3g}<extra></extra>",
    )


def _null_band(fig: go.Figure, rows: list[dict], name: str, colour: str, group: str) -> None:
    """The null's mean (dashed) and its 95th percentile (dotted), the band between them shaded."""
    x = [_num(r["s"]) for r in rows]
    fig.add_trace(go.Scatter(x=x, y=[_num(r["null_gain"]) for r in rows], mode="lines", name=f"{name}: mean",
                             legendgroup=group, line=dict(color=colour, dash="dash", width=1.5),
                             customdata=[_num(r["null_gain_sd"]) for r in rows],
                             hovertemplate=f"{name}<br>s = %{{x:.3g}}: mean gain %{{y:.3g}} nats "
                                           "(sd %{customdata:.3g})<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=[_num(r["null_q95"]) for r in rows], mode="lines", name=f"{name}: 95th percentile",
                             legendgroup=group, line=dict(color=colour, dash="dot", width=1.5), fill="tonexty",
                             fillcolor=_NULL_FILL,
                             hovertemplate=f"{name}<br>s = %{{x:.3g}}: 95th percentile %{{y:.3g}} nats<extra></extra>"))


def _gain_layout(fig: go.Figure, result: SteeringResult, heading: str, subtitle: str) -> go.Figure:
    fig.add_hline(y=0, line_color="#999", line_width=1)
    fig.update_layout(**title(heading, f"{_where(result)}; {subtitle}"), xaxis_title=_strength_axis(result),
                      yaxis_title="concept gain (nats)", legend=dict(orientation="h", y=-0.25), height=_HEIGHT)
    fig.update_yaxes(exponentformat="power")
    fig.update_xaxes(exponentformat="power")
    return fig


def direction_gains(result: SteeringResult) -> go.Figure:
    """Concept gain vs strength for the axis, first PC, probe and control axis, beside the random null."""
    fig = go.Figure()
    _null_band(fig, _rows(result.directions, direction="random"), "random directions (null)", _GREY, "null")
    control = result.concept.get("control", {}).get("name")
    for name, colour in _DIRECTIONS:
        rows = _rows(result.directions, direction=name)
        if rows:
            label = DIRECTION_NAMES[name] + (f" ({control})" if name == "control" and control else "")
            fig.add_trace(_gain_trace(rows, label, colour, name))
    return _gain_layout(
        fig, result, "Concept gain by direction",
        f"directions protocol: each direction at norm s x unit on every held-out prompt ({_prompts(result)}); "
        f"{_GAIN}; bars: 95% bootstrap interval over prompts; grey band: random directions of the same norm, mean to "
        "95th percentile",
    )


def self_steering_gains(result: SteeringResult) -> go.Figure:
    """Concept gain vs strength of self-steering, one line per penalty p, each beside its null."""
    fig = go.Figure()
    for k, p in enumerate(_penalties(result)):
        rows = _rows(result.grid, p=p)
        group = f"p{p:g}"
        _null_band(fig, rows, f"random, same norm as p = {p:g}", _penalty_colour(k), group)
        fig.add_trace(_gain_trace(rows, f"self-steering, p = {p:g}", _penalty_colour(k), group))
    return _gain_layout(
        fig, result, "Self-steering concept gain",
        f"CRH protocol: each of the {_prompts(result)} steered on its own prompt with its own v_i(s, p); {_GAIN}; "
        "bars: 95% bootstrap interval; dashed: random directions of the same norms (mean), dotted: their 95th percentile",
    )


def _rate_trace(rows: list[dict], name: str, colour: str, group: str) -> go.Scatter:
    return _interval_trace(
        rows, "concept_rate", name, colour, group,
        [[_num(r["concept_rate_lo"]), _num(r["concept_rate_hi"]), r["n"], _num(r["text_pvalue"])] for r in rows],
        f"{name}<br>s = %{{x:.3g}}: %{{y:.0%}} of %{{customdata[2]}} continuations (95% CI "
        "%{customdata[0]:.0%} to %{customdata[1]:.0%})<br>p-value against null + unsteered "
        "%{customdata[3]:.3g}<extra></extra>",
    )


def _null_rate_trace(rows: list[dict], name: str, colour: str, group: str) -> go.Scatter:
    return go.Scatter(x=[_num(r["s"]) for r in rows], y=[_num(r["null_rate"]) for r in rows], mode="lines+markers",
                      name=name, legendgroup=group, line=dict(color=colour, dash="dash", width=1.5),
                      marker=dict(symbol="x", size=7),
                      hovertemplate=f"{name}<br>s = %{{x:.3g}}: %{{y:.0%}}<extra></extra>")


def concept_rates(result: SteeringResult) -> go.Figure:
    """Share of continuations naming the concept, with Wilson intervals, beside the null and unsteered rates."""
    fig = go.Figure()
    u = result.unsteered
    rate, lo, hi = _num(u.get("rate")), _num(u.get("rate_lo")), _num(u.get("rate_hi"))
    strengths = sorted({_num(r["s"]) for r in result.directions + result.grid}) or [0.0]
    fig.add_trace(go.Scatter(x=[strengths[0], strengths[-1]], y=[lo, lo], mode="lines", line=dict(width=0),
                             hoverinfo="skip", showlegend=False, legendgroup="unsteered"))
    fig.add_trace(go.Scatter(x=[strengths[0], strengths[-1]], y=[hi, hi], mode="lines", line=dict(width=0),
                             fill="tonexty", fillcolor=_NULL_FILL, hoverinfo="skip", showlegend=False,
                             legendgroup="unsteered"))
    fig.add_trace(go.Scatter(x=[strengths[0], strengths[-1]], y=[rate, rate], mode="lines", legendgroup="unsteered",
                             name=f"unsteered ({rate:.0%}, 95% CI {lo:.0%} to {hi:.0%})",
                             line=dict(color="#666", width=1.5),
                             hovertemplate=f"unsteered: {rate:.0%} (95% CI {lo:.0%} to {hi:.0%})<extra></extra>"))
    axis = _rows(result.directions, direction="axis")
    if axis:
        fig.add_trace(_rate_trace(axis, "axis (directions protocol)", _BLUE, "axis"))
        fig.add_trace(_null_rate_trace(axis, "random, same norm as the axis", _BLUE, "axis"))
    for k, p in enumerate(_penalties(result)):
        rows = _rows(result.grid, p=p)
        fig.add_trace(_rate_trace(rows, f"self-steering, p = {p:g} (CRH protocol)", _penalty_colour(k), f"p{p:g}"))
        fig.add_trace(_null_rate_trace(rows, f"random, same norm as p = {p:g}", _penalty_colour(k), f"p{p:g}"))
    params = result.params
    t = _num(params.get("temperature"))
    how = "greedy" if not t > 0 else f"sampled at temperature {t:g}"
    fig.update_layout(
        **title("Concept in the generated text",
                f"{_where(result)}; "
                f"{how} continuations of {params.get('gen_tokens')} tokens on the {_prompts(result)} naming a concept "
                "word (word-boundary match); self-steering (CRH protocol) and the axis (directions protocol); bars: "
                "95% Wilson interval; dashed: random directions of the same norm; grey band: unsteered"),
        xaxis_title=_strength_axis(result), yaxis_title="continuations naming it (share)",
        yaxis=dict(tickformat=".0%", range=[-0.03, 1.03]), legend=dict(orientation="h", y=-0.25), height=_HEIGHT,
    )
    fig.update_xaxes(exponentformat="power")
    return fig


def coherence(result: SteeringResult) -> go.Figure:
    """Perplexity ratio of neutral text under each steered vector, the headline's limit dashed."""
    fig = go.Figure()

    def add(rows, name, colour, dash="solid"):
        fig.add_trace(go.Scatter(
            x=[_num(r["s"]) for r in rows], y=[_num(r["ppl_ratio"]) for r in rows], mode="lines+markers", name=name,
            line=dict(color=colour, dash=dash), customdata=[_num(r["repetition"]) for r in rows],
            hovertemplate=f"{name}<br>s = %{{x:.3g}}: ppl_ratio %{{y:.4g}}<br>repeated 3-grams in the "
                          "continuations %{customdata:.0%}<extra></extra>"))

    control = result.concept.get("control", {}).get("name")
    for name, colour in (*_DIRECTIONS, ("random", _GREY)):
        rows = _rows(result.directions, direction=name)
        if rows:
            label = DIRECTION_NAMES[name] + (f" ({control})" if name == "control" and control else "")
            add(rows, label, colour, "dash" if name == "random" else "solid")
    for k, p in enumerate(_penalties(result)):
        add(_rows(result.grid, p=p), f"self-steering, p = {p:g}", _penalty_colour(k), "dot")
    limit = _num(result.summary.get("ppl_limit"))
    strengths = sorted({_num(r["s"]) for r in result.directions + result.grid}) or [0.0]
    # A trace, not a shape, so that the axis range always reaches the limit.
    fig.add_trace(go.Scatter(x=[strengths[0], strengths[-1]], y=[limit, limit], mode="lines",
                             name=f"coherence limit of the headline ({limit:g}x)",
                             line=dict(color=_RED, dash="dash", width=1), hoverinfo="skip"))
    fig.update_layout(
        **title("Coherence under steering",
                f"{_where(result)}; "
                f"perplexity of {result.params.get('neutral_sentences')} neutral sentence(s) with each vector added at "
                "every token, over the unsteered model's; directions (directions protocol, dashed grey: random) and "
                f"self-steering cells (CRH protocol, dotted) of the {_prompts(result)}; repetition in the hover; the "
                "headline only counts strengths under the red line"),
        xaxis_title=_strength_axis(result), yaxis_title="perplexity ratio (steered / unsteered)",
        legend=dict(orientation="h", y=-0.25), height=_HEIGHT,
    )
    fig.update_yaxes(type="log")
    fig.update_xaxes(exponentformat="power")
    return log_axes(fig)


def histograms(result: SteeringResult) -> go.Figure:
    """cos(theta_i) and |d_i|, fit and held-out triples overlaid, with |a| and mean |d| marked."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cos(theta) to the axis", "length |d|"))
    counts = {}
    for split, color in (("fit", _BLUE), ("held-out", _ORANGE)):
        rows = _split(result, split)
        counts[split] = len(rows)
        if not rows:
            continue
        for col, field in ((1, "cos_theta"), (2, "norm")):
            fig.add_trace(go.Histogram(
                x=[_num(r[field]) for r in rows], name=f"{split} ({len(rows)})", legendgroup=split,
                showlegend=col == 1, marker_color=color, opacity=0.65, nbinsx=20,
                hovertemplate=f"{split}<br>%{{x}}: %{{y}} triples<extra></extra>",
            ), row=1, col=col)
    unit_is_axis = result.params.get("unit") == "axis"
    for value, label, is_unit in ((result.axis_norm, "|a|", unit_is_axis), (result.mean_norm, "mean |d|", not unit_is_axis)):
        fig.add_vline(x=_num(value), line_dash="dash" if is_unit else "dot", line_color="#666", row=1, col=2,
                      annotation_text=label + (" (s = 1)" if is_unit else ""), annotation_position="top right")
    fig.update_xaxes(title_text="cos(theta)", row=1, col=1)
    fig.update_xaxes(title_text="|d| (hidden-state units)", exponentformat="power", row=1, col=2)
    fig.update_yaxes(title_text="triples")
    fig.update_layout(barmode="overlay",
                      **title("Difference vectors",
                              f"{_where(result)}; "
                              f"geometry: the axis is fitted on the {counts['fit']} fit triples; the "
                              f"{counts['held-out']} held-out triples are measured against it"),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def normal_plane(result: SteeringResult) -> go.Figure:
    """Fit triples small and grey; held-out samples coloured by their self-steering steerability,
    hollow where no strength beats the null; sector rays."""
    fit = [s for s in _split(result, "fit") if math.isfinite(_num(s["x"])) and math.isfinite(_num(s["y"]))]
    selfs = result.self_steering
    steered_ids = {r["index"] for r in selfs}
    unsteered = [s for s in _split(result, "held-out") if s["index"] not in steered_ids]
    reach = [r for r in selfs if math.isfinite(_num(r["min_strength"]))]
    never = [r for r in selfs if not math.isfinite(_num(r["min_strength"]))]
    radius = max((math.hypot(_num(s["x"]), _num(s["y"])) for s in fit + unsteered + selfs), default=1.0) * 1.1 or 1.0
    k = len(result.sectors) or 1
    fig = go.Figure()
    for j in range(k):
        angle = 2 * math.pi * j / k
        fig.add_trace(go.Scatter(x=[0, radius * math.cos(angle)], y=[0, radius * math.sin(angle)], mode="lines",
                                 line=dict(color="#ccc", width=1, dash="dot"), hoverinfo="skip", showlegend=False))
        mid = angle + math.pi / k
        fig.add_annotation(x=0.92 * radius * math.cos(mid), y=0.92 * radius * math.sin(mid), text=str(j),
                           showarrow=False, font=dict(color="#999", size=10))

    def hover(rows, what):
        return [f"{what} triple {r['index']} · sector {r['sector']}<br>{str(r['prompt'])[:60]}<br>"
                f"cos(theta) {_num(r['cos_theta']):.3f}" for r in rows]

    fig.add_trace(go.Scatter(
        x=[_num(r["x"]) for r in fit], y=[_num(r["y"]) for r in fit], mode="markers", name=f"fit triples ({len(fit)})",
        marker=dict(color=_GREY, size=5), text=hover(fit, "fit"), hovertemplate="%{text}<extra></extra>"))
    if unsteered:
        fig.add_trace(go.Scatter(
            x=[_num(r["x"]) for r in unsteered], y=[_num(r["y"]) for r in unsteered], mode="markers",
            name=f"held-out, not steered ({len(unsteered)})", marker=dict(color=_GREY, size=7, symbol="diamond-open"),
            text=hover(unsteered, "held-out"), hovertemplate="%{text}<br>beyond the steered held-out samples<extra></extra>"))
    gain_hover = ("%{text}<br>gain at the top s %{customdata[0]:.3g} nats (null mean %{customdata[1]:.3g}, "
                  "95th percentile %{customdata[2]:.3g})")
    if never:
        fig.add_trace(go.Scatter(
            x=[_num(r["x"]) for r in never], y=[_num(r["y"]) for r in never], mode="markers",
            name=f"held-out, never beats the null ({len(never)})",
            marker=dict(color="#444", size=11, symbol="circle-open", line=dict(width=2)), text=hover(never, "held-out"),
            customdata=[[_num(r["gain_at_max"]), _num(r["null_gain_at_max"]), _num(r["null_q95_at_max"])] for r in never],
            hovertemplate=gain_hover + "<br>no strength beats the null<extra></extra>"))
    if reach:
        fig.add_trace(go.Scatter(
            x=[_num(r["x"]) for r in reach], y=[_num(r["y"]) for r in reach], mode="markers",
            name=f"held-out, beats the null ({len(reach)})", text=hover(reach, "held-out"),
            customdata=[[_num(r["gain_at_max"]), _num(r["null_gain_at_max"]), _num(r["null_q95_at_max"]),
                         _num(r["steerability"]), _num(r["min_strength"])] for r in reach],
            marker=dict(size=12, color=[_num(r["steerability"]) for r in reach], colorscale="Viridis", cmin=0,
                        line=dict(color="#444", width=1),
                        colorbar=dict(title=f"steerability<br>(1 / s, s {unit_label(result)})", exponentformat="power")),
            hovertemplate=gain_hover + "<br>steerability %{customdata[3]:.3g} (beats the null from s = "
                                       "%{customdata[4]:.3g})<extra></extra>"))
    p = _num(selfs[0]["p"]) if selfs else math.nan
    explained = [_num(e) for e in result.explained] + [math.nan, math.nan]
    fig.update_layout(
        **title("Normal plane",
                f"{_where(result)}; "
                f"self-steering (CRH protocol) at p = {p:g} on the {_prompts(result)}, placed on the plane fitted to "
                f"the {result.n_fit} fit triples (grey dots); colour: 1 / the smallest s whose gain beats the null's "
                f"95th percentile; hollow: none does; the plane holds {explained[0]:.0%} + {explained[1]:.0%} of the "
                "fit triples' normal variance"),
        xaxis_title="normal coordinate 1 (hidden-state units)", yaxis_title="normal coordinate 2 (hidden-state units)",
        yaxis_scaleanchor="x", legend=dict(orientation="h", y=-0.2), height=_HEIGHT,
    )
    fig.update_xaxes(exponentformat="power")
    fig.update_yaxes(exponentformat="power")
    return fig


def sector_polar(result: SteeringResult) -> go.Figure:
    """Mean steerability per sector of the normal plane over the held-out samples, counts at the rim."""
    rows = result.sectors
    k = len(rows) or 1
    centres = [(_num(r["phi_from_deg"]) + _num(r["phi_to_deg"])) / 2 for r in rows]
    steer = [_num(r["mean_steerability"]) for r in rows]
    fig = go.Figure(go.Barpolar(
        theta=centres, r=[v if math.isfinite(v) else 0.0 for v in steer], width=[360 / k] * len(rows),
        marker=dict(color=[_num(r["fraction_reaching"]) for r in rows], colorscale="Viridis", cmin=0, cmax=1,
                    colorbar=dict(title="share beating<br>the null", tickformat=".0%"), line=dict(color="white", width=1)),
        customdata=[[r["sector"], r["count"], _num(r["mean_steerability"]), _num(r["mean_gain"]),
                     _num(r["fraction_reaching"]), _num(r["mean_cos_theta"])] for r in rows],
        hovertemplate="sector %{customdata[0]}: %{customdata[1]} held-out samples<br>mean steerability "
                      "%{customdata[2]:.3g}<br>beating the null %{customdata[4]:.0%}<br>mean gain at the top s "
                      "%{customdata[3]:.3g} nats<br>mean cos(theta) %{customdata[5]:.3f}<extra></extra>",
    ))
    if not any(math.isfinite(v) and v > 0 for v in steer):
        fig.add_annotation(text="no held-out sample beats the null:<br>every sector's steerability is 0",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", bgcolor="rgba(255,255,255,0.8)")
    n = sum(int(r["count"]) for r in rows)
    p = _num(result.self_steering[0]["p"]) if result.self_steering else math.nan
    fig.update_layout(
        **title("Steerability by sector",
                f"{_where(result)}; "
                f"self-steering (CRH protocol) at p = {p:g}: {n} held-out samples over {k} sectors of the fit plane, "
                "so each sector holds few (count at the rim): a sketch, not an estimate; radius: mean steerability "
                f"1 / s, s the smallest strength ({unit_label(result)}) beating the null, 0 where none does"),
        polar=dict(angularaxis=dict(direction="counterclockwise", rotation=0, tickmode="array", tickvals=centres,
                                    ticktext=[f"{r['sector']} (n = {r['count']})" for r in rows]),
                   radialaxis=dict(exponentformat="power", title=dict(text="steerability 1 / s", font=dict(size=11)))),
        height=_HEIGHT, margin=dict(l=70, r=70),
    )
    return fig


def baseline_cosines(result: SteeringResult) -> go.Figure:
    names = list(result.baselines.get("names", []))
    cos = np.array([[_num(v) for v in row] for row in result.baselines.get("cosines", [])])
    fig = go.Figure(go.Heatmap(z=cos, x=names, y=names, zmin=-1, zmax=1, zmid=0, colorscale="RdBu",
                               texttemplate="%{z:.3f}", colorbar_title="cos",
                               hovertemplate="%{y} · %{x}: %{z:.4f}<extra></extra>"))
    b, control = result.baselines, result.concept.get("control", {})
    fig.update_layout(
        **title("Axis against the baselines",
                f"{_where(result)}; "
                f"geometry: directions fitted on the {result.n_fit} fit triples; accuracy on the "
                f"{result.n_heldout} held-out triples: probe {_num(b.get('probe_heldout_accuracy')):.0%}, axis "
                f"{_num(b.get('axis_heldout_accuracy')):.0%}; control concept '{control.get('name', '?')}': cos "
                f"{_num(control.get('cos_with_axis')):.3f} with the axis"),
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
    fig.update_yaxes(title_text="hidden-state units", exponentformat="power", row=1, col=1)
    fig.update_yaxes(title_text="cos", row=2, col=1)
    fig.update_yaxes(title_text="ratio", exponentformat="power", row=3, col=1)
    fig.update_xaxes(tickformat="d", dtick=1 if len(layers) <= 16 else None)
    read = "input, hidden_states[L]" if result.params.get("hook") == "input" else "output, hidden_states[L + 1]"
    fig.update_xaxes(title_text=f"block L (read at its {read})", row=3, col=1)
    fig.update_layout(**title(f"Layer sweep for '{result.concept.get('name', '?')}' on {result.model_name}",
                              f"geometry only, no steering: the {result.n_fit} fit triples at every block; dashed: "
                              f"the analysed block {result.layer}", full_width=True), height=620)
    return fig


def figures(result: SteeringResult) -> list[go.Figure]:
    """The steering evidence (both protocols, rates, coherence), then the geometry, then the sweep if any."""
    figs = [self_steering_gains(result), direction_gains(result), concept_rates(result), coherence(result),
            histograms(result), normal_plane(result), sector_polar(result), baseline_cosines(result)]
    sweep = layer_sweep(result)
    return figs + ([sweep] if sweep is not None else [])
