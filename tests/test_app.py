"""Streamlit AppTest for the app shell, the model overview page and the report viewer."""

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

import reports

TIMEOUT = 180
APP = str(Path(__file__).resolve().parents[1] / "app.py")


def app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_app_opens_on_the_default_builtin_with_the_overview():
    at = app().run()
    assert not at.exception
    assert at.sidebar.radio(key="model_source").value == "Built-in"
    assert at.sidebar.selectbox(key="builtin_key").value == "minilm"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == "all-MiniLM-L6-v2"
    assert metrics["Parameters"] == "22,713,728"
    assert metrics["Analysed tensors"] == "39 of 104"
    assert len(at.get("plotly_chart")) == 2
    assert len(at.dataframe[0].value) == 104


def test_overview_toggle_shows_only_skipped_tensors_with_reasons():
    at = app().run()
    at.toggle(key="overview_only_skipped").set_value(True).run()
    frame = at.dataframe[0].value
    assert len(frame) == 104 - 39
    assert not frame["analysed"].any()
    assert frame["reason"].str.len().min() > 0


def test_adding_to_the_report_enables_the_three_exports():
    at = app().run()
    assert at.button(key="overview_add").label == "Add to report"
    at.button(key="overview_add").click().run()
    assert at.button(key="overview_add").disabled
    assert len(at.session_state["report_results"]) == 1
    labels = [b.label for b in at.sidebar.get("download_button")]
    assert labels == ["report.html", "report.json", "tables (CSV, zip)"]


def test_smollm2_builtin_loads_in_the_page():
    at = app(model_source="Built-in", builtin_key="smollm2").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Kind"] == "causal-lm"
    assert metrics["Analysed tensors"] == "211 of 272"


def _upload(at: AppTest, name: str, data: bytes, key: str = "upload_ckpt") -> AppTest:
    at.sidebar.file_uploader(key=key).set_value((name, data, "application/octet-stream"))
    return at.run()


def test_uploaded_safetensors_is_analysed(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"layers.0.fc1.weight": torch.randn(32, 16), "layers.0.fc1.bias": torch.zeros(32)}, path)
    at = _upload(app(model_source="Upload").run(), "w.safetensors", path.read_bytes())
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == "w.safetensors"
    assert metrics["Analysed tensors"] == "1 of 2"


class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_uploaded_pickle_payload_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "evil": _WritesAFile(target)}, buf)
    at = _upload(app(model_source="Upload").run(), "evil.pt", buf.getvalue())
    assert any("refused" in e and "weights_only" in e for e in errors(at)), errors(at)
    assert not target.exists()
    assert not at.exception


@pytest.mark.parametrize(
    "name, data, phrase",
    [
        ("empty.safetensors", b"", "is empty"),
        ("notes.pt", b"just some text, not weights\n", "text file, not a checkpoint"),
        ("cut.safetensors", (10_000).to_bytes(8, "little") + b'{"a": 1}', "truncated"),
    ],
)
def test_bad_uploads_show_a_specific_error_and_the_app_keeps_running(name, data, phrase):
    at = _upload(app(model_source="Upload").run(), name, data)
    assert any(phrase in e for e in errors(at)), errors(at)
    assert not at.exception
    # The server still serves: a fresh run on the built-in works.
    assert not app().run().exception


def test_upload_over_the_limit_is_refused(monkeypatch):
    import ui.model_picker as picker

    monkeypatch.setattr(picker, "upload_limit_mb", lambda: 0.001)  # about 1 KB
    at = _upload(app(model_source="Upload").run(), "big.safetensors", b"\0" * 4096)
    assert any("over the 0.001 MiB limit" in e for e in errors(at)), errors(at)


def test_local_paths_are_off_by_default(monkeypatch):
    monkeypatch.delenv("ORTHOSCOPE_ALLOWED_ROOTS", raising=False)
    at = app(model_source="Local path").run()
    assert any("Reading local paths is off" in i.value for i in at.sidebar.info)
    assert not at.metric


