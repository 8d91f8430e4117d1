"""Contrast triples and concept tokens for the steering diagnostic: built-in sets, uploads, checks.

A triple is (prompt, response with the concept, response without it). The built-in sets in
``data/steering/`` were written for this project (see its README). Uploads are CSV or JSONL with
the columns ``prompt``, ``positive``, ``negative`` and are read as data only, through
``diagnostics.records`` (JSON lines bounded by ``models.limits``: nesting, integer digits, lengths).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from diagnostics.records import read_bytes, read_records
from models.errors import OrthoscopeError
from models.limits import MAX_TRIPLES_BYTES

DATA = Path(__file__).resolve().parents[1] / "data" / "steering"
MIN_TRIPLES = 8
FIELDS = ("prompt", "positive", "negative")
_FIELD_NAMES = {"prompt": "prompt", "positive": "response with the concept", "negative": "response without the concept"}


def concepts() -> dict[str, dict]:
    """The built-in concepts: name -> ``tokens``, ``description``, ``file``."""
    return json.loads((DATA / "concepts.json").read_text(encoding="utf-8"))


def concept_names() -> list[str]:
    return list(concepts())


def neutral_sentences() -> list[str]:
    """Ordinary sentences with no concept's words; steering should leave their perplexity alone."""
    return [line.strip() for line in (DATA / "neutral.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def builtin_triples(name: str) -> list[dict]:
    table = concepts()
    if name not in table:
        raise OrthoscopeError(f"no built-in concept {name!r}; the built-in concepts are {', '.join(table)}.")
    return parse_triples((DATA / table[name]["file"]).read_bytes(), table[name]["file"])


def load_triples(path: str | Path) -> list[dict]:
    """Triples from a file: ``stat``-ed first (a FIFO or device is never opened), refused above
    ``MAX_TRIPLES_BYTES`` before it is read, then parsed by :func:`parse_triples`."""
    path = Path(path)
    return parse_triples(read_bytes(path, f"--triples {path.name}", MAX_TRIPLES_BYTES), path.name)


def parse_triples(data: bytes, filename: str) -> list[dict]:
    """Triples from CSV or JSONL bytes, checked; errors name the row (the n-th triple)."""
    if len(data) > MAX_TRIPLES_BYTES:
        raise OrthoscopeError(f"{filename} is {len(data) / 2**20:.1f} MB; triple files are limited to "
                              f"{MAX_TRIPLES_BYTES // 2**20} MB.")
    rows = read_records(data, filename)
    if rows and any(f not in rows[0] for f in FIELDS):
        missing = [f for f in FIELDS if f not in rows[0]]
        raise OrthoscopeError(f"{filename}: the first row lacks {', '.join(missing)}; a triple file has the "
                              f"fields {', '.join(FIELDS)}.")
    return check_triples([(n, {f: r.get(f) for f in FIELDS}) for n, r in enumerate(rows, start=1)], filename)


def check_triples(rows: list[tuple[int, dict]], source: str) -> list[dict]:
    triples = []
    for number, row in rows:
        for field in FIELDS:
            value = row.get(field)
            if value is None:
                raise OrthoscopeError(f"{source}, row {number}: no {field!r} ({_FIELD_NAMES[field]}).")
            if not isinstance(value, str):
                raise OrthoscopeError(f"{source}, row {number}: {field!r} must be text.")
            if not value.strip():
                raise OrthoscopeError(f"{source}, row {number}: the {_FIELD_NAMES[field]} is empty.")
        if row["positive"].strip() == row["negative"].strip():
            raise OrthoscopeError(f"{source}, row {number}: both responses are the same, so they differ in no concept.")
        triples.append({f: row[f].strip() for f in FIELDS})
    if len(triples) < MIN_TRIPLES:
        raise OrthoscopeError(f"{source} holds {len(triples)} triple(s); at least {MIN_TRIPLES} are needed "
                              "(some are held out to test the steering).")
    return triples


def digest(triples: list[dict]) -> str:
    return hashlib.sha256(json.dumps(triples, sort_keys=True).encode()).hexdigest()[:16]


def split_tokens(text: str) -> list[str]:
    """``"dog, dogs"`` -> ["dog", "dogs"]: the concept's words, comma-separated. Spaces around a word
    do not matter: every word is scored with and without a leading space."""
    return [t.strip() for t in text.split(",") if t.strip()]
