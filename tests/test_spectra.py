"""Tests of diagnostics.spectra: planted truths, slow reference implementations, bad layers,
and parity with WeightWatcher 0.7.7 on the built-in models."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from diagnostics import spectra
from diagnostics.spectra import SpectraParams, SpectraResult
from models.matrices import Skipped, WeightMatrix


@pytest.fixture(autouse=True)
def _one_thread():
    """One BLAS/OpenMP thread per test: on a 2-core machine shared with other work, threads that
    spin-wait for a busy core make LAPACK calls stall for seconds. Restored afterwards."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# Planted truths


@pytest.mark.parametrize(
    "alpha, n, seed", [(1.5, 300, 1), (2.0, 1000, 2), (3.0, 3000, 3), (4.5, 500, 4), (6.0, 2000, 5)]
)
def test_pareto_samples_recover_alpha(alpha, n, seed):
    # Pareto law with density ~ x^-alpha above 1, by inverse transform.
    rng = np.random.default_rng(seed)
    x = (1 - rng.random(n)) ** (-1 / (alpha - 1))
    fit = spectra.fit_power_law(x)
    assert fit.ok and fit.method == "clauset"
    standard_error = (alpha - 1) / math.sqrt(fit.n_tail)
    assert abs(fit.alpha - alpha) < 3 * standard_error
    assert fit.n_tail > n / 3  # the whole sample is a power law, so the tail is most of it
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(fit.n_tail))
    assert fit.xmax == pytest.approx(x.max())
    assert fit.num_pl_spikes == np.count_nonzero(x >= fit.xmin)


def test_pareto_tail_above_a_bulk_finds_xmin():
    rng = np.random.default_rng(7)
    bulk = rng.uniform(0.05, 1.0, 2000)
    tail = (1 - rng.random(400)) ** (-1 / (2.5 - 1))  # Pareto above 1
    fit = spectra.fit_power_law(np.concatenate([bulk, tail]))
    assert 0.8 < fit.xmin < 1.6
    assert abs(fit.alpha - 2.5) < 3 * 1.5 / math.sqrt(fit.n_tail)


@pytest.mark.parametrize("shape", [(64, 32), (300, 300), (1000, 250)])
def test_gaussian_matrix_has_no_trusted_tail(shape):
    rows = []
    for seed in range(4):
        W = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        row, _ = spectra.analyse_matrix(W)
        rows.append(row)
        assert row["num_above_mp_edge"] == 0
        assert row["phase"] == "random-like"
        assert row["pl_trust"] is False and row["pl_verdict"].startswith("random-like")
        assert row["lambda_max"] < row["mp_edge"]
        # the bulk fit recovers the element scale 1 and the MP law describes the whole ESD
        assert row["mp_sigma"] == pytest.approx(1.0, rel=0.05)
        assert row["mp_bulk_ks"] <= spectra.mp_bulk_tolerance(row["num_evals"])
    if shape == (64, 32):
        # alpha alone does not give small random matrices away: the phase is needed.
        assert any(r["alpha"] < spectra.UNDER_TRAINED_ALPHA for r in rows)


def _planted_spikes(rng, n: int, m: int, k: int, strength: float) -> np.ndarray:
    """Gaussian noise plus k rank-one signals with singular values strength x (1..2) x the BBP
    threshold (N M)^(1/4), the level past which a spike leaves the MP bulk."""
    W = rng.standard_normal((n, m))
    U = np.linalg.qr(rng.standard_normal((n, k)))[0]
    V = np.linalg.qr(rng.standard_normal((m, k)))[0]
    return W + (U * (n * m) ** 0.25 * strength * np.linspace(1, 2, k)) @ V.T


def _symmetric_pareto(rng, shape, mu: float) -> np.ndarray:
    """Entries +-(1 + Pareto(mu)): tail P(|w| > x) ~ x^-mu, Martin & Mahoney's heavy-tailed ensemble."""
    return rng.choice([-1.0, 1.0], size=shape) * (rng.pareto(mu, size=shape) + 1.0)


