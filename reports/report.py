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
from models.limits import (MAX_REPORT_BYTES, MAX_REPORT_RESULTS, MAX_REPORT_ROWS, MAX_TENSORS, check_memory,
                           human_bytes, loads_json)
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


# ---------------------------------------------------------------------------------------
# Reading report.json back: validated when loaded, not when drawn.


# Lists (by path inside a result) whose length drives a loop that adds a trace, a shape or an
# n x n allocation in the charts or tables, bounded near what the diagnostic itself can write.
LENGTH_BOUNDS: dict[str, dict[str, int]] = {
    "overview": {"tensors": MAX_TENSORS},
    "spectra": {"layers": MAX_TENSORS, "skipped": MAX_TENSORS, "esds": MAX_TENSORS},
    "alignment": {"metrics": 100_000, "geometry": 64, "similarity": 64, "tradeoff": 10_000, "cross_modal": 256,
                  "zero_shot": 4_096, "heatmaps.rows": 500, "heatmaps.labels": 500, "heatmaps.within_a": 500,
                  "heatmaps.within_b": 500, "heatmaps.cross_before": 500, "heatmaps.cross_after": 500,
                  "projection.labels": 100_000, "warnings": 1_000},
    "directions": {"directions": 65_536, "matrices": 4_096, "projector": 10_000, "traversal.rows": 20_000,
                   "rownorm_vs_raw": 4_096, "gram_minus_identity": 4_096, "crosstalk": 4_096, "crosstalk_cos": 4_096},
    "steering": {"sectors": 36, "grid": 4_096, "directions": 4_096, "self_steering": 100_000, "samples": 100_000,
                 "sweep": 10_000, "examples": 1_000, "notes": 1_000},
    "optimizer_traces": {"records": MAX_REPORT_ROWS},
    # A sweep of up to MAX_CHECKPOINTS checkpoints; a layer row per checkpoint and matrix.
    "compare": {"checkpoints": 10_000, "layers": MAX_REPORT_ROWS, "deltas": MAX_REPORT_ROWS,
                "overlaps": MAX_REPORT_ROWS},
}
# Integers that size an allocation or a loop: (smallest, largest).
INT_BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "directions": {"k": (1, 65_536), "rank": (0, 2**31)},
    "steering": {"layer": (0, 100_000), "n_layers": (0, 100_000), "hidden_size": (0, 10**7), "n_fit": (0, 10**7),
                 "n_heldout": (0, 10**7), "n_steered": (0, 10**7)},
    "overview": {"num_params": (0, 10**15)},
}


