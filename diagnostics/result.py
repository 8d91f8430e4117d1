"""The contract every diagnostic's result follows, so reports can save and reload any of them.

A result is a dataclass whose fields are JSON-safe after :func:`jsonable` (numbers, strings,
lists, dicts; numpy values are converted). ``to_dict`` adds the envelope fields the report
schema requires; ``from_dict`` checks them and rebuilds the same object, so a reloaded
report draws the same charts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

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
