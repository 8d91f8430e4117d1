"""Charts for embedding alignment: before/after scores, the two curves, heatmaps, projections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from charts.common import log_axes, title
from diagnostics.alignment import MAP_TITLES, AlignmentResult

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]
DASHES = {"random": "solid", "kcenter": "dash", "volume": "dot"}
SCORES = {"top1_ab": "top-1 A→B", "top1_ba": "top-1 B→A", "class_top1_ab": "class top-1 A→B",
          "cos": "cosine", "cos_centred": "centred cosine"}
# Builders the alignment page draws at full width (the rest share a row).
FULL_WIDTH = ("before_after", "anchor_budget", "tradeoff", "heatmaps", "projection", "cross_modal", "zero_shot")


def _colour(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(dict.fromkeys(names))}


def _detail_rows(result: AlignmentResult) -> pd.DataFrame:
    frame = result.to_frame()
    n = result.detail_anchors()
    return frame[(frame["map"] == "none") | (frame["n_anchors"] == n)]


def _bar_errors(row: pd.Series, scores: list[str]) -> dict:
    """Asymmetric error bars from the ``_lo``/``_hi`` columns; none where a score has no interval."""
    up, down = [], []
    for s in scores:
        lo, hi, value = row.get(f"{s}_lo"), row.get(f"{s}_hi"), row[s]
        known = pd.notna(lo) and pd.notna(hi) and pd.notna(value)
        up.append(max(float(hi) - float(value), 0.0) if known else 0.0)
        down.append(max(float(value) - float(lo), 0.0) if known else 0.0)
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down, "visible": any(up) or any(down)}


def before_after(result: AlignmentResult) -> go.Figure:
    """Held-out scores with no map and with each map at the largest anchor count, one panel per
    split (headline split first), bars at the 95% interval over draws."""
    frame = _detail_rows(result)
    splits = list(dict.fromkeys(frame["split"]))
    scores = [s for s in SCORES if frame[s].notna().any()]
    colours = _colour(list(frame["map"]))
    fig = make_subplots(rows=1, cols=len(splits), subplot_titles=splits, shared_yaxes=True)
    for col, split in enumerate(splits, 1):
        for _, row in frame[frame["split"] == split].iterrows():
            fig.add_bar(name=row["map"], x=[SCORES[s] for s in scores], y=[row[s] for s in scores],
                        marker_color="#BBBBBB" if row["map"] == "none" else colours[row["map"]],
                        hovertext=MAP_TITLES.get(row["map"], row["map"]), error_y=_bar_errors(row, scores),
                        legendgroup=row["map"], showlegend=col == 1, row=1, col=col)
    draws = frame["draws"].dropna()
    if len(draws) and draws.max() > 1:
        over = f"mean over {int(draws.max())} draws, bars at the 95% interval of the mean"
    else:
        over = "one draw, bars at the 95% interval over its queries"
    fig.update_layout(
        barmode="group", legend_title="map",
        **title("Held-out scores before and after each map",
                f"{result.model_name}; none: no map; {result.detail_anchors()} anchors; {over}", full_width=True),
    )
    fig.update_yaxes(range=[min(0, float(frame[scores].min().min())), 1.02])
    fig.update_yaxes(title_text="score (top-1: share of queries; cosine)", row=1, col=1)
    fig.update_xaxes(title_text="score")
    return fig


def anchor_budget(result: AlignmentResult, maps: list[str] | None = None, strategies: list[str] | None = None,
                  score: str = "top1_ab") -> go.Figure:
    """Held-out score against the number of anchors: mean over seeds, bars at one standard deviation."""
    frame = pd.DataFrame(result.budget)
    if frame.empty:
        return _empty("Quality against anchor budget (curves were not computed)")
    if maps:
        frame = frame[frame["map"].isin(maps)]
    if strategies:
        frame = frame[frame["strategy"].isin(strategies)]
    splits = list(dict.fromkeys(frame["split"]))
    fig = make_subplots(rows=1, cols=max(1, len(splits)), subplot_titles=splits, shared_yaxes=True)
    colours = _colour(list(pd.DataFrame(result.budget)["map"]))
    stats = frame.groupby(["split", "map", "strategy", "n_anchors"])[score].agg(["mean", "std", "count"]).reset_index()
    for col, split in enumerate(splits, 1):
        for (m, strategy), g in stats[stats["split"] == split].groupby(["map", "strategy"], sort=False):
            fig.add_scatter(
                x=g["n_anchors"], y=g["mean"], error_y={"type": "data", "array": g["std"].fillna(0), "visible": True},
                mode="lines+markers", name=f"{m} · {strategy}", legendgroup=f"{m} · {strategy}", showlegend=col == 1,
                line={"color": colours[m], "dash": DASHES.get(strategy, "solid")}, row=1, col=col,
                hovertemplate=f"{m}, {strategy}<br>%{{x}} anchors<br>{SCORES.get(score, score)} %{{y:.3f}}<extra></extra>",
            )
        counts = sorted(set(stats[stats["split"] == split]["n_anchors"]))
        fig.update_xaxes(type="log", title_text="anchors", tickmode="array", tickvals=counts, row=1, col=col)
    seeds = sorted(set(pd.DataFrame(result.budget)["seed"]))
    fig.update_layout(
        **title("Quality against anchor budget",
                f"{SCORES.get(score, score)} on held-out items; mean ± sd over seeds {seeds}", full_width=True),
        yaxis_title=_score_axis(score), legend_title="map · anchor choice",
    )
    return log_axes(fig)


def tradeoff(result: AlignmentResult, score: str = "top1_ab") -> go.Figure:
    """Orthogonality error against held-out retrieval along the relaxed and penalised families.

    Each point is one penalty weight. For the penalised family its x value is also the threshold
    of lambda-Orthogonality Regularization that the weight enforces (diagnostics.alignment).
    """
    frame = pd.DataFrame(result.tradeoff)
    if frame.empty:
        return _empty("The orthogonality trade-off (curves were not computed)")
    weights = frame["weight"] if "weight" in frame else frame.get("lambda")
    fig = go.Figure()
    colours = {"relaxed": PALETTE[2], "penalised": PALETTE[3]}
    floor = 1e-6  # an exactly orthogonal map has error ~1e-14: shown at this floor on the log axis
    for family in ("relaxed", "penalised"):
        g = frame[frame["family"] == family]
        fig.add_scatter(
            x=g["orth_error"].clip(lower=floor), y=g[score], mode="lines+markers", name=family,
            line={"color": colours[family]}, customdata=weights[g.index],
            hovertemplate=f"{family}, penalty weight %{{customdata:.3g}}<br>||W^T W - I|| %{{x:.3g}}<br>%{{y:.3f}}"
                          "<extra></extra>",
        )
    for family, symbol in (("procrustes", "diamond"), ("lstsq", "square")):
        g = frame[frame["family"] == family]
        fig.add_scatter(x=g["orth_error"].clip(lower=floor), y=g[score], mode="markers", name=family,
                        marker={"symbol": symbol, "size": 12, "color": "#333333" if family == "procrustes" else "#999999"})
    where = ""
    if "split" in frame:
        first = frame.iloc[0]
        where = f"{first['split']}, {int(first['n_anchors'])} anchors, draw 0"
    fig.update_layout(
        **title("The orthogonality trade-off",
                f"||W^T W - I|| against {SCORES.get(score, score)} over penalty weights "
                f"({where or f'{result.detail_anchors()} anchors'}); errors below {floor:g} drawn at {floor:g}",
                full_width=True),
        xaxis_type="log", xaxis_title="||W^T W - I||_F (penalised: the lambda-orthogonality threshold its weight enforces)",
        yaxis_title=_score_axis(score), legend_title="family",
    )
    return log_axes(fig)


def _class_ticks(labels: list[str]) -> tuple[list[float], list[str], list[float]]:
    """For items sorted by label: each class's centre and name, and the boundaries between classes."""
    starts = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    ends = starts[1:] + [len(labels)]
    return [(a + b - 1) / 2 for a, b in zip(starts, ends)], [labels[a] for a in starts], [b - 0.5 for b in ends[:-1]]


