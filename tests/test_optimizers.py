"""The fp32 matrix optimizers: torch parity for Muon, each method's formula against a slow float64
re-implementation or the property its paper states, convergence on a convex problem, and routing."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import optimizers as O
from diagnostics.optimizers import (ARO, MATRIX_OPTIMIZERS, NS_BAND, NS_BAND_INPUT_MIN, NS_COEFFICIENTS, ROOT,
                                    ARODion, AuON, HybridAuON, Muon, NorMuon, build, clip_outliers,
                                    cosh_rms_normalise, newton_schulz, route, row_normalise, sinkhorn_normalise)
from models.errors import OrthoscopeError

SHAPES = [(24, 40), (40, 24)]  # wide and tall


def gaussian(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(steps)]


def run_steps(opt_cls, shape, gs, **kw):
    """Apply ``opt_cls`` to a fresh parameter over the gradients ``gs``; returns (param, optimizer)."""
    p = nn.Parameter(gaussian(*shape, seed=99))
    opt = opt_cls([p], **kw)
    for g in gs:
        p.grad = g.clone()
        opt.step()
    return p, opt


def one_update(opt_cls, g, **kw):
    """The update ``-delta / lr`` of one step from a zero parameter with gradient ``g``."""
    p = nn.Parameter(torch.zeros_like(g))
    opt = opt_cls([p], lr=1.0, **kw)
    p.grad = g.clone()
    opt.step()
    return -p.detach().clone(), opt, p


# --- numpy float64 references -------------------------------------------------------------------

def np_ns(G, steps=5, coefficients=NS_COEFFICIENTS):
    a, b, c = coefficients
    X = np.array(G, dtype=np.float64)
    tall = X.shape[0] > X.shape[1]
    X = X.T if tall else X
    X = X / max(np.linalg.norm(X), 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def np_momentum(gs, mu=0.95, nesterov=True):
    """torch.optim.Muon's EMA momentum: B <- mu B + (1 - mu) g; Nesterov (1 - mu) g + mu B."""
    buf, out = np.zeros_like(gs[0], dtype=np.float64), []
    for g in gs:
        buf = mu * buf + (1 - mu) * g
        out.append((1 - mu) * g + mu * buf if nesterov else buf.copy())
    return out


# --- Muon against torch.optim.Muon --------------------------------------------------------------

@pytest.fixture
def fp32_torch_muon(monkeypatch):
    """torch.optim.Muon with its Newton-Schulz in fp32 instead of bf16 (otherwise identical)."""
    import torch.optim._muon as tm

    original = inspect.getsource(tm._zeropower_via_newtonschulz)
    patched = original.replace("grad.bfloat16()", "grad.float()")
    assert patched != original, "torch's Newton-Schulz no longer casts with grad.bfloat16(); update the patch"
    namespace: dict = {}
    exec(patched, tm.__dict__, namespace)
    monkeypatch.setattr(tm, "_zeropower_via_newtonschulz", namespace["_zeropower_via_newtonschulz"])
    return torch.optim.Muon


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", ["original", "match_rms_adamw"])
def test_muon_matches_torch_muon(fp32_torch_muon, shape, rule):
    gs = grads(shape, 10, seed=1)
    ours, _ = run_steps(Muon, shape, gs, lr=0.02, weight_decay=0.1, adjust_lr=rule)
    p = nn.Parameter(gaussian(*shape, seed=99))
    theirs = fp32_torch_muon([p], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn=rule)
    for g in gs:
        p.grad = g.clone()
        theirs.step()
    assert not torch.equal(p, gaussian(*shape, seed=99))
    torch.testing.assert_close(ours.detach(), p.detach(), atol=1e-6, rtol=0)
    # The same momentum convention (EMA), so the buffer the recorder reads is torch's.
    _, ours_opt = run_steps(Muon, shape, gs, lr=0.02, weight_decay=0.1, adjust_lr=rule)
    (state,) = ours_opt.state.values()
    torch.testing.assert_close(state["momentum_buffer"], next(iter(theirs.state.values()))["momentum_buffer"])


