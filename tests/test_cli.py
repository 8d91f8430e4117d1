"""The command line: report files, exit codes, one-line errors, progress on stderr."""

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


@pytest.fixture()
def ckpt(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.fc1.weight": torch.full((16, 16), 2.0), "layers.0.fc1.bias": torch.ones(16)}, path)
    return path


def test_overview_on_the_builtin_writes_the_three_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, "cli.py", "overview", "--model", "builtin:minilm", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "overview" in proc.stderr and "100%" in proc.stderr  # the progress bar
    rows = list(csv.DictReader((tmp_path / "tensors.csv").open()))
    assert list(rows[0]) == ["name", "shape", "dtype", "numel", "frobenius_norm", "status", "analysed", "reason", "kind",
                             "block"]
    assert len(rows) == 104
    analysed = {r["name"] for r in rows if r["analysed"] == "True"}
    assert "encoder.layer.0.attention.self.query.weight" in analysed
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["results"][0]["model_name"] == "all-MiniLM-L6-v2"
    assert "plotly-graph-div" in (tmp_path / "report.html").read_text()


def test_bad_model_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "cli.py", "overview", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing.pt'} does not exist."]
    assert "Traceback" not in proc.stderr


def test_text_file_exits_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_text("these are not weights\n")
    assert cli.main(["overview", "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "text file, not a checkpoint" in capsys.readouterr().err


def test_fail_on_exits_1_and_names_the_rows(ckpt, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert cli.main(["overview", "--model", str(ckpt), "--out", out, "--fail-on", "frobenius_norm>10"]) == 1
    err = capsys.readouterr().err
    assert "layers.0.fc1.weight: frobenius_norm=32 (frobenius_norm>10)" in err
    assert cli.main(["overview", "--model", str(ckpt), "--out", out, "--fail-on", "frobenius_norm>100"]) == 0


@pytest.mark.parametrize("check, phrase", [("alpha<<2", "cannot read"), ("nosuch<2", "no column 'nosuch'")])
def test_bad_fail_on_exits_2(ckpt, tmp_path, capsys, check, phrase):
    assert cli.main(["overview", "--model", str(ckpt), "--out", str(tmp_path / "o"), "--fail-on", check]) == 2
    assert phrase in capsys.readouterr().err


def test_missing_arguments_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["overview", "--out", "x"])
    assert exc.value.code == 2
