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
* ``penalised``: ``argmin ||Xc W - Yc||^2 / N + w ||W^T W - I||_F^2`` with a penalty *weight*
  ``w`` (``penalised_weight``), solved by a scaled L-BFGS from ``R``. This is not the ``lambda``
  of lambda-Orthogonality Regularization (Ricci et al., NeurIPS 2025): there ``lambda`` is a
  *threshold*, the deviation from orthogonality that is tolerated before any penalty applies.
  The two are tied by Lagrange duality: a minimiser ``W_w`` of the weighted problem also
  minimises ``||Xc W - Yc||^2`` among all ``W`` with ``||W^T W - I||_F <= ||W_w^T W_w - I||_F``
  (anything better inside that ball would beat ``W_w`` on the weighted objective too), so the
  threshold that a weight ``w`` enforces is the fitted map's ``orth_error``; the trade-off table
  lists both. A larger weight gives a smaller threshold; weight 0 is least squares (no
  threshold), weight infinity is Procrustes (threshold 0). The fit starts from ``R`` and finds a
  local minimum, for which the tie holds locally.

The ``/ N`` makes ``a``, ``g`` and ``w`` per-anchor quantities, comparable across anchor budgets.
Spaces of different widths are first brought to a common width (:func:`match_widths`).

The default follows the paper's model, ``y = (x - mu_x) Q + mu_y``: the fit is centred and rows
are *not* L2-normalised first (``normalise`` is an option). Normalising rows rescales each item
by its own factor, after which a mean shift is no longer a shift: a planted rotation plus shift
is then fitted only approximately. Retrieval compares cosines after the map either way.

Protocols. The main table reports, per map and anchor count, the mean over ``draws`` anchor
draws and an interval (:func:`summarise_draws`), on up to two splits (:func:`split_draws`):

* ``unseen classes`` (with labels): whole classes are held out, about ``test_fraction`` of the
  rows; anchors come only from the other classes, so the map is judged on kinds of items it
  never saw. This is the protocol of transfer claims and the page's headline.
* ``seen classes`` (with labels) or ``random rows`` (without): ``test_fraction`` of the rows of
  every class (of all rows) are held out; anchors and queries share classes, and sibling items
  (the same template or topic) sit on both sides, so the scores measure interpolation.

Each draw redraws the split (the held-out classes, or rows) and the anchors; the held-out rows
are queries and candidates both, so the two splits have galleries of about the same size, but
the unseen split's gallery holds whole classes, each query competing with its own class's
other items (``class_top1`` separates the two kinds of error).

Map-free similarities (no anchors, no map), each beside a permutation null of ``n_permutations``
shuffles of B's rows, with ``z = (value - null mean) / null sd``: linear CKA (Kornblith et al.
2019), debiased CKA (the unbiased HSIC estimator of Song et al. 2012 inside CKA), mutual k-nearest
neighbours (Huh et al. 2024) and SVCCA (Raghu et al. 2017).
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
from models.limits import check_memory

Progress = Callable[[float, str], None]

MAPS = ("procrustes", "procrustes_uncentred", "lstsq", "ridge", "relaxed", "penalised")
MAP_TITLES = {
    "none": "no map (identity)",
    "procrustes": "orthogonal Procrustes, centred",
    "procrustes_uncentred": "orthogonal Procrustes, uncentred",
    "lstsq": "least squares (affine)",
    "ridge": "ridge (affine)",
    "relaxed": "relaxed: between least squares and Procrustes",
    "penalised": "penalised: least squares + weight x ||W^T W - I||^2",
}
STRATEGIES = ("random", "kcenter", "volume")
WIDTHS = ("pca", "pad")
UNSEEN, SEEN, ROWS = "unseen classes", "seen classes", "random rows"
SPLIT_NOTES = {
    UNSEEN: "anchors and queries from disjoint classes: whole classes held out",
    SEEN: "anchors and queries share classes: a share of every class's rows held out",
    ROWS: "no labels: a random share of the rows held out; queries may share topics and templates with anchors",
}
RENAMED = {"penalised_lambda": "penalised_weight", "lambdas": "tradeoff_weights"}

DEFAULTS: dict = {
    "maps": list(MAPS),
    "anchors": None,  # None: a sweep of anchor counts; else a list of counts
    "seed": 0,
    "draws": 5,  # anchor draws (each with its own split) per split and anchor count
    "test_fraction": 0.3,
    "strategy": "random",
    "width": "pca",
    "centre": False,  # subtract each space's pool mean first (fights hubness in anisotropic spaces)
    "normalise": False,  # the paper's model: an orthogonal map up to a mean shift, rows not rescaled
    "proper": False,
    "scale": False,
    "ridge_alpha": 1e-3,
    "relaxed_gamma": 1e-2,
    "penalised_weight": 1e-2,
    "tradeoff_weights": [float(v) for v in np.logspace(-4, 2, 9)],
    "curves": True,
    "budget_maps": ["procrustes", "lstsq", "relaxed"],
    "strategies": list(STRATEGIES),
    "budget_seeds": 3,
    "n_permutations": 200,
    "knn_k": 10,
    "svcca_dims": 32,
    "heatmap_rows": 40,
    "projection_rows": 300,
}
# The penalised fits behind the tables stop at this tolerance rather than penalised()'s 1e-9:
# 2-3x fewer iterations, and on MiniLM -> e5 (16 to 336 anchors, both splits) no top-1 moved and
# no cosine by more than 2e-5.
TABLE_TOL = 1e-7
SCORE_KEYS = ("top1_ab", "top1_ba", "cos", "cos_centred", "class_top1_ab", "class_top1_ba")  # given an interval
METRIC_COLUMNS = (
    "split", "map", "weight", "n_anchors", "seed", "top1_ab", "top1_ba", "cos", "cos_centred", "orth_error",
    "draws", "interval", *(f"{k}_{s}" for k in SCORE_KEYS for s in ("lo", "hi", "sd")),
    "recall5_ab", "recall5_ba", "recall10_ab", "recall10_ba", "mean_rank_ab", "mean_rank_ba",
    "class_top1_ab", "class_top1_ba", "reflection", "strategy", "n_test", "n_test_classes",
)
DRAW_COLUMNS = (
    "split", "draw", "map", "weight", "n_anchors", "seed", "top1_ab", "top1_ba", "cos", "cos_centred", "orth_error",
    "recall5_ab", "recall5_ba", "recall10_ab", "recall10_ba", "mean_rank_ab", "mean_rank_ba",
    "class_top1_ab", "class_top1_ba", "reflection", "strategy", "n_test", "n_test_classes",
)