def test_momentum_buffer_is_the_ema_of_the_gradients():
    gs = grads((6, 9), 5, seed=2)
    _, opt = run_steps(Muon, (6, 9), gs)
    (state,) = opt.state.values()
    want = sum(0.05 * 0.95 ** (len(gs) - 1 - i) * g.double() for i, g in enumerate(gs))
    torch.testing.assert_close(state["momentum_buffer"].double(), want, atol=1e-6, rtol=0)


def quintic(x, steps=5):
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x ** 3 + c * x ** 5
    return x


def test_newton_schulz_band_of_the_scalar_map():
    # The stated facts: inputs in [NS_BAND_INPUT_MIN, 1] land in the band; 1e-3 lands near 0.47.
    x = np.logspace(np.log10(NS_BAND_INPUT_MIN), 0, 200_001)
    y = quintic(x)
    assert NS_BAND[0] <= y.min() < 0.69 and 1.19 < y.max() <= NS_BAND[1]
    assert quintic(1e-3) == pytest.approx(0.47, abs=0.01)
    assert quintic(1e-4) == pytest.approx(0.05, abs=0.005)


def test_newton_schulz_singular_values_lie_in_the_band():
    # The quintic's coefficients maximise its slope at 0 rather than converging: after 5 steps the
    # singular values oscillate around 1 instead of equalling it, hence a band.
    for seed, shape in enumerate([(32, 64), (64, 32), (16, 128), (100, 300), (128, 16)]):
        G = gaussian(*shape, seed=seed) * 10 ** (seed - 2)
        assert torch.linalg.svdvals(G / G.norm()).min() > NS_BAND_INPUT_MIN  # the band's stated input range
        sv = torch.linalg.svdvals(newton_schulz(G))
        assert NS_BAND[0] <= sv.min() and sv.max() <= NS_BAND[1], (shape, sv.min(), sv.max())
        assert newton_schulz(G).dtype == torch.float32
    # Below the range small directions stay small: a singular value of 1e-3 (after normalising) comes out near 0.47.
    U = torch.linalg.qr(gaussian(40, 2, seed=7, dtype=torch.float64))[0]
    V = torch.linalg.qr(gaussian(60, 2, seed=8, dtype=torch.float64))[0]
    G = (U @ torch.diag(torch.tensor([1.0, 1e-3], dtype=torch.float64)) @ V.T).float()
    sv = torch.linalg.svdvals(newton_schulz(G))
    assert sv[1].item() == pytest.approx(quintic(1e-3 / math.hypot(1, 1e-3)), abs=2e-3)


def test_newton_schulz_agrees_with_float64_reference():
    G = gaussian(20, 50, seed=3)
    np.testing.assert_allclose(newton_schulz(G).numpy(), np_ns(G.numpy()), atol=2e-5)
    with pytest.raises(ValueError):
        newton_schulz(torch.zeros(2, 3, 4))


# --- convergence ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", O.optimizer_names())
def test_every_optimizer_lowers_a_least_squares_loss(name):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 32, generator=g)
    W = torch.randn(16, 32, generator=g) / math.sqrt(32)
    Y = X @ W.T
    torch.manual_seed(0)
    model = nn.Linear(32, 16)
    opt, routes = build(name, model)
    assert any(r.optimizer == name for r in routes)

    def loss():
        return ((model(X) - Y) ** 2).mean()

    start = loss().item()
    for _ in range(300):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    # Default rates (the 1x points of the digits sweep). On this 16 x 32 matrix the slowest are ARO as
    # dion runs it (at about 0.42 of the start: its factor 0.2 sqrt(max(m, n)) is 16 on the digits
    # MLP's matrices, 5.7 here) and ARO (0.19); AdamW ends near 0.1, Muon and SGD near 0.
    assert loss().item() < 0.5 * start, (name, start, loss().item())


# --- NorMuon --------------------------------------------------------------------------------------

