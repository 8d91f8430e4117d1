"""Long diagnostics as background jobs in worker processes, with progress and a real Cancel.

A job is keyed explicitly (diagnostic, model fingerprint and parameters, as for the result
cache). The same key started twice, from any session, shares one job, so a job keeps running
while its user looks at another page, and its result is there when they come back.

Why processes and not threads: a diagnostic sets its own thread counts (torch, BLAS), which in
a thread would change them for every session of the server; a process has its own, and ending
it is a real Cancel. What it costs: each job opens its model again in the worker (MiniLM
0.2 s, SmolLM2 about 6 s with the GGUF module cache warm), and the first job of a server waits
about 6 s for the fork server to import torch and transformers once. Workers are forked from
that server (``forkserver``), not from the Streamlit process, whose threads a plain fork would
copy in whatever state they are in.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from diagnostics import tasks
from ui import cache, guard

MAX_JOBS = 16
WORKERS_ENV = "ORTHOSCOPE_JOB_WORKERS"
# Scripted runs of the pages (Streamlit's AppTest) have no browser to poll for them: with this
# set, a page waits for its job's result instead of showing its progress.
WAIT_ENV = "ORTHOSCOPE_WAIT_FOR_JOBS"
CANCEL_GRACE_S = 5.0


def workers() -> int:
    """Jobs that run at once (the rest queue): ``ORTHOSCOPE_JOB_WORKERS``, else one per core."""
    value = os.environ.get(WORKERS_ENV, "")
    return max(1, int(value)) if value.isdigit() else max(1, os.cpu_count() or 1)


@dataclass
class Job:
    key: str
    label: str
    fraction: float = 0.0
    message: str = "waiting for a free worker ..."
    result: Any = None
    error: str | None = None
    cancelled: bool = False
    owner: str | None = None  # the session that started it
    superseded: bool = False
    carried: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    process: Any = None
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = min(max(fraction, 0.0), 1.0), message

    def wait(self, timeout: float | None = None) -> bool:
        return self.ended.wait(timeout)


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[OrderedDict, threading.Lock, threading.Semaphore]:
    return OrderedDict(), threading.Lock(), threading.Semaphore(workers())


@st.cache_resource(show_spinner=False)
def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["diagnostics.tasks"])
    return context


def _finish(job: Job) -> None:
    if job.result is None and job.error is None:
        code = None if job.process is None else job.process.exitcode
        job.error = "Cancelled." if job.cancelled else (
            f"The worker process stopped without a result (exit code {code}; -9 usually means the system ran out "
            "of memory and ended it).")
    job.finished = time.time()
    job.ended.set()
    if job.superseded:
        forget(job.key)


def _supervise(job: Job, task: tasks.Task, slots: threading.Semaphore) -> None:
    with slots:
        try:
            if not job.cancelled:
                _run(job, task)
        except Exception as exc:  # the worker could not be started or reached: say so, never spin forever
            job.error = f"The job could not run in a worker process ({type(exc).__name__}: {exc})."
        finally:
            _finish(job)


def _run(job: Job, task: tasks.Task) -> None:
    context = _context()
    receive, send = context.Pipe(duplex=False)
    threads = max(1, (os.cpu_count() or 1) // workers())
    job.process = context.Process(target=tasks.work, args=(task, send, tasks.environment(), threads),
                                  name=f"orthoscope: {job.label}", daemon=True)
    job.message = "starting a worker ..."
    job.process.start()
    send.close()
    if job.cancelled:
        job.process.terminate()
    try:
        while True:
            try:
                message = receive.recv()
            except (EOFError, OSError):
                break
            if message[0] == "progress":
                job.progress(message[1], message[2])
            elif message[0] == "done":
                job.result, job.carried = message[1], message[2]
                job.progress(1.0, "done")
            else:
                job.error = message[1]
    finally:
        receive.close()
        job.process.join(CANCEL_GRACE_S)
        if job.process.is_alive():
            job.process.kill()
            job.process.join()


def start(key: str, task: tasks.Task, label: str, owner: str | None = None) -> Job:
    """The job under ``key``: the one already started (running, finished or failed), else a new one.

    A failed or cancelled job stays so, so a page that reruns shows why instead of starting it
    again; :func:`forget` it first to try again.
    """
    jobs, lock, slots = _jobs()
    with lock:
        job = jobs.get(key)
        if job is not None:
            jobs.move_to_end(key)
            return job
        job = Job(key, label, owner=owner)
        jobs[key] = job
        # Forget the oldest finished jobs beyond the bound; running ones stay.
        for old in [k for k, j in jobs.items() if j.done][: max(0, len(jobs) - MAX_JOBS)]:
            del jobs[old]
    threading.Thread(target=_supervise, args=(job, task, slots), name="orthoscope-job", daemon=True).start()
    return job


def cancel(key: str, wait: bool = True) -> None:
    """Stop the job under ``key`` (its worker is ended); with ``wait``, until it is marked done."""
    job = get(key)
    if job is None or job.done:
        return
    job.cancelled = True
    if job.process is not None and job.process.is_alive():
        job.process.terminate()
    if wait:
        job.wait(CANCEL_GRACE_S * 2)


def _session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return None if ctx is None else ctx.session_id


def _supersede(slot: str, key: str, session: str | None) -> None:
    """A page's new job replaces the one this session started there before, if nobody else shares it:
    the page starts with its default settings, and a user who changes them at once should not wait
    behind a run they no longer want."""
    slots = st.session_state.setdefault("job_slots", {})
    previous = slots.get(slot)
    slots[slot] = key
    if previous is None or previous == key:
        return
    job = get(previous)
    if job is not None and not job.done and job.owner == session:
        job.superseded = True
        cancel(previous, wait=False)


def forget(key: str) -> None:
    """Drop a finished job, so that the next :func:`start` runs it again (a running one is kept)."""
    jobs, lock, _ = _jobs()
    with lock:
        job = jobs.get(key)
        if job is not None and job.done:
            del jobs[key]


def get(key: str) -> Job | None:
    jobs, lock, _ = _jobs()
    with lock:
        return jobs.get(key)


def _widget_key(what: str, key: str) -> str:
    return f"job_{what}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


@st.fragment(run_every=1.0)
def _watch(key: str) -> None:
    job = get(key)
    if job is None or job.done:
        st.rerun()
    st.progress(job.fraction, text=f"Computing {job.label}: {guard.literal(job.message)} · {job.fraction:.0%} · "
                                   f"{time.time() - job.started:.0f} s")
    st.button("Cancel", key=_widget_key("cancel", key), on_click=cancel, args=(key,), icon=":material/stop:")


def result(key: str, task: tasks.Task, label: str, slot: str) -> Any:
    """The result of ``task`` from its job, started if need be; ``slot`` names the page's place for it.

    Until the result is there, the page shows the job's progress and a Cancel button, and stops,
    so no chart of an earlier model or setting is left on screen; a cancelled or failed job
    shows why, with a button to run it again.
    """
    session = _session_id()
    _supersede(slot, key, session)
    job = start(key, task, label, owner=session)
    st.session_state.setdefault("my_jobs", {})[key] = label
    if os.environ.get(WAIT_ENV):
        job.wait()
    if not job.done:
        _watch(key)
        st.stop()
    if job.error:
        (st.warning if job.cancelled else st.error)(f"{job.label}: {guard.literal(job.error)}")
        st.button("Run again", key=_widget_key("again", key), on_click=forget, args=(key,),
                  icon=":material/refresh:")
        st.stop()
    if job.carried:
        cache.put_many(job.carried)
        job.carried = {}
    return job.result


def lent(prefix: str) -> dict:
    """The entries of the result cache a task may read (see ``diagnostics.tasks``)."""
    return cache.entries(prefix)


def sidebar() -> None:
    """This session's jobs still running, so a user on another page sees that they go on."""
    for key, label in list(st.session_state.get("my_jobs", {}).items()):
        job = get(key)
        if job is None or job.done:
            st.session_state["my_jobs"].pop(key, None)
            continue
        st.sidebar.caption(f":material/hourglass_top: {label}: {job.fraction:.0%}")
