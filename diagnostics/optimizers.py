"""Orthogonalised matrix optimizers in fp32, and the routing that decides which parameters they take.

Every matrix optimizer here is a :class:`MatrixOptimizer`: it sees each parameter as a matrix
(conv kernels flattened to ``(out_channels, in_channels * kh * kw)``), keeps a momentum buffer
under ``state[p]["momentum_buffer"]`` in torch.optim.Muon's EMA form ``B <- lerp(B, g, 1 - mu)``
(the trace recorder reads it), applies decoupled weight decay, and subtracts ``lr * direction``;
subclasses only write :meth:`MatrixOptimizer.direction`.
Parameters a matrix optimizer should not take (embeddings, the head, norms, biases) go to torch's
AdamW through :class:`RoutedOptimizer`; :func:`route` decides and says why for each parameter.

Each class carries ``paper`` (the citation) and ``notes`` (where the paper and the public code
disagree, and what this implementation does); the page shows both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable

import torch
from torch import nn

from models.errors import OrthoscopeError

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
# Five steps of Jordan's quintic p(x) = 3.4445 x - 4.7750 x^3 + 2.0315 x^5 do not converge to 1:
# they push every singular value of the Frobenius-normalised input (all <= 1) into a band around
# it. For inputs in [NS_BAND_INPUT_MIN, 1] the outputs lie in NS_BAND (0.680 to 1.202, computed on
# a fine log grid of the scalar map); below the band's floor the map is still nearly linear and
# small directions come out small: an input of 1e-3 maps to about 0.47, one of 1e-4 to 0.05.
NS_BAND_INPUT_MIN = 1.5e-3
NS_BAND = (0.67, 1.21)


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """Approximate ``U V^T`` of ``G = U S V^T`` by the quintic Newton-Schulz iteration, in fp32.

    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, starting from ``G / max(||G||_F, eps)`` so
    the spectral norm is at most 1; wide orientation (rows <= cols) keeps ``A`` the small Gram.
    Torch's stock Muon runs the same iteration in bf16.
    """
    if G.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.float()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view a matrix optimizer works on: rows are output units (conv kernels flattened)."""
    return t.reshape(t.shape[0], -1)


def lr_scale(shape: torch.Size | tuple[int, ...], rule: str) -> float:
    """Per-matrix learning-rate factor for an orthogonalised update of a ``rows x cols`` matrix.

    "original" (Jordan's Muon): ``sqrt(max(1, rows / cols))``; "match_rms_adamw" (Liu et al.
    2025, Moonlight): ``0.2 * sqrt(max(rows, cols))``, which gives the update AdamW's typical RMS
    of 0.2 so AdamW learning rates carry over.
    """
    rows, cols = shape[0], math.prod(shape[1:])
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown lr rule {rule!r}; use 'original' or 'match_rms_adamw'")


class MatrixOptimizer(torch.optim.Optimizer):
    """Momentum, decoupled weight decay and ``p -= lr * direction`` for matrix parameters.

    ``default_lr`` is the 1x rate of the optimizer-traces default sweep (0.25x to 2x of it), set
    from a wider sweep (1/16x to 4x the earlier defaults) on the digits benchmark's validation
    split (split seed 0, training seed 0, 300 steps, both scopes), so that the sweep brackets
    every optimizer's best rate there; on other problems it is a starting point only.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    notes: ClassVar[tuple[str, ...]] = ()
    default_lr: ClassVar[float] = 0.01
    adjust_lr_rules: ClassVar[tuple[str, ...]] = ("original", "match_rms_adamw")

    def __init_subclass__(cls, **kwargs):
        # The citation and the paper-versus-code notes live once, as data the page shows; the
        # docstring gets the same text so help() tells it too.
        super().__init_subclass__(**kwargs)
        if "paper" in cls.__dict__ or "notes" in cls.__dict__:
            cls.__doc__ = "\n\n".join([(cls.__doc__ or "").strip(), f"Paper: {cls.paper}",
                                        "Where the paper and the public code disagree, and what is done here:",
                                        *(f"- {n}" for n in cls.notes)])

    def __init__(self, params, lr: float | None = None, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, eps: float = NS_EPS, adjust_lr: str = "original",
                 **extra):
        lr = self.default_lr if lr is None else lr
        if not lr >= 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        if adjust_lr not in self.adjust_lr_rules:
            raise ValueError(f"unknown lr rule {adjust_lr!r}; use one of {', '.join(map(repr, self.adjust_lr_rules))}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, eps=eps, adjust_lr=adjust_lr, **extra)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"{self.label or type(self).__name__} takes matrices and conv kernels; "
                                     f"got a parameter of shape {tuple(p.shape)} (route it to AdamW)")

    def momentum_update(self, g: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """``B <- mu B + (1 - mu) g``; returns ``(1 - mu) g + mu B`` (Nesterov) or ``B``.

        The EMA form of torch.optim.Muon (``lerp``), so the buffer the recorder reads is torch's.
        The sum form of Jordan's post (``B <- mu B + g``) is this one times ``1 / (1 - mu)``.
        """
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(g)
        mu = group["momentum"]
        buf.lerp_(g, 1 - mu)
        return g.lerp(buf, mu) if group["nesterov"] else buf

    def direction(self, g: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """The update for the matrix gradient ``g`` (fp32, 2-D), before the learning rate."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self.label} does not take sparse gradients")
                state = self.state[p]
                update = self.direction(as_matrix(p.grad).float(), state, group)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update.reshape(p.shape).to(p.dtype), alpha=-lr)
        return loss


