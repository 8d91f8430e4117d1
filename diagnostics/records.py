"""Rows of small user tables (CSV with a header, or JSON lines), read as data only."""

from __future__ import annotations

import csv
import io
import json

from models.errors import OrthoscopeError


def read_records(data: bytes, filename: str) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL file, as dicts of strings."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise OrthoscopeError(f"{filename} is not UTF-8 text.") from None
    if not text.strip():
        raise OrthoscopeError(f"{filename} is empty.")
    if filename.lower().endswith((".jsonl", ".json", ".ndjson")) or text.lstrip().startswith("{"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OrthoscopeError(f"{filename}, line {i}: not a JSON object ({exc.msg}).") from None
            if not isinstance(obj, dict):
                raise OrthoscopeError(f"{filename}, line {i}: expected a JSON object per line.")
            rows.append(obj)
        return rows
    try:
        return list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise OrthoscopeError(f"{filename} is not a readable CSV file ({exc}).") from None