def heatmaps(result: AlignmentResult) -> go.Figure:
    """Cosine similarities on a sample of held-out items: within each space and across, before and after.
    With labels the items are sorted by class: ticks name the classes and lines mark where they change."""
    h = result.heatmaps
    m = h.get("map", "")
    panels = (("within_a", "within A", "A's item"), ("within_b", "within B", "B's item"),
              ("cross_before", "A vs B, no map", "B's item"), ("cross_after", f"A mapped ({m}) vs B", "B's item"))
    # Every panel's rows are the same held-out items in the same order: one shared row axis.
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.03,
                        shared_yaxes=True)
    labels = [str(label) for label in h.get("labels") or []]
    n = len(h.get("rows", []))
    hover = [[f"{labels[i]} · {labels[j]}" for j in range(n)] for i in range(n)] if labels else None
    centres, names, edges = _class_ticks(labels)
    ticks = dict(tickmode="array", tickvals=centres, ticktext=names) if labels else {}
    for col, (key, _, x_title) in enumerate(panels, 1):
        z = np.asarray(h.get(key, []), dtype=float)
        fig.add_heatmap(z=z, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True, text=hover,
                        showscale=col == 4, colorbar_title="cosine", row=1, col=col,
                        hovertemplate=("row %{y}, column %{x}" + ("<br>%{text}" if labels else "")
                                       + "<br>cosine %{z:.3f}<extra></extra>"))
        fig.update_xaxes(title_text=x_title, **ticks, row=1, col=col)
        fig.update_yaxes(autorange="reversed", **ticks, row=1, col=col)
        for edge in edges:
            fig.add_shape(type="line", x0=edge, x1=edge, y0=-0.5, y1=n - 0.5, line=dict(color="#333", width=1),
                          row=1, col=col)
            fig.add_shape(type="line", x0=-0.5, x1=n - 0.5, y0=edge, y1=edge, line=dict(color="#333", width=1),
                          row=1, col=col)
    fig.update_yaxes(title_text="held-out item", row=1, col=1)
    how = "sorted by class, lines between classes" if labels else "in held-out order (no labels)"
    fig.update_layout(**title("Cosine similarities of held-out items",
                              f"{n} items {how}; row i and column i are the same item (rows: A's embedding, B's in "
                              "'within B'); a good map makes the last panel diagonal", full_width=True), height=420)
    return fig