class Muon(MatrixOptimizer):
    """Muon: Nesterov momentum, then Newton-Schulz orthogonalisation, then a shape-dependent lr factor."""

    name = "muon"
    label = "Muon"
    paper = ("K. Jordan et al., 'Muon: An optimizer for hidden layers in neural networks' (2024), "
             "kellerjordan.github.io/posts/muon; lr rule 'match_rms_adamw' from J. Liu et al., "
             "'Muon is Scalable for LLM Training' (arXiv:2502.16982, 2025).")
    notes = (
        "Momentum: the post writes the sum form B <- mu B + g with g + mu B (Nesterov); torch.optim.Muon "
        "and Jordan's repository use the EMA form B <- lerp(B, g, 1 - mu) with lerp(g, B, mu), smaller by "
        "the factor (1 - mu). Newton-Schulz divides by the Frobenius norm, so only the normalisation "
        "epsilon sees the difference. Torch's EMA form is used here, so the recorded momentum_norm is "
        "torch's.",
        "Precision: the reference code and torch.optim.Muon run Newton-Schulz in bf16; this one runs "
        "it in fp32 (it matches torch to 1e-6 when torch's is given fp32 too).",
        "Normalisation: the repository divides by ||G|| + 1e-7, torch by max(||G||, 1e-7); the two "
        "differ only for gradients near zero. Torch's is used here.",
        "Weight decay is decoupled and uses the unscaled lr (as torch does): p <- p (1 - lr wd).",
    )

    def direction(self, g, state, group):
        u = self.momentum_update(g, state, group)
        return newton_schulz(u, group["ns_steps"], eps=group["eps"]) * lr_scale(g.shape, group["adjust_lr"])


