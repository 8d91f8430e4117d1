"""Tables on the pages: each column's meaning (diagnostics.glossary) as its help, numbers to 4 significant digits."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from diagnostics import glossary


def column_config(frame: pd.DataFrame, diagnostic: str, table: str = "") -> dict:
    """``st.dataframe``'s column_config for ``frame``, one of ``diagnostic``'s tables (named as in ``tables()``)."""
    config = {}
    for column in frame.columns:
        text = glossary.meaning(str(column), diagnostic, table)
        if frame[column].dtype.kind == "f":
            config[column] = st.column_config.NumberColumn(format="%.4g", help=text)
        elif text:
            config[column] = st.column_config.Column(help=text)
    return config


def show_table(frame: pd.DataFrame, diagnostic: str, table: str = "", **kwargs) -> None:
    """``st.dataframe`` without the index, every column explained; ``kwargs`` go to ``st.dataframe``."""
    st.dataframe(frame, hide_index=True, column_config=column_config(frame, diagnostic, table), **kwargs)
