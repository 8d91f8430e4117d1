"""Power-law tails: the fit, WeightWatcher's small-sample variants, and goodness of fit.

The fit (Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review 51,
2009, section 3; Martin & Mahoney, JMLR 2021, for its use on eigenvalue spectra): for sorted
positive data ``x_0 <= ... <= x_{n-1}`` every ``x_i`` but the largest is a candidate ``xmin``; its
tail has ``n_i = n - i`` points, the maximum-likelihood exponent is
``alpha_i = 1 + n_i / sum_{j >= i} ln(x_j / x_i)`` and its Kolmogorov-Smirnov distance is
``D_i = max_{j >= i} |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n_i|``. The candidate with the
smallest ``D`` wins (:func:`power_law_scan` computes all candidates at once, also for a batch of
samples).

Fewer than ``SMALL_N_CUTOFF`` = 20 points: WeightWatcher 0.7.7 (``WW_powerlaw.WWFit``) uses the
bias-corrected ``alpha_i = 1 + (n_i - 1) / sum ln(x_j / x_i)`` and skips tails of fewer than 8
points and degenerate tails (``sum ln(x_j / x_i) <= 1e-12``). Its small-sample routine picks the
candidate minimising ``J = D - 0.868 / sqrt(n_i)``, but ``WWFit.__init__`` then re-selects with
``argmin(Ds)`` over the whole array, in which skipped candidates keep ``D = 1`` and ``alpha = 0``.
``small_n_rule="min-d"`` reproduces that actual behaviour, "j" the J criterion (see
:func:`select_xmin`).

Goodness of fit:

* :func:`bootstrap_pvalue`: Clauset et al.'s semi-parametric bootstrap (section 4.1). Synthetic
  samples of the same size follow the fitted power law above xmin and the data below it; each is
  refitted with xmin chosen again, and ``p`` is the share of synthetic KS distances at least the
  observed one. ``p < 0.1`` rules the power law out.
* :func:`alpha_interval`: percentile interval of alpha over nonparametric resamples, xmin chosen
  again in each; :func:`alpha_interval_asymptotic` is ``alpha +- z (alpha - 1) / sqrt(n_tail)``
  with xmin held fixed. :func:`goodness_of_fit` returns both bootstrap results from one call.
* :func:`compare_distributions`: Vuong's likelihood-ratio tests (section 5) of the power law
  against the lognormal, exponential and truncated power law, each fitted by maximum likelihood on
  the tail ``x >= xmin`` and normalised on it, as the ``powerlaw`` package does (Alstott, Bullmore
  & Plenz, PLoS ONE 9, 2014).

Cost (one thread, 2-core machine shared with other work; eigenvalues of 1000 x n matrices with
Gaussian or Pareto(2.5) entries): a fit takes 1-3 ms; :func:`goodness_of_fit` with the default
``n_boot = 200`` takes 0.18-0.25 s at n = 384 and 0.34-0.47 s at n = 576 (half for the p-value,
half for the interval; it grows like ``n_boot n^2``), with a peak of 7-11 MiB;
:func:`compare_distributions` 1-60 ms. The bootstrap refits use the same exact selection as the
fit, with its O(n^2) pass in float32 (see :func:`_clauset_select`).

Differences from the peers, measured in tests/test_power_law.py:

* WeightWatcher 0.7.7: the small-sample fit ("min-d") agrees to 1e-12. Its sigma is
  ``-1 / sqrt(n)`` whenever no tail of 8 points is usable, because it computes the sigmas before
  filling in the whole-sample fallback; reproduced.
* ``powerlaw`` 2.0.0: R and p agree to a few 1e-3 (p to 1e-3 absolute) where its fits converge.
  Its power law and truncated power law keep alpha in [0, 3] unless given ``parameter_ranges``; its
  Nelder-Mead stops at ``tol=1e-4`` in absolute parameter units, so a small lambda (eigenvalues of
  order 1000) is off by percents; its lognormal likelihood loses its digits far out (mu near
  -1000, when the best lognormal is the power-law limit) and can report a spurious lognormal win;
  its truncated power law's normaliser overflows for alpha far below 0; its nested p-value is
  ``1 - cdf`` (0 below 1e-16). Here the power law is the closed-form MLE, the alternatives are exact
  MLEs without range limits, and the lognormal and truncated power law at the power-law boundary
  report R = 0, p = 1.
* Power of the bootstrap: exponential samples of a few hundred points are rejected in only 20-50%
  of draws, with the two-sided KS distance too: xmin moves up to where a steep power law mimics
  the exponential over a narrow range. Distributions ending at a hard edge (uniform, a
  Marchenko-Pastur bulk) are rejected far more often.

Numerics are float64 numpy/scipy. This module never imports streamlit or plotly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, special

# Eigenvalues at or below this are not power-law candidates (WeightWatcher's EVALS_THRESH).
EVALS_THRESH = 1e-5
# Warning thresholds on alpha (WeightWatcher's OVER_TRAINED_THRESH / UNDER_TRAINED_THRESH).
OVER_TRAINED_ALPHA = 2.0
UNDER_TRAINED_ALPHA = 6.0
# Fewer fit points than this switch to WeightWatcher 0.7.7's small-sample estimator.
SMALL_N_CUTOFF = 20
SMALL_N_MIN_TAIL = 8
SMALL_N_TAIL_BONUS = 0.868
# WeightWatcher treats a tail whose log-spread is at most this as degenerate.
SMALL_N_DEGENERATE = 1e-12
SMALL_N_RULES = ("min-d", "j")
_SMALL_N_METHOD = {"min-d": "small-n (min D)", "j": "small-n (J)"}
# Cells per block of the KS scan: small enough to stay in cache (about 4x faster than one block).
_SCAN_BLOCK_ELEMS = 1 << 14
# Bootstrap samples are drawn and scanned this many values at a time (1 MiB per float64 array),
# which bounds the memory of a call whatever n_boot is.
_BOOT_BLOCK_ELEMS = 1 << 17
# Clauset et al. (4.1): B resamples estimate p to within about 1 / (2 sqrt(B)); 200 gives +-0.035
# at worst and +-0.02 near the 0.1 threshold, at 0.2-0.5 s a layer (see Cost above). Their 2500
# (+-0.01) would cost 12x that.
DEFAULT_N_BOOT = 200


# ---------------------------------------------------------------------------------------
# The fit


@dataclass(frozen=True)
class PowerLawFit:
    """The best power-law tail of an ESD (NaN fields and ``status`` != "success" when it failed).

    ``n_tail``: eigenvalues in the fitted tail (>= xmin among the fitted data);
    ``num_pl_spikes``: eigenvalues >= xmin among all eigenvalues given (WeightWatcher counts the
    clipped ones too). ``method``: "clauset", or for fewer than 20 points "small-n (min D)"
    (WeightWatcher 0.7.7's actual choice) or "small-n (J)" (its J criterion).
    ``num_fingers``: eigenvalues clipped by fix_fingers (WeightWatcher reports one less);
    ``raw_alpha``: the alpha before clipping.
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    n_tail: int
    n_data: int
    method: str
    status: str = "success"
    num_fingers: int = 0
    raw_alpha: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _failed_fit(n_data: int, status: str) -> PowerLawFit:
    nan = math.nan
    return PowerLawFit(nan, nan, nan, nan, nan, 0, 0, n_data, "none", status)


def _prepare(x: np.ndarray, bias_corrected: bool):
    """Per-row logs (relative to the row minimum), tail sizes, log-spreads, alphas and exponents
    ``1 - alpha`` of every candidate of the sorted 2-D array ``x`` (B, n), n >= 2."""
    n = x.shape[1]
    # Logs relative to each row's minimum: every quantity below depends only on ratios, and
    # ln(x / x_0) keeps the digits that ln(x) - ln(x_0) loses when the data sit far from 1.
    with np.errstate(over="ignore"):
        logs = np.log(x / x[:, :1])
    if not np.isfinite(logs).all():
        logs = np.log(x) - np.log(x[:, :1])
    suffix = np.cumsum(logs[:, ::-1], axis=1)[:, ::-1]
    tail = (n - np.arange(n - 1)).astype(np.float64)
    spread = suffix[:, :-1] - tail * logs[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + (tail - 1.0 if bias_corrected else tail) / spread
    # (1 - alpha) bounded so that an infinite alpha (a tail of equal values) times 0 stays 0.
    exponent = np.maximum(1.0 - alphas, -1e300)
    return logs, tail, spread, alphas, exponent


def _ks_blocks(logs: np.ndarray, exponent: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """``max_k |(x_{i+k} / x_i)^(1 - alpha_i) + (min(k / n_i, 1) - 1)|`` for every row and
    candidate, in the dtype of ``logs`` and ``exponent`` (the raw D before the ``alpha <= 1`` rule)."""
    B, n = logs.shape
    padded = np.concatenate([logs, np.full((B, n - 1), np.inf, dtype=logs.dtype)], axis=1)
    # windows[r, i, k] = padded[r, i + k]; made once, since building a view costs more than a block.
    windows = np.lib.stride_tricks.sliding_window_view(padded, n, axis=1)
    Ds = np.empty((B, n - 1), dtype=logs.dtype)
    # A block is (rows of the batch) x (candidates) x (window); one sample's candidates are split
    # when they alone exceed the block, and small samples are stacked into one block instead.
    # The block limit is in bytes' worth of float64 cells: float32 blocks hold twice as many.
    cells = max(1, _SCAN_BLOCK_ELEMS * 8 // logs.itemsize)
    cands = max(1, cells // n)
    rows = max(1, cells // (n * (n - 1))) if cands >= n - 1 else 1
    for a in range(0, n - 1, cands):
        b = min(n - 1, a + cands)
        width = n - a
        # The empirical CDF minus 1, shared by every row of the batch. Padded cells: a fitted CDF
        # of 1 against an empirical CDF clipped at 1, so they add nothing.
        shift = (np.minimum(np.arange(width)[None, :] / tail[a:b, None], 1.0) - 1.0).astype(logs.dtype, copy=False)
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            cell = np.subtract(windows[r0:r1, a:b, :width], logs[r0:r1, a:b, None])
            with np.errstate(invalid="ignore", over="ignore"):
                np.multiply(cell, exponent[r0:r1, a:b, None], out=cell)
                np.exp(cell, out=cell)  # (x_j / x_i)^(1 - alpha_i)
            cell += shift
            Ds[r0:r1, a:b] = np.abs(cell, out=cell).max(axis=2)
    return Ds


def _ks_pairs(logs: np.ndarray, exponent: np.ndarray, tail: np.ndarray, r: np.ndarray, i: np.ndarray) -> np.ndarray:
    """The raw D of the candidates ``(r[k], i[k])`` alone, cell for cell the same float64
    operations as :func:`_ks_blocks`, so the values are bitwise those of the full scan."""
    B, n = logs.shape
    padded = np.concatenate([logs, np.full((B, n - 1), np.inf)], axis=1)
    out = np.empty(r.size)
    step = max(1, _SCAN_BLOCK_ELEMS // n)
    offsets = np.arange(n)
    for a in range(0, r.size, step):
        rr, ii = r[a : a + step], i[a : a + step]
        cell = np.subtract(padded[rr[:, None], ii[:, None] + offsets[None, :]], logs[rr, ii][:, None])
        with np.errstate(invalid="ignore", over="ignore"):
            np.multiply(cell, exponent[rr, ii][:, None], out=cell)
            np.exp(cell, out=cell)
        cell += np.minimum(offsets[None, :] / tail[ii][:, None], 1.0) - 1.0
        out[a : a + step] = np.abs(cell, out=cell).max(axis=1)
    return out


def _apply_alpha_rule(alphas: np.ndarray, Ds: np.ndarray) -> np.ndarray:
    # WeightWatcher leaves D = 1 where alpha <= 1 (no normalisable law); NaN cells lose to any D.
    return np.where(alphas > 1.0, np.where(np.isnan(Ds), np.inf, Ds), 1.0)


def _scan(x: np.ndarray, bias_corrected: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha, D and log-spread ``sum_{j >= i} ln(x_j / x_i)`` of every candidate of every row of
    the sorted 2-D array ``x`` (B, n), n >= 2; see :func:`power_law_scan`."""
    logs, tail, spread, alphas, exponent = _prepare(x, bias_corrected)
    return alphas, _apply_alpha_rule(alphas, _ks_blocks(logs, exponent, tail)), spread


# Unit roundoff of float32, and the largest float32 (the float32 twin of the -1e300 bound).
_U32 = 2.0**-24
_F32_MAX = float(np.finfo(np.float32).max)


def _float32_distances(logs, tail, spread, alphas, exponent) -> tuple[np.ndarray, np.ndarray]:
    """The raw D of every candidate computed in float32 (whose exp is about 4x faster than
    float64's here) and a bound ``delta`` with ``|D32 - D| <= delta`` (after the ``alpha <= 1`` rule).

    ``delta_i = 2^-24 (8 |1 - alpha_i| ln(x_max / x_min) + 32)`` is over twice the float32 error,
    ``2^-24 (3 |1 - alpha_i| ln(x_max / x_min) + 9)``: the logs' rounding amplified by the
    exponent, the exp (a few ulp) and two roundings of terms at most 1 (the tests check the bound
    holds with room to spare). D = 1 by the alpha rule is exact, and so
    is a tail of equal values, whose cells are all 0 or 1.
    """
    D32 = _ks_blocks(logs.astype(np.float32), np.maximum(1.0 - alphas, -_F32_MAX).astype(np.float32), tail)
    D32 = _apply_alpha_rule(alphas, D32.astype(np.float64))
    with np.errstate(invalid="ignore", over="ignore"):
        delta = _U32 * (8.0 * np.abs(exponent) * logs[:, -1:] + 32.0)
    return D32, np.where(alphas > 1.0, np.where(spread == 0.0, _U32 * 32.0, delta), 0.0)


def _clauset_select(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index, alpha and D of the smallest-D candidate of every sorted row of ``x`` (B, n), exactly
    as ``argmin`` over :func:`power_law_scan`'s float64 D, in a third to a half of its time.

    The O(n^2) pass runs in float32 (:func:`_float32_distances`). Only candidates whose float32 D
    minus its bound does not exceed the smallest float32 D plus its bound can win; their D is
    recomputed in float64, cell for cell as the full scan does, and the first smallest wins as with
    ``argmin``.
    """
    B, n = x.shape
    logs, tail, spread, alphas, exponent = _prepare(x, False)
    D32, delta = _float32_distances(logs, tail, spread, alphas, exponent)
    finite = np.isfinite(D32)
    best = np.min(np.where(finite, D32 + delta, np.inf), axis=1, keepdims=True)
    keep = finite & (D32 - delta <= best)
    keep |= ~np.isfinite(best)  # every D non-finite: let the exact pass decide
    r, i = np.nonzero(keep & (alphas > 1.0))
    Ds = np.where(keep, 1.0, np.inf)  # candidates ruled out can never be the first minimum
    Ds[r, i] = _apply_alpha_rule(alphas[r, i], _ks_pairs(logs, exponent, tail, r, i))
    idx = np.argmin(Ds, axis=1)
    take = np.arange(B)
    return idx, alphas[take, idx], Ds[take, idx]


def power_law_scan(data: np.ndarray, *, bias_corrected: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha, KS distance D and sigma for every candidate xmin = data[i], i = 0..n-2, at once.

    ``data`` is one sorted ascending positive sample (shape ``(n,)``; results have shape
    ``(n - 1,)``) or a batch of them, one per row (shape ``(B, n)``; results ``(B, n - 1)``).
    With ``L = ln data`` and suffix sums ``S_i = sum_{j >= i} L_j``, the tail above ``data[i]`` has
    ``n_i = n - i`` points and ``alpha_i = 1 + n_i / (S_i - n_i L_i)`` (``n_i - 1`` in the numerator
    when ``bias_corrected``). ``D_i = max_{j >= i} |1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n_i|``:
    the fitted CDF against the empirical CDF taken just below each point, WeightWatcher's
    convention. Candidates with ``alpha_i <= 1`` get ``D_i = 1``; ``sigma_i = (alpha_i - 1) / sqrt(n_i)``.

    The ``D`` scan has no loop over candidates or samples: row ``i`` of a sliding-window view of
    ``L`` (padded with +inf) holds ``L_{i+k}``, so ``(x_{i+k} / x_i)^(1 - alpha_i)`` is one array
    expression; padded cells give a fitted CDF of 1 against an empirical CDF clipped at 1, adding
    nothing. ``O(B n^2)`` work, done in cache-sized blocks; the result does not depend on the blocks.
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected one sample (n,) or a batch (B, n), got shape {x.shape}")
    rows = x if x.ndim == 2 else x[None, :]
    n = rows.shape[1]
    if n < 2:
        empty = np.empty((rows.shape[0], 0))
        alphas = Ds = sigmas = empty
    else:
        alphas, Ds, _ = _scan(rows, bias_corrected)
        sigmas = (alphas - 1.0) / np.sqrt(n - np.arange(n - 1))
    if x.ndim == 1:
        return alphas[0], Ds[0], sigmas[0]
    return alphas, Ds, sigmas


def _check_rule(small_n_rule: str) -> None:
    if small_n_rule not in SMALL_N_RULES:
        raise ValueError(f"small_n_rule must be one of {SMALL_N_RULES}, not {small_n_rule!r}")


def select_xmin(
    data: np.ndarray, *, small_n_rule: str = "min-d"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The chosen candidate of every sorted sample: ``(index, alpha, D, sigma, method)``.

    ``data``: one sorted positive sample ``(n,)`` (results are numpy scalars) or a batch ``(B, n)``
    (results ``(B,)``), ``n >= 2``; xmin is ``data[..., index]``. The rule is the same as
    :func:`fit_power_law`'s:

    * ``n >= 20`` ("clauset"): the smallest D (the first on ties).
    * ``n < 20``, ``small_n_rule="min-d"`` (WeightWatcher 0.7.7's actual result): bias-corrected
      alphas; a candidate is usable when its tail has at least 8 points and log-spread
      ``> 1e-12``. As in ``WWFit``, unusable candidates keep ``alpha = 0`` and ``D = 1`` and
      ``sigma = (alpha - 1) / sqrt(n_i)`` is taken from those arrays; if no candidate is usable the
      whole sample (index 0) gets its alpha and D unless its spread is degenerate too, but its
      sigma stays ``-1 / sqrt(n)`` (WeightWatcher computes the sigmas before that fallback). The
      winner is ``argmin`` of the D array, the first on ties; a degenerate sample therefore
      reports ``alpha = 0, D = 1, sigma = -1 / sqrt(n)``.
    * ``n < 20``, ``small_n_rule="j"``: among usable candidates the smallest
      ``J = D - 0.868 / sqrt(n_i)``; if none, the whole sample with
      ``sigma = (alpha - 1) / sqrt(n)``, or ``alpha = 1, D = 1, sigma = 0`` when it is degenerate.
    """
    _check_rule(small_n_rule)
    x = np.asarray(data, dtype=np.float64)
    rows = x if x.ndim == 2 else x[None, :]
    n = rows.shape[1]
    if n < 2:
        raise ValueError("a power-law fit needs at least 2 points")
    take = np.arange(rows.shape[0])
    tail = (n - np.arange(n - 1)).astype(np.float64)
    if n >= SMALL_N_CUTOFF:
        idx, alpha, D = _clauset_select(rows)
        sigma = (alpha - 1.0) / np.sqrt(tail[idx])
        method = "clauset"
    else:
        alphas, Ds, spread = _scan(rows, bias_corrected=True)
        usable = (tail >= SMALL_N_MIN_TAIL) & (spread > SMALL_N_DEGENERATE)
        none = ~usable.any(axis=1)
        whole = none & (spread[:, 0] > SMALL_N_DEGENERATE)
        if small_n_rule == "min-d":
            alpha_arr = np.where(usable, alphas, 0.0)
            sigma_arr = (alpha_arr - 1.0) / np.sqrt(tail)
            D_arr = np.where(usable & (alphas > 1.0), Ds, 1.0)
            alpha_arr[whole, 0] = alphas[whole, 0]
            D_arr[whole, 0] = Ds[whole, 0]
            idx = np.argmin(D_arr, axis=1)
            alpha, D, sigma = alpha_arr[take, idx], D_arr[take, idx], sigma_arr[take, idx]
        else:
            J = np.where(usable & (alphas > 1.0), Ds - SMALL_N_TAIL_BONUS / np.sqrt(tail), np.inf)
            idx = np.where(none, 0, np.argmin(J, axis=1))
            alpha, D = alphas[take, idx], Ds[take, idx]
            sigma = (alpha - 1.0) / np.sqrt(tail[idx])
            degenerate = none & ~whole
            alpha = np.where(degenerate, 1.0, alpha)
            D = np.where(degenerate, 1.0, D)
            sigma = np.where(degenerate, 0.0, sigma)
        method = _SMALL_N_METHOD[small_n_rule]
    if x.ndim == 1:
        return idx[0], alpha[0], D[0], sigma[0], method
    return idx, alpha, D, sigma, method


def _fit_sorted(data: np.ndarray, small_n_rule: str = "min-d") -> tuple[int, float, float, float, str] | None:
    """Best candidate index, alpha, D, sigma and method for sorted positive data (None: no fit)."""
    if data.size < 2:
        return None
    i, alpha, D, sigma, method = select_xmin(data, small_n_rule=small_n_rule)
    return int(i), float(alpha), float(D), float(sigma), method


def fit_power_law(
    evals: np.ndarray,
    *,
    thresh: float = EVALS_THRESH,
    fix_fingers: str | None = None,
    max_fingers: int = 10,
    finger_thresh: float = 1.0,
    min_alpha: float = OVER_TRAINED_ALPHA,
    small_n_rule: str = "min-d",
) -> PowerLawFit:
    """Fit a power law ``p(x) ~ x^-alpha`` to the tail of the eigenvalues ``evals`` above ``thresh``.

    Clauset, Shalizi & Newman (2009): for every candidate xmin (each eigenvalue above ``thresh``
    but the largest) the MLE ``alpha = 1 + n / sum ln(x / xmin)`` over the ``n`` eigenvalues
    ``>= xmin`` and the KS distance ``D`` (see :func:`power_law_scan`); the smallest ``D`` wins.
    ``sigma = (alpha - 1) / sqrt(n)`` is the MLE's standard error. With fewer than 20 points,
    WeightWatcher 0.7.7's small-sample estimator, with xmin chosen by ``small_n_rule`` ("min-d":
    what WeightWatcher actually reports; "j": its J criterion; see :func:`select_xmin`).

    ``fix_fingers="clip_xmax"`` (WeightWatcher's): refit with the top 2, 3, ... ``max_fingers - 1``
    eigenvalues removed; the first refit whose alpha is lower than the unclipped one by more than
    ``finger_thresh`` is kept; the search stops early when alpha falls to ``min_alpha``.
    """
    _check_rule(small_n_rule)
    ev = np.asarray(evals, dtype=np.float64).ravel()
    data = np.sort(ev[ev > thresh])
    n = data.size
    if n < 2:
        return _failed_fit(n, f"failed: {n} eigenvalue(s) above {thresh:g}, a fit needs 2")
    best = _fit_sorted(data, small_n_rule)
    used = data
    num_fingers = 0
    raw_alpha = math.nan
    if fix_fingers == "clip_xmax":
        raw_alpha = best[1]
        for clip in range(2, max_fingers):
            if n - clip < 2:
                break
            trial = _fit_sorted(data[:-clip], small_n_rule)
            if trial[1] + finger_thresh < raw_alpha:
                best, used, num_fingers = trial, data[:-clip], clip
                break
            if min_alpha is not None and trial[1] <= min_alpha:
                break
    elif fix_fingers is not None:
        raise ValueError(f"unknown fix_fingers {fix_fingers!r}")
    i, alpha, D, sigma, method = best
    xmin = float(used[i])
    return PowerLawFit(
        alpha=alpha, xmin=xmin, xmax=float(used[-1]), D=D, sigma=sigma,
        num_pl_spikes=int(np.count_nonzero(ev >= xmin)), n_tail=int(used.size - i), n_data=n, method=method,
        num_fingers=num_fingers, raw_alpha=raw_alpha,
    )


def fitted_sample(evals: np.ndarray, fit: PowerLawFit, *, thresh: float = EVALS_THRESH) -> np.ndarray:
    """The sorted values a :func:`fit_power_law` fit was made from: those of ``evals`` above
    ``thresh``, less the ``fit.num_fingers`` largest clipped by ``fix_fingers``. This is the
    ``data`` that :func:`bootstrap_pvalue`, :func:`goodness_of_fit` and
    :func:`compare_distributions` take."""
    ev = np.asarray(evals, dtype=np.float64).ravel()
    data = np.sort(ev[ev > thresh])
    return data[: data.size - fit.num_fingers]


def alpha_warning(alpha: float) -> str:
    """WeightWatcher's flag: "over-trained" below alpha 2, "under-trained" above 6."""
    if not math.isfinite(alpha):
        return "fit failed"
    if alpha < OVER_TRAINED_ALPHA:
        return "over-trained"
    if alpha > UNDER_TRAINED_ALPHA:
        return "under-trained"
    return ""


# ---------------------------------------------------------------------------------------
# Bootstrap: p-value and interval


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the p-value and the interval, so that each function called
    alone gives the same numbers as :func:`goodness_of_fit` with the same seed."""
    first, second = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(first), np.random.default_rng(second)


def _sample(data: np.ndarray) -> np.ndarray:
    x = np.sort(np.asarray(data, dtype=np.float64).ravel())
    if x.size < 2:
        raise ValueError("a power-law fit needs at least 2 points")
    if not (np.isfinite(x).all() and x[0] > 0):
        raise ValueError("power-law data must be finite and positive")
    return x


def _check_fit(x: np.ndarray, fit: PowerLawFit, small_n_rule: str) -> None:
    """The fit must be the one made of ``x`` with the rule the bootstrap will use."""
    _check_rule(small_n_rule)
    expected = fit.n_data - fit.num_fingers
    if x.size != expected or fit.n_tail > x.size or x[x.size - fit.n_tail] != fit.xmin:
        raise ValueError(
            f"data ({x.size} values) are not the sample this fit was made from ({expected} values, "
            f"{fit.n_tail} of them from xmin = {fit.xmin:g}); pass the sorted values above the threshold, "
            "without the clipped fingers"
        )
    if x.size < SMALL_N_CUTOFF and fit.method != _SMALL_N_METHOD[small_n_rule]:
        raise ValueError(f"the fit used {fit.method!r}, not small_n_rule={small_n_rule!r}")


def _row_blocks(n_boot: int, n: int):
    rows = max(1, _BOOT_BLOCK_ELEMS // n)
    for a in range(0, n_boot, rows):
        yield a, min(n_boot, a + rows)


def _synthetic_samples(x: np.ndarray, fit: PowerLawFit, rows: int, rng) -> np.ndarray:
    """``rows`` semi-parametric synthetic samples of ``len(x)`` points, sorted (Clauset et al.
    2009, 4.1): each point comes from the fitted power law with probability ``n_tail / n`` (so
    their number is Binomial(n, n_tail / n)), else is a copy of a random point below xmin."""
    n = x.size
    below = n - fit.n_tail
    # One uniform per point for each choice: power law or not, its inverse-CDF value
    # x = xmin (1 - U)^(-1 / (alpha - 1)), and which point below xmin it copies.
    u = rng.random((rows, 3, n))
    # Far tails of an alpha near 1 overflow; capping them leaves the ranks, hence D, almost unchanged.
    with np.errstate(over="ignore"):
        synthetic = np.minimum(fit.xmin * (1.0 - u[:, 1]) ** (-1.0 / (fit.alpha - 1.0)), np.finfo(np.float64).max / 4)
    if below:
        copies = x[np.minimum((u[:, 2] * below).astype(np.intp), below - 1)]
        synthetic = np.where(u[:, 0] < fit.n_tail / n, synthetic, copies)
    synthetic.sort(axis=1)
    return synthetic


def _synthetic_distances(x: np.ndarray, fit: PowerLawFit, n_boot: int, rng, small_n_rule: str) -> np.ndarray:
    """KS distances of ``n_boot`` synthetic samples, each refitted with xmin chosen again."""
    out = np.empty(n_boot)
    for a, b in _row_blocks(n_boot, x.size):
        out[a:b] = select_xmin(_synthetic_samples(x, fit, b - a, rng), small_n_rule=small_n_rule)[2]
    return out


def _resampled_alphas(x: np.ndarray, n_boot: int, rng, small_n_rule: str) -> np.ndarray:
    """alpha of ``n_boot`` nonparametric resamples of ``x``, each refitted with xmin chosen again."""
    n = x.size
    out = np.empty(n_boot)
    for a, b in _row_blocks(n_boot, n):
        picks = np.minimum((rng.random((b - a, n)) * n).astype(np.intp), n - 1)
        resample = x[picks]
        resample.sort(axis=1)
        out[a:b] = select_xmin(resample, small_n_rule=small_n_rule)[1]
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    # An infinite alpha (a resampled tail of equal values) is kept as the largest value rather
    # than dropped; np.quantile would turn inf - inf into NaN while interpolating.
    big = np.finfo(np.float64).max
    low, high = np.quantile(np.minimum(values, big), [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return tuple(math.inf if v >= big else float(v) for v in (low, high))


def _check_boot(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be between 0 and 1")


def bootstrap_pvalue(
    data: np.ndarray, fit: PowerLawFit, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, small_n_rule: str = "min-d"
) -> float:
    """Clauset, Shalizi & Newman's (2009, section 4.1) goodness-of-fit p-value of a power-law fit.

    ``data``: the sorted positive values that were fitted (for :func:`fit_power_law`, those above
    ``thresh``, less the fingers clipped by ``fix_fingers``); ``fit``: their fit. Each of
    ``n_boot`` synthetic samples has ``n = len(data)`` points: a Binomial(n, n_tail / n) number
    drawn from the fitted law above xmin by inverse transform,
    ``x = xmin (1 - U)^(-1 / (alpha - 1))``, the rest drawn with replacement from the data below
    xmin. Each is refitted with xmin chosen again by the same rule (``small_n_rule`` for fewer than
    20 points), and ``p = #{D_synthetic >= D_observed} / n_boot``; its Monte Carlo standard error is
    ``sqrt(p (1 - p) / n_boot)`` (at most ``1 / (2 sqrt(n_boot))``). ``p < 0.1`` rules the power law
    out. NaN when the fit failed or its alpha is not above 1 (no law to draw from).

    All samples of a block of rows are drawn at once as an array and fitted with the batched scan;
    results depend on ``seed`` only, not on the blocks.
    """
    _check_boot(n_boot, 0.5)
    _check_rule(small_n_rule)
    if not fit.ok or not fit.alpha > 1.0:
        return math.nan
    x = _sample(data)
    _check_fit(x, fit, small_n_rule)
    rng, _ = _streams(seed)
    return float(np.mean(_synthetic_distances(x, fit, n_boot, rng, small_n_rule) >= fit.D))


def alpha_interval(
    data: np.ndarray, *, level: float = 0.95, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
    small_n_rule: str = "min-d",
) -> tuple[float, float]:
    """Percentile bootstrap interval of alpha with xmin re-selected in every resample.

    ``data``: the positive values to fit (as :func:`bootstrap_pvalue`). ``n_boot`` resamples of
    ``len(data)`` points drawn with replacement are each refitted as the data were (xmin chosen
    again by the same rule), and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of their alphas (Efron & Tibshirani, "An introduction to the bootstrap", 1993, ch. 13).
    Unlike :func:`alpha_interval_asymptotic` it includes the uncertainty of xmin.
    """
    _check_boot(n_boot, level)
    x = _sample(data)
    _check_rule(small_n_rule)
    _, rng = _streams(seed)
    return _percentiles(_resampled_alphas(x, n_boot, rng, small_n_rule), level)


def alpha_interval_asymptotic(fit: PowerLawFit, level: float = 0.95) -> tuple[float, float]:
    """``alpha -+ z (alpha - 1) / sqrt(n_tail)``, z the ``(1 + level) / 2`` normal quantile: the
    MLE's asymptotic interval with xmin held fixed (Clauset et al. 2009, section 3.1)."""
    _check_boot(1, level)
    if not fit.ok or fit.n_tail < 1:
        return math.nan, math.nan
    half = special.ndtri((1.0 + level) / 2.0) * (fit.alpha - 1.0) / math.sqrt(fit.n_tail)
    return float(fit.alpha - half), float(fit.alpha + half)


def goodness_of_fit(
    data: np.ndarray, fit: PowerLawFit, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
    small_n_rule: str = "min-d",
) -> dict:
    """:func:`bootstrap_pvalue` and :func:`alpha_interval` of one fit in one call (the same numbers
    as the two functions with the same seed).

    Returns ``pl_pvalue``, ``pl_pvalue_se`` (its Monte Carlo standard error), ``alpha_ci_low``,
    ``alpha_ci_high``, ``level`` and ``n_boot``; NaN values when the fit failed.
    """
    _check_boot(n_boot, level)
    _check_rule(small_n_rule)
    nan = math.nan
    result = {"pl_pvalue": nan, "pl_pvalue_se": nan, "alpha_ci_low": nan, "alpha_ci_high": nan,
              "level": level, "n_boot": int(n_boot)}
    if not fit.ok:
        return result
    x = _sample(data)
    _check_fit(x, fit, small_n_rule)
    rng_p, rng_ci = _streams(seed)
    if fit.alpha > 1.0:
        p = float(np.mean(_synthetic_distances(x, fit, n_boot, rng_p, small_n_rule) >= fit.D))
        result["pl_pvalue"], result["pl_pvalue_se"] = p, math.sqrt(p * (1.0 - p) / n_boot)
    low, high = _percentiles(_resampled_alphas(x, n_boot, rng_ci, small_n_rule), level)
    result["alpha_ci_low"], result["alpha_ci_high"] = low, high
    return result


# ---------------------------------------------------------------------------------------
# Likelihood-ratio tests against other heavy-ish tails
#
# Every alternative is fitted on the tail x >= xmin and normalised there. In s = ln(x / xmin) >= 0
# the power law, the lognormal and the truncated power law are exponential families:
#   power law            q(s) = (alpha - 1) exp(-(alpha - 1) s)
#   lognormal            q(s) = exp(b s - c s^2) / I(b, c)                        (c > 0)
#   truncated power law  q(s) = exp((1 - alpha) s - mu (e^s - 1)) / J(alpha, mu)  (mu = lambda xmin > 0)
# and the exponential is q(s) = lambda' e^s exp(-lambda' (e^s - 1)), lambda' = lambda xmin. The
# density of x is q(s) / x for all of them, so log-likelihood ratios can be taken in s.
# The mean negative log-likelihood f of an exponential family is convex in its natural parameters
# (its Hessian is the covariance of the sufficient statistics). Both two-parameter families contain
# the power law as their boundary (c = 0, mu = 0), which is their MLE when the derivative of f
# there points outwards; that is checked first, in closed form. Otherwise the MLE is interior and
# found by profiling (see _profile_mle); a joint Newton step from far away points out of the
# domain, and clipping it stalls at the boundary.


def _increasing_root(fun, x: float, rtol: float = 1e-14) -> float:
    """Root of an increasing function, ``fun(x) -> (value, derivative)``: Newton steps, replaced
    by bisection once the root is bracketed and a step would leave the bracket (as ``rtsafe`` in
    Numerical Recipes, 9.4), until a step is below ``rtol * max(1, |x|)``."""
    lo, hi = -math.inf, math.inf
    for _ in range(200):
        g, h = fun(x)
        if g == 0.0:
            return x
        if g < 0.0:
            lo = x
        else:
            hi = x
        # A step at most doubles |x|: where h is tiny, Newton jumps to parameters so extreme that the
        # quadrature behind fun loses its digits.
        step = -g / h if h > 0.0 else math.nan
        new = x + math.copysign(min(abs(step), max(1.0, abs(x))), step)
        if not lo < new < hi:
            if math.isinf(lo) or math.isinf(hi):
                new = x + math.copysign(max(1.0, 2.0 * abs(x)), -g)
            else:
                new = 0.5 * (lo + hi)
        if abs(new - x) <= rtol * max(1.0, abs(x)):
            return new
        x = new
    return x


def _profile_mle(inner, outer, theta1: float, theta2: float) -> tuple[float, float]:
    """Minimiser of a convex ``f(theta1, theta2)`` whose minimum has ``theta2 > 0``.

    ``inner(theta1, theta2) -> (df/dtheta1, d2f/dtheta1^2)``; ``outer(theta1, theta2) -> df/dtheta2``.
    For each ``theta2`` the best ``theta1`` is the root of the first derivative (a 1-D convex
    problem); the profile ``p(theta2) = min f`` is convex and its derivative is ``outer`` at that
    root, whose zero is found by Brent's method in ``ln theta2`` after bracketing it.
    """
    state = {"theta1": theta1}

    def profile_slope(nu: float) -> float:
        t2 = math.exp(nu)
        # 1e-10 suffices here: an error in theta1 moves the slope, hence theta2, by as much, and
        # the final solve below is to full precision.
        state["theta1"] = _increasing_root(lambda t1: inner(t1, t2), state["theta1"], 1e-10)
        return outer(state["theta1"], t2)

    nu = math.log(theta2)
    slope = profile_slope(nu)
    step, other = 1.0, nu
    while True:
        other = nu + math.copysign(step, -slope)
        if abs(other) > 700.0:
            break
        other_slope = profile_slope(other)
        if (other_slope > 0.0) != (slope > 0.0):
            break
        # Steps of at most e^4 in theta2: far past the root the inner fit needs parameters so
        # extreme that its quadrature loses its digits.
        nu, slope, step = other, other_slope, min(2.0 * step, 4.0)
    lo, hi = sorted((nu, other))
    nu = optimize.brentq(profile_slope, lo, hi, xtol=1e-11, rtol=1e-12)
    t2 = math.exp(nu)
    return _increasing_root(lambda t1: inner(t1, t2), state["theta1"]), t2


def _log_mills(z: float) -> float:
    """``ln R(z)``, ``R(z) = Q(z) / phi(z)`` the Mills ratio of the standard normal."""
    if z > -30.0:
        return 0.5 * math.log(math.pi / 2.0) + math.log(special.erfcx(z / math.sqrt(2.0)))
    return float(special.log_ndtr(-z)) + 0.5 * z * z + 0.5 * math.log(2.0 * math.pi)


def _truncated_normal_moments(z0: float) -> tuple[float, float]:
    """``E w`` and ``Var w`` of ``w = z - z0`` for a standard normal ``z`` conditioned on ``z >= z0``.

    For ``z0 > 2`` from ``M_k = E w^k`` by the backward continued fraction
    ``r_k = k / (z0 + r_{k+1})``, ``M_k = r_k M_{k-1}`` (integration by parts gives
    ``z0 M_k + M_{k+1} = k M_{k-1}``; its terms are positive, so a deep truncation, where
    ``E z - z0`` cancels, loses nothing; 100 terms reach 1e-14 at z0 = 2). Otherwise
    ``E w = lambda - z0``, ``Var w = 1 + z0 lambda - lambda^2`` with ``lambda = 1 / R(z0)``.
    """
    if z0 > 2.0:
        r = 0.0
        for k in range(100, 1, -1):
            r = k / (z0 + r)
        M1 = 1.0 / (z0 + r)
        return M1, M1 * (r - M1)
    lam = math.exp(-_log_mills(z0))
    return lam - z0, 1.0 + z0 * lam - lam * lam


def _lognormal_log_norm(b: float, c: float) -> float:
    """``ln I(b, c)``, ``I = int_0^inf exp(b s - c s^2) ds = sigma R(-b sigma)``, ``sigma = 1 / sqrt(2c)``."""
    sigma = 1.0 / math.sqrt(2.0 * c)
    return math.log(sigma) + _log_mills(-b * sigma)


def _fit_lognormal(s: np.ndarray) -> tuple[float, float] | None:
    """MLE ``(b, c)`` of ``q(s) ~ exp(b s - c s^2)`` on ``s >= 0``, or None when the supremum is
    the power-law boundary ``c = 0`` (the lognormal with ``sigma -> inf``, ``mu -> -inf``).

    ``f = -b S1 + c S2 + ln I(b, c)``; with ``s = sigma w`` (``z0 = -b sigma``, w as in
    :func:`_truncated_normal_moments`), ``df/db = E s - S1``, ``d2f/db2 = Var s`` and
    ``df/dc = S2 - E s^2``. At ``c = 0`` the best ``b`` is ``-1 / S1`` and ``df/dc = S2 - 2 S1^2``.
    """
    S1, S2 = float(np.mean(s)), float(np.mean(s * s))
    if S2 >= 2.0 * S1 * S1:
        return None

    def moments(b, c):
        sigma = 1.0 / math.sqrt(2.0 * c)
        mean, var = _truncated_normal_moments(-b * sigma)
        return sigma, mean, var

    def inner(b, c):
        sigma, mean, var = moments(b, c)
        return sigma * mean - S1, sigma * sigma * var

    def outer(b, c):
        sigma, mean, var = moments(b, c)
        return S2 - sigma * sigma * (var + mean * mean)

    var_s = S2 - S1 * S1
    return _profile_mle(inner, outer, S1 / var_s, 0.5 / var_s)


def _tpl_integrals(alpha: float, mu: float, *moments: str) -> tuple[float, list[float]]:
    """``ln J(alpha, mu)`` and the requested means (``"s"``, ``"s2"``: ``s^2``, ``"v"``: ``e^s - 1``)
    under ``q(s) ~ exp((1 - alpha) s - mu (e^s - 1))``, ``mu > 0``.

    Adaptive quadrature (QUADPACK) of the log-concave integrand scaled by its peak, on ``[0, end]``
    where even ``e^{2s}`` times it (heavier than every weight used) has fallen 60 e-folds below its
    own peak, with breakpoints at the peak and 1, 4, 16, 64 widths (``1 / sqrt(curvature)``) on
    either side, so that a narrow peak is not missed. Raises ArithmeticError when an integral is
    not accurate to 1e-9.
    """
    log_mu = math.log(mu)

    def damp(u: float) -> float:
        # mu (e^u - 1), without overflow far out where the integrand is 0 anyway.
        return mu * math.expm1(u) if u < 700.0 else math.exp(min(log_mu + u, 700.0))

    def shape(rate: float) -> tuple[float, float, float]:
        # Peak, its value and width of rate u - mu (e^u - 1) on u >= 0.
        if rate > mu:
            at = math.log(rate / mu)
            return at, rate * at - damp(at), 1.0 / math.sqrt(rate)
        return 0.0, 0.0, 1.0 / max(mu - rate, math.sqrt(mu))

    def drop(rate: float) -> float:
        # Where the concave rate u - mu (e^u - 1) is 60 below its peak: doubling, then bisection.
        at, top, width = shape(rate)
        below = lambda u: rate * u - damp(u) < top - 60.0  # noqa: E731
        lo, hi = at, at + width
        while not below(hi):
            lo, hi = hi, at + 2.0 * (hi - at)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if below(mid) else (mid, hi)
        return hi

    g = 1.0 - alpha
    peak_at, peak, width = shape(g)
    end = max(drop(g), drop(g + 2.0))
    marks = {peak_at + side * k * width for side in (-1.0, 1.0) for k in (0.0, 1.0, 4.0, 16.0, 64.0)}
    points = sorted(p for p in marks if 0.0 < p < end) or None
    exp, expm1 = math.exp, math.expm1
    # One closure per weight, written out: the integrand is called a few hundred times per integral.
    integrands = {
        "1": lambda u: exp(g * u - damp(u) - peak),
        "s": lambda u: u * exp(g * u - damp(u) - peak),
        "s2": lambda u: u * u * exp(g * u - damp(u) - peak),
        "v": lambda u: expm1(u) * exp(g * u - damp(u) - peak),
    }

    def integral(name: str) -> float:
        # full_output: QUADPACK's complaints come back as a flag instead of a process-wide warning.
        value, error, *_ = integrate.quad(integrands[name], 0.0, end, points=points, epsabs=0.0, epsrel=1e-12,
                                          limit=400, full_output=1)
        if not (math.isfinite(value) and error <= 1e-9 * abs(value)):
            raise ArithmeticError(f"truncated power law integral inaccurate (alpha={alpha:g}, mu={mu:g})")
        return value

    J = integral("1")
    if not J > 0.0:
        raise ArithmeticError(f"truncated power law normaliser lost (alpha={alpha:g}, mu={mu:g})")
    return peak + math.log(J), [integral(name) / J for name in moments]


def _fit_truncated_power_law(s: np.ndarray) -> tuple[float, float] | None:
    """MLE ``(alpha, mu)`` of ``q(s) ~ exp((1 - alpha) s - mu (e^s - 1))`` on ``s >= 0`` (``mu =
    lambda xmin``), or None when it is the power law (``mu = 0``).

    ``f = (alpha - 1) S1 + mu V1 + ln J`` with ``V1 = mean(e^s - 1)``: ``df/dalpha = S1 - E s``,
    ``d2f/dalpha2 = Var s``, ``df/dmu = V1 - E(e^s - 1)``. At ``mu = 0`` the best alpha is the
    power law's ``1 + 1 / S1`` and ``E(e^s - 1) = 1 / (alpha - 2)`` (infinite for alpha <= 2).
    """
    S1 = float(np.mean(s))
    V1 = float(np.mean(np.expm1(s)))
    alpha_pl = 1.0 + 1.0 / S1
    if alpha_pl > 2.0 and V1 >= 1.0 / (alpha_pl - 2.0):
        return None

    def inner(alpha, mu):
        # One pass for the variance: it only scales Newton steps, so its cancellation is harmless.
        _, (mean, second) = _tpl_integrals(alpha, mu, "s", "s2")
        return S1 - mean, max(second - mean * mean, 1e-300)

    def outer(alpha, mu):
        return V1 - _tpl_integrals(alpha, mu, "v")[1][0]

    return _profile_mle(inner, outer, alpha_pl, 1.0 / (1.0 + V1))


def _vuong(d: np.ndarray, nested: bool) -> tuple[float, float]:
    """Normalised log-likelihood ratio ``R / sqrt(n var(d))`` and its p-value, ``R = sum d``.

    Not nested (Vuong 1989; Clauset et al. 2009, 5.1): ``p = erfc(|R| / sqrt(2 n var))``. Nested:
    ``p = P(chi2_1 >= 2 |R|)`` (Wilks), as the ``powerlaw`` package does. Identical fits give R = 0
    and p = 1.
    """
    n = d.size
    R = float(np.sum(d))
    var = float(np.mean((d - np.mean(d)) ** 2))
    if var <= 0.0:
        return (0.0, 1.0) if R == 0.0 else (math.copysign(math.inf, R), 0.0)
    p = float(special.chdtrc(1, 2.0 * abs(R))) if nested else float(special.erfc(abs(R) / math.sqrt(2.0 * n * var)))
    return R / math.sqrt(n * var), p


LR_ALTERNATIVES = ("lognormal", "exponential", "truncated_power_law")


def compare_distributions(data: np.ndarray, fit: PowerLawFit) -> dict:
    """Likelihood-ratio tests of the power law against the lognormal, exponential and truncated
    power law on the tail ``x >= fit.xmin`` (Clauset et al. 2009, section 5).

    ``data``: the fitted values (see :func:`fitted_sample`). Each distribution is fitted by maximum
    likelihood on the tail and normalised on ``[xmin, inf)``, as the ``powerlaw`` package does:
    power law ``alpha = 1 + n / sum ln(x / xmin)`` (the MLE, also where ``fit`` holds the
    bias-corrected small-sample alpha), exponential ``lambda = 1 / (mean x - xmin)``, lognormal and
    truncated power law by profiling their convex negative log-likelihood (see the notes above
    :func:`_increasing_root`). With ``d_i`` the pointwise log-likelihood differences (power law
    minus alternative), ``lr_<alt>_R = sum d / sqrt(n var d)`` (positive favours the power law) and
    ``lr_<alt>_p`` its p-value (nested for the truncated power law, see :func:`_vuong`). When the
    alternative's MLE is the power law itself (the lognormal's ``sigma -> inf`` limit, or
    ``lambda = 0``) the two fit equally: R = 0, p = 1, and its parameters are NaN. NaN throughout
    when the fit failed or the tail has fewer than 2 distinct values, and for an alternative whose
    fit fails numerically (its quadrature cannot reach 1e-9).

    Also returned: ``n_tail``, ``pl_alpha_mle``, ``lognormal_mu``, ``lognormal_sigma`` (of ln x),
    ``exponential_lambda``, ``truncated_power_law_alpha``, ``truncated_power_law_lambda``.
    """
    nan = math.nan
    out = {f"lr_{alt}_{k}": nan for alt in LR_ALTERNATIVES for k in ("R", "p")}
    out.update({"n_tail": 0, "pl_alpha_mle": nan, "lognormal_mu": nan, "lognormal_sigma": nan,
                "exponential_lambda": nan, "truncated_power_law_alpha": nan, "truncated_power_law_lambda": nan})
    if not fit.ok:
        return out
    x = _sample(data)
    xmin = fit.xmin
    t = x[x >= xmin] / xmin
    s = np.log(t)
    v = np.expm1(s)
    out["n_tail"] = int(t.size)
    if t.size < 2 or not np.mean(s) > 0.0:
        return out
    alpha = 1.0 + 1.0 / float(np.mean(s))
    log_pl = math.log(alpha - 1.0) - (alpha - 1.0) * s
    out["pl_alpha_mle"] = alpha

    lam = 1.0 / float(np.mean(v))
    out["exponential_lambda"] = lam / xmin
    out["lr_exponential_R"], out["lr_exponential_p"] = _vuong(log_pl - (math.log(lam) - lam * v + s), False)

    try:
        lognormal = _fit_lognormal(s)
        if lognormal is None:
            out["lr_lognormal_R"], out["lr_lognormal_p"] = 0.0, 1.0
        else:
            b, c = lognormal
            sigma = 1.0 / math.sqrt(2.0 * c)
            log_ln = b * s - c * s * s - _lognormal_log_norm(b, c)
            out["lr_lognormal_R"], out["lr_lognormal_p"] = _vuong(log_pl - log_ln, False)
            out["lognormal_mu"], out["lognormal_sigma"] = math.log(xmin) + b * sigma * sigma, sigma
    except (ArithmeticError, ValueError):
        pass  # left NaN: one alternative that cannot be fitted does not sink the others

    try:
        truncated = _fit_truncated_power_law(s)
        if truncated is None:
            out["lr_truncated_power_law_R"], out["lr_truncated_power_law_p"] = 0.0, 1.0
        else:
            a, mu = truncated
            log_tpl = (1.0 - a) * s - mu * v - _tpl_integrals(a, mu)[0]
            out["lr_truncated_power_law_R"], out["lr_truncated_power_law_p"] = _vuong(log_pl - log_tpl, True)
            out["truncated_power_law_alpha"], out["truncated_power_law_lambda"] = a, mu / xmin
    except (ArithmeticError, ValueError):
        pass
    return out