def _cols(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Columns of the result tables that hold numbers (or null, for NaN): the ones charts and tables
# compute with. A string there is refused naming the row and column, before anything is drawn.
NUMERIC_COLUMNS: dict[str, dict[str, frozenset[str]]] = {
    "overview": {"tensors": _cols("frobenius_norm numel")},
    "spectra": {
        "layers": _cols("D ERG_gap M N Q alpha alpha_ci_high alpha_ci_low alpha_weighted bulk_max bulk_min conv_fft_n"
                        " conv_orth_max_dev conv_orth_rms_dev conv_sv_max conv_sv_min detX_num detX_val entropy"
                        " frobenius_norm_sq lambda_max log_alpha_norm log_norm log_spectral_norm lr_exponential_R"
                        " lr_exponential_p lr_lognormal_R lr_lognormal_p lr_truncated_power_law_R"
                        " lr_truncated_power_law_p matrix_rank mp_bulk_ks mp_edge mp_sigma mp_softrank num_above_mp_edge"
                        " num_evals num_fingers num_pl_spikes num_spikes pl_pvalue rand_distance rand_lambda_max"
                        " rand_num_spikes rank_loss raw_alpha rf sigma sigma_mp stable_rank tail_past_mp_edge"
                        " weak_rank_loss ww_softrank xmax xmin"),
    },
    "alignment": {
        "metrics": _cols("cos cos_centred cos_centred_hi cos_centred_lo cos_centred_sd cos_hi cos_lo cos_sd draws"
                         " mean_rank_ab mean_rank_ba n_anchors n_test orth_error recall10_ab recall10_ba recall5_ab"
                         " recall5_ba seed top1_ab top1_ab_hi top1_ab_lo top1_ab_sd top1_ba top1_ba_hi top1_ba_lo"
                         " top1_ba_sd weight class_top1_ab class_top1_ba class_top1_ab_hi class_top1_ab_lo"
                         " class_top1_ab_sd class_top1_ba_hi class_top1_ba_lo class_top1_ba_sd n_test_classes"),
        "metric_draws": _cols("cos cos_centred draw mean_rank_ab mean_rank_ba n_anchors n_test orth_error recall10_ab"
                              " recall10_ba recall5_ab recall5_ba seed top1_ab top1_ba weight class_top1_ab"
                              " class_top1_ba n_test_classes"),
        "geometry": _cols("anchor_effective_rank anchor_rank condition det det_sign log_abs_det n_anchors orth_error"
                          " scale sv_max sv_min weight"),
        "similarity": _cols("n_permutations n_rows null_mean null_sd p_floor p_value value z"),
        "budget": _cols("cos n_anchors n_queries seed top1_ab top1_ba"),
        "tradeoff": _cols("cos cos_centred dist_to_procrustes n_anchors n_test orth_error top1_ab top1_ba weight"),
        "cross_modal": _cols("class_top1_ab class_top1_ba cos cos_centred mean_rank_ab mean_rank_ba n_test"
                             " recall10_ab recall10_ba recall5_ab recall5_ba top1_ab top1_ba weight"),
        "zero_shot": _cols("accuracy chance n_classes n_test"),
    },
    "directions": {
        "directions": _cols("best_raw_match best_raw_match_cos cos_rownorm_raw eig_AtA_raw eig_AtA_rownorm"
                            " eigengap_raw eigengap_rownorm explained_raw explained_rownorm index sv_raw"),
        "projector": _cols("eckart_young_error eckart_young_relative equal_sv_error equal_sv_relative k"),
    },
    "compare": {
        "checkpoints": _cols("step layers trusted_layers mean_trusted_alpha mean_alpha n_too-small n_random-like"
                             " n_bulk+spikes n_very-heavy-tailed n_heavy-tailed num_params tensors nonfinite_tensors"
                             " seconds failed"),
        "layers": _cols("step alpha alpha_ci_low alpha_ci_high stable_rank log_spectral_norm frobenius_norm_sq num_evals"),
        "deltas": _cols("step rel_size delta_frobenius stable_rank effective_rank delta_rank k_eff angle_left_mean_deg"
                        " angle_left_min_deg overlap_left overlap_left_null angle_right_mean_deg angle_right_min_deg"
                        " overlap_right overlap_right_null delta_alpha delta_num_evals"),
        "overlaps": _cols("cosine subspace_overlap null k_eff"),
    },
    "steering": {
        "samples": _cols("cos_theta index norm normal_norm phi_deg sector x y"),
        "self_steering": _cols("cos_theta gain_at_max index min_strength norm normal_norm null_gain_at_max"
                               " null_q95_at_max p phi_deg ppl_ratio_at_max rate sector steerability x y"),
        "grid": _cols("concept_gain concept_gain_hi concept_gain_lo concept_rate concept_rate_hi concept_rate_lo"
                      " fraction_reaching n null_gain null_gain_sd null_ppl_ratio null_q95 null_rate null_repetition p"
                      " ppl_ratio repetition s text_pvalue"),
        "directions": _cols("concept_gain concept_gain_hi concept_gain_lo concept_rate concept_rate_hi"
                            " concept_rate_lo fraction_reaching n null_gain null_gain_sd null_ppl_ratio null_q95"
                            " null_rate null_repetition ppl_ratio repetition s text_pvalue"),
        "sectors": _cols("count fraction_reaching mean_cos_theta mean_gain mean_steerability phi_from_deg phi_to_deg"
                         " sector"),
        "sweep": _cols("axis_norm layer mean_cos_theta mean_norm normal_spread plane_explained spread_ratio"),
        "steered": _cols("sample s p draw norm concept_score gain repetition ppl_ratio"),
    },
}
# Lists whose items may legitimately differ in kind (the trace records are checked by their own schema).
_FREE_LISTS = {("optimizer_traces", "records")}


def from_json(text: str | bytes, *, check_drawable: bool = True) -> list[Result]:
    """Rebuild the results of a report.json, refusing anything that does not fit the schema.

    Validation happens here, when the report is loaded, so a page never meets a malformed result
    when it draws one. In order: the JSON is parsed within ``models.limits`` (nesting, integer
    digits, string and list lengths) and the report's size against the memory budget; each result's
    lists and integers that size an allocation or a loop in the charts against ``LENGTH_BOUNDS``
    and ``INT_BOUNDS``; each field against the type its dataclass declares (``Result.from_dict``,
    a strict pydantic model built from the dataclass: one approach for every result type, with
    no second copy of the schema); the rows of every table, generically: each row an object, each
    column holding one kind of value across rows, and the ``NUMERIC_COLUMNS`` numbers (or null);
    an optimizer trace's records against the trace format's own field types. Last, with
    ``check_drawable``, the result's tables and figures are built once, so that whatever the
    checks above cannot see still becomes a one-line error here instead of an exception on a page.
    Every refusal is an OrthoscopeError naming the result and the field.
    """
    if len(text) > MAX_REPORT_BYTES:
        raise OrthoscopeError(f"this report is {human_bytes(len(text))}; reports are read up to "
                              f"{human_bytes(MAX_REPORT_BYTES)}.")
    # Parsed JSON takes roughly ten times its text in Python objects.
    check_memory(10 * len(text), "opening this report")
    try:
        doc = loads_json(text, "this report")
    except OrthoscopeError as exc:
        message = str(exc)
        raise OrthoscopeError(message.replace("this report is not valid JSON", "this is not a JSON report", 1)) from None
    if not isinstance(doc, dict) or doc.get("tool") != TOOL or not isinstance(doc.get("results"), list):
        raise OrthoscopeError("this JSON file is not an Orthoscope report (no 'tool': 'orthoscope' and 'results' list).")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise OrthoscopeError(
            f"report schema version {_shown(doc.get('schema_version'))} is not the version this Orthoscope reads "
            f"({SCHEMA_VERSION})."
        )
    if len(doc["results"]) > MAX_REPORT_RESULTS:
        raise OrthoscopeError(f"this report holds {len(doc['results'])} results; at most {MAX_REPORT_RESULTS} are opened.")
    results = []
    for i, item in enumerate(doc["results"]):
        name = item.get("diagnostic") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in DIAGNOSTICS:
            raise OrthoscopeError(f"result {i + 1} of the report has unknown diagnostic {_shown(name)}.")
        where = f"result {i + 1} of the report ({name})"
        result = load_result(item, where)
        if check_drawable:
            _draw_once(result, where)
        results.append(result)
    return results


def load_result(item: dict, where: str = "the result") -> Result:
    """One result object of a report, validated (see :func:`from_json`) and rebuilt."""
    name = item["diagnostic"]
    _check_bounds(item, name, where)
    try:
        result = DIAGNOSTICS[name][0].from_dict(item)
    except OrthoscopeError as exc:
        raise OrthoscopeError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise OrthoscopeError(f"{where} does not fit the schema ({type(exc).__name__}: {_short(exc)}).") from None
    _check_tables(item, name, where)
    if name == "optimizer_traces":
        _check_records(result.records, where)
    return result


def _check_bounds(item: dict, name: str, where: str) -> None:
    for path, limit in LENGTH_BOUNDS.get(name, {}).items():
        value = _at(item, path)
        if isinstance(value, (list, dict)) and len(value) > limit:
            raise OrthoscopeError(f"{where}: '{path}' holds {len(value):,} entries; a result of {name} has at most "
                                  f"{limit:,}.")
    for key, value in item.items():
        if isinstance(value, list) and len(value) > MAX_REPORT_ROWS:
            raise OrthoscopeError(f"{where}: '{key}' holds {len(value):,} entries; at most {MAX_REPORT_ROWS:,} are read.")
    for key, (low, high) in INT_BOUNDS.get(name, {}).items():
        value = item.get(key)
        if type(value) is int and not low <= value <= high:
            raise OrthoscopeError(f"{where}: '{key}' is {_shown(value)}; it must lie between {low:,} and {high:,}.")
    if name == "directions":
        k, values = item.get("k"), item.get("singular_values")
        if type(k) is int and isinstance(values, list) and k > len(values):
            raise OrthoscopeError(f"{where}: 'k' is {k:,} but the matrix has {len(values):,} singular values.")


def _at(item: dict, path: str):
    value = item
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _check_tables(item: dict, name: str, where: str) -> None:
    """Walk every list in the result (without recursion): items of one kind; rows (lists of
    objects) with one kind per column, and the declared numeric columns numbers or null."""
    numeric = NUMERIC_COLUMNS.get(name, {})
    stack: list[tuple[str, object, frozenset[str]]] = [
        (key, value, numeric.get(key, frozenset())) for key, value in item.items()
        if (name, key) not in _FREE_LISTS and isinstance(value, (list, dict))]
    while stack:
        path, value, numbers = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v, frozenset()) for k, v in value.items() if isinstance(v, (list, dict)))
            continue
        kinds: dict[str, int] = {}
        for j, element in enumerate(value):
            kind = _kind(element)
            if kind is not None:
                kinds.setdefault(kind, j)
        if len(kinds) > 1:
            (k1, j1), (k2, j2) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
            raise OrthoscopeError(f"{where}: '{path}' mixes kinds of value: item {j1} is a {k1} but item {j2} is a "
                                  f"{k2}.")
        if "object" in kinds:
            columns: dict[str, tuple[str, int]] = {}
            for j, row in enumerate(value):
                if row is None:
                    continue
                for column, cell in row.items():
                    kind = _kind(cell)
                    if kind is None:
                        continue
                    if column in numbers and kind != "number":
                        raise OrthoscopeError(f"{where}: '{path}' row {j}, column '{column}' should be a number or "
                                              f"null (got {_shown(cell)}).")
                    first = columns.setdefault(column, (kind, j))
                    if first[0] != kind:
                        raise OrthoscopeError(f"{where}: '{path}' row {j}, column '{column}' is a {kind} ({_shown(cell)})"
                                              f" where row {first[1]} holds a {first[0]}.")
                    if kind in ("list", "object"):
                        stack.append((f"{path}[{j}].{column}", cell, frozenset()))
        elif "list" in kinds:
            stack.extend((f"{path}[{j}]", v, frozenset()) for j, v in enumerate(value) if isinstance(v, list))


