"""Spectra: the eigenvalue spectrum of every weight matrix and the heavy-tail metrics built on it.

For a weight matrix ``W`` of shape ``N x M`` (``N >= M``; a wide matrix is transposed), the
empirical spectral density (ESD) is the set of eigenvalues of the correlation matrix
``X = W^T W``, i.e. the squared singular values ``lambda_i = s_i(W)^2``, i = 1..M.
As in WeightWatcher there is no ``1/N`` factor unless ``SpectraParams.normalize`` asks for it.

Metrics of one layer (the columns of the ``layers`` table)
------------------------------------------------------------
* ``N, M, Q = N/M, rf`` (receptive field: kernel positions of a convolution, 1 otherwise),
  ``num_evals`` (``M * rf``).
* ``lambda_max`` (WeightWatcher's ``spectral_norm``), ``log_spectral_norm = log10 lambda_max``,
  ``frobenius_norm_sq = sum lambda = ||W||_F^2``, ``log_norm = log10 frobenius_norm_sq``,
  ``stable_rank = frobenius_norm_sq / lambda_max``. (diagnostics.glossary says what every column means.)
* ``matrix_rank``: number of singular values above ``s_max * N * eps`` (numpy's rule);
  ``rank_loss = M - rank`` (summed over the slices of a convolution);
  ``weak_rank_loss``: eigenvalues below 1e-6.
* ``entropy``: spectral entropy normalised by the log of the rank,
  ``H = -sum p_i ln p_i / ln(rank)`` with ``p_i = lambda_i / sum lambda + 1e-10`` (the 1e-10 guard
  is WeightWatcher's; kept so the values agree).
* Power-law tail (Martin & Mahoney, "Implicit self-regularization in deep neural networks",
  JMLR 2021; Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review
  2009): over the eigenvalues above 1e-5, for every candidate ``xmin`` (each eigenvalue but the
  largest) the maximum-likelihood exponent ``alpha = 1 + n / sum_{x >= xmin} ln(x / xmin)``
  (``n`` = size of that tail) and the Kolmogorov-Smirnov distance ``D`` between the tail and the
  fitted law ``F(x) = 1 - (x / xmin)^(1 - alpha)``; the candidate with the smallest ``D`` wins.
  Reported: ``alpha, xmin, xmax, D, sigma = (alpha - 1) / sqrt(n), num_pl_spikes`` (eigenvalues
  ``>= xmin``), ``alpha_weighted = alpha * log10 lambda_max``,
  ``log_alpha_norm = log10 sum lambda^alpha`` and ``warning`` ("over-trained" for alpha < 2,
  "under-trained" for alpha > 6).
  ``pl_method`` is "clauset", or "small-n (min D)" for WeightWatcher 0.7.7's estimator below 20
  points (bias-corrected alpha, tails of at least 8 points, the smallest D wins, as WeightWatcher's
  ``WWFit`` does after its small-sample routine), or "small-n (J)" with ``small_n_rule="j"`` (the
  routine's own J criterion, ``D - 0.868 / sqrt(n_tail)``).
  ``D`` compares the fitted CDF with the empirical CDF just below each point (WeightWatcher's
  convention, see :func:`power_law_scan`). With ``fix_fingers="clip_xmax"`` also ``num_fingers``
  and ``raw_alpha`` (the unclipped alpha).
* Phase and trust (see :func:`fit_mp_bulk`, :func:`classify_phase`, :func:`trust_verdict`):
  ``mp_sigma, mp_edge, num_above_mp_edge, mp_bulk_ks`` describe the Marchenko-Pastur law fitted to
  the bulk (robust to spikes: the bulk's own mean, outliers left out) and its edge plus 4
  Tracy-Widom scales; ``tail_past_mp_edge`` is the share of the fitted tail beyond that edge;
  ``phase`` is one of random-like, bulk+spikes, heavy-tailed, very-heavy-tailed (too-small for
  layers skipped for having too few eigenvalues), after Martin & Mahoney's phases (JMLR 2021);
  ``pl_trust`` and ``pl_verdict`` say whether the power law is believed and why. Only the
  heavy-tailed phases are trusted.
* Goodness of fit (see :mod:`diagnostics.power_law`): likelihood-ratio tests of the power law
  against lognormal, exponential and truncated power law on the tail (``lr_*_R`` normalised
  log-likelihood ratio, positive favours the power law, and its ``lr_*_p``); ``alpha_ci_low,
  alpha_ci_high`` with ``alpha_ci_method`` "asymptotic" (alpha +- z (alpha - 1) / sqrt(n_tail),
  xmin fixed) or, with ``gof``, "bootstrap" (xmin re-chosen in every resample) and then also
  ``pl_pvalue``, Clauset, Shalizi & Newman's semi-parametric bootstrap p-value.
* With ``mp_fit``: ``sigma_mp, bulk_min, bulk_max, num_spikes, mp_softrank`` (WeightWatcher's
  Marchenko-Pastur fit, see :func:`fit_marchenko_pastur`).
* With ``randomize``: ``rand_lambda_max, ww_softrank, rand_num_spikes`` from the ESD of the same
  matrix with its elements shuffled (seeded), and ``rand_distance``: WeightWatcher's Jensen-Shannon
  distance between the two sorted eigenvalue vectors, each read as a probability vector element
  by element (not a distance between the two spectral densities).
* With ``detx``: ``detX_num, detX_val, ERG_gap`` (SETOL: Martin & Hinrichs, "SETOL: a
  semi-empirical theory of (deep) learning", 2025; see :func:`detx_constraint`).
* Convolutions: WeightWatcher pools the eigenvalues of the ``(out, in)`` slice at every kernel
  position (and, by default, scales conv2d kernels by 1/sqrt(2): ``conv2d_norm``). With
  ``conv2d_fft`` the exact singular values ``s`` of the convolution operator with circular
  padding on an ``fft_input_size``-pixel input are added (Sedghi, Gupta & Long, "The singular
  values of convolutional layers", ICLR 2019; see :func:`conv_operator_singular_values`):
  ``conv_fft_n, conv_sv_max`` (the operator norm), ``conv_sv_min``, and the distance from
  orthogonality ``conv_orth_max_dev = max |s - 1|`` and ``conv_orth_rms_dev = sqrt(mean (s - 1)^2)``
  (0 for an orthogonal convolution).
* ``eig_method``: which route gave the eigenvalues (below).

Numerics: spectra are computed in float64. By default (``eig_method="gram"``) as the eigenvalues
(LAPACK ``syevr``) of the float64 Gram matrix of the smaller side, accumulated with BLAS ``syrk``
over row blocks; products of float32 weights are exact in float64, and every eigenvalue has an
absolute error of about ``eps * lambda_max`` (eps = 2.2e-16). This is 2-3x faster than a float64
SVD, and needs one matrix plus an ``M x M`` float64 array in memory. When the smallest eigenvalue
is below ``1e3 * eps * lambda_max`` (near-singular, where that error would decide the rank), the
layer is recomputed with ``torch.linalg.svdvals`` in float64 ("svd-fallback").
``eig_method="svd"`` always uses the SVD. On the built-in models both routes agree to 1e-9 in
every reported metric, and with WeightWatcher (float64 SciPy SVD) to ~1e-12.

Layers that cannot be analysed (1-D, NaN/Inf, all zeros, fewer than ``min_evals`` eigenvalues)
raise :class:`LayerSkipped` from :func:`analyse_matrix`; :func:`run` lists them with the reason
and goes on.

This module never imports streamlit or plotly.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch
from scipy import linalg, optimize, special, stats
from scipy.linalg import blas

from diagnostics.power_law import (
    LR_ALTERNATIVES,
    OVER_TRAINED_ALPHA,
    SMALL_N_MIN_TAIL,
    SMALL_N_RULES,
    UNDER_TRAINED_ALPHA,
    PowerLawFit,
    alpha_interval_asymptotic,
    alpha_warning,
    compare_distributions,
    fit_power_law,
    fitted_sample,
    goodness_of_fit,
)
from diagnostics.result import Params, Result
from models.errors import OrthoscopeError

# Guard added to the probabilities in the spectral entropy (WeightWatcher's EPSILON).
ENTROPY_EPSILON = 1e-10
# Eigenvalues below this count towards weak_rank_loss (WeightWatcher's tolerance).
WEAK_RANK_TOL = 1e-6
# The Gram route is trusted while lambda_min >= this * lambda_max; below, the SVD decides.
GRAM_RELIABLE = 1e3 * float(np.finfo(np.float64).eps)
# float64 elements per block when forming a Gram matrix (16 MiB) or a density estimate.
_BLOCK_ELEMS = 1 << 21
# Linear-kernel bandwidth and density floor of WeightWatcher's Marchenko-Pastur fit.
MP_BANDWIDTH = 0.1
MP_DENSITY_FLOOR = 0.01
# Tracy-Widom quantile used for mp_edge: P(TW1 > 4) is about 1e-4.
TW_QUANTILE = 4.0
# Phase rule (see classify_phase): a tail is "past the bulk" when this share of it lies past the
# MP edge; an MP-like bulk with at most this share of eigenvalues past the edge is bulk+spikes.
TAIL_MAJORITY = 0.5
SPIKE_SHARE = 0.1
LR_COLUMNS = tuple(f"lr_{alt}_{k}" for alt in LR_ALTERNATIVES for k in ("R", "p"))
# Below this bootstrap p-value the power law is ruled out (Clauset, Shalizi & Newman 2009, 4.1).
PL_PVALUE_MIN = 0.1

EIG_METHODS = ("gram", "svd")
FIX_FINGERS = (None, "clip_xmax")

# Columns that describe the power-law fit: headline means use trusted rows only.
_FIT_METRICS = ("alpha", "alpha_weighted", "log_alpha_norm", "D")
_HEADLINE = [
    "alpha", "alpha_weighted", "log_norm", "log_alpha_norm", "log_spectral_norm", "stable_rank", "entropy",
    "D", "mp_softrank", "rand_distance", "ww_softrank", "ERG_gap",
]


# ---------------------------------------------------------------------------------------
# Parameters and result


@dataclass
class SpectraParams(Params):
    """Options of the spectra diagnostic (defaults follow WeightWatcher 0.7.7's ``analyze``).

    normalize: divide the eigenvalues by N (the ``1/N`` of the correlation matrix).
    min_evals: skip layers with fewer eigenvalues (WeightWatcher's default 8).
    max_evals: skip layers with more eigenvalues (None: no limit; WeightWatcher uses 15000).
    randomize: add the shuffled-elements baseline. mp_fit: add the Marchenko-Pastur fit.
    detx: add SETOL's detX / ERG columns.
    fix_fingers: None, or "clip_xmax" (refit with the largest eigenvalues clipped, as WeightWatcher).
    max_fingers, finger_thresh: clip_xmax's limits (WeightWatcher's 10 and 1.0).
    conv2d_fft: add the exact singular values of convolution operators (circular padding) for an
    input of ``fft_input_size`` pixels per side (WeightWatcher uses 32).
    conv2d_norm: scale conv2d slices by 1/sqrt(2) before the ESD, as WeightWatcher does by default.
    eig_method: "gram" (float64 Gram matrix, SVD fallback when near-singular) or "svd".
    small_n_rule: how xmin is chosen for fits of fewer than 20 points: "min-d" (WeightWatcher 0.7.7's
    actual choice, the smallest KS distance) or "j" (its J criterion, D - 0.868 / sqrt(n_tail)).
    gof: add Clauset's bootstrap p-value (``pl_pvalue``) and a bootstrap interval on alpha, both
    with xmin re-selected in every resample (``n_boot`` resamples); without it the interval is
    the asymptotic one with xmin held fixed and the trust rule goes without the p-value.
    ci_level: coverage of the alpha interval.
    seed: seeds the shuffles of ``randomize`` and the bootstrap of ``gof``.
    max_evals_kept: at most this many eigenvalues per layer are stored for charts (quantiles).
    """

    normalize: bool = False
    min_evals: int = 8
    max_evals: int | None = None
    randomize: bool = False
    mp_fit: bool = False
    detx: bool = False
    fix_fingers: str | None = None
    max_fingers: int = 10
    finger_thresh: float = 1.0
    conv2d_fft: bool = False
    fft_input_size: int = 32
    conv2d_norm: bool = True
    eig_method: str = "gram"
    small_n_rule: str = "min-d"
    gof: bool = False
    n_boot: int = 200
    ci_level: float = 0.95
    seed: int = 0
    max_evals_kept: int = 2000

    def __post_init__(self):
        if self.fix_fingers not in FIX_FINGERS:
            raise OrthoscopeError(f"fix_fingers must be one of {FIX_FINGERS}, not {self.fix_fingers!r}.")
        if self.eig_method not in EIG_METHODS:
            raise OrthoscopeError(f"eig_method must be one of {EIG_METHODS}, not {self.eig_method!r}.")
        if self.min_evals < 2:
            raise OrthoscopeError("min_evals must be at least 2.")
        if self.max_evals is not None and self.max_evals < self.min_evals:
            raise OrthoscopeError("max_evals must be at least min_evals.")
        if self.fft_input_size < 1:
            raise OrthoscopeError("fft_input_size must be a positive number of pixels.")
        if self.max_fingers < 2:
            raise OrthoscopeError("max_fingers must be at least 2.")
        if self.max_evals_kept < 2:
            raise OrthoscopeError("max_evals_kept must be at least 2.")
        if self.small_n_rule not in SMALL_N_RULES:
            raise OrthoscopeError(f"small_n_rule must be one of {SMALL_N_RULES}, not {self.small_n_rule!r}.")
        if self.n_boot < 10:
            raise OrthoscopeError("n_boot must be at least 10 bootstrap resamples.")
        if not 0.5 <= self.ci_level < 1:
            raise OrthoscopeError("ci_level must be in [0.5, 1).")



@dataclass
class SpectraResult(Result):
    """Per-layer spectral metrics, the ESDs kept for charts, the layers skipped and a summary.

    ``layers``: one row dict per analysed matrix (see the module docstring for the columns).
    ``esds``: name -> {"evals": ascending eigenvalues (quantile-subsampled to ``max_evals_kept``),
    "rand_evals": the same for the shuffled matrix or None, "num_evals": the full count,
    "subsampled": bool, and for convolutions with ``conv2d_fft`` "op_evals"}.
    ``skipped``: [{name, shape, reason}] for tensors the model handle skips and matrices this
    diagnostic could not analyse. ``summary``: means of the headline metrics overall, per block
    and per kind, and counts.
    """

    diagnostic: ClassVar[str] = "spectra"
    layers: list = field(default_factory=list)
    esds: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.layers)

    def tables(self) -> dict[str, pd.DataFrame]:
        skipped = pd.DataFrame(self.skipped, columns=["name", "shape", "reason", "phase"])
        return {"layers": self.to_frame(), "skipped": skipped}


class LayerSkipped(Exception):
    """A matrix this diagnostic cannot analyse; ``reason`` is written for the user, ``phase`` is
    "too-small" when the matrix has too few eigenvalues and None otherwise."""

    def __init__(self, reason: str, phase: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.phase = phase


# ---------------------------------------------------------------------------------------
# Eigenvalues


def _gram(W: torch.Tensor) -> np.ndarray:
    """float64 ``A^T A`` of the tall orientation ``A`` of a 2-D matrix (lower triangle, Fortran
    order), accumulated over row blocks with BLAS ``syrk`` (half the work of a matrix product)."""
    A = W if W.shape[0] >= W.shape[1] else W.T
    m = A.shape[1]
    rows = max(1, _BLOCK_ELEMS // max(m, 1))
    # One float64 buffer reused for every block: fresh 16 MB blocks fragment the C heap.
    buffer = torch.empty((min(rows, A.shape[0]), m), dtype=torch.float64)
    G = np.zeros((m, m), dtype=np.float64, order="F")
    for start in range(0, A.shape[0], rows):
        block = buffer[: min(rows, A.shape[0] - start)]
        block.copy_(A[start : start + rows])
        # block.T is the Fortran-ordered (m, rows) view; syrk adds block^T block to G in place.
        G = blas.dsyrk(1.0, block.numpy().T, beta=1.0, c=G, trans=0, lower=1, overwrite_c=1)
    return G


def eigenvalues(W: torch.Tensor | np.ndarray, method: str = "gram") -> tuple[np.ndarray, str]:
    """Squared singular values of a 2-D matrix (ascending, float64) and the route taken.

    ``method="gram"``: eigenvalues (LAPACK ``syevr``, in place) of the float64 Gram matrix of the
    smaller side (BLAS ``syrk``), unless the smallest is below ``GRAM_RELIABLE * lambda_max``;
    then ``torch.linalg.svdvals`` in float64 ("svd-fallback"). ``method="svd"``: always the
    float64 SVD.
    """
    W = torch.as_tensor(W)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)}")
    if method == "gram":
        lam = linalg.eigh(_gram(W), lower=True, eigvals_only=True, overwrite_a=True, check_finite=False)
        top = float(lam[-1])
        if top > 0 and float(lam[0]) >= GRAM_RELIABLE * top:
            return lam, "gram"
        route = "svd-fallback"
    elif method == "svd":
        route = "svd"
    else:
        raise ValueError(f"unknown eig_method {method!r}")
    s = torch.linalg.svdvals(W.to(torch.float64)).numpy()
    return np.sort(s * s), route


# ---------------------------------------------------------------------------------------
# Marchenko-Pastur


def _tw_edge(s2: float, N: int, M: int) -> float:
    """Largest eigenvalue of ``W^T W`` an ``N x M`` matrix of iid entries with variance ``s2`` reaches
    by chance: the MP bulk edge ``s2 (sqrt N + sqrt M)^2`` plus ``TW_QUANTILE`` Tracy-Widom scales
    ``s2 (sqrt N + sqrt M) (1/sqrt N + 1/sqrt M)^(1/3)`` (Johnstone, Ann. Stat. 2001)."""
    root = math.sqrt(N) + math.sqrt(M)
    return s2 * (root * root + TW_QUANTILE * root * (1 / math.sqrt(N) + 1 / math.sqrt(M)) ** (1 / 3))


@functools.lru_cache(maxsize=64)
def _mp_cdf_table(Q: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, F(y)) on a grid for the MP law of ratio ``Q >= 1`` in units where the element variance is
    1 and ``y = lambda / N``: support ``[(1 - 1/sqrt Q)^2, (1 + 1/sqrt Q)^2]``. Integrated in
    ``y = a + (b - a) sin^2 t``, which removes the square-root zeros at both edges."""
    a, b = (1 - 1 / math.sqrt(Q)) ** 2, (1 + 1 / math.sqrt(Q)) ** 2
    t = np.linspace(0.0, math.pi / 2, 4001)
    y = a + (b - a) * np.sin(t) ** 2
    dens = _mp_density(y, Q, 1.0) * (b - a) * 2 * np.sin(t) * np.cos(t)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(t))])
    return y, cdf / cdf[-1]


