"""`python cli.py compare`: the tables and report, a killed sweep that resumes, failed checkpoints and
--fail-on, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import cli
from test_sweep import write_series

ROOT = Path(__file__).resolve().parents[1]


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def ok_tasks(db: Path) -> dict[str, tuple]:
    """key -> (run_id, finished_at) of the finished tasks; empty while the file is missing or locked."""
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            found = con.execute("SELECT key, run_id, finished_at FROM tasks WHERE status = 'ok'").fetchall()
    except duckdb.Error:
        return {}
    return {key: rest for key, *rest in found}


def test_a_killed_sweep_resumes_without_recomputing_and_ends_as_an_uninterrupted_one(tmp_path, capsys):
    # Six checkpoints of 8 layers (512 x 256): about half a second each, so two finish well before six.
    folder = tmp_path / "run"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.fc1.weight": torch.randn(512, 256, generator=g) for i in range(8)}
    for step in range(1, 7):
        save_file({n: w + 0.1 * step * torch.randn(w.shape, generator=g) for n, w in base.items()},
                  folder / f"step_{step * 100}.safetensors")
    out, db = tmp_path / "out", tmp_path / "out" / "compare.duckdb"
    command = ["compare", "--checkpoints", str(folder), "--out", str(out), "--executor", "local", "--workers", "2"]
    with open(tmp_path / "killed.log", "w") as log:
        # A session of its own, so that the pool's processes die with the driver.
        proc = subprocess.Popen([sys.executable, "cli.py", *command], cwd=ROOT, stdout=log, stderr=log,
                                start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 300
            while len(ok_tasks(db)) < 2:
                assert proc.poll() is None, "the sweep ended before it could be killed"
                assert time.monotonic() < deadline, "no two checkpoints finished in time"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    kept = ok_tasks(db)
    assert 2 <= len(kept) < 6, len(kept)
    assert not (out / "checkpoints.csv").exists()

    capsys.readouterr()
    assert cli.main(command) == 0
    err = capsys.readouterr().err
    assert f"{len(kept)} of 6 already in DB (skipped)" in err  # the progress bar's first message
    assert f"{len(kept)} of 6 tasks already in {db} (skipped), {6 - len(kept)} computed" in err
    after = ok_tasks(db)
    assert len(after) == 6
    assert {key: after[key] for key in kept} == kept  # the same run and time: not computed again

    reference = tmp_path / "reference"
    assert cli.main(["compare", "--checkpoints", str(folder), "--out", str(reference), "--executor", "serial"]) == 0
    assert (out / "layers.csv").read_text() == (reference / "layers.csv").read_text()
    pd.testing.assert_frame_equal(read_csv(out / "checkpoints.csv").drop(columns="seconds"),
                                  read_csv(reference / "checkpoints.csv").drop(columns="seconds"))
    assert list(read_csv(out / "checkpoints.csv")["step"]) == [100, 200, 300, 400, 500, 600]


def test_a_corrupt_checkpoint_fails_with_its_reason_and_exits_0_unless_fail_on(tmp_path, capsys):
    folder = tmp_path / "run"
    write_series(folder)
    (folder / "step_2.safetensors").write_bytes(b"not a checkpoint\n" * 8)
    command = ["compare", "--checkpoints", str(folder), "--out", str(tmp_path / "out"), "--executor", "serial"]
    assert cli.main(command) == 0
    err = capsys.readouterr().err
    assert "failed: step_2.safetensors: step_2.safetensors is a text file" in err
    rows = list(csv.DictReader((tmp_path / "out" / "checkpoints.csv").open()))
    assert [(r["checkpoint"], r["status"], r["failed"]) for r in rows] == [
        ("step_1.safetensors", "ok", "0"), ("step_2.safetensors", "failed", "1"), ("step_3.safetensors", "ok", "0")]
    assert "text file" in rows[1]["reason"] and rows[1]["mean_alpha"] == ""
    layers = list(csv.DictReader((tmp_path / "out" / "layers.csv").open()))
    assert {r["checkpoint"] for r in layers} == {"step_1.safetensors", "step_3.safetensors"}

    assert cli.main([*command, "--fail-on", "failed>0"]) == 1
    err = capsys.readouterr().err
    assert "1 check(s) failed" in err and "checkpoint=step_2.safetensors: failed=1" in err
    assert "2 of 3 tasks already in" in err  # the failed one is tried again, the others are not


def test_models_with_a_base_write_deltas_overlaps_and_the_report(tmp_path, capsys):
    folder = tmp_path / "run"
    base = write_series(folder)
    models = [str(folder / "step_1.safetensors"), str(folder / "step_3.safetensors")]
    out = tmp_path / "out"
    db = tmp_path / "elsewhere" / "sweep.duckdb"
    assert cli.main(["compare", "--models", *models, "--base", str(base), "--out", str(out), "--executor", "serial",
                     "--db", str(db), "--k", "4"]) == 0
    assert db.exists() and not (out / "compare.duckdb").exists()
    checkpoints = read_csv(out / "checkpoints.csv")
    assert list(checkpoints["checkpoint"]) == [str(base), *models]
    deltas = read_csv(out / "deltas.csv")
    assert list(deltas["derived"]) == [models[0]] * 2 + [models[1]] * 2
    assert set(deltas["k_eff"]) == {4}
    overlaps = read_csv(out / "overlaps.csv")
    assert list(overlaps[["a", "b"]].drop_duplicates().itertuples(index=False, name=None)) == [tuple(models)]
    doc = json.loads((out / "report.json").read_text())
    result = doc["results"][0]
    assert result["diagnostic"] == "compare" and result["model_name"] == "3 models"
    assert result["summary"]["executor"] == "serial" and result["params"]["k"] == 4
    assert (out / "report.html").exists()


@pytest.mark.parametrize("extra, message", [
    (["--models", "a.safetensors", "--pattern", r"step_(\d+)"], "--pattern reads steps"),
    (["--models", "a.safetensors", "--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--models", "a.safetensors", "--executor", "serial", "--workers", "2"], "--workers applies to"),
    (["--checkpoints", "no-such-folder"], "does not exist"),
    (["--models", "a.safetensors", "--k", "0"], "k must be at least 1"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    assert cli.main(["compare", *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
