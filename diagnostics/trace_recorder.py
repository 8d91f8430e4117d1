"""A recorder of optimizer traces that fits any torch training loop, and the JSONL trace format.

    recorder = TraceRecorder(model, optimizer, run={"optimizer": "muon", "lr": 0.02})
    for step, (x, y) in enumerate(batches):
        with recorder.phase("forward"):
            loss = loss_fn(model(x), y)
        with recorder.phase("backward"):
            optimizer.zero_grad(); loss.backward()
        optimizer.step()              # timed by the recorder's step hooks
        recorder.log_loss(loss)

Every ``every`` optimizer steps the recorder keeps the weights just before the step (a step
pre-hook), and after it (a post-hook) measures the applied update ``dW = W_after - W_before`` of
each tracked matrix; every ``alpha_every`` steps it fits the power-law alpha of each weight
matrix's ESD with the spectra diagnostic's :func:`~diagnostics.power_law.fit_power_law`. Records are
plain dicts (one JSON object a line; the format is documented in reports/SCHEMA.md) so they can
be streamed to a file and loaded back with :func:`read_trace`.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from diagnostics.optimizers import NS_EPS, MatrixOptimizer, RoutedOptimizer, as_matrix, state_of
from diagnostics.power_law import fit_power_law
from diagnostics.result import jsonable
from diagnostics.spectra import eigenvalues
from models.errors import OrthoscopeError
from models.limits import MAX_TRACE_BYTES, MAX_TRACE_STEP, check_regular_file, loads_json

TRACE_FORMAT = "orthoscope-trace"
# Version 2 renamed the update field ``orth_error`` to ``sv_cv`` (the same quantity); version-1
# traces are still read, with that field renamed on the way in (:func:`upgrade_records`).
TRACE_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Singular values below this fraction of the largest are treated as numerically zero in every
# update metric; the count above it is reported as ``numerical_rank``.
RANK_RTOL = 1e-3
# A momentum buffer this close to Newton-Schulz's normalisation epsilon makes the orthogonalised
# (or, for AuON, normalised) direction mostly rounding noise.
MOMENTUM_WARNING_FACTOR = 100.0
PHASES = ("forward", "backward", "optimizer", "recorder")
UPDATE_FIELDS = ("rms", "rel_update", "spectral_norm", "sv_cv", "effective_rank", "stable_rank",
                 "condition", "numerical_rank", "neuron_cv", "momentum_norm")


def singular_values(M: torch.Tensor) -> torch.Tensor:
    """Singular values of ``M`` (float64, descending) from the eigenvalues of its smaller Gram matrix.

    On the 256 x 256 updates of the digits benchmark, numpy's ``eigvalsh`` of the Gram matrix
    takes about half the time of ``torch.linalg.svdvals`` (one thread), which keeps the recorder
    within its 10 % budget. Squaring loses singular values below about 1e-8 of the largest;
    every metric here drops those below ``RANK_RTOL`` anyway.
    """
    G = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
    evals = np.linalg.eigvalsh(G.numpy())
    return torch.from_numpy(np.sqrt(np.clip(evals[::-1], 0, None)).copy())


def update_metrics(dW: torch.Tensor, W: torch.Tensor) -> dict:
    """Geometry of an applied update ``dW`` of the matrix ``W`` (both 2-D views), from its singular values.

    ``spectral_norm`` = s_max, the exact largest singular value. With ``s`` the singular values
    above ``RANK_RTOL * s_max`` (``numerical_rank`` of them): ``sv_cv`` = std(s) / mean(s), the
    coefficient of variation of the singular values, 0 for an update that is semi-orthogonal on its
    numerical rank (the "orthogonality" of an update; not ``||W^T W - I||``, which also measures
    scale); ``effective_rank`` = exp(entropy of s / sum s) (Roy & Vetterli 2007); ``stable_rank`` =
    sum s^2 / s_max^2; ``condition`` = s_max / s_min. ``rms`` = ||dW||_F / sqrt(size);
    ``rel_update`` = ||dW||_F / ||W||_F with W before the step; ``neuron_cv`` = coefficient of
    variation of the row (output neuron) norms of dW.
    """
    M = dW.detach().double()
    fro = float(M.norm())
    out = {"rms": fro / math.sqrt(M.numel()), "rel_update": fro / max(float(W.double().norm()), 1e-300)}
    s = singular_values(M) if torch.isfinite(M).all() else torch.zeros(0)
    if s.numel() == 0 or s[0] <= 0:
        out.update(spectral_norm=float(s[0]) if s.numel() else math.nan, sv_cv=math.nan, effective_rank=0.0,
                   stable_rank=0.0, condition=math.nan, numerical_rank=0, neuron_cv=math.nan)
        return out
    kept = s[s > RANK_RTOL * s[0]]
    p = kept / kept.sum()
    rows = M.norm(dim=1)
    out.update(
        spectral_norm=float(s[0]),
        sv_cv=float(kept.std(unbiased=False) / kept.mean()),
        effective_rank=float(torch.exp(-(p * p.log()).sum())),
        stable_rank=float((kept ** 2).sum() / kept[0] ** 2),
        condition=float(kept[0] / kept[-1]),
        numerical_rank=int(kept.numel()),
        neuron_cv=float(rows.std(unbiased=False) / rows.mean()) if rows.mean() > 0 else math.nan,
    )
    return out


def weight_alpha(W: torch.Tensor) -> dict:
    """Power-law alpha of the ESD of ``W`` (eigenvalues of W^T W), as the spectra diagnostic fits it."""
    if not torch.isfinite(W).all():
        return {"alpha": math.nan, "n_evals": 0, "n_tail": 0, "status": "failed: the weights are not finite"}
    evals, _ = eigenvalues(as_matrix(W.detach()).cpu())
    fit = fit_power_law(evals)
    return {"alpha": fit.alpha, "n_evals": int(evals.size), "n_tail": fit.n_tail, "status": fit.status}


def _momentum_norm(state: dict) -> float:
    """Frobenius norm of the optimizer's momentum in its own convention: the EMA ``lerp(B, g, 1 - mu)``
    for this project's matrix optimizers and torch.optim.Muon, AdamW's ``exp_avg`` (an EMA with
    beta1), torch SGD's undamped sum ``mu B + g`` (1 / (1 - mu) times an EMA's size)."""
    for key in ("momentum_buffer", "exp_avg"):
        buf = state.get(key)
        if isinstance(buf, torch.Tensor):
            return float(buf.detach().double().norm())
    return math.nan


class TraceRecorder:
    """Records loss, per-matrix update geometry, weight alphas and phase times of a training run.

    ``matrices``: names of the parameters to track (default: every parameter of 2 or more
    dimensions). ``sink``: called with each record as it is made (e.g. a JSONL writer); all
    records are also kept in ``records``. Call :meth:`close` to remove the optimizer hooks.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, run: dict | None = None,
                 every: int = 50, alpha_every: int = 250, matrices: Iterable[str] | None = None,
                 sink: Callable[[dict], None] | None = None, run_id: str = "run"):
        if every < 1 or alpha_every < 1:
            raise OrthoscopeError(f"record intervals must be >= 1 step (every={every}, alpha_every={alpha_every}).")
        params = dict(model.named_parameters())
        names = [n for n, p in params.items() if p.ndim >= 2] if matrices is None else list(matrices)
        unknown = [n for n in names if n not in params]
        if unknown:
            raise OrthoscopeError(f"no parameter named {', '.join(unknown)} in the model.")
        self.optimizer = optimizer
        self.every, self.alpha_every = every, alpha_every
        self.run_id = run_id
        self.matrices = {n: params[n] for n in names}
        # The epsilon warning concerns only the normalising matrix optimizers, not AdamW or SGD.
        normalising = [o for o in (optimizer.inner if isinstance(optimizer, RoutedOptimizer) else [optimizer])
                       if isinstance(o, MatrixOptimizer)]
        owned = {id(q) for o in normalising for g in o.param_groups for q in g["params"]}
        self._normalised = {n for n, p in self.matrices.items() if id(p) in owned}
        self.records: list[dict] = []
        self._sink = sink
        self.step = 0
        self._before: dict[str, torch.Tensor] = {}
        self._times = {k: 0.0 for k in PHASES}
        self._timed_steps = 0
        self._loss_sum, self._loss_count = 0.0, 0
        self._t_step = 0.0
        self._train_s = 0.0
        self._emit({"type": "header", "format": TRACE_FORMAT, "version": TRACE_VERSION, "run_id": run_id,
                    "run": dict(run or {}), "every": every, "alpha_every": alpha_every,
                    "matrices": [{"name": n, "shape": list(p.shape)} for n, p in self.matrices.items()]})
        self._record_alphas()  # step 0: the initial weights, the baseline every later alpha moves from
        self._hooks = [optimizer.register_step_pre_hook(self._pre_step),
                       optimizer.register_step_post_hook(self._post_step)]

    # --- hooks ---------------------------------------------------------------------------------
    def _recording(self, step: int) -> bool:
        return step % self.every == 0

    def _pre_step(self, optimizer, args, kwargs) -> None:
        t0 = time.perf_counter()
        self.step += 1
        if self._recording(self.step):
            self._before = {n: as_matrix(p.detach()).clone() for n, p in self.matrices.items()}
        self._times["recorder"] += time.perf_counter() - t0
        self._t_step = time.perf_counter()

    def _post_step(self, optimizer, args, kwargs) -> None:
        t0 = time.perf_counter()
        self._times["optimizer"] += t0 - self._t_step
        self._timed_steps += 1
        if self._recording(self.step):
            self._record_updates()
        if self.step % self.alpha_every == 0:
            self._record_alphas()
        self._times["recorder"] += time.perf_counter() - t0

    def _record_updates(self) -> None:
        eps_line = MOMENTUM_WARNING_FACTOR * NS_EPS
        for name, p in self.matrices.items():
            # Measured on the CPU in float64 whatever device the model trains on.
            W0 = self._before.pop(name).cpu()
            M = as_matrix(p.detach()).cpu()
            row = {"type": "update", "run_id": self.run_id, "step": self.step, "matrix": name}
            dW = M - W0
            row.update(update_metrics(dW, W0))
            row["momentum_norm"] = _momentum_norm(state_of(self.optimizer, p))
            row["momentum_warning"] = name in self._normalised and bool(row["momentum_norm"] < eps_line)
            self._emit(row)

    def record_alphas(self) -> None:
        """Fit the weight alphas now (they are also fitted at step 0 and every ``alpha_every`` steps)."""
        t0 = time.perf_counter()
        self._record_alphas()
        self._times["recorder"] += time.perf_counter() - t0

    def _record_alphas(self) -> None:
        for name, p in self.matrices.items():
            self._emit({"type": "alpha", "run_id": self.run_id, "step": self.step, "matrix": name, **weight_alpha(p)})

    # --- the training loop's side -------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a block of the loop ("forward", "backward", or any other name) for this step."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - t0

    def log_loss(self, loss: float | torch.Tensor) -> None:
        """The training loss of the current step; every ``every`` steps their mean is recorded."""
        self._loss_sum += float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self._loss_count += 1
        if self._recording(self.step) and self._loss_count:
            steps = max(self._timed_steps, 1)
            # Training time excludes the recorder's own, so optimizers compare on wall time as if unrecorded.
            self._train_s += sum(v for k, v in self._times.items() if k != "recorder")
            self._emit({"type": "step", "run_id": self.run_id, "step": self.step,
                        "loss": self._loss_sum / self._loss_count, "train_s": self._train_s,
                        "time_ms": {k: 1e3 * v / steps for k, v in self._times.items()}})
            self._loss_sum, self._loss_count = 0.0, 0
            self._times = {k: 0.0 for k in self._times}
            self._timed_steps = 0

    def log(self, kind: str, **values) -> None:
        """Any other record for this step, e.g. ``log("eval", test_accuracy=0.97)``."""
        self._emit({"type": kind, "run_id": self.run_id, "step": self.step, **values})

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _emit(self, record: dict) -> None:
        self.records.append(record)
        if self._sink is not None:
            self._sink(record)