def mp_bulk_tolerance(n: int) -> float:
    """Largest KS distance between a bulk and its MP fit still called "MP-like" for ``n`` eigenvalues.

    ``0.5 / sqrt n + 1 / n``: above the largest distance :func:`fit_mp_bulk` gave on 54 draws of
    Gaussian matrices with 0 to M/20 planted spikes (strength 1.5 to 20 times the BBP threshold),
    for each M in 8, 16, 32, 64, 128, 384 and Q in 1, 2.5, 4 (0.26, 0.17, 0.08, 0.05, 0.025, 0.015;
    ``tests/test_spectra.py`` keeps a smaller version of that sweep)."""
    return 0.5 / math.sqrt(n) + 1.0 / n


def fit_mp_bulk(evals: np.ndarray, N: int, M: int, *, max_iter: int = 100) -> dict:
    """The Marchenko-Pastur law that explains the bulk of an ESD, robust to spikes and heavy tails.

    ``evals`` are the eigenvalues of ``W^T W`` for ``N x M`` matrices (``N >= M``; pooled slices of a
    convolution share one law). An iid matrix with element variance ``s2`` has its bulk on
    ``s2 (sqrt N -+ sqrt M)^2`` with mean ``N s2``. Start from the median (matched to the MP median,
    which outliers hardly move), then iterate ``s2 = mean(lambda <= edge(s2)) / N``, where
    ``edge`` is the bulk edge plus 4 Tracy-Widom scales (:func:`_tw_edge`), to a fixed point: the
    bulk's own mean, with the eigenvalues past the edge left out. WeightWatcher's ``mp_fit``
    (:func:`fit_marchenko_pastur`) fits a kernel density of the whole ESD instead; planted spikes
    pull it far off (KS up to 0.5 on a Gaussian bulk), which is why the phase does not use it.

    Returns ``mp_sigma = sqrt(s2)`` (the element scale the bulk implies, in the units of ``evals``
    as ``lambda = s(W)^2``), ``mp_edge`` (bulk edge + 4 TW scales), ``num_above_mp_edge`` and
    ``mp_bulk_ks``: the Kolmogorov-Smirnov distance between the eigenvalues up to the edge and the
    fitted MP law (compare with :func:`mp_bulk_tolerance`).
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    Q = N / M
    y, cdf = _mp_cdf_table(float(Q))
    median_y = float(np.interp(0.5, cdf, y))
    s2 = float(np.median(ev)) / (N * median_y)
    if not s2 > 0:
        positive = ev[ev > 0]
        s2 = float(positive.mean()) / N if positive.size else 0.0
    for _ in range(max_iter):
        inside = ev[ev <= _tw_edge(s2, N, M)]
        if inside.size == 0:
            break
        updated = float(inside.mean()) / N
        if abs(updated - s2) <= 1e-12 * s2:
            s2 = updated
            break
        s2 = updated
    edge = _tw_edge(s2, N, M)
    bulk = ev[ev <= edge]
    if s2 > 0 and bulk.size:
        F = np.interp(bulk / (N * s2), y, cdf)
        k = bulk.size
        ks = float(max(np.max(np.abs(F - np.arange(1, k + 1) / k)), np.max(np.abs(F - np.arange(k) / k))))
    else:
        ks = 1.0
    return {"mp_sigma": math.sqrt(max(s2, 0.0)), "mp_edge": edge, "num_above_mp_edge": int(ev.size - bulk.size),
            "mp_bulk_ks": ks}


def mp_bulk_density(x: np.ndarray, mp_sigma: float, N: int, M: int) -> np.ndarray:
    """Density of the MP law fitted by :func:`fit_mp_bulk` at eigenvalues ``x`` (for charts)."""
    s2 = mp_sigma * mp_sigma
    return _mp_density(np.asarray(x, dtype=np.float64) / (N * s2), N / M, 1.0) / (N * s2)


def _linear_kde(points: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density of a linear-kernel KDE: ``(1 / (n h)) sum_i max(0, 1 - |x - p_i| / h)``."""
    out = np.empty(grid.size)
    step = max(1, _BLOCK_ELEMS // max(points.size, 1))
    for a in range(0, grid.size, step):
        d = np.abs(grid[a : a + step, None] - points[None, :]) / bandwidth
        out[a : a + step] = np.maximum(0.0, 1.0 - d).sum(axis=1)
    return out / (points.size * bandwidth)


def _mp_density(x: np.ndarray, Q: float, sigma) -> np.ndarray:
    inv_q = 1.0 / Q
    b = np.power(sigma * (1 + np.sqrt(inv_q)), 2)
    a = np.power(sigma * (1 - np.sqrt(inv_q)), 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x * inv_q)) * np.sqrt((b - x) * (x - a)))


