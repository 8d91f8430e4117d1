"""A diagnostic run described by plain data, so that another process can do it.

The dashboard runs its long diagnostics in worker processes (ui/background.py). What travels to
a worker is a :class:`Task`: how to open each model (a spec and paths, never tensors), the
diagnostic's parameters, and the small inputs a user gave (uploaded triples, a text set,
embedding arrays). ``carried`` lends the worker entries of a cache the caller keeps across runs
(steering's activations, alignment's embeddings): the worker reads what it needs from them and
returns what it computed, so a second run with other settings does not embed or read again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import stat
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from diagnostics import alignment, directions, optimizer_traces, overview, spectra, steering, sweep
from diagnostics import alignment_data as adata
from models import OrthoscopeError, load
from models.module_cache import cache_root
from models.safety import check_under_roots

Progress = Callable[[float, str], None]
# Settings the worker must see as the caller sees them now: a worker is forked from a process
# started once, whose environment is that of the first job.
ENV_PREFIXES = ("ORTHOSCOPE_", "HF_", "TRANSFORMERS_")
PROGRESS_INTERVAL_S = 0.2


@dataclass(frozen=True)
class ModelRef:
    """How to open a model: what ``models.load`` takes, with the allowed roots already resolved."""

    spec: str
    config_path: str | None = None
    max_mb: float | None = None
    display: str | None = None
    allowed_roots: tuple[str, ...] | None = None

    def open(self):
        roots = None if self.allowed_roots is None else [Path(r) for r in self.allowed_roots]
        return load(self.spec, allowed_roots=roots, max_mb=self.max_mb,
                    config_path=Path(self.config_path) if self.config_path else None, display_name=self.display)

    def embedder(self) -> adata.Embedder:
        return adata.load_embedder(adata.E5_SPEC) if self.spec == adata.E5_SPEC else adata.embedder(self.open())


@dataclass
class Task:
    diagnostic: str
    params: Any = None
    model: ModelRef | None = None
    inputs: dict = field(default_factory=dict)
    carried: dict = field(default_factory=dict)


class Carry:
    """``cache(key, compute)`` over the lent entries, keeping what it had to compute."""

    def __init__(self, lent: dict):
        self.lent, self.new = lent, {}

    def __call__(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self.lent:
            return self.lent[key]
        if key not in self.new:
            self.new[key] = compute()
        return self.new[key]


def _alignment(task: Task, progress: Progress, carry: Carry):
    given = task.inputs
    if "arrays" in given:
        return alignment.run(given["arrays"], task.params, progress=progress)
    sides = {tag: adata.Side(ref.embedder(), pooling, layer) for tag, (ref, pooling, layer) in given["sides"].items()}

    def embed(side: adata.Side, what: str, items: list, sha: str, report: Progress | None):
        key = f"alignment-embeddings|{side.model.cache_key(sha, side.pooling, side.layer, what)}"
        return carry(key, lambda: adata.plain_embed(side, what, items, sha, report))

    inputs = adata.model_inputs(sides["a"], sides["b"], given.get("texts"), given.get("images"),
                                fit_on=given.get("fit_on", "images"), embed=embed,
                                progress=lambda f, m: progress(0.4 * f, m))
    return alignment.run(inputs, task.params, progress=lambda f, m: progress(0.4 + 0.6 * f, m))


def sweep_db(source: str) -> Path:
    """The DuckDB file of the dashboard's sweeps of ``source`` (a folder, or a list of specs): one
    file per source, so running it again resumes, and a folder that gained checkpoints computes only
    those. Under the user cache (models.module_cache), or with the cache off under a temporary
    folder of this user's that nobody else may enter."""
    root = cache_root()
    folder = root / "sweeps" if root is not None else Path(tempfile.gettempdir()) / f"orthoscope-sweeps-{os.geteuid()}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise OrthoscopeError(f"cannot make the folder for the sweep's database, {folder} "
                              f"({exc.strerror or exc}).") from None
    # A fixed name in a shared temporary folder could be another user's link or folder, planted in advance.
    if root is None and (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077):
        raise OrthoscopeError(f"{folder} is not a private folder of this user; remove it, or set ORTHOSCOPE_CACHE_DIR.")
    return folder / f"compare-{hashlib.sha256(source.encode()).hexdigest()[:24]}.duckdb"


