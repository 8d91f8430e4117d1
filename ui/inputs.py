"""Reading what users type into text widgets, with messages that say what was expected."""

from __future__ import annotations

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