# --- the JSONL format --------------------------------------------------------------------------

REQUIRED = {
    "header": ("format", "version", "run_id", "run", "matrices"),
    "step": ("run_id", "step", "loss", "time_ms"),
    "update": ("run_id", "step", "matrix", *UPDATE_FIELDS),
    "alpha": ("run_id", "step", "matrix", "alpha"),
    "eval": ("run_id", "step"),
    "summary": ("run_id",),
}
# Field types, checked on every record that carries the field (the types and what a field means are
# in reports/SCHEMA.md). "num" is a number or null (NaN is written as null); "int" a whole number
# (never a bool); "count" a whole number >= 0. Fields not listed are free-form, as the format allows.
NUMERIC_FIELDS = (*UPDATE_FIELDS, "loss", "train_s", "alpha", "val_loss", "val_accuracy", "test_loss",
                  "test_accuracy", "lr", "lr_scale", "best_val_loss", "best_val_step", "test_loss_at_best_val",
                  "test_acc_at_best_val", "final_val_loss", "final_val_accuracy", "final_test_loss",
                  "final_test_accuracy", "final_train_loss", "ms_per_step", "ms_forward", "ms_backward",
                  "ms_optimizer", "ms_recorder", "steps_done", "adamw_lr", "weight_decay")
FIELD_TYPES: dict[str, str] = {
    **{k: "num" for k in NUMERIC_FIELDS},
    "type": "str", "run_id": "str", "format": "str", "matrix": "str", "status": "str", "optimizer": "str",
    "label": "str", "scope": "str",
    "version": "int", "step": "count", "every": "count", "alpha_every": "count", "n_evals": "count", "n_tail": "count",
    "seed": "int?", "momentum_warning": "bool", "diverged": "bool",
    "run": "dict", "time_ms": "dict", "matrices": "list",
}
# Inside a header's "run" (the benchmarks write these; the page and tables compute with them).
RUN_TYPES: dict[str, str] = {
    "optimizer": "str", "label": "str", "scope": "str", "bench": "str", "decay": "str", "lr": "num",
    "lr_scale": "num", "adamw_lr": "num", "weight_decay": "num", "seed": "int?", "splits": "dict", "routes": "list",
}
SPLIT_TYPES: dict[str, str] = {"train": "count", "val": "count", "test": "count", "unit": "str", "val_from": "str",
                               "val_fraction": "num", "split_seed": "int?"}