@pytest.mark.parametrize("k", [20, 5])
def test_noise_plus_spikes_is_bulk_plus_spikes_not_trusted(k):
    # The case that used to come out as a trusted alpha ~ 2 (20 spikes) or ~ 3 (5 spikes).
    for seed in range(4):
        W = _planted_spikes(np.random.default_rng(seed), 1000, 400, k, 3.0)
        row, _ = spectra.analyse_matrix(W)
        assert row["phase"] == "bulk+spikes", (seed, row["pl_verdict"])
        assert row["pl_trust"] is False
        assert row["num_above_mp_edge"] == k  # every spike, and no bulk eigenvalue, past the edge
        assert row["mp_sigma"] == pytest.approx(1.0, rel=0.05)


def test_mp_bulk_fit_within_tolerance_on_planted_noise_and_spikes():
    # A smaller version of the sweep that set mp_bulk_tolerance: the bulk fit's KS distance stays
    # within the tolerance and counts exactly the planted spikes (strong ones) past the edge.
    rng = np.random.default_rng(11)
    for m, q in [(16, 1.0), (64, 4.0), (128, 2.5)]:
        n = int(q * m)
        for k in (0, max(1, m // 20)):
            ev, _ = spectra.eigenvalues(torch.from_numpy(_planted_spikes(rng, n, m, k, 3.0) if k else rng.standard_normal((n, m))))
            bulk = spectra.fit_mp_bulk(ev, n, m)
            assert bulk["mp_bulk_ks"] <= spectra.mp_bulk_tolerance(m), (m, q, k, bulk)
            assert bulk["num_above_mp_edge"] == k


def test_mp_bulk_density_integrates_to_one():
    n, m, sigma = 500, 100, 0.7
    lo, hi = (sigma * (math.sqrt(n) - math.sqrt(m))) ** 2, (sigma * (math.sqrt(n) + math.sqrt(m))) ** 2
    x = np.linspace(lo, hi, 200001)
    assert np.trapezoid(spectra.mp_bulk_density(x, sigma, n, m), x) == pytest.approx(1.0, abs=2e-3)


def test_heavy_tailed_pareto_matrix_is_trusted_with_alpha_near_theory():
    # Martin & Mahoney: entries with tail exponent mu < 2 give an ESD tail with alpha ~ 1 + mu / 2.
    mu = 1.5
    for seed in range(3):
        W = _symmetric_pareto(np.random.default_rng(seed), (1000, 400), mu)
        row, _ = spectra.analyse_matrix(W, SpectraParams(gof=True, n_boot=100, seed=seed))
        assert row["phase"] in ("heavy-tailed", "very-heavy-tailed"), row["pl_verdict"]
        assert row["pl_trust"] is True, row["pl_verdict"]
        assert row["alpha_ci_method"] == "bootstrap"
        assert row["alpha_ci_low"] <= row["alpha"] <= row["alpha_ci_high"]
        assert abs(row["alpha"] - (1 + mu / 2)) < 0.4
        assert row["tail_past_mp_edge"] >= spectra.TAIL_MAJORITY


def test_student_t_matrix_is_trusted():
    W = np.random.default_rng(0).standard_t(1.5, size=(1000, 400)).astype(np.float32)
    row, _ = spectra.analyse_matrix(W)
    assert row["pl_trust"] is True and row["phase"] in ("heavy-tailed", "very-heavy-tailed")
    assert row["pl_verdict"].endswith("(goodness of fit not tested)")
    assert row["alpha_ci_method"] == "asymptotic"
    assert row["num_above_mp_edge"] > 5 and row["alpha"] < 4


def test_too_few_eigenvalues_is_phase_too_small():
    handle = _FakeHandle([("small.weight", torch.randn(30, 6)), ("big.weight", torch.randn(40, 20))])
    result = spectra.run(handle, SpectraParams())
    assert [r["name"] for r in result.layers] == ["big.weight"]
    assert result.skipped[-1] == {"name": "small.weight", "shape": [30, 6],
                                  "reason": "too few eigenvalues: 6 < min_evals 8", "phase": "too-small"}
    assert result.tables()["skipped"]["phase"].fillna("").tolist() == ["", "too-small"]


def test_headlines_use_trusted_fits_only():
    rng = np.random.default_rng(5)
    mats = {"noise.weight": torch.from_numpy(rng.standard_normal((400, 200))),
            "spikes.weight": torch.from_numpy(_planted_spikes(rng, 400, 200, 10, 3.0)),
            "heavy.weight": torch.from_numpy(_symmetric_pareto(rng, (400, 200), 1.5))}
    result = spectra.run(_FakeHandle(list(mats.items())), SpectraParams())
    rows = {r["name"]: r for r in result.layers}
    assert [rows[n]["pl_trust"] for n in mats] == [False, False, True]
    s = result.summary
    assert s["num_pl_trusted"] == 1
    assert s["mean"]["alpha"] == pytest.approx(rows["heavy.weight"]["alpha"])
    assert s["alpha_mean_ci"] is None  # one trusted layer: no interval over layers
    assert s["mean_all"]["alpha"] == pytest.approx(np.mean([r["alpha"] for r in result.layers]))
    # metrics that do not come from the fit still average every row
    assert s["mean"]["log_norm"] == pytest.approx(np.mean([r["log_norm"] for r in result.layers]))
    assert s["phases"]["random-like"] == 1 and s["phases"]["bulk+spikes"] == 1
    assert "goodness of fit not tested" in s["trust_rule"]


# ---------------------------------------------------------------------------------------
# detX, worked by hand


def test_detx_hand_worked():
    # mean 1 already. Products of the top k: 2.5, 2.5*1.0 = 2.5, *0.5 = 1.25, *0.5 = 0.625 < 1.
    evals = np.array([0.5, 0.5, 0.5, 1.0, 2.5])
    assert spectra.detx_constraint(evals) == (4, 0.5)
    # detX works on evals rescaled to mean 1 and reports the boundary on the original scale.
    num, val = spectra.detx_constraint(3 * evals[::-1])
    assert (num, val) == (4, pytest.approx(1.5))
    # Top products 1.49, 1.937, 2.518 never fall below 1 before the last eigenvalue: WeightWatcher
    # then reports the second smallest eigenvalue (its loop stops at index 1).
    assert spectra.detx_constraint(np.array([0.01, 1.2, 1.3, 1.49])) == (4, 1.2)
    # A flat ESD has no tail.
    assert spectra.detx_constraint(np.ones(6))[0] == 0


def test_detx_columns_and_erg_gap():
    W = np.random.default_rng(3).standard_t(2.0, size=(200, 100)).astype(np.float32)
    row, _ = spectra.analyse_matrix(W, SpectraParams(detx=True))
    evals, _ = spectra.eigenvalues(torch.from_numpy(W))
    num, val = spectra.detx_constraint(evals)
    assert (row["detX_num"], row["detX_val"]) == (num, pytest.approx(val))
    assert row["ERG_gap"] == row["detX_num"] - row["num_pl_spikes"]


# ---------------------------------------------------------------------------------------
# Convolutions: the FFT spectrum against the dense circular-convolution operator


def _dense_circular_operator(K: torch.Tensor, n: int) -> torch.Tensor:
    """The (out n^d, in n^d) matrix of PyTorch's cross-correlation with circular padding."""
    out, inp = K.shape[:2]
    d = K.ndim - 2
    size = n**d
    basis = torch.eye(inp * size, dtype=torch.float64).reshape(inp * size, inp, *([n] * d))
    if d == 2:
        y = F.conv2d(F.pad(basis, (0, K.shape[3] - 1, 0, K.shape[2] - 1), mode="circular"), K)
    else:
        y = F.conv1d(F.pad(basis, (0, K.shape[2] - 1), mode="circular"), K)
    assert y.shape[2:] == (n,) * d
    return y.reshape(inp * size, out * size).T


@pytest.mark.parametrize(
    "shape, n", [((3, 2, 3, 3), 5), ((3, 2, 3, 3), 6), ((4, 4, 2, 3), 4), ((2, 5, 1, 1), 3), ((3, 2, 3), 7), ((4, 3, 2), 6)]
)
def test_conv_fft_spectrum_equals_dense_operator(shape, n):
    K = torch.from_numpy(np.random.default_rng(sum(shape) + n).standard_normal(shape))
    fft = spectra.conv_operator_singular_values(K, n)
    dense = np.sort(torch.linalg.svdvals(_dense_circular_operator(K, n)).numpy())
    assert fft.shape == (n ** (K.ndim - 2) * min(shape[:2]),)
    np.testing.assert_allclose(fft, dense[-fft.size :], rtol=1e-10, atol=1e-12)
    assert np.allclose(dense[: dense.size - fft.size], 0, atol=1e-10)  # a wide operator's null space


def test_conv_fft_orthogonality_columns():
    # A kernel that is an orthogonal matrix at one position is an orthogonal operator.
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))
    K = np.zeros((16, 16, 3, 3), dtype=np.float32)
    K[:, :, 1, 1] = Q
    row, esd = spectra.analyse_matrix(K, SpectraParams(conv2d_fft=True, fft_input_size=8))
    assert row["conv_orth_max_dev"] < 1e-6 and row["conv_orth_rms_dev"] < 1e-6
    assert row["conv_sv_max"] == pytest.approx(1.0, abs=1e-6)
    assert len(esd["op_evals"]) == 8 * 8 * 16
    # A random kernel is far from orthogonal.
    row, _ = spectra.analyse_matrix(np.random.default_rng(1).standard_normal((16, 16, 3, 3)), SpectraParams(conv2d_fft=True))
    assert row["conv_orth_max_dev"] > 1 and row["conv_orth_rms_dev"] > 0.1
    assert row["conv_orth_max_dev"] >= row["conv_orth_rms_dev"]