class NorMuon(MatrixOptimizer):
    """Muon, then an Adam-like second moment per output neuron (row) that evens out the rows."""

    name = "normuon"
    label = "NorMuon"
    paper = ("Z. Li, L. Liu, C. Liang, W. Chen & T. Zhao, 'NorMuon: Making Muon more efficient and "
             "scalable' (arXiv:2510.05491, 2025); reference code github.com/zichongli5/NorMuon.")
    notes = (
        "Formula: O = NS(momentum); v <- beta2 v + (1 - beta2) mean_columns(O^2), one entry per row; "
        "O_hat = O / (sqrt(v) + eps); the update is scaled to RMS 0.2 (the paper's effective lr "
        "0.2 lr sqrt(mn) / ||O_hat||_F).",
        "Learning-rate scale: the paper matches AdamW's RMS (0.2); the reference code instead rescales "
        "O_hat back to ||O||_F and applies Muon's sqrt(max(1, rows/cols)). adjust_lr='match_rms_adamw' "
        "(the default here) is the paper's rule, adjust_lr='original' the code's.",
        "Momentum: the paper's algorithm uses a plain EMA of the gradient; the reference code uses "
        "Nesterov momentum. Nesterov is the default here (as in Muon); nesterov=False gives the paper's.",
        "The second moment has no bias correction in either; its epsilon is 1e-10 as in the reference "
        "code (the RMS rescaling makes the update insensitive to v's overall scale).",
        "Some later ports reduce over the longer side of the matrix (per column for wide ones); this "
        "one always normalises per row (per output neuron), as the paper does.",
        "Newton-Schulz runs in fp32 here (bf16 in the reference code).",
    )
    default_lr = 0.0025

    def __init__(self, params, lr: float | None = None, *, adjust_lr: str = "match_rms_adamw",
                 beta2: float = 0.95, v_eps: float = 1e-10, **kwargs):
        if not 0 <= beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        super().__init__(params, lr, adjust_lr=adjust_lr, beta2=beta2, v_eps=v_eps, **kwargs)

    def direction(self, g, state, group):
        u = self.momentum_update(g, state, group)
        o = newton_schulz(u, group["ns_steps"], eps=group["eps"])
        v = state.get("neuron_second_moment")
        if v is None:
            v = state["neuron_second_moment"] = torch.zeros(o.shape[0], 1, dtype=o.dtype, device=o.device)
        beta2 = group["beta2"]
        v.mul_(beta2).add_(o.square().mean(dim=1, keepdim=True), alpha=1 - beta2)
        o_hat = o / (v.sqrt() + group["v_eps"])
        norm = o_hat.norm().clamp(min=torch.finfo(o.dtype).tiny)
        if group["adjust_lr"] == "match_rms_adamw":
            return o_hat * (0.2 * math.sqrt(o.numel()) / norm)
        return o_hat * (o.norm() / norm) * lr_scale(g.shape, "original")


def cosh_rms_normalise(X: torch.Tensor, gamma: float = 1.0, eps: float = NS_EPS) -> torch.Tensor:
    """AuON's normalisation: ``Y = X / ||X||_F``, then ``Y / sqrt(mean(cosh(gamma Y)^2))``.

    ``cosh >= 1`` makes the divisor at least 1, so the result has Frobenius norm, hence spectral
    norm, at most 1 (the paper's trust region). The divisor does not brake in practice: with
    ``sum y^2 = 1`` over ``mn`` entries, ``cosh^2 = 1 + sinh^2`` and ``(gamma y)^2 <= sinh^2(gamma y)
    <= y^2 sinh^2(gamma)`` for ``|y| <= 1`` give ``1 + gamma^2 / mn <= divisor^2 <= 1 + sinh^2(gamma) / mn``,
    i.e. ``divisor = 1 + O(1/mn)`` (at most 1 + 1.7e-4 for gamma = 1 on a 64 x 64 matrix) however
    large an entry is. The step is the Frobenius-normalised momentum, scaled.
    """
    Y = X / X.norm().clamp(min=eps)
    r = torch.cosh(gamma * Y).square().mean().sqrt()
    return Y / (r + 1e-8)


class AuON(MatrixOptimizer):
    """AuON: no orthogonalisation; the momentum is Frobenius-normalised and braked by a cosh RMS."""

    name = "auon"
    label = "AuON"
    paper = ("D. Maity, 'AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates' "
             "(arXiv:2509.24320, 2025); reference code github.com/ryyzn9/AuON.")
    notes = (
        "Formula (paper, v1): Y = M / ||M||_F; U = Y / sqrt(mean(cosh(Y)^2)); step lr sqrt(max(1, rows/cols)) U. "
        "||U||_F <= 1, so ||U||_2 <= 1 without any matrix product.",
        "The cosh divisor does not brake in practice: for a unit-Frobenius Y of m x n entries it lies between "
        "sqrt(1 + 1/mn) and sqrt(1 + sinh(1)^2/mn), i.e. 1 + O(1/mn) whatever the entries (see "
        "cosh_rms_normalise), so U is the normalised momentum and its spectral norm is ||Y||_2, often far "
        "below 1.",
        "The packaged reference optimizer (auon/optimizer.py) differs: it puts a factor gamma = 1.5 "
        "inside the cosh, divides the un-normalised momentum (not Y) by the cosh RMS, and drops the "
        "sqrt(max(1, rows/cols)) factor, so its step grows with the gradient's scale. The repository's "
        "training script and the paper normalise first; that is what is done here (gamma = 1 by default).",
        "Momentum: the reference code uses the EMA form with Nesterov, as torch.optim.Muon and this "
        "implementation do.",
        "adjust_lr='match_rms_adamw' applies Moonlight's factor unchanged; it gives RMS 0.2 only for "
        "orthogonal updates, not for AuON's unit-Frobenius ones.",
    )
    default_lr = 0.01

    def __init__(self, params, lr: float | None = None, *, gamma: float = 1.0, **kwargs):
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        super().__init__(params, lr, gamma=gamma, **kwargs)

    def before_normalising(self, u: torch.Tensor, group: dict) -> torch.Tensor:
        return u

    def direction(self, g, state, group):
        u = self.before_normalising(self.momentum_update(g, state, group), group)
        return cosh_rms_normalise(u, group["gamma"], group["eps"]) * lr_scale(g.shape, group["adjust_lr"])


