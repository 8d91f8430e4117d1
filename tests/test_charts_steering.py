"""The steering charts on a hand-made result: each trace carries the result's numbers, nulls beside effects,
axes titled with their units, every title naming its protocol and split, and a JSON round trip drawing the same."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from charts import steering as charts
from diagnostics.steering import SteeringResult

STRENGTHS = (1.0, 2.0)
PENALTIES = (0.0, 1.0)
NAMES = ("axis", "pc1", "probe", "control", "random")


def cell(k: int, s: float, **extra) -> dict:
    """One aggregated row with numbers that differ between rows (k tells them apart)."""
    gain = 0.1 * k + 0.01 * s
    rate = min(1.0, 0.05 * k + 0.1 * s)
    return {"n": 3, "concept_gain": gain, "concept_gain_lo": gain - 0.03 * s, "concept_gain_hi": gain + 0.05 * s,
            "null_gain": 0.002 * s, "null_gain_sd": 0.01 * s, "null_q95": 0.02 * s, "concept_rate": rate,
            "concept_rate_lo": max(0.0, rate - 0.1), "concept_rate_hi": min(1.0, rate + 0.2), "null_rate": 0.01 * k,
            "ppl_ratio": 1.0 + 0.1 * k * s, "null_ppl_ratio": 1.01, "repetition": 0.02 * k, "null_repetition": 0.01,
            "fraction_reaching": 1 / 3, "reaching": k > 0, "text_pvalue": 0.5, **extra}


def make_result(unit: str = "axis", sweep: bool = True) -> SteeringResult:
    grid = [{"s": s, "p": p, **cell(10 + 2 * j, s)} for j, p in enumerate(PENALTIES) for s in STRENGTHS]
    directions = [{"direction": d, "s": s, **cell(i, s)} for s in STRENGTHS for i, d in enumerate(NAMES)]
    for row in directions:
        if row["direction"] == "random":
            row.update(concept_gain=row["null_gain"], fraction_reaching=math.nan, reaching=None, text_pvalue=math.nan)
    fit = [{"index": i, "split": "fit", "prompt": f"fit prompt {i}", "cos_theta": 0.5, "norm": 5.0, "normal_norm": 4.0,
            "x": math.cos(i), "y": math.sin(i), "phi_deg": math.degrees(i % (2 * math.pi)), "sector": i % 4}
           for i in range(6)]
    held = [{"index": 10 + i, "split": "held-out", "prompt": f"held-out prompt {i}", "cos_theta": 0.3 + 0.1 * i,
             "norm": 4.0, "normal_norm": 3.0, "x": 2.0 * (i + 1), "y": -1.0 * i, "phi_deg": 0.0, "sector": i % 4}
            for i in range(4)]
    steerability = [0.5, 0.0, 0.0]
    selfs = [{**held[i], "p": 0.0, "min_strength": 2.0 if steerability[i] else math.nan, "steerability": steerability[i],
              "gain_at_max": 0.3 - 0.1 * i, "null_gain_at_max": 0.004, "null_q95_at_max": 0.04, "rate": 0.5,
              "mentions_at_max": True, "ppl_ratio_at_max": 1.2} for i in range(3)]
    for r in selfs:
        del r["split"]
    sectors = [{"sector": k, "phi_from_deg": 90.0 * k, "phi_to_deg": 90.0 * (k + 1), "count": [1, 1, 1, 0][k],
                "fraction_reaching": [1.0, 0.0, 0.0, math.nan][k], "mean_steerability": [0.5, 0.0, 0.0, math.nan][k],
                "mean_gain": [0.3, 0.2, 0.1, math.nan][k], "mean_cos_theta": [0.3, 0.4, 0.5, math.nan][k]}
               for k in range(4)]
    axis_row = next(r for r in directions if r["direction"] == "axis" and r["s"] == 2.0)
    return SteeringResult(
        model_name="toy", fingerprint="f" * 64,
        params={"concept": "dogs", "unit": unit, "hook": "input", "position": "last", "steer_tokens": "all",
                "temperature": 0.0, "gen_tokens": 8, "neutral_sentences": 2, "strengths": list(STRENGTHS),
                "penalties": list(PENALTIES)},
        timings={"total_s": 4.0},
        concept={"name": "dogs", "words": ["dog"], "forms": [],
                 "control": {"name": "ocean", "n_triples": 12, "cos_with_axis": 0.12}},
        layer=3, n_layers=6, hidden_size=8, n_fit=6, n_heldout=4, n_steered=3, axis_norm=2.0, mean_norm=5.0,
        unit_value=2.0 if unit == "axis" else 5.0, explained=[0.5, 0.2],
        uncertainty={"level": 0.95, "boot": 20, "split_half_cos": {"value": 0.9, "lo": 0.8, "hi": 0.95},
                     "mean_cos_fit_loo": {"value": 0.4, "lo": 0.3, "hi": 0.5},
                     "mean_cos_heldout": {"value": 0.35, "lo": 0.25, "hi": 0.45}},
        baselines={"names": ["axis (mean d)", "first PC, uncentred", "first PC, centred", "logistic probe"],
                   "cosines": np.eye(4).tolist(), "probe_train_accuracy": 1.0, "probe_heldout_accuracy": 0.75,
                   "axis_heldout_accuracy": 0.625},
        heldout={"mean_cos_theta": 0.35, "n": 4}, samples=fit + held, self_steering=selfs, grid=grid,
        directions=directions, sectors=sectors, steered=[],
        unsteered={"rate": 0.1, "rate_lo": 0.02, "rate_hi": 0.4},
        summary={"verdict": "Steering does not put the concept into the text beyond chance.", "concept_in_text": False,
                 "best_axis": axis_row, "best_self": grid[0], "axis_gain": "axis at s = 2", "ppl_limit": 3.0,
                 "unsteered_rate": 0.1},
        examples=[], notes=[],
        sweep=[{"layer": i, "axis_norm": 1.0 + i, "mean_norm": 2.0, "mean_cos_theta": 0.3, "normal_spread": 1.0,
                "spread_ratio": 1.0 / (1.0 + i), "plane_explained": 0.6} for i in range(6)] if sweep else [],
        work={"steering_passes": 30, "activation_passes": 10, "steering_s": 1.0, "activation_s": 1.0},
    )


def trace(fig, name: str):
    (found,) = [t for t in fig.data if t.name == name]
    return found


def text_of(fig) -> str:
    """Title and subtitle as one line: the subtitle is wrapped with <br> wherever its width falls."""
    title = fig.layout.title
    return f"{title.text} {title.subtitle.text or ''}".replace("<br>", " ")


def test_figures_put_the_evidence_first_and_the_sweep_last_and_optional():
    with_sweep = charts.figures(make_result())
    without = charts.figures(make_result(sweep=False))
    assert len(with_sweep) == 9 and len(without) == 8
    assert with_sweep[-1].layout.title.text.startswith("Layer sweep")
    assert [f.layout.title.text.split(",")[0] for f in without[:4]] == [
        "Self-steering concept gain", "Concept gain by direction", "Concept in the generated text",
        "Coherence under steering"]


def test_direction_gains_draw_each_direction_with_its_interval_beside_the_random_null():
    r = make_result()
    fig = charts.direction_gains(r)
    for name, label in (("axis", "axis (mean d)"), ("pc1", "first PC (centred)"), ("probe", "logistic probe"),
                        ("control", "control concept's axis (ocean)")):
        rows = [d for d in r.directions if d["direction"] == name]
        t = trace(fig, label)
        assert list(t.x) == list(STRENGTHS)
        assert np.allclose(t.y, [d["concept_gain"] for d in rows])
        assert np.allclose(t.error_y.array, [d["concept_gain_hi"] - d["concept_gain"] for d in rows])
        assert np.allclose(t.error_y.arrayminus, [d["concept_gain"] - d["concept_gain_lo"] for d in rows])
    null = [d for d in r.directions if d["direction"] == "random"]
    names = [t.name for t in fig.data]
    mean, q95 = names.index("random directions (null): mean"), names.index("random directions (null): 95th percentile")
    assert q95 == mean + 1 and fig.data[q95].fill == "tonexty"  # the band runs from the mean up to the 95th percentile
    assert np.allclose(fig.data[mean].y, [d["null_gain"] for d in null])
    assert np.allclose(fig.data[q95].y, [d["null_q95"] for d in null])
    assert "directions protocol: each direction at norm s x unit on every held-out prompt" in text_of(fig)
    assert fig.layout.xaxis.title.text == "strength s (x |a|; 1 = 2 hidden-state units)"
    assert fig.layout.yaxis.title.text == "concept gain (nats)"


def test_the_strength_axis_names_the_unit_of_the_run():
    figs = charts.figures(make_result(unit="mean_d"))
    strength_axes = [f.layout.xaxis.title.text for f in figs[:4]]
    assert strength_axes == ["strength s (x mean |d|; 1 = 5 hidden-state units)"] * 4
    assert charts.summary(make_result(unit="mean_d"))["unit"] == "x mean |d|"


def test_self_steering_gains_one_line_per_penalty_each_beside_its_null():
    r = make_result()
    fig = charts.self_steering_gains(r)
    for p in PENALTIES:
        rows = [g for g in r.grid if g["p"] == p]
        assert np.allclose(trace(fig, f"self-steering, p = {p:g}").y, [g["concept_gain"] for g in rows])
        assert np.allclose(trace(fig, f"random, same norm as p = {p:g}: mean").y, [g["null_gain"] for g in rows])
        assert np.allclose(trace(fig, f"random, same norm as p = {p:g}: 95th percentile").y, [g["null_q95"] for g in rows])
    assert "CRH protocol" in text_of(fig) and "3 held-out prompts" in text_of(fig)


def test_concept_rates_show_wilson_intervals_the_null_rate_and_the_unsteered_rate():
    r = make_result()
    fig = charts.concept_rates(r)
    axis = [d for d in r.directions if d["direction"] == "axis"]
    t = trace(fig, "axis (directions protocol)")
    assert np.allclose(t.y, [d["concept_rate"] for d in axis])
    assert np.allclose(t.error_y.array, [d["concept_rate_hi"] - d["concept_rate"] for d in axis])
    assert np.allclose(trace(fig, "random, same norm as the axis").y, [d["null_rate"] for d in axis])
    cells = [g for g in r.grid if g["p"] == 1.0]
    assert np.allclose(trace(fig, "self-steering, p = 1 (CRH protocol)").y, [g["concept_rate"] for g in cells])
    unsteered = trace(fig, "unsteered (10%, 95% CI 2% to 40%)")
    assert list(unsteered.y) == [0.1, 0.1]
    assert fig.layout.yaxis.tickformat == ".0%"
    assert "greedy continuations of 8 tokens" in text_of(fig)


def test_coherence_draws_every_ppl_ratio_and_the_headlines_limit():
    r = make_result()
    fig = charts.coherence(r)
    probe = [d for d in r.directions if d["direction"] == "probe"]
    t = trace(fig, "logistic probe")
    assert np.allclose(t.y, [d["ppl_ratio"] for d in probe])
    assert np.allclose(t.customdata, [d["repetition"] for d in probe])  # repetition in the hover
    assert list(trace(fig, "coherence limit of the headline (3x)").y) == [3.0, 3.0]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"
    assert {t.name for t in fig.data} >= {"random (the null)", "self-steering, p = 0", "self-steering, p = 1"}


def test_normal_plane_greys_the_fit_triples_and_colours_the_held_out_by_steerability():
    fig = charts.normal_plane(make_result())
    fit = trace(fig, "fit triples (6)")
    assert len(fit.x) == 6 and fit.marker.color == charts._GREY
    assert len(trace(fig, "held-out, not steered (1)").x) == 1  # the fourth held-out triple was not steered
    never = trace(fig, "held-out, never beats the null (2)")
    assert list(never.x) == [4.0, 6.0] and never.marker.symbol == "circle-open"
    reach = trace(fig, "held-out, beats the null (1)")
    assert list(reach.x) == [2.0] and list(reach.marker.color) == [0.5]
    assert "CRH protocol" in text_of(fig) and "3 held-out prompts" in text_of(fig)


def test_sector_polar_says_how_few_samples_each_sector_holds():
    fig = charts.sector_polar(make_result())
    (bars,) = fig.data
    assert list(bars.r) == [0.5, 0.0, 0.0, 0.0]  # an empty sector draws as 0, not as a missing bar
    assert list(fig.layout.polar.angularaxis.ticktext) == ["0 (n = 1)", "1 (n = 1)", "2 (n = 1)", "3 (n = 0)"]
    assert "3 held-out samples over 4 sectors" in text_of(fig) and "each sector holds few" in text_of(fig)


def test_every_chart_titles_its_axes_and_names_its_protocol_and_split():
    for fig in charts.figures(make_result()):
        text = text_of(fig)
        assert "protocol" in text or "geometry" in text, text
        assert "held-out" in text or "fit triples" in text, text
        layout = fig.to_plotly_json()["layout"]
        axes = [k for k in layout if k.startswith(("xaxis", "yaxis"))]
        for name in axes:
            if layout[name].get("matches"):
                continue  # a shared axis is titled once, under the subplot that shows its ticks
            assert layout[name].get("title", {}).get("text"), (text, name)
    for fig in charts.figures(make_result())[:4]:
        assert fig.layout.xaxis.exponentformat == "power"


def test_summary_reads_the_result_without_recomputing():
    r = make_result()
    s = charts.summary(r)
    assert s["verdict"] == r.summary["verdict"] and s["concept_in_text"] is False
    assert s["best_axis"] is r.summary["best_axis"] and s["ppl_limit"] == 3.0
    assert s["unsteered"] == {"value": 0.1, "lo": 0.02, "hi": 0.4}
    assert s["split_half_cos"] == {"value": 0.9, "lo": 0.8, "hi": 0.95}
    assert s["mean_cos_heldout"] == {"value": 0.35, "lo": 0.25, "hi": 0.45}
    assert (s["self_reaching"], s["n_steered"], s["self_penalty"]) == (1, 3, 0.0)
    assert s["passes"] == 40 and s["passes_per_s"] == pytest.approx(20.0)


def test_a_json_round_trip_draws_the_same_charts():
    r = make_result()
    back = SteeringResult.from_dict(json.loads(json.dumps(r.to_dict())))
    for before, after in zip(charts.figures(r), charts.figures(back), strict=True):
        assert before.to_json() == after.to_json()  # NaN in the result and null in its JSON draw alike