def test_conv2d_pools_kernel_position_slices():
    K = np.random.default_rng(2).standard_normal((12, 10, 3, 2)).astype(np.float32)
    row, esd = spectra.analyse_matrix(K, SpectraParams(conv2d_norm=False))
    slices = [np.linalg.svd(K[:, :, i, j].astype(np.float64), compute_uv=False) ** 2 for i in range(3) for j in range(2)]
    np.testing.assert_allclose(esd["evals"], np.sort(np.concatenate(slices)), rtol=1e-9)
    assert (row["N"], row["M"], row["rf"], row["num_evals"]) == (12, 10, 6, 60)
    scaled, _ = spectra.analyse_matrix(K)  # WeightWatcher's conv2d_norm halves the eigenvalues
    assert scaled["lambda_max"] == pytest.approx(row["lambda_max"] / 2)
    assert scaled["alpha"] == pytest.approx(row["alpha"])


def test_gram_route_matches_svd_and_falls_back_when_singular():
    W = torch.from_numpy(np.random.default_rng(0).standard_normal((300, 120)).astype(np.float32))
    gram, route = spectra.eigenvalues(W)
    exact, _ = spectra.eigenvalues(W, "svd")
    assert route == "gram"
    np.testing.assert_allclose(gram, exact, rtol=1e-10)
    np.testing.assert_allclose(spectra.eigenvalues(W.T)[0], exact, rtol=1e-10)  # wide = tall
    low_rank = W[:, :10].repeat(1, 4)  # 300 x 40, each column 4 times: rank 10 exactly
    row, _ = spectra.analyse_matrix(low_rank)
    assert row["eig_method"] == "svd-fallback"
    assert (row["matrix_rank"], row["rank_loss"]) == (10, 30)


