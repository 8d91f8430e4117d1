"""The session's report: results added from any page, exported from the sidebar."""

from __future__ import annotations

import streamlit as st

from diagnostics.result import Result
import reports
from reports.registry import TITLES
from ui.guard import literal

_KEY = "report_results"


def results() -> list[Result]:
    return st.session_state.setdefault(_KEY, [])


def add_button(result: Result, key: str) -> None:
    """A button that adds ``result`` to the report (once: the same result is not added twice)."""
    ident = (result.diagnostic, result.fingerprint, repr(sorted(result.params.items())))
    present = any((r.diagnostic, r.fingerprint, repr(sorted(r.params.items()))) == ident for r in results())
    st.button("Added to report" if present else "Add to report", key=key, disabled=present, icon=":material/add:",
              on_click=results().append, args=(result,))


def sidebar() -> None:
    st.sidebar.header("Report")
    items = results()
    if not items:
        st.sidebar.caption("Nothing added yet. Each page has an 'Add to report' button.")
        return
    for i, r in enumerate(items):
        cols = st.sidebar.columns([5, 1])
        cols[0].caption(f"{i + 1}. {TITLES[r.diagnostic]}: {literal(r.model_name)}")
        cols[1].button("", icon=":material/close:", key=f"report_remove_{i}", help="remove from the report", on_click=items.pop, args=(i,))
    st.sidebar.download_button("report.html", data=lambda: reports.to_html(items), file_name="report.html",
                               mime="text/html", key="dl_html", icon=":material/download:")
    st.sidebar.download_button("report.json", data=lambda: reports.to_json(items), file_name="report.json",
                               mime="application/json", key="dl_json", icon=":material/download:")
    st.sidebar.download_button("tables (CSV, zip)", data=lambda: reports.csv_zip(items), file_name="orthoscope-tables.zip",
                               mime="application/zip", key="dl_csv", icon=":material/download:")
