"""AppTest for the Latent directions page: the real MiniLM run, what it leads with, recomputing, bad input."""

import base64
import json

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.linalg import hadamard
from streamlit.testing.v1 import AppTest

import reports
from diagnostics.directions import DEFAULTS, DIRECTION_COLUMNS, DirectionsResult, headline
from tests.apptest import APP, errors, open_page

PAGE = "pages/directions.py"


def page(**state) -> AppTest:
    return open_page(PAGE, timeout=300, **state)


def values(field) -> np.ndarray:
    """Plotly's JSON writes numpy arrays as base64 ('bdata'); lists stay lists."""
    if isinstance(field, dict):
        data = np.frombuffer(base64.b64decode(field["bdata"]), dtype=field["dtype"])
        return data.reshape([int(n) for n in field["shape"].split(",")]) if "shape" in field else data
    return np.asarray(field, dtype=float)


def infos(at) -> list[str]:
    return [i.value for i in at.info]


def metric_labels(at) -> list[str]:
    return [m.label for m in at.metric]


def test_minilm_page_shows_every_section_computed_from_the_result():
    at = page()
    assert not at.exception, at.exception
    assert not errors(at)
    assert at.selectbox(key="directions_block").value == "3"
    assert at.selectbox(key="directions_kind").value == "mlp-down"
    assert at.selectbox(key="directions_matrix").value == "encoder.layer.3.output.dense.weight"

    at.button(key="directions_add").click().run()
    (result,) = at.session_state["report_results"]
    assert isinstance(result, DirectionsResult) and result.k == 10
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Shape (out x in)"] == "384 x 1536"
    assert metrics["Rank"] == "384"
    assert metrics["Effective rank"] == f"{result.effective_rank:.1f}"
    assert metrics["Closed-form distance, k = 10"] == f"{result.fit['bound']:.4g}"
    assert float(metrics["Rebuild error, full rank"]) < 1e-12

    # The closed form leads: raw A^T A is the default, and the genforce variant is the option.
    assert DEFAULTS["normalize"] is False and at.checkbox(key="directions_normalize").value is False
    assert result.chosen == "raw"
    labels = metric_labels(at)
    overlap, pairs = labels.index("Subspace overlap, rownorm vs raw"), labels.index("Smallest per-direction |cos|, rownorm vs raw")
    subspace_first = result.degeneracy["headline"] == "subspace_overlap"
    assert (overlap < pairs) is subspace_first
    assert {m.label: m.value for m in at.metric}["Subspace overlap, rownorm vs raw"] == f"{result.subspace_overlap:.4f}"
    shown = [w.value for w in at.warning] if result.degeneracy["near_degenerate"] else [c.value for c in at.caption]
    assert any(text.startswith(headline(result)) for text in shown)
    how = " ".join(m.value for m in at.markdown)
    assert "North, Bell, Cahalan & Moeng 1982" in how and "R = diag(1/||a_r||) A" in how

    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 9  # spectrum, eigengaps, subspace and pairs, projector, fit, orthogonality, cross-talk, traversal
    assert np.array_equal(values(charts[0]["data"][0]["y"]), result.singular_values)
    assert np.array_equal(values(charts[1]["data"][0]["y"]), result.variants["raw"]["eigengaps"])
    assert np.array_equal(values(charts[1]["data"][1]["y"]), result.variants["rownorm"]["eigengaps"])
    subspace, pairs = (charts[2], charts[3]) if subspace_first else (charts[3], charts[2])
    assert np.array_equal(values(subspace["data"][0]["y"]), result.principal_cosines)
    assert np.array_equal(values(pairs["data"][0]["z"]), result.rownorm_vs_raw)

    readout, samples = at.dataframe[0].value, at.dataframe[1].value
    assert list(readout.columns) == [c for c in DIRECTION_COLUMNS if c not in {"top_tokens", "bottom_tokens"}]
    assert list(readout["index"]) == list(range(1, 11))
    assert set(readout["readout_of"]) == {"raw"}
    assert readout["top_sentences"].str.count(r" \| ").eq(2).all()  # three sentences per direction
    assert list(samples["alpha"]) == result.params["alphas"]
    assert samples.loc[samples["alpha"] == 0, "shift"].iloc[0] == 0.0
    assert (samples.loc[samples["alpha"] != 0, "shift"] > 0).all()
    assert "encoder.layer.3.output.dense" in " ".join(c.value for c in at.caption)


    # The saved report shows the same charts on the report viewer.
    viewer = AppTest.from_file(APP, default_timeout=300)
    viewer.switch_page("pages/report_viewer.py").run()
    viewer.file_uploader(key="report_upload").set_value(("report.json", reports.to_json([result]).encode(), "application/json"))
    viewer.run()
    assert not viewer.exception and not errors(viewer)
    shown = [json.loads(c.proto.spec) for c in viewer.get("plotly_chart")]
    assert len(shown) == 9
    assert np.array_equal(values(shown[0]["data"][0]["y"]), result.singular_values)


def test_changed_settings_wait_for_compute_and_the_matrix_picker_cascades():
    at = page()
    at.number_input(key="directions_k").set_value(4).run()
    assert any("press Compute" in i for i in infos(at))
    assert "Closed-form distance, k = 10" in {m.label for m in at.metric}  # still the old result
    at.button(key="directions_compute").click().run()
    assert not any("press Compute" in i for i in infos(at))
    assert "Closed-form distance, k = 4" in {m.label for m in at.metric}
    assert at.multiselect(key="directions_traverse").value == DEFAULTS["traverse"]  # all still <= k

    at.selectbox(key="directions_block").set_value("embeddings").run()
    assert at.selectbox(key="directions_kind").value == "embedding"
    assert at.selectbox(key="directions_matrix").options == [
        "embeddings.position_embeddings.weight  (512 x 384)", "embeddings.word_embeddings.weight  (30522 x 384)",
    ]
    at.text_input(key="directions_alphas").set_value("-0.5, zero").run()
    assert any("alphas: cannot read" in e for e in errors(at)), errors(at)
    assert not at.exception


def test_uploaded_state_dict_errors_for_k_above_the_rank_and_explains_the_missing_traversal(tmp_path):
    path = tmp_path / "low-rank.safetensors"
    # A planted double singular value (5, 5) in rank 2: no single direction is determined.
    low_rank = torch.from_numpy(hadamard(16)[:, :2] / 4 * 5.0) @ torch.linalg.qr(torch.randn(24, 2, dtype=torch.float64))[0].T
    save_file({"layers.0.fc1.weight": low_rank.float(), "layers.0.fc1.bias": torch.zeros(16)}, path)
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["model_source"] = "Upload"
    at.switch_page(PAGE)
    at.run()
    at.sidebar.file_uploader(key="upload_ckpt").set_value(("low-rank.safetensors", path.read_bytes(), "application/octet-stream"))
    at.run()
    assert any("k=10 is larger than the rank of layers.0.fc1.weight (2" in e for e in errors(at)), errors(at)
    assert not at.exception

    at.number_input(key="directions_k").set_value(2).run()
    at.button(key="directions_compute").click().run()
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rank"] == "2"
    # Both variants span A's row space at k = rank, so the headline overlap is exactly 1.
    labels = metric_labels(at)
    assert labels.index("Subspace overlap, rownorm vs raw") < labels.index("Smallest per-direction |cos|, rownorm vs raw")
    assert metrics["Subspace overlap, rownorm vs raw"] == "1.0000"
    assert any("near-degenerate spectrum" in w.value and "raw 1, 2" in w.value for w in at.warning)
    assert any("No traversal: readout and traversal cover language models and text encoders" in i for i in infos(at))
