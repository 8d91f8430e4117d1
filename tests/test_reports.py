"""Report export: self-contained HTML, versioned JSON that loads back, CSV tables."""

import ast
import csv
import html
import io
import json
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import reports
from diagnostics import glossary, optimizer_traces, overview, spectra
from diagnostics.result import SCHEMA_VERSION
from models import OrthoscopeError, load
from reports import report
from reports.registry import DIAGNOSTICS, TITLES, figures_for
from tests import result_fixtures

ROOT = Path(__file__).resolve().parent.parent
SCROLL_BOX = '<div class="tablebox" style="overflow-x:auto; max-width:100%">'


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_file({"layers.0.fc1.weight": torch.randn(32, 16), "layers.0.fc1.bias": torch.randn(32)}, path)
    return overview.run(load(str(path)))


@pytest.fixture(scope="module")
def long_result(tmp_path_factory):
    """An overview whose tensors table has 30 rows, more than report.html shows unfolded."""
    path = tmp_path_factory.mktemp("ckpt") / "SmolLM2-135M Instruct.safetensors"
    save_file({f"layers.{i}.fc.weight": torch.randn(8, 8) for i in range(30)}, path)
    return overview.run(load(str(path)))


@pytest.fixture(scope="module")
def wide_result(tmp_path_factory):
    """Spectra: some 47 columns per layer, wider than any chart."""
    path = tmp_path_factory.mktemp("ckpt") / "w.safetensors"
    save_file({f"layers.{i}.fc.weight": torch.randn(64, 48) for i in range(3)}, path)
    return spectra.run(load(str(path)))


@pytest.fixture(scope="module")
def traces_result():
    return optimizer_traces.from_trace(result_fixtures.recorded_trace(), "my run.jsonl")


def rows_of(table_html: str) -> int:
    return table_html.count("<tr") - 1  # the header row


def test_html_inlines_plotly_once_and_holds_every_chart(result):
    page = reports.to_html([result, result])
    assert page.count("plotly.js v") == 1  # the library banner appears once
    assert page.count('class="plotly-graph-div"') == 2 * len(figures_for(result))
    assert "<script src=\"http" not in page  # nothing fetched from a network
    assert "layers.0.fc1.weight" in page


def test_json_has_the_versioned_envelope(result):
    doc = json.loads(reports.to_json([result]))
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["tool"] == "orthoscope" and doc["tool_version"] == reports.TOOL_VERSION
    (item,) = doc["results"]
    for key in ("schema_version", "diagnostic", "model_name", "fingerprint", "params", "timings"):
        assert key in item
    assert item["fingerprint"] == result.fingerprint


def test_json_loads_back_to_the_same_charts(result):
    (again,) = reports.from_json(reports.to_json([result]))
    assert [f.to_json() for f in figures_for(again)] == [f.to_json() for f in figures_for(result)]
    assert again.to_frame().equals(result.to_frame())


def test_csv_tables_name_their_files_and_hold_every_row(result):
    tables = reports.csv_tables([result])
    assert list(tables) == ["overview-m.safetensors-tensors.csv"]
    lines = tables["overview-m.safetensors-tensors.csv"].strip().splitlines()
    assert lines[0] == "name,shape,dtype,numel,frobenius_norm,status,analysed,reason,kind,block"
    assert len(lines) == 1 + len(result.tensors)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("all-MiniLM-L6-v2 → SmolLM2-135M-Instruct", "all-minilm-l6-v2-smollm2-135m-instruct"),
        ("  __My model (v1.5)!  ", "my-model-v1.5"),
        ("→", "model"),
        ("64-256-256-10 MLP on scikit-learn digits (1,257 train / 180 val / 360 test images)",
         "64-256-256-10-mlp-on-scikit-learn-digits-1-257"),
        ("x" * 60, "x" * 48),
    ],
)
def test_model_names_are_slugified_for_file_names(name, expected):
    assert report.slug(name) == expected
    assert len(report.slug(name)) <= report.SLUG_CHARS


def test_zip_names_diagnostic_model_table_and_its_manifest_describes_every_file(long_result, wide_result):
    archive = zipfile.ZipFile(io.BytesIO(reports.csv_zip([long_result, wide_result])))
    assert archive.namelist() == [
        "overview-smollm2-135m-instruct.safetensors-tensors.csv",
        "spectra-w.safetensors-layers.csv",
        "spectra-w.safetensors-skipped.csv",
        "manifest.json",
    ]
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["tool"] == "orthoscope"
    files = manifest["files"]
    assert [f["file"] for f in files] == archive.namelist()[:-1]
    for entry in files:
        parsed = list(csv.reader(io.StringIO(archive.read(entry["file"]).decode())))
        header, body = (parsed[0], parsed[1:]) if parsed else ([], [])
        assert entry["rows"] == len(body) and entry["columns"] == header, entry["file"]
        assert entry["title"] == TITLES[entry["diagnostic"]]
        assert len(entry["params_digest"]) == 64
    assert files[0]["model_name"] == long_result.model_name and files[0]["fingerprint"] == long_result.fingerprint
    assert files[0]["rows"] == 30 and files[0]["table"] == "tensors" and files[0]["diagnostic"] == "overview"
    assert files[1]["rows"] == 3 and files[2]["rows"] == 0