def _qc_density(x: np.ndarray, sigma) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - x**2))


def fit_marchenko_pastur(evals: np.ndarray, N: int, M: int, *, bandwidth: float = MP_BANDWIDTH) -> dict:
    """WeightWatcher's Marchenko-Pastur fit of an ESD: sigma_mp, bulk edges, spikes, mp_softrank.

    The eigenvalues are rescaled to mean 1 (``W_scale^2 = n / sum lambda``). A linear-kernel
    density estimate (bandwidth 0.1) on 1000 points in ``[0, max + 0.5]``, keeping points with
    density above 0.01, is compared with the MP density ``rho(x) = sqrt((b - x)(x - a)) /
    (2 pi sigma^2 x / Q)``, ``a, b = sigma^2 (1 -+ 1/sqrt Q)^2`` (the quarter-circle law of the
    singular values when ``Q = 1``). ``sigma`` minimises the squared residual by a grid search over
    ``[0.05, 2) * sigma_0`` in steps of ``0.01 sigma_0``, ``sigma_0^2 = lambda_max / (1 + 1/sqrt Q)^2``,
    polished by Nelder-Mead (what ``scipy.optimize.brute`` does); fits whose edge falls outside the data or
    below the density's peak are penalised. ``num_spikes`` counts eigenvalues above
    ``bulk_max + sqrt(TW)``, ``TW = bulk_max^(2/3) M^(-2/3) / sqrt Q``; ``mp_softrank =
    bulk_max / lambda_max``. Bulk edges are returned on the original scale. The density estimate
    is computed once, not per trial sigma, which is what makes this fast.
    """
    ev = np.asarray(evals, dtype=np.float64).ravel()
    n = ev.size
    Q = N / M
    w_scale2 = n / float(np.sum(ev))
    x = w_scale2 * ev
    lam_max = float(np.max(x))
    sigma0 = math.sqrt(lam_max / (1 + 1 / math.sqrt(Q)) ** 2)
    to_fit = np.sqrt(x) if Q == 1 else x
    grid = np.linspace(0, float(np.max(to_fit)) + 0.5, 1000)
    density = _linear_kde(to_fit, grid, bandwidth)
    keep = density > MP_DENSITY_FLOOR
    xs, ys = grid[keep], density[keep]
    if xs.size == 0:
        nan = math.nan
        return {"sigma_mp": nan, "bulk_max": nan, "bulk_min": nan, "num_spikes": -1, "mp_softrank": nan, "W_scale": nan}
    peak = xs[np.argmax(ys)] if xs.size else 0.0

    def losses(sigma: np.ndarray) -> np.ndarray:
        """Squared residual for each trial sigma (a column vector of them)."""
        if Q == 1:
            resid = _qc_density(xs, sigma) - ys
            return np.sum(resid**2, axis=-1)
        b = np.power(sigma * (1 + np.sqrt(1 / Q)), 2)
        a = np.power(sigma * (1 - np.sqrt(1 / Q)), 2)
        penalised = ((b < peak) | (b > xs.max()) | (a > peak)).ravel()
        resid = _mp_density(xs, Q, sigma) - ys
        return np.where(penalised, xs.size * 1000.0**2, np.sum(resid**2, axis=-1))

    # scipy.optimize.brute's grid search, with every grid point in one array expression, then
    # brute's Nelder-Mead polish (scipy.optimize.fmin) from the best grid point.
    grid = np.mgrid[slice(0.05 * sigma0, 2.0 * sigma0, 0.01 * sigma0)]
    start = grid[int(np.argmin(losses(grid[:, None])))]
    polished = optimize.fmin(lambda p: float(losses(np.reshape(p, (1, 1)))[0]), start, full_output=True, disp=False)
    sigma_mp = float(np.ravel(polished[0])[0])
    bulk_max = (sigma_mp * (1 + 1 / math.sqrt(Q))) ** 2
    bulk_min = (sigma_mp * (1 - 1 / math.sqrt(Q))) ** 2
    tw = 1 / math.sqrt(Q) * bulk_max ** (2 / 3) * M ** (-2 / 3)
    num_spikes = int(np.count_nonzero(x > bulk_max + math.sqrt(tw)))
    return {
        "sigma_mp": sigma_mp,
        "bulk_max": bulk_max / w_scale2,
        "bulk_min": bulk_min / w_scale2,
        "num_spikes": num_spikes,
        "mp_softrank": bulk_max / lam_max,
        "W_scale": math.sqrt(w_scale2),
    }


