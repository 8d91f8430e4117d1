"""Every figure builder of every charts module, drawn from a real small result, explains itself: each axis
that carries data has a title, log axes print 10^k instead of SI prefixes ("100p"), values a log axis
cannot place are left out with a note, heatmaps label their ticks, and titles fit the chart's width.

The builders are found, not listed: a public function of a charts module that returns figures and has
no entry in BUILDERS below fails, so a new chart cannot skip these checks."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
import re

import numpy as np
import plotly.graph_objects as go
import pytest

import charts
from charts import alignment, common, compare, directions, optimizer_traces, overview, spectra, steering
from tests import result_fixtures as results

# Characters of a title (or of one subtitle line) that fit a half-width and a full-width chart.
HALF, FULL = common.TITLE_MAX, common.TITLE_MAX_FULL
HALF_LINE, FULL_LINE = common.SUBTITLE_WRAP, common.SUBTITLE_WRAP_FULL
# Axis titles: pixels of a half- and a full-width chart on a 1400-pixel window with the sidebar open, pixels
# a chart's margins, title and legend take from its height, and pixels a character of axis title takes.
HALF_PX, FULL_PX, MARGINS_PX, CHAR_PX = 460, 940, 180, 6.5
SUBPLOT_CHAR_PX = 7.5  # subplot titles are set larger
POWER = ("power", "e", "E")


def _loss_variants() -> list[go.Figure]:
    r = results.optimizer_traces()
    return [optimizer_traces.loss_curves(r, x, log_y=log_y, smoothing=smoothing, per_seed=per_seed)
            for x in ("step", "train_s") for log_y in (True, False)
            for smoothing, per_seed in ((0.0, False), (0.6, True))]


def _both_alignments() -> tuple:
    return results.alignment(), results.alignment_unlabelled()


def _both_compares() -> tuple:
    """A checkpoint series (steps) and the same files as a list of models (long path names, no steps)."""
    return results.compare(), results.compare_models()


def _compare_variants(builder) -> list[go.Figure]:
    """A builder's figure for each member it can be drawn for, on both compare results."""
    out = []
    for r in _both_compares():
        members = compare.ok_members(r)
        if builder is compare.alpha_a_vs_b:
            out += [compare.alpha_a_vs_b(r), compare.alpha_a_vs_b(r, members[-1], members[0])]
        elif builder is compare.delta_geometry:
            out += [compare.delta_geometry(r, d) for d in compare.derived_members(r)]
        else:
            out += [compare.overlap_matrix(r, layer) for layer in (None, *compare.layer_names(r))]
    return out


def _log_axes_helper() -> list[go.Figure]:
    fig = go.Figure(go.Scatter(x=[1, 2, 3, 4], y=[0.0, -1.0, 0.5, 2.0]))
    fig.update_layout(xaxis_title="x (units)", yaxis_title="y (units)", yaxis_type="log", title="A log axis")
    return [common.log_axes(fig)]