def test_normuon_first_step_has_equal_row_rms_and_adamw_rms():
    g = gaussian(32, 64, seed=4) * torch.linspace(0.1, 3.0, 32)[:, None]
    update, _, _ = one_update(NorMuon, g)
    row_rms = update.square().mean(dim=1).sqrt()
    # At step 1, v = (1 - beta2) mean_cols(O^2), so every row leaves with the same RMS: the overall 0.2.
    torch.testing.assert_close(row_rms, torch.full_like(row_rms, 0.2), atol=1e-5, rtol=0)
    muon_rows = one_update(Muon, g)[0].square().mean(dim=1).sqrt()
    assert muon_rows.max() / muon_rows.min() > 1.1  # Muon alone does not equalise the rows


def np_normuon(gs, beta2=0.95, eps=1e-10, rule="match_rms_adamw"):
    v, out = None, []
    for u in np_momentum(gs):
        o = np_ns(u)
        sq = (o ** 2).mean(axis=1, keepdims=True)
        v = (1 - beta2) * sq if v is None else beta2 * v + (1 - beta2) * sq
        o_hat = o / (np.sqrt(v) + eps)
        if rule == "match_rms_adamw":
            out.append(0.2 * math.sqrt(o.size) * o_hat / np.linalg.norm(o_hat))
        else:
            rows, cols = o.shape
            out.append(o_hat * np.linalg.norm(o) / np.linalg.norm(o_hat) * math.sqrt(max(1, rows / cols)))
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rule", ["match_rms_adamw", "original"])
def test_normuon_matches_float64_reference(shape, rule):
    gs = [g * torch.linspace(0.2, 2.0, shape[0])[:, None] for g in grads(shape, 6, seed=5)]
    p = nn.Parameter(torch.zeros(shape))
    opt = NorMuon([p], lr=1.0, adjust_lr=rule)
    expected = np_normuon([g.numpy() for g in gs], rule=rule)
    for g, want in zip(gs, expected):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        np.testing.assert_allclose((before - p.detach()).numpy(), want, atol=5e-5)
    assert opt.state[p]["neuron_second_moment"].shape == (shape[0], 1)


# --- AuON and Hybrid-AuON -------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_auon_output_has_frobenius_norm_one_over_the_cosh_rms(scale):
    torch.manual_seed(12)
    g = torch.distributions.StudentT(2.0).sample((40, 24)) * scale
    g[3, 5] = 50 * scale  # an outlier, which raises the cosh RMS
    U = cosh_rms_normalise(g)
    y = g.double().numpy() / np.linalg.norm(g.double().numpy())
    r = math.sqrt(np.mean(np.cosh(y) ** 2))
    assert r > 1.0
    np.testing.assert_allclose(U.norm().item(), 1 / r, rtol=1e-5)
    assert torch.linalg.matrix_norm(U, ord=2) <= 1.0  # the paper's spectral trust region
    np.testing.assert_allclose(U.double().numpy(), y / r, atol=1e-6)  # the momentum's own direction


@pytest.mark.parametrize("shape", [(64, 64), (8, 5), (1, 3)])
def test_auon_cosh_divisor_is_one_plus_order_one_over_mn(shape):
    # For a unit-Frobenius Y, 1 + 1/mn <= mean(cosh(Y)^2) <= 1 + sinh(1)^2/mn whatever the entries:
    # a spread matrix, and one with all its mass in a single entry (the extreme case).
    mn = shape[0] * shape[1]
    spike = torch.zeros(shape)
    spike[0, 0] = 1.0
    for Y in (gaussian(*shape, seed=3), spike):
        divisor = (Y / Y.norm()).norm() / cosh_rms_normalise(Y).norm()
        assert math.sqrt(1 + 1 / mn) - 1e-6 <= divisor <= math.sqrt(1 + math.sinh(1) ** 2 / mn) + 1e-6
    assert float((gaussian(64, 64, seed=3) / gaussian(64, 64, seed=3).norm()).norm()
                 / cosh_rms_normalise(gaussian(64, 64, seed=3)).norm()) - 1 < 2e-4  # no braking in practice