def test_float64_gram_changes_no_displayed_digit_on_minilm():
    import models

    handle = models.load("builtin:minilm")
    names = [n for n in handle.matrix_names() if ".layer.0." in n]
    for mat in handle.iter_matrices(set(names)):
        fast, _ = spectra.analyse_matrix(mat.tensor)
        exact, _ = spectra.analyse_matrix(mat.tensor, SpectraParams(eig_method="svd"))
        for key in ("alpha", "D", "xmin", "lambda_max", "entropy", "stable_rank", "log_alpha_norm"):
            assert fast[key] == pytest.approx(exact[key], rel=1e-9), key
        assert fast["num_pl_spikes"] == exact["num_pl_spikes"]


# ---------------------------------------------------------------------------------------
# Bad layers and the result


class _FakeHandle:
    name = "fake model"
    fingerprint = "f" * 64

    def __init__(self, mats: list[tuple[str, torch.Tensor]], unreadable: tuple[str, ...] = ()):
        self.mats = mats
        self.unreadable = set(unreadable)

    def matrix_names(self):
        return [n for n, _ in self.mats]

    def skipped(self):
        return [Skipped("final_norm.weight", (16,), "1-D (bias, norm or scale)")]

    def iter_matrices(self, names=None):
        for name, tensor in self.mats:
            if names is not None and name not in names:
                continue
            if name in self.unreadable:
                raise ValueError("truncated block")
            yield WeightMatrix(name, tensor, "mlp-up", name.split(".")[0], {2: "linear", 4: "conv2d"}.get(tensor.ndim, "x"))


