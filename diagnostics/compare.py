"""Compare: checkpoints and models side by side, what a fine-tune changed, and whether fine-tunes interfere.

Three kinds of rows, each from a pure function over model specs; the sweep engine
(diagnostics/sweep.py) runs them as tasks, stores the rows and builds a :class:`CompareResult`.

* ``checkpoints`` and ``layers`` (:func:`checkpoint_rows`): the spectra diagnostic of every checkpoint
  (alpha, its interval, trust and phase per layer, see diagnostics/spectra.py) and the overview's counts.
* ``deltas`` (:func:`delta_rows`): for a base and a derived model, the update ``dW = W_derived - W_base``
  of every layer the two share (same name and shape), described by :func:`delta_geometry`: its size
  relative to the base, its stable and effective rank, the power law of its ESD, and the principal
  angles between its top singular subspaces and the base's. Angles near 0 say the update lives in
  the base's dominant directions, angles near 90 degrees that it lies orthogonal to them.
* ``overlaps`` (:func:`overlap_rows`): for several models derived from one base, every pair's task
  vectors ``tau = W_derived - W_base`` (Ilharco et al., "Editing models with task arithmetic",
  ICLR 2023) compared layer by layer with :func:`task_vector_overlap`: their cosine and the overlap
  of their top singular subspaces, beside the overlap random subspaces would have.

Matrices are read in their stored ``(out, in)`` orientation: "left" singular vectors span the
output space (N = out), "right" ones the input space. A convolution kernel ``(out, in, k...)`` is
read as the ``out x (in k...)`` matrix. Everything is computed in float64.

This module never imports streamlit or plotly.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import numpy as np
import pandas as pd
import torch
from scipy import linalg

import models
from diagnostics import overview
from diagnostics import spectra
from diagnostics.directions import effective_rank, stable_rank
from diagnostics.power_law import fit_power_law
from diagnostics.result import Params, Result
from models.checkpoints import Checkpoint
from models.errors import OrthoscopeError

# Singular values of dW at or below this share of the largest count as zero, whatever the storage.
RELATIVE_FLOOR = 1e-12

PHASE_COLUMNS = tuple(f"n_{phase}" for phase in spectra.PHASES)
CHECKPOINT_COLUMNS = (
    "checkpoint", "step", "fingerprint", "status", "reason", "layers", "trusted_layers", "mean_trusted_alpha",
    "mean_alpha", *PHASE_COLUMNS, "num_params", "tensors", "nonfinite_tensors", "seconds", "failed",
)
# The spectra columns each layer row carries (diagnostics/spectra.py describes them).
_SPECTRA_COLUMNS = ("alpha", "alpha_ci_low", "alpha_ci_high", "pl_trust", "phase", "stable_rank",
                    "log_spectral_norm", "frobenius_norm_sq", "num_evals")
LAYER_COLUMNS = ("checkpoint", "step", "fingerprint", "name", "kind", "block", *_SPECTRA_COLUMNS)
GEOMETRY_COLUMNS = (
    "rel_size", "delta_frobenius", "stable_rank", "effective_rank", "delta_rank", "k_eff",
    "angle_left_mean_deg", "angle_left_min_deg", "overlap_left", "overlap_left_null",
    "angle_right_mean_deg", "angle_right_min_deg", "overlap_right", "overlap_right_null",
    "delta_alpha", "delta_phase", "delta_pl_trust", "delta_num_evals", "delta_evals", "reason",
)
DELTA_COLUMNS = ("base", "derived", "step", "name", *GEOMETRY_COLUMNS, "base_fingerprint", "derived_fingerprint")
OVERLAP_COLUMNS = ("base", "a", "b", "name", "cosine", "subspace_overlap", "null", "k_eff", "reason",
                   "base_fingerprint", "a_fingerprint", "b_fingerprint")


# ---------------------------------------------------------------------------------------
# Parameters and result


@dataclass
class CompareParams(Params):
    """Options of a comparison.

    k: dimension of the top singular subspaces compared (principal angles and overlaps).
    min_evals: layers with fewer eigenvalues are not fitted (the spectra diagnostic's min_evals;
    the same rule for the ESD of dW). Every other spectra option keeps its default.
    seed: the spectra diagnostic's seed.
    max_delta_evals_kept: at most this many eigenvalues of each dW are kept for charts (quantiles).
    """

    k: int = 8
    min_evals: int = 8
    seed: int = 0
    max_delta_evals_kept: int = 200

    def __post_init__(self):
        for name in ("k", "min_evals", "seed", "max_delta_evals_kept"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise OrthoscopeError(f"{name} must be a whole number, not {value!r}.")
        if self.k < 1:
            raise OrthoscopeError("k must be at least 1 singular direction.")
        if self.min_evals < 2:
            raise OrthoscopeError("min_evals must be at least 2.")
        if self.seed < 0:
            raise OrthoscopeError("seed must not be negative.")
        if self.max_delta_evals_kept < 2:
            raise OrthoscopeError("max_delta_evals_kept must be at least 2.")


    def spectra_params(self) -> spectra.SpectraParams:
        return spectra.SpectraParams(min_evals=self.min_evals, seed=self.seed)


@dataclass
class CompareResult(Result):
    """The rows of one comparison.

    ``checkpoints``: one row per member (:data:`CHECKPOINT_COLUMNS`; a member that failed has
    status "failed", its reason, failed = 1 and NaN metrics). ``layers``: one row per member and
    analysed matrix (:data:`LAYER_COLUMNS`). ``deltas``: one row per derived member and layer of
    the base (:data:`DELTA_COLUMNS`), empty without a base. ``overlaps``: one row per pair of
    derived members and layer (:data:`OVERLAP_COLUMNS`), empty with fewer than two.
    ``summary``: counts (checkpoints, ok, failed, and what the sweep adds: computed, reused,
    executor, workers).
    """

    diagnostic: ClassVar[str] = "compare"
    checkpoints: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    deltas: list = field(default_factory=list)
    overlaps: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.checkpoints, columns=list(CHECKPOINT_COLUMNS))

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"checkpoints": self.to_frame(), "layers": pd.DataFrame(self.layers, columns=list(LAYER_COLUMNS))}
        if self.deltas:
            out["deltas"] = pd.DataFrame(self.deltas, columns=list(DELTA_COLUMNS))
        if self.overlaps:
            out["overlaps"] = pd.DataFrame(self.overlaps, columns=list(OVERLAP_COLUMNS))
        return out


def make_result(
    checkpoints: list[dict],
    layers: list[dict],
    deltas: list[dict],
    overlaps: list[dict],
    params: CompareParams,
    *,
    folder: str | None = None,
    summary: dict | None = None,
    timings: dict | None = None,
) -> CompareResult:
    """A :class:`CompareResult` from rows. Its name is "N checkpoints of FOLDER" for a series
    (``folder``) and "N models" for a list; its fingerprint is the sha256 of the members' sorted
    fingerprints. ``summary`` adds to the counts of checkpoints, ok and failed."""
    n = len(checkpoints)
    failed = sum(1 for row in checkpoints if row.get("failed"))
    counts = {"checkpoints": n, "ok": n - failed, "failed": failed}
    members = sorted(str(row.get("fingerprint") or "") for row in checkpoints)
    name = f"{n} checkpoint{'s' * (n != 1)} of {folder}" if folder else f"{n} model{'s' * (n != 1)}"
    return CompareResult(
        model_name=name,
        fingerprint=hashlib.sha256("\n".join(members).encode()).hexdigest(),
        params=params.to_dict(),
        timings=dict(timings or {}),
        checkpoints=list(checkpoints),
        layers=list(layers),
        deltas=list(deltas),
        overlaps=list(overlaps),
        summary={**counts, **(summary or {})},
    )


# ---------------------------------------------------------------------------------------
# Geometry of one update


def _matrix64(W) -> tuple[np.ndarray, float]:
    """``W`` as a float64 ``out x in`` array (a conv kernel flattened past its first axis) and the
    unit roundoff of the type it was stored in (0 for integers, which are exact)."""
    if isinstance(W, torch.Tensor):
        t = W.detach().cpu()
        roundoff = torch.finfo(t.dtype).eps / 2 if t.is_floating_point() else 0.0
        arr = t.to(torch.float64).numpy()
    else:
        arr = np.asarray(W)
        roundoff = float(np.finfo(arr.dtype).eps) / 2 if np.issubdtype(arr.dtype, np.floating) else 0.0
        arr = arr.astype(np.float64)
    if arr.ndim < 2:
        raise OrthoscopeError(f"a weight matrix is needed; got a {arr.ndim}-D array.")
    return arr.reshape(arr.shape[0], -1), roundoff


def _svd(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``A = U diag(s) V^T`` in float64 (LAPACK gesdd) on the tall orientation, which is
    several times faster for a wide matrix; returns ``U, s, V`` (s descending)."""
    if A.shape[0] >= A.shape[1]:
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        return U, s, Vt.T
    U, s, Vt = np.linalg.svd(A.T, full_matrices=False)
    return Vt.T, s, U


