"""Charts for the model overview."""

from __future__ import annotations

import plotly.graph_objects as go

from charts.common import block_order, title
from diagnostics.overview import OverviewResult

# Parameter counts run to billions: 10^k ticks rather than SI prefixes ("1G" reads as gigabytes).
_COUNT_AXIS = dict(exponentformat="power", showexponent="all")


def params_per_block(result: OverviewResult) -> go.Figure:
    order = block_order(result.params_by_block)
    fig = go.Figure(go.Bar(x=order, y=[result.params_by_block[b] for b in order], marker_color="#4C78A8"))
    fig.update_layout(
        **title("Parameters per block", f"{result.model_name}: {result.num_params:,} parameters"),
        xaxis=dict(title="block (embeddings, numbered blocks, head)", type="category"),
        yaxis=dict(title="parameters (count)", **_COUNT_AXIS),
    )
    return fig


def params_per_kind(result: OverviewResult) -> go.Figure:
    items = sorted(result.params_by_kind.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker_color="#F58518"))
    fig.update_layout(**title("Parameters per tensor kind", result.model_name),
                      xaxis=dict(title="parameters (count)", **_COUNT_AXIS), yaxis_title="tensor kind")
    return fig


def figures(result: OverviewResult) -> list[go.Figure]:
    return [params_per_block(result), params_per_kind(result)]
