"""Compare: checkpoint discovery, the geometry of an update against planted ground truth, task-vector
overlaps, and the rows built from real (tiny) checkpoints on disk."""

from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.linalg import subspace_angles

import models
from diagnostics import compare, glossary, spectra
from models import checkpoints
from models.checkpoints import Checkpoint, discover, from_specs
from models.errors import OrthoscopeError

K = 8


# ---------------------------------------------------------------------------------------
# Planted matrices


def _orthonormal(rng, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q


def _base(rng, N: int = 64, M: int = 48):
    """``W = U diag(s) V^T`` with a clearly decaying spectrum (distinct top-k directions) and its
    full orthonormal bases U (N x N) and V (M x M)."""
    U, V = _orthonormal(rng, N), _orthonormal(rng, M)
    r = min(N, M)
    s = 10.0 * 0.8 ** np.arange(r) + 0.05
    return (U[:, :r] * s) @ V[:, :r].T, U, V


def _update(rng, left: np.ndarray, right: np.ndarray, r: int, scale: float = 1.0) -> np.ndarray:
    """A rank-r update with r equal singular values ``scale`` whose column space lies in span(left) and
    row space in span(right): ``left P diag(scale) Q^T right^T`` with P, Q orthonormal."""
    P = _orthonormal(rng, left.shape[1])[:, :r]
    Q = _orthonormal(rng, right.shape[1])[:, :r]
    return scale * (left @ P) @ (right @ Q).T


# ---------------------------------------------------------------------------------------
# Discovery


def _touch(folder, *names):
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(b"")


def test_discover_orders_by_step_not_by_name(tmp_path):
    _touch(tmp_path, "step_500.safetensors", "step_1000.safetensors", "step_50.safetensors", "checkpoint-20/",
           "checkpoint-3/", "model-00100.pt", "trainer_state.json", "optimizer.pt", "README.md", "step_7.txt")
    found = discover(tmp_path)
    assert [c.name for c in found] == ["checkpoint-3", "checkpoint-20", "step_50.safetensors", "model-00100.pt",
                                       "step_500.safetensors", "step_1000.safetensors"]
    assert [c.step for c in found] == [3, 20, 50, 100, 500, 1000]
    assert found[0].spec == str(tmp_path / "checkpoint-3")
    assert sorted(c.name for c in found)[-1] != found[-1].name  # a name sort would put step_1000 before step_500


def test_discover_takes_a_custom_pattern_and_the_default_ignores_other_names(tmp_path):
    _touch(tmp_path, "run-a-12.pt", "run-a-7.pt", "run-b-1.pt")
    with pytest.raises(OrthoscopeError, match="no checkpoints"):
        discover(tmp_path)
    found = discover(tmp_path, r"run-a-(\d+)")
    assert [(c.name, c.step) for c in found] == [("run-a-7.pt", 7), ("run-a-12.pt", 12)]


@pytest.mark.parametrize("pattern, message", [
    (r"step_\d+", "exactly one"),
    (r"(step)_(\d+)", "exactly one"),
    (r"step_(\d+", "not a regular expression"),
])
def test_discover_refuses_a_pattern_without_one_group(tmp_path, pattern, message):
    _touch(tmp_path, "step_5.pt")
    with pytest.raises(OrthoscopeError, match=message):
        discover(tmp_path, pattern)


def test_discover_refuses_a_group_that_is_not_a_number(tmp_path):
    _touch(tmp_path, "step_abc.pt")
    with pytest.raises(OrthoscopeError, match="not a whole number"):
        discover(tmp_path, r"step_(\w+)")


def test_discover_refuses_missing_empty_and_unrelated_folders(tmp_path):
    with pytest.raises(OrthoscopeError, match="does not exist"):
        discover(tmp_path / "nowhere")
    with pytest.raises(OrthoscopeError, match="holds no checkpoints.*checkpoint-N/.*step_500.safetensors.*nothing"):
        discover(tmp_path)
    _touch(tmp_path, "notes.txt", "model.safetensors")
    with pytest.raises(OrthoscopeError, match="it holds model.safetensors, notes.txt"):
        discover(tmp_path)
    (tmp_path / "file.pt").write_bytes(b"")
    with pytest.raises(OrthoscopeError, match="not a folder"):
        discover(tmp_path / "file.pt")


def test_discover_refuses_the_shards_of_one_model(tmp_path):
    _touch(tmp_path, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    with pytest.raises(OrthoscopeError, match="shard of one model"):
        discover(tmp_path)


def test_discover_refuses_more_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "MAX_CHECKPOINTS", 3)
    _touch(tmp_path, *(f"step_{i}.pt" for i in range(5)))
    with pytest.raises(OrthoscopeError, match="more than 3 checkpoints"):
        discover(tmp_path)


def test_from_specs_keeps_the_order_and_refuses_duplicates():
    assert from_specs(["b.pt", " a.pt"]) == [Checkpoint("b.pt", "b.pt", None), Checkpoint("a.pt", "a.pt", None)]
    with pytest.raises(OrthoscopeError, match="more than once"):
        from_specs(["a.pt", "b.pt", "a.pt"])
    with pytest.raises(OrthoscopeError, match="at least one"):
        from_specs([])


# ---------------------------------------------------------------------------------------
# Principal angles


def test_principal_angles_of_two_planes_at_30_degrees_match_scipy():
    t = math.radians(30)
    A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    B = np.array([[2.0, 0.0], [0.0, 3 * math.cos(t)], [0.0, 3 * math.sin(t)]])  # not orthonormal: only the span counts
    angles = compare.principal_angles_deg(A, B)
    np.testing.assert_allclose(angles, [0.0, 30.0], atol=1e-10)
    np.testing.assert_allclose(angles, np.sort(np.degrees(subspace_angles(A, B))), atol=1e-12)
    assert compare.principal_angles_deg(A, B[:, :0]).size == 0


def test_principal_angles_of_random_subspaces_match_scipy_and_ascend():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((30, 4)), rng.standard_normal((30, 6))
    angles = compare.principal_angles_deg(A, B)
    assert angles.size == 4 and np.all(np.diff(angles) >= 0)
    np.testing.assert_allclose(angles, np.sort(np.degrees(subspace_angles(A, B))), atol=1e-12)


# ---------------------------------------------------------------------------------------
# Delta geometry against planted updates


@pytest.mark.parametrize("shape", [(64, 48), (48, 64)])
@pytest.mark.parametrize("r", [2, K])
def test_an_update_inside_the_base_top_k_subspace_has_angles_near_zero(shape, r):
    rng = np.random.default_rng(r)
    W, U, V = _base(rng, *shape)
    dW = _update(rng, U[:, :K], V[:, :K], r, scale=0.7)
    g = compare.delta_geometry(W, W + dW, K)
    assert g["reason"] == ""
    assert g["delta_rank"] == r and g["k_eff"] == r
    assert g["angle_left_mean_deg"] < 5 and g["angle_right_mean_deg"] < 5
    assert g["angle_left_min_deg"] <= g["angle_left_mean_deg"]
    assert g["overlap_left"] > 0.99 and g["overlap_right"] > 0.99
    assert g["overlap_left_null"] == pytest.approx(K / shape[0])
    assert g["overlap_right_null"] == pytest.approx(K / shape[1])
    # r equal singular values: both ranks are exactly r
    assert g["stable_rank"] == pytest.approx(r, rel=1e-9)
    assert g["effective_rank"] == pytest.approx(r, rel=1e-9)
    assert g["rel_size"] == pytest.approx(np.linalg.norm(dW) / np.linalg.norm(W), rel=1e-12)
    assert g["delta_frobenius"] == pytest.approx(0.7 * math.sqrt(r), rel=1e-12)


@pytest.mark.parametrize("shape", [(64, 48), (48, 64)])
def test_an_update_orthogonal_to_the_base_top_k_subspace_has_angles_near_90(shape):
    rng = np.random.default_rng(5)
    W, U, V = _base(rng, *shape)
    dW = _update(rng, U[:, K:], V[:, K:], 3)  # built from the orthogonal complement
    g = compare.delta_geometry(W, W + dW, K)
    assert g["angle_left_mean_deg"] > 85 and g["angle_left_min_deg"] > 85
    assert g["angle_right_mean_deg"] > 85 and g["angle_right_min_deg"] > 85
    assert g["overlap_left"] < 1e-3 and g["overlap_right"] < 1e-3
    assert g["stable_rank"] == pytest.approx(3, rel=1e-9)


def test_left_and_right_are_not_swapped():
    """Output directions inside the base's top-k, input directions orthogonal to it."""
    rng = np.random.default_rng(6)
    W, U, V = _base(rng)
    g = compare.delta_geometry(W, W + _update(rng, U[:, :K], V[:, K:], 4), K)
    assert g["angle_left_mean_deg"] < 5 and g["angle_right_mean_deg"] > 85


def test_a_float32_checkpoint_keeps_the_planted_rank_above_its_rounding_noise():
    """Stored in float32, W + dW - W carries rounding noise in every direction; the rounding floor keeps
    it out of the rank, so the top-k of dW are the planted directions, not noise."""
    rng = np.random.default_rng(7)
    W, U, V = _base(rng)
    dW = _update(rng, U[:, :K], V[:, :K], 2, scale=0.05)
    base32, derived32 = W.astype(np.float32), (W + dW).astype(np.float32)
    noisy = np.linalg.svd(derived32.astype(np.float64) - base32.astype(np.float64), compute_uv=False)
    assert np.count_nonzero(noisy > 1e-12 * noisy[0]) > 2  # the noise is there
    g = compare.delta_geometry(torch.from_numpy(base32), torch.from_numpy(derived32), K)
    assert g["delta_rank"] == 2 and g["k_eff"] == 2
    assert g["angle_left_mean_deg"] < 5 and g["angle_right_mean_deg"] < 5


def test_a_random_update_overlaps_the_base_like_its_null():
    """Averaged over draws, the overlap of a random update's top-k with the base's top-k is k / N."""
    rng = np.random.default_rng(8)
    W, _, _ = _base(rng)
    overlaps = [compare.delta_geometry(W, W + rng.standard_normal(W.shape), K)["overlap_left"] for _ in range(40)]
    assert np.mean(overlaps) == pytest.approx(K / W.shape[0], abs=0.03)


def test_the_esd_of_a_full_rank_update_follows_the_spectra_rules():
    rng = np.random.default_rng(9)
    W, _, _ = _base(rng, 160, 80)
    dW = rng.standard_t(1.5, size=W.shape)
    g = compare.delta_geometry(W, W + dW, K, max_evals_kept=30)
    row, _ = spectra.analyse_matrix(dW)  # every eigenvalue here is above spectra's 1e-5 and the rounding floor
    assert g["delta_alpha"] == pytest.approx(row["alpha"], rel=1e-12)
    assert (g["delta_phase"], g["delta_pl_trust"]) == (row["phase"], row["pl_trust"])
    assert g["delta_num_evals"] == 80 and g["delta_rank"] == 80
    evals = np.sort(np.linalg.svd(dW, compute_uv=False) ** 2)
    assert len(g["delta_evals"]) == 30
    np.testing.assert_allclose([g["delta_evals"][0], g["delta_evals"][-1]], evals[[0, -1]], rtol=1e-10)


def test_a_low_rank_update_is_too_small_for_a_power_law():
    rng = np.random.default_rng(10)
    W, U, V = _base(rng)
    g = compare.delta_geometry(W, W + _update(rng, U, V, 3), K)
    assert g["delta_phase"] == "too-small" and not g["delta_pl_trust"] and math.isnan(g["delta_alpha"])
    assert len(g["delta_evals"]) == 3


def test_degenerate_updates_give_nan_and_a_reason():
    rng = np.random.default_rng(11)
    W, _, _ = _base(rng)
    same = compare.delta_geometry(W, W.copy(), K)
    assert same["rel_size"] == 0 and same["delta_rank"] == 0 and "no change" in same["reason"]
    assert math.isnan(same["angle_left_mean_deg"]) and math.isnan(same["overlap_right"])
    bad = W.copy()
    bad[0, 0] = np.nan
    assert "NaN" in compare.delta_geometry(W, bad, K)["reason"]
    with pytest.raises(OrthoscopeError, match="differ in shape"):
        compare.delta_geometry(W, W[:, :10], K)


def test_delta_geometry_of_a_minilm_sized_matrix_takes_well_under_a_second():
    rng = np.random.default_rng(12)
    W = rng.standard_normal((1536, 384)).astype(np.float32)
    derived = W + 0.01 * rng.standard_normal(W.shape).astype(np.float32)
    started = time.process_time()
    compare.delta_geometry(W, derived, K)
    assert time.process_time() - started < 2.0  # two float64 SVDs and the fits; ~0.4 s of CPU here


# ---------------------------------------------------------------------------------------
# Task-vector overlap


def test_task_vectors_in_orthogonal_subspaces_do_not_overlap_and_the_same_one_does():
    rng = np.random.default_rng(13)
    _, U, V = _base(rng)
    a = _update(rng, U[:, :4], V[:, :4], 4)
    b = _update(rng, U[:, 4:8], V[:, 4:8], 4)
    apart = compare.task_vector_overlap(a, b, K)
    assert abs(apart["cosine"]) < 1e-10 and apart["subspace_overlap"] < 1e-10
    assert apart["null"] == pytest.approx(4 / 64) and apart["k_eff"] == 4
    same = compare.task_vector_overlap(a, a, K)
    assert same["cosine"] == pytest.approx(1.0) and same["subspace_overlap"] == pytest.approx(1.0)
    opposite = compare.task_vector_overlap(a, -2 * a, K)
    assert opposite["cosine"] == pytest.approx(-1.0) and opposite["subspace_overlap"] == pytest.approx(1.0)


def test_shared_output_directions_overlap_without_any_cosine():
    """Half the output directions shared, input directions disjoint: the cosine is 0 (the elements do
    not align) but the output subspaces overlap by exactly 1/2 (angles 0, 0, 90, 90)."""
    rng = np.random.default_rng(14)
    _, U, V = _base(rng)
    a = U[:, 0:4] @ V[:, 0:4].T
    b = U[:, 2:6] @ V[:, 10:14].T
    out = compare.task_vector_overlap(a, b, K)
    assert abs(out["cosine"]) < 1e-12
    assert out["subspace_overlap"] == pytest.approx(0.5, abs=1e-12)


def test_a_zero_task_vector_has_no_overlap():
    out = compare.task_vector_overlap(np.zeros((10, 8)), np.ones((10, 8)), K)
    assert math.isnan(out["cosine"]) and "first" in out["reason"]


# ---------------------------------------------------------------------------------------
# Rows from checkpoints on disk

Q_PROJ, UP, DOWN = "layers.0.self_attn.q_proj.weight", "layers.0.mlp.up_proj.weight", "layers.1.mlp.down_proj.weight"


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A heavy-tailed layer (a trusted power law), two Gaussian ones and a bias."""
    rng = np.random.default_rng(seed)
    W, _, _ = _base(rng)
    return {
        Q_PROJ: torch.from_numpy(W.astype(np.float32)),
        UP: torch.from_numpy(rng.standard_t(1.5, size=(200, 100)).astype(np.float32)),
        DOWN: torch.from_numpy(rng.standard_normal((48, 96)).astype(np.float32)),
        "layers.0.mlp.up_proj.bias": torch.zeros(200),
    }


def _q_bases(weights):
    U, _, Vt = np.linalg.svd(weights[Q_PROJ].double().numpy())
    return U, Vt.T


def _with(weights, **updates) -> dict[str, torch.Tensor]:
    out = dict(weights)
    for name, dW in updates.items():
        key = {"q": Q_PROJ, "down": DOWN}[name]
        out[key] = (out[key].double() + torch.from_numpy(dW)).float()
    return out


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    w = _weights()
    for step, scale in ((500, 1.0), (1000, 1.1), (50, 0.9)):
        save_file({k: v * scale for k, v in w.items()}, folder / f"step_{step}.safetensors")
    return folder


def test_checkpoint_rows_of_a_series(series):
    params = compare.CompareParams()
    found = discover(series)
    assert [c.step for c in found] == [50, 500, 1000]
    for ckpt in found:
        row, layers = compare.checkpoint_rows(ckpt, params)
        handle = models.load(ckpt.spec)
        truth = spectra.run(handle, params.spectra_params())
        assert list(row) == list(compare.CHECKPOINT_COLUMNS)
        assert (row["checkpoint"], row["step"], row["status"], row["failed"]) == (ckpt.name, ckpt.step, "ok", 0)
        assert row["fingerprint"] == handle.fingerprint
        assert row["layers"] == 3 and row["tensors"] == 4 and row["nonfinite_tensors"] == 0
        assert row["num_params"] == 64 * 48 + 200 * 100 + 48 * 96 + 200
        trusted = [r["alpha"] for r in truth.layers if r["pl_trust"]]
        assert trusted, "the heavy-tailed layer should be trusted"
        assert row["trusted_layers"] == len(trusted)
        assert row["mean_trusted_alpha"] == pytest.approx(np.mean(trusted))
        assert row["mean_alpha"] == pytest.approx(np.mean([r["alpha"] for r in truth.layers]))
        assert sum(row[c] for c in compare.PHASE_COLUMNS) == 3
        assert row[f"n_{truth.layers[1]['phase']}"] >= 1
        assert [r["name"] for r in layers] == [r["name"] for r in truth.layers]
        for mine, theirs in zip(layers, truth.layers):
            assert list(mine) == list(compare.LAYER_COLUMNS)
            assert mine["alpha"] == theirs["alpha"] and mine["pl_trust"] == theirs["pl_trust"]
            assert (mine["checkpoint"], mine["step"]) == (ckpt.name, ckpt.step)


def test_checkpoint_rows_count_non_finite_tensors_and_too_small_layers(tmp_path):
    w = _weights()
    w[DOWN] = w[DOWN].clone()
    w[DOWN][0, 0] = float("nan")
    w["layers.2.mlp.up_proj.weight"] = torch.randn(40, 10)  # 10 eigenvalues < min_evals 16
    save_file(w, tmp_path / "bad.safetensors")
    row, layers = compare.checkpoint_rows(Checkpoint(str(tmp_path / "bad.safetensors"), "bad", None),
                                          compare.CompareParams(min_evals=16))
    assert row["nonfinite_tensors"] == 1 and row["layers"] == 2 and len(layers) == 2
    assert row["n_too-small"] == 1


def test_a_failed_checkpoint_row_has_the_same_columns_and_nan_metrics(tmp_path):
    missing = Checkpoint(str(tmp_path / "gone.safetensors"), "gone.safetensors", 7)
    with pytest.raises(OrthoscopeError) as err:
        compare.checkpoint_rows(missing, compare.CompareParams())
    row = compare.failed_checkpoint_row(missing, str(err.value), "abc")
    assert list(row) == list(compare.CHECKPOINT_COLUMNS)
    assert (row["status"], row["failed"], row["step"], row["fingerprint"]) == ("failed", 1, 7, "abc")
    assert "does not exist" in row["reason"] and math.isnan(row["mean_trusted_alpha"])


@pytest.fixture
def fine_tunes(tmp_path):
    """A base and derived models: planted updates of q_proj inside / orthogonal to the base's top-k,
    the same update twice, and a model whose layers differ from the base's (saved as a .pt with its
    tensors in reverse order, so the two are not read in the same order)."""
    rng = np.random.default_rng(20)
    w = _weights()
    U, V = _q_bases(w)
    inside = _update(rng, U[:, :4], V[:, :4], 4, scale=0.5)
    outside = _update(rng, U[:, K:K + 4], V[:, K:K + 4], 4, scale=0.5)
    paths = {}
    for name, weights in {
        "base": w,
        "inside": _with(w, q=inside),
        "again": _with(w, q=inside),
        "outside": _with(w, q=outside, down=0.1 * rng.standard_normal((48, 96))),
    }.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file(weights, paths[name])
    odd = _with(w, q=inside)
    odd[DOWN] = torch.randn(40, 96)
    del odd[UP]
    odd["layers.3.mlp.up_proj.weight"] = torch.randn(32, 32)
    paths["odd"] = tmp_path / "odd.pt"
    torch.save(dict(reversed(list(odd.items()))), paths["odd"])
    return {name: Checkpoint(str(p), p.name, None) for name, p in paths.items()}


def _by_name(rows):
    return {r["name"]: r for r in rows}


def test_delta_rows_find_the_planted_updates(fine_tunes):
    params = compare.CompareParams()
    inside = _by_name(compare.delta_rows(fine_tunes["base"], fine_tunes["inside"], params))
    outside = _by_name(compare.delta_rows(fine_tunes["base"], fine_tunes["outside"], params))
    assert set(inside) == {Q_PROJ, UP, DOWN}
    for row in inside.values():
        assert list(row) == list(compare.DELTA_COLUMNS)
        assert (row["base"], row["derived"]) == ("base.safetensors", "inside.safetensors")
    q = inside[Q_PROJ]
    assert q["reason"] == "" and q["delta_rank"] == 4 and q["angle_left_mean_deg"] < 5 and q["overlap_right"] > 0.99
    assert "no change" in inside[UP]["reason"] and math.isnan(inside[UP]["angle_left_mean_deg"])
    assert outside[Q_PROJ]["angle_left_mean_deg"] > 85 and outside[Q_PROJ]["angle_right_min_deg"] > 85
    assert outside[DOWN]["reason"] == "" and outside[DOWN]["delta_rank"] == 48  # a dense update
    assert outside[DOWN]["base_fingerprint"] == models.load(fine_tunes["base"].spec).fingerprint


def test_delta_rows_list_layers_the_two_do_not_share(fine_tunes):
    base, odd = models.load(fine_tunes["base"].spec), models.load(fine_tunes["odd"].spec)
    assert [n for n in odd.matrix_names() if n in base.matrix_names()] != base.matrix_names()[:2]  # read out of order
    rows = _by_name(compare.delta_rows(fine_tunes["base"], fine_tunes["odd"], compare.CompareParams()))
    assert rows[Q_PROJ]["angle_left_mean_deg"] < 5
    assert rows[UP]["reason"].startswith("only in base")
    assert rows[DOWN]["reason"] == "shape differs: 48x96 in base, 40x96 in odd.pt"
    assert rows["layers.3.mlp.up_proj.weight"]["reason"] == "only in derived"
    assert math.isnan(rows[DOWN]["rel_size"])


def test_overlap_rows_of_planted_task_vectors(fine_tunes):
    derived = [fine_tunes["inside"], fine_tunes["outside"], fine_tunes["again"], fine_tunes["odd"]]
    rows = compare.overlap_rows(fine_tunes["base"], derived, compare.CompareParams())
    assert all(list(r) == list(compare.OVERLAP_COLUMNS) for r in rows)
    assert len(rows) == 6 * 3  # every pair of four models, every layer of the base
    q = {(r["a"], r["b"]): r for r in rows if r["name"] == Q_PROJ}
    apart = q[("inside.safetensors", "outside.safetensors")]
    assert abs(apart["cosine"]) < 1e-3 and apart["subspace_overlap"] < 1e-3
    assert apart["null"] == pytest.approx(4 / 64)
    same = q[("inside.safetensors", "again.safetensors")]
    assert same["cosine"] == pytest.approx(1.0) and same["subspace_overlap"] == pytest.approx(1.0)
    assert q[("inside.safetensors", "odd.pt")]["cosine"] == pytest.approx(1.0)
    down = {(r["a"], r["b"]): r for r in rows if r["name"] == DOWN}
    assert "no change" in down[("inside.safetensors", "outside.safetensors")]["reason"]
    assert down[("outside.safetensors", "odd.pt")]["reason"].startswith("shape differs")
    assert compare.overlap_rows(fine_tunes["base"], derived[:1], compare.CompareParams()) == []


# ---------------------------------------------------------------------------------------
# Parameters and result


def test_params_validate_and_round_trip():
    params = compare.CompareParams(k=4, min_evals=10, seed=3)
    assert compare.CompareParams.from_dict({**params.to_dict(), "unknown": 1}) == params
    sp = params.spectra_params()
    assert (sp.min_evals, sp.seed) == (10, 3)
    for bad in ({"k": 0}, {"k": True}, {"k": 2.5}, {"min_evals": 1}, {"max_delta_evals_kept": 1}, {"seed": -1}):
        with pytest.raises(OrthoscopeError):
            compare.CompareParams(**bad)


def _result(series, fine_tunes, folder="run"):
    params = compare.CompareParams()
    found = discover(series)
    rows, layers = [], []
    for ckpt in found[:2]:
        row, lay = compare.checkpoint_rows(ckpt, params)
        rows.append(row)
        layers += lay
    rows.append(compare.failed_checkpoint_row(found[2], "corrupt", "f" * 64))
    deltas = compare.delta_rows(fine_tunes["base"], fine_tunes["odd"], params)
    overlaps = compare.overlap_rows(fine_tunes["base"], [fine_tunes["inside"], fine_tunes["outside"]], params)
    return compare.make_result(rows, layers, deltas, overlaps, params, folder=folder,
                               summary={"computed": 2, "reused": 0, "executor": "serial", "workers": 1},
                               timings={"total_s": 1.0})


def test_the_result_round_trips_through_json(series, fine_tunes):
    result = _result(series, fine_tunes)
    assert result.model_name == "3 checkpoints of run"
    members = sorted(r["fingerprint"] for r in result.checkpoints)
    assert result.fingerprint == hashlib.sha256("\n".join(members).encode()).hexdigest()
    assert result.summary == {"checkpoints": 3, "ok": 2, "failed": 1, "computed": 2, "reused": 0,
                              "executor": "serial", "workers": 1}
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    again = compare.CompareResult.from_dict(data)
    assert again.to_dict() == result.to_dict()
    assert set(again.tables()) == {"checkpoints", "layers", "deltas", "overlaps"}
    assert list(again.to_frame()["status"]) == ["ok", "ok", "failed"]
    with pytest.raises(OrthoscopeError, match="layers"):
        compare.CompareResult.from_dict({**data, "layers": {"not": "a list"}})


def test_a_list_of_models_without_base_has_two_tables():
    result = compare.make_result([], [], [], [], compare.CompareParams())
    assert result.model_name == "0 models" and set(result.tables()) == {"checkpoints", "layers"}
    assert list(result.tables()["checkpoints"].columns) == list(compare.CHECKPOINT_COLUMNS)


def test_every_column_of_every_table_has_a_meaning(series, fine_tunes):
    result = _result(series, fine_tunes)
    missing = [f"{stem}: {c}" for stem, frame in result.tables().items() for c in frame.columns
               if not glossary.meaning(c, "compare", stem)]
    assert not missing
    assert "output directions" in glossary.meaning("angle_left_mean_deg", "compare", "deltas")
    assert glossary.meaning("alpha", "compare", "layers") == glossary.meaning("alpha", "spectra", "layers")