def test_local_path_outside_the_allowed_roots_is_refused(monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "elsewhere.safetensors"
    save_file({"a.weight": torch.zeros(16, 16)}, outside)
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(allowed))
    at = app(model_source="Local path", local_path=str(outside)).run()
    assert any("outside the allowed directories" in e for e in errors(at)), errors(at)
    inside = allowed / "ok.safetensors"
    save_file({"a.weight": torch.zeros(16, 16)}, inside)
    at = app(model_source="Local path", local_path=str(inside)).run()
    assert not errors(at)
    assert {m.label: m.value for m in at.metric}["Model"] == "ok.safetensors"


def test_hub_id_without_network_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    at = app(model_source="Hugging Face", hf_id="someorg/somemodel").run()
    assert any("cannot reach the Hugging Face hub" in e for e in errors(at)), errors(at)
    assert not at.exception


def test_report_viewer_shows_the_same_charts_as_the_page():
    first = app().run()
    first.button(key="overview_add").click().run()
    (result,) = first.session_state["report_results"]
    doc = reports.to_json([result])

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/report_viewer.py").run()
    at.file_uploader(key="report_upload").set_value(("report.json", doc.encode(), "application/json")).run()
    assert not errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    shown = [json.loads(c.proto.spec)["data"][0]["y"] for c in charts[:1]]
    assert shown[0] == [result.params_by_block[b] for b in json.loads(charts[0].proto.spec)["data"][0]["x"]]


def test_report_viewer_refuses_a_foreign_json():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/report_viewer.py").run()
    at.file_uploader(key="report_upload").set_value(("x.json", b'{"hello": 1}', "application/json")).run()
    assert any("not an Orthoscope report" in e for e in errors(at))


def test_csv_export_holds_the_overview_table():
    at = app().run()
    at.button(key="overview_add").click().run()
    items = at.session_state["report_results"]
    assert "1. Model overview: all-MiniLM-L6-v2" in [c.value for c in at.sidebar.caption]
    names = zipfile.ZipFile(io.BytesIO(reports.csv_zip(items))).namelist()
    assert names == ["overview-all-minilm-l6-v2-tensors.csv", "manifest.json"]


def _folder_files(folder: Path, top: str) -> list[tuple[str, bytes, str]]:
    return [(f"{top}/{p.name}", p.read_bytes(), "application/octet-stream") for p in sorted(folder.iterdir())]


def test_uploaded_model_folder_is_loaded_as_an_hf_folder(tiny_bert_folder):
    at = app(model_source="Upload", upload_mode="Model folder").run()
    at.sidebar.file_uploader(key="upload_dir").set_value(_folder_files(tiny_bert_folder, "tiny-bert")).run()
    assert not errors(at), errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == "tiny-bert"
    assert metrics["Kind"] == "encoder"


def test_uploaded_folder_with_python_code_is_refused(tiny_bert_folder):
    (tiny_bert_folder / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    at = app(model_source="Upload", upload_mode="Model folder").run()
    at.sidebar.file_uploader(key="upload_dir").set_value(_folder_files(tiny_bert_folder, "tiny-bert")).run()
    assert any("contains Python files" in e for e in errors(at)), errors(at)
    assert not at.exception


def test_a_folder_with_two_weight_files_says_which_was_read(monkeypatch, tmp_path):
    folder = tmp_path / "both"
    folder.mkdir()
    save_file({"a.weight": torch.ones(16, 16)}, folder / "weights.safetensors")
    torch.save({"a.weight": torch.zeros(16, 16)}, folder / "pytorch_model.bin")
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tmp_path))
    at = app(model_source="Local path", local_path=str(folder)).run()
    assert not errors(at) and not at.exception
    captions = [c.value for c in at.caption]
    assert any("from weights.safetensors; ignored: pytorch_model.bin" in c for c in captions), captions