_TYPE_WORDS = {"num": "a number or null", "int": "int", "int?": "int or null", "count": "int >= 0", "str": "str",
               "bool": "bool", "dict": "dict", "list": "list"}


def _fits(value, kind: str) -> bool:
    if kind == "num":
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if kind in ("int", "int?", "count"):
        if value is None:
            return kind == "int?"
        return type(value) is int and (kind != "count" or 0 <= value <= MAX_TRACE_STEP)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def _wrong(record: dict, types: dict[str, str], where: str = "") -> list[str]:
    """``FIELD should be KIND`` for each listed field of ``record`` whose value is of another type."""
    return [f"{where}{k} should be {_TYPE_WORDS[t]} (got {_shown(record[k])})"
            for k, t in types.items() if k in record and not _fits(record[k], t)]


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_types(record: dict) -> list[str]:
    """Every typed field of a record, and the typed parts of a header's run and matrices."""
    problems = _wrong(record, FIELD_TYPES)
    if problems:
        return problems
    if isinstance(record.get("time_ms"), dict):
        problems += [f"time_ms[{k!r}] should be a number or null (got {_shown(v)})"
                     for k, v in record["time_ms"].items() if not _fits(v, "num")]
    if record.get("type") == "header":
        run = record.get("run", {})
        problems += _wrong(run, RUN_TYPES, "run.")
        if isinstance(run.get("splits"), dict):
            problems += _wrong(run["splits"], SPLIT_TYPES, "run.splits.")
        for i, route in enumerate(run.get("routes") or []):
            if not isinstance(route, dict):
                problems.append(f"run.routes[{i}] should be dict (got {_shown(route)})")
                break
        for i, m in enumerate(record.get("matrices", [])):
            if not (isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("shape"), list)
                    and all(_fits(n, "count") for n in m["shape"])):
                problems.append(f"matrices[{i}] should be an object with a name (str) and a shape (list of int >= 0)"
                                f" (got {_shown(m)})")
                break
    return problems


