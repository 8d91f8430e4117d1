"""The contract every diagnostic's result follows, so reports can save and reload any of them.

A result is a dataclass whose fields are JSON-safe after :func:`jsonable` (numbers, strings,
lists, dicts; numpy values are converted). ``to_dict`` adds the envelope fields the report
schema requires; ``from_dict`` checks them and rebuilds the same object, so a reloaded
report draws the same charts.

``from_dict`` validates every field against the type the dataclass declares, with a pydantic v2
model built from the dataclass itself (:func:`schema_model`), in strict mode: a ``str`` field
takes only a string, an ``int`` only an integer (not a bool), a ``float`` a number or null (NaN
is written as null), a ``list`` or ``dict`` only that. Pydantic rather than jsonschema because
the schema then comes from the one declaration that already exists, the result dataclasses (no
second copy to keep in step), and its errors carry the field's path for the message. What the
rows inside a result's tables hold is checked by the report reader (reports/report.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, ClassVar, Optional

import pydantic

import numpy as np
import pandas as pd

from models.errors import OrthoscopeError

SCHEMA_VERSION = 1


def jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf; None reads back as "not available"
    return value


class Params:
    """``to_dict`` / ``from_dict`` of a diagnostic's parameters dataclass. Keys it does not know (from
    a report written by another version) are left out; its ``__post_init__`` checks the values."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class Result:
    """Fields shared by every diagnostic's result."""

    diagnostic: ClassVar[str] = ""
    model_name: str
    fingerprint: str
    params: dict
    timings: dict

    def to_dict(self) -> dict:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return jsonable({"schema_version": SCHEMA_VERSION, "diagnostic": self.diagnostic, **body})

    @classmethod
    def from_dict(cls, data: dict):
        if data.get("diagnostic") != cls.diagnostic:
            raise OrthoscopeError(f"expected a {cls.diagnostic!r} result, got {data.get('diagnostic')!r}.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise OrthoscopeError(
                f"this {cls.diagnostic} result has schema version {version}; this Orthoscope reads version {SCHEMA_VERSION}."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in names if n not in data and _required(cls, n)]
        if missing:
            raise OrthoscopeError(f"the {cls.diagnostic} result lacks {', '.join(sorted(missing))}.")
        check_fields(cls, data)
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_frame(self) -> pd.DataFrame:
        """The result's main table."""
        raise NotImplementedError

    def tables(self) -> dict[str, pd.DataFrame]:
        """CSV tables for reports: file stem -> frame. The main table by default."""
        return {self.diagnostic: self.to_frame()}


def _required(cls, name: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# Declared field type -> the strict pydantic type a loaded value must have.
_STRICT: dict[Any, Any] = {
    str: pydantic.StrictStr, int: pydantic.StrictInt, bool: pydantic.StrictBool,
    float: Optional[float],  # strict floats take ints too; null is a NaN written by jsonable
    list: list, dict: dict,
}


def _strict(annotation: Any) -> Any:
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, dict, str, int, bool, float):
        return _STRICT[origin]
    return Any  # anything else (a union, a nested dataclass) is left to the result's own checks


@functools.cache
def schema_model(cls: type) -> type[pydantic.BaseModel]:
    """A strict pydantic model of a result dataclass's fields, built from its type annotations."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that cannot be resolved is left unchecked
        hints = {}
    fields = {}
    for f in dataclasses.fields(cls):
        fields[f.name] = (_strict(hints.get(f.name, Any)), ... if _required(cls, f.name) else None)
    config = pydantic.ConfigDict(strict=True, extra="ignore", arbitrary_types_allowed=True)
    return pydantic.create_model(f"{cls.__name__}Schema", __config__=config, **fields)


def check_fields(cls: type, data: dict) -> None:
    """Every field of ``data`` of the type ``cls`` declares, or OrthoscopeError naming the field."""
    try:
        schema_model(cls).model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            where = ".".join(str(part) for part in err["loc"])
            expected = err["msg"].removeprefix("Input should be ").removeprefix("a valid ")
            problems.append(f"'{where}' should be {expected} (got {_shown(err.get('input'))})")
        raise OrthoscopeError(f"the {cls.diagnostic} result does not fit the schema: " + "; ".join(problems) + ".") from None


def _shown(value: Any) -> str:
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (dict, list)):
        text = f"a {'list' if isinstance(value, list) else 'dict'} of {len(value)}"
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
