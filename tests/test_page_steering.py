"""AppTest for the Cylindrical steering page: encoder refused, tiny chat llama computed, layer bounds, uploads."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from diagnostics import steering
from diagnostics.steering import SteeringResult
from tests.apptest import errors, open_page

PAGE = "pages/steering.py"
DATA = Path(__file__).resolve().parents[1] / "data" / "steering"
SMALL = {"steer_strengths": "1, 2", "steer_penalties": "0, 1", "steer_grid_samples": 2, "steer_heldout_prompts": 2,
         "steer_neutral": 2, "steer_gen_tokens": 4, "steer_gen_prompts": 1}


def page(**state) -> AppTest:
    return open_page(PAGE, **state)


@pytest.fixture
def tiny(monkeypatch, tiny_chat_llama) -> dict:
    """Session state that picks the tiny chat llama as a local path."""
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tiny_chat_llama.parent))
    return {"model_source": "Local path", "local_path": str(tiny_chat_llama)}


def set_small(at: AppTest) -> AppTest:
    for key, value in SMALL.items():
        widget = at.text_input(key=key) if isinstance(value, str) else at.number_input(key=key)
        widget.set_value(value)
    return at.run()


def test_the_default_encoder_is_refused_with_a_pointer_to_a_causal_lm():
    at = page()
    assert not at.exception, at.exception
    (message,) = errors(at)
    assert "all-MiniLM-L6-v2 is a text encoder, not a causal language model" in message
    assert "builtin:smollm2" in message
    assert not at.get("plotly_chart")
    assert not [w for w in at.number_input if w.key == "steer_layer"]  # stopped before the page's widgets

    # One click switches the sidebar to the built-in causal LM and the page opens on it.
    at.button(key="steer_use_smollm2").click().run(timeout=240)
    assert not at.exception and not errors(at), (at.exception, errors(at))
    assert at.sidebar.radio(key="model_source").value == "Built-in"
    assert at.number_input(key="steer_layer").value == steering.default_layer(30) == 18


def test_tiny_llama_builtin_concept_computes_every_chart_and_adds_the_result(tiny):
    at = page(**tiny)
    assert not at.exception and not errors(at), (at.exception, errors(at))
    assert at.selectbox(key="steer_concept").value == "dogs"
    assert at.number_input(key="steer_layer").value == steering.default_layer(4) == 2
    assert not at.get("plotly_chart")  # nothing runs before Compute
    at.number_input(key="steer_layer").set_value(1)
    at = set_small(at)
    at.button(key="steer_compute").click().run()
    assert not at.exception and not errors(at), (at.exception, errors(at))
    assert not any("press Compute" in i.value for i in at.info)
    charts = at.get("plotly_chart")
    assert len(charts) == 7  # histograms, plane, sectors, gain, corruption, baselines, sweep
    assert "block 1" in json.loads(charts[1].proto.spec)["layout"]["title"]["text"]

    at.button(key="steer_add").click().run()
    (result,) = at.session_state["report_results"]
    assert isinstance(result, SteeringResult)
    assert result.layer == 1 and result.n_layers == 4
    assert len(result.grid) == 4 and {(g["s"], g["p"]) for g in result.grid} == {(1, 0), (1, 1), (2, 0), (2, 1)}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Axis norm |a|"] == f"{result.axis_norm:.4g}"
    assert metrics["Block"] == "1"
    assert len(at.dataframe[0].value) == 1  # one generation prompt
    assert len(at.dataframe[1].value) == 40  # every built-in dog triple, fit and held-out

    at.number_input(key="steer_sectors").set_value(4).run()
    assert any("press Compute" in i.value for i in at.info)


def test_layer_input_is_bounded_by_the_models_blocks(tiny):
    at = page(**tiny)
    assert not at.exception
    layer = at.number_input(key="steer_layer")
    assert (layer.min, layer.max) == (0, 3)
    assert "0 to 3" in layer.label


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_uploaded_triples_run_and_a_bad_row_is_named(tiny):
    rows = [json.loads(line) for line in (DATA / "dogs.jsonl").read_text(encoding="utf-8").splitlines()[:10]]
    at = page(**tiny, steer_source="Upload triples")
    assert any("Upload a triple file" in i.value for i in at.info)
    at.text_input(key="steer_concept_name").set_value("hounds")
    at.text_input(key="steer_tokens").set_value(" dog, dogs")
    at.file_uploader(key="steer_upload").set_value(("hounds.jsonl", _jsonl(rows), "application/jsonl")).run()
    assert any("10 triples from hounds.jsonl" in c.value for c in at.caption)
    at = set_small(at)
    at.button(key="steer_compute").click().run()
    assert not at.exception and not errors(at), (at.exception, errors(at))
    at.button(key="steer_add").click().run()
    (result,) = at.session_state["report_results"]
    assert result.concept["name"] == "hounds" and [t["word"] for t in result.concept["tokens"]] == [" dog", " dogs"]
    assert result.params["source"] == "uploaded triples" and result.n_fit + result.n_heldout == 10

    bad = [*rows[:6], {**rows[6], "positive": "  "}, *rows[7:]]
    at.file_uploader(key="steer_upload").set_value(("bad.jsonl", _jsonl(bad), "application/jsonl")).run()
    assert not at.exception
    assert errors(at) == ["bad.jsonl, row 7: the response with the concept is empty."]