_THREADS = ThreadpoolController()  # limits BLAS threads around run() (see its docstring)
# Magnitudes whose squares, summed over a few million products, stay inside float64's normal range.
MAX_MAGNITUDE = 1e50
MIN_MAGNITUDE = 1e-50
# Rows aligned at most: every held-out row is ranked against every other, for every map, anchor
# count and draw (with the defaults about 800 times) and k-center anchors cost n x pool; above this
# a run takes hours. The n x n similarities themselves are computed in blocks of BLOCK_ELEMENTS.
MAX_ROWS = 20_000
BLOCK_ELEMENTS = 4_000_000
# Fits, PCA and map geometry need a few d x d float64 matrices at once (d: the common width).
WIDTH_MATRICES = 12


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
    top = float(np.abs(arr).max())
    if top > MAX_MAGNITUDE:
        raise OrthoscopeError(
            f"{name} holds values up to {top:.3g}: their products overflow float64 (beyond 1e308) in every fit; "
            "divide the embeddings by a common factor first (cosine scores do not change)."
        )
    if 0 < top < MIN_MAGNITUDE:
        raise OrthoscopeError(
            f"{name} holds values no larger than {top:.3g}: their products underflow to zero in every fit; "
            "multiply the embeddings by a common factor first (cosine scores do not change)."
        )
    return arr


def check_pair(X: np.ndarray, Y: np.ndarray, names: tuple[str, str] = ("A", "B")) -> None:
    if X.shape[0] != Y.shape[0]:
        raise OrthoscopeError(
            f"{names[0]} has {X.shape[0]} rows but {names[1]} has {Y.shape[0]}: row i of each must embed the "
            "same item."
        )


def check_size(X: np.ndarray, Y: np.ndarray, p: dict) -> None:
    """Refuse, before any work, a run whose rows or widths are beyond what it can do in bounded time
    and memory: ``MAX_ROWS`` rows, and the d x d matrices of the fits within the memory budget."""
    n = X.shape[0]
    if n > MAX_ROWS:
        raise OrthoscopeError(
            f"{n:,} rows: alignment ranks every held-out row against every other, for every map, anchor count and "
            f"draw, and takes at most {MAX_ROWS:,} rows; align a random subset of the items (the same rows of A and B)."
        )
    wide = max(X.shape[1], Y.shape[1])
    check_memory(WIDTH_MATRICES * 8 * wide * wide, f"maps between {X.shape[1]}- and {Y.shape[1]}-dimensional "
                 f"embeddings ({WIDTH_MATRICES} matrices of {wide} x {wide})")
    # The permutation nulls hold a block of shuffles at a time; their results, one number each.
    check_memory(8 * 4 * p["n_permutations"] + 8 * BLOCK_ELEMENTS * 4, "the permutation nulls")


def degeneracy_warnings(Z: np.ndarray, name: str) -> list[str]:
    """Refuse embeddings that carry nothing to align (all zero, every row the same); warn about a
    single dimension and about centred embeddings of rank 1 or below their possible rank."""
    n, d = Z.shape
    if not Z.any():
        raise OrthoscopeError(f"{name}'s embeddings are all zero: there is nothing to align.")
    if (Z == Z[0]).all():
        raise OrthoscopeError(f"every row of {name}'s embeddings is the same vector: the items cannot be told apart, "
                              "so there is nothing to align.")
    out = []
    if d == 1:
        out.append(f"{name} has a single dimension: the only orthogonal maps are +1 and -1, and the cosine of two "
                   "single numbers is +1 or -1, so retrieval ties half of the items; read its scores as a sign check.")
    Zc = Z - Z.mean(axis=0)
    G = Zc.T @ Zc if d <= n else Zc @ Zc.T
    evals = np.clip(np.linalg.eigvalsh(G), 0, None)
    # Eigenvalues of the Gram matrix carry an error near eps x the largest: directions below 1e-5 of
    # the largest singular value (1e-10 in eigenvalue) count as none.
    rank = int((evals > evals.max() * 1e-10).sum()) if evals.size and evals.max() > 0 else 0
    possible = min(n - 1, d)
    if d > 1 and rank <= 1:
        out.append(f"{name}'s embeddings vary along {'no direction' if rank == 0 else 'one direction'} only (centred "
                   f"rank {rank} of {d} dimensions): every item lies on one line, so most items cannot be told apart "
                   "and scores near chance are expected; the maps are pinned down along that line only.")
    elif rank < possible:
        out.append(f"{name}'s centred embeddings span {rank} of the {possible} directions {n} items in {d} dimensions "
                   "could span: the maps are pinned down on that span only, and what they do off it is arbitrary.")
    return out


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
    weight: float | None = None  # the map's penalty weight: ridge alpha, relaxed gamma, penalised weight
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
        return Map("ridge", self._solve(self.N * alpha, None), self.mu_x, self.mu_y, weight=alpha)

    def relaxed(self, gamma: float) -> Map:
        R = self.procrustes(True)
        return Map("relaxed", self._solve(self.N * gamma, R.W), self.mu_x, self.mu_y, weight=gamma,
                   reflection=R.reflection, scale=R.scale)

    def penalised(self, weight: float, start: np.ndarray | None = None, tol: float = 1e-9, max_iter: int = 500) -> Map:
        """Minimise ``f(W) = tr(W^T A W) - 2 tr(W^T B) + w ||W^T W - I||_F^2`` with ``A = Xc^T Xc / N``,
        ``B = Xc^T Yc / N`` (the constant ``||Yc||^2 / N`` left out).

        Nonconvex for ``w > 0``; starting at the Procrustes map puts it in the basin of the
        near-orthogonal solution. Solved by L-BFGS (Nocedal 1980) in the eigenbasis of ``A``,
        where ``W^T W`` is unchanged and ``A`` is diagonal, so each step costs two d x d products;
        the initial inverse Hessian is ``(2 Lambda + 8 w)^-1``, the curvature of the data term
        plus that of the penalty at an orthogonal ``W``. scipy's L-BFGS-B takes no such
        scaling and needed 5-30x longer here (tests/test_alignment.py compares the minima).
        Stops when one step lowers ``f`` by less than ``tol * max(|f|, 1)``.
        """
        eye = np.eye(self.d)
        evals, V = self.full_eigh()
        Bt = V.T @ (self.XtY / self.N)
        inv_h0 = 1.0 / (2 * evals + 8 * weight + 1e-12)
        R = self.procrustes(True)

        def f(Wt):
            E = Wt.T @ Wt - eye
            LW = evals[:, None] * Wt
            return (float((Wt * LW).sum() - 2 * (Wt * Bt).sum() + weight * (E * E).sum()),
                    2 * (LW - Bt) + 4 * weight * (Wt @ E))

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
        return Map("penalised", V @ Wt, self.mu_x, self.mu_y, weight=weight, reflection=R.reflection, scale=R.scale,
                   info=info)

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
            return self.penalised(params["penalised_weight"], tol=TABLE_TOL)
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


