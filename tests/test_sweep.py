"""diagnostics/sweep.py: one code path on three executors, a DuckDB store keyed by weights and
parameters, reruns that skip what is done, failures recorded with their reason."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from diagnostics import compare, sweep
from diagnostics.compare import CompareParams
from models import OrthoscopeError
from models.checkpoints import Checkpoint, discover

NAMES = ["layers.0.fc1.weight", "layers.1.fc1.weight"]


def write_series(folder: Path, steps=(1, 2, 3), seed: int = 0) -> Path:
    """A base (64 x 32 matrices) and checkpoints that drift from it, as step_N.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(64, 32, generator=g) for n in NAMES}
    save_file(base, folder.parent / f"{folder.name}-base.safetensors")
    for step in steps:
        save_file({n: w + 0.05 * step * torch.randn(w.shape, generator=g) for n, w in base.items()},
                  folder / f"step_{step}.safetensors")
    return folder.parent / f"{folder.name}-base.safetensors"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series") / "run"
    base = write_series(folder)
    return discover(folder), Checkpoint(str(base), "base", None)


def frames(result) -> dict[str, pd.DataFrame]:
    """The result's tables without the per-run timing column."""
    tables = result.tables()
    tables["checkpoints"] = tables["checkpoints"].drop(columns="seconds")
    return tables


def assert_same_tables(a, b) -> None:
    ta, tb = frames(a), frames(b)
    assert set(ta) == set(tb)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)


