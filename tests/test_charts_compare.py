"""The compare charts on a hand-made result, whose every number is known: what each chart draws where,
untrusted cells marked, failed checkpoints left out and named, nulls drawn, the report round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

import reports
from charts import compare as charts
from diagnostics import compare
from diagnostics.compare import CHECKPOINT_COLUMNS, CompareParams
from reports.registry import TITLES, figures_for

NAN = math.nan
LAYERS = ("embed.weight", "layers.0.q.weight", "layers.0.mlp.weight")
STEPS = (0, 500, 1000)
# alpha[layer][checkpoint] and whether its power law is trusted.
ALPHA = {"embed.weight": (5.0, 4.0, 3.5), "layers.0.q.weight": (3.0, 2.5, NAN), "layers.0.mlp.weight": (6.5, 6.0, 2.2)}
TRUSTED = {"embed.weight": (True, True, True), "layers.0.q.weight": (False, True, False),
           "layers.0.mlp.weight": (False, False, True)}


def _checkpoint(step: int, j: int) -> dict:
    row = {c: 0 for c in CHECKPOINT_COLUMNS}
    trusted = [ALPHA[n][j] for n in LAYERS if TRUSTED[n][j]]
    fitted = [ALPHA[n][j] for n in LAYERS if not math.isnan(ALPHA[n][j])]
    row.update(checkpoint=f"checkpoint-{step}", step=step, fingerprint=f"fp{step}", status="ok", reason="", layers=3,
               trusted_layers=len(trusted), mean_trusted_alpha=float(np.mean(trusted)), mean_alpha=float(np.mean(fitted)),
               **{"n_heavy-tailed": len(trusted), "n_random-like": 3 - len(trusted)}, failed=0)
    return row


def _failed(step: int) -> dict:
    row = {c: NAN for c in CHECKPOINT_COLUMNS}
    row.update(checkpoint=f"checkpoint-{step}", step=step, fingerprint="", status="failed",
               reason="checkpoint-1500 is a text file, not a checkpoint", failed=1)
    return row


def _delta(derived: str, name: str, i: int) -> dict:
    return {"base": "checkpoint-0", "derived": derived, "step": int(derived.split("-")[1]), "name": name,
            "rel_size": 10.0 ** -(i + 1), "stable_rank": 1.0 + i, "effective_rank": 2.0 + i, "angle_left_mean_deg": 80.0,
            "angle_left_min_deg": 70.0, "angle_right_mean_deg": 60.0, "overlap_left": 0.05, "overlap_left_null": 0.25,
            "reason": ""}


def hand_made(models: bool = False):
    """Three checkpoints and a failed fourth; deltas of the two later ones from the first (one layer only in
    the base); their task-vector overlaps on two layers."""
    checkpoints = [_checkpoint(s, j) for j, s in enumerate(STEPS)] + [_failed(1500)]
    layers = [{"checkpoint": f"checkpoint-{s}", "step": s, "name": n, "alpha": ALPHA[n][j], "pl_trust": TRUSTED[n][j],
               "phase": "heavy-tailed" if TRUSTED[n][j] else "random-like"}
              for j, s in enumerate(STEPS) for n in LAYERS]
    deltas = [_delta(f"checkpoint-{s}", n, i) for s in STEPS[1:] for i, n in enumerate(LAYERS[1:])]
    deltas.append({**_delta("checkpoint-1000", "embed.weight", 0), "rel_size": NAN, "reason": "only in base: ..."})
    overlaps = [{"base": "checkpoint-0", "a": "checkpoint-500", "b": "checkpoint-1000", "name": n, "cosine": c,
                 "subspace_overlap": o, "null": 0.1} for n, c, o in (("layers.0.q.weight", 0.2, 0.5),
                                                                     ("layers.0.mlp.weight", -0.4, 0.3))]
    if models:
        for row in checkpoints + layers:
            row["step"] = None
    return compare.make_result(checkpoints, layers, deltas, overlaps, CompareParams(k=4), folder=None if models else "run")


@pytest.fixture
def result():
    return hand_made()


def test_heatmap_puts_each_alpha_in_its_cell_and_marks_the_untrusted_ones(result):
    fig = charts.alpha_heatmap(result)
    heat, marks = fig.data
    assert list(heat.x) == ["checkpoint-0", "checkpoint-500", "checkpoint-1000"]  # the failed one left out
    assert list(heat.y) == list(LAYERS)
    z = np.asarray(heat.z, dtype=float)
    np.testing.assert_array_equal(z[0], ALPHA["embed.weight"])
    assert np.isnan(z[1, 2])  # no fit: a blank cell, and no mark
    untrusted = {(x, y) for x, y in zip(marks.x, marks.y)}
    assert untrusted == {("checkpoint-0", "layers.0.q.weight"), ("checkpoint-0", "layers.0.mlp.weight"),
                         ("checkpoint-500", "layers.0.mlp.weight")}
    assert marks.mode == "markers" and "not trusted" in marks.name
    assert fig.layout.xaxis.type == fig.layout.yaxis.type == "category"
    assert fig.layout.xaxis.showticklabels is not False and fig.layout.yaxis.showticklabels is not False
    assert fig.layout.xaxis.title.text == "checkpoint, in step order" and fig.layout.yaxis.title.text
    assert "3 of 8 fits not trusted" in fig.layout.title.subtitle.text
    assert "1 that failed not shown" in fig.layout.title.subtitle.text


def test_mean_alpha_over_steps_sets_the_trusted_mean_beside_every_fit_and_the_phases(result):
    fig = charts.mean_alpha_over_steps(result)
    by_name = {t.name: t for t in fig.data}
    mean = by_name["mean alpha, trusted fits"]
    assert list(mean.x) == list(STEPS)
    np.testing.assert_allclose(mean.y, [5.0, 3.25, 2.85])
    assert list(mean.text) == ["1 of 3", "2 of 3", "2 of 3"]  # the count of trusted layers beside it
    np.testing.assert_allclose(by_name["mean alpha, every fit"].y, [14.5 / 3, 12.5 / 3, 2.85])
    points = by_name["alpha of a trusted layer"]
    assert len(points.x) == 5 and set(points.y) == {5.0, 4.0, 2.5, 3.5, 2.2}
    assert list(by_name["trusted layers"].y) == [1, 2, 2]
    assert list(by_name["heavy-tailed"].y) == [1, 2, 2] and by_name["heavy-tailed"].type == "bar"
    failed = by_name["failed checkpoint"]
    assert list(failed.x) == [1500] and "text file" in failed.text[0]
    assert fig.layout.yaxis.title.text == "alpha (power-law exponent)"
    assert fig.layout.yaxis2.title.text == "layers (count)" and fig.layout.xaxis2.title.text == "training step"


def test_a_list_of_models_is_drawn_against_their_names():
    fig = charts.mean_alpha_over_steps(hand_made(models=True))
    assert fig.layout.xaxis2.title.text == "model" and fig.layout.xaxis.type == "category"
    assert list(fig.data[2].x) == ["checkpoint-0", "checkpoint-500", "checkpoint-1000"]
    assert charts.alpha_heatmap(hand_made(models=True)).layout.xaxis.title.text == "model"


def test_alpha_of_b_against_a_is_matched_by_layer_over_y_equals_x(result):
    fig = charts.alpha_a_vs_b(result)
    both, other, diagonal = fig.data
    # First against last by default; q has no fit at the last checkpoint, so two layers are drawn.
    assert list(both.text) == ["embed.weight"] and (both.x[0], both.y[0]) == (5.0, 3.5)
    assert list(other.text) == ["layers.0.mlp.weight"] and other.marker.symbol == "circle-open"
    assert list(diagonal.x) == list(diagonal.y) == [2.2, 6.5]
    chosen = charts.alpha_a_vs_b(result, "checkpoint-500", "checkpoint-0")
    assert "checkpoint-500" in chosen.layout.xaxis.title.text and "checkpoint-0" in chosen.layout.yaxis.title.text
    assert sum(len(t.x) for t in chosen.data[:-1]) == 3


def test_delta_geometry_draws_size_ranks_and_angles_beside_the_random_subspace(result):
    fig = charts.delta_geometry(result, "checkpoint-1000")
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["|dW|_F / |W_base|_F"].y) == [0.1, 0.01]  # embed.weight is only in the base
    assert list(by_name["|dW|_F / |W_base|_F"].text) == ["layers.0.q.weight", "layers.0.mlp.weight"]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"
    null = by_name["random subspace, left (cos^2 = k/N)"]
    np.testing.assert_allclose(null.y, [60.0, 60.0])  # cos^2 = 0.25
    assert list(by_name["mean angle, left (output side)"].y) == [80.0, 80.0]
    assert "not shown: 1 only in base" in fig.layout.title.subtitle.text
    assert fig.layout.xaxis3.title.text == "layer (model order)" and fig.layout.yaxis3.title.text == "angle (degrees)"
    assert charts.delta_geometry(result).data[0].y == charts.delta_geometry(result, "checkpoint-500").data[0].y


def test_overlap_matrix_is_symmetric_with_its_ticks_labelled(result):
    fig = charts.overlap_matrix(result)
    cosine, overlap = fig.data
    assert list(cosine.x) == list(cosine.y) == ["checkpoint-500", "checkpoint-1000"]
    np.testing.assert_allclose(cosine.z, [[1.0, -0.1], [-0.1, 1.0]])  # mean over the two layers
    np.testing.assert_allclose(overlap.z, [[1.0, 0.4], [0.4, 1.0]])
    assert "random subspaces overlap about 0.1" in fig.layout.title.subtitle.text
    one = charts.overlap_matrix(result, "layers.0.mlp.weight")
    np.testing.assert_allclose(one.data[0].z, [[1.0, -0.4], [-0.4, 1.0]])
    layout = fig.to_plotly_json()["layout"]
    for axis in ("xaxis", "yaxis", "xaxis2"):
        assert layout[axis]["type"] == "category" and layout[axis].get("showticklabels") is not False
        assert layout[axis]["title"]["text"] == "derived model"
    assert layout["yaxis2"]["matches"] == "y"  # both panels show the same models down the side, ticked once


def test_charts_with_nothing_to_draw_are_none():
    alone = hand_made()
    alone.checkpoints = alone.checkpoints[:1]
    alone.deltas, alone.overlaps = [], []
    assert charts.alpha_a_vs_b(alone) is None
    assert charts.delta_geometry(alone) is None and charts.overlap_matrix(alone) is None
    assert len(charts.figures(alone)) == 2


def test_a_compare_result_goes_into_a_report_and_comes_back_drawable(result):
    assert TITLES["compare"] == "Compare models"
    assert len(figures_for(result)) == 6  # heatmap, over steps, A vs B, two update geometries, overlaps
    (back,) = reports.from_json(reports.to_json([result]))
    assert back.to_dict() == result.to_dict()
    assert [f.layout.title.text for f in figures_for(back)] == [f.layout.title.text for f in figures_for(result)]
    files = list(reports.csv_tables([result]))
    assert [f.rsplit("-", 1)[1] for f in files] == ["checkpoints.csv", "layers.csv", "deltas.csv", "overlaps.csv"]


def test_long_names_tick_by_their_ends_unless_two_end_alike():
    r = hand_made(models=True)
    rename = {"checkpoint-0": "/data/runs/base/model.safetensors",
              "checkpoint-500": "/data/finetune-on-legal-text/final/model.safetensors",
              "checkpoint-1000": "/data/finetune-on-code/final/model.safetensors"}
    for row in r.checkpoints + r.layers:
        row["checkpoint"] = rename.get(row["checkpoint"], row["checkpoint"])
    heat = charts.alpha_heatmap(r).layout.xaxis
    assert list(heat.tickvals) == list(rename.values())  # the categories stay the whole names
    assert list(heat.ticktext) == ["…" + name[-(charts.SHORT_NAME - 1):] for name in rename.values()]
    assert len(set(heat.ticktext)) == 3
    for row in r.overlaps:
        row["a"], row["b"] = rename[row["a"]], rename[row["b"]]
    axis = charts.overlap_matrix(r).layout.xaxis
    # Their last 24 characters are the same: the ticks show the whole names.
    assert list(axis.ticktext) == list(axis.tickvals) == [rename["checkpoint-500"], rename["checkpoint-1000"]]
    assert charts.mean_alpha_over_steps(hand_made()).layout.xaxis.tickformat == ",d"  # 500,000, not 500k