def _bad_model() -> _FakeHandle:
    g = torch.Generator().manual_seed(0)
    nan = torch.randn(40, 20, generator=g)
    nan[3, 4] = float("nan")
    inf = torch.randn(40, 20, generator=g)
    inf[0, 0] = float("inf")
    return _FakeHandle(
        [
            ("0.good.weight", torch.randn(64, 32, generator=g)),
            ("0.nan.weight", nan),
            ("0.inf.weight", inf),
            ("1.zeros.weight", torch.zeros(40, 20)),
            ("1.narrow.weight", torch.randn(50, 5, generator=g)),
            ("1.vector.weight", torch.randn(30, generator=g)),
            ("2.unreadable.weight", torch.randn(40, 20, generator=g)),
            ("2.conv.weight", torch.randn(8, 4, 3, 3, generator=g)),
            ("2.good.weight", torch.randn(20, 50, generator=g)),
        ],
        unreadable=("2.unreadable.weight",),
    )


def test_bad_layers_are_listed_not_raised():
    calls = []
    params = SpectraParams(randomize=True, mp_fit=True, detx=True)
    result = spectra.run(_bad_model(), params, progress=lambda f, m: calls.append((f, m)))
    assert [r["name"] for r in result.layers] == ["0.good.weight", "2.conv.weight", "2.good.weight"]
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert reasons["0.nan.weight"] == reasons["0.inf.weight"] == "contains NaN or Inf"
    assert reasons["1.zeros.weight"] == "all zeros"
    assert reasons["1.narrow.weight"] == "too few eigenvalues: 5 < min_evals 8"
    assert reasons["1.vector.weight"] == "1-D (bias, norm or scale)"
    assert reasons["2.unreadable.weight"].startswith("could not be read (ValueError: truncated block")
    assert reasons["final_norm.weight"] == "1-D (bias, norm or scale)"
    assert calls[-1][0] == 1.0 and all(0 < f <= 1 for f, _ in calls)
    assert set(result.timings["per_layer_s"]) >= {"0.good.weight", "0.nan.weight"}
    conv = next(r for r in result.layers if r["name"] == "2.conv.weight")
    assert (conv["N"], conv["M"], conv["rf"], conv["num_evals"]) == (8, 4, 9, 36)
    with pytest.raises(spectra.LayerSkipped, match="too few eigenvalues"):
        spectra.analyse_matrix(torch.randn(30, 12), SpectraParams(min_evals=16))


def test_result_round_trips_through_json():
    result = spectra.run(_bad_model(), SpectraParams(randomize=True, detx=True, max_evals_kept=10))
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = SpectraResult.from_dict(json.loads(text))
    assert back.layers == json.loads(json.dumps(result.to_dict()["layers"]))
    pd.testing.assert_frame_equal(back.to_frame(), result.to_frame(), check_dtype=False)
    tables = back.tables()
    assert set(tables) == {"layers", "skipped"} and list(tables["skipped"].columns) == ["name", "shape", "reason", "phase"]
    esd = back.esds["0.good.weight"]
    assert len(esd["evals"]) == 10 and esd["subsampled"] and esd["num_evals"] == 32
    assert esd["evals"] == sorted(esd["evals"]) and len(esd["rand_evals"]) == 10
    assert back.params["seed"] == 0 and back.model_name == "fake model"
    summary = back.summary
    assert summary["num_layers"] == 3 and set(summary["by_block"]) == {"0", "2"}
    assert summary["by_block"]["2"]["count"] == 2
    assert summary["mean_all"]["alpha"] == pytest.approx(np.mean([r["alpha"] for r in result.layers]))
    assert summary["mean"]["alpha"] is None  # none of these random layers has a trusted tail


