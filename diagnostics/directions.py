"""Latent directions of a projection matrix: SeFa and Householder factorisations, readout, traversal.

``A`` is the chosen weight in ``nn.Linear`` orientation, ``(out, in)``. Several weights with the
same input width can be stacked row-wise, ``A = [A_1; A_2; ...]``, so that
``A^T A = sum_i A_i^T A_i``: SeFa does this for the style projections of all StyleGAN layers that
read the same latent code.

SeFa (Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs", CVPR 2021). The paper's
closed form: the unit input directions ``n`` that move the output most, ``argmax ||A n||_2``, are the
top eigenvectors of ``A^T A``, i.e. the right singular vectors of ``A`` (eigenvalues ``s_i^2``). This
is the view Orthoscope leads with ("raw"). The genforce/sefa reference code instead first scales every
output unit's weight vector to unit length (it stores the projection as ``(in, out)``, so those are
its columns; here they are the rows of ``A``): ``A_rownorm = diag(1 / ||a_r||) A``, whose eigenvectors
differ from the SVD's whenever the rows have unequal lengths. Both are always computed; ``normalize``
only picks which one is read out and traversed. Every table column names the matrix it describes.

Eigengaps and near-degenerate spectra. Direction ``i`` of ``M^T M`` carries the relative gap to the
next eigenvalue, ``g_i = (l_i - l_{i+1}) / l_i`` (``l_{i+1} = 0`` past the last eigenvalue). An
eigenvector is only determined up to rotation within a cluster of (nearly) equal eigenvalues: with
``n`` rows read as ``n`` samples of the input space's second moment, North, Bell, Cahalan & Moeng
("Sampling errors in the estimation of empirical orthogonal functions", Mon. Wea. Rev. 1982) put the
sampling error of ``l_i`` at ``l_i sqrt(2 / n)``, and neighbouring eigenvectors mix when the gap is
within it. So ``l_i`` and ``l_{i+1}`` count as degenerate when ``g_i <= sqrt(2 / n)``, and direction
``i`` is resolved when its gaps to both neighbours exceed that. When any of the top ``k`` directions
of either variant is unresolved, matching single directions between the variants compares arbitrary
bases of a cluster, so the headline becomes the overlap of the two top-``k`` subspaces: the cosines
of their principal angles ``sigma(N_rownorm^T V_k)`` (Bjorck & Golub 1973) and their mean square
``||N_rownorm^T V_k||_F^2 / k``. That overlap itself needs the boundary gap ``g_k`` resolved.

Householder Projector (Song, Zhang, Sebe & Wang, "Householder Projector for Unsupervised Latent
Semantics Discovery", ICCV 2023). The projection is replaced by ``P = c H(U) H(V)^T``: ``H(.)`` is a
matrix with ``k`` orthonormal columns written as a product of ``k`` Householder reflections, and
every one of the ``k`` singular values equals ``c``, so the ``k`` directions are orthogonal and move
the output equally far.

Distance from ``A`` to the nearest such projector. For a rank-``k`` partial isometry ``P``
(``P^T P`` an orthogonal projector of rank ``k``, so ``||P||_F^2 = k``) and ``c >= 0``::

    ||A - c P||_F^2 = ||A||_F^2 - 2 c <A, P> + c^2 k.

For fixed ``P`` the best ``c`` is ``<A, P> / k``, leaving ``||A||_F^2 - <A, P>^2 / k``. By von
Neumann's trace inequality ``<A, P> = tr(P^T A) <= sum_i sigma_i(P) s_i = s_1 + ... + s_k``, with
equality at ``P = U_k V_k^T`` (``A = U S V^T``). Hence, with ``m_k`` the mean of the top ``k``
singular values, ``c = m_k`` and::

    min ||A - c P||_F^2 = sum_i s_i^2 - k m_k^2 = sum_{i>k} s_i^2 + sum_{i<=k} (s_i - m_k)^2,

the Eckart-Young rank-``k`` error plus the spread of the top ``k`` singular values about their mean.

Readout and traversal need the model's module. "The layer's input" is the input of the module that
owns the weight: a forward pre-hook adds ``alpha v`` there. A fused attention weight
(``...:q``) has one input shared by q, k and v, so its traversal moves all three. An embedding table
``(vocab, hidden)`` is read as the tied unembedding reads it, a map from the hidden space, so its
directions live in the embedding's output, where the traversal adds them. Convolution kernels are
flattened to ``(out, in * kernel)`` for the factorisations; they get no readout or traversal.
"""

from __future__ import annotations

import difflib
import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch

from diagnostics.batching import right_padded
from diagnostics.result import Result
from diagnostics.threads import single_thread
from models import ModelHandle, OrthoscopeError, WeightMatrix
from models.limits import check_memory

Progress = Callable[[float, str], None]

SENTENCES_FILE = Path(__file__).resolve().parents[1] / "data" / "directions_sentences.txt"
LM_PROMPTS = ("The capital of France is", "My favourite thing to cook is", "Once upon a time, there was a")
ENCODER_PROBES = (
    "The cat dozed in a patch of sunlight on the kitchen floor.",
    "Interest rates will probably rise again next spring.",
)
DEFAULTS = {
    "k": 10,
    # The paper's closed form (eigenvectors of A^T A) leads; genforce's row normalisation is the variant.
    "normalize": False,
    "seed": 0,
    "fit_iters": 60,
    # In units of the mean input norm at the layer: 0.1 is already felt (MiniLM's middle MLP moves a
    # unit sentence embedding by about 0.4), 0.5 lies far outside what the layer normally sees.
    "alphas": [-0.5, -0.1, 0.0, 0.1, 0.5],
    "traverse": [1, 2],
    "gen_tokens": 12,
    "top": 5,
    "readout_alpha": 0.1,
}
MAX_GEN_TOKENS = 64
# Kinds whose output is added to the residual stream: their readout vector is W v, not v.
_WRITER_KINDS = {"attention-out", "mlp-down"}
VARIANTS = ("raw", "rownorm")
VARIANT_MATRICES = {"raw": "A", "rownorm": "diag(1/||a_r||) A"}
DIRECTION_COLUMNS = (
    "index",
    "eig_AtA_raw", "sv_raw", "explained_raw", "eigengap_raw", "resolved_raw",
    "eig_AtA_rownorm", "explained_rownorm", "eigengap_rownorm", "resolved_rownorm",
    "cos_rownorm_raw", "best_raw_match", "best_raw_match_cos",
    "readout_of", "top_tokens", "bottom_tokens", "top_sentences",
)


