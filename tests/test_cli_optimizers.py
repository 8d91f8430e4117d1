"""`python cli.py optimizers`: traces.jsonl, compare.csv, runs.csv and the report; the default protocol;
reloading a trace; bad input."""

import csv
import json

import pytest

import cli
from diagnostics import optimizer_traces as ot
from diagnostics import trace_recorder as tr


def run(*args) -> int:
    return cli.main(["optimizers", *args])


def test_comparison_writes_traces_runs_compare_and_report(tmp_path, capsys):
    out = tmp_path / "o"
    rc = run("--optimizers", "adamw,muon", "--seeds", "2", "--steps", "20", "--every", "5", "--eval-every", "10",
             "--lr", "muon=0.01", "--lr-scales", "1", "--out", str(out))
    assert rc == 0
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["optimizer"], r["scope"], float(r["lr"]), r["seed"]) for r in rows] == [
        ("adamw", "", 0.001, "0"), ("adamw", "", 0.001, "1"), ("muon", "hidden_only", 0.01, "0"),
        ("muon", "hidden_only", 0.01, "1")]
    for r in rows:
        assert 0 < float(r["final_test_accuracy"]) <= 1 and 0 < float(r["test_acc_at_best_val"]) <= 1
        assert float(r["best_val_loss"]) <= float(r["final_val_loss"])
        assert float(r["ms_per_step"]) > 0
    compare = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["name"] for r in compare] == ["AdamW", "Muon"] and all(r["seeds"] == "2" for r in compare)
    records = tr.read_trace(out / "traces.jsonl")
    assert sum(r["type"] == "header" for r in records) == 4
    doc = json.loads((out / "report.json").read_text())
    assert doc["results"][0]["diagnostic"] == "optimizer_traces"
    printed = capsys.readouterr()
    assert "traces.jsonl" in printed.out and "test: 450 images, used for no choice" in printed.err

    again = tmp_path / "again"
    assert run("--trace", str(out / "traces.jsonl"), "--out", str(again)) == 0
    assert (again / "runs.csv").read_text() == (out / "runs.csv").read_text()


def test_defaults_run_the_fair_protocol_with_hidden_only_scope(tmp_path, monkeypatch):
    seen = {}

    def fake_run(params, progress=None, sink=None):
        seen.update(params)
        return ot.from_trace([{"type": "header", "format": tr.TRACE_FORMAT, "version": tr.TRACE_VERSION,
                               "run_id": "r", "run": {}, "matrices": []}])

    monkeypatch.setattr(ot, "run", fake_run)
    assert run("--out", str(tmp_path)) == 0
    assert seen["scopes"] == ["hidden_only"] == ot.DEFAULTS["scopes"]
    assert seen["lr_scales"] == ot.DEFAULTS["lr_scales"] and len(seen["lr_scales"]) == 4
    assert seen["seeds"] == ot.DEFAULTS["seeds"] and seen["steps"] == ot.DEFAULTS["steps"]
    assert seen["val_fraction"] == ot.DEFAULTS["val_fraction"] and seen["split_seed"] == 0
    assert run("--scope", "hidden_only,all_but_head", "--out", str(tmp_path)) == 0
    assert seen["scopes"] == ["hidden_only", "all_but_head"]


def test_both_scopes_side_by_side_and_fail_on_checks_the_comparison(tmp_path, capsys):
    rc = run("--optimizers", "adamw,muon", "--seeds", "1", "--steps", "10", "--every", "5", "--eval-every", "5",
             "--lr-scales", "1", "--scope", "hidden_only,all_but_head",
             "--fail-on", "final_test_accuracy<1.01", "--out", str(tmp_path))
    assert rc == 1
    err = capsys.readouterr().err
    assert "name=" not in err and "Muon · hidden-only: final_test_accuracy=" in err and "Muon · all-but-head" in err
    compare = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [(r["optimizer"], r["scope"]) for r in compare] == [("adamw", ""), ("muon", "hidden_only"),
                                                             ("muon", "all_but_head")]


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adam"], "unknown optimizer adam"),
    (["--lr", "muon:0.1"], "--lr: cannot read 'muon:0.1'"),
    (["--lr-scales", "1,x"], "--lr-scales: cannot read"),
    (["--steps", "0"], "steps must be a whole number"),
    (["--scope", "everything"], "unknown scope 'everything'"),
    (["--val-fraction", "0.9"], "val_fraction"),
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