def row_cosines(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each matched row pair, raw and after removing each side's mean over these rows."""
    raw = (unit_rows(A) * unit_rows(B)).sum(axis=1)
    centred = (unit_rows(A - A.mean(axis=0)) * unit_rows(B - B.mean(axis=0))).sum(axis=1)
    return raw, centred


def cosines(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """Mean row cosine of matched rows, raw and after removing each side's mean over these rows."""
    raw, centred = row_cosines(A, B)
    return float(raw.mean()), float(centred.mean())


def retrieval(A: np.ndarray, B: np.ndarray, labels: list[str] | None = None, ks=(1, 5, 10)) -> dict:
    """Matched-pair retrieval by cosine in both directions.

    A -> B: for row ``i`` of ``A``, the rank of ``B_i`` among all rows of ``B`` (B -> A: the other
    way). Ranks count ties against the match (rank = number of candidates at least as similar as
    the match), so degenerate spaces cannot score by accident. ``class_top1``: the nearest
    candidate carries the query's label. Similarities are computed in float32 (see the tests:
    float64 gives the same displayed numbers), in blocks of rows (:func:`match_ranks`).
    """
    rank_ab, rank_ba, best_ab, best_ba = match_ranks(A, B)
    n = rank_ab.shape[0]
    out = {}
    for k in ks:
        key = "top1" if k == 1 else f"recall{k}"
        out[f"{key}_ab"] = float((rank_ab <= k).mean()) if k <= n else float("nan")
        out[f"{key}_ba"] = float((rank_ba <= k).mean()) if k <= n else float("nan")
    out["mean_rank_ab"] = float(rank_ab.mean())
    out["mean_rank_ba"] = float(rank_ba.mean())
    if labels is not None:
        lab = np.asarray(labels)
        out["class_top1_ab"] = float((lab[best_ab] == lab).mean())
        out["class_top1_ba"] = float((lab[best_ba] == lab).mean())
    else:
        out["class_top1_ab"] = out["class_top1_ba"] = float("nan")
    return out


def match_ranks(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the matched pairs in both directions and each row's / column's best match, from the
    cosine similarities ``S = unit(A) unit(B)^T`` (float32).

    ``S`` is n x n; above ``BLOCK_ELEMENTS`` it is never held whole: blocks of rows are multiplied
    twice, once for the diagonal and once to count, so memory stays at a block whatever ``n``.
    """
    UA, UB = unit_rows(A).astype(np.float32), unit_rows(B).astype(np.float32)
    n = UA.shape[0]
    if n * n <= BLOCK_ELEMENTS:
        S = UA @ UB.T
        diag = S.diagonal()
        return ((S >= diag[:, None]).sum(axis=1), (S >= diag[None, :]).sum(axis=0), S.argmax(axis=1),
                S.argmax(axis=0))
    step = max(1, BLOCK_ELEMENTS // n)
    blocks = [slice(i, min(n, i + step)) for i in range(0, n, step)]
    diag = np.empty(n, dtype=np.float32)
    for b in blocks:
        S = UA[b] @ UB.T
        diag[b] = S[np.arange(S.shape[0]), np.arange(b.start, b.stop)]
    rank_ab, rank_ba = np.empty(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    best_ab = np.empty(n, dtype=np.int64)
    col_best, col_arg = np.full(n, -np.inf, dtype=np.float32), np.zeros(n, dtype=np.int64)
    for b in blocks:
        S = UA[b] @ UB.T
        rank_ab[b] = (S >= diag[b, None]).sum(axis=1)
        rank_ba += (S >= diag[None, :]).sum(axis=0)
        best_ab[b] = S.argmax(axis=1)
        top, arg = S.max(axis=0), S.argmax(axis=0) + b.start
        better = top > col_best  # strictly: the first row wins ties, as argmax over the whole column
        col_best[better], col_arg[better] = top[better], arg[better]
    return rank_ab, rank_ba, best_ab, col_arg


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
    den = math.sqrt(gx) * math.sqrt(gy)  # not sqrt(gx * gy): the product of two fourth powers underflows first
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
    den = math.sqrt(hxx) * math.sqrt(hyy) if hxx > 0 and hyy > 0 else 0.0
    return float(hxy / den) if den > 0 else float("nan")


def knn_indices(Z: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity (in blocks of rows above
    ``BLOCK_ELEMENTS`` similarities, so the n x n matrix is never held whole)."""
    U = unit_rows(Z).astype(np.float32)
    n = U.shape[0]
    if n * n <= BLOCK_ELEMENTS:
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        return np.argpartition(-S, k - 1, axis=1)[:, :k]
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n, step):
        stop = min(n, start + step)
        S = U[start:stop] @ U.T
        S[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        out[start:stop] = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return out


def _knn_overlap(NX: np.ndarray, NY: np.ndarray) -> float:
    k = NX.shape[1]
    return float((NX[:, :, None] == NY[:, None, :]).any(axis=2).sum(axis=1).mean() / k)


def mutual_knn(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
    """Mean over rows ``i`` of ``|N_X(i) & N_Y(i)| / k``, the k-NN sets by cosine (Huh et al. 2024)."""
    k = min(k, X.shape[0] - 1)
    return _knn_overlap(knn_indices(X, k), knn_indices(Y, k))


def _top_left_singular(Zc: np.ndarray, max_dims: int, energy: float = 0.99) -> np.ndarray:
    """Orthonormal columns spanning the top SVD directions of ``Zc`` that keep ``energy`` of its variance
    (no columns when ``Zc`` has no variance at all)."""
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
    if total <= 0 or positive == 0:
        return 0
    k = int(np.searchsorted(np.cumsum(evals) / total, energy) + 1)
    return max(1, min(k, max_dims, positive))


def _mean_canonical(Ux: np.ndarray, Uy: np.ndarray) -> float:
    if Ux.shape[1] == 0 or Uy.shape[1] == 0:
        return float("nan")  # a space with no variance has no subspace to correlate
    return float(np.linalg.svd(Ux.T @ Uy, compute_uv=False).mean())


def svcca(X: np.ndarray, Y: np.ndarray, max_dims: int = 32) -> float:
    """Mean canonical correlation between the top SVD subspaces (99% of variance, at most
    ``max_dims`` directions) of each centred space (Raghu et al. 2017). The canonical
    correlations are the singular values of ``Ux^T Uy`` for orthonormal bases of those subspaces.
    """
    return _mean_canonical(_top_left_singular(_centre(X), max_dims), _top_left_singular(_centre(Y), max_dims))


def similarity_with_nulls(X: np.ndarray, Y: np.ndarray, *, n_permutations: int, seed: int, k: int,
                          svcca_dims: int) -> list[dict]:
    """The four map-free measures, each beside its permutation null: the same measure with the
    rows of ``Y`` shuffled ``n_permutations`` times.

    Per measure: ``null_mean``, ``null_sd``, ``z = (value - null_mean) / null_sd``, and
    ``p_value = (1 + #{null >= value}) / (1 + n_permutations)``, which cannot go below
    ``p_floor = 1 / (1 + n_permutations)``: a p-value at its floor says only "beyond every
    shuffle", and ``z`` says how far. The shuffles are vectorised and reuse what does not depend on
    the pairing (Gram norms, k-NN sets, SVD bases): linear and debiased CKA need
    ``||Xc^T P Yc||_F^2`` per shuffle ``P``, taken as ``sum(K * L[p][:, p])`` over the n x n Gram
    matrices when they are small and as ``Xc^T Yc[p]`` in float32 otherwise (a relative error
    near 1e-6, far below what is displayed); the observed values are float64.
    """
    n = X.shape[0]
    if n < 5:
        raise OrthoscopeError(f"the held-out split has {n} rows; map-free similarity needs at least 5.")
    # Every measure here is invariant to the scale of each space: bring both to a largest |value| of
    # 1 first, so that the Gram norms (fourth powers of the values) neither overflow nor underflow.
    X, Y = X / (float(np.abs(X).max()) or 1.0), Y / (float(np.abs(Y).max()) or 1.0)
    Xc, Yc = _centre(X), _centre(Y)
    k = min(k, n - 1)
    NX, NY = knn_indices(X, k), knn_indices(Y, k)
    Ux, Uy = _top_left_singular(Xc, svcca_dims), _top_left_singular(Yc, svcca_dims)
    gx, gy = _gram_norms_sq(Xc, Yc)
    a, b = (Xc * Xc).sum(axis=1), (Yc * Yc).sum(axis=1)
    knn_name = f"mutual {k}-NN"
    cross_obs = float(np.linalg.norm(Xc.T @ Yc) ** 2)
    observed = {
        "linear CKA": _cka_from(Xc, Yc, cross_obs, (gx, gy)),
        "debiased CKA": _debiased_from(Xc, Yc, cross_obs, None, (gx, gy)),
        knn_name: _knn_overlap(NX, NY),
        "SVCCA": _mean_canonical(Ux, Uy),
    }
    rng = np.random.default_rng(seed)
    den = math.sqrt(gx) * math.sqrt(gy)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in observed}
    # The shuffles are drawn and used a block at a time (the same sequence as drawing them all),
    # so that n_permutations x n indices are never held at once.
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_permutations, step):
        count = min(step, n_permutations - start)
        perms = np.stack([rng.permutation(n) for _ in range(count)])
        cross = _permuted_cross_sq(Xc, Yc, perms)
        parts["linear CKA"].append(cross / den if den > 0 else np.full(count, np.nan))
        parts["debiased CKA"].append(_permuted_debiased(cross, a, b, gx, gy, perms))
        parts[knn_name].append(_permuted_knn(NX, NY, perms))
        parts["SVCCA"].append(_permuted_svcca(Ux, Uy, perms))
    nulls = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
    rows = []
    floor = 1.0 / (1 + n_permutations)
    for name, value in observed.items():
        null = nulls[name]
        mean = float(null.mean()) if null.size else float("nan")
        sd = float(null.std(ddof=1)) if null.size > 1 else float("nan")
        rows.append({
            "measure": name, "value": value, "null_mean": mean, "null_sd": sd,
            "z": (value - mean) / sd if sd > 0 else float("nan"),
            "p_value": float((1 + (null >= value).sum()) / (1 + null.size)) if null.size else float("nan"),
            "p_floor": floor, "n_permutations": int(n_permutations), "n_rows": n,
        })
    return rows


def _chunks(total: int, per_item: int, budget: int = 4_000_000):
    """Slices of ``range(total)`` whose items, ``per_item`` elements each, fit in about ``budget`` elements."""
    step = max(1, budget // max(per_item, 1))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def _permuted_cross_sq(Xc: np.ndarray, Yc: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``||Xc^T Yc[p]||_F^2`` for each row ``p`` of ``perms``.

    Gathering an element of an n x n Gram matrix costs about 200 multiply-adds of a matrix
    product (bench/alignment.py prints the ratio; at d = 384 the two forms break even near
    n = 650), so the Gram form is taken while ``200 n < d_a d_b``.
    """
    n, (da, db) = Xc.shape[0], (Xc.shape[1], Yc.shape[1])
    out = np.empty(len(perms))
    if 200 * n < da * db and n * n <= BLOCK_ELEMENTS:
        K, L = Xc @ Xc.T, Yc @ Yc.T
        for sl in _chunks(len(perms), n * n):
            p = perms[sl]
            out[sl] = np.einsum("ij,bij->b", K, L[p[:, :, None], p[:, None, :]])
        return out
    X32, Y32 = Xc.astype(np.float32), Yc.astype(np.float32)
    for i, p in enumerate(perms):
        C = (X32.T @ Y32[p]).astype(np.float64)
        out[i] = float((C * C).sum())
    return out


def _permuted_debiased(cross: np.ndarray, a: np.ndarray, b: np.ndarray, gx: float, gy: float,
                       perms: np.ndarray) -> np.ndarray:
    n = a.size
    if n < 4 or not len(perms):
        return np.full(len(perms), np.nan)
    hxx, hyy = _hsic_u(gx, a, a), _hsic_u(gy, b, b)
    if not (hxx > 0 and hyy > 0):
        return np.full(len(perms), np.nan)
    ab = b[perms] @ a  # a . b[p] for each shuffle
    hxy = cross - n / (n - 2) * ab + float(a.sum() * b.sum()) / ((n - 1) * (n - 2))
    den = math.sqrt(hxx) * math.sqrt(hyy)
    return hxy / den if den > 0 else np.full(len(perms), np.nan)


def _permuted_knn(NX: np.ndarray, NY: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Mutual k-NN with Y's rows shuffled: row ``i`` of the shuffle is Y's row ``p[i]``, whose
    neighbours ``NY[p[i]]`` are renamed through the inverse shuffle."""
    n, k = NX.shape
    out = np.empty(len(perms))
    for sl in _chunks(len(perms), n * k * k):
        p = perms[sl]
        inverse = np.argsort(p, axis=1)
        NYp = np.take_along_axis(inverse, NY[p].reshape(len(p), -1), axis=1).reshape(len(p), n, k)
        hits = (NYp[:, :, :, None] == NX[None, :, None, :]).any(axis=3)
        out[sl] = hits.sum(axis=(1, 2)) / (n * k)
    return out


def _permuted_svcca(Ux: np.ndarray, Uy: np.ndarray, perms: np.ndarray) -> np.ndarray:
    n, ky = Uy.shape
    if Ux.shape[1] == 0 or ky == 0:
        return np.full(len(perms), np.nan)
    out = np.empty(len(perms))
    for sl in _chunks(len(perms), n * ky):
        M = Ux.T[None] @ Uy[perms[sl]]
        out[sl] = np.linalg.svd(M, compute_uv=False).mean(axis=1)
    return out


# ---------------------------------------------------------------------------------------
# Splits and anchors


def split_rows(n: int, test_fraction: float, seed, labels: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) row indices; with labels, every class gives the same fraction to the test split.

    ``seed``: an int or a sequence of ints (numpy seed entropy).
    """
    _check_fraction(test_fraction)
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


def _check_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise OrthoscopeError(f"the test fraction must lie strictly between 0 and 1 (got {test_fraction}).")


def class_split(labels: list[str], test_fraction: float, seed) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(pool, test, held-out classes): whole classes held out, so that no class has rows on both sides.

    The classes are shuffled with ``seed`` and the first ``m`` are held out, ``m`` the count
    (at least one, leaving at least one) whose rows come closest to ``test_fraction`` of all rows.
    """
    _check_fraction(test_fraction)
    lab = np.asarray(labels)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise OrthoscopeError("holding out whole classes needs at least 2 classes.")
    order = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    sizes = np.cumsum([int((lab == c).sum()) for c in order])
    m = int(np.argmin(np.abs(sizes[:-1] - test_fraction * len(lab)))) + 1
    held = order[:m]
    test_mask = np.isin(lab, held)
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask), sorted(held)


@dataclass
class SplitDraw:
    """One draw of one protocol: which rows may be anchors (``pool``) and which are held out."""

    split: str  # UNSEEN, SEEN or ROWS
    draw: int
    pool: np.ndarray
    test: np.ndarray
    held_out_classes: list[str] = field(default_factory=list)


SPLIT_CODES = {UNSEEN: 1, SEEN: 2, ROWS: 2}


def draw_seed(seed: int, draw: int, *keys: int):
    """Seed entropy of one draw. Draw 0 of the row split is ``seed`` itself, so that the single-split
    outputs (heatmaps, similarity, ...) and the first draw use the same held-out rows."""
    return seed if draw == 0 and not keys else [seed, draw, *keys]


def split_draws(n: int, labels: list[str] | None, p: dict) -> tuple[dict[str, list[SplitDraw]], list[str]]:
    """Every split's ``draws`` draws, headline split first, and notes on splits that could not be drawn.

    With labels: ``unseen classes`` (:func:`class_split`, dropped with a note when some draw leaves
    fewer than 5 held-out rows or 2 candidate anchors) and ``seen classes`` (:func:`split_rows`,
    stratified). Without: ``random rows``.
    """
    tf, seed, draws = p["test_fraction"], p["seed"], p["draws"]
    out: dict[str, list[SplitDraw]] = {}
    notes: list[str] = []
    if labels is not None:
        unseen = []
        for r in range(draws):
            pool, test, held = class_split(labels, tf, draw_seed(seed, r, SPLIT_CODES[UNSEEN]))
            unseen.append(SplitDraw(UNSEEN, r, pool, test, held))
        small = [d for d in unseen if len(d.test) < 5 or len(d.pool) < 2]
        if small:
            d = small[0]
            notes.append(
                f"No unseen-classes split: holding out {len(d.held_out_classes)} of {len(set(labels))} classes leaves "
                f"{len(d.test)} held-out rows and {len(d.pool)} candidate anchors (draw {d.draw}); it needs at least 5 "
                "and 2. Scores below are on seen classes only."
            )
        else:
            out[UNSEEN] = unseen
    name = SEEN if labels is not None else ROWS
    out[name] = [SplitDraw(name, r, *split_rows(n, tf, draw_seed(seed, r), labels)) for r in range(draws)]
    return out, notes


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
    data: dict  # what was aligned: source, rows, widths, splits and their sizes, width handling
    metrics: list  # the main table: per split, map and anchor count, the mean over draws (METRIC_COLUMNS)
    geometry: list  # per map at the detail anchor count: orth_error, det, condition, singular values
    similarity: list  # map-free measures with their permutation nulls
    budget: list  # quality against anchor budget: strategy, map, split, n_anchors, seed, scores
    tradeoff: list  # the orthogonality trade-off: family, weight, orth_error, scores
    cross_modal: list = field(default_factory=list)  # the fitted maps scored on the second modality
    zero_shot: list = field(default_factory=list)
    heatmaps: dict = field(default_factory=dict)
    projection: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    metric_draws: list = field(default_factory=list)  # the main table before averaging: one row per draw

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows(), columns=list(METRIC_COLUMNS))

    def _rows(self) -> list[dict]:
        # Reports written before the two splits had one unnamed split and called the weight "lambda".
        return [{**r, "split": r.get("split") or "held out", "weight": r.get("weight", r.get("lambda"))}
                for r in self.metrics]

    def tables(self) -> dict[str, pd.DataFrame]:
        geometry = pd.DataFrame([{k: v for k, v in g.items() if k != "singular_values"} for g in self.geometry])
        out = {
            "metrics": self.to_frame(),
            "metric_draws": pd.DataFrame(self.metric_draws, columns=list(DRAW_COLUMNS)),
            "map_geometry": geometry,
            "similarity": pd.DataFrame(self.similarity),
            "anchor_budget": pd.DataFrame(self.budget),
            "orthogonality_tradeoff": pd.DataFrame(self.tradeoff),
        }
        if self.cross_modal:
            out["cross_modal"] = pd.DataFrame(self.cross_modal)
        if self.zero_shot:
            out["zero_shot"] = pd.DataFrame(self.zero_shot)
        return out

    def detail_anchors(self) -> int:
        counts = [r["n_anchors"] for r in self.metrics if r["map"] != "none"]
        return max(counts) if counts else 0

    def splits(self) -> list[str]:
        """The splits of the main table, headline first."""
        return list(dict.fromkeys(r["split"] for r in self._rows()))

    def headline(self, map_name: str = "procrustes") -> dict:
        """What the page leads with: ``map_name`` (else the first map) on the first split (unseen
        classes when there are labels) at that split's largest anchor count, with its no-map
        baseline, chance, and the same map on the other split. A split none of whose draws could
        reach an asked anchor count has no map rows and is passed over."""
        metrics = self._rows()
        maps = [r for r in metrics if r["map"] != "none"]
        if not any(r["map"] == map_name for r in maps):
            map_name = maps[0]["map"]
        split = self.splits()[0]

        def best(in_split: str) -> dict | None:
            rows = [r for r in maps if r["split"] == in_split and r["map"] == map_name]
            return max(rows, key=lambda r: r["n_anchors"]) if rows else None

        row = best(split)
        if row is None:  # no draw of the first split reached any asked count: lead with the next
            split = next(s for s in self.splits() if best(s) is not None)
            row = best(split)
        baseline = next(r for r in metrics if r["split"] == split and r["map"] == "none")
        others = [best(s) for s in self.splits() if s != split]
        info = next((i for i in self.data.get("splits", []) if i["split"] == split), None)
        held = ""
        if info and info.get("held_out_classes"):
            lo, hi = min(map(len, info["held_out_classes"])), max(map(len, info["held_out_classes"]))
            held = f"{lo if lo == hi else f'{lo}-{hi}'} of {len(self.data.get('labels', []))} classes held out in each draw"
        return {
            "split": split, "note": SPLIT_NOTES.get(split, ""), "held_out": held, "map": map_name, "row": row,
            "baseline": baseline,
            "chance": 1.0 / row["n_test"] if row["n_test"] else float("nan"),
            "other": next((o for o in others if o is not None), None),
        }


def resolve_params(params: dict | None) -> dict:
    """Defaults filled in and checked, so that the result records every value used."""
    given = dict(params or {})
    renamed = [k for k in given if k in RENAMED]
    if renamed:
        raise OrthoscopeError("; ".join(f"the alignment parameter {k} is now called {RENAMED[k]}" for k in renamed) + ".")
    p = {**DEFAULTS, **given}
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
    for key in ("ridge_alpha", "relaxed_gamma", "penalised_weight"):
        if not (isinstance(p[key], (int, float)) and p[key] >= 0):
            raise OrthoscopeError(f"{key} must be a number >= 0 (got {p[key]!r}).")
    for key, low, high in (("draws", 1, 100), ("n_permutations", 0, 100_000), ("seed", 0, 2**63 - 1)):
        if not (isinstance(p[key], (int, np.integer)) and not isinstance(p[key], bool) and low <= p[key] <= high):
            raise OrthoscopeError(f"{key} must be a whole number from {low} to {high} (got {p[key]!r}).")
        p[key] = int(p[key])
    if p["anchors"] is not None:
        p["anchors"] = sorted({int(a) for a in p["anchors"]})
    p["tradeoff_weights"] = sorted(float(v) for v in p["tradeoff_weights"])
    return p


def run(inputs: AlignmentInputs, params: dict | None = None, progress: Progress | None = None) -> AlignmentResult:
    """Fit the maps on anchors from the pool, score them on the held-out split, draw the curves.

    Runs on one BLAS thread per Python thread: the work is many small dense products and
    factorisations (d x d with d of a few hundred), which threads barely speed up on an idle
    machine and slow down 10-50x on busy cores (OpenBLAS's threaded SVD of a 384 x 384 matrix:
    0.3-2 s against 0.05 s on one thread; bench/alignment.py prints both). Instead the
    independent draws of the main table (with the map-free measures beside them) and the jobs of
    the anchor-budget curve run in two Python threads (numpy releases the GIL inside its
    products), so a second core is used when it is free.
    """
    with _THREADS.limit(limits=1, user_api="blas"):
        try:
            return _run(inputs, params, progress)
        except np.linalg.LinAlgError as exc:  # the checks in _run leave none known; a one-line refusal if one slips by
            raise OrthoscopeError(f"a factorisation did not converge on these embeddings ({exc}); check them for "
                                  "extreme or degenerate values.") from None


def _run(inputs: AlignmentInputs, params: dict | None, progress: Progress | None) -> AlignmentResult:
    start = time.perf_counter()
    p = resolve_params(params)
    report = progress or (lambda f, m: None)
    X, Y = as_matrix(inputs.X, f"{inputs.name_a} embeddings"), as_matrix(inputs.Y, f"{inputs.name_b} embeddings")
    check_pair(X, Y, (inputs.name_a, inputs.name_b))
    check_size(X, Y, p)
    degenerate = degeneracy_warnings(X, inputs.name_a) + degeneracy_warnings(Y, inputs.name_b)
    labels = check_labels(inputs.labels, X.shape[0])
    if labels is not None and len(set(labels)) < 2:
        labels = None  # one class carries no information for class-level scores
    timings: dict[str, float] = dict(inputs.timings)

    splits, warnings = split_draws(X.shape[0], labels, p)
    warnings = degenerate + warnings
    rows_split = splits[SEEN if labels is not None else ROWS][0]
    prep = _prepare(X, Y, p, rows_split.pool, rows_split.test)
    pool, test, Xw, Yw = prep["pool"], prep["test"], prep["X"], prep["Y"]
    d = Xw.shape[1]
    # The default sweep ends where every draw of every split can still follow, so that the splits
    # are compared at the same counts.
    smallest = min(len(sd.pool) for draws in splits.values() for sd in draws)
    counts = p["anchors"] or anchor_sweep(smallest)
    if p["anchors"] is None and smallest < 0.9 * len(rows_split.pool):
        warnings.append(
            f"The anchor sweep stops at {smallest}, the fewest candidate anchors of any draw of the unseen-classes "
            f"split (whole classes are held out, and classes differ in size); the {rows_split.split} split alone "
            f"could use up to {len(rows_split.pool)}. Ask for more anchors to see it there."
        )
    if counts[-1] > len(pool):
        raise OrthoscopeError(
            f"asked for {counts[-1]} anchors but only {len(pool)} of the {X.shape[0]} rows are outside the held-out "
            f"split (test fraction {p['test_fraction']})."
        )
    if counts[0] < 2:
        raise OrthoscopeError(f"{counts[0]} anchor(s) cannot fit a map; use at least 2.")
    test_labels = [labels[i] for i in test] if labels else None

    draw_rows, details, skipped = _main_table(X, Y, labels, splits, counts, p, prep, report, timings)
    similarity = details.pop("similarity")
    rows = summarise_draws(draw_rows, p)
    draw_rows = [{c: r.get(c) for c in DRAW_COLUMNS} for r in draw_rows]
    headline_split = next(iter(splits))
    detail = details[rows_split.split]
    detail_fitter, detail_maps, detail_anchors = detail["fitter"], detail["maps"], detail["anchors"]
    n_detail = len(detail_anchors)
    warnings += _warnings(detail_fitter, detail_maps, n_detail, d, prep)
    warnings += _skipped_warnings(skipped, splits)

    report(0.42, "map geometry")
    t0 = time.perf_counter()
    geometry = [
        {"map": m.name, "weight": m.weight, "n_anchors": n_detail, "split": rows_split.split, **map_geometry(m.W),
         "scale": m.scale, "anchor_rank": detail_fitter.rank, "anchor_effective_rank": detail_fitter.effective_rank()}
        for m in detail_maps
    ]
    timings["geometry_s"] = time.perf_counter() - t0

    cross, zshot = _other_modality(inputs, prep, detail_maps, test, labels, p, rows_split.split)

    budget, tradeoff = [], []
    if p["curves"]:
        t0 = time.perf_counter()
        budget = _budget_curve(prep, labels, p, lambda f, m: report(0.5 + 0.35 * f, m))
        timings["budget_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report(0.86, "orthogonality trade-off")
        h = details[headline_split] if details[headline_split]["fitter"] is not None else detail
        tradeoff = _tradeoff_curve(h["fitter"], h["Xt"], h["Yt"], h["test_labels"], p, h["split_draw"].split)
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
        "detail_split": rows_split.split,
        "headline_split": headline_split,
        "splits": [_split_info(name, draws) for name, draws in splits.items()],
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
        metric_draws=draw_rows,
    )
    # The page shows exactly what a saved report reloads: plain JSON values, no arrays.
    return AlignmentResult.from_dict(result.to_dict())


def _timed(func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


def _split_info(name: str, draws: list[SplitDraw]) -> dict:
    return {
        "split": name, "note": SPLIT_NOTES[name], "draws": len(draws),
        "n_pool": [int(len(sd.pool)) for sd in draws], "n_test": [int(len(sd.test)) for sd in draws],
        "held_out_classes": [sd.held_out_classes for sd in draws] if name == UNSEEN else [],
    }


def _main_table(X, Y, labels, splits: dict[str, list[SplitDraw]], counts: list[int], p: dict, prep: dict,
                report: Progress, timings: dict):
    """Every map at every anchor count, in every draw of every split, plus the no-map rows; and the
    map-free measures on the row split's held-out rows, beside them in the same two threads.

    Returns the per-draw rows, draw 0 of each split (its maps at its largest count, for the
    detail outputs) plus the similarity rows under ``"similarity"``, and the counts each draw had
    to skip (a split whose candidate anchors are fewer than asked).
    """
    start = time.perf_counter()
    jobs = [sd for draws in splits.values() for sd in draws]
    rows_split = next(sd for sd in jobs if sd.split != UNSEEN)
    details: dict = {}
    rows: list[dict] = []
    skipped: list[tuple[SplitDraw, list[int]]] = []
    with ThreadPoolExecutor(max_workers=2) as executor:
        similarity_job = executor.submit(
            _timed, similarity_with_nulls, prep["Xn"][rows_split.test], prep["Yn"][rows_split.test],
            n_permutations=p["n_permutations"], seed=p["seed"], k=p["knn_k"], svcca_dims=p["svcca_dims"])
        futures = [executor.submit(_draw_job, X, Y, labels, sd, counts, p, prep if sd is rows_split else None)
                   for sd in jobs]
        for i, future in enumerate(futures):
            out = future.result()
            report(0.05 + 0.35 * (i + 1) / len(futures), f"fitted {out['split_draw'].split}, draw {out['split_draw'].draw + 1}")
            rows += out["rows"]
            if out["skipped"]:
                skipped.append((out["split_draw"], out["skipped"]))
            if out["split_draw"].draw == 0:
                details[out["split_draw"].split] = out
        details["similarity"], timings["similarity_s"] = similarity_job.result()
    timings["fit_and_score_s"] = time.perf_counter() - start
    return rows, details, skipped


def _draw_job(X, Y, labels, sd: SplitDraw, counts: list[int], p: dict, prep: dict | None) -> dict:
    """One draw of one split: prepare the spaces from its pool, then fit and score every map at
    every count its pool allows. Only draw 0 keeps its spaces and fits."""
    prep = prep or _prepare(X, Y, p, sd.pool, sd.test)
    Xw, Yw = prep["X"], prep["Y"]
    Xt, Yt = Xw[sd.test], Yw[sd.test]
    test_labels = [labels[i] for i in sd.test] if labels else None
    rows = [_metric_row(identity_map(Xw.shape[1]), Xt, Yt, test_labels, 0, p, sd)]
    rng = np.random.default_rng(draw_seed(p["seed"], sd.draw, 3, SPLIT_CODES[sd.split]))
    fitter, maps, anchors, skipped = None, [], np.zeros(0, int), []
    for n in counts:
        if n > len(sd.pool):
            skipped.append(n)
            continue
        anchors = choose_anchors(Xw, sd.pool, n, p["strategy"], rng)
        fitter = Fitter(Xw[anchors], Yw[anchors], proper=p["proper"], scale=p["scale"])
        maps = [fitter.fit(name, p) for name in p["maps"]]
        rows += [_metric_row(m, Xt, Yt, test_labels, n, p, sd) for m in maps]
    out = {"split_draw": sd, "rows": rows, "skipped": skipped}
    if sd.draw == 0:
        out.update(fitter=fitter, maps=maps, anchors=anchors, Xt=Xt, Yt=Yt, test_labels=test_labels)
    return out


def _skipped_warnings(skipped, splits) -> list[str]:
    out = []
    for name in splits:
        hits = [(sd, counts) for sd, counts in skipped if sd.split == name]
        if hits:
            counts = sorted({c for _, c in hits for c in c})
            fewest = min(len(sd.pool) for sd, _ in hits)
            out.append(
                f"The {name} split has as few as {fewest} candidate anchors outside its held-out rows, too few for "
                f"{', '.join(map(str, counts))} anchors in {len(hits)} of {len(splits[name])} draws: its rows at those "
                "counts average only the draws that had enough, and are missing where none had."
            )
    return out


def summarise_draws(draw_rows: list[dict], p: dict) -> list[dict]:
    """The main table: per split, map and anchor count, the mean over draws with an interval.

    With ``k >= 2`` draws, ``_lo``/``_hi`` bound the 95% t-interval of the mean over draws,
    ``mean +- t_{0.975, k-1} sd / sqrt(k)``, and ``_sd`` is the spread of one draw; each draw
    redraws the split and the anchors, so the interval covers both. With one draw there is no
    spread to use: top-1 gets the Wilson 95% interval over that draw's queries and cosines
    ``mean +- 1.96 sd_rows / sqrt(n)``, conditional on its anchors. Rows come headline split
    first, then the no-map row and the maps by anchor count.
    """
    from scipy import stats

    groups: dict[tuple, list[dict]] = {}
    for r in draw_rows:
        groups.setdefault((r["split"], r["map"], r["n_anchors"]), []).append(r)
    split_order = list(dict.fromkeys(r["split"] for r in draw_rows))
    map_order = ["none", *p["maps"]]
    keys = sorted(groups, key=lambda g: (split_order.index(g[0]), g[2], map_order.index(g[1])))
    out = []
    for key in keys:
        g = groups[key]
        k = len(g)
        first = g[0]
        row = {"split": key[0], "map": key[1], "weight": first["weight"], "n_anchors": key[2], "seed": p["seed"],
               "draws": k}
        for col in DRAW_COLUMNS:
            if col in row or col in ("draw", "reflection", "strategy"):
                continue
            row[col] = _mean([r[col] for r in g])
        row["reflection"] = any(r["reflection"] for r in g)
        row["strategy"] = first["strategy"]
        for col in SCORE_KEYS:
            values = np.array([r[col] for r in g], dtype=float)
            share = "top1" in col  # a share of queries, bounded by 0 and 1; cosines by -1 and 1
            low, high = (0.0, 1.0) if share else (-1.0, 1.0)
            if k >= 2:
                sd = float(values.std(ddof=1))
                half = float(stats.t.ppf(0.975, k - 1)) * sd / math.sqrt(k)
                lo, hi = values.mean() - half, values.mean() + half
            else:
                sd = float("nan")
                n = first["n_test"]
                if share:
                    lo, hi = wilson(values[0], n)
                else:
                    half = 1.96 * first[f"_{col}_rows_sd"] / math.sqrt(n)
                    lo, hi = values[0] - half, values[0] + half
            row[f"{col}_lo"], row[f"{col}_hi"], row[f"{col}_sd"] = float(max(lo, low)), float(min(hi, high)), sd
        row["interval"] = (f"95% t-interval of the mean over {k} draws" if k >= 2
                           else f"95% over the {first['n_test']} queries of one draw (top-1: Wilson)")
        out.append({c: row.get(c) for c in METRIC_COLUMNS})
    return out


def _mean(values: list):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan")
    m = float(np.mean(vals))
    return int(m) if all(isinstance(v, (int, np.integer)) for v in vals) and m == int(m) else m


def wilson(p_hat: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p_hat`` of ``n`` trials (Wilson 1927)."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    # At 0 or 1 the bound on that side is exact; the formula leaves rounding residue.
    return (0.0 if p_hat <= 0 else centre - half), (1.0 if p_hat >= 1 else centre + half)


def _prepare(X: np.ndarray, Y: np.ndarray, p: dict, pool: np.ndarray, test: np.ndarray) -> dict:
    """Per space: optional shift by the pool mean, optional L2 row norm, common width, each
    learned from ``pool`` only (the held-out rows never shape the spaces they are scored in).

    The shift is the first modality's pool mean and is applied to every matrix of that model's
    space (second modality, prompts), so relations between modalities are kept.
    """
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


def _metric_row(m: Map, Xt, Yt, labels, n: int, p: dict, sd: SplitDraw) -> dict:
    mapped = m.apply(Xt)
    raw, centred = row_cosines(mapped, Yt)
    scores = retrieval(mapped, Yt, labels)
    return {
        "split": sd.split, "draw": sd.draw, "map": m.name, "weight": m.weight, "n_anchors": n, "seed": p["seed"],
        **scores, "cos": float(raw.mean()), "cos_centred": float(centred.mean()),
        "orth_error": orth_error(m.W), "reflection": m.reflection, "strategy": p["strategy"] if n else "",
        "n_test": int(Xt.shape[0]), "n_test_classes": len(set(labels)) if labels else None,
        "_cos_rows_sd": float(raw.std(ddof=1)) if raw.size > 1 else float("nan"),
        "_cos_centred_rows_sd": float(centred.std(ddof=1)) if centred.size > 1 else float("nan"),
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
    pool, test = prep["pool"], prep["test"]
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
    jobs = [(s, st, seed) for s in settings for st in p["strategies"] for seed in range(p["seed"], p["seed"] + p["budget_seeds"])]
    out = []
    # Independent jobs, each with its own seeded generator: two threads, results in job order.
    with ThreadPoolExecutor(max_workers=2) as executor:
        futures = [executor.submit(_budget_job, prep, job, p) for job in jobs]
        for j, ((split, _, _), strategy, seed) in enumerate(jobs):
            report(j / len(jobs), f"anchor budget: {split} classes, {strategy}, seed {seed}")
            out += futures[j].result()
    return out


def _budget_job(prep: dict, job, p: dict) -> list[dict]:
    (split, candidates, mask), strategy, seed = job
    test, Xw, Yw = prep["test"], prep["X"], prep["Y"]
    out = []
    rng = np.random.default_rng(seed)
    for n in anchor_sweep(len(candidates)):
        anchors = choose_anchors(Xw, candidates, n, strategy, rng)
        fitter = Fitter(Xw[anchors], Yw[anchors], proper=p["proper"], scale=p["scale"])
        for name in p["budget_maps"]:
            m = fitter.fit(name, p)
            mapped = m.apply(Xw[test])
            groups = [("all", None)] if mask is None else [("seen", mask), ("unseen", ~mask)]
            rank_ab, rank_ba, _, _ = match_ranks(mapped, Yw[test])
            hit_ab, hit_ba = rank_ab == 1, rank_ba == 1
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


def _tradeoff_curve(fitter: Fitter, Xt, Yt, labels, p: dict, split: str) -> list[dict]:
    """Orthogonality error against held-out retrieval along the relaxed and penalised families,
    on draw 0 of the headline split at its largest anchor count.

    ``weight`` is each family's penalty weight. ``orth_error`` is, for the penalised family, the
    threshold of lambda-Orthogonality that the weight enforces (module docstring), and
    ``dist_to_procrustes`` = ``||W - R||_F`` the same for the relaxed family, whose penalty is on
    the distance to ``R``. The penalised path runs from the largest weight down, each fit starting
    from the previous one. The two ends, least squares and Procrustes, are included as references.
    """
    out = []
    R = fitter.procrustes(True).W

    def row(m: Map, family: str):
        scores = evaluate(m, Xt, Yt, labels)
        out.append({"family": family, "weight": m.weight, "orth_error": orth_error(m.W),
                    "dist_to_procrustes": float(np.linalg.norm(m.W - R)), "top1_ab": scores["top1_ab"],
                    "top1_ba": scores["top1_ba"], "cos": scores["cos"], "cos_centred": scores["cos_centred"],
                    "split": split, "n_anchors": fitter.N, "n_test": int(Xt.shape[0])})

    row(fitter.lstsq(), "lstsq")
    row(fitter.procrustes(True), "procrustes")
    for weight in p["tradeoff_weights"]:
        row(fitter.relaxed(weight), "relaxed")
    W = R
    for weight in sorted(p["tradeoff_weights"], reverse=True):
        m = fitter.penalised(weight, start=W, tol=TABLE_TOL)
        W = m.W
        row(m, "penalised")
    return out


def _other_modality(inputs: AlignmentInputs, prep: dict, maps: list[Map], test, labels, p: dict, split: str):
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
            cross.append({"map": m.name, "weight": m.weight, "fitted_on": inputs.modality,
                          "tested_on": inputs.modality2, "split": split if paired else "all rows",
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
        if coords.shape[1] < 2:  # a single dimension: its values on x, nothing on y
            coords = np.hstack([coords, np.zeros((coords.shape[0], 2 - coords.shape[1]))])
        return coords[: len(A)], coords[len(A):]

    a0, b0 = pca2(Xt[rows], Yt[rows])
    a1, b1 = pca2(m.apply(Xt[rows]), Yt[rows])
    return {
        "map": m.name, "labels": [labels[r] for r in rows] if labels else [],
        "before_a": a0, "before_b": b0, "after_a": a1, "after_b": b1,
    }