@dataclass
class DirectionsResult(Result):
    diagnostic: ClassVar[str] = "directions"
    kind: str  # the model's kind: decides which readout and traversal apply
    matrices: list  # [{name, shape, kind, block, layer_type}] in stacking order
    shape: list  # [rows, cols] of the stacked matrix A
    k: int
    singular_values: list  # every singular value of A, descending
    rank: int
    effective_rank: float
    stable_rank: float
    directions: list  # one dict per direction: the columns of directions.csv
    chosen: str  # "raw" or "rownorm": whose directions the readout, traversal, Gram and cross-talk use
    variants: dict  # "raw" and "rownorm": eigenvalues of M^T M, eigengaps, which directions are resolved
    rownorm_vs_raw: list  # k x k |cos| between rownorm directions (rows) and raw directions (columns)
    principal_cosines: list  # cosines of the k principal angles between the two top-k subspaces, descending
    subspace_overlap: float  # ||N_rownorm^T V_k||_F^2 / k: 1 when both span the same k-dimensional subspace
    degeneracy: dict  # the near-degeneracy rule, its verdict and which headline follows from it
    householder: dict
    projector: list  # [{k, equal_sv_error, equal_sv_relative, eckart_young_error, eckart_young_relative}]
    fit: dict
    gram_minus_identity: list  # k x k, N^T N - I of the chosen directions
    crosstalk: list  # k x k, (A n_i)^T (A n_j)
    crosstalk_cos: list  # the same as cosines
    readout: dict
    traversal: dict

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.directions, columns=list(DIRECTION_COLUMNS))

    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {
            "directions": self.to_frame(),
            "directions_spectrum": pd.DataFrame(
                {"index": np.arange(1, len(self.singular_values) + 1), "singular_value": self.singular_values}
            ),
            "directions_projector": pd.DataFrame(self.projector),
        }
        if self.traversal.get("rows"):
            tables["directions_traversal"] = pd.DataFrame(self.traversal["rows"])
        return tables


def headline(result: DirectionsResult) -> str:
    """One line comparing the two SeFa variants, led by what the spectrum allows (module doc)."""
    deg, k = result.degeneracy, result.k
    noise = f"sqrt(2/n) = {deg['threshold']:.3g} with n = {deg['samples']} rows, North et al. 1982"
    if deg["headline"] == "per_direction":
        worst = min(row["cos_rownorm_raw"] for row in result.directions)
        return (f"SeFa: all {k} directions resolved (relative eigengaps > {noise}); |cos| rownorm vs raw per direction "
                f">= {worst:.4f}; top-{k} subspace overlap {result.subspace_overlap:.4f}")
    parts = [f"{label} {', '.join(map(str, result.variants[label]['unresolved']))}"
             for label in VARIANTS if result.variants[label]["unresolved"]]
    line = (f"SeFa: near-degenerate spectrum, so the headline is the top-{k} subspace overlap rownorm vs raw, "
            f"{result.subspace_overlap:.4f} (unresolved directions: {'; '.join(parts)}; relative eigengap <= {noise})")
    loose = [label for label in VARIANTS if not result.variants[label]["boundary_resolved"]]
    if loose:
        better = deg["nearest_resolved_k"]
        line += (f"; the gap after direction {k} is unresolved too ({', '.join(loose)}), so the top-{k} subspace is "
                 "itself not well defined" + (f": k = {better} is the nearest with a resolved boundary" if better else ""))
    return line


class Unavailable(Exception):
    """The model-dependent parts (readout, traversal) cannot run for this model or matrix."""


# ---------------------------------------------------------------------------------------
# Choosing matrices


def matrix_catalog(handle: ModelHandle) -> list[dict]:
    """Every analysable matrix with its (out, in) shape, kind and block, from shapes alone."""
    return [
        {"name": m.name, "shape": [m.shape[0], int(np.prod(m.shape[1:]))], "kind": m.kind, "block": m.block}
        for m in handle.planned_matrices()
    ]