@pytest.mark.parametrize("shape", SHAPES)
def test_auon_and_hybrid_steps_match_float64_reference(shape):
    gs = grads(shape, 4, seed=6)
    factor = math.sqrt(max(1, shape[0] / shape[1]))
    for cls, prep in ((AuON, lambda u: u), (HybridAuON, lambda u: np_ns(u, steps=1))):
        p = nn.Parameter(torch.zeros(shape))
        opt = cls([p], lr=1.0)
        for g, u in zip(gs, np_momentum([g.numpy() for g in gs])):
            before = p.detach().clone()
            p.grad = g.clone()
            opt.step()
            y = prep(u)
            y = y / np.linalg.norm(y)
            want = y / math.sqrt(np.mean(np.cosh(y) ** 2)) * factor
            np.testing.assert_allclose((before - p.detach()).numpy(), want, atol=1e-6)
    assert HybridAuON([nn.Parameter(torch.zeros(2, 2))]).defaults["ns_steps"] == 1


# --- ROOT -----------------------------------------------------------------------------------------

def test_root_clipping_changes_at_most_the_stated_quantile():
    torch.manual_seed(13)
    M = torch.distributions.StudentT(1.5).sample((64, 48))
    for q in (0.9, 0.75, 0.99):
        B, tau = clip_outliers(M, q)
        np.testing.assert_allclose(tau.item(), np.quantile(M.abs().numpy(), q), rtol=1e-6)
        # Entries above the interpolated quantile: at most (1 - q) N + q, under one entry over (1 - q) N.
        changed = int((B != M).sum())
        assert 0 < changed <= (1 - q) * M.numel() + q
        assert B.abs().max() <= tau
        keep = M.abs() <= tau
        assert torch.equal(B[keep], M[keep])
        assert torch.equal(torch.sign(B[~keep]), torch.sign(M[~keep]))
        # B is M minus its soft-thresholded outliers
        soft = torch.sign(M) * (M.abs() - tau).clamp(min=0)
        torch.testing.assert_close(B, M - soft)


@pytest.mark.parametrize("shape", SHAPES)
def test_root_step_orthogonalises_the_clipped_momentum(shape, monkeypatch):
    torch.manual_seed(14)
    g = torch.distributions.StudentT(1.5).sample(shape)
    update, _, _ = one_update(ROOT, g)
    # The first momentum is (1 - mu)(1 + mu) g; the clipping and Newton-Schulz ignore that scale.
    tau = np.quantile(np.abs(g.numpy()), 0.9)
    B = np.clip(g.numpy(), -tau, tau)
    scale = 0.2 * math.sqrt(max(shape))
    np.testing.assert_allclose(update.numpy(), np_ns(B) * scale, atol=2e-5)
    muon_like = np_ns(g.numpy()) * scale
    assert np.abs(update.numpy() - muon_like).max() > 1e-2  # clipping matters for heavy tails
    # A shape in the coefficient table gets its own coefficients.
    fitted = (3.0, -3.2, 1.2)
    monkeypatch.setitem(O.ROOT_COEFFICIENTS, (min(shape), max(shape)), fitted)
    update2, _, _ = one_update(ROOT, g)
    np.testing.assert_allclose(update2.numpy(), np_ns(B, coefficients=fitted) * scale, atol=2e-5)


# --- ARO ------------------------------------------------------------------------------------------