def projection(result: AlignmentResult) -> go.Figure:
    """Both spaces in one 2-D PCA, before and after the map; grey lines join a few matched pairs."""
    pr = result.projection
    fig = make_subplots(rows=1, cols=2, subplot_titles=["no map", f"after {pr.get('map', '')}"])
    labels = pr.get("labels") or None
    for col, stage in enumerate(("before", "after"), 1):
        a, b = np.asarray(pr.get(f"{stage}_a", []), float), np.asarray(pr.get(f"{stage}_b", []), float)
        if a.size == 0:
            continue
        pairs = min(40, len(a))
        xs = np.column_stack([a[:pairs, 0], b[:pairs, 0], np.full(pairs, np.nan)]).ravel()
        ys = np.column_stack([a[:pairs, 1], b[:pairs, 1], np.full(pairs, np.nan)]).ravel()
        fig.add_scatter(x=xs, y=ys, mode="lines", line={"color": "#CCCCCC", "width": 1}, name="matched pairs",
                        showlegend=col == 1, hoverinfo="skip", row=1, col=col)
        for pts, name, colour, symbol in ((a, result.model_a, PALETTE[0], "circle"), (b, result.model_b, PALETTE[1], "x")):
            fig.add_scatter(x=pts[:, 0], y=pts[:, 1], mode="markers", name=f"{'A' if pts is a else 'B'}: {name}",
                            marker={"color": colour, "symbol": symbol, "size": 6, "opacity": 0.7}, showlegend=col == 1,
                            text=labels, hovertemplate="%{text}<extra></extra>" if labels else None, row=1, col=col)
    fig.update_xaxes(title_text="PC 1 (PCA of both spaces together)")
    fig.update_yaxes(title_text="PC 2")
    fig.update_layout(title="Both spaces in one 2-D PCA, before and after the map", height=420)
    return fig


