"""Report export: self-contained HTML, versioned JSON that loads back, CSV tables."""

import json

import pytest
import torch
from safetensors.torch import save_file

import reports
from diagnostics import overview
from diagnostics.result import SCHEMA_VERSION
from models import OrthoscopeError, load
from reports.registry import figures_for


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_file({"layers.0.fc1.weight": torch.randn(32, 16), "layers.0.fc1.bias": torch.randn(32)}, path)
    return overview.run(load(str(path)))


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
    assert list(tables) == ["tensors.csv"]
    lines = tables["tensors.csv"].strip().splitlines()
    assert lines[0] == "name,shape,dtype,numel,norm,analysed,reason,kind,block"
    assert len(lines) == 1 + len(result.tensors)
    assert list(reports.csv_tables([result, result])) == ["01_tensors.csv", "02_tensors.csv"]


def test_write_puts_all_files_in_the_folder(result, tmp_path):
    written = reports.write([result], tmp_path / "out")
    assert sorted(p.name for p in written) == ["report.html", "report.json", "tensors.csv"]


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