def test_colliding_names_get_numeric_suffixes(result):
    archive = zipfile.ZipFile(io.BytesIO(reports.csv_zip([result, result, result])))
    assert archive.namelist() == ["overview-m.safetensors-tensors.csv", "overview-m.safetensors-tensors-2.csv",
                                  "overview-m.safetensors-tensors-3.csv", "manifest.json"]
    files = json.loads(archive.read("manifest.json"))["files"]
    assert len({f["params_digest"] for f in files}) == 1  # same run thrice: the digest says so


def test_write_keeps_the_tables_own_names_for_one_result_and_lists_them_in_a_manifest(result, tmp_path):
    written = reports.write([result], tmp_path / "out")
    assert sorted(p.name for p in written) == ["manifest.json", "report.html", "report.json", "tensors.csv"]
    (entry,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    assert entry["file"] == "tensors.csv" and entry["rows"] == len(result.tensors)


def test_write_prefixes_names_when_several_results_share_the_folder(result, long_result, tmp_path):
    written = reports.write([result, long_result], tmp_path / "out")
    assert {p.name for p in written} >= {"overview-m.safetensors-tensors.csv",
                                         "overview-smollm2-135m-instruct.safetensors-tensors.csv", "manifest.json"}


def test_long_tables_show_their_first_rows_and_fold_the_rest_into_details(result, long_result):
    page = reports.to_html([long_result])
    preview, folded = re.search(r"(<table.*?</table>)\s*</div><details><summary>show all 30 rows</summary>(.*?)</details>",
                                page, re.S).groups()
    assert rows_of(preview) == report.HTML_PREVIEW_ROWS
    assert rows_of(folded) == 30
    assert "<details>" not in reports.to_html([result])  # two rows: nothing to fold


def test_tables_past_the_cap_say_the_csv_holds_the_rest(long_result, monkeypatch):
    monkeypatch.setattr(report, "HTML_TABLE_ROWS", 25)
    page = reports.to_html([long_result])
    folded = re.search(r"<summary>show the first 25 of 30 rows \(the CSV holds every row\)</summary>(.*?)</details>",
                       page, re.S).group(1)
    assert rows_of(folded) == 25


def test_every_table_scrolls_in_its_own_box(wide_result, long_result):
    page = reports.to_html([wide_result, long_result])
    assert len(wide_result.to_frame().columns) > 30
    assert page.count("<table") == page.count(SCROLL_BOX + "<table") == 4  # layers, skipped, tensors twice
    assert "max-width: 1200px" in page  # the page keeps the charts' width


def test_headings_use_human_titles(result, wide_result, traces_result):
    page = reports.to_html([result, wide_result, traces_result])
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Model overview: m.safetensors", "Layer spectra: w.safetensors", "Optimizer traces: my run.jsonl"]
    assert "Optimizer_Traces" not in page


def test_every_diagnostic_has_a_human_title():
    assert set(TITLES) == set(DIAGNOSTICS)
    for name, title in TITLES.items():
        assert "_" not in title and title != name.title()


def test_favicon_is_a_local_file_the_app_and_the_report_use(result):
    icon = ROOT / "assets" / "orthoscope.svg"
    assert ET.parse(icon).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    tree = ast.parse((ROOT / "app.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "set_page_config"]
    (page_icon,) = [ast.unparse(k.value) for c in calls for k in c.keywords if k.arg == "page_icon"]
    assert page_icon == "str(ICON)"
    assert any(isinstance(n, ast.ImportFrom) and n.module == "reports.report" and any(a.name == "ICON" for a in n.names)
               for n in tree.body)
    assert report.ICON.is_absolute() and report.ICON == icon.resolve()
    assert '<link rel="icon" type="image/svg+xml" href="data:image/svg+xml;base64,' in reports.to_html([result])


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("not json", "not a JSON report"),
        ('{"tool": "other", "results": []}', "not an Orthoscope report"),
        ('{"tool": "orthoscope", "schema_version": 99, "results": []}', "schema version 99"),
        ('{"tool": "orthoscope", "schema_version": 1, "results": [{"diagnostic": "nope"}]}', "unknown diagnostic"),
        ('{"tool": "orthoscope", "schema_version": 1, "results": [{"diagnostic": "overview", "schema_version": 1}]}', "lacks"),
    ],
)
def test_bad_reports_are_refused_with_a_reason(text, phrase):
    with pytest.raises(OrthoscopeError, match=phrase):
        reports.from_json(text)


def test_every_table_in_report_html_carries_its_column_legend(result):
    page = reports.to_html([result])
    frame = next(iter(result.tables().values()))
    entries = glossary.legend(frame.columns, result.diagnostic, next(iter(result.tables())))
    assert entries and "what the columns mean" in page
    name, meaning = entries[0]
    assert f"<dt><code>{html.escape(name)}</code></dt><dd>{html.escape(meaning)}</dd>" in page


# ---------------------------------------------------------------------------------------
# report.json validated when loaded (issue 15)


def _one_result(result_dict: dict) -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, "tool": "orthoscope", "results": [result_dict]})