# ---------------------------------------------------------------------------------------
# SETOL detX, randomisation, convolution operators


def detx_constraint(evals: np.ndarray) -> tuple[int, float]:
    """SETOL's ERG condition ``det X~ = 1``: the tail of the ESD whose eigenvalue product reaches 1.

    The eigenvalues are rescaled to mean 1 (``lambda~ = lambda n / sum lambda``). Going down from
    the largest, ``P_k`` is the product of the top ``k`` rescaled eigenvalues; it rises while they
    exceed 1 and then falls. ``detX_num`` is the first ``k`` (at most ``n - 1``) with ``P_k < 1``,
    i.e. one more than the largest tail whose product stays >= 1 (WeightWatcher 0.7.7's
    convention); ``detX_val`` is that k-th largest eigenvalue on the original scale (the lower edge
    of the ERG tail). If no such tail exists, ``detX_num = n`` and ``detX_val`` is the second
    smallest eigenvalue: WeightWatcher's downward loop ends at index 1 and reports that one. A flat ESD (all eigenvalues equal) gives ``(0, smallest)``, as in WeightWatcher.
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    n = ev.size
    if n < 2 or not ev[0] < ev[-1]:
        return 0, float(ev[0]) if n else math.nan
    rescaled = ev * (n / float(np.sum(ev)))
    with np.errstate(divide="ignore"):
        log_products = np.cumsum(np.log(rescaled[::-1]))[: n - 1]
    below = np.flatnonzero(log_products < 0.0)
    if below.size == 0:
        return n, float(ev[1])
    k = int(below[0]) + 1
    return k, float(ev[n - k])


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the Jensen-Shannon divergence (natural log) between two sorted ESDs read as
    probability vectors, element by element (WeightWatcher's ``rand_distance``)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2
    return float(math.sqrt(max(0.0, (special.rel_entr(p, m).sum() + special.rel_entr(q, m).sum()) / 2)))


def conv_operator_singular_values(kernel: torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    """Singular values of a convolution with circular padding on an ``n``-pixel (per side) input.

    Sedghi, Gupta & Long (ICLR 2019): for a kernel ``K`` of shape ``(out, in, kh, kw)`` the
    operator on ``n x n`` inputs is block doubly-circulant, so it is diagonalised by the 2-D DFT;
    its singular values are the union over the ``n^2`` frequencies ``(u, v)`` of the singular
    values of the ``out x in`` complex matrices ``K^(u, v) = sum_{p,q} K[:, :, p, q]
    exp(-2 pi i (p u + q v) / n)``. A real kernel has ``K^(-u, -v) = conj K^(u, v)`` with the same
    singular values, so only ``v <= n / 2`` is computed and the rest counted twice. A 1-D kernel
    ``(out, in, k)`` works the same way with ``n`` frequencies. Returns ``n^2 min(out, in)`` (or
    ``n min(out, in)``) singular values, ascending, float64. Cross-correlation (PyTorch) and
    convolution have the same singular values.
    """
    K = torch.as_tensor(kernel).to(torch.float64)
    if K.ndim not in (3, 4):
        raise ValueError(f"expected a conv kernel (out, in, k) or (out, in, kh, kw), got {tuple(K.shape)}")
    if max(K.shape[2:]) > n:
        raise ValueError(f"kernel {tuple(K.shape[2:])} is larger than the {n}-pixel input")
    half = n // 2 + 1
    # multiplicity of each rfft frequency in the full spectrum
    weights = np.full(half, 2)
    weights[0] = 1
    if n % 2 == 0:
        weights[-1] = 1
    last = torch.fft.rfft(K, n=n, dim=-1)  # (out, in, [kh,] half)
    if K.ndim == 3:
        blocks = [last.permute(2, 0, 1)]  # (half, out, in)
        mult = [weights]
    else:
        kh = K.shape[2]
        per_u = K.shape[0] * K.shape[1] * half * 16
        chunk = max(1, (1 << 27) // max(per_u, 1))
        p = torch.arange(kh, dtype=torch.float64)
        blocks, mult = [], []
        for u0 in range(0, n, chunk):
            u = torch.arange(u0, min(n, u0 + chunk), dtype=torch.float64)
            phase = torch.exp(-2j * math.pi * torch.outer(u, p) / n)  # (uc, kh)
            F = torch.einsum("up,oipv->uvoi", phase, last)  # (uc, half, out, in)
            blocks.append(F.reshape(-1, K.shape[0], K.shape[1]))
            mult.append(np.tile(weights, u.numel()))
    svals = []
    for block, w in zip(blocks, mult):
        s = torch.linalg.svdvals(block).numpy()  # (freqs, min(out, in))
        svals.append(np.repeat(s, w, axis=0).ravel())
    return np.sort(np.concatenate(svals))


def _shuffled(W: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """W with its elements in a uniformly random order (``torch.randperm``: Fisher-Yates)."""
    flat = W.detach().reshape(-1)
    index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
    order = torch.randperm(flat.numel(), generator=generator, dtype=index_dtype)
    return flat.index_select(0, order).reshape(W.shape)


def _layer_seed(seed: int, name: str) -> int:
    """A seed from ``seed`` and the layer's name, so each layer gets its own random draws."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(name.encode("utf-8"))]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def _layer_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(_layer_seed(seed, name))


