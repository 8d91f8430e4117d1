"""Orthoscope dashboard entry point: navigation, the shared sidebar, nothing computed here."""

import streamlit as st

from reports.report import ICON

# An absolute path (the report's own): Streamlit resolves a relative page_icon against the folder it
# was started from, so a relative one would be missing when the app is started from elsewhere.
st.set_page_config(page_title="Orthoscope", page_icon=str(ICON), layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Model overview", icon=":material/table_chart:", default=True),
    st.Page("pages/spectra.py", title="Layer spectra", icon=":material/ssid_chart:"),
    st.Page("pages/alignment.py", title="Embedding alignment", icon=":material/compare_arrows:"),
    st.Page("pages/directions.py", title="Latent directions", icon=":material/explore:"),
    st.Page("pages/steering.py", title="Cylindrical steering", icon=":material/adjust:"),
    st.Page("pages/optimizer_traces.py", title="Optimizer traces", icon=":material/timeline:"),
    st.Page("pages/compare.py", title="Compare models", icon=":material/difference:"),
    st.Page("pages/report_viewer.py", title="Open a report", icon=":material/folder_open:"),
]

page = st.navigation(PAGES)
page.run()
