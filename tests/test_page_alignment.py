"""Streamlit AppTest for the Embedding alignment page: arrays, two models, bad input, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import reports
from charts import alignment as charts
from diagnostics import alignment as al
from tests.alignment_fixtures import npy_bytes, planted_pair, texts_csv, tiny_bert_with_tokenizer
from tests.apptest import APP, errors, open_page

TIMEOUT = 180
PAGE = "pages/alignment.py"
FAST = {"align_curves": False, "align_perms": 3, "align_draws": 2}


def page(**state) -> AppTest:
    return open_page(PAGE, timeout=TIMEOUT, run=False, **state)


def upload(at: AppTest, key: str, name: str, data: bytes) -> None:
    at.file_uploader(key=key).set_value((name, data, "application/octet-stream"))


def arrays_page(X, Y, labels=None, **state) -> AppTest:
    at = page(align_mode="Embedding arrays", **{**FAST, **state}).run()
    upload(at, "align_emb_a", "a.npy", npy_bytes(X))
    upload(at, "align_emb_b", "b.npy", npy_bytes(Y))
    if labels is not None:
        upload(at, "align_labels", "labels.txt", ("\n".join(labels) + "\n").encode())
    return at.run()


def test_arrays_are_aligned_and_the_page_shows_what_the_diagnostic_computes():
    X, Y, labels = planted_pair(noise=0.05)
    at = arrays_page(X, Y, labels)
    assert not errors(at) and not at.exception
    assert any("Fit and measure" in i.value for i in at.info)
    at.button(key="align_run").click().run()
    assert not errors(at) and not at.exception, (errors(at), at.exception)
    shown = at.dataframe[0].value
    result = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {"curves": False, "n_permutations": 3, "draws": 2})
    expected = result.to_frame()
    assert list(shown["split"]) == list(expected["split"]) and list(shown["map"]) == list(expected["map"])
    np.testing.assert_allclose(shown["top1_ab"].astype(float), expected["top1_ab"].astype(float))
    np.testing.assert_allclose(shown["top1_ab_lo"].astype(float), expected["top1_ab_lo"].astype(float))
    np.testing.assert_allclose(shown["cos_centred"].astype(float), expected["cos_centred"].astype(float))
    # The headline is the unseen-classes split, with its interval, baseline and the seen split beside it.
    metrics = {m.label: m.value for m in at.metric}
    unseen = expected[(expected["split"] == "unseen classes") & (expected["map"] == "procrustes")]
    main = unseen[unseen["n_anchors"] == unseen["n_anchors"].max()].iloc[0]
    assert metrics["top-1 A→B, procrustes, unseen classes"] == f"{main['top1_ab']:.1%}"
    assert metrics["Chance top-1"] == f"{1 / main['n_test']:.2%}" == f"{1 / 30:.2%}"  # one of four classes held out
    headline = next(m.value for m in at.markdown if m.value.startswith("**Unseen classes**"))
    assert f"95% interval {main['top1_ab_lo']:.1%}–{main['top1_ab_hi']:.1%}" in headline
    assert "mean of 2 anchor draws" in headline and "On seen classes" in headline
    assert not any("No labels" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 5  # bars, heatmaps, projection, singular values, similarity
    # The widths match, so the page says no width handling was needed.
    assert any("no width handling was needed" in c.value for c in at.caption)


def test_changing_a_setting_asks_for_a_new_run_and_add_to_report_round_trips():
    X, Y, labels = planted_pair(n=80)
    at = arrays_page(X, Y, labels, align_curves=True, align_anchor_mode="A fixed number", align_anchors=40)
    at.button(key="align_run").click().run()
    assert not errors(at), errors(at)
    assert len(at.get("plotly_chart")) == 7  # with the anchor-budget and lambda curves
    at.button(key="align_add").click().run()
    (result,) = at.session_state["report_results"]
    assert result.diagnostic == "alignment" and result.params["anchors"] == [40]
    at.number_input(key="align_seed").set_value(3).run()
    assert any("settings changed" in i.value for i in at.info)
    assert not at.dataframe

    viewer = AppTest.from_file(APP, default_timeout=TIMEOUT).switch_page("pages/report_viewer.py").run()
    viewer.file_uploader(key="report_upload").set_value(("r.json", reports.to_json([result]).encode(), "application/json"))
    viewer.run()
    assert not errors(viewer)
    figs = viewer.get("plotly_chart")
    assert len(figs) == len(charts.figures(result))
    assert json.loads(figs[0].proto.spec)["layout"]["title"]["text"].startswith("Held-out scores before")


def test_without_labels_the_page_says_the_split_is_by_row_and_the_options_reach_the_run():
    X, Y, _ = planted_pair(n=80, noise=0.05)
    at = arrays_page(X, Y, align_anchor_mode="A fixed number", align_anchors=30, align_draws=3, align_perms=250,
                     align_normalise=True, align_weight=0.5, align_curves=True)
    at.button(key="align_run").click().run()
    assert not errors(at) and not at.exception, (errors(at), at.exception)
    assert any("No labels, so the held-out items are a random 30% of the rows" in i.value for i in at.info)
    metrics = {m.label: m.value for m in at.metric}
    assert "top-1 A→B, procrustes, random rows" in metrics
    at.button(key="align_add").click().run()
    (result,) = at.session_state["report_results"]
    p = result.params
    assert (p["draws"], p["n_permutations"], p["normalise"], p["penalised_weight"]) == (3, 250, True, 0.5)
    assert {r["split"] for r in result.metrics} == {"random rows"} and {r["draws"] for r in result.metrics} == {3}
    assert {r["weight"] for r in result.tradeoff if r["family"] == "penalised"} == set(al.DEFAULTS["tradeoff_weights"])
    assert all(r["p_floor"] == 1 / 251 for r in result.similarity)


def test_page_defaults_follow_the_paper_and_the_issue():
    X, Y, _ = planted_pair(n=40)
    at = page(align_mode="Embedding arrays").run()
    upload(at, "align_emb_a", "a.npy", npy_bytes(X))
    upload(at, "align_emb_b", "b.npy", npy_bytes(Y))
    at.run()
    assert at.checkbox(key="align_normalise").value is False
    assert at.number_input(key="align_draws").value == al.DEFAULTS["draws"] == 5
    assert at.number_input(key="align_perms").value == al.DEFAULTS["n_permutations"] >= 200
    assert at.number_input(key="align_weight").value == al.DEFAULTS["penalised_weight"]


@pytest.mark.parametrize(
    "X, Y, phrase",
    [
        (np.ones(30), np.ones((30, 4)), "is 1-D"),
        (np.ones((30, 4)), np.ones((29, 4)), "has 30 rows but b.npy has 29"),
        (np.vstack([np.full((1, 4), np.nan), np.ones((29, 4))]), np.ones((30, 4)), "NaN or infinite values (rows 0"),
    ],
)
def test_bad_arrays_show_a_specific_error(X, Y, phrase):
    at = arrays_page(X, Y)
    assert any(phrase in e for e in errors(at)), errors(at)
    assert not at.exception


def test_pickled_upload_is_refused():
    obj = np.empty(2, dtype=object)
    at = page(align_mode="Embedding arrays").run()
    buf = __import__("io").BytesIO()
    np.save(buf, obj, allow_pickle=True)
    upload(at, "align_emb_a", "a.npy", buf.getvalue())
    upload(at, "align_emb_b", "b.npy", npy_bytes(np.ones((2, 2))))
    at.run()
    assert any("allow_pickle=False" in e for e in errors(at)), errors(at)


def test_fewer_anchors_than_dimensions_is_a_warning_on_the_page():
    X, Y, labels = planted_pair(n=60, d=40, noise=0.1)
    at = arrays_page(X, Y, labels, align_anchor_mode="A fixed number", align_anchors=10)
    at.button(key="align_run").click().run()
    assert not errors(at) and not at.exception
    assert any("10 anchors in 40 dimensions" in w.value for w in at.warning)


def test_two_models_over_an_uploaded_text_set(tmp_path, monkeypatch):
    """Model A from the sidebar, model B picked on the page: two tiny BERTs of widths 32 and 48."""
    a = tiny_bert_with_tokenizer(tmp_path / "tiny-a", seed=0)
    b = tiny_bert_with_tokenizer(tmp_path / "tiny-b", seed=1, hidden=48)
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tmp_path))
    at = page(model_source="Local path", local_path=str(a), align_b_source="Local path", align_b_path=str(b),
              align_texts_source="Upload CSV / JSONL", align_anchor_mode="A fixed number", align_anchors=20, **FAST).run()
    upload(at, "align_texts_upload", "texts.csv", texts_csv(40))
    at.run()
    assert not errors(at) and not at.exception, (errors(at), at.exception)
    assert at.selectbox(key="align_pool_a").value == "auto"
    at.selectbox(key="align_pool_b").set_value("cls")
    at.button(key="align_run").click().run()
    assert not errors(at) and not at.exception, (errors(at), at.exception)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Anchors / held out"] == "20 / 20"  # unseen classes: one of the two labels held out whole
    result = next(iter(at.session_state["report_results"]), None) if "report_results" in at.session_state else None
    assert result is None  # nothing is added to the report until asked
    shown = at.dataframe[0].value
    assert set(shown["map"]) == {"none", *al.MAPS}
    # The widths differ: the page explains the PCA it did.
    assert any("tiny-b was projected from 48 onto its top 32 principal directions" in c.value for c in at.caption)
    # The embeddings behind it: B pooled by its first token, as chosen.
    at.button(key="align_add").click().run()
    (result,) = at.session_state["report_results"]
    assert result.data["model_b"]["pooling"] == "cls" and result.data["model_a"]["pooling"] == "mean"


def test_a_model_that_cannot_embed_texts_is_explained(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({"layers.0.fc1.weight": torch.zeros(16, 16)}, path)
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tmp_path))
    at = page(align_b_source="Local path", align_b_path=str(path)).run()
    assert any("alignment embeds texts with encoders" in e for e in errors(at)), errors(at)
    assert not at.exception


def test_two_clip_models_fit_on_images_and_test_on_texts(tmp_path, monkeypatch):
    from tests.alignment_fixtures import image_set, tiny_clip_folder

    a, b = tiny_clip_folder(tmp_path / "clip-a", 0), tiny_clip_folder(tmp_path / "clip-b", 1)
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(tmp_path))
    at = page(model_source="Local path", local_path=str(a), align_b_source="Local path", align_b_path=str(b),
              align_anchor_mode="A fixed number", align_anchors=12, **FAST).run()
    assert not errors(at) and not at.exception, (errors(at), at.exception)
    files, captions = image_set(24)
    at.file_uploader(key="align_images").set_value([(n, d, "image/png") for n, d in files])
    at.file_uploader(key="align_captions").set_value((captions[0], captions[1], "text/csv"))
    at.run()
    assert at.radio(key="align_fit_on").value == "images"
    at.button(key="align_run").click().run()
    assert not errors(at) and not at.exception, (errors(at), at.exception)
    assert len(at.get("plotly_chart")) == 7  # the five, plus the cross-modal and zero-shot bars
    at.button(key="align_add").click().run()
    (result,) = at.session_state["report_results"]
    assert {c["tested_on"] for c in result.cross_modal} == {"texts"}
    assert result.data["fit_on"] == "images" and result.zero_shot
