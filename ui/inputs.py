"""What users ask for: numbers typed into text widgets, and the settings of the last button press."""

from __future__ import annotations

import streamlit as st

from models import OrthoscopeError


def numbers(text: str, what: str, example: str, *, allow_empty: bool = False) -> list[float]:
    """``"0.5, 1; 2"`` -> [0.5, 1.0, 2.0]; ``what`` names the field in the error message."""
    try:
        values = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise OrthoscopeError(f"{what}: cannot read {text!r}; write numbers separated by commas, e.g. {example}.") from None
    if not values and not allow_empty:
        raise OrthoscopeError(f"{what}: give at least one number.")
    return values


def last_request(state_key: str, params: dict, press: str, changed: str) -> dict:
    """The settings of the last button press (stored under ``state_key`` by the button's callback).

    Stops the page with ``press`` when nothing was asked for yet; says ``changed`` when the
    widgets now differ from what the results below were computed with.
    """
    request = st.session_state.get(state_key)
    if request is None:
        st.info(press)
        st.stop()
    if request != params:
        st.info(changed)
    return request