# ---------------------------------------------------------------------------------------
# One layer


def _slices(W: torch.Tensor) -> list[torch.Tensor]:
    """The (out, in) matrix at every kernel position of a conv kernel; [W] for a matrix."""
    if W.ndim == 2:
        return [W]
    out, inp = W.shape[:2]
    return list(W.reshape(out, inp, -1).permute(2, 0, 1))


def _pooled_eigs(mats: list[torch.Tensor], method: str) -> tuple[np.ndarray, int, str]:
    """Pooled ascending eigenvalues, summed rank loss and the route taken (worst over slices)."""
    evals, rank_loss, routes = [], 0, set()
    for mat in mats:
        lam, route = eigenvalues(mat, method)
        lam = np.clip(lam, 0.0, None)
        sv = np.sqrt(lam)
        rank_loss += sv.size - _matrix_rank(sv, max(mat.shape))
        evals.append(lam)
        routes.add(route)
    route = "svd-fallback" if "svd-fallback" in routes else routes.pop()
    return np.sort(np.concatenate(evals)), rank_loss, route


def _matrix_rank(sv: np.ndarray, N: int) -> int:
    """Singular values above ``s_max * N * eps`` (numpy.linalg.matrix_rank's tolerance)."""
    if sv.size == 0:
        return 0
    return int(np.count_nonzero(sv > np.max(sv) * N * np.finfo(np.float64).eps))


