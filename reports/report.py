"""Export results as report.html, report.json and CSV tables, and read report.json back.

The JSON schema is documented in reports/SCHEMA.md; bump ``SCHEMA_VERSION`` in
diagnostics/result.py and that document together.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import zipfile
from pathlib import Path

from diagnostics.result import SCHEMA_VERSION, Result
from models.errors import OrthoscopeError
from reports.registry import DIAGNOSTICS, figures_for

TOOL = "orthoscope"
TOOL_VERSION = "0.1.0"
# Tables longer than this are cut in report.html (the CSV files always hold every row).
HTML_TABLE_ROWS = 500


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


def csv_tables(results: list[Result]) -> dict[str, str]:
    """File name -> CSV text. Names get a numeric prefix only when two results share a table name."""
    named = [(stem, frame) for r in results for stem, frame in r.tables().items()]
    stems = [s for s, _ in named]
    out = {}
    for i, (stem, frame) in enumerate(named):
        fname = f"{stem}.csv" if stems.count(stem) == 1 else f"{i + 1:02d}_{stem}.csv"
        out[fname] = frame.to_csv(index=False)
    return out


def csv_zip(results: list[Result]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for fname, text in csv_tables(results).items():
            zf.writestr(fname, text)
    return buf.getvalue()


def to_html(results: list[Result]) -> str:
    """One self-contained page: plotly.js is inlined once, before the first figure."""
    parts = []
    plotly_included = False
    for r in results:
        parts.append(f"<section><h2>{html.escape(r.diagnostic.title())}: {html.escape(r.model_name)}</h2>")
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
            cut = len(frame) > HTML_TABLE_ROWS
            parts.append(f"<h3>{html.escape(stem)} ({len(frame)} rows{', first ' + str(HTML_TABLE_ROWS) + ' shown' if cut else ''})</h3>")
            parts.append(frame.head(HTML_TABLE_ROWS).to_html(index=False, classes="table", border=0, na_rep="", float_format=_fmt))
        parts.append("</section>")
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _PAGE.format(version=TOOL_VERSION, created=created, body="\n".join(parts))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def write(results: list[Result], out_dir: Path) -> list[Path]:
    """Write report.html, report.json and every CSV table into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, text in [("report.json", to_json(results)), ("report.html", to_html(results)), *csv_tables(results).items()]:
        path = out_dir / fname
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Orthoscope report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
h1 {{ margin-bottom: 0; }} .meta {{ color: #555; font-size: 0.9em; }}
table.table {{ border-collapse: collapse; font-size: 0.85em; }}
table.table td, table.table th {{ padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }}
section {{ margin-top: 2rem; }}
</style></head>
<body><h1>Orthoscope report</h1><p class="meta">Orthoscope {version} &middot; {created}</p>
{body}
</body></html>
"""
