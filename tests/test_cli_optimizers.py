"""`python cli.py optimizers`: traces.jsonl, runs.csv and the report; reloading a trace; bad input."""

import csv
import json

import pytest

import cli
from diagnostics import trace_recorder as tr


def run(*args) -> int:
    return cli.main(["optimizers", *args])


def test_comparison_writes_traces_runs_and_report(tmp_path, capsys):
    out = tmp_path / "o"
    rc = run("--optimizers", "adamw,muon", "--seeds", "2", "--steps", "20", "--every", "5", "--eval-every", "10",
             "--lr", "muon=0.01", "--out", str(out))
    assert rc == 0
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["optimizer"], float(r["lr"]), r["seed"]) for r in rows] == [
        ("adamw", 0.001, "0"), ("adamw", 0.001, "1"), ("muon", 0.01, "0"), ("muon", 0.01, "1")]
    for r in rows:
        assert 0 < float(r["final_test_accuracy"]) <= float(r["best_test_accuracy"]) <= 1
        assert float(r["ms_per_step"]) > 0
    records = tr.read_trace(out / "traces.jsonl")
    assert sum(r["type"] == "header" for r in records) == 4
    doc = json.loads((out / "report.json").read_text())
    assert doc["results"][0]["diagnostic"] == "optimizer_traces"
    assert "traces.jsonl" in capsys.readouterr().out

    again = tmp_path / "again"
    assert run("--trace", str(out / "traces.jsonl"), "--out", str(again)) == 0
    assert (again / "runs.csv").read_text() == (out / "runs.csv").read_text()


def test_fail_on_checks_the_runs_table(tmp_path, capsys):
    rc = run("--optimizers", "sgd", "--seeds", "1", "--steps", "10", "--every", "5", "--eval-every", "5",
             "--fail-on", "final_test_accuracy<1.01", "--out", str(tmp_path))
    assert rc == 1
    assert "final_test_accuracy" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adam"], "unknown optimizer adam"),
    (["--lr", "muon:0.1"], "--lr: cannot read 'muon:0.1'"),
    (["--lr-scales", "1,x"], "--lr-scales: cannot read"),
    (["--steps", "0"], "steps must be a whole number"),
    (["--trace", "/nonexistent/t.jsonl"], "--trace: no file"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert run(*args, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_truncated_trace_names_the_line(tmp_path, capsys):
    path = tmp_path / "cut.jsonl"
    header = {"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION, "run_id": "r", "run": {},
              "matrices": []}
    path.write_text(json.dumps(header) + '\n{"type": "step", "ru')
    assert run("--trace", str(path), "--out", str(tmp_path / "o")) == 2
    assert "cut.jsonl, line 2: not valid JSON" in capsys.readouterr().err
