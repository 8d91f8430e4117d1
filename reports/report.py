"""Export results as report.html, report.json and CSV tables, and read report.json back.

The JSON schema is documented in reports/SCHEMA.md; bump ``SCHEMA_VERSION`` in
diagnostics/result.py and that document together.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import json
import re
import zipfile
from pathlib import Path

import pandas as pd

from diagnostics import glossary
from diagnostics.result import SCHEMA_VERSION, Result, jsonable
from models.errors import OrthoscopeError
from reports.registry import DIAGNOSTICS, TITLES, figures_for

TOOL = "orthoscope"
TOOL_VERSION = "0.1.0"
ICON = Path(__file__).resolve().parent.parent / "assets" / "orthoscope.svg"
# report.html shows this many rows of a table and folds the rest away, so that a 360-row table
# does not push the next chart tens of thousands of pixels down.
HTML_PREVIEW_ROWS = 20
# The folded table stops here (the CSV files always hold every row).
HTML_TABLE_ROWS = 500
# Model names become part of CSV file names; long ones (a benchmark's description) are cut.
SLUG_CHARS = 48


def to_json(results: list[Result]) -> str:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL,
        "tool_version": TOOL_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "results": [r.to_dict() for r in results],
    }
    return json.dumps(doc, indent=1, allow_nan=False)


def from_json(text: str | bytes) -> list[Result]:
    """Rebuild the results of a report.json, refusing anything that does not fit the schema."""
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OrthoscopeError(f"this is not a JSON report ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("tool") != TOOL or not isinstance(doc.get("results"), list):
        raise OrthoscopeError("this JSON file is not an Orthoscope report (no 'tool': 'orthoscope' and 'results' list).")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise OrthoscopeError(
            f"report schema version {doc.get('schema_version')} is not the version this Orthoscope reads ({SCHEMA_VERSION})."
        )
    results = []
    for i, item in enumerate(doc["results"]):
        name = item.get("diagnostic") if isinstance(item, dict) else None
        if name not in DIAGNOSTICS:
            raise OrthoscopeError(f"result {i + 1} of the report has unknown diagnostic {name!r}.")
        try:
            results.append(DIAGNOSTICS[name][0].from_dict(item))
        except TypeError as exc:
            raise OrthoscopeError(f"result {i + 1} ({name}) does not fit the schema ({exc}).") from None
    return results


def slug(text: str) -> str:
    """Lowercase, every run of characters other than [a-z0-9.] as one '-', trimmed."""
    name = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    if len(name) > SLUG_CHARS:
        name = name[: SLUG_CHARS + 1].rsplit("-", 1)[0][:SLUG_CHARS]  # whole words where it can
    return name.rstrip("-.") or "model"


def params_digest(params: dict) -> str:
    """sha256 of the params as canonical JSON: tells apart two results of one diagnostic and model."""
    canonical = json.dumps(jsonable(params), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _csv_files(results: list[Result], plain: bool) -> list[tuple[dict, str]]:
    """(manifest entry, CSV text) per table. ``plain`` names files by the table alone (the CLI's
    single result); otherwise DIAGNOSTIC-MODEL-TABLE.csv, with -2, -3, ... where names collide."""
    files, taken = [], set()
    for r in results:
        digest = params_digest(r.params)
        for table, frame in r.tables().items():
            stem = table if plain else f"{r.diagnostic}-{slug(r.model_name)}-{table}"
            fname, n = f"{stem}.csv", 1
            while fname in taken:
                n += 1
                fname = f"{stem}-{n}.csv"
            taken.add(fname)
            entry = {"file": fname, "diagnostic": r.diagnostic, "title": TITLES[r.diagnostic],
                     "model_name": r.model_name, "fingerprint": r.fingerprint, "table": table,
                     "rows": len(frame), "columns": [str(c) for c in frame.columns], "params_digest": digest}
            files.append((entry, frame.to_csv(index=False)))
    return files


def _manifest(files: list[tuple[dict, str]]) -> str:
    doc = {"schema_version": SCHEMA_VERSION, "tool": TOOL, "tool_version": TOOL_VERSION,
           "files": [entry for entry, _ in files]}
    return json.dumps(doc, indent=1, ensure_ascii=False)


def csv_tables(results: list[Result]) -> dict[str, str]:
    """File name (DIAGNOSTIC-MODEL-TABLE.csv) -> CSV text."""
    return {entry["file"]: text for entry, text in _csv_files(results, plain=False)}


def csv_zip(results: list[Result]) -> bytes:
    """Every table as DIAGNOSTIC-MODEL-TABLE.csv, and manifest.json saying what each file holds."""
    files = _csv_files(results, plain=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, text in files:
            zf.writestr(entry["file"], text)
        zf.writestr("manifest.json", _manifest(files))
    return buf.getvalue()


def to_html(results: list[Result]) -> str:
    """One self-contained page: plotly.js is inlined once, before the first figure; long tables
    are folded into <details> and wide ones scroll in their own box, with no script."""
    parts = []
    plotly_included = False
    for r in results:
        parts.append(f"<section><h2>{html.escape(TITLES[r.diagnostic])}: {html.escape(r.model_name)}</h2>")
        parts.append(
            "<p class='meta'>fingerprint <code>{}</code> &middot; params <code>{}</code> &middot; timings <code>{}</code></p>".format(
                html.escape(r.fingerprint[:16]),
                html.escape(json.dumps(r.params, sort_keys=True)),
                html.escape(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.timings.items()})),
            )
        )
        for fig in figures_for(r):
            parts.append(fig.to_html(full_html=False, include_plotlyjs=not plotly_included))
            plotly_included = True
        for stem, frame in r.tables().items():
            parts.append(f"<h3>{html.escape(stem)} <span class='meta'>({len(frame)} rows)</span></h3>")
            parts.append(_table_html(frame))
            parts.append(_legend_html(glossary.legend(frame.columns, r.diagnostic, stem)))
        parts.append("</section>")
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    icon = base64.b64encode(ICON.read_bytes()).decode()
    return _PAGE.format(version=TOOL_VERSION, created=created, icon=icon, body="\n".join(parts))


def _table_html(frame: pd.DataFrame) -> str:
    if len(frame) <= HTML_PREVIEW_ROWS:
        return _scroll_box(frame)
    if len(frame) <= HTML_TABLE_ROWS:
        label = f"show all {len(frame)} rows"
    else:
        label = f"show the first {HTML_TABLE_ROWS} of {len(frame)} rows (the CSV holds every row)"
    return (f"{_scroll_box(frame.head(HTML_PREVIEW_ROWS))}"
            f"<details><summary>{label}</summary>{_scroll_box(frame.head(HTML_TABLE_ROWS))}</details>")


def _legend_html(entries: list[tuple[str, str]]) -> str:
    """The table's columns explained (the dashboard's column help), folded under the table."""
    if not entries:
        return ""
    rows = "".join(f"<dt><code>{html.escape(name)}</code></dt><dd>{html.escape(meaning)}</dd>" for name, meaning in entries)
    return f"<details class='legend'><summary>what the columns mean</summary><dl>{rows}</dl></details>"


def _scroll_box(frame: pd.DataFrame) -> str:
    # The style is inline so that the box holds even where the page's stylesheet is stripped.
    table = frame.to_html(index=False, classes="table", border=0, na_rep="", float_format=_fmt)
    return f'<div class="tablebox" style="overflow-x:auto; max-width:100%">{table}</div>'


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def write(results: list[Result], out_dir: Path) -> list[Path]:
    """Write report.html, report.json, every CSV table and manifest.json into ``out_dir``.

    One result (the CLI's case) keeps the tables' own names (layers.csv, samples.csv), which
    scripts and the README rely on; several get DIAGNOSTIC-MODEL-TABLE.csv, as in the zip.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _csv_files(results, plain=len(results) == 1)
    written = []
    for fname, text in [("report.json", to_json(results)), ("report.html", to_html(results)),
                        *((entry["file"], body) for entry, body in files), ("manifest.json", _manifest(files))]:
        path = out_dir / fname
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Orthoscope report</title>
<link rel="icon" type="image/svg+xml" href="data:image/svg+xml;base64,{icon}">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
h1 {{ margin-bottom: 0; }} .meta {{ color: #555; font-size: 0.9em; }}
/* tables take their natural width inside their scroll box instead of squeezing 47 columns into
   the page, which wrapped every cell into rows 130 px tall; only long text wraps */
table.table {{ border-collapse: collapse; font-size: 0.85em; width: max-content; }}
table.table td, table.table th {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }}
table.table td {{ max-width: 28em; }}
section {{ margin-top: 2rem; }}
details > .tablebox {{ max-height: 70vh; overflow-y: auto; }}
details > .tablebox th {{ position: sticky; top: 0; background: #fff; }}
summary {{ cursor: pointer; color: #1f5fa8; margin: 0.3rem 0; }}
/* the unfolded table repeats the preview's rows, so the preview steps aside */
.tablebox:has(+ details[open]) {{ display: none; }}
</style></head>
<body><h1>Orthoscope report</h1><p class="meta">Orthoscope {version} &middot; {created}</p>
{body}
</body></html>
"""
