"""AppTest for the Compare page: a checkpoint folder under an allowed root swept in the background (a
process pool of two), every chart drawn, the corrupt checkpoint listed with its reason, a rerun after
the run saved one more checkpoint computing only that one, and bad input shown as st.error."""

import shutil
import time
from pathlib import Path

import pytest

from tests import result_fixtures
from tests.apptest import errors, open_page

PAGE = "pages/compare.py"
TIMEOUT = 240


@pytest.fixture
def allowed(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    monkeypatch.setenv("ORTHOSCOPE_ALLOWED_ROOTS", str(root))
    return root


@pytest.fixture
def run_folder(allowed) -> Path:
    folder = allowed / "run"
    folder.mkdir()
    result_fixtures.compare_series(folder)
    return folder


def _folder_page(folder: Path, **state):
    return open_page(PAGE, timeout=TIMEOUT, compare_source="Checkpoint folder", compare_folder_source="Local path",
                     compare_folder=str(folder), **state)


def _run(at):
    at.button(key="compare_run").click().run()
    assert not at.exception, at.exception
    return at


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_a_checkpoint_folder_is_swept_and_every_chart_drawn(run_folder):
    at = _folder_page(run_folder, compare_base="step_0.safetensors", compare_workers=2)
    assert not at.exception, at.exception
    assert "4 members: step_0.safetensors, step_100.safetensors" in " ".join(c.value for c in at.caption)
    assert any("Press Run" in i.value for i in at.info)
    _run(at)
    assert not errors(at), errors(at)
    metrics = _metrics(at)
    assert metrics["Analysed"] == "3 of 4" and metrics["Failed"] == "1"
    assert metrics["Worker processes (local)"] == "2"
    # The corrupt checkpoint is named with its reason; the others were analysed all the same.
    (warning,) = [w.value for w in at.warning if "could not be analysed" in w.value]
    assert "- step_300.safetensors: " in warning and "not a checkpoint" in warning
    charts = at.get("plotly_chart")
    assert len(charts) == 5  # heatmap, over steps, A against B, update geometry, task-vector overlap
    titles = [c.proto.spec for c in charts]
    for heading in ("Power-law alpha per layer and checkpoint", "Mean alpha and phases over training",
                    "alpha per layer: B against A", "Update from the base, per layer", "Task-vector overlap"):
        assert any(heading in t for t in titles), heading
    table = at.dataframe[0].value
    assert list(table["checkpoint"]) == [f"step_{s}.safetensors" for s in (0, 100, 200, 300)]
    assert list(table["status"]) == ["ok", "ok", "ok", "failed"]
    at.button(key="compare_add").click().run()
    (result,) = at.session_state["report_results"]
    assert result.diagnostic == "compare" and len(result.deltas) and len(result.overlaps)


def test_a_rerun_after_a_new_checkpoint_computes_only_what_is_new(run_folder):
    _run(_folder_page(run_folder, compare_workers=1))
    # The run saves one more checkpoint: the folder is swept again, from the same database.
    shutil.copy(run_folder / "step_200.safetensors", run_folder / "step_400.safetensors")
    at = _run(_folder_page(run_folder, compare_workers=1))
    metrics = _metrics(at)
    # Five checkpoint tasks: three stored by the first sweep; the new one, and the corrupt one tried again.
    assert metrics["Tasks computed / from the database"] == "2 / 3", metrics
    assert metrics["Analysed"] == "4 of 5"
    assert metrics["Worker processes (serial)"] == "1"
    assert len(at.get("plotly_chart")) == 3  # no base: no deltas, no overlaps


def test_an_uploaded_checkpoint_folder_is_swept(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    files = [(f"run/{p.name}", p.read_bytes(), "application/octet-stream")
             for p in result_fixtures.compare_series(folder)]
    at = open_page(PAGE, timeout=TIMEOUT, compare_source="Checkpoint folder", compare_folder_source="Upload",
                   compare_workers=1)
    at.file_uploader(key="compare_upload_dir").set_value(files).run()
    assert not at.exception, at.exception
    _run(at)
    assert not errors(at), errors(at)
    assert _metrics(at)["Analysed"] == "3 of 4"
    assert "4 checkpoints of run" in " ".join(c.value for c in at.caption)


@pytest.mark.parametrize("where, expected", [
    ("missing", "does not exist"),
    ("outside", "outside the allowed directories"),
    ("empty", "holds no checkpoints"),
])
def test_a_bad_folder_is_an_error_not_an_exception(allowed, tmp_path, where, expected):
    folders = {"missing": allowed / "nothing-here", "outside": tmp_path, "empty": allowed}
    at = _folder_page(folders[where])
    assert not at.exception, at.exception
    assert any(expected in e for e in errors(at)), errors(at)
    assert not at.get("plotly_chart") and not at.button  # nothing to run


def test_a_checkpoint_linking_out_of_the_allowed_folders_is_refused(allowed, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (weights,) = result_fixtures.compare_series(outside)[:1]
    inside = allowed / "run" / "checkpoint-100"
    inside.mkdir(parents=True)
    (inside / "model.safetensors").symlink_to(weights)
    at = _run(_folder_page(allowed / "run", compare_workers=1))
    assert any("outside the allowed directories" in e for e in errors(at)), errors(at)
    assert not at.get("plotly_chart")


def test_a_step_pattern_without_one_group_is_an_error(run_folder):
    at = _folder_page(run_folder, compare_pattern=r"step_\d+")
    assert not at.exception, at.exception
    assert any("needs exactly one" in e for e in errors(at)), errors(at)


def test_models_from_paths_and_an_upload_with_a_base(run_folder):
    paths = [str(run_folder / "step_0.safetensors"), str(run_folder / "step_100.safetensors")]
    at = open_page(PAGE, timeout=TIMEOUT, compare_source="Models", compare_paths="\n".join(paths), compare_workers=1)
    at.file_uploader(key="compare_upload_files").set_value(
        ("later.safetensors", (run_folder / "step_200.safetensors").read_bytes(), "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="compare_base").set_value(paths[0]).run()
    _run(at)
    assert not errors(at), errors(at)
    assert _metrics(at)["Analysed"] == "3 of 3"
    assert len(at.get("plotly_chart")) == 5
    assert at.selectbox(key="compare_derived").options == [paths[1], "later.safetensors"]


def test_cancel_ends_the_sweeps_process_pool_too(tmp_path):
    """The page's Cancel terminates the job's worker; the pool the worker started for the sweep goes with it
    (left alone, its workers would wait on their queue for ever, each holding a model)."""
    import numpy as np
    import psutil
    import torch
    from safetensors.torch import save_file

    from diagnostics import compare, tasks
    from models.checkpoints import discover
    from ui import background

    rng = np.random.default_rng(0)
    for step in range(6):
        save_file({f"layers.{i}.weight": torch.tensor(rng.standard_t(2.0, size=(800, 400)), dtype=torch.float32)
                   for i in range(3)}, tmp_path / f"step_{step}.safetensors")
    members = discover(tmp_path)
    task = tasks.Task("compare", compare.CompareParams(), inputs={
        "checkpoints": members, "base": None, "roots": {m.spec: (str(tmp_path),) for m in members},
        "source": f"test-cancel|{tmp_path}", "workers": 2})
    job = background.start("test-compare-cancel", task, "a sweep to cancel")
    deadline = time.time() + 120
    pool: list = []
    while len(pool) < 3 and not job.done and time.time() < deadline:  # its forkserver and two workers
        time.sleep(0.05)
        if job.process is not None and job.process.is_alive():
            try:
                pool = psutil.Process(job.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pool = []
    assert len(pool) >= 3 and not job.done, (job.message, job.error)
    background.cancel("test-compare-cancel")
    assert job.cancelled and job.error == "Cancelled."
    gone, alive = psutil.wait_procs(pool, timeout=10)
    assert not alive, alive
