"""What navigation, a reload or a shared link must keep: the chosen model, page settings, the report basket.

- Navigation: the sidebar is drawn by each page script, and Streamlit forgets the value of a
  widget that the page now shown did not draw itself. Assigning the picker's keys, and every
  page's option keys, to themselves at the top of every run makes them plain session state, which
  outlives the page. (The pages live in ``pages/``, which Streamlit also reads as its older
  multipage layout; drawing the sidebar once in app.py is therefore not seen on every path.)
- Reload and links: the model spec is mirrored into the URL (``?model=builtin:smollm2``); a fresh
  session reads it back before the picker is drawn. An upload goes in as ``upload:HASH/NAME`` (its
  folder under this server's private upload directory): a reload or a link opened on this server
  finds it while the server holds it (ui/uploads.py deletes uploads after a time limit).
- The basket: a reload starts a new Streamlit session, so the basket is kept on the server under a
  random token that is also in the URL (``?session=...``). A server-side store was chosen over the
  browser's local storage because it needs no custom JavaScript component and the results (with
  their tables) can be large; it lives as long as the server process, bounded to the most recent
  sessions.
- Page settings in the URL: the option widgets of the page shown (keys with that page's prefix)
  whose value differs from the widget's default are mirrored into the query string, in Streamlit's
  own wire form for widgets (the form ``bind="query-params"`` uses), not JSON:
  ``?spectra_randomize=true&spectra_min_evals=12&spectra_fix_fingers=clip_xmax`` -- a bool as
  ``true``/``false``, a number as written, a choice (selectbox, radio) as the option's label, a
  multiselect or range slider as the parameter repeated (``?opt_optimizers=AdamW&opt_optimizers=Muon``;
  emptied: ``?opt_scopes=``). Mirrored: checkboxes/toggles, number inputs, sliders, select sliders,
  selectboxes, radios, multiselects, pills/segmented controls, colour pickers and text inputs, with
  values of at most 200 characters (30 items). Never: buttons, uploaders, text areas, dates, chart
  and table selections, or session state that is not a widget (``steer_request`` ...). The widget
  kind and default come from Streamlit's widget metadata (pinned version), which exists for the
  widgets the previous run drew; so the mirror is refreshed at the start of each run, and kept per
  page: on a page switch the URL swaps to the settings last seen on the page now shown.
- Reading them back: a link is untrusted input. A fresh session keeps the shown page's parameters
  pending (other pages' are dropped); once the page has drawn its widgets (at the next run, or from
  a one-second fragment timer, which then reruns the app, as no run follows by itself), each value is
  parsed and checked by that widget's own deserializer and serializer (type, bounds, options,
  length; a value the widget would clamp or coerce is refused): valid ones are assigned, invalid ones
  dropped with a toast naming them and taken out of the URL. A parameter whose widget has not appeared
  (one shown only with a result, or an unknown key) waits up to two minutes, then goes silently. A
  value already chosen in this session is never replaced.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import streamlit as st

from models import BUILTINS
from ui import guard

PICKER_KEYS = ("model_source", "builtin_key", "local_path", "hf_id", "upload_mode")
# The pages' option keys start with their page's prefix; the page is known by its script's name.
PAGE_PREFIX_OF = {"overview": "overview_", "spectra": "spectra_", "alignment": "align_",
                  "directions": "directions_", "steering": "steer_", "optimizer_traces": "opt_",
                  "compare": "compare_"}
PAGE_PREFIXES = tuple(PAGE_PREFIX_OF.values())
BASKET_KEY = "report_results"
MAX_SESSIONS = 64
_BASKETS: OrderedDict[str, list] = OrderedDict()
_LOCK = threading.Lock()


def keep_picker() -> None:
    """Keep the picker's widgets, and a copy of them outside any widget: a page switch while a
    fragment of the page left behind still runs (a job's progress) can end a run before the
    sidebar is drawn, and Streamlit then drops the picker's widget values."""
    copy = st.session_state.setdefault("_picker_copy", {})
    for key in PICKER_KEYS:
        if key in st.session_state:
            st.session_state[key] = copy[key] = st.session_state[key]
        elif key in copy:
            st.session_state[key] = copy[key]


def keep_options() -> None:
    """Keep every page's option widgets (keys with a page's prefix) across navigation.

    Buttons and file uploaders cannot be given a value through session state, so they are told
    apart by the widget's value type, which only Streamlit's session internals know (Streamlit is
    pinned in requirements.txt); without them the options reset on navigation as they used to.
    """
    from streamlit.runtime.state import get_session_state

    # As for the picker (see keep_picker), a copy outside the widgets brings back what a cut-short
    # run made Streamlit drop.
    copy = st.session_state.setdefault("_options_copy", {})
    for key, value in copy.items():
        if key not in st.session_state:
            st.session_state[key] = value
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
            st.session_state[key] = copy[key] = st.session_state[key]
    except AttributeError:
        return
    sync_url_options()


def _is_default(meta, value: Any) -> bool:
    """Whether ``value`` is the widget's default, as its serializer writes both (False if unsure)."""
    try:
        return bool(meta.serializer(value) == meta.serializer(meta.deserializer(None)))
    except Exception:  # a serializer of a stale value (options changed): treat as chosen
        return False


def _upload_link(spec: str) -> str | None:
    """``upload:HASH/NAME`` for a file this server holds under its content hash, else None."""
    from ui import uploads

    root = uploads.current_root()
    if root is None or not uploads.is_upload(spec):
        return None
    return "upload:" + Path(spec).resolve().relative_to(root.resolve()).as_posix()


def _seed_upload(link: str) -> None:
    """A link to an upload opens it while this server still holds the file (see ui/uploads.py's TTL)."""
    from ui import uploads

    root = uploads.current_root()
    rel = link.removeprefix("upload:")
    if root is None or len(rel) > 300 or rel.startswith("/") or ".." in rel.split("/"):
        return
    path = root / rel
    if uploads.is_upload(path) and path.exists():
        st.session_state.update(model_source="Upload", last_upload=(str(path), None, path.name))


def _seed_picker(spec: str) -> None:
    """Set the picker's widgets from a spec in the URL (built-in, hub id, upload or local path)."""
    if spec.startswith("upload:"):
        _seed_upload(spec)
    elif spec.startswith("builtin:") and spec.removeprefix("builtin:") in BUILTINS:
        st.session_state.update(model_source="Built-in", builtin_key=spec.removeprefix("builtin:"))
    elif spec.startswith("hf:"):
        st.session_state.update(model_source="Hugging Face", hf_id=spec.removeprefix("hf:"))
    elif spec:
        st.session_state.update(model_source="Local path", local_path=spec)


def restore() -> None:
    """Once per session: the model and page settings from the URL, and the basket under the URL's token."""
    if st.session_state.get("_session_restored"):
        return
    st.session_state["_session_restored"] = True
    params = st.query_params
    if "model" in params and "model_source" not in st.session_state:
        _seed_picker(params["model"])
    try:
        restore_options(params)
    except (AttributeError, KeyError, TypeError, ValueError):
        pass  # Streamlit internals changed: a link's page settings are not read
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
    st.session_state["_session_token"] = token


def mirror_token() -> None:
    """Keep the basket's token in the URL: a page switch clears the query string."""
    token = st.session_state.get("_session_token")
    if token and st.query_params.get("session") != token:
        st.query_params["session"] = token


def mirror_model(spec: str | None, from_upload: bool) -> None:
    """Put the picked model into the URL (an upload by its content hash), or take it out when it cannot be linked."""
    link = (_upload_link(spec) if from_upload else spec) if spec else None
    if link:
        if st.query_params.get("model") != link:
            st.query_params["model"] = link
    elif "model" in st.query_params:
        del st.query_params["model"]


# --- Page settings in the query string (see the module docstring) ---------------------------------

# Streamlit serde classes of the widgets whose value may go into a link (text areas, buttons,
# uploaders, chart and table selections, data editors, dates and times are left out).
URL_WIDGETS = frozenset({
    "CheckboxSerde", "NumberInputSerde", "SliderSerde", "SelectSliderSerde", "SelectboxSerde", "RadioSerde",
    "MultiSelectSerde", "_SingleSelectButtonGroupSerde", "_MultiSelectButtonGroupSerde", "ColorPickerSerde",
    "TextInputSerde",
})
URL_VALUE_TYPES = frozenset({"bool_value", "int_value", "double_value", "string_value",
                             "string_array_value", "int_array_value", "double_array_value"})
ARRAY_TYPES = frozenset({"string_array_value", "int_array_value", "double_array_value"})
MAX_URL_CHARS = 200  # one value (or one item of a list)
MAX_URL_ITEMS = 30  # items of one list
MAX_URL_PARAMS = 64  # page parameters read from one link
URL_WAIT_S = 120.0  # how long a link's value waits for its widget (one drawn only once a result is there)
PENDING_KEY = "_url_pending"
MIRROR_KEY = "_url_options"
IGNORED_KEY = "_url_ignored"
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _internal_state():
    """Streamlit's SessionState behind st.session_state (pinned version), or None."""
    from streamlit.runtime.state import get_session_state

    return getattr(get_session_state(), "_state", None)


def _run_ctx():
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    return get_script_run_ctx()


def _page_prefix() -> str | None:
    """The option-key prefix of the page being run, or None (a page without options)."""
    ctx = _run_ctx()
    info = ctx.pages_manager.get_pages().get(ctx.page_script_hash) or {}
    return PAGE_PREFIX_OF.get(Path(str(info.get("script_path") or "")).stem)


def _url_widget(state, key: str):
    """The metadata of the widget under ``key`` if it is one whose value may go into a link."""
    meta = state._get_widget_metadata(state._get_widget_id(key))
    if meta is None or meta.value_type not in URL_VALUE_TYPES or getattr(meta, "disabled", False):
        return None
    serde = getattr(meta.deserializer, "__self__", None)
    return meta if type(serde).__name__ in URL_WIDGETS else None


def _url_text(v: Any) -> str | None:
    """One wire value as URL text, or None if it has no short, exact text form."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        text = str(v)
    elif isinstance(v, float):
        if not math.isfinite(v):
            return None
        text = str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    elif isinstance(v, str):
        text = v
    else:
        return None
    return text if len(text) <= MAX_URL_CHARS else None


def _to_url(meta, value: Any) -> str | list[str] | None:
    """``value`` in the URL's form (see the docstring), or None: the default, or not linkable."""
    try:
        wire = meta.serializer(value)
        if wire is None or wire == meta.serializer(meta.deserializer(None)):
            return None
    except Exception:  # a serializer of a stale value (options changed): nothing to link
        return None
    if meta.value_type in ARRAY_TYPES:
        if not isinstance(wire, (list, tuple)) or len(wire) > MAX_URL_ITEMS:
            return None
        items = [_url_text(v) for v in wire]
        if any(t is None or t == "" for t in items):
            return None
        return items or ""  # an emptied list: ?key=
    return _url_text(wire) or None  # an emptied text is not linked (?key= clears lists only)


def _from_url(meta, raw: str | list[str]) -> Any:
    """The widget value a URL parameter stands for, checked by the widget itself; ValueError if invalid.

    Mirrors Streamlit's own seeding of a ``bind="query-params"`` widget, but strict: a value that the
    widget would clamp, truncate, coerce or replace by its default is refused rather than corrected.
    """
    from streamlit.runtime.state.query_params import parse_url_param

    items = raw if isinstance(raw, list) else [raw]
    if not items or len(items) > MAX_URL_ITEMS or any(not isinstance(t, str) or len(t) > MAX_URL_CHARS
                                                      for t in items):
        raise ValueError("too long")
    array = meta.value_type in ARRAY_TYPES
    if not array and len(items) > 1:
        raise ValueError("repeated")
    if all(t == "" for t in items) and not meta.clearable:
        raise ValueError("empty")
    parsed = parse_url_param(raw, meta.value_type)
    if parsed is None:
        raise ValueError("empty")
    options = meta.formatted_options
    if options is not None:
        if array:
            if (any(v not in options for v in parsed) or len(parsed) > (meta.max_array_length or MAX_URL_ITEMS)
                    or (not meta.allow_url_duplicates and len(set(parsed)) < len(parsed))):
                raise ValueError("not an option")
        elif parsed not in options:
            raise ValueError("not an option")
    try:
        value = meta.deserializer(parsed)
        again = meta.serializer(value)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc
    if options is None and again != parsed:
        raise ValueError("not accepted as is")  # out of range, cut to max_chars, not an int, ...
    return value


def restore_options(params) -> None:
    """On a fresh session: keep the URL's settings of the page shown, to check once it is drawn."""
    prefix = _page_prefix()
    if prefix is None:
        return
    values: dict[str, str | list[str]] = {}
    for key in list(params.keys()):
        if not key.startswith(prefix) or key == prefix or not _PARAM_NAME.fullmatch(key) or key in st.session_state:
            continue  # another page's, malformed, or already chosen in this session
        items = params.get_all(key)
        if len(values) >= MAX_URL_PARAMS or len(items) > MAX_URL_ITEMS or any(len(t) > MAX_URL_CHARS for t in items):
            _note_ignored([key])
            continue
        values[key] = items[0] if len(items) == 1 else items
    if values:
        st.session_state[PENDING_KEY] = {"page": _run_ctx().page_script_hash, "values": values,
                                         "since": time.monotonic(), "armed": False}


def _note_ignored(keys) -> None:
    """Remember link parameters that were refused, for one toast that names them."""
    ignored = st.session_state.setdefault(IGNORED_KEY, [])
    ignored.extend(k for k in keys if k not in ignored)


def _apply_pending(state) -> bool:
    """Check the pending URL values against the widgets drawn by now; True if anything changed.

    Assigns the valid ones (unless the user already moved that widget), drops the invalid ones, and
    keeps those whose widget has not been drawn yet, for up to URL_WAIT_S.
    """
    pending = st.session_state.get(PENDING_KEY)
    if not pending:
        return False
    if pending["page"] != _run_ctx().page_script_hash or time.monotonic() - pending["since"] > URL_WAIT_S:
        del st.session_state[PENDING_KEY]  # the user went to another page, or the widget never came
        return True
    if not pending["armed"]:  # the run that read the link: the page has not drawn anything yet
        pending["armed"] = True
        return False
    changed = False
    ignored = []
    for key, raw in list(pending["values"].items()):
        meta = state._get_widget_metadata(state._get_widget_id(key))
        if meta is None:
            continue  # not drawn (yet): a widget shown only with a result, another page's, or unknown
        del pending["values"][key]
        changed = True
        meta = _url_widget(state, key)
        try:
            if meta is None:
                raise ValueError("not a linkable widget")
            value = _from_url(meta, raw)
        except ValueError:
            ignored.append(key)
            continue
        if not _is_default(meta, value) and _is_default(meta, st.session_state.get(key)):
            st.session_state[key] = value  # only over a default: a value chosen in this session stays
    _note_ignored(ignored)
    if not pending["values"]:
        del st.session_state[PENDING_KEY]
    return changed


@st.fragment(run_every=1.0)
def _await_widgets() -> None:
    """While a link's settings wait for the page's widgets: check them after the page has drawn.

    Streamlit starts no run by itself after the first one, so this timer provides the run that
    finds the page's widgets; it is drawn only while settings are pending.
    """
    if not _run_ctx().fragment_ids_this_run:
        return  # called inline by a full run: sync_url_options has just checked
    state = _internal_state()
    if state is not None and _apply_pending(state):
        st.rerun(scope="app")


def sync_url_options() -> None:
    """Every run: apply a link's pending settings, then mirror the page's settings into the URL."""
    try:
        state = _internal_state()
        if state is None:
            return
        _apply_pending(state)
        prefix = _page_prefix()
        mirror = st.session_state.setdefault(MIRROR_KEY, {})
        drawn: dict[str, dict[str, Any]] = {}
        for key in list(st.session_state.keys()):
            if not isinstance(key, str) or not key.startswith(PAGE_PREFIXES):
                continue
            meta = _url_widget(state, key)
            if meta is not None:
                drawn.setdefault(next(p for p in PAGE_PREFIXES if key.startswith(p)), {})[key] = (
                    _to_url(meta, st.session_state[key]))
        for page, values in drawn.items():
            mirror[page] = {k: v for k, v in values.items() if v is not None}
        wanted = mirror.get(prefix, {}) if prefix else {}
        pending = (st.session_state.get(PENDING_KEY) or {}).get("values", {})
        params = st.query_params
        for key in list(params.keys()):
            if key.startswith(PAGE_PREFIXES) and key not in wanted and key not in pending:
                del params[key]
        for key, value in wanted.items():
            if params.get_all(key) != (value if isinstance(value, list) else [value]):
                params[key] = value
        ignored = st.session_state.pop(IGNORED_KEY, None)
        if ignored:
            names = ", ".join(guard.literal(k) for k in ignored[:8]) + (" ..." if len(ignored) > 8 else "")
            st.toast(f"Settings in the link that do not fit this page were ignored: {names}",
                     icon=":material/link_off:")
    except (AttributeError, ImportError, KeyError, TypeError, ValueError):
        return  # Streamlit internals changed: the settings are just not linked
    if st.session_state.get(PENDING_KEY):
        with st.sidebar:
            _await_widgets()
