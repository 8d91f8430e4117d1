"""`python cli.py spectra`: layers.csv, report files, --fail-on, bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import cli

ROOT = Path(__file__).resolve().parents[1]


def test_spectra_cli_on_the_builtin_writes_layers_csv(tmp_path):
    proc = subprocess.run(
        [sys.executable, "cli.py", "spectra", "--model", "builtin:minilm", "--out", str(tmp_path), "--detx"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "layers.csv").open()))
    assert len(rows) == 39
    for column in ("name", "shape", "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_weighted",
                   "log_alpha_norm", "lambda_max", "log_spectral_norm", "frobenius_norm_sq", "log_norm", "stable_rank",
                   "entropy", "matrix_rank", "rank_loss", "Q", "N", "M", "num_evals", "detX_num", "detX_val", "ERG_gap"):
        assert column in rows[0], column
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["results"][0]["diagnostic"] == "spectra"
    assert doc["results"][0]["params"]["detx"] is True
    assert (tmp_path / "report.html").stat().st_size > 1_000_000


def _ckpt(tmp_path, w):
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.fc1.weight": w}, path)
    return str(path)


def test_fail_on_alpha_exits_1(tmp_path, capsys):
    torch.manual_seed(0)
    path = _ckpt(tmp_path, torch.randn(300, 100))
    out = str(tmp_path / "o")
    assert cli.main(["spectra", "--model", path, "--out", out, "--fail-on", "alpha>0", "--fail-on-all"]) == 1
    assert "layers.0.fc1.weight: alpha=" in capsys.readouterr().err
    assert cli.main(["spectra", "--model", path, "--out", out, "--fail-on", "alpha<0", "--fail-on-all"]) == 0


def test_fail_on_looks_at_trusted_fits_unless_fail_on_all(tmp_path, capsys):
    # A Gaussian layer is random-like: its alpha is not trusted, so "alpha>0" matches nothing by
    # default, and matches with --fail-on-all; a heavy-tailed layer is matched either way.
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(300, 100, generator=g)
    heavy = torch.distributions.StudentT(1.5).sample((1000, 400))
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.fc1.weight": noise}, path)
    out = str(tmp_path / "o")
    assert cli.main(["spectra", "--model", str(path), "--out", out, "--fail-on", "alpha>0"]) == 0
    assert cli.main(["spectra", "--model", str(path), "--out", out, "--fail-on", "alpha>0", "--fail-on-all"]) == 1
    save_file({"layers.0.fc1.weight": noise, "layers.1.fc1.weight": heavy}, path)
    capsys.readouterr()
    assert cli.main(["spectra", "--model", str(path), "--out", out, "--fail-on", "alpha>0"]) == 1
    err = capsys.readouterr().err
    assert "1 check(s) failed" in err and "layers.1.fc1.weight: alpha=" in err and "layers.0.fc1.weight: alpha" not in err


def test_gof_writes_p_values(tmp_path):
    torch.manual_seed(0)
    path = _ckpt(tmp_path, torch.distributions.StudentT(1.5).sample((600, 200)))
    assert cli.main(["spectra", "--model", path, "--out", str(tmp_path / "o"), "--gof", "--n-boot", "50"]) == 0
    (row,) = list(csv.DictReader((tmp_path / "o" / "layers.csv").open()))
    assert 0 <= float(row["pl_pvalue"]) <= 1 and row["alpha_ci_method"] == "bootstrap"
    assert float(row["alpha_ci_low"]) < float(row["alpha"]) < float(row["alpha_ci_high"])


def test_unknown_layer_exits_2(tmp_path, capsys):
    path = _ckpt(tmp_path, torch.randn(64, 32))
    assert cli.main(["spectra", "--model", path, "--out", str(tmp_path / "o"), "--layers", "nope.weight"]) == 2
    assert "no weight matrix named nope.weight" in capsys.readouterr().err


def test_nan_layer_is_listed_not_fatal(tmp_path):
    w = torch.randn(64, 32)
    w[0, 0] = float("nan")
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.fc1.weight": w, "layers.1.fc1.weight": torch.randn(64, 32)}, path)
    assert cli.main(["spectra", "--model", str(path), "--out", str(tmp_path / "o")]) == 0
    skipped = list(csv.DictReader((tmp_path / "o" / "skipped.csv").open()))
    assert [(r["name"], r["reason"]) for r in skipped] == [("layers.0.fc1.weight", "contains NaN or Inf")]
    assert len(list(csv.DictReader((tmp_path / "o" / "layers.csv").open()))) == 1
