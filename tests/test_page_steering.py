"""AppTest for the Cylindrical steering page: encoder refused, tiny chat llama computed, layer bounds, the
reference settings, uploads."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from charts import steering as steering_charts
from diagnostics import steering
from diagnostics.steering import SteeringResult
from tests.apptest import errors, open_page

PAGE = "pages/steering.py"
DATA = Path(__file__).resolve().parents[1] / "data" / "steering"
SMALL = {"steer_strengths": "1, 2", "steer_penalties": "0, 1", "steer_max_heldout": 2, "steer_window": 2,
         "steer_gen_tokens": 3, "steer_neutral": 1, "steer_boot": 20, "steer_sweep": False}
PROTOCOL_KEYS = {"position": "steer_position", "unit": "steer_unit", "steer_tokens": "steer_steered_tokens",
                 "hook": "steer_hook"}
OTHER = {"position": "mean", "unit": "mean_d", "steer_tokens": "from_last", "hook": "output"}


def page(**state) -> AppTest:
    return open_page(PAGE, **state)


@pytest.fixture
def tiny(monkeypatch, tiny_chat_llama) -> dict:
    """Session state that picks the tiny chat llama as a local path."""
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tiny_chat_llama.parent))
    return {"model_source": "Local path", "local_path": str(tiny_chat_llama)}


def set_small(at: AppTest) -> AppTest:
    for key, value in SMALL.items():
        if isinstance(value, bool):
            at.checkbox(key=key).set_value(value)
        elif isinstance(value, str):
            at.text_input(key=key).set_value(value)
        else:
            at.number_input(key=key).set_value(value)
    return at.run()


def compute_and_add(at: AppTest) -> tuple[AppTest, SteeringResult]:
    at.button(key="steer_compute").click().run()
    assert not at.exception and not errors(at), (at.exception, errors(at))
    at.button(key="steer_add").click().run()
    (result,) = at.session_state["report_results"]
    assert isinstance(result, SteeringResult)
    return at, result


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


def test_tiny_llama_builtin_concept_shows_the_verdict_its_evidence_and_every_chart(tiny):
    at = page(**tiny)
    assert not at.exception and not errors(at), (at.exception, errors(at))
    assert at.selectbox(key="steer_concept").value == "dogs"
    assert at.number_input(key="steer_layer").value == steering.default_layer(4) == 2
    assert not at.get("plotly_chart")  # nothing runs before Compute
    at.number_input(key="steer_layer").set_value(1)
    at = set_small(at)
    at, result = compute_and_add(at)
    assert not any("press Compute" in i.value for i in at.info)
    assert result.layer == 1 and result.n_layers == 4 and result.n_steered == 2
    assert result.params["strengths"] == [1.0, 2.0] and result.params["sweep"] is False
    assert {(g["s"], g["p"]) for g in result.grid} == {(1, 0), (1, 1), (2, 0), (2, 1)}

    # The verdict comes first and is the result's own sentence, as a success only when the concept reached the text.
    verdict = result.summary["verdict"]
    shown = at.success if result.summary["concept_in_text"] else at.warning
    assert [v.value for v in shown] == [verdict]

    # Both settings (the axis, the self-steering cell) show the same four metrics: their labels repeat.
    metrics = [(m.label, m.value, m.proto.delta) for m in at.metric]
    axis, cell = result.summary["best_axis"], result.summary["best_self"]
    assert axis is not None and cell is not None  # a random tiny model does not garble neutral text at these strengths
    unsteered = f"{result.unsteered['rate']:.0%}"
    for row, setting in ((axis, f"Axis at s = {axis['s']:g} x |a|"),
                         (cell, f"Self-steering at s = {cell['s']:g}, p = {cell['p']:g}")):
        assert any(setting in m.value for m in at.markdown)
        assert ("Concept gain (nats)", f"{row['concept_gain']:+.3g}",
                f"95% CI {row['concept_gain_lo']:+.3g} to {row['concept_gain_hi']:+.3g}") in metrics
        assert ("Random, same norm (nats)", f"{row['null_gain']:+.3g}",
                f"95th percentile {row['null_q95']:+.3g}") in metrics
        assert ("Rate: steered/random/unsteered",
                f"{row['concept_rate']:.0%} / {row['null_rate']:.0%} / {unsteered}",
                f"steered 95% CI {row['concept_rate_lo']:.0%} to {row['concept_rate_hi']:.0%}") in metrics
        assert ("Perplexity ratio (neutral text)", f"{row['ppl_ratio']:.3g}x",
                f"random {row['null_ppl_ratio']:.3g}x · limit 3x") in metrics
    half, held = result.uncertainty["split_half_cos"], result.uncertainty["mean_cos_heldout"]
    assert ("Split-half axis agreement (cos)", f"{half['value']:.3f}",
            f"95% interval {half['lo']:.3f} to {half['hi']:.3f}") in metrics
    assert ("Held-out mean cos(theta)", f"{held['value']:.3f}", f"95% CI {held['lo']:.3f} to {held['hi']:.3f}") in metrics

    charts = at.get("plotly_chart")
    assert len(charts) == len(steering_charts.figures(result)) == 8  # no sweep
    specs = [json.loads(c.proto.spec)["layout"] for c in charts]
    titles = [s["title"]["text"] + " " + s["title"].get("subtitle", {}).get("text", "") for s in specs]
    assert "CRH protocol" in titles[0] and "directions protocol" in titles[1]
    assert all("block 1" in t for t in titles)
    assert all("held-out" in t for t in titles)

    frames = [d.value for d in at.dataframe]
    assert len(frames) == 6  # protocol options, grid, directions, self-steering, examples, every continuation
    assert len(frames[1]) == 4 and len(frames[2]) == 10 and len(frames[3]) == 2
    assert list(frames[4].columns) == ["prompt", "s", "p", "unsteered", "steered", "random"]
    assert len(frames[5]) == len(result.steered)
    assert list(frames[0]["this run"]) == [result.params[k] for k in steering.REFERENCE]

    assert at.button(key="steer_add").disabled  # added once
    at.number_input(key="steer_sectors").set_value(4).run()
    assert any("press Compute" in i.value for i in at.info)


def test_the_reference_button_resets_the_protocol_options_and_the_run_follows_them(tiny):
    at = set_small(page(**tiny))
    for option, key in PROTOCOL_KEYS.items():
        widget = at.selectbox(key=key)
        assert widget.value == steering.REFERENCE[option]
        assert f"(reference: {steering.REFERENCE[option]})" in widget.label
        widget.set_value(OTHER[option])
    at.run()
    at, result = compute_and_add(at)
    assert {o: result.params[o] for o in OTHER} == OTHER
    assert any("differs from the reference in: token position, strength unit, steered tokens, layer convention" in c.value
               for c in at.caption)
    assert result.unit_value == pytest.approx(result.mean_norm)  # the mean_d unit reached the run

    at.button(key="steer_use_reference").click().run()
    assert not at.exception and not errors(at), (at.exception, errors(at))
    assert {o: at.selectbox(key=k).value for o, k in PROTOCOL_KEYS.items()} == steering.REFERENCE
    assert any("press Compute" in i.value for i in at.info)


def test_layer_input_is_bounded_by_the_models_blocks(tiny):
    at = page(**tiny)
    assert not at.exception
    layer = at.number_input(key="steer_layer")
    assert (layer.min, layer.max) == (0, 3)
    assert "0 to 3" in layer.label


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _dog_rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "dogs.jsonl").read_text(encoding="utf-8").splitlines()[:10]]


def test_uploaded_triples_run_and_a_bad_row_is_named(tiny):
    rows = _dog_rows()
    at = page(**tiny, steer_source="Upload triples")
    assert any("Upload a triple file" in i.value for i in at.info)
    at.text_input(key="steer_concept_name").set_value("hounds")
    at.text_input(key="steer_words").set_value("dog, dogs")
    at.file_uploader(key="steer_upload").set_value(("hounds.jsonl", _jsonl(rows), "application/jsonl")).run()
    assert any("10 triples from hounds.jsonl" in c.value for c in at.caption)
    at = set_small(at)
    at, result = compute_and_add(at)
    assert result.concept["name"] == "hounds" and result.concept["words"] == ["dog", "dogs"]
    assert result.params["source"] == "uploaded triples" and result.n_fit + result.n_heldout == 10

    bad = [*rows[:6], {**rows[6], "positive": "  "}, *rows[7:]]
    at.file_uploader(key="steer_upload").set_value(("bad.jsonl", _jsonl(bad), "application/jsonl")).run()
    assert not at.exception
    assert errors(at) == ["bad.jsonl, row 7: the response with the concept is empty."]


def test_an_upload_without_concept_words_is_refused_with_a_clear_error(tiny):
    at = page(**tiny, steer_source="Upload triples")
    at.text_input(key="steer_concept_name").set_value("hounds")
    at.file_uploader(key="steer_upload").set_value(("hounds.jsonl", _jsonl(_dog_rows()), "application/jsonl")).run()
    assert not at.exception
    (message,) = errors(at)
    assert message.startswith("Give the concept words for 'hounds', comma-separated")
    assert not [b for b in at.button if b.key == "steer_compute"]  # nothing to compute without them
