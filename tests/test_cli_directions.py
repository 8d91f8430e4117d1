"""`python cli.py directions`: directions.csv and the report on MiniLM, planted spectra through the CLI,
the variant flags, one-line errors with exit 2."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.linalg import hadamard
from scipy.stats import ortho_group

import cli
from diagnostics.directions import DIRECTION_COLUMNS

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
    assert "SeFa: " in err and "subspace overlap" in err  # the headline line
    rows = list(csv.DictReader((out / "directions.csv").open()))
    assert [r["index"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    eigenvalues = [float(r["eig_AtA_raw"]) for r in rows]
    assert eigenvalues == sorted(eigenvalues, reverse=True) and eigenvalues[-1] > 0
    assert [float(r["sv_raw"]) ** 2 for r in rows] == pytest.approx(eigenvalues, rel=1e-12)
    assert all(0 <= float(r["cos_rownorm_raw"]) <= 1 + 1e-12 for r in rows)
    assert {r["readout_of"] for r in rows} == {"raw"}
    assert all(r["top_sentences"].count(" | ") == 2 for r in rows)  # an encoder: sentences, not tokens
    walk = list(csv.DictReader((out / "directions_traversal.csv").open()))
    assert [float(r["alpha"]) for r in walk] == [-0.1, 0.0, 0.1]
    (result,) = json.loads((out / "report.json").read_text())["results"]
    assert result["diagnostic"] == "directions" and result["params"]["seed"] == 3
    assert result["matrices"][0]["name"] == "encoder.layer.2.attention.self.query.weight"
    assert result["fit"]["bound"] <= result["fit"]["error"] <= result["fit"]["bound"] * 1.01
    assert result["chosen"] == "raw" and result["params"]["normalize"] is False
    # spectrum, eigengaps, subspace, rownorm/raw pairs, projector, fit, orthogonality, cross-talk, traversal
    assert (out / "report.html").read_text().count("plotly-graph-div") == 9


def planted_file(tmp_path, s):
    """A float64 A = U diag(s) V^T, 32 x 16, whose rows all have the same norm (U from a Hadamard matrix)."""
    U = hadamard(32)[:, :len(s)] / np.sqrt(32)
    V = ortho_group.rvs(16, random_state=1)[:, :len(s)]
    path = tmp_path / "planted.safetensors"
    save_file({"layers.0.fc1.weight": torch.from_numpy((U * np.asarray(s)) @ V.T)}, path)
    return path


def run_planted(path, out, *flags) -> list[dict]:
    code = cli.main(["directions", "--model", str(path), "--matrix", "layers.0.fc1.weight", "--k", "3",
                     "--fit-iters", "0", *flags, "--out", str(out)])
    assert code == 0
    return list(csv.DictReader((out / "directions.csv").open()))


def test_no_normalize_gives_back_the_planted_singular_values_exactly(tmp_path):
    s = [9.0, 7.0, 5.0, 3.0, 1.0]
    path = planted_file(tmp_path, s)
    rows = run_planted(path, tmp_path / "plain", "--no-normalize")
    assert [float(r["sv_raw"]) for r in rows] == pytest.approx(s[:3], rel=1e-13)
    assert [float(r["eig_AtA_raw"]) for r in rows] == pytest.approx([x**2 for x in s[:3]], rel=1e-13)
    assert {r["readout_of"] for r in rows} == {"raw"}
    # The default is the same closed form; --normalize only changes whose directions are read out.
    default = run_planted(path, tmp_path / "default")
    assert default == rows
    normed = run_planted(path, tmp_path / "normed", "--normalize")
    assert {r["readout_of"] for r in normed} == {"rownorm"}
    assert [float(r["sv_raw"]) for r in normed] == pytest.approx(s[:3], rel=1e-13)
    # Equal row norms: the genforce matrix is A / sqrt(sum s^2 / 32).
    scale = 32 / sum(x**2 for x in s)
    assert [float(r["eig_AtA_rownorm"]) for r in normed] == pytest.approx([x**2 * scale for x in s[:3]], rel=1e-12)


def test_default_columns_name_their_matrix(tmp_path, capsys):
    rows = run_planted(planted_file(tmp_path, [6.0, 6.0, 6.0, 3.0, 1.0]), tmp_path / "o")
    header = list(rows[0])
    assert header == list(DIRECTION_COLUMNS)
    readout = {"readout_of", "top_tokens", "bottom_tokens", "top_sentences"}
    for column in set(header) - {"index"} - readout:
        assert {"raw", "rownorm"} & set(column.split("_")), f"{column} does not say which matrix it describes"
    assert "eig_AtA_raw" in header and "eig_AtA_rownorm" in header and "eigenvalue" not in header
    # A planted triple singular value: the headline is the subspace overlap, and the eigengaps say why.
    assert [float(r["eigengap_raw"]) for r in rows] == pytest.approx([0.0, 0.0, 0.75], abs=1e-12)
    assert {r["resolved_raw"] for r in rows} == {"False"}
    err = capsys.readouterr().err
    assert "near-degenerate spectrum, so the headline is the top-3 subspace overlap rownorm vs raw, 1.0000" in err


def test_variant_flags_are_exclusive_and_help_names_the_default(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["directions", "--model", "x", "--matrix", "m", "--normalize", "--no-normalize", "--out", "o"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["directions", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the paper's closed form, eigenvectors of A^T A)" in text
    assert "--no-normalize the paper's closed form, eigenvectors of A^T A (the default" in text


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