def _rounding_floor(W: np.ndarray, roundoff: float) -> float:
    """Singular value that rounding ``W`` to its stored type can reach in a difference.

    Storing a weight rounds it by up to ``u |w|`` (``u`` the unit roundoff), so ``W_derived - W_base``
    carries a noise matrix with elements of r.m.s. about ``u rms(W) / sqrt(3)``; the largest singular
    value of such a matrix is about ``(sqrt N + sqrt M)`` times that (Bai & Yin, Ann. Probab. 1993).
    The floor ``u ||W||_F (sqrt N + sqrt M) / sqrt(N M)`` keeps a margin of sqrt(3) above it, so a
    planted rank-r update stored in float32 still has rank r.
    """
    N, M = W.shape
    return roundoff * float(np.linalg.norm(W)) * (math.sqrt(N) + math.sqrt(M)) / math.sqrt(N * M)


def principal_angles_deg(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Principal angles between the column spaces of ``A`` (N x p) and ``B`` (N x q), ascending, in degrees.

    ``theta_i = arccos sigma_i(Q_A^T Q_B)`` for orthonormal bases ``Q_A, Q_B``, min(p, q) of them
    (Björck & Golub, "Numerical methods for computing angles between linear subspaces", Math.
    Comp. 27, 1973), from ``scipy.linalg.subspace_angles``, which takes small angles from the
    sines for accuracy. Empty when either space is.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.shape[0] != B.shape[0]:
        raise OrthoscopeError(f"subspaces of different spaces: {A.shape[0]} and {B.shape[0]} rows.")
    if A.shape[1] == 0 or B.shape[1] == 0:
        return np.empty(0)
    return np.sort(np.degrees(linalg.subspace_angles(A, B)))


def _subspace_stats(base: np.ndarray, update: np.ndarray, N: int) -> tuple[float, float, float, float]:
    """Mean and smallest principal angle (degrees) between two orthonormal bases of R^N, the mean
    cos^2 of the angles (the overlap) and its null. For a uniformly random p-dimensional subspace
    against a fixed q-dimensional one, ``E[sum cos^2 theta_i] = E[||Q_q^T Q_p||_F^2] = p q / N``,
    so the mean over the min(p, q) angles has expectation ``max(p, q) / N``."""
    angles = principal_angles_deg(base, update)
    if angles.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    overlap = float(np.mean(np.cos(np.radians(angles)) ** 2))
    null = max(base.shape[1], update.shape[1]) / N
    return float(angles.mean()), float(angles[0]), overlap, null


def _nan_geometry(reason: str, **known) -> dict:
    row = {c: math.nan for c in GEOMETRY_COLUMNS}
    row.update(delta_phase="", delta_pl_trust=False, delta_evals=[], reason=reason, **known)
    return row


def delta_geometry(W_base, W_derived, k: int, *, min_evals: int = 8, max_evals_kept: int = 200) -> dict:
    """How the update ``dW = W_derived - W_base`` of one layer sits against the base (float64).

    With ``s_1 >= s_2 >= ...`` the singular values of dW (``dW = U diag(s) V^T``) and those of the
    base ``W_base = U_b diag(s_b) V_b^T``:

    * ``rel_size = ||dW||_F / ||W_base||_F``, ``delta_frobenius = ||dW||_F``.
    * ``stable_rank = sum s_i^2 / s_1^2`` (Rudelson & Vershynin, J. ACM 54, 2007).
    * ``effective_rank = exp(-sum p_i ln p_i)``, ``p_i = s_i / sum_j s_j`` over the resolvable
      singular values (Roy & Vetterli, "The effective rank", EUSIPCO 2007); 1 for rank one, r for
      r equal singular values.
    * ``delta_rank``: resolvable singular values, ``s_i > max(1e-12 s_1, floor)``, where ``floor``
      is what rounding the derived weights to their stored type can produce
      (:func:`_rounding_floor`); below it a difference of float32 weights is rounding noise.
    * Left subspaces: the top ``k_b = min(k, rank W_base)`` left singular vectors of the base and the
      top ``k_d = min(k, delta_rank)`` of dW; ``k_eff = min(k_b, k_d)`` principal angles between them
      (:func:`principal_angles_deg`): ``angle_left_mean_deg``, ``angle_left_min_deg``, and
      ``overlap_left``, the mean cos^2 of the angles (1: dW's top directions lie in the base's top-k
      subspace; 0: orthogonal to it), beside ``overlap_left_null = max(k_b, k_d) / N``, its
      expectation for a random subspace. The same on the right (input side, dimension M).
    * ESD of dW: ``lambda_i = s_i^2``. ``delta_alpha``: the power-law fit of diagnostics.power_law
      (Clauset et al. 2009) to the eigenvalues above the rounding floor (the floor replaces spectra's
      fixed 1e-5, since updates are often that small); ``delta_phase`` and ``delta_pl_trust``: the
      spectra diagnostic's phase and trust rules (fit_mp_bulk, classify_phase, trust_verdict) on all
      ``delta_num_evals = min(N, M)`` eigenvalues; fewer than ``min_evals`` above the floor (a
      low-rank update): "too-small", no alpha.
      ``delta_evals``: the resolvable eigenvalues, ascending, at most ``max_evals_kept`` (quantiles).

    Degenerate layers give NaN with a ``reason``: dW = 0 ("no change"), a base of zeros, NaN or Inf.
    """
    base, _ = _matrix64(W_base)
    derived, roundoff = _matrix64(W_derived)
    if base.shape != derived.shape:
        raise OrthoscopeError(f"the two matrices differ in shape: {base.shape} and {derived.shape}.")
    N, M = base.shape
    if not (np.isfinite(base).all() and np.isfinite(derived).all()):
        return _nan_geometry("contains NaN or Inf")
    dW = derived - base
    frob = float(np.linalg.norm(dW))
    base_norm = float(np.linalg.norm(base))
    rel_size = frob / base_norm if base_norm > 0 else math.nan
    if frob == 0.0:
        return _nan_geometry("no change: dW = 0", rel_size=rel_size, delta_frobenius=0.0, delta_rank=0, k_eff=0,
                             delta_num_evals=min(N, M))
    U, s, V = _svd(dW)
    tol = max(RELATIVE_FLOOR * float(s[0]), _rounding_floor(derived, roundoff))
    resolvable = s[s > tol]
    rank = int(resolvable.size)
    row = {
        "rel_size": rel_size, "delta_frobenius": frob,
        "stable_rank": stable_rank(torch.from_numpy(s)), "effective_rank": effective_rank(torch.from_numpy(resolvable)),
        "delta_rank": rank,
    }
    if base_norm > 0:
        Ub, sb, Vb = _svd(base)
        k_base = min(k, int(np.count_nonzero(sb > sb[0] * max(N, M) * np.finfo(np.float64).eps)))
        k_delta = min(k, rank)
        left = _subspace_stats(Ub[:, :k_base], U[:, :k_delta], N)
        right = _subspace_stats(Vb[:, :k_base], V[:, :k_delta], M)
        row["k_eff"] = min(k_base, k_delta)
        reason = ""
    else:
        left = right = (math.nan,) * 4
        row["k_eff"] = 0
        reason = "the base matrix is all zeros: no subspace to compare with"
    for side, stats in (("left", left), ("right", right)):
        row.update(zip((f"angle_{side}_mean_deg", f"angle_{side}_min_deg", f"overlap_{side}", f"overlap_{side}_null"),
                       stats))
    row.update(_delta_esd(s, N, M, tol, min_evals))
    row["delta_evals"] = spectra._subsample(resolvable**2, max_evals_kept)[0]
    row["reason"] = reason
    return {c: row[c] for c in GEOMETRY_COLUMNS}


def _delta_esd(s: np.ndarray, N: int, M: int, tol: float, min_evals: int) -> dict:
    """Power law, phase and trust of the ESD of dW, by the spectra diagnostic's rules."""
    evals = np.sort(s**2)
    n_tall, m_tall = max(N, M), min(N, M)
    out = {"delta_num_evals": int(evals.size), "delta_alpha": math.nan, "delta_phase": "too-small",
           "delta_pl_trust": False}
    # A rank-r update has r eigenvalues above the floor and a bulk of rounding noise: too few to fit when r is small.
    if np.count_nonzero(evals > tol * tol) < min_evals:
        return out
    fit = fit_power_law(evals, thresh=tol * tol)
    bulk = spectra.fit_mp_bulk(evals, n_tall, m_tall)
    phase, _ = spectra.classify_phase(evals, fit, bulk)
    trust, _ = spectra.trust_verdict(phase, fit, bulk["num_above_mp_edge"], None)
    out.update(delta_alpha=fit.alpha if fit.ok else math.nan, delta_phase=phase, delta_pl_trust=bool(trust))
    return out


# ---------------------------------------------------------------------------------------
# Task vectors


@dataclass(frozen=True)
class _TaskVector:
    """What the overlap of one task vector needs: the matrix, its norm and its top left singular vectors."""

    matrix: np.ndarray
    norm: float
    left: np.ndarray  # N x min(k, rank)

    @classmethod
    def of(cls, dW: np.ndarray, k: int, floor: float = 0.0) -> "_TaskVector":
        norm = float(np.linalg.norm(dW))
        if norm == 0.0:
            return cls(dW, 0.0, dW[:, :0])
        U, s, _ = _svd(dW)
        rank = int(np.count_nonzero(s > max(RELATIVE_FLOOR * float(s[0]), floor)))
        return cls(dW, norm, U[:, : min(k, rank)])


def _overlap(a: _TaskVector, b: _TaskVector) -> dict:
    if a.norm == 0.0 or b.norm == 0.0:
        which = "both are" if a.norm == b.norm else ("the first is" if a.norm == 0.0 else "the second is")
        return {"cosine": math.nan, "subspace_overlap": math.nan, "null": math.nan, "k_eff": 0,
                "reason": f"no change: {which} 0"}
    cosine = float(np.vdot(a.matrix, b.matrix)) / (a.norm * b.norm)
    _, _, overlap, null = _subspace_stats(a.left, b.left, a.matrix.shape[0])
    return {"cosine": cosine, "subspace_overlap": overlap, "null": null,
            "k_eff": min(a.left.shape[1], b.left.shape[1]), "reason": ""}


def task_vector_overlap(dW_a, dW_b, k: int) -> dict:
    """How much two task vectors of one layer (``tau = W_derived - W_base``, Ilharco et al. 2023) overlap.

    ``cosine = <tau_a, tau_b> / (||tau_a||_F ||tau_b||_F)`` over the flattened matrices (Ilharco et al.
    find fine-tunes on different tasks nearly orthogonal by this measure); ``subspace_overlap``: the
    mean cos^2 of the principal angles (Björck & Golub 1973) between the top ``min(k, rank)`` left
    singular subspaces of the two (1: the same output directions, 0: orthogonal ones), beside
    ``null = max(k_a, k_b) / N``, its expectation for random subspaces; ``k_eff``: the number of
    angles. A zero task vector gives NaN with a ``reason``. Computed in float64.
    """
    a, _ = _matrix64(dW_a)
    b, _ = _matrix64(dW_b)
    if a.shape != b.shape:
        raise OrthoscopeError(f"the two task vectors differ in shape: {a.shape} and {b.shape}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return {"cosine": math.nan, "subspace_overlap": math.nan, "null": math.nan, "k_eff": 0,
                "reason": "contains NaN or Inf"}
    return _overlap(_TaskVector.of(a, k), _TaskVector.of(b, k))


# ---------------------------------------------------------------------------------------
# Rows from checkpoints


def _nan_if_none(value):
    return math.nan if value is None else value


def _mean(values: list) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def checkpoint_rows(ckpt: Checkpoint, params: CompareParams) -> tuple[dict, list[dict]]:
    """The checkpoint's row and its layer rows: ``models.load(ckpt.spec)``, then the overview (for
    the counts of parameters, tensors and tensors with NaN or Inf) and the spectra diagnostic with
    ``params.spectra_params()``. ``mean_trusted_alpha`` averages alpha over the layers whose power
    law is trusted (NaN when none is), ``mean_alpha`` over every fitted layer; ``n_<phase>`` counts
    layers per phase, skipped layers with too few eigenvalues as too-small. Errors the user can
    cause (a missing or corrupt checkpoint) raise OrthoscopeError; :func:`failed_checkpoint_row`
    records them."""
    started = time.perf_counter()
    handle = models.load(ckpt.spec)
    ov = overview.run(handle)
    sp = spectra.run(handle, params.spectra_params())
    phases = [r["phase"] for r in sp.layers] + [s["phase"] for s in sp.skipped if s.get("phase")]
    row = {
        "checkpoint": ckpt.name, "step": ckpt.step, "fingerprint": handle.fingerprint, "status": "ok", "reason": "",
        "layers": len(sp.layers), "trusted_layers": sum(1 for r in sp.layers if r["pl_trust"]),
        "mean_trusted_alpha": _mean([r["alpha"] for r in sp.layers if r["pl_trust"]]),
        "mean_alpha": _mean([r["alpha"] for r in sp.layers]),
        **{f"n_{p}": phases.count(p) for p in spectra.PHASES},
        "num_params": ov.num_params, "tensors": len(ov.tensors),
        "nonfinite_tensors": sum(1 for t in ov.tensors if t["status"] == overview.NOT_FINITE),
        "seconds": time.perf_counter() - started, "failed": 0,
    }
    layers = [
        {"checkpoint": ckpt.name, "step": ckpt.step, "fingerprint": handle.fingerprint, "name": r["name"],
         "kind": r["kind"], "block": r["block"],
         **{c: _nan_if_none(r.get(c)) for c in _SPECTRA_COLUMNS}}
        for r in sp.layers
    ]
    return row, layers


def failed_checkpoint_row(ckpt: Checkpoint, reason: str, fingerprint: str = "") -> dict:
    """The row of a checkpoint that could not be analysed: status "failed", the reason, failed = 1,
    NaN metrics."""
    row = {c: math.nan for c in CHECKPOINT_COLUMNS}
    row.update(checkpoint=ckpt.name, step=ckpt.step, fingerprint=fingerprint, status="failed", reason=reason,
               failed=1)
    return row


def _shapes(handle) -> dict[str, tuple[int, ...]]:
    """Every analysable matrix's shape, in the handle's order, from headers only."""
    return {m.name: tuple(m.shape) for m in handle.planned_matrices()}


def _aligned(handles: list, members: dict[str, list[int]]) -> Iterator[tuple[str, dict[int, torch.Tensor]]]:
    """``(name, {handle index: tensor})`` for each name of ``members`` (in its order) from the handles
    it lists, each handle streamed once. Handles of one architecture yield their matrices in the same
    order, so a handle's look-ahead buffer stays empty; a different order only makes it hold more."""
    iters = [h.iter_matrices({n for n, idx in members.items() if i in idx}) for i, h in enumerate(handles)]
    buffers: list[dict[str, torch.Tensor]] = [{} for _ in handles]
    for name, indices in members.items():
        tensors = {}
        for i in indices:
            while name not in buffers[i]:
                mat = next(iters[i], None)
                if mat is None:
                    raise OrthoscopeError(f"{handles[i].name}: the matrix {name} could not be read.")
                buffers[i][mat.name] = mat.tensor
            tensors[i] = buffers[i].pop(name)
        yield name, tensors


def _unmatched(name: str, base_shape: tuple | None, other_shape: tuple | None, other: str) -> str:
    """Why a layer has no delta: it is in one model only, or its shapes differ."""
    if other_shape is None:
        return f"only in base: {other} has no {name}"
    if base_shape is None:
        return "only in derived"
    return f"shape differs: {'x'.join(map(str, base_shape))} in base, {'x'.join(map(str, other_shape))} in {other}"


def delta_rows(base: Checkpoint, derived: Checkpoint, params: CompareParams) -> list[dict]:
    """One row per layer of the base or the derived model (:data:`DELTA_COLUMNS`): the
    :func:`delta_geometry` of each layer the two share with the same shape, and for the others a
    row with NaN metrics and the reason ("only in base", "only in derived", "shape differs")."""
    hb, hd = models.load(base.spec), models.load(derived.spec)
    shapes_b, shapes_d = _shapes(hb), _shapes(hd)
    ids = {"base": base.name, "derived": derived.name, "step": derived.step,
           "base_fingerprint": hb.fingerprint, "derived_fingerprint": hd.fingerprint}
    matched = {n: [0, 1] for n, shape in shapes_b.items() if shapes_d.get(n) == shape}
    geometry = {
        name: delta_geometry(t[0], t[1], params.k, min_evals=params.min_evals,
                             max_evals_kept=params.max_delta_evals_kept)
        for name, t in _aligned([hb, hd], matched)
    }
    rows = []
    for name in [*shapes_b, *(n for n in shapes_d if n not in shapes_b)]:
        if name in geometry:
            cols = geometry[name]
        else:
            cols = _nan_geometry(_unmatched(name, shapes_b.get(name), shapes_d.get(name), derived.name))
        rows.append({**ids, "name": name, **cols})
    return [{c: row[c] for c in DELTA_COLUMNS} for row in rows]


def overlap_rows(base: Checkpoint, derived: list[Checkpoint], params: CompareParams) -> list[dict]:
    """Task-vector overlaps (:func:`task_vector_overlap`) for every unordered pair (a, b) of the
    derived models and every layer of the base (:data:`OVERLAP_COLUMNS`); a pair in which one model
    lacks the layer, or has it in another shape, gets a row with NaN and the reason. Layers that are
    not in the base have no task vector (the deltas table lists them). Each task vector's SVD is
    computed once per layer, not once per pair. Empty with fewer than two derived models."""
    if len(derived) < 2:
        return []
    handles = [models.load(base.spec)] + [models.load(d.spec) for d in derived]
    shapes = [_shapes(h) for h in handles]
    members = {n: [0] + [i for i in range(1, len(handles)) if shapes[i].get(n) == shape]
               for n, shape in shapes[0].items()}
    rows = []
    for name, tensors in _aligned(handles, members):
        base_matrix, _ = _matrix64(tensors.pop(0))
        # A task vector, or why the model has none for this layer.
        vectors: dict[int, _TaskVector | str] = {}
        for i in range(1, len(handles)):
            if i not in tensors:
                vectors[i] = _unmatched(name, shapes[0][name], shapes[i].get(name), derived[i - 1].name)
                continue
            W, roundoff = _matrix64(tensors.pop(i))
            dW = W - base_matrix
            vectors[i] = (_TaskVector.of(dW, params.k, _rounding_floor(W, roundoff)) if np.isfinite(dW).all()
                          else f"{derived[i - 1].name} contains NaN or Inf")
        for i, j in itertools.combinations(range(1, len(handles)), 2):
            reasons = [v for v in (vectors[i], vectors[j]) if isinstance(v, str)]
            if reasons:
                cols = {"cosine": math.nan, "subspace_overlap": math.nan, "null": math.nan, "k_eff": 0,
                        "reason": reasons[0]}
            else:
                cols = _overlap(vectors[i], vectors[j])
            rows.append({"base": base.name, "a": derived[i - 1].name, "b": derived[j - 1].name, "name": name, **cols,
                         "base_fingerprint": handles[0].fingerprint, "a_fingerprint": handles[i].fingerprint,
                         "b_fingerprint": handles[j].fingerprint})
    return [{c: row[c] for c in OVERLAP_COLUMNS} for row in rows]
