"""`python cli.py alignment`: metrics.csv and the report from arrays or models, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cli
from diagnostics import alignment as al
from tests.alignment_fixtures import planted_pair, texts_csv, tiny_bert_with_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ISSUE_COLUMNS = ["split", "map", "weight", "n_anchors", "seed", "top1_ab", "top1_ba", "cos", "cos_centred", "orth_error"]
FAST = ["--no-curves", "--permutations", "3", "--draws", "2"]


@pytest.fixture
def arrays(tmp_path):
    X, Y, labels = planted_pair(n=120, d=8)
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", Y)
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    return tmp_path


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_arrays_write_metrics_csv_with_a_sweep_and_the_report(arrays, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "b.npy"),
                     "--labels", str(arrays / "labels.txt"), "--out", str(out), "--seed", "3", "--no-normalise", *FAST])
    assert code == 0
    table = rows(out / "metrics.csv")
    assert list(table[0])[:10] == ISSUE_COLUMNS
    counts = sorted({int(r["n_anchors"]) for r in table if r["map"] != "none"})
    assert counts == [8, 16, 32, 64, 84]  # the default sweep up to the 84 pool rows of the seen split
    assert [r["split"] for r in table][:: 1 + len(counts) * len(al.MAPS)] == ["unseen classes", "seen classes"]
    assert len(table) == 2 * (1 + len(counts) * len(al.MAPS))
    assert {r["seed"] for r in table} == {"3"} and {r["draws"] for r in table} == {"2"}
    for best in [r for r in table if r["map"] == "procrustes" and r["n_anchors"] == "84"]:
        assert float(best["top1_ab"]) == float(best["top1_ba"]) == 1.0  # planted, no noise
        assert float(best["orth_error"]) < 1e-12
        assert float(best["top1_ab_lo"]) <= 1.0 == float(best["top1_ab_hi"])
    assert [r for r in table if r["map"] == "ridge"][0]["weight"] == "0.001"
    doc = json.loads((out / "report.json").read_text())
    assert doc["results"][0]["diagnostic"] == "alignment" and doc["results"][0]["params"]["seed"] == 3
    assert "plotly-graph-div" in (out / "report.html").read_text()
    assert {"similarity.csv", "map_geometry.csv", "metric_draws.csv"} <= {p.name for p in out.iterdir()}
    assert len(rows(out / "metric_draws.csv")) == 2 * 2 * (1 + len(counts) * len(al.MAPS))


def test_anchors_maps_and_options_reach_the_result(arrays, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "b.npy"), "--anchors", "40",
                     "--maps", "procrustes,lstsq", "--strategy", "kcenter", "--proper", "--out", str(out), *FAST])
    assert code == 0
    table = rows(out / "metrics.csv")
    assert [(r["split"], r["map"], r["n_anchors"], r["strategy"]) for r in table] == [
        ("random rows", "none", "0", ""), ("random rows", "procrustes", "40", "kcenter"),
        ("random rows", "lstsq", "40", "kcenter")]
    params = json.loads((out / "report.json").read_text())["results"][0]["params"]
    assert params["proper"] is True and params["anchors"] == [40]


def test_draws_normalisation_permutations_and_the_penalty_weight_reach_the_result(arrays, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "b.npy"), "--labels",
            str(arrays / "labels.txt"), "--anchors", "40", "--maps", "procrustes,penalised", "--no-curves"]
    code = cli.main([*base, "--draws", "3", "--permutations", "250", "--penalised-weight", "0.5", "--normalise",
                     "--out", str(out)])
    assert code == 0
    result = json.loads((out / "report.json").read_text())["results"][0]
    p = result["params"]
    assert (p["draws"], p["n_permutations"], p["penalised_weight"], p["normalise"]) == (3, 250, 0.5, True)
    table = rows(out / "metrics.csv")
    assert {r["draws"] for r in table} == {"3"} and {r["split"] for r in table} == {"unseen classes", "seen classes"}
    assert {r["weight"] for r in table if r["map"] == "penalised"} == {"0.5"}
    sim = rows(out / "similarity.csv")
    assert {r["n_permutations"] for r in sim} == {"250"} and all(float(r["p_floor"]) == 1 / 251 for r in sim)
    assert all(float(r["z"]) > 3 for r in sim)
    err = capsys.readouterr().err
    assert "note: split 'unseen classes': anchors and queries from disjoint classes" in err
    # The defaults: five draws, 200 shuffles, rows not normalised; the old option name still works.
    code = cli.main([*base, "--penalised-lambda", "0.25", "--out", str(out)])
    assert code == 0
    p = json.loads((out / "report.json").read_text())["results"][0]["params"]
    assert (p["draws"], p["n_permutations"], p["normalise"], p["penalised_weight"]) == (5, 200, False, 0.25)
    assert cli.main([*base, "--draws", "0", "--out", str(out)]) == 2
    assert "draws must be a whole number from 1" in capsys.readouterr().err


def test_without_labels_the_note_says_the_split_is_by_row(arrays, tmp_path, capsys):
    code = cli.main(["alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "b.npy"), "--anchors", "20",
                     "--out", str(tmp_path / "o"), *FAST])
    assert code == 0
    assert "note: split 'random rows': no labels" in capsys.readouterr().err


def test_fewer_anchors_than_dimensions_warns_on_stderr(tmp_path, capsys):
    X, Y, _ = planted_pair(n=60, d=30, noise=0.1)
    np.save(tmp_path / "a.npy", X)
    np.save(tmp_path / "b.npy", Y)
    code = cli.main(["alignment", "--emb-a", str(tmp_path / "a.npy"), "--emb-b", str(tmp_path / "b.npy"), "--anchors", "10",
                     "--out", str(tmp_path / "o"), *FAST])
    assert code == 0
    assert "warning: 10 anchors in 30 dimensions" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, extra, phrase",
    [
        (lambda d: np.save(d / "b.npy", np.ones(120)), [], "b.npy (B) is 1-D"),
        (lambda d: np.save(d / "b.npy", np.ones((119, 8))), [], "a.npy has 120 rows but b.npy has 119"),
        (lambda d: None, ["--anchors", "500"], "asked for 500 anchors but only 84"),
        (lambda d: None, ["--maps", "procrustes,magic"], "unknown map 'magic'"),
        (lambda d: None, ["--model-a", "builtin:minilm"], "give either --model-a and --model-b, or --emb-a and --emb-b"),
    ],
)
def test_bad_input_exits_2_with_one_line(arrays, tmp_path, capsys, make, extra, phrase):
    make(arrays)
    code = cli.main(["alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "b.npy"),
                     "--out", str(tmp_path / "o"), *FAST, *extra])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and phrase in lines[0], err


def test_nothing_to_align_exits_2(tmp_path, capsys):
    assert cli.main(["alignment", "--out", str(tmp_path / "o")]) == 2
    assert "give either --model-a and --model-b" in capsys.readouterr().err


def test_two_text_encoders_over_a_text_file(tmp_path):
    a = tiny_bert_with_tokenizer(tmp_path / "a", seed=0)
    b = tiny_bert_with_tokenizer(tmp_path / "b", seed=1, hidden=48)
    texts = tmp_path / "texts.csv"
    texts.write_bytes(texts_csv(40))
    out = tmp_path / "out"
    code = cli.main(["alignment", "--model-a", str(a), "--model-b", str(b), "--texts", str(texts), "--pooling-b", "cls",
                     "--layer-a", "1", "--anchors", "20", "--width", "pad", "--out", str(out), *FAST])
    assert code == 0
    result = json.loads((out / "report.json").read_text())["results"][0]
    assert result["data"]["model_a"] == {"spec": str(a), "kind": "encoder", "pooling": "mean", "layer": 1}
    assert result["data"]["model_b"]["pooling"] == "cls"
    assert result["data"]["common_width"] == 48 and result["data"]["width_a"]["how"] == "pad"
    assert result["data"]["text_set"] == "texts.csv" and result["data"]["n_rows"] == 40
    assert result["timings"]["embed_texts_a_s"] > 0


def test_progress_goes_to_stderr_and_the_files_to_stdout(arrays, tmp_path, capsys):
    code = cli.main(["alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "b.npy"),
                     "--out", str(tmp_path / "o"), *FAST])
    captured = capsys.readouterr()
    assert code == 0
    assert "alignment" in captured.err and "100%" in captured.err
    assert str(tmp_path / "o" / "metrics.csv") in captured.out.splitlines()


def test_subprocess_exits_2_without_a_traceback(arrays, tmp_path):
    proc = subprocess.run(
        [sys.executable, "cli.py", "alignment", "--emb-a", str(arrays / "a.npy"), "--emb-b", str(arrays / "nope.npy"),
         "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {arrays / 'nope.npy'} does not exist."]


def test_a_second_modality_is_scored_with_the_map_fitted_on_the_first(tmp_path):
    rng = np.random.default_rng(0)
    X, Y, _ = planted_pair(n=120, d=8)
    X2 = rng.standard_normal((50, 8)).astype(np.float32)
    Q = np.linalg.lstsq(X - X.mean(0), Y - Y.mean(0), rcond=None)[0]  # the planted map, recovered exactly
    Y2 = (X2 - X.mean(0)) @ Q + Y.mean(0)
    for name, a in (("a", X), ("b", Y), ("a2", X2), ("b2", Y2)):
        np.save(tmp_path / f"{name}.npy", a)
    out = tmp_path / "out"
    code = cli.main(["alignment", "--emb-a", str(tmp_path / "a.npy"), "--emb-b", str(tmp_path / "b.npy"),
                     "--emb-a2", str(tmp_path / "a2.npy"), "--emb-b2", str(tmp_path / "b2.npy"), "--no-normalise",
                     "--anchors", "60", "--maps", "procrustes", "--out", str(out), *FAST])
    assert code == 0
    cross = {r["map"]: r for r in rows(out / "cross_modal.csv")}
    assert cross["procrustes"]["n_test"] == "50" and float(cross["procrustes"]["top1_ab"]) == 1.0
    np.save(tmp_path / "b2.npy", np.ones((50, 5)))
    assert cli.main(["alignment", "--emb-a", str(tmp_path / "a.npy"), "--emb-b", str(tmp_path / "b.npy"),
                     "--emb-a2", str(tmp_path / "a2.npy"), "--emb-b2", str(tmp_path / "b2.npy"),
                     "--out", str(out), *FAST]) == 2


def test_two_clip_models_over_an_image_folder(tmp_path):
    from tests.alignment_fixtures import image_set, tiny_clip_folder

    a, b = tiny_clip_folder(tmp_path / "clip-a", 0), tiny_clip_folder(tmp_path / "clip-b", 1)
    images = tmp_path / "images"
    images.mkdir()
    files, (captions_name, captions) = image_set(18)
    for name, data in files:
        (images / name).write_bytes(data)
    (images / captions_name).write_bytes(captions)
    out = tmp_path / "out"
    code = cli.main(["alignment", "--model-a", str(a), "--model-b", str(b), "--images", str(images), "--fit-on", "texts",
                     "--anchors", "8", "--maps", "procrustes", "--out", str(out), *FAST])
    assert code == 0
    cross = rows(out / "cross_modal.csv")
    assert {(r["fitted_on"], r["tested_on"]) for r in cross} == {("texts", "images")}
    (images / captions_name).unlink()
    assert cli.main(["alignment", "--model-a", str(a), "--model-b", str(b), "--images", str(images),
                     "--out", str(out), *FAST]) == 2
