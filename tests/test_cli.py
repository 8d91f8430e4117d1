"""The command line: report files, exit codes, one-line errors, progress on stderr."""

import csv
import json
import os
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


# ---------------------------------------------------------------------------------------
# Failures that slip through, and strings from files on the terminal and in CSV files.

ESCAPES = "\x1b[2J\x1b]0;pwned\x07"


def _command_raising(monkeypatch, exc: BaseException, name: str = "overview"):
    import dataclasses

    def run(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, name, dataclasses.replace(cli.COMMANDS[name], run=run))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_an_unexpected_exception_exits_3_with_one_line(monkeypatch, tmp_path, capsys):
    _command_raising(monkeypatch, RuntimeError("boom" + ESCAPES + "\nsecond line"))
    assert cli.main(["overview", "--model", "x", "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert _lines(err) == [f"internal error (RuntimeError: boom second line), please report it at {cli.REPORT_TO} "
                           "\u2014 rerun with --debug for the traceback"]
    assert "Traceback" not in err and "\x1b" not in err and "\x07" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback(monkeypatch, tmp_path, capsys, where):
    _command_raising(monkeypatch, RuntimeError("boom"))
    argv = ["overview", "--model", "x", "--out", str(tmp_path / "o")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise exc' in err
    assert _lines(err)[-1].startswith("internal error (RuntimeError: boom), please report it")


def test_an_exception_without_a_message_names_its_type(monkeypatch, tmp_path, capsys):
    _command_raising(monkeypatch, KeyError())
    assert cli.main(["overview", "--model", "x", "--out", str(tmp_path / "o")]) == 3
    assert _lines(capsys.readouterr().err)[0].startswith("internal error (KeyError), please report it")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path, capsys):
    _command_raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["overview", "--model", "x", "--out", str(tmp_path / "o")]) == 130
    assert _lines(capsys.readouterr().err) == ["interrupted."]


def test_the_projects_own_errors_stay_exit_2_even_with_debug(tmp_path, capsys):
    assert cli.main(["--debug", "overview", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in _lines(err) if line.startswith("error: ")]


def test_argparse_errors_stay_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["directions", "--model", "x", "--matrix", "m", "--k", "many", "--out", "o"])
    assert exc.value.code == 2


@pytest.mark.parametrize("out, phrase", [
    ("file", "is a file, not a folder"),
    ("/dev/null", "is not a folder"),
    ("/dev/null/x", "/dev/null is not a folder"),
    ("file/sub", "is not a folder"),
    ("dangling", "symbolic link to nothing"),
])
def test_an_unusable_out_is_refused_before_anything_runs(monkeypatch, tmp_path, capsys, out, phrase):
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    _command_raising(monkeypatch, AssertionError("the command ran"))
    target = out if out.startswith("/") else str(tmp_path / out)
    assert cli.main(["overview", "--model", "x", "--out", target]) == 2
    errors = _lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(f"error: --out {target}") and phrase in errors[0], errors
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_out_is_refused(monkeypatch, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _command_raising(monkeypatch, AssertionError("the command ran"))
    assert cli.main(["overview", "--model", "x", "--out", str(locked / "o")]) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("check, phrase", [
    ("name<2", "the column 'name' holds text, not numbers"),
    ("shape>1", "the column 'shape' holds text"),
    ("nosuch<2", "no column 'nosuch'"),
])
def test_fail_on_a_text_or_unknown_column_names_the_numeric_ones(ckpt, tmp_path, capsys, check, phrase):
    assert cli.main(["overview", "--model", str(ckpt), "--out", str(tmp_path / "o"), "--fail-on", check]) == 2
    errors = [line for line in _lines(capsys.readouterr().err) if line.startswith("error:")]
    assert len(errors) == 1 and phrase in errors[0]
    assert errors[0].endswith("the numeric columns are: numel, frobenius_norm, analysed.")


def test_names_from_a_file_reach_the_terminal_without_escapes(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    save_file({f"layers.0{ESCAPES}.weight": torch.full((16, 16), 2.0)}, path)
    out = tmp_path / f"o{ESCAPES}"
    assert cli.main(["overview", "--model", str(path), "--out", str(out), "--fail-on", "frobenius_norm>10"]) == 1
    captured = capsys.readouterr()
    for stream in (captured.err, captured.out):
        assert not any(c in stream for c in "\x1b\x07\x9b")
    assert "  layers.0.weight: frobenius_norm=32 (frobenius_norm>10)" in captured.err
    assert f"{tmp_path}/o/tensors.csv" in captured.out  # the path printed, without its escapes


def test_csv_cells_are_stripped_and_formulas_quoted(tmp_path):
    path = tmp_path / "m.safetensors"
    names = ["=cmd|' /C calc'!A0", "@SUM(A1)", f"a{ESCAPES}b\nc", "-0.5", "plain.weight"]
    save_file({n: torch.ones(16, 16) for n in names}, path)
    assert cli.main(["overview", "--model", str(path), "--out", str(tmp_path / "o")]) == 0
    text = (tmp_path / "o" / "tensors.csv").read_text()
    assert not any(c in text for c in "\x1b\x07")
    rows = {r["name"]: r for r in csv.DictReader(text.splitlines())}
    assert set(rows) == {"'=cmd|' /C calc'!A0", "'@SUM(A1)", "ab c", "-0.5", "plain.weight"}
    assert rows["plain.weight"]["frobenius_norm"] == "16.0"  # numbers untouched


def test_csv_tables_for_the_dashboard_are_cleaned_too():
    import pandas as pd

    from reports.report import _csv_safe

    frame = pd.DataFrame({"name": ["=1+1", "x\ty", "-", None], "v": [-1.0, 2.0, 3.0, 4.0]})
    cleaned = _csv_safe(frame)
    assert cleaned["name"].tolist()[:3] == ["'=1+1", "x y", "-"] and cleaned["v"].tolist() == [-1.0, 2.0, 3.0, 4.0]
    untouched = pd.DataFrame({"name": ["a", "b"]})
    assert _csv_safe(untouched) is untouched