def test_randomize_is_seeded():
    W = torch.from_numpy(np.random.default_rng(0).standard_t(2, size=(120, 80)).astype(np.float32))
    a, ea = spectra.analyse_matrix(W, SpectraParams(randomize=True, seed=1), name="x")
    b, eb = spectra.analyse_matrix(W, SpectraParams(randomize=True, seed=1), name="x")
    c, _ = spectra.analyse_matrix(W, SpectraParams(randomize=True, seed=2), name="x")
    assert a["rand_lambda_max"] == b["rand_lambda_max"] != c["rand_lambda_max"]
    assert ea["rand_evals"] == eb["rand_evals"]
    # Shuffling keeps the Frobenius norm and destroys the heavy tail.
    assert sum(ea["rand_evals"]) == pytest.approx(a["frobenius_norm_sq"], rel=1e-9)
    assert a["ww_softrank"] == pytest.approx(a["rand_lambda_max"] / a["lambda_max"]) and a["ww_softrank"] < 1
    assert 0 < a["rand_distance"] < 1


def test_run_rejects_unknown_names():
    from models.errors import OrthoscopeError

    with pytest.raises(OrthoscopeError, match="no weight matrix named nope"):
        spectra.run(_bad_model(), names=["nope"])


# ---------------------------------------------------------------------------------------
# Parity with WeightWatcher 0.7.7 (its own fit, pl_package="ww"; the powerlaw package's fit is
# broken with powerlaw 2.0.0). Rows are matched by WeightWatcher's longname (our name without
# ".weight") and shape.

DEFAULT_FLOAT = [
    "Q", "lambda_max", "log_spectral_norm", "frobenius_norm_sq", "log_norm", "stable_rank", "entropy", "alpha", "xmin", "xmax",
    "D", "sigma", "alpha_weighted", "log_alpha_norm",
]
DEFAULT_INT = ["N", "M", "num_evals", "num_pl_spikes", "matrix_rank", "rank_loss", "weak_rank_loss"]
DETX_FLOAT, DETX_INT = ["detX_val"], ["detX_num", "ERG_gap"]
MP_FLOAT, MP_INT = ["sigma_mp", "bulk_max", "bulk_min", "mp_softrank"], ["num_spikes"]
# Our names that WeightWatcher spells otherwise.
WW_NAMES = {"frobenius_norm_sq": "norm"}


# WeightWatcher 0.7.7 builds its table with a pandas call that pandas 3 deprecates, once per layer.
_quiet_weightwatcher = pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")


def _watcher(module, monkeypatch, tmp_path):
    ww = pytest.importorskip("weightwatcher")
    monkeypatch.chdir(tmp_path)  # WeightWatcher may write ww-img/ into the working directory
    return ww.WeightWatcher(model=module)


def _ww_layer_ids(watcher, longnames: set[str]) -> list[int]:
    described = watcher.describe()
    ids = described.loc[described["longname"].isin(longnames), "layer_id"].astype(int).tolist()
    assert len(ids) == len(longnames)
    return ids


def _compare(ours: pd.DataFrame, theirs: pd.DataFrame, floats: list[str], ints: list[str], not_ours: set[str] = frozenset()):
    ours = ours.assign(longname=ours["name"].str.removesuffix(".weight")).set_index("longname")
    theirs = theirs.set_index("longname")
    assert set(ours.index) == set(theirs.index) - set(not_ours)
    theirs = theirs.loc[ours.index]
    for name, shape in ours["shape"].items():  # same matrix: N x M is the larger x smaller side
        assert (max(shape[:2]), min(shape[:2])) == (theirs.at[name, "N"], theirs.at[name, "M"]), name
    for col in ints:
        np.testing.assert_array_equal(ours[col].to_numpy(int), theirs[col].to_numpy(int), err_msg=col)
    for col in floats:
        np.testing.assert_allclose(ours[col].to_numpy(float), theirs[WW_NAMES.get(col, col)].to_numpy(float), rtol=1e-6,
                                   atol=0, err_msg=col)
    if "lambda_max" in floats:  # WeightWatcher's spectral_norm is the same number
        np.testing.assert_allclose(ours["lambda_max"].to_numpy(float), theirs["spectral_norm"].to_numpy(float), rtol=1e-6)