def _check_records(records: list, where: str) -> None:
    from diagnostics.trace_recorder import record_problems

    for j, record in enumerate(records):
        problems = record_problems(record)
        if problems:
            raise OrthoscopeError(f"{where}: 'records' item {j}: {problems[0]}.")


def _draw_once(result: Result, where: str) -> None:
    """Build the result's tables and figures once: what no check above foresaw fails here, as one line."""
    try:
        result.tables()
        figures_for(result)
    except OrthoscopeError as exc:
        raise OrthoscopeError(f"{where} cannot be shown: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a malformed result becomes the user's one line
        raise OrthoscopeError(f"{where} does not fit the schema: drawing it fails ({type(exc).__name__}: "
                              f"{_short(exc)}).") from None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the exception wrote
    return text if len(text) <= 200 else text[:200] + " ..."


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


def _csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every string cell (and column name) through reports.text.csv_cell: control
    characters and escape sequences stripped, line breaks as spaces, and a leading = + - @ that is not
    a number quoted so that a spreadsheet shows it as text. Numbers are untouched; the frame is copied
    only when a cell changes."""
    from reports.text import csv_cell

    changed = {}
    for i, (name, column) in enumerate(frame.items()):
        if not (column.dtype == object or isinstance(column.dtype, pd.StringDtype)):
            continue
        values = column.tolist()
        cleaned = [csv_cell(v) if isinstance(v, str) else v for v in values]
        if any(a is not b for a, b in zip(values, cleaned)):
            changed[i] = pd.Series(cleaned, index=column.index, dtype=column.dtype)
    columns = [csv_cell(c) if isinstance(c, str) else c for c in frame.columns]
    if not changed and columns == list(frame.columns):
        return frame
    out = frame.copy()
    for i, column in changed.items():
        out.isetitem(i, column)
    out.columns = columns
    return out


def _csv_files(results: list[Result], plain: bool) -> list[tuple[dict, str]]:
    """(manifest entry, CSV text) per table. ``plain`` names files by the table alone (the CLI's
    single result); otherwise DIAGNOSTIC-MODEL-TABLE.csv, with -2, -3, ... where names collide.
    String cells are made safe for terminals and spreadsheets (:func:`_csv_safe`)."""
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
            files.append((entry, _csv_safe(frame).to_csv(index=False)))
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
    from charts.markup import strip_markup  # only to_html draws figures

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
            # Names from files reach the chart as text, not Plotly markup (a live <a href> in a label).
            strip_markup(fig)
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OrthoscopeError(f"cannot create the folder {out_dir} ({exc.strerror or exc}).") from None
    files = _csv_files(results, plain=len(results) == 1)
    written = []
    for fname, text in [("report.json", to_json(results)), ("report.html", to_html(results)),
                        *((entry["file"], body) for entry, body in files), ("manifest.json", _manifest(files))]:
        path = out_dir / fname
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:  # a full disk, a folder in the way, permissions changed since the CLI checked
            raise OrthoscopeError(f"cannot write {path} ({exc.strerror or exc}).") from None
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
