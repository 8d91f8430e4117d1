"""Embedding alignment: maps that carry one model's embedding space onto another's.

Rows of ``X`` (model A) and ``Y`` (model B) embed the same items. A map ``f(x) = (x - mu_x) W +
mu_y`` is fitted on a few paired *anchors* and judged on a held-out split that never contains
them. Independently trained encoders are often related by an orthogonal ``W`` up to a mean
shift, and one map fitted on one modality carries over to the other (Canonicalizing Multimodal
Contrastive Representation Learning, 2026). The maps, with ``Xc``/``Yc`` the anchors centred on
their means (uncentred maps use the raw anchors and ``mu = 0``):

* ``procrustes``: ``W = U V^T`` from ``Xc^T Yc = U S V^T`` (Schönemann 1966), the orthogonal
  ``W`` minimising ``||Xc W - Yc||_F``. ``proper`` forces ``det W = +1`` by flipping the last
  singular pair (Kabsch 1976); ``scale`` multiplies by ``s = tr(S') / ||Xc||_F^2`` (Umeyama
  1991). ``procrustes_uncentred`` is the same on the raw anchors. With fewer anchors than
  dimensions the map is not unique off the anchors' span; a free sign is spent on ``det = +1``.
* ``lstsq``: ``W = Xc^+ Yc``, the minimum-norm least-squares map (an affine map, since centred).
* ``ridge``: ``W = (Xc^T Xc + N a I)^-1 Xc^T Yc``.
* ``relaxed``: ``W = (Xc^T Xc + N g I)^-1 (Xc^T Yc + N g R)`` with ``R`` the Procrustes map: the
  exact minimiser of ``||Xc W - Yc||^2 / N + g ||W - R||^2``, least squares at ``g -> 0``
  (with fewer anchors than dimensions: the least-squares map closest to ``R``), ``R`` at
  ``g -> inf``.
* ``penalised``: ``argmin ||Xc W - Yc||^2 / N + l ||W^T W - I||_F^2``, the relaxed orthogonality
  penalty of lambda-Orthogonality Regularization (2025), solved by a scaled L-BFGS from ``R``.

The ``/ N`` makes ``a``, ``g`` and ``l`` per-anchor quantities, comparable across anchor budgets.
Spaces of different widths are first brought to a common width (:func:`match_widths`).

Map-free similarities (no anchors, no map), each beside its permutation null: linear CKA
(Kornblith et al. 2019), debiased CKA (the unbiased HSIC estimator of Song et al. 2012 inside
CKA), mutual k-nearest neighbours (Huh et al. 2024) and SVCCA (Raghu et al. 2017).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from diagnostics.result import Result
from models.errors import OrthoscopeError

Progress = Callable[[float, str], None]

MAPS = ("procrustes", "procrustes_uncentred", "lstsq", "ridge", "relaxed", "penalised")
MAP_TITLES = {
    "none": "no map (identity)",
    "procrustes": "orthogonal Procrustes, centred",
    "procrustes_uncentred": "orthogonal Procrustes, uncentred",
    "lstsq": "least squares (affine)",
    "ridge": "ridge (affine)",
    "relaxed": "relaxed: between least squares and Procrustes",
    "penalised": "penalised: least squares + l ||W^T W - I||^2",
}
STRATEGIES = ("random", "kcenter", "volume")
WIDTHS = ("pca", "pad")

DEFAULTS: dict = {
    "maps": list(MAPS),
    "anchors": None,  # None: a sweep of anchor counts; else a list of counts
    "seed": 0,
    "test_fraction": 0.3,
    "strategy": "random",
    "width": "pca",
    "centre": False,  # subtract each space's pool mean first (fights hubness in anisotropic spaces)
    "normalise": True,
    "proper": False,
    "scale": False,
    "ridge_alpha": 1e-3,
    "relaxed_gamma": 1e-2,
    "penalised_lambda": 1e-2,
    "lambdas": [float(v) for v in np.logspace(-4, 2, 9)],
    "curves": True,
    "budget_maps": ["procrustes", "lstsq", "relaxed"],
    "strategies": list(STRATEGIES),
    "budget_seeds": 3,
    "n_permutations": 20,
    "knn_k": 10,
    "svcca_dims": 32,
    "heatmap_rows": 40,
    "projection_rows": 300,
}
METRIC_COLUMNS = (
    "map", "lambda", "n_anchors", "seed", "top1_ab", "top1_ba", "cos", "cos_centred", "orth_error",
    "recall5_ab", "recall5_ba", "recall10_ab", "recall10_ba", "mean_rank_ab", "mean_rank_ba",
    "class_top1_ab", "class_top1_ba", "reflection", "strategy", "n_test",
)


_THREADS = ThreadpoolController()  # limits BLAS threads around run() (see its docstring)


# ---------------------------------------------------------------------------------------
# Input checks


def as_matrix(a, name: str) -> np.ndarray:
    """``a`` as a float64 (rows x dims) array, or an OrthoscopeError saying what is wrong with it."""
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise OrthoscopeError(f"{name} holds {arr.dtype} values; expected numbers.")
    if arr.ndim == 1:
        raise OrthoscopeError(
            f"{name} is 1-D (shape {arr.shape}); expected a 2-D array with one embedding per row."
        )
    if arr.ndim != 2:
        raise OrthoscopeError(f"{name} has shape {arr.shape}; expected a 2-D array (rows x dimensions).")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise OrthoscopeError(f"{name} is empty (shape {arr.shape}).")
    if np.iscomplexobj(arr):
        raise OrthoscopeError(f"{name} is complex; embeddings must be real.")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise OrthoscopeError(
            f"{name} has {len(rows)} row(s) with NaN or infinite values (rows {shown}, counting from 0); "
            "remove those items from both sides before aligning."
        )
    return arr


def check_pair(X: np.ndarray, Y: np.ndarray, names: tuple[str, str] = ("A", "B")) -> None:
    if X.shape[0] != Y.shape[0]:
        raise OrthoscopeError(
            f"{names[0]} has {X.shape[0]} rows but {names[1]} has {Y.shape[0]}: row i of each must embed the "
            "same item."
        )


def check_labels(labels, n: int, name: str = "labels") -> list[str] | None:
    if labels is None:
        return None
    labels = [str(v) for v in labels]
    if len(labels) != n:
        raise OrthoscopeError(f"{name} has {len(labels)} entries for {n} rows.")
    return labels


# ---------------------------------------------------------------------------------------
# Preparing the two spaces


def unit_rows(Z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(norms > 0, norms, 1.0)


@dataclass
class WidthMap:
    """How one side is brought to the common width: kept, projected (PCA) or zero padded."""

    how: str  # "kept", "pca" or "pad"
    width_in: int
    width_out: int
    basis: np.ndarray | None = None  # (width_in x width_out) for PCA
    kept_variance: float | None = None

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        if self.how == "pca":
            return Z @ self.basis
        if self.how == "pad":
            return np.hstack([Z, np.zeros((Z.shape[0], self.width_out - self.width_in))])
        return Z


def match_widths(X: np.ndarray, Y: np.ndarray, fit_rows: np.ndarray, method: str) -> tuple[WidthMap, WidthMap]:
    """Bring spaces of widths ``d_a != d_b`` to one width ``d``.

    ``pca``: the wider space is projected on its top ``d = min(d_a, d_b)`` principal directions,
    computed from ``fit_rows`` only (never the test split) and without using the pairing; the
    projection keeps the mean, so uncentred maps still see it. The narrower space is untouched.
    ``pad``: the narrower space gets zero columns up to ``d = max(d_a, d_b)``; nothing is lost,
    and the map's extra rows act on zeros.
    """
    da, db = X.shape[1], Y.shape[1]
    if method not in WIDTHS:
        raise OrthoscopeError(f"unknown width handling {method!r}; choose one of {', '.join(WIDTHS)}.")
    if da == db:
        return WidthMap("kept", da, da), WidthMap("kept", db, db)
    if method == "pad":
        d = max(da, db)
        return (WidthMap("pad" if da < d else "kept", da, d), WidthMap("pad" if db < d else "kept", db, d))
    d = min(da, db)
    wide = X if da > db else Y
    Zc = wide[fit_rows] - wide[fit_rows].mean(axis=0)
    evals, evecs = np.linalg.eigh(Zc.T @ Zc)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
    kept = float(evals[:d].sum() / evals.sum()) if evals.sum() > 0 else 1.0
    proj = WidthMap("pca", wide.shape[1], d, evecs[:, :d], kept)
    if da > db:
        return proj, WidthMap("kept", db, db)
    return WidthMap("kept", da, da), proj


# ---------------------------------------------------------------------------------------
# Maps


@dataclass
class Map:
    """A fitted map ``f(x) = (x - mu_x) W + mu_y``."""

    name: str
    W: np.ndarray
    mu_x: np.ndarray
    mu_y: np.ndarray
    lam: float | None = None
    reflection: bool = False  # the best orthogonal map (or the R it relaxes towards) had det -1
    scale: float = 1.0
    info: dict = field(default_factory=dict)

    def apply(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.mu_x) @ self.W + self.mu_y


class Fitter:
    """Fits every map on one anchor set, sharing the products they all need.

    ``Xc^T Xc`` is kept as ``V_r diag(s^2) V_r^T`` over its range (``r <= min(N, d)``), found from
    whichever of ``Xc^T Xc`` (d x d) or ``Xc Xc^T`` (N x N) is smaller, so that few anchors in
    many dimensions cost little and the null space is handled exactly.
    """

    def __init__(self, Xa: np.ndarray, Ya: np.ndarray, *, proper: bool = False, scale: bool = False):
        if Xa.shape[0] < 2:
            raise OrthoscopeError(f"{Xa.shape[0]} anchor(s) cannot fit a map; use at least 2.")
        self.Xa, self.Ya, self.proper, self.use_scale = Xa, Ya, proper, scale
        self.N, self.d = Xa.shape
        self.mu_x, self.mu_y = Xa.mean(axis=0), Ya.mean(axis=0)
        self.Xc, self.Yc = Xa - self.mu_x, Ya - self.mu_y
        self.XtY = self.Xc.T @ self.Yc
        self._eigh: tuple[np.ndarray, np.ndarray] | None = None
        if self.N >= self.d:
            evals, V = np.linalg.eigh(self.Xc.T @ self.Xc)
            self._eigh = (np.clip(evals, 0, None) / self.N, V)
        else:
            evals, U = np.linalg.eigh(self.Xc @ self.Xc.T)
            V = None
        tol = max(evals.max(initial=0.0), 0.0) * max(self.N, self.d) * np.finfo(float).eps
        keep = evals > tol
        self.s2 = evals[keep]
        self.V = V[:, keep] if V is not None else (self.Xc.T @ U[:, keep]) / np.sqrt(self.s2)
        self._procrustes: dict[bool, Map] = {}

    @property
    def rank(self) -> int:
        return int(self.s2.size)

    def effective_rank(self) -> float:
        """``exp(H(p))`` with ``p_i = s_i / sum s`` over the centred anchors' singular values (Roy & Vetterli 2007)."""
        s = np.sqrt(self.s2)
        if s.sum() == 0:
            return 0.0
        p = s / s.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    def procrustes(self, centred: bool = True) -> Map:
        if centred in self._procrustes:
            return self._procrustes[centred]
        Xs = self.Xc if centred else self.Xa
        # Raw cross product from the centred one: X^T Y = Xc^T Yc + N mu_x^T mu_y.
        M = self.XtY if centred else self.XtY + self.N * np.outer(self.mu_x, self.mu_y)
        U, S, Vt = np.linalg.svd(M)
        W = U @ Vt
        negative = bool(np.linalg.det(W) < 0)
        # With a zero singular value the anchors leave one sign free: a rotation fits as well as
        # the reflection, so it is taken and no reflection is reported.
        free = S[-1] <= S[0] * max(M.shape) * np.finfo(float).eps
        reflection = negative and not free
        signs = np.ones_like(S)
        if negative and (free or self.proper):
            U = U.copy()
            U[:, -1] *= -1
            signs[-1] = -1
            W = U @ Vt
        s = 1.0
        if self.use_scale:
            denom = float((Xs * Xs).sum())
            s = float((S * signs).sum() / denom) if denom > 0 else 1.0
            W = s * W
        zero = np.zeros(self.d)
        m = Map(
            "procrustes" if centred else "procrustes_uncentred", W,
            self.mu_x if centred else zero, self.mu_y if centred else zero,
            reflection=bool(reflection), scale=s,
        )
        self._procrustes[centred] = m
        return m

    def _solve(self, g: float, R: np.ndarray | None) -> np.ndarray:
        """``(Xc^T Xc + g I)^+ (Xc^T Yc + g R)`` through the range/null split of ``Xc^T Xc``."""
        V, s2 = self.V, self.s2
        rhs = self.XtY if R is None else self.XtY + g * R
        W = V @ ((V.T @ rhs) / (s2 + g)[:, None])
        if R is not None and g > 0:
            W += R - V @ (V.T @ R)  # on the null space the data say nothing; the solution is R there
        return W

    def lstsq(self) -> Map:
        return Map("lstsq", self._solve(0.0, None), self.mu_x, self.mu_y)

    def ridge(self, alpha: float) -> Map:
        return Map("ridge", self._solve(self.N * alpha, None), self.mu_x, self.mu_y, lam=alpha)

    def relaxed(self, gamma: float) -> Map:
        R = self.procrustes(True)
        return Map("relaxed", self._solve(self.N * gamma, R.W), self.mu_x, self.mu_y, lam=gamma,
                   reflection=R.reflection, scale=R.scale)

    def penalised(self, lam: float, start: np.ndarray | None = None, tol: float = 1e-9, max_iter: int = 500) -> Map:
        """Minimise ``f(W) = tr(W^T A W) - 2 tr(W^T B) + lam ||W^T W - I||_F^2`` with ``A = Xc^T Xc / N``,
        ``B = Xc^T Yc / N`` (the constant ``||Yc||^2 / N`` left out).

        Nonconvex for ``lam > 0``; starting at the Procrustes map puts it in the basin of the
        near-orthogonal solution. Solved by L-BFGS (Nocedal 1980) in the eigenbasis of ``A``,
        where ``W^T W`` is unchanged and ``A`` is diagonal, so each step costs two d x d products;
        the initial inverse Hessian is ``(2 Lambda + 8 lam)^-1``, the curvature of the data term
        plus that of the penalty at an orthogonal ``W``. scipy's L-BFGS-B takes no such
        scaling and needed 5-30x longer here (tests/test_alignment.py compares the minima).
        Stops when one step lowers ``f`` by less than ``tol * max(|f|, 1)``.
        """
        eye = np.eye(self.d)
        evals, V = self.full_eigh()
        Bt = V.T @ (self.XtY / self.N)
        inv_h0 = 1.0 / (2 * evals + 8 * lam + 1e-12)
        R = self.procrustes(True)

        def f(Wt):
            E = Wt.T @ Wt - eye
            LW = evals[:, None] * Wt
            return float((Wt * LW).sum() - 2 * (Wt * Bt).sum() + lam * (E * E).sum()), 2 * (LW - Bt) + 4 * lam * (Wt @ E)

        Wt = V.T @ (R.W if start is None else start)
        value, grad = f(Wt)
        steps: list[tuple[np.ndarray, np.ndarray, float]] = []
        converged = False
        for it in range(1, max_iter + 1):
            q, alphas = grad.copy(), []
            for s, y, rho in reversed(steps):
                a = rho * float((s * q).sum())
                alphas.append(a)
                q -= a * y
            r = inv_h0[:, None] * q
            for (s, y, rho), a in zip(steps, reversed(alphas)):
                r += s * (a - rho * float((y * r).sum()))
            slope = -float((grad * r).sum())
            if slope >= 0:  # not a descent direction: fall back to the scaled gradient
                steps.clear()
                r = inv_h0[:, None] * grad
                slope = -float((grad * r).sum())
            t = 1.0
            while True:  # backtracking to the Armijo condition
                new, new_grad = f(Wt - t * r)
                if new <= value + 1e-4 * t * slope or t < 1e-12:
                    break
                t *= 0.5
            s, y = -t * r, new_grad - grad
            if float((s * y).sum()) > 1e-300:
                steps = (steps + [(s, y, 1.0 / float((s * y).sum()))])[-10:]
            converged = value - new <= tol * max(abs(value), 1.0)
            Wt, value, grad = Wt + s, new, new_grad
            if converged:
                break
        info = {"iterations": it, "converged": converged, "objective": value}
        return Map("penalised", V @ Wt, self.mu_x, self.mu_y, lam=lam, reflection=R.reflection, scale=R.scale, info=info)

    def full_eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """All d eigenpairs of ``Xc^T Xc / N`` (the null space included), computed once."""
        if self._eigh is None:
            evals, V = np.linalg.eigh(self.Xc.T @ self.Xc / self.N)
            self._eigh = (np.clip(evals, 0, None), V)
        return self._eigh

    def fit(self, name: str, params: dict) -> Map:
        if name == "procrustes":
            return self.procrustes(True)
        if name == "procrustes_uncentred":
            return self.procrustes(False)
        if name == "lstsq":
            return self.lstsq()
        if name == "ridge":
            return self.ridge(params["ridge_alpha"])
        if name == "relaxed":
            return self.relaxed(params["relaxed_gamma"])
        if name == "penalised":
            return self.penalised(params["penalised_lambda"])
        raise OrthoscopeError(f"unknown map {name!r}; choose from {', '.join(MAPS)}.")