@_quiet_weightwatcher
def test_parity_conv2d_with_weightwatcher(monkeypatch, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.Conv2d(32, 24, (3, 5)), torch.nn.Linear(40, 30))
    # WeightWatcher pools the (out, in) slices of every kernel position and scales conv2d weights
    # by 1/sqrt(2) (conv2d_norm); the MP fit is compared on MiniLM below (it costs ~2 s a layer there).
    theirs = _watcher(net, monkeypatch, tmp_path).analyze(detX=True, pl_package="ww")
    theirs["longname"] = theirs["longname"].astype(str)
    rows = [spectra.analyse_matrix(m.weight.detach(), SpectraParams(detx=True), name=f"{i}.weight")[0] for i, m in enumerate(net)]
    _compare(pd.DataFrame(rows), theirs, DEFAULT_FLOAT + DETX_FLOAT, DEFAULT_INT + DETX_INT + ["rf"])


@_quiet_weightwatcher
def test_parity_normalize_with_conv2d_with_weightwatcher(monkeypatch, tmp_path):
    # WeightWatcher's normalize=True multiplies W by 1/sqrt(N) in place of the conv2d factor; its
    # analyze() has no argument for it, so the default parameters are patched for this call.
    ww = pytest.importorskip("weightwatcher")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.Linear(40, 30))
    monkeypatch.setitem(ww.weightwatcher.DEFAULT_PARAMS, "normalize", True)
    theirs = _watcher(net, monkeypatch, tmp_path).analyze(pl_package="ww")
    theirs["longname"] = theirs["longname"].astype(str)
    rows = [spectra.analyse_matrix(m.weight.detach(), SpectraParams(normalize=True), name=f"{i}.weight")[0]
            for i, m in enumerate(net)]
    _compare(pd.DataFrame(rows), theirs, DEFAULT_FLOAT, DEFAULT_INT)


@_quiet_weightwatcher
def test_parity_small_layers_with_weightwatcher(monkeypatch, tmp_path, capsys):
    # 50 matrices of 8-19 eigenvalues (a 10-class head is one): WeightWatcher's small-sample fit,
    # where it keeps the smallest D, not its J criterion. Gaussian, Student-t and low-rank-plus-noise.
    rng = np.random.default_rng(2026)
    layers = []
    for i in range(50):
        m = int(rng.integers(8, 20))
        n = int(rng.integers(m, 4 * m))
        layer = torch.nn.Linear(m, n, bias=False) if i % 2 else torch.nn.Linear(n, m, bias=False)
        kind = i % 3
        W = rng.standard_normal(layer.weight.shape) if kind == 0 else rng.standard_t(2.0, size=layer.weight.shape)
        if kind == 2:
            W = W + 5 * np.outer(rng.standard_normal(W.shape[0]), rng.standard_normal(W.shape[1]))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(W))
        layers.append(layer)
    net = torch.nn.Sequential(*layers)
    theirs = _watcher(net, monkeypatch, tmp_path).analyze(detX=True, pl_package="ww")
    capsys.readouterr()  # WeightWatcher prints "SMALL N PL FIT" once per layer
    theirs["longname"] = theirs["longname"].astype(str)
    rows = [spectra.analyse_matrix(m.weight.detach(), SpectraParams(detx=True), name=f"{i}.weight")[0]
            for i, m in enumerate(net)]
    ours = pd.DataFrame(rows)
    assert set(ours["pl_method"]) == {"small-n (min D)"}
    _compare(ours, theirs, DEFAULT_FLOAT + DETX_FLOAT, DEFAULT_INT + DETX_INT)
    # The J criterion is still there by name, and it does choose differently on this set.
    j_rows = [spectra.analyse_matrix(m.weight.detach(), SpectraParams(small_n_rule="j"))[0] for m in net]
    assert sum(a["xmin"] != b["xmin"] for a, b in zip(rows, j_rows)) > 0
    assert {r["pl_method"] for r in j_rows} == {"small-n (J)"}


