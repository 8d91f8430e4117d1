"""AppTest for the Optimizer traces page: a background run, its charts and report, and loaded traces."""

import json
import time

from streamlit.testing.v1 import AppTest

from diagnostics import optimizer_traces, trace_recorder
from diagnostics.optimizer_traces import OptimizerTracesResult
from tests.apptest import open_page

PAGE = "pages/optimizer_traces.py"
SMALL = {"opt_optimizers": ["adamw", "muon"], "opt_seeds": 2, "opt_steps": 30, "opt_every": 10,
         "opt_alpha_every": 15, "opt_eval_every": 10, "opt_scales": "1"}
# The comparison, then the curves: loss by step and by time, held-out, geometry, per layer, alpha, times.
CHARTS = 8


def page(**state) -> AppTest:
    return open_page(PAGE, **state)


def until_done(at: AppTest, seconds: float = 120) -> AppTest:
    """Rerun the page until the background job's result is shown (the fragment's polling, by hand)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        at.run()
        if at.exception or at.error or any(d.key == "opt_runs" for d in at.dataframe if hasattr(d, "key")):
            return at
        if "opt_add" in [b.key for b in at.button]:
            return at
        time.sleep(0.5)
    raise AssertionError("the run did not finish in time")


def test_page_defaults_are_the_fair_protocol_hidden_only_with_a_sweep():
    at = page()
    assert not at.exception, at.exception
    assert at.multiselect(key="opt_scopes").value == ["hidden_only"]
    assert at.text_input(key="opt_scales").value == "0.25, 0.5, 1, 2"
    d = optimizer_traces.DEFAULTS
    runs = len(d["optimizers"]) * len(d["lr_scales"]) * d["seeds"]
    assert f"{runs} run(s) of {d['steps']} steps each." in [c.value for c in at.caption]
    # What Run trains: the defaults, hidden-only scope (with few steps, to keep the test short).
    at.number_input(key="opt_steps").set_value(10).run()
    at.button(key="opt_run").click().run()
    request = at.session_state["opt_request"]
    assert request["scopes"] == ["hidden_only"] and request["lr_scales"] == d["lr_scales"]
    defaults = optimizer_traces.check_params({"steps": 10})
    assert {k: v for k, v in request.items() if k != "lrs"} == {k: v for k, v in defaults.items() if k != "lrs"}
    assert optimizer_traces.plan(request) == optimizer_traces.plan(defaults)  # the rates shown are the defaults
    at = until_done(at)  # the background job holds the comparison lock until it ends
    assert not at.exception and not at.error


def test_page_waits_for_run_then_trains_in_the_background_and_shows_every_chart():
    at = page(**SMALL)
    assert not at.exception, at.exception
    assert any("Press Run" in i.value for i in at.info)
    assert "4 run(s) of 30 steps" in " ".join(c.value for c in at.caption)

    at.button(key="opt_run").click().run()
    assert not at.exception, at.exception
    at = until_done(at)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    charts = at.get("plotly_chart")
    assert len(charts) == CHARTS  # one learning rate each: no sweep chart
    assert "Comparison at the rates chosen on validation" in [h.value for h in at.subheader]
    assert len(at.dataframe) >= 3  # the comparison, the runs and the routing
    assert any("used for no choice" in c.value for c in at.caption)

    at.button(key="opt_add").click().run()
    (result,) = at.session_state["report_results"]
    assert isinstance(result, OptimizerTracesResult)
    runs = result.runs()
    assert sorted(runs["optimizer"]) == ["adamw", "adamw", "muon", "muon"]
    assert (runs["steps_done"] == 30).all()
    assert runs["final_test_accuracy"].between(0.5, 1).all()
    # The routing table says where Muon's parameters went: hidden layers only.
    routes = result.routes()
    muon = routes[routes["run_optimizer"] == "Muon"].set_index("name")["optimizer"]
    assert muon["2.weight"] == "muon" and muon["4.weight"] == "adamw" and muon["2.bias"] == "adamw"
    assert muon["0.weight"] == "adamw"


def test_both_scopes_and_a_sweep_show_side_by_side_with_the_sweep_chart():
    at = page(**{**SMALL, "opt_optimizers": ["muon"], "opt_seeds": 1, "opt_steps": 20, "opt_scales": "0.5, 1",
                 "opt_scopes": ["hidden_only", "all_but_head"]})
    assert "4 run(s) of 20 steps" in " ".join(c.value for c in at.caption)
    at.button(key="opt_run").click().run()
    at = until_done(at)
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert len(at.get("plotly_chart")) == CHARTS + 1
    at.button(key="opt_add").click().run()
    (result,) = at.session_state["report_results"]
    assert list(result.compare()["name"]) == ["Muon · hidden-only", "Muon · all-but-head"]


def test_changed_settings_after_a_run_are_announced():
    at = page(**SMALL)
    at.button(key="opt_run").click().run()
    at = until_done(at)
    at.number_input(key="opt_steps").set_value(40).run()
    assert any("settings above have changed" in i.value for i in at.info)


def test_bad_learning_rate_sweep_is_explained():
    at = page(**{**SMALL, "opt_scales": "1, fast"})
    assert [e.value for e in at.error] == [
        "learning-rate sweep: cannot read '1, fast'; write numbers separated by commas, e.g. 0.5, 1, 2."]


def _trace_text() -> str:
    result = optimizer_traces.run({"optimizers": ["sgd", "muon"], "seeds": 1, "steps": 20, "every": 5,
                                   "alpha_every": 10, "eval_every": 10, "lr_scales": [1]})
    return "".join(trace_recorder.dumps(r) + "\n" for r in result.records)


def test_loaded_trace_renders_the_charts_and_bad_traces_name_the_line():
    text = _trace_text()
    at = page(opt_source="Load a trace")
    at.file_uploader(key="opt_upload").set_value(("traces.jsonl", text.encode(), "application/jsonl")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == CHARTS
    assert any("2 run(s)" in s.value for s in at.success)

    lines = text.splitlines()
    broken = "\n".join(lines[:3] + ['{"type": "step", "run_id": '])
    at.file_uploader(key="opt_upload").set_value(("cut.jsonl", broken.encode(), "application/jsonl")).run()
    (message,) = [e.value for e in at.error]
    assert message.startswith("cut.jsonl, line 4: not valid JSON") and "truncated" in message
    assert not at.exception


def test_loss_curves_switch_to_a_linear_axis_smoothing_and_a_line_per_seed():
    at = page(opt_source="Load a trace")
    at.file_uploader(key="opt_upload").set_value(("traces.jsonl", _trace_text().encode(), "application/jsonl")).run()
    loss = [c for c in at.get("plotly_chart") if c.proto.spec and "Training loss" in c.proto.spec]
    assert [json.loads(c.proto.spec)["layout"]["yaxis"]["type"] for c in loss] == ["log", "log"]
    at.toggle(key="opt_loaded_loss_log").set_value(False)
    at.toggle(key="opt_loaded_loss_per_seed").set_value(True)
    at.slider(key="opt_loaded_loss_smoothing").set_value(0.6).run()
    assert not at.exception and not at.error
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Training loss" in c.proto.spec]
    assert len(specs) == 2
    for spec in specs:
        assert spec["layout"]["yaxis"]["type"] == "linear"
        assert "EMA 0.6" in spec["layout"]["title"]["subtitle"]["text"]
        assert any(t["name"].endswith("seed 0") for t in spec["data"])
