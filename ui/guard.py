"""What leaves a page for the browser: figures without markup, file-derived strings as literal text, and
results drawn inside a guard that turns an unexpected exception into one st.error line.

* :func:`chart` strips Plotly markup from a figure (charts.markup.strip_markup), then draws it.
* :func:`literal` escapes a string for an element that renders markdown (st.markdown, st.caption, st.info,
  st.warning, st.error, st.success, st.subheader, st.toast, st.spinner, st.status, st.progress text, widget
  and expander labels): a model name ``![x](https://evil.example/x.png)`` is shown as those characters and
  the browser fetches nothing.
* :func:`drawing` is the guard: an unexpected exception while a result is drawn shows
  ``internal error (ExcType: message), please report it`` (the CLI's exit-3 line) and goes to the server log
  with its traceback; an :class:`OrthoscopeError` (a refusal worded for the user) shows its own message;
  ``st.stop()`` / ``st.rerun()`` (Streamlit's ScriptControlException, a BaseException) pass through.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

import streamlit as st

from charts.markup import strip_markup
from models import OrthoscopeError

log = logging.getLogger("orthoscope.pages")

# Markdown syntax in Streamlit's renderer (CommonMark, GFM, Streamlit's LaTeX and :directives:), on one line
# (line breaks are folded first, so nothing can start a line but the string's own start). Escaped wherever
# they occur: backslash, code, emphasis, strikethrough, links and images, HTML and autolinks, tables, math.
ANYWHERE = r"[\\`*~\[\]<>|$]"
# Escaped only where they mean something, so that an ordinary name reads the same in the markdown source:
# "_" unless between two letters or digits (intraword "_" never opens or closes emphasis), "&" starting
# an entity, ":" starting a :shortcode: or :color[directive].
IN_CONTEXT = r"(?<![^\W_])_|_(?![^\W_])|&(?=[#A-Za-z0-9])|:(?=[A-Za-z0-9_/+-])"
# Block syntax at the start of the string: headings, list items, ordered list items ("1." and "1)").
AT_START = r"^\s*[#+-]|(?<=^\d)[.)]|(?<=^\d\d)[.)]|(?<=^\d\d\d)[.)]"
MARKDOWN_SPECIAL = re.compile(f"({ANYWHERE}|{IN_CONTEXT}|{AT_START})")
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
LINE_BREAKS = re.compile(r"\s*[\r\n\u2028\u2029]+\s*")
# GFM turns bare URLs, www. names and e-mail addresses into links, and Streamlit turns :shortcodes: into
# icons, even when their punctuation is escaped (those passes run on the unescaped text); an invisible word
# joiner before a scheme's colon, between "www" and its dot, before an @ and after an escaped colon breaks
# them.
WORD_JOINER = "\u2060"
AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9])(?=://)|(?<=\bwww)(?=\.)|(?=@)|(?<=\\:)")
# An exception's message in the error line is cut here: a hostile file can make it megabytes long.
MAX_MESSAGE = 300  # as the CLI's


def literal(text: object) -> str:
    """``text`` as literal markdown: every markdown construct neutralised by escaping its syntax characters
    (ordinary names like ``SmolLM2-135M`` or ``layers.0.mlp.up_proj.weight`` come out unchanged), line breaks
    folded to one space, control characters dropped, URLs and addresses kept from turning into links."""
    text = CONTROL.sub("", LINE_BREAKS.sub(" ", str(text)))
    text = MARKDOWN_SPECIAL.sub(lambda m: m.group(0)[:-1] + "\\" + m.group(0)[-1], text)
    return AUTOLINK.sub(WORD_JOINER, text)


def chart(container, fig, key: str, **kwargs) -> None:
    """Draw ``fig`` in ``container`` (``st`` or a column) once its markup is stripped; None draws nothing."""
    if fig is None:
        return
    container.plotly_chart(strip_markup(fig), key=key, **kwargs)


def internal_error_line(exc: BaseException) -> str:
    """The one line an unexpected exception becomes, worded as the CLI's exit 3 (cli.internal_error_line;
    the traceback goes to the server's log rather than behind --debug)."""
    message = CONTROL.sub("", " ".join(str(exc).split()))
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + " ..."
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"internal error ({what}), please report it"


def error(exc: BaseException) -> None:
    """An OrthoscopeError's message, literally (it often names a file the user brought)."""
    st.error(literal(str(exc)))


@contextlib.contextmanager
def drawing(what: str = "a result") -> Iterator[None]:
    """Run the body; an exception other than Streamlit's stop/rerun is shown as one st.error line.

    The body's remaining elements are not drawn; the rest of the page is. ``what`` names the part in
    the server log."""
    try:
        yield
    except OrthoscopeError as exc:
        error(exc)
    except Exception as exc:  # noqa: BLE001 - the guard: st.stop()/st.rerun() are BaseExceptions and pass
        log.error("drawing %s failed", what, exc_info=exc)
        st.error(literal(internal_error_line(exc)))
