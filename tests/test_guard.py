"""ui.guard.drawing: an unexpected exception while a page draws a result becomes one st.error line (the
CLI's exit-3 wording) and a traceback in the server log, never Streamlit's exception box; st.stop() and
st.rerun() pass through; a refusal (OrthoscopeError) shows its own message, as literal text."""

from __future__ import annotations

import logging

from streamlit.testing.v1 import AppTest

import reports
from reports import registry
from tests import result_fixtures as results
from tests.apptest import APP, errors, open_page
from tests.test_markup import hostile
from ui.guard import internal_error_line, literal

TIMEOUT = 180
LINE = internal_error_line(RuntimeError("boom"))


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def _open_report(doc: str) -> AppTest:
    at = open_page("pages/report_viewer.py", timeout=TIMEOUT)
    return at.file_uploader(key="report_upload").set_value(("report.json", doc.encode(), "application/json")).run()


def test_a_chart_that_raises_in_the_report_viewer_shows_one_error_line(monkeypatch, caplog):
    doc = reports.to_json([results.overview(), results.spectra()])
    monkeypatch.setattr(registry, "figures_for", _boom)
    with caplog.at_level(logging.ERROR, logger="orthoscope.pages"):
        at = _open_report(doc)
    assert not at.exception
    # One line per result: each result is drawn in its own guard, so the second is tried too.
    assert errors(at) == [literal(LINE)] * 2, errors(at)
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


def test_a_chart_builder_that_raises_on_a_page_shows_one_error_line(monkeypatch):
    import charts.overview

    monkeypatch.setattr(charts.overview, "params_per_block", _boom)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert literal(LINE) in errors(at), errors(at)
    assert {m.label for m in at.metric} >= {"Model", "Parameters"}  # drawn before the chart that failed


def test_a_report_with_hostile_names_opens_with_the_names_as_literal_text():
    doc = reports.to_json([hostile(results.overview())])
    at = _open_report(doc)
    assert not at.exception and not errors(at), errors(at)
    (heading,) = [h.value for h in at.subheader]
    assert heading.startswith("Model overview: SmolLM2-135M-Instruct\\<a href=")
    assert "![" not in heading.replace("\\[", "") and "](" not in heading.replace("\\]", "")


def _guarded_script():
    import streamlit as st

    from models import OrthoscopeError
    from ui import guard

    runs = st.session_state.setdefault("runs", 0)
    st.session_state["runs"] = runs + 1
    with guard.drawing("a rerun"):
        if runs == 0:
            st.rerun()
    st.write(f"run {runs}")
    with guard.drawing("a refusal"):
        raise OrthoscopeError("bad *file* ![x](https://evil.example/x.png)")
    with guard.drawing("a stop"):
        st.write("before the stop")
        st.stop()
    st.write("after the stop")


def test_stop_and_rerun_pass_through_the_guard_and_refusals_show_their_message():
    at = AppTest.from_function(_guarded_script, default_timeout=60).run()
    assert not at.exception
    texts = [m.value for m in at.markdown]
    assert "run 1" in texts  # st.rerun() in the guard reran the script
    assert "before the stop" in texts and "after the stop" not in texts  # st.stop() stopped it
    assert errors(at) == [literal("bad *file* ![x](https://evil.example/x.png)")]