def _entropy(evals: np.ndarray, rank: int) -> float:
    p = evals / np.sum(evals) + ENTROPY_EPSILON
    return float(-np.sum(p * np.log(p)) / np.log(rank + ENTROPY_EPSILON))


def _subsample(values: np.ndarray, cap: int) -> tuple[list[float], bool]:
    """At most ``cap`` values: evenly spaced order statistics (min and max included)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size <= cap:
        return values.tolist(), False
    idx = np.unique(np.round(np.linspace(0, values.size - 1, cap)).astype(np.int64))
    return values[idx].tolist(), True


# The phase rule, first match wins: (phase, Martin & Mahoney's phases it stands for (JMLR 2021,
# Table 1), the rule). The page shows this table.
PHASE_RULES = (
    ("too-small", "-", "fewer than min_evals eigenvalues, or fewer than 2 above EVALS_THRESH: no power-law fit"),
    ("random-like", "Random-like", "no eigenvalue past the MP edge (the MP law fitted to the bulk, plus 4 "
                                   "Tracy-Widom scales): the whole ESD is an MP bulk"),
    ("bulk+spikes", "Bleeding-out, Bulk+Spikes",
     f"eigenvalues past the edge, but less than {TAIL_MAJORITY:.0%} of the fitted tail lies past it (the power "
     f"law is fitted to the MP bulk), or the bulk is MP-like (KS distance to the fitted MP law within "
     f"0.5/sqrt(n) + 1/n) with at most {SPIKE_SHARE:.0%} of the eigenvalues past the edge"),
    ("very-heavy-tailed", "Very Heavy-Tailed", "the fitted tail lies past the bulk and alpha < 2"),
    ("heavy-tailed", "Heavy-Tailed (alpha > 6: Bulk-Decay)", "the fitted tail lies past the bulk and alpha >= 2"),
)
PHASES = tuple(phase for phase, _, _ in PHASE_RULES)


def classify_phase(evals: np.ndarray, fit: PowerLawFit, mp: dict) -> tuple[str, float]:
    """The layer's phase (see ``PHASE_RULES``; "Rank-collapse" shows as ``rank_loss``) and the
    share of the fitted tail past the MP edge of ``mp`` (:func:`fit_mp_bulk`)."""
    if not fit.ok:
        return "too-small", math.nan
    ev = np.asarray(evals, dtype=np.float64)
    edge = mp["mp_edge"]
    tail = ev[ev >= fit.xmin]
    past = float(np.count_nonzero(tail > edge)) / max(1, tail.size)
    above = mp["num_above_mp_edge"]
    if above == 0:
        return "random-like", past
    if past < TAIL_MAJORITY:
        return "bulk+spikes", past
    if mp["mp_bulk_ks"] <= mp_bulk_tolerance(ev.size) and above <= SPIKE_SHARE * ev.size:
        return "bulk+spikes", past
    return ("very-heavy-tailed" if fit.alpha < OVER_TRAINED_ALPHA else "heavy-tailed"), past


def trust_verdict(phase: str, fit: PowerLawFit, num_above_edge: int, pvalue: float | None) -> tuple[bool, str]:
    """Whether the power law is believed, and why (first reason wins). Trusted: a heavy-tailed
    phase, at least ``SMALL_N_MIN_TAIL`` eigenvalues in the tail, alpha <= 6, and, when the
    goodness-of-fit test ran, ``pl_pvalue >= PL_PVALUE_MIN`` (Clauset et al. 2009 rule out the power
    law below 0.1). Without the test the verdict says so."""
    if phase == "too-small":
        return False, f"no fit: {fit.status}"
    if phase == "random-like":
        return False, "random-like: no eigenvalue past the MP edge; the power law is fitted to noise"
    if phase == "bulk+spikes":
        return False, f"bulk+spikes: {num_above_edge} eigenvalue(s) past the MP edge over an MP bulk; the fitted tail is mostly bulk"
    if fit.alpha > UNDER_TRAINED_ALPHA:
        return False, "weak tail: alpha > 6"
    if fit.num_pl_spikes < SMALL_N_MIN_TAIL:
        return False, f"weak tail: only {fit.num_pl_spikes} eigenvalues in the tail"
    if pvalue is None:
        return True, f"{phase} (goodness of fit not tested)"
    if pvalue < PL_PVALUE_MIN:
        return False, f"power law rejected: p = {pvalue:.2f} < {PL_PVALUE_MIN:g}"
    return True, f"{phase}, p = {pvalue:.2f}"


def _fit_statistics(evals: np.ndarray, fit: PowerLawFit, params: SpectraParams, name: str) -> dict:
    """Likelihood-ratio tests and the alpha interval; with ``params.gof`` also the bootstrap p-value
    and a bootstrap interval, on exactly the eigenvalues the fit used (fingers clipped off)."""
    data = fitted_sample(evals, fit)
    lr = compare_distributions(data, fit)
    out = {k: lr[k] for k in LR_COLUMNS}
    if params.gof:
        g = goodness_of_fit(data, fit, n_boot=params.n_boot, seed=_layer_seed(params.seed, name),
                            level=params.ci_level, small_n_rule=params.small_n_rule)
        out.update(alpha_ci_low=g["alpha_ci_low"], alpha_ci_high=g["alpha_ci_high"], alpha_ci_method="bootstrap",
                   pl_pvalue=g["pl_pvalue"])
    else:
        low, high = alpha_interval_asymptotic(fit, params.ci_level)
        out.update(alpha_ci_low=low, alpha_ci_high=high, alpha_ci_method="asymptotic")
    return out


def _as_tensor(W: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(W).detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_floating_point():
        raise LayerSkipped(f"not floating point ({str(t.dtype).removeprefix('torch.')})")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t


def analyse_matrix(
    W: torch.Tensor | np.ndarray,
    params: SpectraParams | None = None,
    *,
    name: str = "",
    kind: str = "",
    block: str = "",
    layer_type: str | None = None,
) -> tuple[dict, dict]:
    """All spectral metrics of one weight matrix: ``(row, esd)``.

    ``W`` is a matrix in any orientation, or a conv kernel ``(out, in, k)`` / ``(out, in, kh, kw)``
    whose kernel-position slices are pooled (WeightWatcher's convention). ``row`` is the layer's
    row of the ``layers`` table, ``esd`` the payload kept for charts. Raises :class:`LayerSkipped`
    with the reason when the matrix cannot be analysed (1-D, NaN/Inf, all zeros, too few or too
    many eigenvalues).
    """
    params = params or SpectraParams()
    t = _as_tensor(W)
    shape = [int(s) for s in t.shape]
    if t.ndim < 2:
        raise LayerSkipped("1-D (bias, norm or scale)")
    if t.ndim > 4:
        raise LayerSkipped(f"unsupported: {t.ndim}-D tensor")
    if layer_type is None:
        layer_type = {2: "linear", 3: "conv1d", 4: "conv2d"}[t.ndim]
    if t.numel() == 0:
        raise LayerSkipped("empty tensor")
    lo, hi = torch.aminmax(t)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise LayerSkipped("contains NaN or Inf")
    if float(lo) == 0.0 and float(hi) == 0.0:
        raise LayerSkipped("all zeros")

    mats = _slices(t)
    N, M = max(mats[0].shape), min(mats[0].shape)
    rf = len(mats)
    num_evals = M * rf
    if num_evals < params.min_evals:
        raise LayerSkipped(f"too few eigenvalues: {num_evals} < min_evals {params.min_evals}", phase="too-small")
    if params.max_evals is not None and num_evals > params.max_evals:
        raise LayerSkipped(f"too many eigenvalues: {num_evals} > max_evals {params.max_evals}")

    evals, rank_loss, route = _pooled_eigs(mats, params.eig_method)
    scale = 1.0
    if layer_type == "conv2d" and params.conv2d_norm:
        scale *= 0.5  # WeightWatcher multiplies conv2d slices by sqrt(1/2)
    if params.normalize:
        # WeightWatcher's normalize replaces the conv2d factor (apply_normalize_Wmats)
        scale = 1.0 / N
    evals = evals * scale

    lambda_max = float(evals[-1])
    frobenius_norm_sq = float(np.sum(evals))
    sv = np.sqrt(evals)
    rank = _matrix_rank(sv, N)
    fit = fit_power_law(
        evals, fix_fingers=params.fix_fingers, max_fingers=params.max_fingers, finger_thresh=params.finger_thresh,
        small_n_rule=params.small_n_rule,
    )
    alpha = fit.alpha
    with np.errstate(divide="ignore"):
        log_alpha_norm = float(special.logsumexp(alpha * np.log(evals)) / math.log(10)) if fit.ok else math.nan
    bulk = fit_mp_bulk(evals, N, M)
    phase, tail_past_edge = classify_phase(evals, fit, bulk)
    fit_stats = _fit_statistics(evals, fit, params, name) if fit.ok else {}
    trust, verdict = trust_verdict(phase, fit, bulk["num_above_mp_edge"], fit_stats.get("pl_pvalue"))

    row: dict = {
        "name": name, "shape": shape, "kind": kind, "block": block, "layer_type": layer_type,
        "N": int(N), "M": int(M), "Q": N / M, "rf": int(rf), "num_evals": int(evals.size),
        "lambda_max": lambda_max, "log_spectral_norm": math.log10(lambda_max),
        "frobenius_norm_sq": frobenius_norm_sq, "log_norm": math.log10(frobenius_norm_sq),
        "stable_rank": frobenius_norm_sq / lambda_max,
        "entropy": _entropy(evals, rank), "matrix_rank": rank, "rank_loss": int(rank_loss),
        "weak_rank_loss": int(np.count_nonzero(evals < WEAK_RANK_TOL)),
        "alpha": alpha, "xmin": fit.xmin, "xmax": fit.xmax, "D": fit.D, "sigma": fit.sigma,
        "num_pl_spikes": int(fit.num_pl_spikes) if fit.ok else 0,
        "alpha_weighted": alpha * math.log10(lambda_max), "log_alpha_norm": log_alpha_norm,
        "warning": alpha_warning(alpha), "pl_method": fit.method,
        "phase": phase, "pl_trust": trust, "pl_verdict": verdict,
        **bulk, "tail_past_mp_edge": tail_past_edge,
        **fit_stats,
        "eig_method": route,
    }
    if params.fix_fingers:
        row["num_fingers"] = fit.num_fingers
        row["raw_alpha"] = fit.raw_alpha
    if params.mp_fit:
        mp = fit_marchenko_pastur(evals, N, M)
        row.update({k: mp[k] for k in ("sigma_mp", "bulk_max", "bulk_min", "num_spikes", "mp_softrank")})
    kept, subsampled = _subsample(evals, params.max_evals_kept)
    esd: dict = {"evals": kept, "rand_evals": None, "num_evals": int(evals.size), "subsampled": subsampled}
    if params.randomize:
        generator = _layer_generator(params.seed, name)
        rand, _, _ = _pooled_eigs([_shuffled(m, generator) for m in mats], params.eig_method)
        rand = rand * scale
        rand_max = float(rand[-1])
        row.update({
            "rand_lambda_max": rand_max,
            "rand_distance": jensen_shannon_distance(evals, rand),
            "ww_softrank": rand_max / lambda_max,
            "rand_num_spikes": fit_marchenko_pastur(rand, N, M)["num_spikes"],
        })
        esd["rand_evals"] = _subsample(rand, params.max_evals_kept)[0]
    if params.detx:
        detx_num, detx_val = detx_constraint(evals)
        row.update({
            "detX_num": detx_num, "detX_val": detx_val,
            "ERG_gap": detx_num - fit.num_pl_spikes if fit.ok else math.nan,
        })
    if params.conv2d_fft and t.ndim in (3, 4):
        n = params.fft_input_size
        if max(shape[2:]) > n:
            row["conv_fft_note"] = f"kernel larger than the {n}-pixel input; operator spectrum not computed"
        else:
            s = conv_operator_singular_values(t, n)
            dev = np.abs(s - 1.0)
            row.update({
                "conv_fft_n": n, "conv_sv_max": float(s[-1]), "conv_sv_min": float(s[0]),
                "conv_orth_max_dev": float(dev.max()), "conv_orth_rms_dev": float(np.sqrt(np.mean(dev**2))),
            })
            # The slice ESD's factors (conv2d_norm, normalize) apply here too, so both share an axis.
            esd["op_evals"] = _subsample(s * s * scale, params.max_evals_kept)[0]
    # NaN means "not available"; store None, as a reloaded report would.
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    return row, esd


# ---------------------------------------------------------------------------------------
# A whole model


def trust_rule(params: SpectraParams) -> str:
    """The trust rule in force, in words, for the page, the report and the CLI."""
    rule = (f"heavy-tailed or very-heavy-tailed phase, >= {SMALL_N_MIN_TAIL} eigenvalues in the tail, "
            f"alpha <= {UNDER_TRAINED_ALPHA:g}")
    if params.gof:
        return rule + f", bootstrap p-value >= {PL_PVALUE_MIN:g} ({params.n_boot} resamples)"
    return rule + "; goodness of fit not tested (turn on gof for the bootstrap p-value)"


def _robust_matrices(handle, planned: list[str]) -> Iterator[tuple[str, object | None, str]]:
    """``(name, matrix, "")`` from ``handle.iter_matrices`` over ``planned``; a matrix that cannot
    be read comes as ``(name, None, reason)`` and iteration resumes after it."""
    remaining = list(planned)
    while remaining:
        it = handle.iter_matrices(set(remaining))
        while True:
            try:
                mat = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a bad tensor must not stop the others
                bad = remaining.pop(0)
                yield bad, None, f"could not be read ({type(exc).__name__}: {exc})"
                break
            if mat.name in remaining:
                remaining.remove(mat.name)
            yield mat.name, mat, ""


def _summary(layers: list[dict], n_skipped: int, trust_rule: str) -> dict:
    """Headline numbers. Metrics of the power-law fit (``_FIT_METRICS``) are averaged over trusted
    rows only, the others over every row; ``mean_all`` averages every row for comparison."""
    frame = pd.DataFrame(layers)
    out: dict = {"num_layers": len(layers), "num_skipped": n_skipped, "trust_rule": trust_rule}
    if frame.empty:
        return {**out, "num_pl_trusted": 0, "phases": {}, "mean": {}, "mean_all": {}, "by_block": {}, "by_kind": {}}
    metrics = [m for m in _HEADLINE if m in frame.columns]
    numeric = frame[metrics].apply(pd.to_numeric, errors="coerce")
    trusted = frame["pl_trust"].astype(bool)
    headline = numeric.copy()
    fit_metrics = [m for m in _FIT_METRICS if m in metrics]
    headline.loc[~trusted, fit_metrics] = np.nan
    out["num_pl_trusted"] = int(trusted.sum())
    out["num_over_trained"] = int(((frame["warning"] == "over-trained") & trusted).sum())
    out["num_under_trained"] = int(((frame["warning"] == "under-trained") & trusted).sum())
    out["phases"] = {p: int((frame["phase"] == p).sum()) for p in PHASES if (frame["phase"] == p).any()}
    out["mean"] = {m: _mean(headline[m]) for m in metrics}
    out["mean_all"] = {m: _mean(numeric[m]) for m in metrics}
    out["alpha_mean_ci"] = _mean_interval(headline["alpha"]) if "alpha" in headline else None
    for key, col in (("by_block", "block"), ("by_kind", "kind")):
        groups = {}
        labels = frame[col].astype(str)
        for value, part in headline.groupby(labels, sort=False):
            groups[value] = {"count": int(len(part)), "trusted": int(trusted[part.index].sum()),
                             **{m: _mean(part[m]) for m in metrics}}
        out[key] = groups
    return out


def _mean(values: pd.Series) -> float | None:
    value = float(values.mean())
    return value if math.isfinite(value) else None


def _mean_interval(values: pd.Series, level: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean over the layers (None below 2 finite values): how far the mean
    alpha would move with another draw of layers like these, not the fit error of any one layer."""
    x = values.dropna().to_numpy(dtype=np.float64)
    if x.size < 2:
        return None
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * float(np.std(x, ddof=1)) / math.sqrt(x.size)
    return [float(x.mean()) - half, float(x.mean()) + half]


def run(
    handle,
    params: SpectraParams | None = None,
    progress: Callable[[float, str], None] | None = None,
    names: list[str] | set[str] | None = None,
) -> SpectraResult:
    """Analyse every weight matrix of ``handle`` (or only ``names``) and collect the results.

    One matrix that cannot be analysed is listed in ``skipped`` with the reason; the others go
    on. ``progress(fraction, message)`` is called after each matrix.
    """
    params = params or SpectraParams()
    started = time.perf_counter()
    all_names = handle.matrix_names()
    if names is not None:
        wanted = set(names)
        unknown = sorted(wanted - set(all_names))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise OrthoscopeError(f"{handle.name} has no weight matrix named {shown}.")
        planned = [n for n in all_names if n in wanted]
    else:
        planned = list(all_names)
    skipped: list[dict] = []
    if names is None:
        skipped.extend({"name": s.name, "shape": list(s.shape), "reason": s.reason, "phase": None}
                       for s in handle.skipped())
    layers: list[dict] = []
    esds: dict = {}
    per_layer: dict = {}
    read_s = 0.0
    total = max(1, len(planned))
    done = 0
    mark = time.perf_counter()
    for name, mat, failure in _robust_matrices(handle, planned):
        t0 = time.perf_counter()
        read_s += t0 - mark
        if mat is None:
            skipped.append({"name": name, "shape": None, "reason": failure, "phase": None})
        else:
            try:
                row, esd = analyse_matrix(
                    mat.tensor, params, name=name, kind=mat.kind, block=mat.block, layer_type=mat.layer_type
                )
                layers.append(row)
                esds[name] = esd
            except LayerSkipped as exc:
                skipped.append({"name": name, "shape": list(mat.shape), "reason": exc.reason, "phase": exc.phase})
            except Exception as exc:  # noqa: BLE001 - one bad layer never stops the others
                reason = f"analysis failed ({type(exc).__name__}: {exc})"
                skipped.append({"name": name, "shape": list(mat.shape), "reason": reason, "phase": None})
        mark = time.perf_counter()
        per_layer[name] = mark - t0
        done += 1
        if progress is not None:
            progress(min(1.0, done / total), f"spectra: {name} ({done}/{total})")
    timings = {"total_s": time.perf_counter() - started, "read_s": read_s, "per_layer_s": per_layer}
    return SpectraResult(
        model_name=handle.name,
        fingerprint=handle.fingerprint,
        params=params.to_dict(),
        timings=timings,
        layers=layers,
        esds=esds,
        skipped=skipped,
        summary=_summary(layers, len(skipped), trust_rule(params)),
    )
