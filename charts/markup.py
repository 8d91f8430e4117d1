"""Figure markup hygiene: strings that came from files reach a chart as plain text, never as Plotly markup.

Plotly renders a pseudo-HTML subset in every label it draws (trace text, hover text, tick labels, legend
entries, titles, annotations): ``<a href=...>`` becomes a live link, ``<span style=...>`` restyles, ``<br>``
breaks lines. A tensor name, model name, prompt or label read from a file can carry any of these. The charts
insert such names into the figure's data and into our own titles, so :func:`strip_markup` runs on every
figure where it leaves the code (the pages and report.html):

* data strings (category values, trace text and hover text, names, ids, labels, customdata, tick text,
  category orders) lose every tag; trace text and hover text keep only a bare ``<br>``, the line break the
  charts themselves put between a name and its values;
* titles, axis titles, colour-bar titles and annotations (ours, with names inserted) keep only our own
  formatting tags (``<br>``, ``<b>``, ``<i>``, ``<sup>``, ``<sub>``) and lose the rest, notably ``<a ...>``
  and ``<span ...>``;
* hover and text templates (ours) keep the formatting tags and ``<extra>``; the values they show come from
  the stripped data;
* every string loses control characters and bidirectional overrides (a tab or a newline becomes a space).

A tag is ``<`` then a letter, ``/``, ``!`` or ``?``, then anything but ``<`` and ``>``, then ``>`` (Plotly
splits text on ``<[^<>]*>`` and draws the parts whose name it knows; ``< b >`` names none and stays text).
Removal repeats until nothing changes, so ``<a <b>href=...>`` cannot leave a tag behind; a ``<`` before a
letter, ``/``, ``!`` or ``?`` that is left starts no tag and goes too; ``a < b`` stays. Line breaks a chart
inserted to wrap a long name (possibly inside a tag the name carries) are held aside meanwhile. HTML
entities stay as written: Plotly shows ``&lt;`` as a literal ``<``. Pure: no Streamlit.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import numpy as np

# A tag as Plotly parses one; then a "<" that opens something tag-like but never closes ("<a <b>...").
TAG = re.compile(r"<(?=[A-Za-z/!?])[^<>]*>")
STRAY = re.compile(r"<(?=[A-Za-z/!?])")
BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
HOLD = "\ue000"  # a private-use character standing for a line break while tags are removed
# C0 and C1 controls, DEL, and the Unicode bidirectional overrides / isolates that can reorder a label.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
WHITESPACE_CONTROL = re.compile(r"[\t\n\r\v\f]+")

# Formatting tags our own titles and annotations use; written exactly like this (no attributes).
FORMAT_TAGS = frozenset({"<br>", "<br/>", "<br />", "<b>", "</b>", "<i>", "</i>", "<sup>", "</sup>",
                         "<sub>", "</sub>"})
TEMPLATE_TAGS = FORMAT_TAGS | {"<extra>", "</extra>"}
LINE_BREAK = frozenset({"<br>", "<br/>", "<br />"})
NO_TAGS: frozenset[str] = frozenset()

Fig = TypeVar("Fig")  # a go.Figure or None (not named Figure: this is no figure builder for the charts audit)

TEMPLATE_KEYS = frozenset({"hovertemplate", "texttemplate", "hovertemplatefallback", "texttemplatefallback"})
TITLE_KEYS = frozenset({"title", "subtitle", "legendgrouptitle"})
FREE_TEXT_KEYS = frozenset({"text", "hovertext"})


def clean_text(text: str, allowed: frozenset[str] = NO_TAGS) -> str:
    """``text`` without control characters and without any tag outside ``allowed`` (compared in lower case)."""
    text = CONTROL.sub("", WHITESPACE_CONTROL.sub(" ", text))
    if "<" not in text:
        return text
    text = text.replace(HOLD, "")
    if "<br>" in allowed:
        # Line breaks are held aside while tags are removed: a chart that wraps a long name inserts <br>
        # anywhere, also inside a tag the name carries ("<img src=x<br>onerror=...>"), which would
        # otherwise leave the tag's pieces behind as text.
        text = BREAK.sub(HOLD, text)
    while True:
        cleaned = TAG.sub(lambda m: m.group(0) if m.group(0).lower() in allowed else "", text)
        if cleaned == text:
            break
        text = cleaned
    # What is left of a "<" before a letter starts no tag Plotly would draw, unless it is an allowed one.
    kept = {m.start() for m in TAG.finditer(text)}
    text = "".join(ch for i, ch in enumerate(text) if not (ch == "<" and i not in kept and STRAY.match(text, i)))
    return text.replace(HOLD, "<br>")


def _allowed(path: tuple[str, ...], in_data: bool) -> frozenset[str]:
    """Which tags a string at ``path`` (the keys from the trace or the layout down to it) may keep."""
    last = path[-1] if path else ""
    if last in TEMPLATE_KEYS:
        return TEMPLATE_TAGS
    if TITLE_KEYS.intersection(path) or (path[:1] == ("annotations",) and last == "text"):
        return FORMAT_TAGS
    if in_data and last in FREE_TEXT_KEYS:
        return LINE_BREAK
    return NO_TAGS


def _full(value: Any, path: tuple[str, ...], in_data: bool) -> tuple[Any, bool]:
    """(the whole value cleaned, whether anything changed); numbers and encoded arrays pass untouched."""
    if isinstance(value, str):
        cleaned = clean_text(value, _allowed(path, in_data))
        return cleaned, cleaned != value
    if isinstance(value, dict):
        out, changed = {}, False
        for key, item in value.items():
            out[key], hit = _full(item, (*path, str(key)), in_data)
            changed |= hit
        return (out, True) if changed else (value, False)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "OUS":
            return value, False
        items, changed = _full(value.tolist(), path, in_data)
        return (np.array(items, dtype=object) if changed else value), changed
    if isinstance(value, (list, tuple)):
        out, changed = [], False
        for item in value:
            cleaned, hit = _full(item, path, in_data)
            out.append(cleaned)
            changed |= hit
        return (type(value)(out) if changed else value), changed
    return value, False


def _patch(props: dict, path: tuple[str, ...], in_data: bool) -> dict:
    """Only the properties of ``props`` (nested dicts followed) whose cleaned value differs, cleaned: an
    update that touches nothing else (plotly hands numeric arrays out encoded; they are never written back)."""
    patch = {}
    for key, value in props.items():
        if key == "template" and not path:  # plotly's own theme: no names in it, and large
            continue
        where = (*path, str(key))
        if isinstance(value, dict):
            inner = _patch(value, where, in_data)
            if inner:
                patch[key] = inner
        else:
            cleaned, changed = _full(value, where, in_data)
            if changed:
                patch[key] = cleaned
    return patch


def strip_markup(fig: Fig) -> Fig:
    """Strip markup from ``fig`` in place (see the module's docstring) and return it; None passes through."""
    if fig is None:
        return None
    for trace in fig.data:
        patch = _patch(trace.to_plotly_json(), (), in_data=True)
        if patch:
            trace.update(patch)
    patch = _patch(fig.layout.to_plotly_json(), (), in_data=False)
    if patch:
        fig.layout.update(patch)
    return fig