def test_fields_of_the_wrong_type_are_refused_when_loaded_naming_the_field(result):
    good = result.to_dict()
    for field, value, phrase in [("tensors", "abc", "'tensors' should be list"),
                                 ("fingerprint", 5, "'fingerprint' should be string"),
                                 ("num_params", "many", "'num_params' should be integer"),
                                 ("params", [1], "'params' should be dictionary")]:
        with pytest.raises(OrthoscopeError, match=phrase):
            reports.from_json(_one_result({**good, field: value}))
    rows = [dict(r) for r in good["tensors"]]
    rows[0]["numel"] = "x"
    with pytest.raises(OrthoscopeError, match="'tensors' row 0, column 'numel' should be a number"):
        reports.from_json(_one_result({**good, "tensors": rows}))
    rows = [dict(r) for r in good["tensors"]] + [dict(good["tensors"][0], name=5)]
    with pytest.raises(OrthoscopeError, match="column 'name' is a number"):
        reports.from_json(_one_result({**good, "tensors": rows}))


def test_sizes_that_drive_allocations_are_bounded_when_loaded():
    directions = {"schema_version": 1, "diagnostic": "directions", "model_name": "m", "fingerprint": "f",
                  "params": {}, "timings": {}, "k": 10**9, "singular_values": [1.0]}
    with pytest.raises(OrthoscopeError, match="'k' is 1000000000; it must lie between 1 and 65,536"):
        reports.from_json(_one_result(directions))
    with pytest.raises(OrthoscopeError, match="'k' is 3 but the matrix has 1 singular values"):
        reports.from_json(_one_result({**directions, "k": 3}))
    alignment = {**directions, "diagnostic": "alignment", "heatmaps": {"rows": list(range(501))}}
    with pytest.raises(OrthoscopeError, match="'heatmaps.rows' holds 501 entries"):
        reports.from_json(_one_result(alignment))
    with pytest.raises(OrthoscopeError, match="nested deeper than 64"):
        reports.from_json('{"tool": "orthoscope", "results": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(OrthoscopeError, match="5000 digits"):
        reports.from_json('{"tool": "orthoscope", "schema_version": ' + "1" * 5000 + "}")


def test_what_no_check_foresees_is_refused_when_loaded_not_when_drawn(result):
    rows = [{k: v for k, v in r.items() if k != "kind"} for r in result.to_dict()["tensors"]]
    spectra_rows = {"schema_version": 1, "diagnostic": "spectra", "model_name": "m", "fingerprint": "f",
                    "params": {}, "timings": {}, "layers": [{"name": "a"}]}
    with pytest.raises(OrthoscopeError, match=r"result 1 of the report \(spectra\) does not fit the schema: drawing"):
        reports.from_json(_one_result(spectra_rows))
    assert reports.from_json(_one_result({**result.to_dict(), "tensors": rows}), check_drawable=False)


@pytest.mark.parametrize("name", ["overview", "spectra", "alignment", "directions", "optimizer_traces", "steering",
                                  "compare"])
def test_every_diagnostics_report_loads_back_and_its_numeric_columns_are_declared(name):
    """The load-time checks refuse nothing a diagnostic writes, and NUMERIC_COLUMNS names every
    column that holds numbers in the result fixtures (add a new numeric column there too)."""
    result = getattr(result_fixtures, name)()
    (back,) = reports.from_json(reports.to_json([result]))
    assert back.to_dict() == result.to_dict()
    declared = report.NUMERIC_COLUMNS.get(name, {})
    for field, rows in result.to_dict().items():
        if name == "optimizer_traces" or not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
            continue
        kinds: dict[str, set] = {}
        for row in rows:
            for column, value in row.items():
                if value is not None:
                    kinds.setdefault(column, set()).add(type(value) if not isinstance(value, bool) else bool)
        numeric = {c for c, k in kinds.items() if k <= {int, float}}
        assert numeric <= declared.get(field, frozenset()), (field, sorted(numeric - declared.get(field, frozenset())))
