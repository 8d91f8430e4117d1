"""Running one hostile input through the CLI in a forked child, with a time and memory bound.

A child forked from the test process (torch and the project already imported) runs
``cli.main(argv)`` (or a library call); it reports its exit status, what it wrote to stderr and
its peak resident memory above what it shared with the test process at the fork (VmHWM minus VmRSS
at its start). A case that runs over its time is killed and fails. Forking keeps each case at a
fraction of a second of overhead instead of the seconds a fresh interpreter needs to import torch.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

# Imported here, once, so that every forked case starts with them loaded.
import cli  # noqa: F401
import diagnostics.tasks  # noqa: F401  every diagnostic, torch and transformers
import reports  # noqa: F401

MAX_SECONDS = 10.0
MAX_RSS_MB = 1536.0


@dataclass
class Outcome:
    code: int | None
    stderr: str
    seconds: float
    peak_mb: float

    @property
    def lines(self) -> list[str]:
        """Non-empty stderr lines (progress lines such as "loading X ..." included)."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb(start_mb: float) -> float:
    """The case's own peak: the child's high-water mark above what it shared with the test process at
    the fork (which grows over a long test session and is not the case's doing)."""
    return _status_mb("VmHWM") - start_mb


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _call(func, args: tuple) -> tuple[int, str]:
    """A library call reported like a CLI run: OrthoscopeError -> exit 2 with ``error: ...``."""
    from models import OrthoscopeError

    try:
        func(*args)
    except OrthoscopeError as exc:
        return 2, f"error: {exc}"
    return 0, ""


def _child(work, conn) -> None:
    start_mb = _status_mb("VmRSS")
    try:
        code, text = work()
    except BaseException:  # what the harness exists to catch: anything but a clean exit
        import traceback

        code, text = 99, traceback.format_exc()
    conn.send((code, text, _peak_mb(start_mb)))
    conn.close()


def _forked(work, timeout: float) -> Outcome:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, send), daemon=True)
    start = time.perf_counter()
    child.start()
    send.close()
    got = receive.poll(timeout)
    elapsed = time.perf_counter() - start
    if not got:
        child.kill()
        child.join()
        return Outcome(None, f"killed after {timeout:.0f} s", elapsed, float("nan"))
    try:
        code, text, peak = receive.recv()
    except EOFError:  # the child died (e.g. killed for memory) before it could answer
        child.join()
        return Outcome(child.exitcode, f"child died with exit code {child.exitcode}", elapsed, float("nan"))
    child.join()
    return Outcome(code, text, elapsed, peak)


def run_cli(argv: list[str], timeout: float = MAX_SECONDS) -> Outcome:
    """``python cli.py ARGV`` in a forked child, bounded by ``timeout`` seconds."""
    return _forked(lambda: _cli(argv), timeout)


def run_call(func, *args, timeout: float = MAX_SECONDS) -> Outcome:
    """``func(*args)`` in a forked child, bounded and reported like a CLI run."""
    return _forked(lambda: _call(func, args), timeout)


def assert_refused(outcome: Outcome, *, marker: Path | None = None, contains: str | None = None) -> None:
    """Exit 2 with one line of error, in time and memory, and no payload's marker file written."""
    assert outcome.code == 2, f"exit {outcome.code}, stderr:\n{outcome.stderr}"
    errors = [line for line in outcome.lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.seconds <= MAX_SECONDS, f"{outcome.seconds:.1f} s"
    assert not outcome.peak_mb > MAX_RSS_MB, f"peak RSS {outcome.peak_mb:.0f} MB"
    if marker is not None:
        assert not marker.exists(), f"a payload wrote {marker}"
    if contains is not None:
        assert contains.lower() in errors[0].lower(), errors[0]
