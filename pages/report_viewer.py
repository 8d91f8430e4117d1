"""Open a report.json saved earlier and see the same charts and tables again."""

import streamlit as st

import reports
import ui
from models import OrthoscopeError
from reports.registry import TITLES, figures_for
from ui import guard
from ui.tables import show_table

ui.sidebar()
st.title("Open a report")
st.caption("Load a report.json exported by the dashboard or the CLI.")

upload = st.file_uploader("report.json", type=["json"], key="report_upload")
if upload is not None:
    try:
        loaded = reports.from_json(upload.getvalue())
    except OrthoscopeError as exc:
        guard.error(exc)
    else:
        st.success(f"{len(loaded)} result(s) loaded.")
        for i, result in enumerate(loaded):
            # Every result in its own guard: one that cannot be drawn leaves the others on the page.
            with guard.drawing(f"result {i + 1} of an opened report"):
                title = TITLES.get(result.diagnostic, result.diagnostic)
                st.subheader(f"{guard.literal(title)}: {guard.literal(result.model_name)}", anchor=False)
                st.caption(f"fingerprint {guard.literal(result.fingerprint[:16])} · "
                           f"params {guard.literal(result.params)}")
                for j, fig in enumerate(figures_for(result)):
                    guard.chart(st, fig, key=f"report_fig_{i}_{j}")
                for stem, frame in result.tables().items():
                    st.markdown(f"**{guard.literal(stem)}**")
                    show_table(frame, result.diagnostic, stem, key=f"report_table_{i}_{stem}")
