"""Background jobs in worker processes: results, errors kept until forgotten, Cancel, a dead worker, carried caches."""

import os
import signal
import time

from diagnostics import alignment_data, tasks
from diagnostics.spectra import SpectraParams
from ui import background

MINILM = tasks.ModelRef("builtin:minilm")
# Long enough to be cancelled while it runs (a few minutes on this machine), short to set up.
LONG_TRAINING = {"bench": "digits", "optimizers": ["adamw"], "seeds": 1, "steps": 5000, "lr_scales": [1.0],
                 "eval_every": 50}


def _wait(job, seconds=120):
    assert job.wait(seconds), f"job {job.key} still running after {seconds} s: {job.message}"


def _wait_for_progress(job, seconds=120):
    deadline = time.time() + seconds
    while job.fraction <= 0 and not job.done and time.time() < deadline:
        time.sleep(0.1)
    assert job.fraction > 0 and not job.done, (job.message, job.error)


def test_a_job_runs_in_another_process_and_reports_progress_and_its_result():
    job = background.start("test-spectra", tasks.Task("spectra", SpectraParams(), MINILM), "spectra of MiniLM")
    _wait(job)
    assert job.error is None, job.error
    assert job.process.pid != os.getpid() and job.process.exitcode == 0
    assert job.result.model_name == "all-MiniLM-L6-v2" and len(job.result.to_frame()) > 30
    assert job.fraction == 1.0
    assert background.start("test-spectra", tasks.Task("spectra", SpectraParams(), MINILM), "again") is job


def test_a_failed_job_is_not_restarted_by_a_rerun_until_forgotten(tmp_path):
    task = tasks.Task("spectra", SpectraParams(), tasks.ModelRef(str(tmp_path / "missing.safetensors"),
                                                                  allowed_roots=(str(tmp_path),)))
    job = background.start("test-fail", task, "a missing file")
    _wait(job)
    assert "does not exist" in job.error and job.result is None
    assert background.start("test-fail", task, "a missing file") is job
    background.forget("test-fail")
    again = background.start("test-fail", task, "a missing file")
    assert again is not job
    _wait(again)


def test_a_path_outside_the_allowed_roots_is_refused_in_the_worker(tmp_path):
    task = tasks.Task("spectra", SpectraParams(), tasks.ModelRef("/etc/passwd", allowed_roots=(str(tmp_path),)))
    job = background.start("test-roots", task, "outside")
    _wait(job)
    assert job.result is None and "allowed" in job.error.lower()


def test_an_unknown_diagnostic_is_a_message_not_a_crash():
    job = background.start("test-unknown", tasks.Task("nonsense"), "nothing")
    _wait(job)
    assert "no diagnostic named 'nonsense'" in job.error


def test_cancel_ends_the_worker_and_marks_the_job_cancelled():
    job = background.start("test-cancel", tasks.Task("optimizer_traces", LONG_TRAINING), "a long training")
    _wait_for_progress(job)
    started = time.time()
    background.cancel("test-cancel")
    assert job.done and job.cancelled and job.error == "Cancelled." and job.result is None
    assert not job.process.is_alive() and time.time() - started < 10


def test_a_worker_that_dies_is_reported_with_its_exit_code():
    job = background.start("test-killed", tasks.Task("optimizer_traces", LONG_TRAINING), "a training killed")
    _wait_for_progress(job)
    os.kill(job.process.pid, signal.SIGKILL)
    _wait(job, 30)
    assert "exit code -9" in job.error and not job.cancelled


def test_cached_entries_travel_to_the_worker_and_what_it_computes_comes_back():
    texts = alignment_data.TextSet("three", ["a dog runs", "a cat sleeps", "the sea is blue", "rain falls"] * 6,
                                   None)
    given = {"sides": {"a": (MINILM, "auto", None), "b": (MINILM, "mean", None)}, "texts": texts}
    params = {"draws": 2, "anchors": [8], "curves": False, "n_permutations": 5}
    first = background.start("test-carry-1", tasks.Task("alignment", params, inputs=given), "carry 1")
    _wait(first)
    assert first.error is None, first.error
    assert len(first.carried) == 2 and all(k.startswith("alignment-embeddings|") for k in first.carried)
    second = background.start("test-carry-2", tasks.Task("alignment", params, inputs=given, carried=first.carried),
                              "carry 2")
    _wait(second)
    assert second.error is None and second.carried == {}