class HybridAuON(AuON):
    """Hybrid-AuON: one Newton-Schulz step, then AuON's cosh RMS normalisation."""

    name = "hybrid_auon"
    label = "Hybrid-AuON"
    notes = (
        "Formula (paper, v1): X = one quintic Newton-Schulz step on the momentum; then AuON's "
        "Y = X / ||X||_F, U = Y / sqrt(mean(cosh(Y)^2)), step lr sqrt(max(1, rows/cols)) U.",
        "Steps: the paper's first version applies a single Newton-Schulz step; the packaged reference "
        "HybridAuON defaults to 5 (and a later paper version speaks of 'iterations'). ns_steps=1 is "
        "the default here; ns_steps=5 gives the code's.",
        "As for AuON, the reference code divides the un-normalised matrix by the cosh RMS with "
        "gamma = 1.5 inside the cosh; here the matrix is normalised first and gamma = 1.",
        "Newton-Schulz runs in fp32 with Jordan's coefficients (the reference code: the same "
        "coefficients, in the parameter's dtype).",
    )
    default_lr = 0.01

    def __init__(self, params, lr: float | None = None, *, ns_steps: int = 1, **kwargs):
        super().__init__(params, lr, ns_steps=ns_steps, **kwargs)

    def before_normalising(self, u, group):
        return newton_schulz(u, group["ns_steps"], eps=group["eps"])


# Coefficients the ROOT reference code ships, keyed by (shorter side, longer side): fitted for the four
# matrix shapes of its 1B-parameter example model; every other shape falls back to Jordan's.
ROOT_COEFFICIENTS: dict[tuple[int, int], tuple[float, float, float]] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of all entries of ``x`` with linear interpolation (torch.quantile's
    definition), by ``kthvalue`` so that it has no size limit."""
    flat = x.reshape(-1)
    pos = q * (flat.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    low = flat.kthvalue(lo + 1).values
    if hi == lo:
        return low
    return torch.lerp(low, flat.kthvalue(hi + 1).values, pos - lo)


def clip_outliers(M: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ROOT's split ``M = B + O`` with ``O`` the soft-thresholded outliers at ``tau`` = the ``q``
    quantile of ``|M|``; returns ``(B, tau)``. ``B`` is ``M`` clipped to ``[-tau, tau]``, so only the
    entries above the quantile change: at most ``(1 - q) N + q`` of the ``N``."""
    tau = quantile(M.abs(), q)
    return M.clamp(-tau, tau), tau


