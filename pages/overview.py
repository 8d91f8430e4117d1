"""Model overview: every tensor, its size and norm, and what the analysis does with it."""

import streamlit as st

from charts import overview as charts
from diagnostics import overview
import ui
from ui import cache, guard, model_picker, report_basket
from ui.tables import show_table

ui.sidebar()
st.title("Model overview")


handle = model_picker.current_model()
if handle is not None:
    with guard.drawing("the model overview"):
        bar = st.progress(0.0, text="Reading tensors ...")
        result = cache.cached(
            cache.result_key("overview", handle.fingerprint, {}),
            lambda: overview.run(handle, {}, progress=lambda f, m: bar.progress(f, text=f"Reading {guard.literal(m)}")),
        )
        bar.empty()

        c = st.columns(4)
        c[0].metric("Model", guard.literal(result.model_name))
        c[1].metric("Kind", guard.literal(result.kind))
        c[2].metric("Parameters", f"{result.num_params:,}")
        frame = result.to_frame()
        c[3].metric("Analysed tensors", f"{int(frame['analysed'].sum())} of {len(frame)}")
        st.caption(f"Fingerprint (sha256 of the weight files): `{result.fingerprint}`")

        left, right = st.columns(2)
        guard.chart(left, charts.params_per_block(result), key="overview_blocks")
        guard.chart(right, charts.params_per_kind(result), key="overview_kinds")

        only_skipped = st.toggle("Show only skipped tensors", key="overview_only_skipped")
        show_table(frame[~frame["analysed"]] if only_skipped else frame, "overview", "tensors")
        report_basket.add_button(result, key="overview_add")