def task_rows(db: Path) -> dict[str, tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {key: rest for key, *rest in con.execute("SELECT key, status, run_id, finished_at FROM tasks").fetchall()}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray of 2 CPUs for this module (it takes seconds to start)."""
    import ray

    sweep.start_ray(workers=2)
    yield
    ray.shutdown()


def test_plan_has_a_task_per_checkpoint_per_pair_and_one_overlap(series):
    checkpoints, base = series
    tasks = sweep.plan(checkpoints, base, CompareParams())
    assert [t.kind for t in tasks] == ["checkpoint"] * 4 + ["delta"] * 3 + ["overlap"]
    assert tasks[0].members == (base,)
    assert [t.members[1].step for t in tasks if t.kind == "delta"] == [1, 2, 3]
    # What travels is plain data: specs, names, fingerprints and a parameter dict.
    for task in tasks:
        assert all(isinstance(m.spec, str) for m in task.members)
        assert all(isinstance(fp, str) and len(fp) == 64 for fp in task.fingerprints)
        assert task.params == CompareParams().to_dict()
    assert len({t.key for t in tasks}) == len(tasks)
    assert sweep.plan(checkpoints, None, CompareParams()) == tasks[1:4]


def test_serial_local_and_ray_give_identical_tables(series, tmp_path, ray_cluster):
    checkpoints, base = series
    results = {ex: sweep.run(checkpoints, base, executor=ex, workers=2, db=tmp_path / f"{ex}.duckdb")
               for ex in ("serial", "local", "ray")}
    serial = results["serial"]
    assert len(serial.layers) == 4 * 2 and len(serial.deltas) == 3 * 2 and len(serial.overlaps) == 3 * 2
    assert serial.tables()["layers"]["alpha"].notna().all()
    for ex in ("local", "ray"):
        assert results[ex].summary["executor"] == ex and results[ex].summary["workers"] == 2
        assert_same_tables(serial, results[ex])


def test_rerun_skips_what_is_done_and_other_params_compute_anew(series, tmp_path):
    checkpoints, base = series
    db = tmp_path / "sweep.duckdb"
    first = sweep.run(checkpoints, base, executor="serial", db=db)
    assert (first.summary["computed"], first.summary["reused"]) == (8, 0)
    before = task_rows(db)
    messages = []
    again = sweep.run(checkpoints, base, executor="serial", db=db, progress=lambda f, m: messages.append(m))
    assert (again.summary["computed"], again.summary["reused"]) == (0, 8)
    assert "8 of 8 already in DB (skipped)" in messages
    assert task_rows(db) == before  # same runs, same times: nothing was recomputed
    assert_same_tables(first, again)

    other = sweep.run(checkpoints, base, CompareParams(k=4), executor="serial", db=db)
    assert (other.summary["computed"], other.summary["reused"]) == (8, 0)
    with duckdb.connect(str(db), read_only=True) as con:
        # Keyed by weights and parameters: each checkpoint twice, once per parameter set.
        keys = con.execute("SELECT fingerprint, params_digest FROM checkpoints").fetchall()
        assert len(keys) == len(set(keys)) == 8
        assert {d for _, d in keys} == {sweep.params_digest(CompareParams()), sweep.params_digest(CompareParams(k=4))}
        assert con.execute("SELECT count(DISTINCT params_digest) FROM layers").fetchone()[0] == 2
    assert {r["k_eff"] for r in other.deltas} == {4} and {r["k_eff"] for r in first.deltas} == {8}


def test_the_same_weights_under_new_names_are_reused_and_shown_by_the_new_names(series, tmp_path):
    # HF-Trainer folders: the fingerprint covers the weight files (name and bytes), not the folder's name.
    checkpoints, _ = series
    first, second = tmp_path / "run", tmp_path / "copy"
    for c in checkpoints:
        for folder, step in ((first, c.step), (second, c.step * 100)):
            (folder / f"checkpoint-{step}").mkdir(parents=True)
            shutil.copy(c.spec, folder / f"checkpoint-{step}" / "model.safetensors")
    db = tmp_path / "sweep.duckdb"
    sweep.run(discover(first), executor="serial", db=db)
    moved = discover(second)
    result = sweep.run(moved, executor="serial", db=db)
    assert (result.summary["reused"], result.summary["computed"]) == (3, 0)
    assert [r["checkpoint"] for r in result.checkpoints] == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert [r["step"] for r in result.layers] == [100, 100, 200, 200, 300, 300]


def test_a_corrupt_checkpoint_is_recorded_failed_and_the_others_finish(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    write_series(folder, steps=(1, 2, 3, 4, 5))
    (folder / "step_2.safetensors").write_bytes(b"\x00" * 64)  # unreadable: refused when the driver opens it
    real = compare.checkpoint_rows

    def fails_on_step_4(ckpt, params):  # fails inside the task: the worker's error is the reason
        if ckpt.step == 4:
            raise OrthoscopeError("step_4.safetensors: a tensor could not be read")
        return real(ckpt, params)

    monkeypatch.setattr(compare, "checkpoint_rows", fails_on_step_4)
    db = tmp_path / "sweep.duckdb"
    result = sweep.run(discover(folder), executor="serial", db=db)
    by_step = {r["step"]: r for r in result.checkpoints}
    assert [r["status"] for r in result.checkpoints] == ["ok", "failed", "ok", "failed", "ok"]
    assert "step_2.safetensors" in by_step[2]["reason"] and by_step[2]["failed"] == 1
    assert by_step[4]["reason"] == "step_4.safetensors: a tensor could not be read"
    assert pd.isna(by_step[2]["mean_alpha"]) and by_step[1]["layers"] == 2
    assert (result.summary["ok"], result.summary["failed"]) == (3, 2)
    assert {r["step"] for r in result.layers} == {1, 3, 5}
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM tasks WHERE status = 'failed'").fetchone()[0] == 2

    # Failed tasks are tried again; the ones that finished are not.
    monkeypatch.setattr(compare, "checkpoint_rows", real)
    again = sweep.run(discover(folder), executor="serial", db=db)
    assert (again.summary["computed"], again.summary["reused"]) == (2, 3)
    assert [r["status"] for r in again.checkpoints] == ["ok", "failed", "ok", "ok", "ok"]


def test_a_writer_waits_for_a_reader_to_let_go_of_the_file(series, tmp_path):
    checkpoints, _ = series
    db = tmp_path / "sweep.duckdb"
    sweep.Store(db)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r}, read_only=True)
        print("holding", flush=True)
        time.sleep(1.5)
        con.close()
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        result = sweep.run(checkpoints[:1], executor="serial", db=db)
        assert result.summary["ok"] == 1
        assert time.monotonic() - started > 0.5  # it waited for the reader rather than failing
    finally:
        holder.wait(timeout=30)


def test_bad_arguments_and_files_are_refused(series, tmp_path):
    checkpoints, _ = series
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello\n" * 100)
    with pytest.raises(OrthoscopeError, match="cannot open it as a DuckDB file"):
        sweep.run(checkpoints, executor="serial", db=not_a_db)
    with pytest.raises(OrthoscopeError, match="unknown executor"):
        sweep.run(checkpoints, executor="threads", db=tmp_path / "x.duckdb")
    with pytest.raises(OrthoscopeError, match="workers"):
        sweep.run(checkpoints, executor="local", workers=0, db=tmp_path / "x.duckdb")
    with pytest.raises(OrthoscopeError, match="no checkpoints"):
        sweep.run([], executor="serial", db=tmp_path / "x.duckdb")


def test_a_worker_takes_the_drivers_fingerprints_instead_of_hashing_again(tmp_path, monkeypatch):
    """The driver hashes every file once; a task carries those hashes (keyed by path, size and mtime),
    so the worker that opens the checkpoint does not read it whole to fingerprint it, and a file
    changed since is hashed afresh."""
    from models import handle as handle_module

    path = tmp_path / "step_1.safetensors"
    save_file({"w": torch.randn(32, 16)}, str(path))
    (task,) = sweep.plan([Checkpoint(str(path), path.name, 1)])
    assert task.known and task.known[0][1] == task.fingerprints[0]
    hashed = []

    class Counting:  # models/handle.py's hashlib, counting the fingerprints it computes
        @staticmethod
        def sha256(*args):
            hashed.append(args)
            return hashlib.sha256(*args)

    monkeypatch.setattr(handle_module, "hashlib", Counting)
    handle_module._FINGERPRINT_CACHE.clear()  # as in a fresh worker process
    assert sweep.run_task(task).status == "ok"
    assert not hashed
    handle_module._FINGERPRINT_CACHE.clear()
    os.utime(path, ns=(1, 1))
    assert sweep.run_task(task).status == "ok"
    assert hashed


def test_a_number_column_that_is_nan_in_every_row_reads_back_as_nan(tmp_path):
    """Pure noise has no trusted power law, so mean_trusted_alpha is NaN in every checkpoint row: the
    column must still be there when the rows are read back from the database."""
    rng = np.random.default_rng(0)
    members = []
    for step in (1, 2):
        path = tmp_path / f"step_{step}.safetensors"
        save_file({"w": torch.tensor(rng.standard_normal((64, 32)), dtype=torch.float32)}, str(path))
        members.append(Checkpoint(str(path), path.name, step))
    result = sweep.run(members, executor="serial", db=tmp_path / "sweep.duckdb")
    assert [r["trusted_layers"] for r in result.checkpoints] == [0, 0]
    assert all(set(compare.CHECKPOINT_COLUMNS) <= set(r) for r in result.checkpoints)
    assert all(np.isnan(r["mean_trusted_alpha"]) for r in result.checkpoints)