# How to draw each builder from a real result; a list, because some builders have variants worth checking.
BUILDERS = {
    common.log_axes: _log_axes_helper,
    overview.params_per_block: lambda: [overview.params_per_block(results.overview())],
    overview.params_per_kind: lambda: [overview.params_per_kind(results.overview())],
    overview.figures: lambda: overview.figures(results.overview()),
    spectra.alpha_per_layer: lambda: [spectra.alpha_per_layer(results.spectra())],
    spectra.layer_esd: lambda: [spectra.layer_esd(results.spectra(), r["name"]) for r in results.spectra().layers],
    spectra.alpha_vs_spectral_norm: lambda: [spectra.alpha_vs_spectral_norm(results.spectra())],
    spectra.mean_alpha_per_block: lambda: [spectra.mean_alpha_per_block(results.spectra())],
    spectra.figures: lambda: spectra.figures(results.spectra()),
    alignment.before_after: lambda: [alignment.before_after(r) for r in _both_alignments()],
    alignment.anchor_budget: lambda: [alignment.anchor_budget(results.alignment(), score=s)
                                      for s in ("top1_ab", "cos")],
    alignment.tradeoff: lambda: [alignment.tradeoff(results.alignment())],
    alignment.heatmaps: lambda: [alignment.heatmaps(r) for r in _both_alignments()],
    alignment.projection: lambda: [alignment.projection(results.alignment())],
    alignment.singular_values: lambda: [alignment.singular_values(results.alignment())],
    alignment.similarity: lambda: [alignment.similarity(results.alignment())],
    alignment.cross_modal: lambda: [alignment.cross_modal(results.alignment())],
    alignment.zero_shot: lambda: [alignment.zero_shot(results.alignment())],
    alignment.figures: lambda: [f for r in _both_alignments() for f in alignment.figures(r)],
    directions.spectrum: lambda: [directions.spectrum(results.directions())],
    directions.eigengaps: lambda: [directions.eigengaps(results.directions())],
    directions.subspace: lambda: [directions.subspace(results.directions())],
    directions.rownorm_vs_raw: lambda: [directions.rownorm_vs_raw(results.directions())],
    directions.projector_error: lambda: [directions.projector_error(results.directions())],
    directions.fit_progress: lambda: [directions.fit_progress(results.directions())],
    directions.orthogonality: lambda: [directions.orthogonality(results.directions())],
    directions.crosstalk: lambda: [directions.crosstalk(results.directions())],
    directions.traversal: lambda: [directions.traversal(results.directions())],
    directions.comparison: lambda: directions.comparison(results.directions()),
    directions.figures: lambda: directions.figures(results.directions()),
    optimizer_traces.loss_curves: _loss_variants,
    optimizer_traces.held_out: lambda: [optimizer_traces.held_out(results.optimizer_traces())],
    optimizer_traces.comparison: lambda: [optimizer_traces.comparison(results.optimizer_traces())],
    optimizer_traces.update_geometry: lambda: [optimizer_traces.update_geometry(results.optimizer_traces())],
    optimizer_traces.per_layer: lambda: [optimizer_traces.per_layer(results.optimizer_traces())],
    optimizer_traces.weight_alpha: lambda: [optimizer_traces.weight_alpha(results.optimizer_traces())],
    optimizer_traces.time_breakdown: lambda: [optimizer_traces.time_breakdown(results.optimizer_traces())],
    optimizer_traces.lr_sweep: lambda: [optimizer_traces.lr_sweep(results.optimizer_traces())],
    optimizer_traces.figures: lambda: optimizer_traces.figures(results.optimizer_traces()),
    steering.direction_gains: lambda: [steering.direction_gains(results.steering())],
    steering.self_steering_gains: lambda: [steering.self_steering_gains(results.steering())],
    steering.concept_rates: lambda: [steering.concept_rates(results.steering())],
    steering.coherence: lambda: [steering.coherence(results.steering())],
    steering.histograms: lambda: [steering.histograms(results.steering())],
    steering.normal_plane: lambda: [steering.normal_plane(results.steering())],
    steering.sector_polar: lambda: [steering.sector_polar(results.steering())],
    steering.baseline_cosines: lambda: [steering.baseline_cosines(results.steering())],
    steering.layer_sweep: lambda: [steering.layer_sweep(results.steering())],
    steering.figures: lambda: steering.figures(results.steering()),
    compare.alpha_heatmap: lambda: [compare.alpha_heatmap(r) for r in _both_compares()],
    compare.mean_alpha_over_steps: lambda: [compare.mean_alpha_over_steps(r) for r in _both_compares()],
    compare.alpha_a_vs_b: lambda: _compare_variants(compare.alpha_a_vs_b),
    compare.delta_geometry: lambda: _compare_variants(compare.delta_geometry),
    compare.overlap_matrix: lambda: _compare_variants(compare.overlap_matrix),
    compare.figures: lambda: [f for r in _both_compares() for f in compare.figures(r)],
}


def figure_builders() -> list:
    """Public functions of the charts modules whose return annotation names a Figure."""
    found = []
    for info in pkgutil.iter_modules(charts.__path__):
        module = importlib.import_module(f"charts.{info.name}")
        for name, fn in vars(module).items():
            if (inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")
                    and "Figure" in str(inspect.signature(fn).return_annotation)):
                found.append(fn)
    return found


def _name(fn) -> str:
    return f"{fn.__module__}.{fn.__name__}"


def test_every_figure_builder_is_audited():
    """A new builder has to say here how to draw it from a result, and then meets every check below."""
    missing = {_name(fn) for fn in figure_builders()} - {_name(fn) for fn in BUILDERS}
    assert not missing, f"add these builders to BUILDERS: {sorted(missing)}"


def _axis_key(ref: str) -> str:
    """'x' -> 'xaxis', 'y3' -> 'yaxis3'."""
    return f"{ref[0]}axis{ref[1:]}"