def _own_children() -> None:
    """Let this worker start the sweep's process pool, and end the pool when the job is cancelled.

    ui/background.py starts each job as a daemon process, and multiprocessing refuses a daemon
    children (they would outlive it). The sweep needs them, so this worker stops counting as a
    daemon and, when Cancel terminates it (SIGTERM), kills its children itself: a pool's workers
    left behind would wait on their queue for ever, each holding a model.
    """
    process = multiprocessing.current_process()
    if not process.daemon:
        return
    process.daemon = False

    def stop(signum, frame):
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _compare(task: Task, progress: Progress, carry: Carry):
    """The compare sweep (diagnostics/sweep.py) of ``inputs["checkpoints"]``, ``inputs["base"]``
    optional. Every local path must lie under its roots (``inputs["roots"]``: spec -> roots; links
    resolved; none given: refused), checked here because the sweep opens its members without roots.
    Several workers make a local process pool, one runs in this process; the store is
    :func:`sweep_db` of ``inputs["source"]``."""
    given = task.inputs
    members = [*given["checkpoints"], *([given["base"]] if given.get("base") else [])]
    for member in members:
        if not member.spec.startswith(("builtin:", "hf:")):
            check_under_roots(Path(member.spec), [Path(r) for r in given["roots"].get(member.spec, ())])
    workers = int(given["workers"])
    if workers > 1:
        _own_children()
    return sweep.run(given["checkpoints"], given.get("base"), task.params,
                     executor="local" if workers > 1 else "serial", workers=workers, db=sweep_db(given["source"]),
                     progress=progress)


RUNNERS: dict[str, Callable[[Task, Progress, Carry], Any]] = {
    "overview": lambda t, p, c: overview.run(t.model.open(), t.params, progress=p),
    "spectra": lambda t, p, c: spectra.run(t.model.open(), t.params, progress=p),
    "directions": lambda t, p, c: directions.run(t.model.open(), t.params, progress=p),
    "steering": lambda t, p, c: steering.run(t.model.open(), t.params, t.inputs.get("triples"), progress=p,
                                             activation_cache=c),
    "alignment": _alignment,
    "optimizer_traces": lambda t, p, c: optimizer_traces.run(t.params, progress=p),
    "compare": _compare,
}


def run(task: Task, progress: Progress | None = None) -> tuple[Any, dict]:
    """The task's result, and the cache entries it computed that were not lent to it."""
    runner = RUNNERS.get(task.diagnostic)
    if runner is None:
        raise OrthoscopeError(f"no diagnostic named {task.diagnostic!r}; known: {', '.join(RUNNERS)}.")
    carry = Carry(task.carried)
    return runner(task, progress or (lambda f, m: None), carry), carry.new


def environment() -> dict[str, str]:
    """The caller's settings that a worker must share (see ``ENV_PREFIXES``)."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def work(task: Task, conn, env: dict[str, str], threads: int) -> None:
    """A worker process's whole life: run ``task``, sending progress, then the result or the error.

    Messages are pickled by ``multiprocessing`` and only ever pass between the server and the
    worker it forked, never from a file.
    """
    import torch

    for key in [k for k in os.environ if k.startswith(ENV_PREFIXES) and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    # Its own thread count, so that two jobs on a small machine do not fight over its cores.
    torch.set_num_threads(threads)
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S:
            last[0] = now
            conn.send(("progress", float(fraction), str(message)))

    try:
        result, computed = run(task, progress)
        conn.send(("done", result, computed))
    except OrthoscopeError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # a bug, not bad input: say what happened, keep the trace in the log
        traceback.print_exc()
        conn.send(("error", f"The computation failed unexpectedly ({type(exc).__name__}: {exc}). "
                            "The server log has the details."))
    finally:
        conn.close()