def default_matrix(catalog: list[dict]) -> str:
    """The MLP down-projection of the middle block (of the first tower, where blocks are keyed by tower
    as in "text/3"), else the first linear matrix, else the first."""
    if not catalog:
        raise OrthoscopeError("this model has no analysable weight matrix.")
    downs = []
    for c in catalog:
        tower, _, index = str(c["block"]).rpartition("/")
        if c["kind"] == "mlp-down" and index.isdigit():
            downs.append((tower, int(index), c["name"]))
    if downs:
        first = [(index, name) for tower, index, name in downs if tower == downs[0][0]]
        blocks = sorted({index for index, _ in first})
        middle = blocks[len(blocks) // 2]
        return next(name for index, name in first if index == middle)
    linear = [c for c in catalog if c["kind"] not in {"embedding", "conv1d", "conv2d"}]
    return (linear or catalog)[0]["name"]


def load_matrices(handle: ModelHandle, names: list[str]) -> list[WeightMatrix]:
    """Read the named matrices, refusing unknown names, 1-D tensors and mismatched input widths."""
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not names:
        raise OrthoscopeError("choose at least one weight matrix.")
    known = set(handle.matrix_names())
    for name in names:
        if name not in known:
            raise OrthoscopeError(_not_a_matrix(handle, name, known))
    found = {m.name: m for m in handle.iter_matrices(names=set(names))}
    mats = [found[n] for n in names]
    widths = {m.name: int(np.prod(m.shape[1:])) for m in mats}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{n} ({w})" for n, w in widths.items())
        raise OrthoscopeError(
            f"matrices stacked for SeFa must share their input width, but these differ: {listed}."
        )
    return mats


def _not_a_matrix(handle: ModelHandle, name: str, known: set[str]) -> str:
    skipped = {s.name: s for s in handle.skipped()}
    if name in skipped:
        s = skipped[name]
        if len(s.shape) == 1:
            return (
                f"{name} is a 1-D tensor of shape ({s.shape[0]},) (a bias, norm or scale); "
                "latent directions need a 2-D weight matrix."
            )
        return f"{name} (shape {tuple(s.shape)}) is not analysed: {s.reason}."
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else f" It has {len(known)} matrices, e.g. {min(known)}."
    return f"there is no weight matrix named {name!r} in {handle.name}.{hint}"


def check_finite(mats: list[WeightMatrix]) -> None:
    """Refuse, in one line, matrices with NaN or infinite weights: their SVD is undefined (LAPACK
    fails or returns NaN), so they are skipped with the reason, as the spectra diagnostic skips them."""
    for m in mats:
        t = m.tensor
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            found = " and ".join(part for part in (f"{nan:,} NaN" if nan else "", f"{inf:,} infinite" if inf else "")
                                 if part)
            raise OrthoscopeError(f"{m.name} holds {found} weight(s); latent directions skip matrices that are not "
                                  "finite (their SVD is undefined). Choose another matrix.")


def stacked(mats: list[WeightMatrix]) -> torch.Tensor:
    """The matrices as one float64 (sum of outs, in) matrix; kernels flattened to (out, in * kernel)."""
    return torch.cat([m.tensor.reshape(m.shape[0], -1).to(torch.float64) for m in mats], dim=0)


# ---------------------------------------------------------------------------------------
# Spectrum and SeFa


def numerical_rank(s: torch.Tensor, shape: tuple[int, int], stored: torch.dtype) -> int:
    """numpy's ``matrix_rank`` rule, ``s > s_max * max(shape) * eps``, at the stored precision.

    Half-precision storage still gets float32's eps: a weight that is used in float32 or wider
    arithmetic is not rank-deficient because its entries were rounded.
    """
    eps = torch.finfo(torch.float64 if stored == torch.float64 else torch.float32).eps
    return int((s > s.max() * max(shape) * eps).sum()) if s.numel() else 0


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli (2007): ``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum_j s_j``."""
    p = s[s > 0] / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def stable_rank(s: torch.Tensor) -> float:
    """``||A||_F^2 / ||A||_2^2``."""
    return float((s**2).sum() / s[0] ** 2)


def column_signs(vectors: torch.Tensor) -> torch.Tensor:
    """+-1 per column making its largest-magnitude entry positive (eigenvectors have no sign)."""
    idx = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1])])
    return torch.where(signs == 0, 1.0, signs)


def normalize_rows(A: torch.Tensor) -> torch.Tensor:
    """SeFa's normalisation: every output unit's weight vector scaled to unit length (zero rows kept)."""
    norms = torch.linalg.vector_norm(A, dim=1, keepdim=True)
    return A / torch.where(norms > 0, norms, 1.0)


def gram_eigenpairs(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of ``M^T M`` that can be nonzero, eigenvalues descending and clamped at 0.

    A wide ``M`` goes through its SVD (squared singular values, right singular vectors: the same
    eigenpairs without the ``in x in`` Gram matrix, 1536 x 1536 for an MLP down-projection); a tall
    one through ``eigh`` of the small Gram matrix (576 x 576 for a 49152-token embedding table).
    """
    if M.shape[0] >= M.shape[1]:
        evals, evecs = torch.linalg.eigh(M.T @ M)
        order = torch.argsort(evals, descending=True)
        values, vectors = evals[order].clamp(min=0), evecs[:, order]
    else:
        _, sv, Vh = torch.linalg.svd(M, full_matrices=False)
        values, vectors = sv**2, Vh.T
    return values, vectors * column_signs(vectors)


def sefa(A: torch.Tensor, k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` eigenpairs of ``M^T M``, descending: ``M = A`` (the paper's closed form) or, with
    ``normalize``, ``M = diag(1 / ||a_r||) A`` (the genforce code's normalisation)."""
    values, vectors = gram_eigenpairs(normalize_rows(A) if normalize else A)
    return values[:k], vectors[:, :k]


def relative_eigengaps(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(l_i - l_{i+1}) / l_i`` for every eigenvalue, descending; the last one's next is 0.

    Eigenvalues that ``gram_eigenpairs`` leaves out are 0, so "0 past the last" is exact for a wide
    matrix and for the final direction of a tall one there is nothing left to mix with.
    """
    lam = np.asarray(values, dtype=np.float64)
    following = np.append(lam[1:], 0.0)
    return np.where(lam > 0, (lam - following) / np.where(lam > 0, lam, 1.0), 0.0)


def north_threshold(samples: int) -> float:
    """Relative eigengap below which neighbours mix: North et al.'s ``sqrt(2 / n)`` (module doc)."""
    return math.sqrt(2.0 / samples)


def resolved_directions(gaps: np.ndarray, k: int, threshold: float) -> list[bool]:
    """Direction ``i`` (of the top ``k``) is resolved when its gaps to both neighbours exceed ``threshold``."""
    above = np.asarray(gaps[:k]) > threshold
    return [bool(above[i] and (i == 0 or above[i - 1])) for i in range(k)]


def principal_cosines(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the spans of two orthonormal bases, descending."""
    return torch.linalg.svdvals(X.T @ Y).clamp(max=1.0)


def nearest_resolved_k(gaps: list[np.ndarray], k: int, limit: int, threshold: float) -> int | None:
    """The ``k'`` closest to ``k`` (the smaller on a tie) whose boundary gap ``g_k'`` exceeds
    ``threshold`` in every spectrum, so that the top-``k'`` subspaces are well defined."""
    limit = min([limit] + [len(g) for g in gaps])
    ok = [j for j in range(1, limit + 1) if all(g[j - 1] > threshold for g in gaps)]
    return min(ok, key=lambda j: (abs(j - k), j)) if ok else None


# ---------------------------------------------------------------------------------------
# Householder factorisation and the equal-singular-value projector


def householder_factor(Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write ``Q`` (n x k, orthonormal columns, any n >= k) as reflections times signs.

    ``torch.geqrf`` gives ``Q = H_1 ... H_k [I_k; 0] R``, each ``H_i = I - tau_i w_i w_i^T`` with
    ``w_i`` stored below the diagonal of column ``i`` (unit entry implied). ``R`` is upper triangular
    and orthogonal because ``Q`` is, hence diagonal with entries +-1: the returned ``signs``.
    """
    reflectors, tau = torch.geqrf(Q)
    signs = torch.sign(reflectors.diagonal())
    return reflectors, tau, torch.where(signs == 0, 1.0, signs)


def householder_rebuild(reflectors: torch.Tensor, tau: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H_1 ... H_k [I_k; 0] diag(signs)`` via ``torch.linalg.householder_product``."""
    return torch.linalg.householder_product(reflectors, tau) * signs


def equal_sv_projector_error(s: torch.Tensor, k: int) -> float:
    """``min_{c >= 0, P} ||A - c P||_F`` over rank-``k`` partial isometries (derivation in the module doc)."""
    mean = s[:k].mean()
    return float(torch.sqrt((s[k:] ** 2).sum() + ((s[:k] - mean) ** 2).sum()))


def eckart_young_error(s: torch.Tensor, k: int) -> float:
    """``min ||A - B||_F`` over rank-``k`` matrices ``B``: ``sqrt(sum_{i>k} s_i^2)``."""
    return float(torch.sqrt((s[k:] ** 2).sum()))


def projector_ks(r: int, k: int, points: int = 24) -> list[int]:
    """A geometric grid of ranks from 1 to ``r``, with ``k`` always in it."""
    grid = {int(round(x)) for x in np.geomspace(1, r, num=min(points, r))}
    return sorted(grid | {k})


def fit_householder_projector(
    A: torch.Tensor, k: int, *, seed: int, iters: int, progress: Progress | None = None
) -> dict:
    """Fit ``c U V^T`` to ``A`` with ``U``, ``V`` under torch's orthogonal parametrisation (householder map).

    Maximises ``tr(U^T A V)`` (the best ``c`` follows in closed form) with L-BFGS from a seeded
    random start. The optimal ``U`` lies in the column space of ``A`` and ``V`` in its row space,
    so the fit runs on the ``r x r`` triangular factor of a QR of ``A`` (``r = min(out, in)``) and
    maps back: the same problem, but the backward pass of ``householder_product`` grows faster
    than quadratically with the height of the factor.
    """
    from torch.nn.utils.parametrizations import orthogonal

    m, n = A.shape
    tall = m >= n
    Qa, Ra = torch.linalg.qr(A if tall else A.T)
    # float64 keeps U and V orthonormal to ~1e-15, so the fitted error is a true upper bound.
    B = Ra if tall else Ra.T
    r = B.shape[0]
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for _ in range(2):
        holder = torch.nn.Linear(k, r, bias=False, dtype=torch.float64)
        with torch.no_grad():
            holder.weight.copy_(torch.randn(r, k, generator=gen, dtype=torch.float64))
        orthogonal(holder, orthogonal_map="householder")
        factors.append(holder)
    params = [p for f in factors for p in f.parameters()]
    scale = float(torch.linalg.matrix_norm(B)) * math.sqrt(k)  # bounds tr(U^T B V); keeps the loss O(1)
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=iters, max_eval=int(iters * 1.25) + 1, tolerance_grad=1e-10,
        tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe",
    )
    traces = []

    def closure():
        optimizer.zero_grad()
        trace = (factors[0].weight * (B @ factors[1].weight)).sum()
        (-trace / scale).backward()
        traces.append(float(trace.detach()))
        if progress is not None:
            progress(min(len(traces) / (iters * 1.25), 1.0), f"fitting the Householder projector ({len(traces)} evaluations)")
        return -trace / scale

    start = time.perf_counter()
    if iters > 0:
        with single_thread():
            optimizer.step(closure)
    with torch.no_grad():
        U, V = (f.weight for f in factors)
    U, V = (Qa @ U, V) if tall else (U, Qa @ V)
    P = U @ V.T
    c = float((A * P).sum() / (P * P).sum())
    return {
        "U": U, "V": V, "c": c, "traces": traces,
        "error": float(torch.linalg.matrix_norm(A - c * P)),
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------
# Hooks: where a direction enters the model


@dataclass
class Site:
    """Where a direction is added: a module's input (pre-hook) or, for embeddings, its output."""

    path: str
    module: torch.nn.Module
    where: str  # "input" or "output"


def edit_sites(model: torch.nn.Module, mats: list[WeightMatrix]) -> tuple[list[Site], str]:
    """The modules owning the matrices, checked against the analysed weights; and a note for users."""
    sites, notes = [], []
    for mat in mats:
        if mat.layer_type in {"conv1d", "conv2d"}:
            raise Unavailable(f"{mat.name} is a convolution kernel: its input is a feature map, not a vector.")
        stored, _, part = mat.name.partition(":")
        path = stored.removesuffix(".weight")
        if any(site.path == path for site in sites):
            continue  # parts of one fused weight share one input: add the direction once
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise Unavailable(f"the model's module has no submodule {path!r} for {mat.name}.") from None
        weight = getattr(module, "weight", None)
        out_dim, in_dim = mat.shape
        if isinstance(module, torch.nn.Embedding):
            if tuple(module.weight.shape) != (out_dim, in_dim):
                raise Unavailable(f"{path} holds a {tuple(module.weight.shape)} table, not the analysed {mat.shape}.")
            sites.append(Site(path, module, "output"))
            notes.append(f"embedding table {path}: the direction is added to its output (the hidden space)")
            continue
        if weight is None or weight.ndim != 2:
            raise Unavailable(f"{path} is a {type(module).__name__}, not a linear layer.")
        if in_dim not in weight.shape:
            raise Unavailable(f"{path}'s weight {tuple(weight.shape)} has no input of width {in_dim}.")
        sites.append(Site(path, module, "input"))
        if part:
            notes.append(f"fused weight {stored} ({mat.name}): the direction is added to the input of {path}, "
                         "which q, k and v share, so the traversal moves all three")
    if not notes:
        notes.append("the direction is added to the input of " + ", ".join(s.path for s in sites))
    return sites, "; ".join(notes) + "."


def _add_to_input(delta: torch.Tensor):
    def hook(module, args):
        if not args:
            raise OrthoscopeError(f"{type(module).__name__} was called without a positional input; cannot add a direction.")
        return (args[0] + delta.to(args[0].dtype), *args[1:])

    return hook


def _add_to_output(delta: torch.Tensor):
    def hook(module, args, output):
        return output + delta.to(output.dtype)

    return hook


@contextmanager
def shifted(sites: list[Site], delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` (a vector of the input width) at every site while the block runs.

    The hooks are removed on leaving, also when the forward pass or generation raises.
    """
    handles = []
    try:
        for site in sites:
            if site.where == "input":
                handles.append(site.module.register_forward_pre_hook(_add_to_input(delta)))
            else:
                handles.append(site.module.register_forward_hook(_add_to_output(delta)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def recorded(sites: list[Site]) -> Iterator[list[torch.Tensor]]:
    """Collect what flows into the sites (out of them for embeddings), to measure its scale."""
    seen: list[torch.Tensor] = []
    handles = []
    try:
        for site in sites:
            if site.where == "input":
                handles.append(site.module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())))
            else:
                handles.append(site.module.register_forward_hook(lambda m, a, o: seen.append(o.detach())))
        yield seen
    finally:
        for h in handles:
            h.remove()


def mean_token_norm(tensors: list[torch.Tensor], masks: list[torch.Tensor]) -> float:
    """Mean Euclidean norm of the vectors at real (unpadded) token positions.

    A tensor shared by the whole batch (BERT's position embeddings come out as (1, seq, hidden))
    is broadcast to the mask's shape.
    """
    norms = [
        torch.linalg.vector_norm(t.to(torch.float64).expand(*m.shape, t.shape[-1]), dim=-1)[m.bool()]
        for t, m in zip(tensors, masks)
    ]
    return float(torch.cat(norms).mean())


# ---------------------------------------------------------------------------------------
# Language models: logit lens and next-token traversal


def next_token_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """log p(next token) at each prompt's last position, float64, (prompts, vocab)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.log_softmax(logits[torch.arange(len(last)), last].to(torch.float64), dim=-1)


def final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The norm applied before the unembedding, which the logit lens applies too."""
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


def readout_vectors(mats: list[WeightMatrix], directions: torch.Tensor, hidden: int) -> tuple[torch.Tensor, str]:
    """Residual-stream vectors for the logit lens, one column per direction, and how they were formed.

    Layers that write into the residual stream (attention output, MLP down) contribute ``W v``;
    layers that read from it (q/k/v, gate/up, embeddings, heads) are moved by ``v`` itself.
    """
    writers = [m for m in mats if m.kind in _WRITER_KINDS]
    if writers and len(writers) == len(mats) and all(m.shape[0] == hidden for m in mats):
        vectors = sum(m.tensor.to(torch.float64) @ directions for m in mats)
        return vectors, "W v: what the layer writes into the residual stream when its input moves along v"
    if not writers and directions.shape[0] == hidden:
        return directions, "v itself: the layer reads the residual stream, where v lives"
    raise Unavailable(
        "the logit lens needs directions in the residual stream; these matrices neither read it nor all write to it."
    )


def logit_lens(model: torch.nn.Module, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the final norm and unembedding applied to ``+r`` and ``-r`` for each column ``r``."""
    head = model.get_output_embeddings()
    if head is None:
        raise Unavailable("the model has no unembedding (output embeddings).")
    norm = final_norm(model) or torch.nn.Identity()
    r = vectors.T.to(head.weight.dtype)[:, None, :]
    return head(norm(r))[:, 0].to(torch.float64), head(norm(-r))[:, 0].to(torch.float64)


def token_text(decode: Callable[[list[int]], str], token: int) -> str:
    text = decode([int(token)])
    return text.strip() or repr(text)


def lm_traversal(
    model: torch.nn.Module,
    sites: list[Site],
    directions: torch.Tensor,
    indices: list[int],
    alphas: list[float],
    scale: float,
    prompt_ids: list[torch.Tensor],
    *,
    gen_tokens: int,
    top: int,
    decode: Callable[[list[int]], str],
    eos: int | None,
    progress: Progress | None = None,
) -> list[dict]:
    """For each direction and alpha: KL(p_0 || p_alpha) of the next token (mean over prompts),
    KL / alpha^2, the tokens whose log-probability rises most, and a greedy continuation of the
    first prompt. ``alpha`` is in units of ``scale`` (the mean input norm at the sites).
    """
    from transformers import GenerationConfig

    ids, mask, last = right_padded(prompt_ids)
    base = next_token_logprobs(model, ids, mask, last)
    first = prompt_ids[0][None]

    def generate() -> str:
        if gen_tokens == 0:
            return ""
        gen_config = GenerationConfig(max_new_tokens=gen_tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        out = model.generate(input_ids=first, attention_mask=torch.ones_like(first), generation_config=gen_config)
        return decode(out[0, first.shape[1]:].tolist()).replace("\n", "⏎")

    unmoved = generate()
    rows = []
    total = len(indices) * len(alphas)
    for i, j in enumerate(indices):
        for a, alpha in enumerate(alphas):
            delta = (alpha * scale) * directions[:, j]
            with shifted(sites, delta):
                logp = next_token_logprobs(model, ids, mask, last)
                generation = generate() if alpha != 0 else unmoved
            kl = float((base.exp() * (base - logp)).sum(dim=-1).mean())
            rise = (logp - base).mean(dim=0)
            promoted = [token_text(decode, t) for t in torch.topk(rise, top).indices] if alpha != 0 else []
            rows.append({
                "direction": j + 1, "alpha": alpha, "alpha_abs": alpha * scale, "kl": kl,
                "kl_per_alpha2": kl / alpha**2 if alpha != 0 else float("nan"),
                "promoted": " | ".join(promoted), "generation": generation,
            })
            if progress is not None:
                progress((i * len(alphas) + a + 1) / total, f"traversal: direction {j + 1}, alpha {alpha:g}")
    return rows


# ---------------------------------------------------------------------------------------
# Encoders: sentence embeddings


def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def sentence_embeddings(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean of the last hidden states over real tokens, scaled to unit length (as all-MiniLM-L6-v2 does)."""
    out = model(**batch, output_hidden_states=True)
    hidden = out.hidden_states[-1].to(torch.float64)
    mask = batch["attention_mask"].unsqueeze(-1).to(torch.float64)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def encoder_readout(
    model: torch.nn.Module, sites: list[Site], directions: torch.Tensor, delta_scale: float,
    bank: dict, texts: list[str], top: int = 3,
) -> list[list[tuple[str, float]]]:
    """Per direction, the sentences whose embedding moves most (``||e_alpha - e_0||``) when
    ``delta_scale * v`` is added at the layer's input."""
    base = sentence_embeddings(model, bank)
    found = []
    for j in range(directions.shape[1]):
        with shifted(sites, delta_scale * directions[:, j]):
            moved = torch.linalg.vector_norm(sentence_embeddings(model, bank) - base, dim=-1)
        order = torch.argsort(moved, descending=True)[:top]
        found.append([(texts[i], float(moved[i])) for i in order])
    return found


def encoder_traversal(
    model: torch.nn.Module, sites: list[Site], directions: torch.Tensor, indices: list[int], alphas: list[float],
    scale: float, bank: dict, texts: list[str], probes: dict, progress: Progress | None = None,
) -> list[dict]:
    """For each direction and alpha: the probe sentences' mean embedding shift ``||e_alpha - e_0||``
    and the built-in sentence nearest (cosine) to the first probe's moved embedding."""
    bank_embeddings = sentence_embeddings(model, bank)
    base = sentence_embeddings(model, probes)
    rows = []
    total = len(indices) * len(alphas)
    for i, j in enumerate(indices):
        for a, alpha in enumerate(alphas):
            with shifted(sites, (alpha * scale) * directions[:, j]):
                moved = sentence_embeddings(model, probes)
            cos = moved[0] @ bank_embeddings.T
            nearest = int(torch.argmax(cos))
            rows.append({
                "direction": j + 1, "alpha": alpha, "alpha_abs": alpha * scale,
                "shift": float(torch.linalg.vector_norm(moved - base, dim=-1).mean()),
                "nearest": texts[nearest], "nearest_cos": float(cos[nearest]),
            })
            if progress is not None:
                progress((i * len(alphas) + a + 1) / total, f"traversal: direction {j + 1}, alpha {alpha:g}")
    return rows


# ---------------------------------------------------------------------------------------
# Parameters and the run


def resolve_params(handle: ModelHandle, params: dict | None) -> dict:
    """The parameters with defaults filled in and checked; the result records exactly these."""
    p = {**DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
    if not p.get("matrices"):
        p["matrices"] = [default_matrix(matrix_catalog(handle))]
    if isinstance(p["matrices"], str):
        p["matrices"] = [p["matrices"]]
    p["matrices"] = list(dict.fromkeys(p["matrices"]))
    prompts = [x.strip() for x in (p.get("prompts") or []) if isinstance(x, str) and x.strip()]
    p["prompts"] = prompts or list(LM_PROMPTS if handle.kind == "causal-lm" else ENCODER_PROBES)
    for key in ("k", "seed", "fit_iters", "gen_tokens", "top"):
        if isinstance(p[key], bool) or not isinstance(p[key], numbers.Real) or not float(p[key]).is_integer():
            raise OrthoscopeError(f"{key} must be a whole number, got {p[key]!r}.")
        p[key] = int(p[key])
    if p["k"] < 1:
        raise OrthoscopeError(f"k must be at least 1, got {p['k']}.")
    if p["fit_iters"] < 0 or p["top"] < 1:
        raise OrthoscopeError("fit_iters must be >= 0 and top >= 1.")
    if not 0 <= p["gen_tokens"] <= MAX_GEN_TOKENS:
        raise OrthoscopeError(f"gen_tokens must lie between 0 and {MAX_GEN_TOKENS}, got {p['gen_tokens']}.")
    try:
        alphas = sorted({float(a) for a in p["alphas"]} | {0.0})
        traverse = sorted({int(j) for j in p["traverse"]})
    except (TypeError, ValueError):
        raise OrthoscopeError("alphas must be numbers and traverse direction numbers (1 = the first).") from None
    if not all(math.isfinite(a) for a in alphas):
        raise OrthoscopeError("alphas must be finite numbers.")
    if not isinstance(p["readout_alpha"], numbers.Real) or not math.isfinite(p["readout_alpha"]):
        raise OrthoscopeError(f"readout_alpha must be a finite number, got {p['readout_alpha']!r}.")
    bad = [j for j in traverse if not 1 <= j <= p["k"]]
    if bad:
        raise OrthoscopeError(f"traverse names directions {bad}, but there are only k={p['k']} (numbered from 1).")
    p["alphas"], p["traverse"] = alphas, traverse
    p["normalize"] = bool(p["normalize"])
    p["readout_alpha"] = float(p["readout_alpha"])
    return p


def run(handle: ModelHandle, params: dict | None = None, progress: Progress | None = None) -> DirectionsResult:
    """Factorise the chosen matrix (or stack), then read out and traverse its top directions."""
    with single_thread(), handle.hooks_lock:
        return _run(handle, params, progress)


def _run(handle: ModelHandle, params: dict | None, progress: Progress | None) -> DirectionsResult:
    report = progress or (lambda f, m: None)
    p = resolve_params(handle, params)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[f"{name}_s"] = now - clock
        clock = now

    start = clock
    report(0.0, "reading " + ", ".join(p["matrices"]))
    mats = load_matrices(handle, p["matrices"])
    check_finite(mats)
    rows, cols = sum(m.shape[0] for m in mats), int(np.prod(mats[0].shape[1:]))
    # A, its SVD factors, the rownorm copy and its factors, float64.
    check_memory(6 * 8 * rows * cols, f"the SVD of a {rows} x {cols} matrix")
    A = stacked(mats)
    k = p["k"]
    report(0.05, f"SVD of a {A.shape[0]} x {A.shape[1]} matrix")
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    signs = column_signs(Vh.T)
    U, V = U * signs, Vh.T * signs  # flipped in pairs, so A = U diag(s) V^T still holds
    rank = numerical_rank(s, tuple(A.shape), mats[0].tensor.dtype)
    if k > rank:
        raise OrthoscopeError(
            f"k={k} is larger than the rank of {' + '.join(m.name for m in mats)} ({rank}, shape "
            f"{A.shape[0]} x {A.shape[1]}); choose k <= {rank}."
        )
    # The raw variant is the SVD itself: eigenpairs of A^T A without squaring A's condition number.
    matrices = {"raw": A, "rownorm": normalize_rows(A)}
    spectra = {"raw": s**2}
    bases = {"raw": V}
    spectra["rownorm"], bases["rownorm"] = gram_eigenpairs(matrices["rownorm"])
    threshold = north_threshold(A.shape[0])
    variants, gaps = {}, {}
    for label in VARIANTS:
        lam = spectra[label]
        gaps[label] = relative_eigengaps(lam)
        resolved = resolved_directions(gaps[label], k, threshold)
        trace = float(torch.linalg.matrix_norm(matrices[label]) ** 2)
        variants[label] = {
            "matrix": VARIANT_MATRICES[label], "eigenvalues": lam[:k].tolist(),
            "next_eigenvalue": float(lam[k]) if k < len(lam) else 0.0, "trace": trace,
            "explained": (lam[:k] / trace).tolist(), "eigengaps": gaps[label][:k].tolist(), "resolved": resolved,
            "unresolved": [i + 1 for i, ok in enumerate(resolved) if not ok],
            "boundary_resolved": bool(gaps[label][k - 1] > threshold),
        }
    N_raw, N_rownorm = V[:, :k], bases["rownorm"][:, :k]
    N = N_rownorm if p["normalize"] else N_raw
    cos = (N_rownorm.T @ V).abs()  # k x r
    angles = principal_cosines(N_rownorm, N_raw)
    near = any(variants[label]["unresolved"] for label in VARIANTS)
    degeneracy = {
        "rule": "l_i and l_{i+1} are degenerate when (l_i - l_{i+1}) / l_i <= sqrt(2 / n), n = rows of A "
                "(North et al. 1982); a direction is resolved when both of its gaps exceed that",
        "samples": int(A.shape[0]), "threshold": threshold, "near_degenerate": near,
        "headline": "subspace_overlap" if near else "per_direction",
        "nearest_resolved_k": nearest_resolved_k([gaps[label] for label in VARIANTS], k, rank, threshold),
    }
    lap("svd")

    report(0.15, "Householder factorisation")
    householder = _householder_summary(A, U, s, V, k)
    projector = [
        {
            "k": j, "equal_sv_error": equal_sv_projector_error(s, j),
            "equal_sv_relative": equal_sv_projector_error(s, j) / float(torch.linalg.matrix_norm(A)),
            "eckart_young_error": eckart_young_error(s, j),
            "eckart_young_relative": eckart_young_error(s, j) / float(torch.linalg.matrix_norm(A)),
        }
        for j in projector_ks(len(s), k)
    ]
    lap("householder")
    fitted = fit_householder_projector(
        A, k, seed=p["seed"], iters=p["fit_iters"], progress=lambda f, m: report(0.2 + 0.25 * f, m)
    )
    best = float(s[:k].sum())
    bound = equal_sv_projector_error(s, k)
    fit = {
        "k": k, "seed": p["seed"], "iters": p["fit_iters"], "evaluations": len(fitted["traces"]),
        "error": fitted["error"], "bound": bound, "relative_gap": (fitted["error"] - bound) / bound if bound else 0.0,
        "c": fitted["c"], "mean_top_k": best / k,
        "captured": [t / best for t in fitted["traces"]],  # tr(U^T A V) / (s_1 + ... + s_k) per evaluation
        "max_abs_gram_minus_identity": max(_max_abs_gram_minus_identity(fitted["U"]),
                                           _max_abs_gram_minus_identity(fitted["V"])),
        "subspace_overlap": float(torch.linalg.matrix_norm(fitted["V"].T @ V[:, :k]) ** 2 / k),
    }
    lap("fit")

    AN = A @ N
    crosstalk = AN.T @ AN
    d = torch.sqrt(torch.clamp(crosstalk.diagonal(), min=1e-300))
    chosen = "rownorm" if p["normalize"] else "raw"
    directions = [
        {
            "index": i + 1,
            "eig_AtA_raw": variants["raw"]["eigenvalues"][i], "sv_raw": float(s[i]),
            "explained_raw": variants["raw"]["explained"][i], "eigengap_raw": variants["raw"]["eigengaps"][i],
            "resolved_raw": variants["raw"]["resolved"][i],
            "eig_AtA_rownorm": variants["rownorm"]["eigenvalues"][i],
            "explained_rownorm": variants["rownorm"]["explained"][i],
            "eigengap_rownorm": variants["rownorm"]["eigengaps"][i], "resolved_rownorm": variants["rownorm"]["resolved"][i],
            "cos_rownorm_raw": float(cos[i, i]),
            "best_raw_match": int(cos[i].argmax()) + 1, "best_raw_match_cos": float(cos[i].max()),
            "readout_of": chosen, "top_tokens": "", "bottom_tokens": "", "top_sentences": "",
        }
        for i in range(k)
    ]

    report(0.45, "loading the model's module for readout and traversal")
    readout, traversal = {"available": False, "reason": ""}, {"available": False, "reason": ""}
    try:
        model, sites, site_note = _model_and_sites(handle, mats)
        lap("module")
        readout, traversal = _readout_and_traversal(
            handle, model, sites, site_note, mats, N, directions, p, lambda f, m: report(0.5 + 0.5 * f, m)
        )
    except Unavailable as exc:
        readout["reason"] = traversal["reason"] = str(exc)
    lap("readout_traversal")
    timings["total_s"] = time.perf_counter() - start
    report(1.0, "done")

    return DirectionsResult(
        model_name=handle.name, fingerprint=handle.fingerprint, params=p, timings=timings, kind=handle.kind,
        matrices=[
            {"name": m.name, "shape": list(m.shape), "kind": m.kind, "block": m.block, "layer_type": m.layer_type}
            for m in mats
        ],
        shape=list(A.shape), k=k, singular_values=s.tolist(), rank=rank,
        effective_rank=effective_rank(s), stable_rank=stable_rank(s), directions=directions, chosen=chosen,
        variants=variants, rownorm_vs_raw=cos[:, :k].tolist(), principal_cosines=angles.tolist(),
        subspace_overlap=float((angles**2).sum() / k), degeneracy=degeneracy,
        householder=householder, projector=projector, fit=fit,
        gram_minus_identity=(N.T @ N - torch.eye(k, dtype=N.dtype)).tolist(),
        crosstalk=crosstalk.tolist(), crosstalk_cos=(crosstalk / torch.outer(d, d)).tolist(),
        readout=readout, traversal=traversal,
    )


def _max_abs_gram_minus_identity(Q: torch.Tensor) -> float:
    return float((Q.T @ Q - torch.eye(Q.shape[1], dtype=Q.dtype)).abs().max())


def _householder_summary(A: torch.Tensor, U: torch.Tensor, s: torch.Tensor, V: torch.Tensor, k: int) -> dict:
    """Factor both orthogonal factors into reflections, at rank ``k`` and at full rank, and rebuild."""
    out = {"rows": A.shape[0], "cols": A.shape[1], "k": k}
    for label, rank in (("k", k), ("full", len(s))):
        Uh = householder_rebuild(*householder_factor(U[:, :rank]))
        Vr = householder_rebuild(*householder_factor(V[:, :rank]))
        target = A if label == "full" else (U[:, :k] * s[:k]) @ V[:, :k].T
        rebuilt = (Uh * s[:rank]) @ Vr.T
        out[f"u_error_{label}"] = float((Uh - U[:, :rank]).abs().max())
        out[f"v_error_{label}"] = float((Vr - V[:, :rank]).abs().max())
        out[f"rebuild_error_{label}"] = float(torch.linalg.matrix_norm(rebuilt - target) / torch.linalg.matrix_norm(target))
        out[f"reflectors_{label}"] = 2 * rank
    return out


def _model_and_sites(handle: ModelHandle, mats: list[WeightMatrix]):
    if handle.kind not in {"causal-lm", "encoder"}:
        raise Unavailable(f"readout and traversal cover language models and text encoders, not {handle.kind!r} models.")
    try:
        model = handle.module()
        handle.tokenizer()
    except OrthoscopeError as exc:
        raise Unavailable(str(exc)) from None
    sites, note = edit_sites(model, mats)
    return model, sites, note


def _readout_and_traversal(handle, model, sites, site_note, mats, N, directions, p, report):
    tokenizer = handle.tokenizer()
    decode = tokenizer.decode
    indices = [j - 1 for j in p["traverse"]]
    traversal = {"available": True, "reason": "", "site": site_note, "alphas": p["alphas"], "prompts": p["prompts"]}
    with torch.inference_mode():
        if handle.kind == "causal-lm":
            prompt_ids = [tokenizer(t, return_tensors="pt").input_ids[0] for t in p["prompts"]]
            ids, mask, last = right_padded(prompt_ids)
            with recorded(sites) as seen:
                model(input_ids=ids, attention_mask=mask)
            scale = mean_token_norm(seen, [mask] * len(seen))
            report(0.05, "logit lens")
            hidden = model.get_output_embeddings().weight.shape[1]
            try:
                vectors, how = readout_vectors(mats, N, hidden)
                plus, minus = logit_lens(model, vectors)
                readout = {"available": True, "reason": "", "method": "logit lens", "vector": how}
                for i, row in enumerate(directions):
                    row["top_tokens"] = " | ".join(token_text(decode, t) for t in torch.topk(plus[i], p["top"]).indices)
                    row["bottom_tokens"] = " | ".join(token_text(decode, t) for t in torch.topk(minus[i], p["top"]).indices)
            except Unavailable as exc:
                readout = {"available": False, "reason": str(exc)}
            eos = tokenizer.eos_token_id
            traversal["rows"] = lm_traversal(
                model, sites, N, indices, p["alphas"], scale, prompt_ids, gen_tokens=p["gen_tokens"], top=p["top"],
                decode=lambda t: tokenizer.decode(t, skip_special_tokens=True), eos=eos,
                progress=lambda f, m: report(0.1 + 0.9 * f, m),
            )
        else:
            texts = load_sentences()
            bank = dict(tokenizer(texts, padding=True, return_tensors="pt"))
            probes = dict(tokenizer(p["prompts"], padding=True, return_tensors="pt"))
            with recorded(sites) as seen:
                sentence_embeddings(model, bank)
            scale = mean_token_norm(seen, [bank["attention_mask"]] * len(seen))
            report(0.05, "sentences that move most")
            moved = encoder_readout(model, sites, N, p["readout_alpha"] * scale, bank, texts)
            for row, found in zip(directions, moved):
                row["top_sentences"] = " | ".join(f"{t} ({d:.3g})" for t, d in found)
            readout = {
                "available": True, "reason": "", "method": "sentences moved most",
                "vector": f"alpha = {p['readout_alpha']:g} x the mean input norm; embedding shift ||e_alpha - e_0||",
                "sentences": len(texts),
            }
            traversal["rows"] = encoder_traversal(
                model, sites, N, indices, p["alphas"], scale, bank, texts, probes,
                progress=lambda f, m: report(0.1 + 0.9 * f, m),
            )
    traversal["scale"] = scale
    traversal["scale_note"] = "alpha is in units of the mean norm of what flows where the direction is added, on the prompts"
    return readout, traversal
