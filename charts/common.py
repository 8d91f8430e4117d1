"""Small helpers every chart module uses."""

from __future__ import annotations

import textwrap

import numpy as np
import plotly.graph_objects as go

# Characters of a title that fit a chart the pages draw at half and at full width, and of one subtitle
# line (smaller type). Each module's FULL_WIDTH names its builders drawn at full width.
TITLE_MAX, TITLE_MAX_FULL = 60, 100
SUBTITLE_WRAP, SUBTITLE_WRAP_FULL = 80, 150
# Pixels between the top of the figure and its title's line (a 16-pixel title's line reaches 5 px above its capitals).
TITLE_PAD_PX = 6


# Towers of a model with several ("text/3", "encoder/3"), in the order they are drawn; others follow
# alphabetically.
_TOWERS = ("text", "vision", "encoder", "decoder")


def _block_key(block) -> tuple:
    tower, _, local = str(block).rpartition("/")
    rank = 0 if local == "embeddings" else 1 if local.isdigit() else 2
    number = int(local) if rank == 1 else 0
    # Groups outside any tower (a shared embedding, the LM head) go before and after all the towers;
    # numbered blocks outside any tower (OpenCLIP's text tower beside visual.*) lead the towers.
    section = 1 if tower else rank
    tower_rank = -1 if not tower else _TOWERS.index(tower) if tower in _TOWERS else len(_TOWERS)
    return section, tower_rank, tower, rank, number, local


def block_order(blocks) -> list[str]:
    """Embeddings first, numbered blocks in numeric order, then everything else; where blocks are keyed
    by tower ("text/3"), the same order within each tower, towers one after another."""
    return sorted(dict.fromkeys(blocks), key=_block_key)


def title(text: str, subtitle: str = "", full_width: bool = False) -> dict:
    """Layout for a short title over a subtitle wrapped to lines that fit the chart's width; the top
    margin grows to hold them, so neither is clipped."""
    lines = textwrap.wrap(subtitle, SUBTITLE_WRAP_FULL if full_width else SUBTITLE_WRAP, break_on_hyphens=False)
    # An automargin title sits at the very top of the figure with its capitals' tops on the edge: Streamlit's
    # theme gives it no top pad, so parentheses, ascenders and the rest of the line clip against the edge.
    return {"title": {"text": text, "subtitle": {"text": "<br>".join(lines)}, "automargin": True,
                      "pad": {"t": TITLE_PAD_PX}}}


def _axis_name(ref: str) -> str:
    """A trace's axis reference ('x', 'y2') as its layout key ('xaxis', 'yaxis2')."""
    return f"{ref[0]}axis{ref[1:]}"


def log_axes(fig: go.Figure) -> go.Figure:
    """Log axes print 10^k (SI prefixes such as "100p" read as units), and values <= 0, which a log axis
    cannot place, are taken out of their traces with a note saying how many, rather than vanishing
    without a word or plunging off the chart. Call it once the traces and axis types are set."""
    log = {key for key, axis in fig.layout.to_plotly_json().items()
           if key.startswith(("xaxis", "yaxis")) and axis.get("type") == "log"}
    dropped = 0
    for trace in fig.data:
        if not hasattr(trace, "xaxis"):
            continue
        for letter in ("x", "y"):
            values = getattr(trace, letter)
            if values is None or _axis_name(getattr(trace, f"{letter}axis") or letter) not in log:
                continue
            numbers = np.asarray(values, dtype=float)
            gone = numbers <= 0
            if gone.any():
                dropped += int(gone.sum())
                setattr(trace, letter, np.where(gone, np.nan, numbers))
    for key in log:
        fig.layout[key].update(exponentformat="power", showexponent="all")
    if dropped:
        fig.add_annotation(text=f"{dropped} value{'s' if dropped > 1 else ''} <= 0 not shown (log axis)",
                           xref="paper", yref="paper", x=1, y=0, xanchor="right", yanchor="bottom", showarrow=False,
                           font=dict(size=11, color="#666"), bgcolor="rgba(255,255,255,0.8)")
    return fig