def test_sinkhorn_normalisation_columns_exact_rows_converged():
    X = gaussian(64, 256, seed=7) * torch.rand(64, 1, generator=torch.Generator().manual_seed(8)) * 10
    Y = sinkhorn_normalise(X)
    torch.testing.assert_close(Y.norm(dim=0), torch.full((256,), 8.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(Y.norm(dim=1), torch.full((64,), 16.0), atol=0, rtol=0.02)
    zero_row = X.clone()
    zero_row[5] = 0
    assert torch.isfinite(sinkhorn_normalise(zero_row)).all() and not sinkhorn_normalise(zero_row)[5].any()


def np_sinkhorn(X, iters=5):
    m, n = X.shape
    X = X / np.linalg.norm(X)
    for _ in range(iters):
        for i in range(m):
            X[i] = X[i] * math.sqrt(n) / np.linalg.norm(X[i])
        for j in range(n):
            X[:, j] = X[:, j] * math.sqrt(m) / np.linalg.norm(X[:, j])
    return X


def np_aro(gs):
    R, out = None, []
    for M in np_momentum(gs, nesterov=False):
        tall = M.shape[0] > M.shape[1]
        X = M.T if tall else M
        R = np.eye(X.shape[0]) if R is None else R
        Q, T = np.linalg.qr(X @ np_sinkhorn(R.T @ X).T)
        R = Q * np.sign(np.diag(T))
        U = 0.2 * R @ np_sinkhorn(R.T @ X)
        out.append(U.T if tall else U)
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_aro_matches_float64_reference_and_keeps_rotation_orthogonal(shape):
    gs = grads(shape, 4, seed=9)
    p = nn.Parameter(torch.zeros(shape))
    opt = ARO([p], lr=1.0)
    for g, want in zip(gs, np_aro([g.numpy().astype(np.float64) for g in gs])):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        update = before - p.detach()
        np.testing.assert_allclose(update.numpy(), want, atol=2e-4)
        R = opt.state[p]["rotation"]
        side = min(shape)
        assert R.shape == (side, side)
        torch.testing.assert_close(R.T @ R, torch.eye(side), atol=2e-5, rtol=0)
        # Sinkhorn ends on the column step and R preserves it: every slice across the short side
        # has norm 0.2 sqrt(short side); the update's RMS is AdamW's 0.2.
        across = update.norm(dim=0) if shape[0] <= shape[1] else update.norm(dim=1)
        torch.testing.assert_close(across, torch.full_like(across, 0.2 * math.sqrt(side)), atol=1e-5, rtol=0)
    assert not torch.equal(opt.state[p]["rotation"], torch.eye(min(shape)))


def np_aro_dion(gs):
    """microsoft/dion's ARO (dion/aro.py, base_opt='row_norm', adjust_lr='rms_norm'): row-side rotation,
    f(X) = sqrt(n) X / ||x_i||, EMA momentum without Nesterov, step 0.2 sqrt(max(m, n)) R f(R^T M)."""
    def f(X):
        return math.sqrt(X.shape[1]) * X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-8)

    R, out = None, []
    for M in np_momentum(gs, nesterov=False):
        R = np.eye(M.shape[0]) if R is None else R
        Q, _ = np.linalg.qr(M @ f(R.T @ M).T)
        R = Q  # no sign fix: f commutes with flipping row signs, so the step does not depend on them
        out.append(0.2 * math.sqrt(max(M.shape)) * R @ f(R.T @ M))
    return out


@pytest.mark.parametrize("shape", [(24, 40), (24, 24)])
def test_aro_dion_convention_matches_float64_reference(shape):
    gs = grads(shape, 4, seed=15)
    p = nn.Parameter(torch.zeros(shape))
    opt = ARODion([p], lr=1.0)
    assert opt.defaults["rotate"] == "rows" and opt.defaults["base"] == "row_norm"
    assert opt.defaults["adjust_lr"] == "rms_norm" and not opt.defaults["nesterov"]
    for g, want in zip(gs, np_aro_dion([g.numpy().astype(np.float64) for g in gs])):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        update = before - p.detach()
        # fp32 QR of a square cross-Gram matrix (condition ~ n) loses a few digits: compare in norm.
        assert np.linalg.norm(update.numpy() - want) < 1e-3 * np.linalg.norm(want)
        # RMS 1 from the row normalisation, times dion's 0.2 sqrt(max(m, n)).
        assert update.square().mean().sqrt().item() == pytest.approx(0.2 * math.sqrt(max(shape)), rel=1e-4)
    assert opt.state[p]["rotation"].shape == (shape[0], shape[0])
    # The same convention from the plain class, by name.
    q = nn.Parameter(torch.zeros(shape))
    assert ARO([q], convention="dion").defaults["base"] == "row_norm"
    torch.testing.assert_close(row_normalise(gs[0]).norm(dim=1), torch.full((shape[0],), math.sqrt(shape[1])))


def test_aro_conventions_differ_on_tall_matrices_as_the_notes_say():
    # Tall (256 x 64, like the digits MLP's input layer): dion's row-side rotation normalises the 192 rows
    # of R^T M outside the momentum's column space, round-off before, up to full size; so three quarters
    # of its update's energy lies outside that space and a 1e-6 change of the gradient changes it wholly.
    # The default rotates the 64-wide side and is as stable as its input. Wide, both are stable.
    g = gaussian(256, 64, seed=16)
    nudged = g * (1 + 1e-6 * gaussian(256, 64, seed=17))
    U = torch.linalg.svd(g.double(), full_matrices=False)[0]

    def change(cls, a, b):
        return float((one_update(cls, a)[0] - one_update(cls, b)[0]).norm() / one_update(cls, a)[0].norm())

    dion = one_update(ARODion, g)[0].double()
    assert float((dion - U @ (U.T @ dion)).norm() / dion.norm()) == pytest.approx(math.sqrt(192 / 256), abs=0.01)
    assert change(ARODion, g, nudged) > 0.3
    assert change(ARO, g, nudged) < 1e-4
    assert change(ARODion, g.T.contiguous(), nudged.T.contiguous()) < 1e-4


def test_aro_low_rank_momentum_stays_in_its_column_space():
    # A rank-4 gradient on a 32 x 48 matrix: the rotated rows outside its span are round-off only,
    # and the update must not turn them into full-size steps.
    g = gaussian(32, 4, seed=10) @ gaussian(4, 48, seed=11)
    update, opt, p = one_update(ARO, g)
    U, _, _ = torch.linalg.svd(g.double(), full_matrices=False)
    outside = update.double() - U[:, :4] @ (U[:, :4].T @ update.double())
    assert outside.norm() < 1e-4 * update.norm()
    assert torch.isfinite(update).all()


# --- registry, routing, state ----------------------------------------------------------------------

def test_registry_metadata():
    assert O.optimizer_names()[:2] == ["adamw", "sgd"]
    assert set(MATRIX_OPTIMIZERS) == {"muon", "normuon", "auon", "hybrid_auon", "root", "aro", "aro_dion"}
    for name, cls in MATRIX_OPTIMIZERS.items():
        assert cls.name == name and cls.label and O.label_of(name) == cls.label
        assert "arXiv" in cls.paper or "kellerjordan" in cls.paper
        assert cls.notes and all(isinstance(n, str) and n.endswith(".") for n in cls.notes)
        assert O.default_lr(name) == cls.default_lr > 0


def mlp():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def test_route_mlp_scopes():
    model = mlp()
    table = {r.name: r for r in route(model, "normuon", scope="all_but_head", head=["4"], input_layers=["0"])}
    assert [n for n, r in table.items() if r.optimizer == "normuon"] == ["0.weight", "2.weight"]
    assert table["4.weight"].optimizer == "adamw" and table["4.weight"].reason == "output head"
    assert all(table[f"{i}.bias"].optimizer == "adamw" for i in (0, 2, 4))
    assert table["2.weight"].reason == "hidden matrix" and table["2.weight"].shape == (256, 256)
    # Hidden layers only is the default: the input layer (raw pixels) and the head stay on AdamW.
    assert O.SCOPES[0] == "hidden_only"
    hidden = {r.name: r for r in route(model, "normuon", head=["4"], input_layers=["0"])}
    assert [n for n, r in hidden.items() if r.optimizer == "normuon"] == ["2.weight"]
    assert hidden["0.weight"].optimizer == "adamw" and "input layer" in hidden["0.weight"].reason
    assert {r.name: r.optimizer for r in build("muon", model, head=["4"], input_layers=["0"])[1]}["0.weight"] == "adamw"
    assert {r.optimizer for r in route(model, "sgd", head=["4"])} == {"sgd"}
    with pytest.raises(OrthoscopeError, match="scope"):
        route(model, "muon", scope="everything")


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.conv = nn.Conv2d(6, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        x = self.embed(tokens)  # (batch, 16, 6)
        x = x.transpose(1, 2).reshape(-1, 6, 4, 4)
        x = self.conv(x).mean(dim=(2, 3))
        return self.head(self.norm(x))


@pytest.mark.parametrize("name", sorted(MATRIX_OPTIMIZERS))
def test_mixed_model_routing_and_conv_step(name):
    torch.manual_seed(0)
    model = Mixed()
    opt, routes = build(name, model, head=["head"])
    table = {r.name: r for r in routes}
    assert table["embed.weight"].optimizer == "adamw" and "embedding" in table["embed.weight"].reason
    assert table["norm.weight"].optimizer == "adamw" and "norm" in table["norm.weight"].reason
    assert table["norm.bias"].optimizer == "adamw"
    assert table["head.weight"].optimizer == "adamw"
    assert table["conv.weight"].optimizer == name and table["conv.weight"].reason == "conv kernel, flattened"
    tokens = torch.randint(0, 10, (8, 16), generator=torch.Generator().manual_seed(1))
    before = model.conv.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(tokens).square().mean().backward()
        opt.step()
    assert model.conv.weight.shape == (4, 6, 3, 3) and torch.isfinite(model.conv.weight).all()
    assert not torch.equal(model.conv.weight, before)
    state = O.state_of(opt, model.conv.weight)
    assert state["momentum_buffer"].shape == (4, 54)  # read by the trace recorder


def test_unknown_optimizer_names_raise_with_the_list():
    for call in (lambda: build("lion", mlp()), lambda: O.label_of("lion"), lambda: O.default_lr("lion")):
        with pytest.raises(OrthoscopeError) as err:
            call()
        assert "'lion'" in str(err.value)
        assert all(n in str(err.value) for n in O.optimizer_names())
    with pytest.raises(OrthoscopeError, match="no matrix"):
        build("muon", nn.Sequential(nn.Linear(3, 2)), head=["0"])


@pytest.mark.parametrize("cls", list(MATRIX_OPTIMIZERS.values()))
@pytest.mark.parametrize("bad", [dict(lr=-0.1), dict(momentum=1.0), dict(momentum=-0.1), dict(weight_decay=-1.0),
                                 dict(adjust_lr="spectral")])
def test_bad_hyper_parameters_raise(cls, bad):
    with pytest.raises(ValueError):
        cls([nn.Parameter(torch.zeros(3, 4))], **bad)


@pytest.mark.parametrize("cls, bad", [(NorMuon, dict(beta2=1.0)), (ROOT, dict(clip_quantile=0.0)),
                                      (AuON, dict(gamma=0.0)), (ARO, dict(sinkhorn_iters=0)),
                                      (ARO, dict(convention="code")), (ARO, dict(base="sign")),
                                      (ARO, dict(rotate="cols")), (Muon, dict(adjust_lr="rms_norm"))])
def test_bad_method_hyper_parameters_raise(cls, bad):
    with pytest.raises(ValueError):
        cls([nn.Parameter(torch.zeros(3, 4))], **bad)
    cls([nn.Parameter(torch.zeros(3, 4))])  # the defaults are valid


def test_vectors_are_refused():
    with pytest.raises(ValueError, match="AdamW"):
        ARO([nn.Parameter(torch.zeros(5))])


def test_routed_optimizer_state_dict_round_trips_the_inner_states():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    opt, _ = build("muon", model, head=["1"])
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    assert len(saved["inner"]) == 2 and saved["inner"][0]["state"]
    fresh, _ = build("muon", model, head=["1"])
    fresh.load_state_dict(saved)
    buf = fresh.state_of(model[0].weight)["momentum_buffer"]
    assert torch.equal(buf, opt.state_of(model[0].weight)["momentum_buffer"])
