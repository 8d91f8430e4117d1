"""Strings from files, made safe for a terminal or a CSV cell (pure functions, no imports of the project).

A tensor name, a concept name or a path is data a user brought: it may hold escape sequences that
clear or retitle a terminal, newlines that forge extra output lines, bidirectional overrides that
reorder what is shown, or a leading ``=`` that a spreadsheet runs as a formula. ``printable`` is
applied to every such string before it reaches a terminal, ``csv_cell`` to every string cell of a
CSV the project writes.
"""

from __future__ import annotations

import re

# Whole escape sequences first (CSI ``ESC [ ... final``, OSC/DCS/APC/PM/SOS ``ESC ] ... BEL|ST``, and
# their 8-bit C1 forms), so that no parameter bytes ("[2J", "]0;title") are left behind as debris;
# then any other ESC with the one character after it.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI
    r"|(?:\x1b[\]P^_X]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"  # any other ESC sequence (or a lone ESC)
)
# C0 controls, DEL, C1 controls, and the Unicode format characters that reorder or hide text
# (bidirectional embeddings, overrides and isolates, marks, the line and paragraph separators).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BREAKS = re.compile(r"\r\n|[\n\r\t\v\f\x85\u2028\u2029]")
# Left as they are although they start with + or -: numbers written as text, and the placeholder "-".
_INERT = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$|^[+-]?(?:inf|infinity|nan)$|^[+-]+$",
                    re.IGNORECASE)
_FORMULA_START = ("=", "+", "-", "@")
_NEEDS_CSV = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|^[=+\\-@]")


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` as a string with escape sequences and control characters removed.

    Line breaks and tabs become one space (so a message stays one line), unless ``keep_newlines``:
    then ``\\n`` is kept, for text that is several lines on purpose (a table)."""
    s = text if isinstance(text, str) else str(text)
    if keep_newlines:
        return "\n".join(printable(line) for line in s.split("\n"))
    s = _BREAKS.sub(" ", s)
    return _CONTROLS.sub("", _ESCAPES.sub("", s))


def csv_cell(text: str) -> str:
    """One string cell of a CSV: :func:`printable`, then guarded against spreadsheet formulas.

    A cell that starts with ``=``, ``+``, ``-`` or ``@`` and is not a plain number is prefixed with a
    single quote, which spreadsheets show as text instead of evaluating (OWASP's CSV injection rule);
    numbers written as text ("-0.5", "+inf") and the placeholder "-" are left as they are."""
    if not _NEEDS_CSV.search(text):
        return text
    s = printable(text)
    if s.startswith(_FORMULA_START) and not _INERT.match(s):
        s = "'" + s
    return s