def identity_map(d: int) -> Map:
    zero = np.zeros(d)
    return Map("none", np.eye(d), zero, zero)


# ---------------------------------------------------------------------------------------
# Measures with a map


def orth_error(W: np.ndarray) -> float:
    """``||W^T W - I||_F``: zero exactly for orthogonal maps."""
    E = W.T @ W - np.eye(W.shape[1])
    return float(np.sqrt((E * E).sum()))


def map_geometry(W: np.ndarray) -> dict:
    """Orthogonality error, singular values, determinant (sign and log|det|) and condition number."""
    s = np.linalg.svd(W, compute_uv=False)
    sign, logabs = np.linalg.slogdet(W)
    if sign == 0 or logabs < -700:
        det = 0.0  # singular, or below float64's range
    else:
        det = float(sign * math.exp(logabs)) if logabs < 700 else None
    return {
        "orth_error": orth_error(W),
        "det": det,
        "det_sign": float(sign),
        "log_abs_det": float(logabs),
        "condition": float(s[0] / s[-1]) if s[-1] > 0 else float("inf"),
        "sv_max": float(s[0]),
        "sv_min": float(s[-1]),
        "singular_values": s,
    }


def cosines(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """Mean row cosine of matched rows, raw and after removing each side's mean over these rows."""
    raw = float((unit_rows(A) * unit_rows(B)).sum(axis=1).mean())
    centred = float((unit_rows(A - A.mean(axis=0)) * unit_rows(B - B.mean(axis=0))).sum(axis=1).mean())
    return raw, centred


def retrieval(A: np.ndarray, B: np.ndarray, labels: list[str] | None = None, ks=(1, 5, 10)) -> dict:
    """Matched-pair retrieval by cosine in both directions.

    A -> B: for row ``i`` of ``A``, the rank of ``B_i`` among all rows of ``B`` (B -> A: the other
    way). Ranks count ties against the match (rank = number of candidates at least as similar as
    the match), so degenerate spaces cannot score by accident. ``class_top1``: the nearest
    candidate carries the query's label. Similarities are computed in float32 (see the tests:
    float64 gives the same displayed numbers).
    """
    S = unit_rows(A).astype(np.float32) @ unit_rows(B).astype(np.float32).T
    diag = S.diagonal()
    rank_ab = (S >= diag[:, None]).sum(axis=1)
    rank_ba = (S >= diag[None, :]).sum(axis=0)
    n = S.shape[0]
    out = {}
    for k in ks:
        key = "top1" if k == 1 else f"recall{k}"
        out[f"{key}_ab"] = float((rank_ab <= k).mean()) if k <= n else float("nan")
        out[f"{key}_ba"] = float((rank_ba <= k).mean()) if k <= n else float("nan")
    out["mean_rank_ab"] = float(rank_ab.mean())
    out["mean_rank_ba"] = float(rank_ba.mean())
    if labels is not None:
        lab = np.asarray(labels)
        out["class_top1_ab"] = float((lab[S.argmax(axis=1)] == lab).mean())
        out["class_top1_ba"] = float((lab[S.argmax(axis=0)] == lab).mean())
    else:
        out["class_top1_ab"] = out["class_top1_ba"] = float("nan")
    return out


def evaluate(m: Map, X: np.ndarray, Y: np.ndarray, labels: list[str] | None) -> dict:
    mapped = m.apply(X)
    cos, cos_c = cosines(mapped, Y)
    return {**retrieval(mapped, Y, labels), "cos": cos, "cos_centred": cos_c}


def zero_shot(queries: np.ndarray, labels: list[str], prompts: np.ndarray, class_names: list[str]) -> float:
    """Accuracy of labelling each query by its most cosine-similar class prompt."""
    S = unit_rows(queries) @ unit_rows(prompts).T
    names = np.asarray(class_names)
    return float((names[S.argmax(axis=1)] == np.asarray(labels)).mean())


# ---------------------------------------------------------------------------------------
# Map-free similarity


def _centre(Z: np.ndarray) -> np.ndarray:
    return Z - Z.mean(axis=0)


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` (Kornblith et al. 2019)."""
    Xc, Yc = _centre(X), _centre(Y)
    return _cka_from(Xc, Yc, np.linalg.norm(Xc.T @ Yc) ** 2)


def _cka_from(Xc, Yc, cross_sq: float, grams: tuple[float, float] | None = None) -> float:
    gx, gy = grams or _gram_norms_sq(Xc, Yc)
    den = math.sqrt(gx * gy)
    return float(cross_sq / den) if den > 0 else float("nan")


def _gram_norms_sq(Xc, Yc) -> tuple[float, float]:
    """``||Xc^T Xc||_F^2`` and ``||Yc^T Yc||_F^2``: they do not change when rows are shuffled."""
    return float(np.linalg.norm(Xc.T @ Xc) ** 2), float(np.linalg.norm(Yc.T @ Yc) ** 2)


def _hsic_u(cross_sq: float, a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012) of linear kernels on centred features, times ``n (n - 3)``.

    With ``K = Xc Xc^T`` and ``K~`` its diagonal zeroed: ``tr(K~ L~) = ||Xc^T Yc||^2 - a.b``,
    ``1^T K~ 1 = -sum a`` and ``1^T K~ L~ 1 = a.b``, where ``a``, ``b`` are the rows' squared norms.
    """
    n = a.size
    return cross_sq - n / (n - 2) * float(a @ b) + float(a.sum() * b.sum()) / ((n - 1) * (n - 2))


def debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """CKA with the unbiased HSIC estimator in place of the biased one; needs ``n >= 4``."""
    Xc, Yc = _centre(X), _centre(Y)
    return _debiased_from(Xc, Yc, np.linalg.norm(Xc.T @ Yc) ** 2)


def _debiased_from(Xc, Yc, cross_sq: float, perm: np.ndarray | None = None,
                   grams: tuple[float, float] | None = None) -> float:
    a, b = (Xc * Xc).sum(axis=1), (Yc * Yc).sum(axis=1)
    if a.size < 4:
        return float("nan")
    gx, gy = grams or _gram_norms_sq(Xc, Yc)
    hxx = _hsic_u(gx, a, a)
    hyy = _hsic_u(gy, b, b)
    hxy = _hsic_u(cross_sq, a, b if perm is None else b[perm])
    return float(hxy / math.sqrt(hxx * hyy)) if hxx > 0 and hyy > 0 else float("nan")


def knn_indices(Z: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity."""
    U = unit_rows(Z).astype(np.float32)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    return np.argpartition(-S, k - 1, axis=1)[:, :k]


def _knn_overlap(NX: np.ndarray, NY: np.ndarray) -> float:
    k = NX.shape[1]
    return float((NX[:, :, None] == NY[:, None, :]).any(axis=2).sum(axis=1).mean() / k)


def mutual_knn(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
    """Mean over rows ``i`` of ``|N_X(i) & N_Y(i)| / k``, the k-NN sets by cosine (Huh et al. 2024)."""
    k = min(k, X.shape[0] - 1)
    return _knn_overlap(knn_indices(X, k), knn_indices(Y, k))


def _top_left_singular(Zc: np.ndarray, max_dims: int, energy: float = 0.99) -> np.ndarray:
    """Orthonormal columns spanning the top SVD directions of ``Zc`` that keep ``energy`` of its variance."""
    n, d = Zc.shape
    if d <= n:
        evals, V = np.linalg.eigh(Zc.T @ Zc)
        order = np.argsort(evals)[::-1]
        evals, V = np.clip(evals[order], 0, None), V[:, order]
        k = _dims_for(evals, max_dims, energy)
        return (Zc @ V[:, :k]) / np.sqrt(evals[:k])
    evals, U = np.linalg.eigh(Zc @ Zc.T)
    order = np.argsort(evals)[::-1]
    evals = np.clip(evals[order], 0, None)
    return U[:, order[: _dims_for(evals, max_dims, energy)]]


def _dims_for(evals: np.ndarray, max_dims: int, energy: float) -> int:
    total = evals.sum()
    positive = int((evals > total * 1e-12).sum())
    k = int(np.searchsorted(np.cumsum(evals) / total, energy) + 1) if total > 0 else 1
    return max(1, min(k, max_dims, positive))


def svcca(X: np.ndarray, Y: np.ndarray, max_dims: int = 32) -> float:
    """Mean canonical correlation between the top SVD subspaces (99% of variance, at most
    ``max_dims`` directions) of each centred space (Raghu et al. 2017). The canonical
    correlations are the singular values of ``Ux^T Uy`` for orthonormal bases of those subspaces.
    """
    Ux, Uy = _top_left_singular(_centre(X), max_dims), _top_left_singular(_centre(Y), max_dims)
    return float(np.linalg.svd(Ux.T @ Uy, compute_uv=False).mean())


def similarity_with_nulls(X: np.ndarray, Y: np.ndarray, *, n_permutations: int, seed: int, k: int,
                          svcca_dims: int) -> list[dict]:
    """The four map-free measures, each beside its value with the rows of ``Y`` shuffled.

    ``null_mean``/``null_sd`` over ``n_permutations`` shuffles; ``p_value = (1 + #{null >=
    value}) / (1 + n_permutations)``. The shuffles reuse what does not depend on the pairing
    (Gram norms, k-NN sets, SVD bases), so each costs one cross product, taken in float32 for
    the shuffles (a relative error near 1e-6, far below what is displayed) and float64 for the
    observed value.
    """
    n = X.shape[0]
    if n < 5:
        raise OrthoscopeError(f"the held-out split has {n} rows; map-free similarity needs at least 5.")
    Xc, Yc = _centre(X), _centre(Y)
    k = min(k, n - 1)
    NX, NY = knn_indices(X, k), knn_indices(Y, k)
    Ux, Uy = _top_left_singular(Xc, svcca_dims), _top_left_singular(Yc, svcca_dims)
    grams = _gram_norms_sq(Xc, Yc)
    Xc32, Yc32 = Xc.astype(np.float32), Yc.astype(np.float32)

    def measures(perm: np.ndarray | None) -> dict[str, float]:
        if perm is None:
            cross_sq = float(np.linalg.norm(Xc.T @ Yc) ** 2)
        else:
            cross_sq = float(np.linalg.norm((Xc32.T @ Yc32[perm]).astype(np.float64)) ** 2)
        if perm is None:
            NYp, Uyp = NY, Uy
        else:
            inverse = np.argsort(perm)
            NYp, Uyp = inverse[NY[perm]], Uy[perm]
        return {
            "linear CKA": _cka_from(Xc, Yc, cross_sq, grams),
            "debiased CKA": _debiased_from(Xc, Yc, cross_sq, perm, grams),
            f"mutual {k}-NN": _knn_overlap(NX, NYp),
            "SVCCA": float(np.linalg.svd(Ux.T @ Uyp, compute_uv=False).mean()),
        }

    observed = measures(None)
    rng = np.random.default_rng(seed)
    nulls = [measures(rng.permutation(n)) for _ in range(n_permutations)]
    rows = []
    for name, value in observed.items():
        null = np.array([m[name] for m in nulls])
        rows.append({
            "measure": name, "value": value,
            "null_mean": float(null.mean()) if null.size else float("nan"),
            "null_sd": float(null.std(ddof=1)) if null.size > 1 else float("nan"),
            "p_value": float((1 + (null >= value).sum()) / (1 + null.size)) if null.size else float("nan"),
            "n_rows": n,
        })
    return rows


# ---------------------------------------------------------------------------------------
# Splits and anchors


def split_rows(n: int, test_fraction: float, seed: int, labels: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) row indices; with labels, every class gives the same fraction to the test split."""
    if not 0 < test_fraction < 1:
        raise OrthoscopeError(f"the test fraction must lie strictly between 0 and 1 (got {test_fraction}).")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(np.asarray(labels) == c) for c in sorted(set(labels))]
    test = []
    for g in groups:
        g = rng.permutation(g)
        test.extend(g[: int(round(len(g) * test_fraction))])
    test = np.sort(np.asarray(test, dtype=int))
    pool = np.setdiff1d(np.arange(n), test)
    if len(test) < 5 or len(pool) < 2:
        raise OrthoscopeError(
            f"{n} rows split {len(pool)} (anchor pool) / {len(test)} (held out); the held-out split needs at least 5 "
            "rows and the pool 2. Use more rows or another test fraction."
        )
    return pool, test


def choose_anchors(Z: np.ndarray, candidates: np.ndarray, n: int, strategy: str, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` anchors among ``candidates`` (rows of ``Z``, model A's space).

    ``random``: uniform without replacement. ``kcenter``: farthest-first traversal (Gonzalez 1985)
    from a random start, a 2-approximation of the smallest covering radius. ``volume``: adaptive
    sampling (Deshpande & Vempala 2006), each pick drawn with probability proportional to its
    squared distance from the span of the centred picks so far, the sequential approximation of
    volume sampling; once the picks span the data, a new round starts from the full residuals.
    """
    if n > len(candidates):
        raise OrthoscopeError(f"asked for {n} anchors but only {len(candidates)} rows are outside the held-out split.")
    if n < 2:
        raise OrthoscopeError(f"{n} anchor(s) cannot fit a map; use at least 2.")
    if strategy == "random":
        return np.sort(rng.choice(candidates, size=n, replace=False))
    C = Z[candidates]
    if strategy == "kcenter":
        picks = [int(rng.integers(len(C)))]
        dist = ((C - C[picks[0]]) ** 2).sum(axis=1)
        for _ in range(n - 1):
            nxt = int(dist.argmax())
            picks.append(nxt)
            dist = np.minimum(dist, ((C - C[nxt]) ** 2).sum(axis=1))
        return np.sort(candidates[picks])
    if strategy == "volume":
        Cc = C - C.mean(axis=0)
        resid = Cc.copy()
        chosen = np.zeros(len(C), dtype=bool)
        picks = []
        for _ in range(n):
            w = (resid * resid).sum(axis=1)
            w[chosen] = 0
            if w.sum() <= 1e-12 * max(float((Cc * Cc).sum()), 1e-300):
                resid = Cc.copy()  # the picks span the data: start a new round
                w = (resid * resid).sum(axis=1)
                w[chosen] = 0
            i = int(rng.choice(len(C), p=w / w.sum())) if w.sum() > 0 else int(rng.choice(np.flatnonzero(~chosen)))
            picks.append(i)
            chosen[i] = True
            q = resid[i] / (np.linalg.norm(resid[i]) or 1.0)
            resid -= np.outer(resid @ q, q)
        return np.sort(candidates[picks])
    raise OrthoscopeError(f"unknown anchor strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")


def anchor_sweep(pool_size: int, start: int = 8) -> list[int]:
    """Powers of two from ``start`` below the pool size, then the whole pool."""
    counts = []
    n = start
    while n < pool_size:
        counts.append(n)
        n *= 2
    return counts + [pool_size]


# ---------------------------------------------------------------------------------------
# Inputs and the result


@dataclass
class AlignmentInputs:
    """Paired embeddings of the same items under models A and B, and what else was embedded.

    ``X2``/``Y2``: a second modality (e.g. texts when the map is fitted on images); when it has as
    many rows as ``X`` its row ``i`` belongs to item ``i`` and only held-out items are scored,
    otherwise every row is. ``prompts_a``/``prompts_b``: class prompts embedded in the second
    modality of each model, for zero-shot labelling of the first modality's rows.
    """

    X: np.ndarray
    Y: np.ndarray
    labels: list[str] | None = None
    name_a: str = "A"
    name_b: str = "B"
    fingerprint_a: str = ""
    fingerprint_b: str = ""
    source: dict = field(default_factory=dict)
    modality: str = "rows"
    X2: np.ndarray | None = None
    Y2: np.ndarray | None = None
    modality2: str = ""
    class_names: list[str] | None = None
    prompts_a: np.ndarray | None = None
    prompts_b: np.ndarray | None = None
    timings: dict = field(default_factory=dict)  # how long making these inputs took (embedding)


def content_hash(*parts) -> str:
    """sha256 over arrays (shape, dtype, bytes) and JSON-able values, for cache keys and fingerprints."""
    digest = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            digest.update(f"{a.shape}{a.dtype}".encode())
            digest.update(a.tobytes())
        else:
            digest.update(json.dumps(p, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class AlignmentResult(Result):
    diagnostic: ClassVar[str] = "alignment"
    model_a: str
    model_b: str
    fingerprint_a: str
    fingerprint_b: str
    data: dict  # what was aligned: source, rows, widths, split sizes, width handling
    metrics: list  # the main table: one row per map and anchor count (METRIC_COLUMNS)
    geometry: list  # per map at the detail anchor count: orth_error, det, condition, singular values
    similarity: list  # map-free measures with their permutation nulls
    budget: list  # quality against anchor budget: strategy, map, split, n_anchors, seed, scores
    tradeoff: list  # the lambda trade-off: family, lambda, orth_error, scores
    cross_modal: list = field(default_factory=list)  # the fitted maps scored on the second modality
    zero_shot: list = field(default_factory=list)
    heatmaps: dict = field(default_factory=dict)
    projection: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.metrics, columns=list(METRIC_COLUMNS))

    def tables(self) -> dict[str, pd.DataFrame]:
        geometry = pd.DataFrame([{k: v for k, v in g.items() if k != "singular_values"} for g in self.geometry])
        out = {
            "metrics": self.to_frame(),
            "map_geometry": geometry,
            "similarity": pd.DataFrame(self.similarity),
            "anchor_budget": pd.DataFrame(self.budget),
            "lambda_tradeoff": pd.DataFrame(self.tradeoff),
        }
        if self.cross_modal:
            out["cross_modal"] = pd.DataFrame(self.cross_modal)
        if self.zero_shot:
            out["zero_shot"] = pd.DataFrame(self.zero_shot)
        return out

    def detail_anchors(self) -> int:
        counts = [r["n_anchors"] for r in self.metrics if r["map"] != "none"]
        return max(counts) if counts else 0


def resolve_params(params: dict | None) -> dict:
    """Defaults filled in and checked, so that the result records every value used."""
    p = {**DEFAULTS, **(params or {})}
    unknown = set(p) - set(DEFAULTS)
    if unknown:
        raise OrthoscopeError(f"unknown alignment parameter(s): {', '.join(sorted(unknown))}.")
    p["maps"] = list(dict.fromkeys(p["maps"]))
    for name in p["maps"] + list(p["budget_maps"]):
        if name not in MAPS:
            raise OrthoscopeError(f"unknown map {name!r}; choose from {', '.join(MAPS)}.")
    if not p["maps"]:
        raise OrthoscopeError("choose at least one map.")
    for s in [p["strategy"], *p["strategies"]]:
        if s not in STRATEGIES:
            raise OrthoscopeError(f"unknown anchor strategy {s!r}; choose one of {', '.join(STRATEGIES)}.")
    if p["width"] not in WIDTHS:
        raise OrthoscopeError(f"unknown width handling {p['width']!r}; choose one of {', '.join(WIDTHS)}.")
    for key in ("ridge_alpha", "relaxed_gamma", "penalised_lambda"):
        if not (isinstance(p[key], (int, float)) and p[key] >= 0):
            raise OrthoscopeError(f"{key} must be a number >= 0 (got {p[key]!r}).")
    if p["anchors"] is not None:
        p["anchors"] = sorted({int(a) for a in p["anchors"]})
    p["lambdas"] = sorted(float(v) for v in p["lambdas"])
    return p


def run(inputs: AlignmentInputs, params: dict | None = None, progress: Progress | None = None) -> AlignmentResult:
    """Fit the maps on anchors from the pool, score them on the held-out split, draw the curves.

    Runs on one BLAS thread: the work is many small dense products and factorisations (d x d
    with d of a few hundred), which threads barely speed up on an idle machine and slow down
    10-50x on busy cores (OpenBLAS's threaded SVD of a 384 x 384 matrix: 0.3-2 s against 0.05 s
    on one thread; bench/alignment.py prints both). The map-free measures, which need no map,
    run in a second Python thread beside the fits, so a free second core is still used.
    """
    with _THREADS.limit(limits=1, user_api="blas"):
        return _run(inputs, params, progress)


def _run(inputs: AlignmentInputs, params: dict | None, progress: Progress | None) -> AlignmentResult:
    start = time.perf_counter()
    p = resolve_params(params)
    report = progress or (lambda f, m: None)
    X, Y = as_matrix(inputs.X, f"{inputs.name_a} embeddings"), as_matrix(inputs.Y, f"{inputs.name_b} embeddings")
    check_pair(X, Y, (inputs.name_a, inputs.name_b))
    labels = check_labels(inputs.labels, X.shape[0])
    if labels is not None and len(set(labels)) < 2:
        labels = None  # one class carries no information for class-level scores
    warnings: list[str] = []
    timings: dict[str, float] = dict(inputs.timings)

    prep = _prepare(X, Y, p, labels)
    pool, test, Xw, Yw = prep["pool"], prep["test"], prep["X"], prep["Y"]
    d = Xw.shape[1]
    counts = p["anchors"] or anchor_sweep(len(pool))
    if counts[-1] > len(pool):
        raise OrthoscopeError(
            f"asked for {counts[-1]} anchors but only {len(pool)} of the {X.shape[0]} rows are outside the held-out "
            f"split (test fraction {p['test_fraction']})."
        )
    if counts[0] < 2:
        raise OrthoscopeError(f"{counts[0]} anchor(s) cannot fit a map; use at least 2.")
    test_labels = [labels[i] for i in test] if labels else None

    # The map-free measures need no map: they run on a second core, if there is one, meanwhile,
    # on each space at its own width after the same shift and normalisation as the maps see.
    with ThreadPoolExecutor(max_workers=1) as executor:
        similarity_job = executor.submit(
            _timed, similarity_with_nulls, prep["Xn"][test], prep["Yn"][test], n_permutations=p["n_permutations"],
            seed=p["seed"], k=p["knn_k"], svcca_dims=p["svcca_dims"])
        rows, detail_fitter, detail_maps, detail_anchors = _main_table(prep, counts, test_labels, p, report, timings)
        similarity, timings["similarity_s"] = similarity_job.result()
    n_detail = counts[-1]
    warnings += _warnings(detail_fitter, detail_maps, n_detail, d, prep)

    report(0.42, "map geometry")
    t0 = time.perf_counter()
    geometry = [
        {"map": m.name, "lambda": m.lam, "n_anchors": n_detail, **map_geometry(m.W),
         "scale": m.scale, "anchor_rank": detail_fitter.rank, "anchor_effective_rank": detail_fitter.effective_rank()}
        for m in detail_maps
    ]
    timings["geometry_s"] = time.perf_counter() - t0

    cross, zshot = _other_modality(inputs, prep, detail_maps, test, labels, p)

    budget, tradeoff = [], []
    if p["curves"]:
        t0 = time.perf_counter()
        budget = _budget_curve(prep, labels, p, lambda f, m: report(0.5 + 0.35 * f, m))
        timings["budget_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report(0.86, "lambda trade-off")
        tradeoff = _tradeoff_curve(detail_fitter, Xw[test], Yw[test], test_labels, p)
        timings["tradeoff_s"] = time.perf_counter() - t0

    report(0.97, "heatmaps and projections")
    main = next((m for m in detail_maps if m.name == "procrustes"), detail_maps[0])
    heatmaps = _heatmaps(Xw[test], Yw[test], main, test_labels, p)
    projection = _projection(Xw[test], Yw[test], main, test_labels, p)
    timings["total_s"] = time.perf_counter() - start
    report(1.0, "done")

    data = {
        **inputs.source,
        "modality": inputs.modality,
        "n_rows": int(X.shape[0]),
        "dim_a": int(X.shape[1]),
        "dim_b": int(Y.shape[1]),
        "common_width": int(d),
        "width_a": prep["width_a"],
        "width_b": prep["width_b"],
        "n_pool": int(len(pool)),
        "n_test": int(len(test)),
        "labels": sorted(set(labels)) if labels else [],
        "anchor_counts": [int(c) for c in counts],
        "detail_anchors": int(n_detail),
        "detail_anchor_rows": [int(i) for i in detail_anchors],
        "modality2": inputs.modality2 if inputs.X2 is not None else "",
    }
    result = AlignmentResult(
        model_name=f"{inputs.name_a} → {inputs.name_b}",
        fingerprint=content_hash(inputs.fingerprint_a, inputs.fingerprint_b, inputs.source),
        params=p,
        timings=timings,
        model_a=inputs.name_a,
        model_b=inputs.name_b,
        fingerprint_a=inputs.fingerprint_a,
        fingerprint_b=inputs.fingerprint_b,
        data=data,
        metrics=rows,
        geometry=geometry,
        similarity=similarity,
        budget=budget,
        tradeoff=tradeoff,
        cross_modal=cross,
        zero_shot=zshot,
        heatmaps=heatmaps,
        projection=projection,
        warnings=warnings,
    )
    # The page shows exactly what a saved report reloads: plain JSON values, no arrays.
    return AlignmentResult.from_dict(result.to_dict())


def _timed(func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


def _main_table(prep: dict, counts: list[int], test_labels, p: dict, report: Progress, timings: dict):
    """Every map at every anchor count (anchors drawn once per count), plus the no-map row."""
    start = time.perf_counter()
    pool, test, Xw, Yw = prep["pool"], prep["test"], prep["X"], prep["Y"]
    rows = [_metric_row(identity_map(Xw.shape[1]), Xw[test], Yw[test], test_labels, 0, p)]
    rng = np.random.default_rng(p["seed"])
    for i, n in enumerate(counts):
        report(0.05 + 0.35 * i / len(counts), f"fitting maps on {n} anchors")
        anchors = choose_anchors(Xw, pool, n, p["strategy"], rng)
        fitter = Fitter(Xw[anchors], Yw[anchors], proper=p["proper"], scale=p["scale"])
        maps = [fitter.fit(name, p) for name in p["maps"]]
        rows += [_metric_row(m, Xw[test], Yw[test], test_labels, n, p) for m in maps]
    timings["fit_and_score_s"] = time.perf_counter() - start
    return rows, fitter, maps, anchors


def _prepare(X: np.ndarray, Y: np.ndarray, p: dict, labels) -> dict:
    """Split, then per space: optional shift by the pool mean, optional L2 row norm, common width.

    The shift is the first modality's pool mean and is applied to every matrix of that model's
    space (second modality, prompts), so relations between modalities are kept.
    """
    pool, test = split_rows(X.shape[0], p["test_fraction"], p["seed"], labels)
    shift_a = X[pool].mean(axis=0) if p["centre"] else np.zeros(X.shape[1])
    shift_b = Y[pool].mean(axis=0) if p["centre"] else np.zeros(Y.shape[1])
    X, Y = X - shift_a, Y - shift_b
    if p["normalise"]:
        X, Y = unit_rows(X), unit_rows(Y)
    wa, wb = match_widths(X, Y, pool, p["width"])
    return {
        "pool": pool, "test": test, "Xn": X, "Yn": Y, "X": wa(X), "Y": wb(Y), "wa": wa, "wb": wb, "shift_a": shift_a,
        "shift_b": shift_b, "width_a": _width_info(wa), "width_b": _width_info(wb),
    }


def _width_info(w: WidthMap) -> dict:
    return {"how": w.how, "from": w.width_in, "to": w.width_out, "kept_variance": w.kept_variance}


def _prepare_other(Z: np.ndarray, side: str, prep: dict, p: dict) -> np.ndarray:
    Z = Z - prep[f"shift_{side}"]
    return prep[f"w{side}"](unit_rows(Z) if p["normalise"] else Z)


def _metric_row(m: Map, Xt, Yt, labels, n: int, p: dict) -> dict:
    scores = evaluate(m, Xt, Yt, labels)
    return {
        "map": m.name, "lambda": m.lam, "n_anchors": n, "seed": p["seed"], **scores,
        "orth_error": orth_error(m.W), "reflection": m.reflection, "strategy": p["strategy"] if n else "",
        "n_test": int(Xt.shape[0]),
    }


def _warnings(fitter: Fitter, maps: list[Map], n: int, d: int, prep: dict) -> list[str]:
    out = []
    if n <= d:
        out.append(
            f"{n} anchors in {d} dimensions: the centred anchors span at most {n - 1} directions (rank "
            f"{fitter.rank}). Least squares then has more unknowns than equations and fits the anchors exactly "
            "(the minimum-norm solution), which generalises poorly; an orthogonal map is pinned down only on the "
            "anchors' span, the rest of it is arbitrary. Compare the held-out scores, not the fit."
        )
    if any(m.reflection for m in maps if m.name.startswith("procrustes")):
        proper = fitter.proper
        out.append(
            "The best orthogonal map is a reflection (det -1). "
            + ("It was forced to a rotation (det +1) as asked, at some cost in fit." if proper
               else "Tick 'force det +1' (CLI --proper) for the best rotation instead.")
        )
    for m in maps:
        if m.name == "penalised" and not m.info.get("converged", True):
            out.append(f"The penalised fit stopped after {m.info['iterations']} iterations without converging; its "
                       "numbers are from the last iterate.")
    for side, w in (("A", prep["wa"]), ("B", prep["wb"])):
        if w.how == "pca" and w.kept_variance is not None and w.kept_variance < 0.9:
            out.append(f"PCA to {w.width_out} dimensions keeps only {w.kept_variance:.0%} of model {side}'s variance; "
                       "zero padding keeps all of it.")
    return out


def _budget_curve(prep: dict, labels, p: dict, report: Progress) -> list[dict]:
    """Held-out top-1 and cosine against the anchor count, for several seeds and anchor strategies.

    ``all``: anchors from every class. With labels, ``seen``/``unseen``: anchors only from half of
    the classes (drawn with the seed), queries split by whether their class was seen; the
    candidates are always the whole held-out split.
    """
    pool, test, Xw, Yw = prep["pool"], prep["test"], prep["X"], prep["Y"]
    settings = [("all", pool, None)]
    if labels is not None:
        classes = sorted(set(labels))
        rng = np.random.default_rng(p["seed"])
        seen = set(rng.permutation(classes)[: (len(classes) + 1) // 2].tolist())
        lab = np.asarray(labels)
        seen_pool = pool[np.isin(lab[pool], list(seen))]
        seen_mask = np.isin(lab[test], list(seen))
        if len(seen_pool) >= 2:
            settings.append(("seen", seen_pool, seen_mask))
    out = []
    jobs = [(s, st, seed) for s in settings for st in p["strategies"] for seed in range(p["seed"], p["seed"] + p["budget_seeds"])]
    for j, ((split, candidates, mask), strategy, seed) in enumerate(jobs):
        report(j / len(jobs), f"anchor budget: {split} classes, {strategy}, seed {seed}")
        rng = np.random.default_rng(seed)
        for n in anchor_sweep(len(candidates)):
            anchors = choose_anchors(Xw, candidates, n, strategy, rng)
            fitter = Fitter(Xw[anchors], Yw[anchors], proper=p["proper"], scale=p["scale"])
            for name in p["budget_maps"]:
                m = fitter.fit(name, p)
                mapped = m.apply(Xw[test])
                groups = [("all", None)] if mask is None else [("seen", mask), ("unseen", ~mask)]
                S = unit_rows(mapped).astype(np.float32) @ unit_rows(Yw[test]).astype(np.float32).T
                diag = S.diagonal()
                hit_ab = (S >= diag[:, None]).sum(axis=1) == 1
                hit_ba = (S >= diag[None, :]).sum(axis=0) == 1
                cos = (unit_rows(mapped) * unit_rows(Yw[test])).sum(axis=1)
                for group, g in groups:
                    sel = slice(None) if g is None else g
                    if g is not None and not g.any():
                        continue
                    out.append({
                        "split": "all classes" if group == "all" else f"{group} classes",
                        "strategy": strategy, "map": name, "n_anchors": int(n), "seed": seed,
                        "top1_ab": float(hit_ab[sel].mean()), "top1_ba": float(hit_ba[sel].mean()),
                        "cos": float(cos[sel].mean()), "n_queries": int(hit_ab[sel].size),
                    })
    return out


def _tradeoff_curve(fitter: Fitter, Xt, Yt, labels, p: dict) -> list[dict]:
    """Orthogonality error against held-out retrieval along the relaxed and penalised families.

    The penalised path runs from the largest lambda down, each fit starting from the previous one.
    The two ends, least squares and Procrustes, are included as references.
    """
    out = []

    def row(m: Map, family: str):
        scores = evaluate(m, Xt, Yt, labels)
        out.append({"family": family, "lambda": m.lam, "orth_error": orth_error(m.W), "top1_ab": scores["top1_ab"],
                    "top1_ba": scores["top1_ba"], "cos": scores["cos"], "cos_centred": scores["cos_centred"]})

    row(fitter.lstsq(), "lstsq")
    row(fitter.procrustes(True), "procrustes")
    for lam in p["lambdas"]:
        row(fitter.relaxed(lam), "relaxed")
    W = fitter.procrustes(True).W
    for lam in sorted(p["lambdas"], reverse=True):
        m = fitter.penalised(lam, start=W)
        W = m.W
        row(m, "penalised")
    return out


def _other_modality(inputs: AlignmentInputs, prep: dict, maps: list[Map], test, labels, p: dict):
    """The maps fitted on the first modality, scored on the second; zero-shot labelling across models."""
    cross, zshot = [], []
    if inputs.X2 is not None and inputs.Y2 is not None:
        X2 = as_matrix(inputs.X2, f"{inputs.name_a} {inputs.modality2 or 'second modality'}")
        Y2 = as_matrix(inputs.Y2, f"{inputs.name_b} {inputs.modality2 or 'second modality'}")
        check_pair(X2, Y2, (f"{inputs.name_a}'s second modality", f"{inputs.name_b}'s second modality"))
        for Z, w, who in ((X2, prep["wa"], inputs.name_a), (Y2, prep["wb"], inputs.name_b)):
            if Z.shape[1] != w.width_in:
                raise OrthoscopeError(
                    f"{who}'s second modality has {Z.shape[1]} dimensions but its first has {w.width_in}; both must "
                    "live in the model's one embedding space."
                )
        paired = X2.shape[0] == inputs.X.shape[0]
        rows = test if paired else np.arange(X2.shape[0])
        lab2 = [labels[i] for i in rows] if paired and labels else None
        X2w, Y2w = _prepare_other(X2, "a", prep, p)[rows], _prepare_other(Y2, "b", prep, p)[rows]
        if len(rows) < 2:
            raise OrthoscopeError("the second modality needs at least 2 rows to score retrieval.")
        for m in [identity_map(X2w.shape[1]), *maps]:
            scores = evaluate(m, X2w, Y2w, lab2)
            cross.append({"map": m.name, "lambda": m.lam, "fitted_on": inputs.modality, "tested_on": inputs.modality2,
                          "n_test": int(len(rows)), **scores})
        if inputs.prompts_a is not None and inputs.prompts_b is not None and labels is not None and inputs.class_names:
            zshot = _zero_shot_rows(inputs, prep, maps, test, labels, p)
    return cross, zshot


def _zero_shot_rows(inputs, prep, maps, test, labels, p) -> list[dict]:
    """Zero-shot labelling of the held-out first-modality rows (e.g. images) by class prompts.

    Native: each model's own queries against its own prompts. Mapped: model A's queries carried
    into B's space and labelled by B's prompts, and A's prompts carried into B's space to label B's
    queries, i.e. one model's tower used with the other's.
    """
    names = list(inputs.class_names)
    test_labels = [labels[i] for i in test]
    Xt, Yt = prep["X"][test], prep["Y"][test]
    PA = _prepare_other(as_matrix(inputs.prompts_a, "model A's class prompts"), "a", prep, p)
    PB = _prepare_other(as_matrix(inputs.prompts_b, "model B's class prompts"), "b", prep, p)
    rows = [
        {"map": "native", "setting": f"A {inputs.modality} vs A prompts", "accuracy": zero_shot(Xt, test_labels, PA, names)},
        {"map": "native", "setting": f"B {inputs.modality} vs B prompts", "accuracy": zero_shot(Yt, test_labels, PB, names)},
    ]
    for m in maps:
        rows.append({"map": m.name, "setting": f"A {inputs.modality} mapped vs B prompts",
                     "accuracy": zero_shot(m.apply(Xt), test_labels, PB, names)})
        rows.append({"map": m.name, "setting": f"B {inputs.modality} vs A prompts mapped",
                     "accuracy": zero_shot(Yt, test_labels, m.apply(PA), names)})
    for r in rows:
        r.update({"n_test": int(len(test)), "n_classes": len(names), "chance": 1.0 / len(names)})
    return rows


def _sample_rows(n: int, limit: int, labels, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, limit), replace=False))
    if labels is not None:
        rows = rows[np.argsort(np.asarray(labels)[rows], kind="stable")]
    return rows


def _heatmaps(Xt, Yt, m: Map, labels, p: dict) -> dict:
    """Cosine similarities on a sample of held-out rows (sorted by label): within A, within B, and
    across (row: A's item mapped or not; column: B's item). A good map makes the cross matrix
    diagonal."""
    rows = _sample_rows(Xt.shape[0], p["heatmap_rows"], labels, p["seed"])
    A, B, mapped = unit_rows(Xt[rows]), unit_rows(Yt[rows]), unit_rows(m.apply(Xt[rows]))
    return {
        "rows": [int(r) for r in rows],
        "labels": [labels[r] for r in rows] if labels else [],
        "map": m.name,
        "within_a": A @ A.T,
        "within_b": B @ B.T,
        "cross_before": A @ B.T,
        "cross_after": mapped @ B.T,
    }


def _projection(Xt, Yt, m: Map, labels, p: dict) -> dict:
    """2-D PCA of both spaces together, before and after the map (each fitted on the stacked rows)."""
    rows = _sample_rows(Xt.shape[0], p["projection_rows"], labels, p["seed"] + 1)

    def pca2(A, B):
        Z = np.vstack([A, B])
        Zc = Z - Z.mean(axis=0)
        _, V = np.linalg.eigh(Zc.T @ Zc)
        coords = Zc @ V[:, ::-1][:, :2]
        return coords[: len(A)], coords[len(A):]

    a0, b0 = pca2(Xt[rows], Yt[rows])
    a1, b1 = pca2(m.apply(Xt[rows]), Yt[rows])
    return {
        "map": m.name, "labels": [labels[r] for r in rows] if labels else [],
        "before_a": a0, "before_b": b0, "after_a": a1, "after_b": b1,
    }