class ROOT(MatrixOptimizer):
    """ROOT: clip the momentum's largest entries, orthogonalise what is left with shape-fitted coefficients."""

    name = "root"
    label = "ROOT"
    paper = ("W. He, K. Han, H. Zhou, H. Chen, Z. Liu, X. Chen & Y. Wang, 'ROOT: Robust Orthogonalized "
             "Optimizer for Neural Network Training' (arXiv:2511.20626, 2025); reference code "
             "github.com/huawei-noah/noah-research/tree/master/ROOT.")
    notes = (
        "Formula: M = mu M + (1 - mu) g (Nesterov: (1 - mu) g + mu M), torch.optim.Muon's EMA form; "
        "the clipping and Newton-Schulz are scale-invariant, so the form does not change the step; tau = q-quantile of |M| (q = 0.9); "
        "B = M - soft_threshold(M, tau) = clip(M, -tau, tau); update = NS(B) with shape-specific coefficients.",
        "Threshold: the paper writes the soft threshold epsilon as a fixed hyper-parameter; the reference "
        "code sets it each step to the 0.9 quantile of |M| (so about 10 % of the entries are clipped). "
        "The code's quantile is used here (clip_quantile).",
        "Shape-adaptive Newton-Schulz: the reference code ships fitted coefficients only for four "
        "2048-wide shapes of its example model and uses Jordan's (3.4445, -4.7750, 2.0315) for any other "
        "shape; the same table and fallback are used here, so this project's small matrices get Jordan's.",
        "Learning-rate scale: the paper's update is lr * NS(B); the reference code multiplies by "
        "Moonlight's 0.2 sqrt(max(rows, cols)). The code's rule is the default here (adjust_lr="
        "'match_rms_adamw'); adjust_lr='original' gives Muon's sqrt(max(1, rows/cols)).",
        "Newton-Schulz runs in fp32 (as in the reference code's example).",
    )
    default_lr = 0.005

    def __init__(self, params, lr: float | None = None, *, adjust_lr: str = "match_rms_adamw",
                 clip_quantile: float = 0.9, **kwargs):
        if not 0 < clip_quantile <= 1:
            raise ValueError(f"clip_quantile must be in (0, 1], got {clip_quantile}")
        super().__init__(params, lr, adjust_lr=adjust_lr, clip_quantile=clip_quantile, **kwargs)

    def direction(self, g, state, group):
        u = self.momentum_update(g, state, group)
        b, _ = clip_outliers(u, group["clip_quantile"])
        key = (min(b.shape), max(b.shape))
        coefficients = ROOT_COEFFICIENTS.get(key, NS_COEFFICIENTS)
        return newton_schulz(b, group["ns_steps"], coefficients, group["eps"]) * lr_scale(g.shape, group["adjust_lr"])


def _to_norm(norms: torch.Tensor, target: float) -> torch.Tensor:
    # Zero rows/columns keep a zero factor: a clamped divisor would give 0 * inf = nan.
    return torch.where(norms > 0, target / norms.clamp(min=torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))


def sinkhorn_normalise(X: torch.Tensor, iters: int = 5, tol: float = 1e-4) -> torch.Tensor:
    """SinkGD's SR-Sinkhorn: ``iters`` times, rows to norm ``sqrt(cols)``, then columns to ``sqrt(rows)``.

    It ends on the column step, so every non-zero column leaves with norm exactly ``sqrt(rows)`` (and
    the whole matrix with RMS 1 when none is zero). Rows or columns with norm below ``tol * ||X||_F``
    are set to zero first: after a rotation, the directions a low-rank momentum does not reach are
    zero in exact arithmetic but fp32 round-off (about 1e-6 relative) there, and normalising that
    noise would make it a full-size step. Newton-Schulz likewise leaves such weak directions near 0.
    """
    rows, cols = X.shape
    X = X / X.norm().clamp(min=torch.finfo(X.dtype).tiny)
    X = X * (X.norm(dim=1, keepdim=True) > tol) * (X.norm(dim=0, keepdim=True) > tol)
    for _ in range(iters):
        X = X * _to_norm(X.norm(dim=1, keepdim=True), math.sqrt(cols))
        X = X * _to_norm(X.norm(dim=0, keepdim=True), math.sqrt(rows))
    return X


def qr_rotation(A: torch.Tensor) -> torch.Tensor:
    """The orthogonal factor of ``A = Q R``, with signs fixed so that ``diag(R) >= 0``."""
    Q, R = torch.linalg.qr(A)
    signs = torch.sign(torch.diagonal(R))
    return Q * torch.where(signs == 0, torch.ones_like(signs), signs)


