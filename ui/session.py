"""What navigation, a reload or a shared link must keep: the chosen model and the report basket.

- Navigation: the sidebar is drawn by each page script, and Streamlit forgets the value of a
  widget that the page now shown did not draw itself. Assigning the picker's keys, and every
  page's option keys, to themselves at the top of every run makes them plain session state, which
  outlives the page. (The pages live in ``pages/``, which Streamlit also reads as its older
  multipage layout; drawing the sidebar once in app.py is therefore not seen on every path.)
- Reload and links: the model spec is mirrored into the URL (``?model=builtin:smollm2``); a fresh
  session reads it back before the picker is drawn. Uploads are not put in the URL: their files
  live only on this server, so a link could not carry them.
- The basket: a reload starts a new Streamlit session, so the basket is kept on the server under a
  random token that is also in the URL (``?session=...``). A server-side store was chosen over the
  browser's local storage because it needs no custom JavaScript component and the results (with
  their tables) can be large; it lives as long as the server process, bounded to the most recent
  sessions.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

import streamlit as st

from models import BUILTINS

PICKER_KEYS = ("model_source", "builtin_key", "local_path", "hf_id", "upload_mode")
PAGE_PREFIXES = ("overview_", "spectra_", "align_", "directions_", "steer_", "opt_")
BASKET_KEY = "report_results"
MAX_SESSIONS = 64
_BASKETS: OrderedDict[str, list] = OrderedDict()
_LOCK = threading.Lock()


def keep_picker() -> None:
    for key in PICKER_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def keep_options() -> None:
    """Keep every page's option widgets (keys with a page's prefix) across navigation.

    Buttons and file uploaders cannot be given a value through session state, so they are told
    apart by the widget's value type, which only Streamlit's session internals know (Streamlit is
    pinned in requirements.txt); without them the options reset on navigation as they used to.
    """
    from streamlit.runtime.state import get_session_state

    try:
        state = get_session_state()._state
        for key in list(st.session_state.keys()):
            if not key.startswith(PAGE_PREFIXES):
                continue
            meta = state._get_widget_metadata(state._get_widget_id(key))
            kind = getattr(meta, "value_type", None)
            # None: elements such as dataframes with selections, whose state only Streamlit sets.
            if kind is None or "trigger" in kind or "file_uploader" in kind:
                continue
            st.session_state[key] = st.session_state[key]
    except AttributeError:
        return


def _seed_picker(spec: str) -> None:
    """Set the picker's widgets from a spec in the URL (built-in, hub id or local path)."""
    if spec.startswith("builtin:") and spec.removeprefix("builtin:") in BUILTINS:
        st.session_state.update(model_source="Built-in", builtin_key=spec.removeprefix("builtin:"))
    elif spec.startswith("hf:"):
        st.session_state.update(model_source="Hugging Face", hf_id=spec.removeprefix("hf:"))
    elif spec:
        st.session_state.update(model_source="Local path", local_path=spec)


def restore() -> None:
    """Once per session: the model from the URL, and the basket stored under the URL's token."""
    if st.session_state.get("_session_restored"):
        return
    st.session_state["_session_restored"] = True
    params = st.query_params
    if "model" in params and "model_source" not in st.session_state:
        _seed_picker(params["model"])
    token = params.get("session")
    if not token or len(token) > 64 or not token.isalnum():
        token = secrets.token_hex(8)
    with _LOCK:
        basket = _BASKETS.pop(token, None)
        if basket is None:
            basket = st.session_state.get(BASKET_KEY, [])
        _BASKETS[token] = basket
        while len(_BASKETS) > MAX_SESSIONS:
            _BASKETS.popitem(last=False)
    st.session_state[BASKET_KEY] = basket  # the same list: what the page adds, the store holds
    st.query_params["session"] = token


def mirror_model(spec: str | None, from_upload: bool) -> None:
    """Put the picked model into the URL, or take it out when it cannot be linked."""
    if spec and not from_upload:
        if st.query_params.get("model") != spec:
            st.query_params["model"] = spec
    elif "model" in st.query_params:
        del st.query_params["model"]
