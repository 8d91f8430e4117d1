"""Rows of small user tables (CSV with a header, or JSON lines), read as data only.

Every JSON line goes through ``models.limits.loads_json`` (bounded nesting, integer digits,
string and list lengths), so a line of 100,000 nested arrays or a 5,000-digit integer is refused
with the line's number instead of raising RecursionError or ValueError. Files are ``stat``-ed
before they are opened (:func:`read_bytes`): a FIFO or device is never read.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from models.errors import OrthoscopeError
from models.limits import MAX_RECORD_BYTES, MAX_RECORD_COLUMNS, MAX_RECORDS, check_regular_file, human_bytes, loads_json



def read_bytes(path: str | Path, what: str, max_bytes: int, size: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked by ``stat`` before it is opened."""
    path = Path(path)
    if size is None:
        size = check_regular_file(path, what).st_size
    if size > max_bytes:
        raise OrthoscopeError(f"{what} is {human_bytes(size)}; at most {human_bytes(max_bytes)} are read.")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise OrthoscopeError(f"{what} cannot be read ({exc.strerror or exc}).") from None
    if len(data) > max_bytes:  # grew since the stat
        raise OrthoscopeError(f"{what} is over {human_bytes(max_bytes)}; at most that is read.")
    return data


def read_records(data: bytes, filename: str) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL file, as dicts (of strings, for a CSV)."""
    if len(data) > MAX_RECORD_BYTES:
        raise OrthoscopeError(f"{filename} is {human_bytes(len(data))}; tables are read up to {human_bytes(MAX_RECORD_BYTES)}.")
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
            obj = loads_json(line, f"{filename}, line {i}")
            if not isinstance(obj, dict):
                raise OrthoscopeError(f"{filename}, line {i}: expected a JSON object per line.")
            rows.append(obj)
            if len(rows) > MAX_RECORDS:
                raise OrthoscopeError(f"{filename} has more than {MAX_RECORDS:,} rows.")
        return rows
    if "\x00" in text:
        raise OrthoscopeError(f"{filename} is not a readable CSV file (it holds NUL characters).")
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is not None and len(reader.fieldnames) > MAX_RECORD_COLUMNS:
            raise OrthoscopeError(f"{filename} has {len(reader.fieldnames):,} columns (at most {MAX_RECORD_COLUMNS:,}).")
        for row in reader:
            # Cells past the header's columns land under the key None as a list: keep strings only.
            rows.append({k: v for k, v in row.items() if isinstance(k, str)})
            if len(rows) > MAX_RECORDS:
                raise OrthoscopeError(f"{filename} has more than {MAX_RECORDS:,} rows.")
    except csv.Error as exc:
        raise OrthoscopeError(f"{filename} is not a readable CSV file ({exc}).") from None
    return rows