def row_normalise(X: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The base step ``f(X) = sqrt(cols) X / ||x_i||`` of microsoft/dion's ARO (``base_opt="row_norm"``):
    every row to norm ``sqrt(cols)``, so RMS 1; row norms are clamped below at ``eps`` as there."""
    return X * (math.sqrt(X.shape[1]) / X.norm(dim=1, keepdim=True).clamp(min=eps))


# ARO's two conventions: the paper's equations as read here, and the public code in microsoft/dion
# (dion/aro.py). Each sets the rotated side, the base step and the learning-rate factor.
ARO_CONVENTIONS = {
    "paper": {"rotate": "short", "base": "sinkhorn", "adjust_lr": "match_rms_adamw"},
    "dion": {"rotate": "rows", "base": "row_norm", "adjust_lr": "rms_norm"},
}


class ARO(MatrixOptimizer):
    """ARO: a base step (SinkGD's row/column normalisation, or a row normalisation) in a rotated basis,
    the rotation updated by a QR each step."""

    name = "aro"
    label = "ARO-Sinkhorn"
    paper = ("W. Gong, J. Zazo, Q. Luo, P. Wang, J. Hensman & C. Ma, 'ARO: A New Lens On Matrix "
             "Optimization For Large Models' (arXiv:2602.09006, 2026); base step f = SinkGD from "
             "M. Scetbon, C. Ma, W. Gong & E. Meeds, 'Gradient Multi-Normalization for Stateless and "
             "Scalable LLM Training' (arXiv:2502.06742, 2025); public code: github.com/microsoft/dion, "
             "dion/aro.py.")
    notes = (
        "Formula: M = momentum; R_t = QR(M f(R_{t-1}^T M)^T) (orthogonal factor, R_0 = I); "
        "update = R_t f(R_t^T M), f = SinkGD's alternating row/column normalisation (5 passes); "
        "times 0.2 with adjust_lr='match_rms_adamw' (f's output has RMS 1, so the update has AdamW's 0.2).",
        "Public code: microsoft/dion's dion/aro.py. It rotates the row side (R in SO(rows), whatever the "
        "shape), uses f = row normalisation (base_opt='row_norm', each row to norm sqrt(cols)) by default, "
        "keeps an EMA momentum without Nesterov, and multiplies the RMS-1 step by 0.2 sqrt(max(rows, cols)) "
        "(adjust_lr='rms_norm', Moonlight's factor for orthogonal updates), so its update RMS is "
        "0.2 sqrt(max(rows, cols)) per unit rate. convention='dion' (registered as 'aro_dion') follows it.",
        "How this default (convention='paper') differs from dion's: the SinkGD base step instead of the row "
        "normalisation; the rotation on the shorter side (tall matrices are transposed): that is the residual "
        "side for MLP weights, keeps R small, and on the long side the cross-Gram matrix M f(.)^T is "
        "rank-deficient, so rows of R^T M outside the momentum's span are round-off that a row normalisation "
        "blows up to full size (dion's code does so for tall matrices); a total update RMS of 0.2 rather than "
        "0.2 sqrt(max(rows, cols)), so its rates are sqrt(max(rows, cols)) times dion's (16x on the digits "
        "MLP's 256-wide matrices).",
        "The paper computes the QR by shifted Cholesky QR for speed (falling back to Householder QR); this "
        "and dion use Householder QR in fp32 (torch.linalg.qr). Here the signs are fixed so diag(R) >= 0; "
        "both base steps commute with flipping the signs of rows, so the update does not depend on them.",
        "Rows of R^T M that are zero up to round-off (a low-rank momentum, e.g. a batch smaller than "
        "the layer) are kept at zero by the default base step instead of being normalised up to full "
        "size (see sinkhorn_normalise); convention='dion' keeps dion's clamp of the row norms at 1e-8.",
        "Momentum: the paper's (and dion's) EMA without Nesterov (nesterov=False by default); its scale "
        "does not matter since f and the QR are scale-invariant. Only the base steps above are "
        "implemented (not ARO-Adam, sign, or the cross-layer rotation sharing).",
        "Learning-rate scale: the 0.2 RMS matching follows the paper's controlled benchmarking "
        "protocol as described in secondary sources; adjust_lr='original' gives the raw RMS-1 step and "
        "adjust_lr='rms_norm' dion's factor.",
    )
    default_lr = 0.0025
    adjust_lr_rules = ("original", "match_rms_adamw", "rms_norm")
    default_convention: ClassVar[str] = "paper"

    def __init__(self, params, lr: float | None = None, *, convention: str | None = None, nesterov: bool = False,
                 adjust_lr: str | None = None, rotate: str | None = None, base: str | None = None,
                 sinkhorn_iters: int = 5, **kwargs):
        convention = convention or self.default_convention
        if convention not in ARO_CONVENTIONS:
            raise ValueError(f"unknown ARO convention {convention!r}; use one of {', '.join(ARO_CONVENTIONS)}")
        chosen = {**ARO_CONVENTIONS[convention],
                  **{k: v for k, v in (("rotate", rotate), ("base", base), ("adjust_lr", adjust_lr)) if v is not None}}
        if chosen["rotate"] not in ("short", "rows"):
            raise ValueError(f"rotate must be 'short' or 'rows', got {chosen['rotate']!r}")
        if chosen["base"] not in ("sinkhorn", "row_norm"):
            raise ValueError(f"base must be 'sinkhorn' or 'row_norm', got {chosen['base']!r}")
        if sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
        super().__init__(params, lr, nesterov=nesterov, sinkhorn_iters=sinkhorn_iters, convention=convention,
                         **chosen, **kwargs)

    def _base_step(self, X: torch.Tensor, group: dict) -> torch.Tensor:
        if group["base"] == "row_norm":
            return row_normalise(X)
        return sinkhorn_normalise(X, group["sinkhorn_iters"])

    def direction(self, g, state, group):
        u = self.momentum_update(g, state, group)
        flip = group["rotate"] == "short" and u.shape[0] > u.shape[1]
        X = u.T if flip else u
        R = state.get("rotation")
        if R is None:
            R = torch.eye(X.shape[0], dtype=X.dtype, device=X.device)
        R = qr_rotation(X @ self._base_step(R.T @ X, group).T)
        state["rotation"] = R
        out = R @ self._base_step(R.T @ X, group)
        if group["adjust_lr"] == "match_rms_adamw":
            out = out * 0.2
        elif group["adjust_lr"] == "rms_norm":
            out = out * lr_scale(g.shape, "match_rms_adamw")
        return out.T if flip else out


class ARODion(ARO):
    """ARO as microsoft/dion's dion/aro.py runs it: row-side rotation, row normalisation, dion's rms factor."""

    name = "aro_dion"
    label = "ARO (dion)"
    default_convention = "dion"
    default_lr = 0.00025


MATRIX_OPTIMIZERS: dict[str, type[MatrixOptimizer]] = {
    cls.name: cls for cls in (Muon, NorMuon, AuON, HybridAuON, ROOT, ARO, ARODion)
}

# Torch's element-wise optimizers, the baselines; SGD runs with Nesterov momentum 0.9.
ELEMENTWISE = {
    "adamw": ("AdamW", 1e-3, "I. Loshchilov & F. Hutter, 'Decoupled Weight Decay Regularization' (ICLR 2019); torch.optim.AdamW."),
    "sgd": ("SGD-Nesterov", 0.05, "Y. Nesterov (1983), as in I. Sutskever et al. (ICML 2013); torch.optim.SGD(nesterov=True, momentum=0.9)."),
}


def optimizer_names() -> list[str]:
    return list(ELEMENTWISE) + list(MATRIX_OPTIMIZERS)


def label_of(name: str) -> str:
    if name in ELEMENTWISE:
        return ELEMENTWISE[name][0]
    return _matrix_class(name).label


def default_lr(name: str) -> float:
    if name in ELEMENTWISE:
        return ELEMENTWISE[name][1]
    return _matrix_class(name).default_lr


def _matrix_class(name: str) -> type[MatrixOptimizer]:
    try:
        return MATRIX_OPTIMIZERS[name]
    except KeyError:
        raise OrthoscopeError(f"unknown optimizer {name!r}; choose from {', '.join(optimizer_names())}.") from None


# --- routing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """Where one parameter goes: ``optimizer`` is the matrix optimizer's name or "adamw"/"sgd"."""

    name: str
    shape: tuple[int, ...]
    optimizer: str
    reason: str


# "hidden_only" first: it is the default, following the Muon authors' guidance that Muon is for
# hidden layers, with the input layer (fed raw features) and the output layer on AdamW.
SCOPES = ("hidden_only", "all_but_head")
SCOPE_LABELS = {"hidden_only": "hidden layers only", "all_but_head": "all but head and embeddings"}


def route(model: nn.Module, matrix_optimizer: str, *, scope: str = "hidden_only",
          head: Iterable[str] = (), input_layers: Iterable[str] = ()) -> list[Route]:
    """Decide, per parameter of ``model``, whether ``matrix_optimizer`` or AdamW updates it.

    The matrix optimizer takes weights of Linear and Conv layers (and any other >= 2-D
    parameter) except: embeddings (rows are looked up, not multiplied); the modules named in
    ``head`` (the output layer; its rows are per-class read-outs); and, with the default
    ``scope="hidden_only"``, the modules in ``input_layers`` (the first layer fed raw inputs;
    ``scope="all_but_head"`` gives them to the matrix optimizer too). Everything < 2-D (biases,
    norm gains) goes to AdamW. With an element-wise optimizer ("adamw", "sgd") every parameter
    goes to it.
    """
    if scope not in SCOPES:
        raise OrthoscopeError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}.")
    head, input_layers = set(head), set(input_layers)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    routes, seen = [], set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        module = name.rsplit(".", 1)[0] if "." in name else ""
        shape = tuple(p.shape)
        if matrix_optimizer in ELEMENTWISE:
            routes.append(Route(name, shape, matrix_optimizer, "element-wise optimizer takes every parameter"))
        elif p.ndim < 2:
            routes.append(Route(name, shape, "adamw", "bias or norm gain (not a matrix)"))
        elif id(p) in embeddings:
            routes.append(Route(name, shape, "adamw", "embedding (rows are looked up, not multiplied)"))
        elif module in head:
            routes.append(Route(name, shape, "adamw", "output head"))
        elif scope == "hidden_only" and module in input_layers:
            routes.append(Route(name, shape, "adamw", "input layer (scope: hidden only)"))
        else:
            kind = "conv kernel, flattened" if p.ndim > 2 else "hidden matrix"
            routes.append(Route(name, shape, matrix_optimizer, kind))
    return routes


class RoutedOptimizer(torch.optim.Optimizer):
    """One optimizer over a model: a matrix optimizer for some parameters, AdamW for the rest.

    ``param_groups`` are the inner optimizers' own group dicts, so learning-rate schedulers and
    the trace recorder's step hooks see one optimizer.
    """

    def __init__(self, inner: list[torch.optim.Optimizer]):
        params = [p for opt in inner for g in opt.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.inner = inner
        self.param_groups = [g for opt in inner for g in opt.param_groups]

    def state_of(self, p: torch.Tensor) -> dict:
        for opt in self.inner:
            if p in opt.state:
                return opt.state[p]
        return {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.inner:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        # The state lives in the inner optimizers; saving the outer one alone would lose the momentum.
        return {"inner": [opt.state_dict() for opt in self.inner]}

    def load_state_dict(self, state_dict: dict) -> None:
        for opt, inner in zip(self.inner, state_dict["inner"], strict=True):
            opt.load_state_dict(inner)


def state_of(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    """The optimizer state of ``p``, looking inside a :class:`RoutedOptimizer`."""
    if isinstance(optimizer, RoutedOptimizer):
        return optimizer.state_of(p)
    return optimizer.state.get(p, {})


def build(name: str, model: nn.Module, *, lr: float | None = None, adamw_lr: float = 1e-3,
          weight_decay: float = 0.0, scope: str = "hidden_only", head: Iterable[str] = (),
          input_layers: Iterable[str] = ()) -> tuple[torch.optim.Optimizer, list[Route]]:
    """The optimizer ``name`` over ``model`` with its routing table."""
    routes = route(model, name, scope=scope, head=head, input_layers=input_layers)
    params = dict(model.named_parameters())
    lr = default_lr(name) if lr is None else lr
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay), routes
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay), routes
    matrix = [params[r.name] for r in routes if r.optimizer == name]
    rest = [params[r.name] for r in routes if r.optimizer != name]
    if not matrix:
        raise OrthoscopeError(f"{label_of(name)} has no matrix to take in this model with scope {scope!r}.")
    inner: list[torch.optim.Optimizer] = [_matrix_class(name)(matrix, lr=lr, weight_decay=weight_decay)]
    if rest:
        inner.append(torch.optim.AdamW(rest, lr=adamw_lr, weight_decay=weight_decay))
    return RoutedOptimizer(inner), routes