@_quiet_weightwatcher
def test_parity_minilm_with_weightwatcher(monkeypatch, tmp_path):
    import models

    handle = models.load("builtin:minilm")
    watcher = _watcher(handle.module(), monkeypatch, tmp_path)
    # Every layer, default fit plus detX.
    theirs = watcher.analyze(detX=True, pl_package="ww")
    ours = spectra.run(handle, SpectraParams(detx=True)).to_frame()
    _compare(ours, theirs, DEFAULT_FLOAT + DETX_FLOAT, DEFAULT_INT + DETX_INT)
    # Three layers (Q = 79.5, Q = 1 with the quarter-circle fit, Q = 4) with mp_fit, fix_fingers
    # and randomize: WeightWatcher's MP fit takes ~2 s per layer, so not all 39.
    subset = {"embeddings.word_embeddings", "encoder.layer.2.attention.self.value", "encoder.layer.3.intermediate.dense"}
    theirs = watcher.analyze(
        layers=_ww_layer_ids(watcher, subset), mp_fit=True, randomize=True, fix_fingers="clip_xmax", pl_package="ww"
    )
    params = SpectraParams(mp_fit=True, randomize=True, fix_fingers="clip_xmax")
    ours = spectra.run(handle, params, names=[f"{n}.weight" for n in subset]).to_frame()
    _compare(ours, theirs, DEFAULT_FLOAT + MP_FLOAT + ["raw_alpha"], DEFAULT_INT + MP_INT)
    # WeightWatcher reports one finger fewer than the eigenvalues it clipped (idx - 1).
    ours_fingers = ours.set_index(ours["name"].str.removesuffix(".weight"))["num_fingers"]
    theirs_fingers = theirs.set_index("longname")["num_fingers"].loc[ours_fingers.index]
    np.testing.assert_array_equal(np.maximum(ours_fingers - 1, 0), theirs_fingers.astype(int))
    # The shuffles use different random generators (WeightWatcher's global numpy state, 5 shuffles
    # for small layers), so rand_* columns cannot match exactly; a shuffled matrix's top eigenvalue
    # hardly depends on the shuffle, so the softrank agrees to a few percent.
    merged = ours.assign(longname=ours["name"].str.removesuffix(".weight")).merge(theirs, on="longname", suffixes=("", "_ww"))
    np.testing.assert_allclose(merged["ww_softrank"], merged["ww_softrank_ww"], rtol=0.05)
    np.testing.assert_allclose(merged["rand_distance"], merged["rand_distance_ww"], rtol=0.1)


@_quiet_weightwatcher
def test_parity_smollm2_with_weightwatcher(monkeypatch, tmp_path):
    """SmolLM2 on a layer subset: the embedding and blocks 0 and 29 (15 matrices).

    Building the transformers module from the GGUF takes ~30 s and WeightWatcher needs 30-110 s for
    all 212 layers, so the test restricts both tools (WeightWatcher's layers=, our names=); the
    bench compares every layer. WeightWatcher also analyses lm_head, which is tied to the
    embedding (the GGUF stores it once), so it has no row of ours.
    """
    import models

    handle = models.load("builtin:smollm2")
    watcher = _watcher(handle.module(), monkeypatch, tmp_path)
    subset = {"model.embed_tokens"} | {
        n.removesuffix(".weight") for n in handle.matrix_names() if n.startswith(("model.layers.0.", "model.layers.29."))
    }
    assert len(subset) == 15
    # Both tools see the same 211 matrices, plus WeightWatcher's tied lm_head.
    described = watcher.describe()
    assert set(described["longname"]) == {n.removesuffix(".weight") for n in handle.matrix_names()} | {"lm_head"}
    ids = _ww_layer_ids(watcher, subset)
    theirs = watcher.analyze(layers=ids, detX=True, pl_package="ww")
    ours = spectra.run(handle, SpectraParams(detx=True), names=[f"{n}.weight" for n in subset]).to_frame()
    _compare(ours, theirs, DEFAULT_FLOAT + DETX_FLOAT, DEFAULT_INT + DETX_INT)