def record_problems(record) -> list[str]:
    """What is wrong with one trace record (already in the current version's field names), as
    phrases; empty when it fits the format. Reports reuse this for their ``records``."""
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        return ['expected a JSON object with a "type" string']
    kind = record["type"]
    if kind not in REQUIRED:
        return [f"unknown record type {_shown(kind)}"]
    wrong = _check_types(record)
    if wrong:
        return [f"in a {kind!r} record, " + "; ".join(wrong[:3])]
    missing = [k for k in REQUIRED[kind] if k not in record]
    return [f"a {kind!r} record lacks {', '.join(missing)}"] if missing else []


def dumps(record: dict) -> str:
    """One JSONL line (NaN and infinity written as null, numpy values as plain numbers)."""
    return json.dumps(jsonable(record), separators=(",", ":"))


def write_trace(records: Iterable[dict], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(dumps(r) + "\n")


def parse_trace(text: str, source: str = "trace") -> list[dict]:
    """Records of a JSONL trace, checked line by line; errors name the line and what is wrong.

    Each line is parsed with ``models.limits.loads_json`` (bounded nesting, integer digits and
    lengths); required fields must be present and every typed field (``FIELD_TYPES``) of its
    type, so that nothing downstream meets a string where it computes with a number. Optional
    fields a loop may leave out are filled in (:func:`_complete`): a step's ``train_s`` from its
    ``time_ms``, as the recorder computes it.
    """
    records: list[dict] = []
    headers: dict[str, int] = {}
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads_json(line, f"{source}, line {number}")
        except OrthoscopeError as exc:
            message = str(exc)
            if " is not valid JSON (" in message:
                message = message.replace(f"{source}, line {number} is not valid JSON (", f"{source}, line {number}: "
                                          "not valid JSON (", 1)
                last = number == len(lines) or not any(l.strip() for l in lines[number:])
                if last and not text.endswith("\n"):
                    message += " It is the last line and ends early: the file looks truncated."
            raise OrthoscopeError(message) from None
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            raise OrthoscopeError(f"{source}, line {number}: expected a JSON object with a \"type\" string.")
        kind = record["type"]
        if kind not in REQUIRED:
            raise OrthoscopeError(f"{source}, line {number}: unknown record type {_shown(kind)}; "
                                  f"known: {', '.join(REQUIRED)}.")
        wrong = _check_types(record)
        if wrong:
            raise OrthoscopeError(f"{source}, line {number}: in a {kind!r} record, " + "; ".join(wrong[:3]) + ".")
        if kind == "update" and headers.get(record.get("run_id")) == 1:
            record = _upgrade_update(record)
            wrong = _check_types(record)  # orth_error, now sv_cv
            if wrong:
                raise OrthoscopeError(f"{source}, line {number}: in a {kind!r} record, " + "; ".join(wrong[:3]) + ".")
        missing = [k for k in REQUIRED[kind] if k not in record]
        if missing:
            raise OrthoscopeError(f"{source}, line {number}: a {kind!r} record lacks {', '.join(missing)}.")
        if kind == "header":
            if record["format"] != TRACE_FORMAT:
                raise OrthoscopeError(f"{source}, line {number}: format is {_shown(record['format'])}, not {TRACE_FORMAT!r}.")
            if record["version"] not in READABLE_VERSIONS:
                raise OrthoscopeError(f"{source}, line {number}: trace version {record['version']!r}; "
                                      f"this Orthoscope reads versions {', '.join(map(str, READABLE_VERSIONS))}.")
            headers[record["run_id"]] = record["version"]
        elif record["run_id"] not in headers:
            raise OrthoscopeError(f"{source}, line {number}: run {_shown(record['run_id'])} has no header line before it.")
        records.append(record)
    if not records:
        raise OrthoscopeError(f"{source} holds no records.")
    return _complete(records)


def _complete(records: list[dict]) -> list[dict]:
    """Fill in the optional fields reports/SCHEMA.md lists with "also" that a loop may not write.

    ``train_s`` (cumulative training time without the recorder's) is what the recorder adds up:
    each step record's ``time_ms`` are mean milliseconds per step since the run's previous step
    record, so the steps in between times their sum, recorder excluded, is the time they took.
    """
    elapsed: dict[str, tuple[int, float]] = {}
    out = []
    for r in records:
        if r["type"] == "step":
            last_step, total = elapsed.get(r["run_id"], (0, 0.0))
            if "train_s" not in r:
                per_step = sum(v for k, v in r["time_ms"].items() if k != "recorder" and v is not None)
                total += max(r["step"] - last_step, 0) * per_step / 1e3
                r = {**r, "train_s": total}
            elif r.get("train_s") is not None:
                total = float(r["train_s"])
            elapsed[r["run_id"]] = (r["step"], total)
        out.append(r)
    return out


def _upgrade_update(record: dict) -> dict:
    if "orth_error" in record and "sv_cv" not in record:
        record = {("sv_cv" if k == "orth_error" else k): v for k, v in record.items()}
    return record


def upgrade_records(records: list[dict]) -> list[dict]:
    """Records of any readable version in the current version's field names (a new list)."""
    versions = {r["run_id"]: r.get("version") for r in records if r.get("type") == "header"}
    return [_upgrade_update(r) if r.get("type") == "update" and versions.get(r.get("run_id")) == 1 else r
            for r in records]


def parse_trace_bytes(data: bytes, name: str) -> list[dict]:
    """Records of an uploaded or saved trace file's bytes, with its size and encoding checked."""
    if len(data) > MAX_TRACE_BYTES:
        raise OrthoscopeError(f"{name} is {len(data) / 2**20:.0f} MB; traces are limited to {MAX_TRACE_BYTES // 2**20} MB.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OrthoscopeError(f"{name} is not UTF-8 text; a trace is JSON lines.") from None
    return parse_trace(text, name)


def read_trace(path: str | Path) -> list[dict]:
    """A trace file's records; the path is ``stat``-ed first (a FIFO or device is never opened)."""
    path = Path(path)
    size = check_regular_file(path, path.name).st_size
    if size > MAX_TRACE_BYTES:
        raise OrthoscopeError(f"{path.name} is {size / 2**20:.0f} MB; traces are limited to {MAX_TRACE_BYTES // 2**20} MB.")
    return parse_trace_bytes(path.read_bytes(), path.name)
