"""Long diagnostics in a background thread, so the page stays usable while they run.

A job is keyed explicitly (diagnostic + parameters, as for the result cache); the same key
started twice, from any session, shares one thread and one result (or one error). Pages poll a job from an
``st.fragment(run_every=...)`` and rerun the whole page once it is done.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from models import OrthoscopeError

MAX_JOBS = 16


@dataclass
class Job:
    key: str
    fraction: float = 0.0
    message: str = "starting ..."
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    def progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = min(max(fraction, 0.0), 1.0), message


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def _work(job: Job, compute: Callable[[Callable[[float, str], None]], Any]) -> None:
    try:
        job.result = compute(job.progress)
    except OrthoscopeError as exc:
        job.error = str(exc)
    except Exception as exc:  # a bug, not bad input: keep the server up and say what happened
        traceback.print_exc()
        job.error = f"The computation failed unexpectedly ({type(exc).__name__}: {exc}). The server log has the details."
    finally:
        job.finished = time.time()


def start(key: str, compute: Callable[[Callable[[float, str], None]], Any]) -> Job:
    """The job under ``key``: the one already started (running, finished or failed), else a new one.

    A failed job stays failed, so a page that reruns shows its error instead of starting it again;
    :func:`forget` it first to try again.
    """
    jobs, lock = _jobs()
    with lock:
        job = jobs.get(key)
        if job is not None:
            jobs.move_to_end(key)
            return job
        job = Job(key)
        job.thread = threading.Thread(target=_work, args=(job, compute), name="orthoscope-job", daemon=True)
        jobs[key] = job
        # Forget the oldest finished jobs beyond the bound; running ones stay.
        for old in [k for k, j in jobs.items() if j.done][: max(0, len(jobs) - MAX_JOBS)]:
            del jobs[old]
    job.thread.start()
    return job


def forget(key: str) -> None:
    """Drop a finished job, so that the next :func:`start` runs it again (a running one is kept)."""
    jobs, lock = _jobs()
    with lock:
        job = jobs.get(key)
        if job is not None and job.done:
            del jobs[key]


def get(key: str) -> Job | None:
    jobs, lock = _jobs()
    with lock:
        return jobs.get(key)
