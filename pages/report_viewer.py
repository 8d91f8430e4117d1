"""Open a report.json saved earlier and see the same charts and tables again."""

import streamlit as st

import reports
import ui
from models import OrthoscopeError
from reports.registry import TITLES, figures_for
from ui.tables import show_table

ui.sidebar()
st.title("Open a report")
st.caption("Load a report.json exported by the dashboard or the CLI.")

upload = st.file_uploader("report.json", type=["json"], key="report_upload")
if upload is not None:
    try:
        loaded = reports.from_json(upload.getvalue())
    except OrthoscopeError as exc:
        st.error(str(exc))
    else:
        st.success(f"{len(loaded)} result(s) loaded.")
        for i, result in enumerate(loaded):
            st.subheader(f"{TITLES.get(result.diagnostic, result.diagnostic)}: {result.model_name}")
            st.caption(f"fingerprint `{result.fingerprint[:16]}` · params `{result.params}`")
            for j, fig in enumerate(figures_for(result)):
                st.plotly_chart(fig, key=f"report_fig_{i}_{j}")
            for stem, frame in result.tables().items():
                st.markdown(f"**{stem}**")
                show_table(frame, result.diagnostic, stem, key=f"report_table_{i}_{stem}")
