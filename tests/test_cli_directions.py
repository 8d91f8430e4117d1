"""`python cli.py directions`: directions.csv and the report on MiniLM, one-line errors with exit 2."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cli

ROOT = Path(__file__).resolve().parents[1]


def test_minilm_query_directions_write_the_csv_and_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main([
        "directions", "--model", "builtin:minilm", "--matrix", "encoder.layer.2.attention.self.query.weight",
        "--k", "6", "--traverse", "1", "--alphas=-0.1,0.1", "--seed", "3", "--fit-iters", "40", "--out", str(out),
    ])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "directions" in err and "100%" in err  # the progress bar
    rows = list(csv.DictReader((out / "directions.csv").open()))
    assert [r["index"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert {"index", "eigenvalue", "cos_to_svd", "top_tokens"} <= set(rows[0])
    eigenvalues = [float(r["eigenvalue"]) for r in rows]
    assert eigenvalues == sorted(eigenvalues, reverse=True) and eigenvalues[-1] > 0
    assert all(0 <= float(r["cos_to_svd"]) <= 1 + 1e-12 for r in rows)
    assert all(r["top_sentences"].count(" | ") == 2 for r in rows)  # an encoder: sentences, not tokens
    walk = list(csv.DictReader((out / "directions_traversal.csv").open()))
    assert [float(r["alpha"]) for r in walk] == [-0.1, 0.0, 0.1]
    (result,) = json.loads((out / "report.json").read_text())["results"]
    assert result["diagnostic"] == "directions" and result["params"]["seed"] == 3
    assert result["matrices"][0]["name"] == "encoder.layer.2.attention.self.query.weight"
    assert result["fit"]["bound"] <= result["fit"]["error"] <= result["fit"]["bound"] * 1.01
    assert (out / "report.html").read_text().count("plotly-graph-div") == 7


@pytest.fixture()
def low_rank(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.fc1.weight": torch.randn(16, 3) @ torch.randn(3, 12), "layers.0.fc1.bias": torch.zeros(16)}, path)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--matrix", "layers.0.fc1.weight", "--k", "4"],
     "error: k=4 is larger than the rank of layers.0.fc1.weight (3, shape 16 x 12); choose k <= 3."),
    (["--matrix", "layers.0.fc1.bias"],
     "error: layers.0.fc1.bias is a 1-D tensor of shape (16,) (a bias, norm or scale); latent directions need a 2-D weight matrix."),
    (["--matrix", "layers.0.fc9.weight"],
     "error: there is no weight matrix named 'layers.0.fc9.weight' in m.safetensors. Did you mean layers.0.fc1.weight?"),
    (["--matrix", "layers.0.fc1.weight", "--alphas", "x"],
     "error: --alphas: cannot read 'x'; write comma-separated numbers."),
])
def test_bad_input_exits_2_with_one_line(low_rank, tmp_path, capsys, extra, message):
    assert cli.main(["directions", "--model", str(low_rank), *extra, "--out", str(tmp_path / "o")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == [message]


def test_missing_matrix_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "cli.py", "directions", "--model", "builtin:minilm",
         "--matrix", "encoder.layer.0.attention.output.LayerNorm.weight", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: encoder.layer.0.attention.output.LayerNorm.weight is a 1-D tensor of shape (384,) "
        "(a bias, norm or scale); latent directions need a 2-D weight matrix."
    ]
