"""Background jobs: one thread per key, errors kept (not retried by a rerun) until forgotten."""

import time

from models import OrthoscopeError
from ui import background


def _wait(job, seconds=10):
    deadline = time.time() + seconds
    while not job.done and time.time() < deadline:
        time.sleep(0.01)
    assert job.done


def test_a_failed_job_is_not_restarted_by_a_rerun_until_forgotten():
    calls = []

    def fail(progress):
        calls.append(1)
        raise OrthoscopeError("bad settings")

    job = background.start("test-fail", fail)
    _wait(job)
    assert job.error == "bad settings"
    assert background.start("test-fail", fail) is job and len(calls) == 1
    background.forget("test-fail")
    again = background.start("test-fail", fail)
    _wait(again)
    assert again is not job and len(calls) == 2


def test_a_job_reports_progress_and_its_result_once():
    calls = []

    def work(progress):
        calls.append(1)
        progress(0.5, "half")
        return 42

    job = background.start("test-ok", work)
    _wait(job)
    assert job.result == 42 and job.error is None and job.message == "half"
    assert background.start("test-ok", work).result == 42 and len(calls) == 1


def test_an_unexpected_exception_becomes_a_message_not_a_crash():
    job = background.start("test-bug", lambda progress: 1 / 0)
    _wait(job)
    assert "ZeroDivisionError" in job.error and "server log" in job.error