def singular_values(result: AlignmentResult) -> go.Figure:
    """Each map's singular values (all 1 for an orthogonal map)."""
    fig = go.Figure()
    colours = _colour([g["map"] for g in result.geometry])
    for g in result.geometry:
        s = np.asarray(g.get("singular_values") or [], float)
        fig.add_scatter(y=s, mode="lines", name=g["map"], line={"color": colours[g["map"]]})
    fig.update_layout(**title("Singular values of each map", f"{result.detail_anchors()} anchors; all 1 for an "
                              "orthogonal map"), xaxis_title="index (largest first)",
                      yaxis_title="singular value", yaxis_type="log")
    return log_axes(fig)


def similarity(result: AlignmentResult) -> go.Figure:
    """Map-free similarity of the two spaces beside its permutation null (mean ± sd), with z and p."""
    frame = pd.DataFrame(result.similarity)
    fig = go.Figure()
    if frame.empty:
        return fig
    text = None
    if "z" in frame:  # older reports have no z
        text = [f"z = {z:.0f}, p {'≤' if p <= floor else '='} {p:.2g}"
                for z, p, floor in zip(frame["z"], frame["p_value"], frame["p_floor"])]
    fig.add_bar(x=frame["measure"], y=frame["value"], name="observed", marker_color=PALETTE[0], text=text,
                textposition="outside")
    fig.add_bar(x=frame["measure"], y=frame["null_mean"], name="permutation null",
                error_y={"type": "data", "array": frame["null_sd"].fillna(0)}, marker_color="#BBBBBB")
    n = int(frame["n_rows"].iloc[0])
    perms = result.params.get("n_permutations")
    fig.update_layout(barmode="group",
                      **title("Map-free similarity beside its shuffled null",
                              f"{n} held-out items, {perms} shuffles of B's rows; z: distance from the null mean in "
                              "null sds"),
                      xaxis_title="measure", yaxis_title="similarity (1: the same geometry)",
                      yaxis_range=[min(0.0, float(frame[["value", "null_mean"]].min().min()) - 0.05), 1.15])
    return fig


def cross_modal(result: AlignmentResult) -> go.Figure | None:
    if not result.cross_modal:
        return None
    frame = pd.DataFrame(result.cross_modal)
    colours = _colour(list(frame["map"]))
    fig = go.Figure()
    for _, row in frame.iterrows():
        fig.add_bar(name=row["map"], x=["top-1 A→B", "top-1 B→A", "cosine"], y=[row["top1_ab"], row["top1_ba"], row["cos"]],
                    marker_color="#BBBBBB" if row["map"] == "none" else colours[row["map"]])
    first = frame.iloc[0]
    fig.update_layout(barmode="group", title=f"Maps fitted on {first['fitted_on']}, tested on {first['tested_on']} "
                                             f"({int(first['n_test'])} held-out items)",
                      xaxis_title="score", yaxis_title="score (top-1: share of queries; cosine)")
    return fig


def zero_shot(result: AlignmentResult) -> go.Figure | None:
    if not result.zero_shot:
        return None
    frame = pd.DataFrame(result.zero_shot)
    fig = go.Figure()
    for setting, g in frame.groupby("setting", sort=False):
        fig.add_bar(name=setting, x=g["map"], y=g["accuracy"])
    chance = float(frame["chance"].iloc[0])
    fig.add_hline(y=chance, line_dash="dot", annotation_text=f"chance {chance:.2f}")
    fig.update_layout(barmode="group", title="Zero-shot labelling with each model's towers and across the map",
                      xaxis_title="map (native: no map)", yaxis_title="accuracy (share labelled correctly)",
                      legend_title="setting")
    return fig


def _score_axis(score: str) -> str:
    return f"{SCORES.get(score, score)} ({'mean cosine' if score.startswith('cos') else 'share of queries'})"


def _empty(text: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=text)
    return fig


def figures(result: AlignmentResult) -> list[go.Figure]:
    figs = [before_after(result), anchor_budget(result), tradeoff(result), heatmaps(result), projection(result),
            singular_values(result), similarity(result), cross_modal(result), zero_shot(result)]
    return [f for f in figs if f is not None]
