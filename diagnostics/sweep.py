"""Sweeps: the compare diagnostic over many checkpoints, resumable, on one core, a process pool or Ray.

:func:`plan` turns the members of a comparison into tasks: one per checkpoint (its spectra and
overview), one per (base, derived) pair (the deltas of the matched layers), and one for the set
of derived models (the overlap of their task vectors). :func:`run` sends the tasks not yet done
to an executor and stores every outcome in a DuckDB file as it arrives.

What travels to a worker is a :class:`SweepTask`: specs and paths (strings), the parameters as a
dict and the fingerprints the driver computed; never tensors. Each worker opens the weights itself
with ``models.load``. One module-level function, :func:`run_task`, is what every executor runs:

- ``serial``: a loop in this process;
- ``local``: a ``concurrent.futures`` process pool (forkserver), one worker per core by default;
- ``ray``: ``ray.remote(run_task)``, on a local Ray started here (``workers`` CPUs) or on the
  cluster at ``ray_address`` ("auto", or the head's HOST:PORT).

The store: only the driver (the process calling :func:`run`) writes the file, one transaction per
finished task, so a killed sweep keeps every task it finished and a rerun skips them. Rows are
keyed by the weight fingerprint (sha256 of the weight files, computed in the driver) and the
params digest (sha256 of the parameters' JSON, sorted keys): the same weights under another name
or folder are not computed again, and other parameters compute anew. The ``tasks`` table holds
one row per task (key, kind, status, reason, seconds, the run that computed it); ``checkpoints``,
``layers``, ``deltas`` and ``overlaps`` hold the compare diagnostic's rows with the columns
``task_key``, ``params_digest`` and ``pos`` (row order) added. A failed task is stored with its
reason and tried again by the next run; the others go on. The file is opened for each write and
closed after it, so another process (the dashboard polling progress) can read it in between.

On a multi-node Ray cluster the same code runs unchanged: start the sweep on a node of the
cluster with ``--executor ray --ray-address auto`` (or the head's address). Only the tasks (a few
hundred bytes each) go to the workers, so every worker must reach the weights under the same
spec: paths on a filesystem every node mounts at the same place (NFS, a mounted bucket), or
``hf:`` ids that every node can download. The code must be importable on every node: this
repository at the same path on every node (the driver passes its root as PYTHONPATH in the job's
``runtime_env`` when it joins a cluster), installed in the nodes' image, or shipped by a ``runtime_env``
``working_dir`` / ``py_modules`` set when the cluster starts. The rows come back to the driver (kilobytes per checkpoint),
and only the driver writes the DuckDB file, which therefore needs to be on the driver's disk only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from diagnostics import compare
from diagnostics.compare import CompareParams, CompareResult
from models import OrthoscopeError, load
from models.checkpoints import Checkpoint
from models.handle import cached_fingerprints, remember_fingerprints
from models.handle import fingerprint as file_fingerprint

Progress = Callable[[float, str], None]
EXECUTORS = ("serial", "local", "ray")
TABLES = ("checkpoints", "layers", "deltas", "overlaps")
# Bumped when what the store holds changes meaning; a file written under another version is refused
# rather than mixed with new rows.
STORE_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
# The overlap task holds the task vector of every derived model at once (one layer at a time), and
# its pairs grow as the square: beyond this many derived models it is not planned and the summary says so.
MAX_OVERLAP_MODELS = 32
# How long a write waits for a reader (the dashboard polling the file) to let go of it.
LOCK_WAIT_S = 60.0
# Rows per INSERT statement: one statement with many rows is ~15x faster than executemany here.
INSERT_ROWS = 256
REASON_CHARS = 500
_STORE_COLUMNS = ("task_key", "params_digest", "pos")  # added to every data table's rows
_DIED = "the worker process died (killed, or out of memory) while this task or one beside it ran"


@dataclass(frozen=True)
class SweepTask:
    """One unit of work, as plain data a worker process or a Ray node can receive.

    kind: "checkpoint" (spectra and overview of members[0]), "delta" (members[1] - members[0]),
    or "overlap" (the task vectors of members[1:] from the base members[0]).
    fingerprints: the members' weight fingerprints, computed by the driver (a member that could not
    be opened gets the sha256 of its file, or of its spec, and ``error`` says why).
    params: ``CompareParams.to_dict()``; digest: :func:`params_digest` of it.
    error: set when a member could not be opened by the driver: the task is recorded as failed
    with this reason and never sent to a worker.
    threads: BLAS and torch threads while the task runs (a sweep sets 1 on every executor, so every
    executor gives the same digits; None leaves the process's setting alone).
    known: the driver's fingerprint cache entries of the members' files (path, size, mtime -> sha256),
    so a worker does not hash every byte again (a few hundred ms a checkpoint of MiniLM's size).
    """

    kind: str
    members: tuple[Checkpoint, ...]
    fingerprints: tuple[str, ...]
    params: dict
    digest: str
    error: str = ""
    threads: int | None = None
    known: tuple = ()

    @property
    def key(self) -> str:
        return _sha256("|".join((self.kind, *self.fingerprints, self.digest)))

    @property
    def label(self) -> str:
        names = [m.name for m in self.members]
        if self.kind == "checkpoint":
            return names[0]
        if self.kind == "delta":
            return f"delta of {names[1]}"  # the base is the same for every delta of a sweep
        return f"overlap of {len(names) - 1} models"


@dataclass
class TaskOutcome:
    """What a worker sends back: the status, and the compare diagnostic's rows per table."""

    key: str
    status: str  # "ok" or "failed"
    reason: str
    seconds: float
    tables: dict = field(default_factory=dict)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def params_digest(params: CompareParams) -> str:
    """sha256 of the parameters' JSON with sorted keys: the part of every key that is not weights."""
    return _sha256(json.dumps(params.to_dict(), sort_keys=True))


def failure_reason(exc: BaseException) -> str:
    """A user's error as its message; anything else with its type, so a bug is told from bad input."""
    text = str(exc) if isinstance(exc, OrthoscopeError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 4] + " ..."


def _identify(spec: str) -> tuple[str, str, tuple]:
    """(fingerprint, "", its fingerprint cache entries) of a spec that opens, or (a stand-in key, the
    reason, ()) of one that does not.

    The stand-in is the sha256 of the file's bytes when the spec is a readable file (so a repaired
    file gets a key of its own), else of the spec."""
    try:
        handle = load(spec)
        return handle.fingerprint, "", cached_fingerprints(handle.source.files)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is recorded, the sweep goes on
        reason = failure_reason(exc)
    path = Path(spec)
    try:
        key = file_fingerprint([path]) if path.is_file() else _sha256(spec)
    except OSError:
        key = _sha256(spec)
    return key, reason, ()


def plan(checkpoints: list[Checkpoint], base: Checkpoint | None = None, params: CompareParams | None = None,
         progress: Progress | None = None) -> list[SweepTask]:
    """The sweep's tasks, in the order their rows are shown.

    One "checkpoint" task per member (the base first when it is not one of ``checkpoints``); with a
    base, one "delta" task per other checkpoint and one "overlap" task for two or more of them (up to
    :data:`MAX_OVERLAP_MODELS`). Opens every spec once to fingerprint it (reading each weight file
    once, in this process); ``progress`` hears of each. Members with the same weights share a key,
    so they are computed once.
    """
    params = params or CompareParams()
    values, digest = params.to_dict(), params_digest(params)
    members = list(checkpoints)
    if base is not None and base.spec not in {c.spec for c in checkpoints}:
        members.insert(0, base)
    known: dict[str, tuple[str, str, tuple]] = {}
    for i, ckpt in enumerate(members):
        if progress is not None:
            progress(i / len(members), f"fingerprinting {ckpt.name} ({i + 1}/{len(members)})")
        if ckpt.spec not in known:
            known[ckpt.spec] = _identify(ckpt.spec)
    def entries(group) -> tuple:
        return tuple(e for c in group for e in known[c.spec][2])

    tasks = [SweepTask("checkpoint", (c,), (known[c.spec][0],), values, digest, known[c.spec][1],
                       known=entries([c])) for c in members]
    if base is None or known[base.spec][1]:
        return tasks
    base_fp = known[base.spec][0]
    derived = [c for c in checkpoints if c.spec != base.spec and not known[c.spec][1]]
    tasks += [SweepTask("delta", (base, d), (base_fp, known[d.spec][0]), values, digest, known=entries([base, d]))
              for d in derived]
    if 2 <= len(derived) <= MAX_OVERLAP_MODELS:
        fps = tuple(known[d.spec][0] for d in derived)
        tasks.append(SweepTask("overlap", (base, *derived), (base_fp, *fps), values, digest,
                               known=entries([base, *derived])))
    return tasks


# ---------------------------------------------------------------------------------------
# The one function every executor runs


def _limit_threads(n: int) -> None:
    """One BLAS and torch thread per worker when workers share the cores: two processes each with
    a thread pool as wide as the machine make SVD-heavy code 10-30x slower on 2 cores."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)  # process-wide from here on: this process is a worker


def _compute(task: SweepTask) -> dict:
    params = CompareParams.from_dict(task.params)
    if task.kind == "checkpoint":
        row, layers = compare.checkpoint_rows(task.members[0], params)
        if row.get("fingerprint") != task.fingerprints[0]:
            raise OrthoscopeError(f"{task.members[0].name} changed while the sweep ran (its weights differ from "
                                  "those fingerprinted when it started); run the sweep again.")
        return {"checkpoints": [row], "layers": layers}
    if task.kind == "delta":
        return {"deltas": compare.delta_rows(task.members[0], task.members[1], params)}
    if task.kind == "overlap":
        return {"overlaps": compare.overlap_rows(task.members[0], list(task.members[1:]), params)}
    raise ValueError(f"unknown task kind {task.kind!r}")


def run_task(task: SweepTask) -> TaskOutcome:
    """Compute one task: the rows of each table it fills, or the reason it failed (never raises for
    a task's own failure, so one bad checkpoint never stops a pool or a Ray job)."""
    if task.threads:
        _limit_threads(task.threads)
    remember_fingerprints(task.known)
    started = time.perf_counter()
    try:
        tables = _compute(task)
    except Exception as exc:  # noqa: BLE001 - recorded as the task's failure with its reason
        return TaskOutcome(task.key, "failed", failure_reason(exc), time.perf_counter() - started)
    return TaskOutcome(task.key, "ok", "", time.perf_counter() - started, tables)


# ---------------------------------------------------------------------------------------
# Executors: each yields (task, outcome) as tasks finish, in whatever order they finish.


def _serial(tasks: list[SweepTask], workers: int, address: str | None) -> Iterator[tuple[SweepTask, TaskOutcome]]:
    """In this process, with its thread settings as the tasks ask while they run and as they were after."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits(tasks[0].threads if tasks and tasks[0].threads else None):
        try:
            for task in tasks:
                if task.threads:
                    torch.set_num_threads(task.threads)
                yield task, run_task(dataclasses.replace(task, threads=None))
        finally:
            torch.set_num_threads(before)


def _forkserver(start: bool = False):
    """The forkserver context, whose server imports this module (and so torch) once for every worker.
    ``start``: launch the server now, so that its imports overlap the driver's fingerprinting."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    if start:
        forkserver.ensure_running()
    return context


def _local(tasks: list[SweepTask], workers: int, address: str | None) -> Iterator[tuple[SweepTask, TaskOutcome]]:
    """A process pool. Workers are forked from a forkserver that imported this module once (a plain
    fork of a process with threads, such as the dashboard's, can deadlock). When a worker dies, the
    pool breaks and every unfinished task fails with it: those are retried once in a fresh pool, and a
    task the pool breaks under twice is recorded as failed."""
    context = _forkserver()
    struck: set[str] = set()
    queue = list(tasks)
    while queue:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(queue)), mp_context=context)
        futures = {pool.submit(run_task, task): task for task in queue}
        queue = []
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    if task.key not in struck:
                        struck.add(task.key)
                        queue.append(task)
                        continue
                    outcome = TaskOutcome(task.key, "failed", _DIED, 0.0)
                yield task, outcome
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def start_ray(workers: int | None = None, address: str | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a local one of ``workers`` CPUs (default: all),
    unless this process is already connected. Workers import this repository through PYTHONPATH: set in
    the environment a local cluster inherits, or in the job's ``runtime_env`` on a cluster joined."""
    import ray

    if ray.is_initialized():
        return
    saved = os.environ.get("PYTHONPATH")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), saved) if p)
    if address:
        options: dict = {"address": address, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    else:
        # A local cluster's processes inherit this environment, so its workers, prestarted by ray.init,
        # can run the sweep; a runtime_env would have Ray start other workers for it (seconds each).
        options = {"num_cpus": workers or os.cpu_count(), "include_dashboard": False}
        os.environ["PYTHONPATH"] = path
    try:
        ray.init(log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise OrthoscopeError(f"could not start or join {where} ({failure_reason(exc)}).") from None
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _ray(tasks: list[SweepTask], workers: int, address: str | None) -> Iterator[tuple[SweepTask, TaskOutcome]]:
    """Ray tasks of one CPU each, retried once if their worker dies (Ray's own retry)."""
    import ray

    start_ray(workers, address)
    remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
    pending = {remote.remote(task): task for task in tasks}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    outcome = TaskOutcome(task.key, "failed", f"{_DIED} ({failure_reason(exc)})", 0.0)
                yield task, outcome
    finally:
        for ref in pending:
            ray.cancel(ref)


_EXECUTE = {"serial": _serial, "local": _local, "ray": _ray}


# ---------------------------------------------------------------------------------------
# The DuckDB store


def _plain(value):
    """A value DuckDB takes as a parameter: numpy scalars and arrays, tuples and dicts made plain, and
    NaN stored as NULL (read back as NaN in number columns), so that a failed row's NaN metrics never
    turn a column of counts into one of floats."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.ndarray, tuple)):
        return [_plain(v) for v in list(value)]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _sql_type(value) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    if isinstance(value, list):
        inner = {_sql_type(v) for v in value if v is not None}
        if inner <= {"BIGINT"}:
            return "BIGINT[]" if inner else "DOUBLE[]"
        if inner <= {"BIGINT", "DOUBLE"}:
            return "DOUBLE[]"
        return "VARCHAR[]" if inner == {"VARCHAR"} else "VARCHAR"
    return "VARCHAR"


def _wider(a: str, b: str) -> str:
    """The type that holds values of both: ints widen to doubles; anything else mixed becomes text."""
    if a == b:
        return a
    for pair, wide in (({"BIGINT", "DOUBLE"}, "DOUBLE"), ({"BOOLEAN", "BIGINT"}, "BIGINT"),
                       ({"BIGINT[]", "DOUBLE[]"}, "DOUBLE[]")):
        if {a, b} == pair:
            return wide
    return "VARCHAR"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _stored(value, sql_type: str):
    """``value`` as the column holds it: text columns that took mixed values keep JSON text."""
    if sql_type == "VARCHAR" and value is not None and not isinstance(value, str):
        return json.dumps(value, default=str)
    return value


class Store:
    """The sweep's DuckDB file. Opened for each write and closed after it, so that a reader can open
    it read-only in between; a write that finds the file locked by a reader waits for it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OrthoscopeError(f"the sweep database {self.path}: cannot make its folder "
                                  f"({exc.strerror or exc}).") from None
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
            found = con.execute("SELECT value FROM meta WHERE name = 'store_version'").fetchone()
            if found is None:
                con.execute("INSERT INTO meta VALUES ('store_version', ?)", [str(STORE_VERSION)])
            elif found[0] != str(STORE_VERSION):
                raise OrthoscopeError(f"the sweep database {self.path} was written by another version of Orthoscope's "
                                      f"sweeps (store version {found[0]}, this one writes {STORE_VERSION}); give a new "
                                      "file.")
            con.execute(
                "CREATE TABLE IF NOT EXISTS tasks (key VARCHAR PRIMARY KEY, kind VARCHAR, label VARCHAR, "
                "fingerprints VARCHAR[], params_digest VARCHAR, params VARCHAR, status VARCHAR, reason VARCHAR, "
                "seconds DOUBLE, run_id VARCHAR, finished_at TIMESTAMP)"
            )

    def _connect(self):
        import duckdb

        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.Error as exc:
                locked = "lock" in str(exc).lower()
                if not locked or time.monotonic() > deadline:
                    why = "it stayed locked by another process" if locked else failure_reason(exc)
                    raise OrthoscopeError(f"the sweep database {self.path}: cannot open it as a DuckDB file "
                                          f"({why}).") from None
                time.sleep(0.05)

    def done(self, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` whose task finished ok."""
        with self._connect() as con:
            ok = {k for (k,) in con.execute("SELECT key FROM tasks WHERE status = 'ok'").fetchall()}
        return ok & set(keys)

    def record(self, task: SweepTask, outcome: TaskOutcome, run_id: str) -> None:
        """Replace whatever the file held for this task by its outcome, in one transaction."""
        tables = dict(outcome.tables)
        if task.kind == "checkpoint" and outcome.status != "ok":
            row = compare.failed_checkpoint_row(task.members[0], outcome.reason, task.fingerprints[0])
            tables["checkpoints"] = [{**row, "seconds": outcome.seconds}]
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM tasks WHERE key = ?", [task.key])
            con.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [task.key, task.kind, task.label, list(task.fingerprints), task.digest,
                 json.dumps(task.params, sort_keys=True), outcome.status, outcome.reason, outcome.seconds, run_id,
                 dt.datetime.now()],
            )
            existing = self._tables(con)
            for table in TABLES:
                if table in existing:
                    con.execute(f"DELETE FROM {_quote(table)} WHERE task_key = ?", [task.key])
            for table, rows in tables.items():
                keyed = [{**dict(zip(_STORE_COLUMNS, (task.key, task.digest, i))),
                          **{k: _plain(v) for k, v in row.items()}} for i, row in enumerate(rows)]
                # A number column that is NaN in every row so far (mean_trusted_alpha with no trusted
                # fit) is still made, as DOUBLE, so that it reads back as NaN rather than going missing.
                nan_only = {k for row in rows for k, v in row.items()
                            if isinstance(v, (float, np.floating)) and math.isnan(v)}
                if keyed:
                    self._insert(con, table, keyed, existing.get(table), nan_only)
            con.execute("COMMIT")

    @staticmethod
    def _tables(con) -> dict[str, dict[str, str]]:
        """table -> {column: type} for the data tables that exist."""
        out: dict[str, dict[str, str]] = {}
        # duckdb_columns() rather than information_schema: the same answer, ten times faster.
        for table, column, sql_type in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' ORDER BY table_name, column_index"
        ).fetchall():
            if table in TABLES:
                out.setdefault(table, {})[column] = sql_type
        return out

    @staticmethod
    def _insert(con, table: str, rows: list[dict], columns: dict[str, str] | None,
                nan_only: set[str] = frozenset()) -> None:
        """Insert rows whose columns may be new to the table: columns are added (or widened) as
        values of their type first appear; a column with no value yet is left for a later row,
        unless it held NaN (``nan_only``), which makes it a DOUBLE column."""
        seen: dict[str, str] = {}
        for row in rows:
            for name, value in row.items():
                if value is not None:
                    kind = _sql_type(value)
                    seen[name] = _wider(seen[name], kind) if name in seen else kind
        for name in nan_only:
            seen.setdefault(name, "DOUBLE")
        if columns is None:
            con.execute(f"CREATE TABLE {_quote(table)} ({', '.join(f'{_quote(n)} {t}' for n, t in seen.items())})")
            columns = dict(seen)
        for name, kind in seen.items():
            if name not in columns:
                con.execute(f"ALTER TABLE {_quote(table)} ADD COLUMN {_quote(name)} {kind}")
                columns[name] = kind
            elif _wider(columns[name], kind) != columns[name]:
                columns[name] = _wider(columns[name], kind)
                con.execute(f"ALTER TABLE {_quote(table)} ALTER {_quote(name)} TYPE {columns[name]}")
        names = list(seen)
        into = f"INSERT INTO {_quote(table)} ({', '.join(map(_quote, names))}) VALUES "
        placeholders = "(" + ", ".join("?" for _ in names) + ")"
        for start in range(0, len(rows), INSERT_ROWS):
            chunk = rows[start : start + INSERT_ROWS]
            con.execute(into + ", ".join(placeholders for _ in chunk),
                        [_stored(row.get(n), columns[n]) for row in chunk for n in names])

    def rows(self, keys: set[str]) -> dict[str, dict[str, list[dict]]]:
        """table -> task key -> its rows in their order, for the given keys; the store's own columns
        (task_key, params_digest, pos) left out, and NULL in a number column read as NaN (the step
        of a listed model, None, is the member's own again in :func:`_collect`)."""
        out: dict[str, dict[str, list[dict]]] = {table: {} for table in TABLES}
        with self._connect() as con:
            for table, columns in self._tables(con).items():
                names = [n for n in columns if n not in _STORE_COLUMNS]
                numbers = [n for n in names if columns[n] in ("DOUBLE", "BIGINT")]
                found = con.execute(
                    f"SELECT task_key, {', '.join(map(_quote, names))} FROM {_quote(table)} "
                    "WHERE list_contains(?, task_key) ORDER BY task_key, pos", [sorted(keys)]
                ).fetchall()
                for key, *values in found:
                    row = dict(zip(names, values))
                    row.update({n: math.nan for n in numbers if row[n] is None})
                    out[table].setdefault(key, []).append(row)
        return out


# ---------------------------------------------------------------------------------------
# The sweep


def _series_folder(checkpoints: list[Checkpoint]) -> str | None:
    """The folder's name when the checkpoints are one series (steps, one folder); None for a list of models."""
    parents = {Path(c.spec).resolve().parent for c in checkpoints}
    if all(c.step is not None for c in checkpoints) and len(parents) == 1:
        return parents.pop().name or "/"
    return None


def _collect(store: Store, tasks: list[SweepTask]) -> dict[str, list[dict]]:
    """The rows of exactly these tasks, in plan order, named as this sweep names its members (the
    store may hold them under the names of an earlier sweep of the same weights)."""
    stored = store.rows({t.key for t in tasks})
    out: dict[str, list[dict]] = {table: [] for table in TABLES}
    for task in tasks:
        if task.kind == "checkpoint":
            ckpt = task.members[0]
            names = {"checkpoint": ckpt.name, "step": ckpt.step}
            for table in ("checkpoints", "layers"):
                out[table] += [{**row, **names} for row in stored[table].get(task.key, [])]
        elif task.kind == "delta":
            base, derived = task.members
            names = {"base": base.name, "derived": derived.name, "step": derived.step}
            out["deltas"] += [{**row, **names} for row in stored["deltas"].get(task.key, [])]
        else:
            by_fp = {fp: m.name for m, fp in zip(task.members[1:], task.fingerprints[1:])}
            out["overlaps"] += [{**row, "base": task.members[0].name,
                                 "a": by_fp.get(row.get("a_fingerprint"), row.get("a")),
                                 "b": by_fp.get(row.get("b_fingerprint"), row.get("b"))}
                                for row in stored["overlaps"].get(task.key, [])]
    return out


def run(
    checkpoints: list[Checkpoint],
    base: Checkpoint | None = None,
    params: CompareParams | None = None,
    *,
    executor: str = "local",
    workers: int | None = None,
    db: Path,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> CompareResult:
    """Compare ``checkpoints`` (and, with ``base``, their deltas from it and their overlaps), computing
    only what ``db`` does not hold yet, and return the result read back from ``db``.

    executor: "serial", "local" (a process pool of ``workers``, default one per core) or "ray" (a
    local Ray of ``workers`` CPUs, or the cluster at ``ray_address``). ``progress(fraction, message)``
    hears of the fingerprinting, then "N of M already in DB (skipped)", then one message per finished
    task. ``summary`` adds to compare's counts: tasks, computed, reused, executor, workers, db,
    task_failures (deltas and overlaps that failed) and notes.

    As in any program that starts processes, a script that runs a local sweep keeps its top level
    under ``if __name__ == "__main__":``: the forkserver imports the main module.
    """
    if executor not in EXECUTORS:
        raise OrthoscopeError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}.")
    if workers is not None and workers < 1:
        raise OrthoscopeError("workers must be at least 1.")
    if not checkpoints:
        raise OrthoscopeError("no checkpoints to compare.")
    if ray_address and executor != "ray":
        raise OrthoscopeError("a Ray address needs the ray executor.")
    params = params or CompareParams()
    started = time.perf_counter()
    if executor == "local":
        _forkserver(start=True)
    store = Store(db)
    tasks = plan(checkpoints, base, params, progress=progress)
    unique = list({t.key: t for t in tasks}.values())
    done = store.done(t.key for t in unique)
    todo = [t for t in unique if t.key not in done]
    say = progress or (lambda fraction, message: None)
    say(0.0, f"{len(unique) - len(todo)} of {len(unique)} already in DB (skipped)")
    size = 1 if executor == "serial" else (workers or os.cpu_count() or 1)
    # One BLAS and torch thread on every executor: a reduction split over threads adds in another order,
    # so the tables would differ in their last digits between a serial run and a pool's.
    threads = 1
    run_id = uuid.uuid4().hex
    failed_early = [t for t in todo if t.error]
    dispatched = [dataclasses.replace(t, threads=threads) for t in todo if not t.error]
    finished: list[TaskOutcome] = []
    plan_s = time.perf_counter() - started

    def finish(task: SweepTask, outcome: TaskOutcome) -> None:
        store.record(task, outcome, run_id)
        finished.append(outcome)
        shown = "ok" if outcome.status == "ok" else f"failed: {outcome.reason}"
        say(len(finished) / len(todo), f"{task.label}: {shown} ({len(finished)}/{len(todo)})")

    for task in failed_early:
        finish(task, TaskOutcome(task.key, "failed", task.error, 0.0))
    if dispatched:
        for task, outcome in _EXECUTE[executor](dispatched, size, ray_address):
            finish(task, outcome)
    tables = _collect(store, tasks)
    notes = []
    deltas = sum(t.kind == "delta" for t in tasks)
    if deltas > MAX_OVERLAP_MODELS:
        notes.append(f"task-vector overlaps are computed for at most {MAX_OVERLAP_MODELS} derived models; "
                     f"this sweep has {deltas}, so none were.")
    by_key = {t.key: t for t in unique}
    summary = {
        "tasks": len(unique), "computed": len(todo), "reused": len(unique) - len(todo),
        "executor": executor, "workers": _ray_cpus(size) if executor == "ray" else size,
        "db": str(db),
        "task_failures": [{"task": by_key[o.key].label, "reason": o.reason} for o in finished
                          if o.status != "ok" and by_key[o.key].kind != "checkpoint"],
        "notes": notes,
    }
    timings = {"total_s": time.perf_counter() - started, "plan_s": plan_s, "task_s": sum(o.seconds for o in finished)}
    folder = _series_folder([t.members[0] for t in tasks if t.kind == "checkpoint"])
    return compare.make_result(tables["checkpoints"], tables["layers"], tables["deltas"], tables["overlaps"], params,
                               folder=folder, summary=summary, timings=timings)


def _ray_cpus(requested: int) -> int:
    """The CPUs of the Ray cluster the sweep ran on (a cluster joined may have more than asked for)."""
    import ray

    return int(ray.cluster_resources().get("CPU", requested)) if ray.is_initialized() else requested