def _numbers(values) -> np.ndarray:
    if values is None:
        return np.array([])
    array = np.asarray(values, dtype=object).ravel()
    out = [float(v) for v in array if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
    return np.array(out, dtype=float)


def _axes_with_data(fig: go.Figure) -> dict[str, list[np.ndarray]]:
    """Layout axis name -> the numbers drawn against it, for every cartesian axis some trace uses."""
    axes: dict[str, list[np.ndarray]] = {}
    for trace in fig.data:
        if not hasattr(trace, "xaxis"):
            continue
        for letter in ("x", "y"):
            values = _numbers(getattr(trace, letter, None))
            axes.setdefault(_axis_key(getattr(trace, f"{letter}axis") or letter), []).append(values)
    return axes


def _title(layout, key: str) -> str:
    return ((layout.get(key) or {}).get("title") or {}).get("text") or ""


def _shares_a_titled_axis(layout: dict, key: str) -> bool:
    """A shared axis (``matches``) is titled once, beside the panel that shows its ticks: the titled axis it
    is linked to covers the same rows (y) or columns (x)."""
    ref = key[0] + key[5:]
    linked = [_axis_key(layout[key]["matches"])] if (layout.get(key) or {}).get("matches") else []
    linked += [k for k, v in layout.items() if isinstance(v, dict) and v.get("matches") == ref]
    domain = (layout.get(key) or {}).get("domain")
    return any(_title(layout, k) and layout[k].get("domain") == domain for k in linked)


def _subplot_titles(layout: dict) -> list[str]:
    """The annotations make_subplots writes as panel titles, centred above each panel."""
    return [_plain(a["text"]) for a in layout.get("annotations", []) if a.get("yanchor") == "bottom"
            and a.get("xanchor") == "center" and a.get("xref") == "paper" and a.get("yref") == "paper"]


def _plain(text: str) -> str:
    return re.sub(r"<[^>]+>", "", text)


def _title_parts(fig: go.Figure) -> tuple[str, list[str]]:
    title = fig.layout.title
    main, *rest = (title.text or "").split("<br>")
    subtitle = [*rest, *((title.subtitle.text or "").split("<br>") if title.subtitle.text else [])]
    return _plain(main), [_plain(line) for line in subtitle]


def _cases():
    for builder, draw in BUILDERS.items():
        yield pytest.param(builder, draw, id=_name(builder).removeprefix("charts."))


@pytest.fixture(scope="module")
def drawn() -> dict:
    return {}


def _figures(builder, draw, drawn) -> list[go.Figure]:
    if builder not in drawn:
        drawn[builder] = [f for f in draw() if f is not None]
    assert drawn[builder], f"{_name(builder)} drew nothing from its result"
    return drawn[builder]


@pytest.mark.parametrize("builder, draw", _cases())
def test_axes_are_titled_and_log_axes_print_powers_of_ten(builder, draw, drawn):
    for fig in _figures(builder, draw, drawn):
        layout = fig.to_plotly_json()["layout"]
        where = f"{_name(builder)}: {fig.layout.title.text!r}"
        for key, values in _axes_with_data(fig).items():
            axis = layout.get(key) or {}
            assert _title(layout, key) or _shares_a_titled_axis(layout, key), f"{where}: {key} has no title"
            numbers = np.concatenate(values) if values else np.array([])
            finite = numbers[np.isfinite(numbers)]
            if axis.get("type") == "log":
                assert axis.get("exponentformat") in POWER, f"{where}: log {key} prints SI prefixes"
                assert (finite > 0).all(), f"{where}: values <= 0 drawn on log {key}"
            elif finite.size and axis.get("type") not in ("category", "date") and not axis.get("tickformat"):
                largest = float(np.abs(finite).max())
                if largest >= 1e4 or 0 < largest < 1e-2:
                    assert axis.get("exponentformat") in POWER, f"{where}: {key} spans {largest:g}, SI prefixes"


@pytest.mark.parametrize("builder, draw", _cases())
def test_titles_fit_the_width_the_pages_draw_them_at(builder, draw, drawn):
    module = importlib.import_module(builder.__module__)
    full = builder.__name__ in getattr(module, "FULL_WIDTH", ())
    for fig in _figures(builder, draw, drawn):
        main, subtitle = _title_parts(fig)
        assert main, f"{_name(builder)} has no title"
        if builder.__name__ == "figures":
            continue  # each figure is checked at its own builder's width
        limit, line = (FULL, FULL_LINE) if full else (HALF, HALF_LINE)
        assert len(main) <= limit, f"{_name(builder)}: title of {len(main)} characters: {main!r}"
        for text in subtitle:
            assert len(text) <= line, f"{_name(builder)}: subtitle line of {len(text)} characters: {text!r}"
        layout = fig.to_plotly_json()["layout"]
        for key in _axes_with_data(fig):
            start, end = (layout.get(key) or {}).get("domain", [0, 1])
            room = (end - start) * ((FULL_PX if full else HALF_PX) - 60 if key[0] == "x"
                                    else (layout.get("height") or 450) - MARGINS_PX)
            text = _plain(_title(layout, key))
            assert len(text) * CHAR_PX <= room, f"{_name(builder)}: {key} title {text!r} overflows {room:.0f} px"
        panel = min(((layout.get(k) or {}).get("domain", [0, 1]) for k in _axes_with_data(fig) if k[0] == "x"),
                    key=lambda d: d[1] - d[0], default=[0, 1])
        for note in _subplot_titles(layout):
            room = (panel[1] - panel[0]) * (FULL_PX if full else HALF_PX)
            assert len(note) * SUBPLOT_CHAR_PX <= room, f"{_name(builder)}: subplot title {note!r} overflows {room:.0f}"


def test_full_width_lists_name_builders():
    for module in (overview, spectra, alignment, directions, optimizer_traces, steering, compare):
        assert set(getattr(module, "FULL_WIDTH", ())) <= {fn.__name__ for fn in figure_builders()
                                                          if fn.__module__ == module.__name__}


@pytest.mark.parametrize("builder", [alignment.heatmaps, directions.rownorm_vs_raw, directions.orthogonality,
                                     directions.crosstalk, steering.baseline_cosines, compare.alpha_heatmap,
                                     compare.overlap_matrix])
def test_heatmaps_label_their_ticks(builder, drawn):
    for fig in _figures(builder, BUILDERS[builder], drawn):
        layout = fig.to_plotly_json()["layout"]
        for key in _axes_with_data(fig):
            axis = layout.get(key) or {}
            if not axis.get("matches"):  # a shared axis shows its ticks once
                assert axis.get("showticklabels") is not False, f"{_name(builder)}: {key} hides its ticks"


def test_class_sorted_heatmaps_mark_each_class_and_its_boundaries(drawn):
    labelled, unlabelled = _figures(alignment.heatmaps, BUILDERS[alignment.heatmaps], drawn)
    ticks = labelled.layout.xaxis.ticktext
    assert set(ticks) == {"cat", "dog", "car", "ship"}
    lines = [s for s in labelled.layout.shapes if s.type == "line"]
    assert len(lines) == 4 * 2 * 3  # four panels, a row and a column line at each of the three boundaries
    assert not unlabelled.layout.shapes


def test_a_zero_loss_is_left_out_of_the_log_axis_with_a_note():
    r = results.optimizer_traces()
    shown = r.series(r.shown_runs())
    records = [dict(record) for record in r.records]
    next(record for record in records if record["type"] == "step" and record["run_id"] in shown)["loss"] = 0.0
    zero = dataclasses.replace(r, records=records)
    log = optimizer_traces.loss_curves(zero, log_y=True, per_seed=True)
    linear = optimizer_traces.loss_curves(zero, log_y=False, per_seed=True)
    assert [a.text for a in log.layout.annotations] == ["1 value <= 0 not shown (log axis)"]
    assert min(np.nanmin(np.asarray(t.y, float)) for t in log.data) > 0
    assert min(np.nanmin(np.asarray(t.y, float)) for t in linear.data) == 0.0
    assert not linear.layout.annotations


def test_loss_curves_smooth_with_tensorboards_debiased_ema():
    r = results.optimizer_traces()
    run = r.table("step")
    run = run[run["run_id"] == next(iter(r.series(r.shown_runs())))].sort_values("step")
    w = 0.6
    expected, s = [], 0.0
    for t, x in enumerate(run["loss"], 1):
        s = w * s + (1 - w) * x
        expected.append(s / (1 - w ** t))
    np.testing.assert_allclose(optimizer_traces.ema(run["loss"].to_numpy(), w), expected, rtol=1e-12)
    assert optimizer_traces.ema(run["loss"].to_numpy(), 0.0).tolist() == run["loss"].tolist()
    fig = optimizer_traces.loss_curves(r, smoothing=w, per_seed=True)
    seeds = [t for t in fig.data if t.name and t.name.endswith(f"seed {int(run['seed'].iloc[0])}")
             and np.allclose(np.asarray(t.x, float), run["step"].to_numpy(float))]
    assert any(np.allclose(np.asarray(t.y, float), expected) for t in seeds)
    assert "EMA 0.6" in "".join(_title_parts(fig)[1])
    with pytest.raises(ValueError, match="smoothing"):
        optimizer_traces.loss_curves(r, smoothing=1.0)


def test_log_axes_clips_and_says_how_many():
    (fig,) = _log_axes_helper()
    assert np.isnan(fig.data[0].y[0]) and np.isnan(fig.data[0].y[1]) and fig.data[0].y[2] == 0.5
    assert [a.text for a in fig.layout.annotations] == ["2 values <= 0 not shown (log axis)"]
    assert fig.layout.yaxis.exponentformat == "power" and fig.layout.yaxis.showexponent == "all"
    assert math.isclose(fig.data[0].x[0], 1)  # the linear axis keeps its values
