"""Latent directions: SeFa (closed form and genforce variant), eigengaps and near-degenerate spectra,
Householder factorisation, projector bound, hooks, traversal, bad input.

Planted truths and closed forms on synthetic matrices, SeFa's reference recipe in numpy, and tiny
random transformers for the hooks. The real runs on the built-ins are in test_page_directions.py
(MiniLM) and test_cli_directions.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.linalg import hadamard, subspace_angles
from scipy.optimize import minimize_scalar
from scipy.stats import ortho_group

import models
from charts import directions as charts
from diagnostics import directions as d
from models import OrthoscopeError
from tests.conftest import TINY_LLAMA


def planted(m: int, n: int, s: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A = U diag(s) V^T with random orthonormal U (m x r) and V (n x r)."""
    r = len(s)
    U = ortho_group.rvs(m, random_state=seed)[:, :r]
    V = ortho_group.rvs(n, random_state=seed + 1)[:, :r]
    return torch.from_numpy((U * s) @ V.T), U, V


def equal_row_norm_file(path, s: np.ndarray, rows: int = 32, cols: int = 16, seed: int = 1):
    """A = U diag(s) V^T saved in float64, U from a Hadamard matrix so every row of A has the same norm.

    Then diag(1/||a_r||) A = A / sqrt(sum s^2 / rows): the genforce variant has the raw directions and
    eigenvalues s^2 rows / sum s^2, a closed form for both variants at once.
    """
    U = hadamard(rows)[:, :len(s)] / np.sqrt(rows)
    V = ortho_group.rvs(cols, random_state=seed)[:, :len(s)]
    save_file({"layers.0.fc1.weight": torch.from_numpy((U * s) @ V.T)}, path)
    return models.load(str(path)), V


def reflections_product(n: int, count: int, seed: int) -> torch.Tensor:
    """Q = H_1 H_2 ... H_count with H_i = I - 2 u u^T / u^T u, built explicitly."""
    rng = np.random.default_rng(seed)
    Q = np.eye(n)
    for _ in range(count):
        u = rng.standard_normal(n)
        Q = Q @ (np.eye(n) - 2 * np.outer(u, u) / (u @ u))
    return torch.from_numpy(Q)


# ---------------------------------------------------------------------------------------
# SeFa


@pytest.mark.parametrize("m, n", [(30, 20), (12, 20)])  # tall: eigh of the Gram matrix; wide: SVD
def test_sefa_without_normalisation_gives_back_planted_eigenvectors(m, n):
    s = np.array([9.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    A, _, V = planted(m, n, s)
    evals, N = d.sefa(A, 4, normalize=False)
    np.testing.assert_allclose(evals.numpy(), s[:4] ** 2, rtol=1e-12)
    cos = np.abs(N.numpy().T @ V[:, :4])
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-10)
    # The largest entry of each direction is positive, so repeated runs agree on the sign.
    idx = np.abs(N.numpy()).argmax(axis=0)
    assert (N.numpy()[idx, range(4)] > 0).all()


@pytest.mark.parametrize("m, n", [(40, 12), (9, 30)])
def test_sefa_with_normalisation_matches_the_reference_recipe(m, n):
    # SeFa's code: weight stored (in, out), columns scaled to unit norm, eig of weight @ weight.T.
    rng = np.random.default_rng(3)
    A = rng.standard_normal((m, n)) * rng.uniform(0.1, 5.0, size=(m, 1))
    weight = A.T / np.linalg.norm(A.T, axis=0, keepdims=True)
    ref_vals, ref_vecs = np.linalg.eig(weight @ weight.T)
    order = np.argsort(-ref_vals.real)[:5]
    evals, N = d.sefa(torch.from_numpy(A), 5, normalize=True)
    np.testing.assert_allclose(evals.numpy(), ref_vals.real[order], rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(N.numpy() * ref_vecs.real[:, order], axis=0)), 1.0, atol=1e-8)
    # With rows of such different lengths, normalising changes the directions.
    _, plain = d.sefa(torch.from_numpy(A), 5, normalize=False)
    assert np.abs(np.sum(N.numpy() * plain.numpy(), axis=0)).min() < 0.99


def test_relative_eigengaps_and_resolution_by_hand():
    gaps = d.relative_eigengaps(np.array([10.0, 10.0, 4.0, 1.0]))
    np.testing.assert_allclose(gaps, [0.0, 0.6, 0.75, 1.0])  # the last one's next eigenvalue is 0
    # Direction 1 and 2 share an eigenvalue: neither is resolved; 3 and 4 are separated on both sides.
    assert d.resolved_directions(gaps, 4, 0.5) == [False, False, True, True]
    assert d.resolved_directions(gaps, 4, 0.7) == [False, False, False, True]
    assert d.north_threshold(200) == pytest.approx(0.1)
    # Nearest k whose boundary gap exceeds the threshold in every spectrum; ties go to the smaller k.
    other = np.array([0.9, 0.1, 0.9, 0.9])
    assert d.nearest_resolved_k([gaps, other], 2, 4, 0.5) == 3
    assert d.nearest_resolved_k([gaps, np.array([0.1, 0.1, 0.1, 0.1])], 2, 4, 0.5) is None


def test_principal_cosines_match_scipy():
    rng = np.random.default_rng(4)
    X = np.linalg.qr(rng.standard_normal((20, 5)))[0]
    Y = np.linalg.qr(X @ rng.standard_normal((5, 5)) + 0.3 * rng.standard_normal((20, 5)))[0]
    ours = d.principal_cosines(torch.from_numpy(X), torch.from_numpy(Y)).numpy()
    np.testing.assert_allclose(ours, np.sort(np.cos(subspace_angles(X, Y)))[::-1], atol=1e-12)


def test_ranks_against_closed_forms():
    s = torch.tensor([4.0, 4.0, 4.0, 4.0])
    assert d.effective_rank(s) == pytest.approx(4.0)
    assert d.stable_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(1.5)
    A, _, _ = planted(20, 15, np.array([5.0, 3.0, 1.0]))
    sv = torch.linalg.svdvals(A.to(torch.float32).to(torch.float64))
    assert d.numerical_rank(sv, (20, 15), torch.float32) == 3
    assert d.numerical_rank(torch.linalg.svdvals(torch.randn(20, 15, dtype=torch.float64)), (20, 15), torch.float64) == 15


# ---------------------------------------------------------------------------------------
# Householder factorisation and the projector bound


@pytest.mark.parametrize("n, k", [(37, 37), (37, 11), (50, 1)])
def test_product_of_random_reflections_is_factorised_and_rebuilt(n, k):
    Q = reflections_product(n, count=n, seed=n + k)[:, :k]
    reflectors, tau, signs = d.householder_factor(Q)
    assert d.householder_rebuild(reflectors, tau, signs).sub(Q).abs().max() < 1e-10
    # The same reflections applied one by one, without householder_product.
    slow = torch.eye(n, dtype=torch.float64)
    for i in range(k):
        w = torch.zeros(n, dtype=torch.float64)
        w[i] = 1.0
        w[i + 1:] = reflectors[i + 1:, i]
        slow = slow @ (torch.eye(n, dtype=torch.float64) - tau[i] * torch.outer(w, w))
    assert (slow[:, :k] * signs - Q).abs().max() < 1e-10


def test_projector_error_equals_the_closed_form_and_nothing_beats_it():
    rng = np.random.default_rng(7)
    A = torch.from_numpy(rng.standard_normal((23, 17)))
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    for k in (1, 4, 17):
        P = U[:, :k] @ Vh[:k]
        direct = float(torch.linalg.matrix_norm(A - s[:k].mean() * P))
        assert d.equal_sv_projector_error(s, k) == pytest.approx(direct, rel=1e-12)
        best_c = minimize_scalar(lambda c: float(torch.linalg.matrix_norm(A - c * P)), bounds=(0, 10), method="bounded")
        assert best_c.x == pytest.approx(float(s[:k].mean()), rel=1e-4)
        for seed in range(50):
            Ur = torch.from_numpy(ortho_group.rvs(23, random_state=seed)[:, :k])
            Vr = torch.from_numpy(ortho_group.rvs(17, random_state=seed + 100)[:, :k])
            Pr = Ur @ Vr.T
            c = max(float((A * Pr).sum()) / k, 0.0)
            assert float(torch.linalg.matrix_norm(A - c * Pr)) >= d.equal_sv_projector_error(s, k) - 1e-12
    assert d.equal_sv_projector_error(s, 17) ** 2 == pytest.approx(float(((s - s.mean()) ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize("m, n", [(30, 18), (18, 30)])
def test_fitted_householder_projector_reaches_the_bound_from_above(m, n):
    A, _, _ = planted(m, n, np.array([10.0, 9.0, 8.0, 2.0, 1.0, 0.5]), seed=11)
    s = torch.linalg.svdvals(A)
    fit = d.fit_householder_projector(A, 3, seed=0, iters=80)
    bound = d.equal_sv_projector_error(s, 3)
    assert fit["error"] >= bound * (1 - 1e-12)
    assert fit["error"] <= bound * (1 + 1e-4)
    assert fit["U"].shape == (m, 3) and fit["V"].shape == (n, 3)
    assert (fit["U"].T @ fit["U"] - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-5
    assert fit["c"] == pytest.approx(float(s[:3].mean()), rel=1e-3)
    # From a random start the objective climbs from near zero.
    assert fit["traces"][0] < 0.5 * float(s[:3].sum()) < fit["traces"][-1]


# ---------------------------------------------------------------------------------------
# Models: tiny checkpoints


@pytest.fixture
def tiny_llama(tmp_path):
    """A random 1-layer llama saved as an HF folder, with a word-level tokenizer."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval().save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(62)} | {"<unk>": 62, "</s>": 63}
    words = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    return models.load(str(folder))


@pytest.fixture
def state_dict_file(tmp_path):
    """A bare safetensors file: a rank-3 matrix, a full-rank one with very uneven rows, a bias."""
    A, _, _ = planted(32, 16, np.array([6.0, 4.0, 2.0]), seed=5)
    rng = np.random.default_rng(2)
    uneven = rng.standard_normal((24, 16)) * rng.uniform(0.05, 20.0, size=(24, 1))
    path = tmp_path / "w.safetensors"
    save_file({
        "layers.0.fc1.weight": A.to(torch.float32), "layers.0.fc1.bias": torch.zeros(32),
        "layers.0.fc2.weight": torch.from_numpy(uneven).to(torch.float32),
        "layers.0.fc3.weight": torch.randn(24, 20),
    }, path)
    return models.load(str(path))


def test_hook_adds_exactly_alpha_v_at_the_chosen_layer_only(tiny_llama):
    model = tiny_llama.module()
    mats = d.load_matrices(tiny_llama, ["model.layers.0.mlp.down_proj.weight"])
    sites, note = d.edit_sites(model, mats)
    assert [s.path for s in sites] == ["model.layers.0.mlp.down_proj"] and "input of model.layers.0.mlp.down_proj" in note
    ids = torch.tensor([[1, 5, 9, 2]])
    watched = {name: model.get_submodule(name) for name in ("model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj")}

    def capture(store):
        return [m.register_forward_pre_hook(lambda mod, args, n=n: store.__setitem__(n, args[0].clone()))
                for n, m in watched.items()]

    plain: dict = {}
    handles = capture(plain)
    with torch.no_grad():
        base = model(input_ids=ids).logits
    for h in handles:
        h.remove()
    v = torch.randn(TINY_LLAMA["intermediate_size"])
    alpha = 0.75
    moved: dict = {}
    with d.shifted(sites, alpha * v):
        handles = capture(moved)  # registered after the shift, so it sees the shifted input
        with torch.no_grad():
            shifted_logits = model(input_ids=ids).logits
        for h in handles:
            h.remove()
    assert torch.equal(moved["model.layers.0.mlp.down_proj"], plain["model.layers.0.mlp.down_proj"] + alpha * v)
    assert torch.equal(moved["model.layers.0.mlp.up_proj"], plain["model.layers.0.mlp.up_proj"])
    assert not torch.allclose(shifted_logits, base)
    # Adding alpha W v to the layer's output instead is the same edit by linearity.
    W = watched["model.layers.0.mlp.down_proj"].weight
    h = watched["model.layers.0.mlp.down_proj"].register_forward_hook(lambda m, a, out: out + alpha * (W @ v))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    h.remove()
    torch.testing.assert_close(shifted_logits, reference, atol=1e-5, rtol=1e-5)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_hooks_are_removed_when_the_forward_pass_or_generation_raises(tiny_llama):
    model = tiny_llama.module()
    sites, _ = d.edit_sites(model, d.load_matrices(tiny_llama, ["model.layers.0.self_attn.q_proj.weight"]))
    delta = torch.ones(TINY_LLAMA["hidden_size"])
    with pytest.raises(IndexError):
        with d.shifted(sites, delta):
            model(input_ids=torch.tensor([[1, 999]]))  # token id outside the vocabulary
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError):
        with d.shifted(sites, delta):
            model.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=-3)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_embedding_and_fused_sites():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=16)).eval()
    state = model.state_dict()
    mats = []
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.wte.weight"):
        found, _ = models.matrices.classify(name, state[name], model_type="gpt2", num_heads=4)
        mats += found
    by_name = {m.name: m for m in mats}
    sites, note = d.edit_sites(model, [by_name["transformer.h.0.attn.c_attn.weight:q"], by_name["transformer.h.0.attn.c_attn.weight:k"]])
    assert [s.path for s in sites] == ["transformer.h.0.attn.c_attn"]  # one shared input, added once
    assert "q, k and v share" in note
    sites, note = d.edit_sites(model, [by_name["transformer.wte.weight"]])
    assert sites[0].where == "output" and "embedding table" in note
    ids = torch.tensor([[3, 4, 5]])
    v = torch.randn(32)
    with torch.no_grad():
        plain = model.transformer.wte(ids)
        with d.shifted(sites, 2.0 * v):
            moved = model.transformer.wte(ids)
    assert torch.equal(moved, plain + 2.0 * v)


def test_run_on_a_tiny_language_model(tiny_llama):
    params = {"matrices": ["model.layers.0.mlp.down_proj.weight"], "k": 4, "alphas": [-1.0, 0.5], "traverse": [1, 3],
              "gen_tokens": 3, "fit_iters": 40, "prompts": ["w1 w2 w3", "w4 w5"]}
    result = d.run(tiny_llama, params)
    assert result.params["alphas"] == [-1.0, 0.0, 0.5]  # alpha = 0 is always there
    rows = result.traversal["rows"]
    assert [(r["direction"], r["alpha"]) for r in rows] == [(1, -1.0), (1, 0.0), (1, 0.5), (3, -1.0), (3, 0.0), (3, 0.5)]
    for r in rows:
        if r["alpha"] == 0:
            assert r["kl"] == 0.0 and r["promoted"] == ""
        else:
            assert r["kl"] > 0 and r["kl_per_alpha2"] == pytest.approx(r["kl"] / r["alpha"] ** 2)
            assert len(r["promoted"].split(" | ")) == 5
        assert r["alpha_abs"] == pytest.approx(r["alpha"] * result.traversal["scale"])
        assert len(r["generation"].split()) == 3
    assert result.readout["available"] and "W v" in result.readout["vector"]
    assert all(len(row["top_tokens"].split(" | ")) == 5 for row in result.directions)
    frame = result.to_frame()
    assert list(frame["index"]) == [1, 2, 3, 4]
    assert frame["eig_AtA_raw"].is_monotonic_decreasing and frame["eig_AtA_rownorm"].is_monotonic_decreasing
    assert set(frame["readout_of"]) == {"raw"}  # the default reads out the paper's closed form
    assert result.householder["rebuild_error_full"] < 1e-12 and result.householder["rebuild_error_k"] < 1e-12
    assert np.abs(np.asarray(result.gram_minus_identity)).max() < 1e-12
    # The report round trip keeps every field.
    back = d.DirectionsResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.to_dict() == result.to_dict()
    assert set(result.tables()) == {"directions", "directions_spectrum", "directions_projector", "directions_traversal"}


def test_traversal_kl_matches_an_independent_output_edit(tiny_llama):
    model = tiny_llama.module()
    mats = d.load_matrices(tiny_llama, ["model.layers.0.mlp.down_proj.weight"])
    sites, _ = d.edit_sites(model, mats)
    _, N = d.sefa(d.stacked(mats), 2, normalize=True)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    with torch.no_grad():
        rows = d.lm_traversal(model, sites, N, [1], [0.0, 0.8], 2.0, prompts, gen_tokens=0, top=3,
                              decode=lambda t: " ".join(map(str, t)), eos=63)
        W = model.get_submodule("model.layers.0.mlp.down_proj").weight
        delta = (0.8 * 2.0) * (W.to(torch.float64) @ N[:, 1]).to(torch.float32)
        expected = []
        for p in prompts:
            base = torch.log_softmax(model(input_ids=p[None]).logits[0, -1].double(), -1)
            h = model.get_submodule("model.layers.0.mlp.down_proj").register_forward_hook(lambda m, a, o: o + delta)
            moved = torch.log_softmax(model(input_ids=p[None]).logits[0, -1].double(), -1)
            h.remove()
            expected.append(float((base.exp() * (base - moved)).sum()))
    assert rows[1]["kl"] == pytest.approx(np.mean(expected), rel=1e-3)


def test_state_dict_run_covers_the_weights_and_says_why_there_is_no_traversal(state_dict_file):
    result = d.run(state_dict_file, {"matrices": ["layers.0.fc2.weight"], "k": 4, "fit_iters": 20})
    assert not result.readout["available"] and "not 'state-dict' models" in result.readout["reason"]
    assert not result.traversal["available"]
    # The default is the closed form: right singular vectors, whose outputs are orthogonal.
    assert result.chosen == "raw" and result.params["normalize"] is False
    off = np.asarray(result.crosstalk_cos)[~np.eye(4, dtype=bool)]
    assert np.abs(np.asarray(result.gram_minus_identity)).max() < 1e-12 and np.abs(off).max() < 1e-10
    # The genforce directions are orthonormal too, but their outputs are not: cross-talk appears.
    normed = d.run(state_dict_file, {"matrices": ["layers.0.fc2.weight"], "k": 4, "normalize": True, "fit_iters": 0})
    assert normed.chosen == "rownorm" and {r["readout_of"] for r in normed.directions} == {"rownorm"}
    off = np.asarray(normed.crosstalk_cos)[~np.eye(4, dtype=bool)]
    assert np.abs(np.asarray(normed.gram_minus_identity)).max() < 1e-12 and np.abs(off).max() > 1e-3
    # Both variants are kept whichever one is read out, and agree between the two runs.
    for variant in d.VARIANTS:
        for key, value in result.variants[variant].items():
            assert normed.variants[variant][key] == (pytest.approx(value, abs=1e-10) if key != "matrix" else value)
    assert normed.to_frame().drop(columns="readout_of").equals(result.to_frame().drop(columns="readout_of"))


def test_both_variants_against_numpy(state_dict_file):
    """Rows of very different lengths: each column against an independent numpy computation."""
    result = d.run(state_dict_file, {"matrices": ["layers.0.fc2.weight"], "k": 5, "fit_iters": 0})
    (weight,) = state_dict_file.iter_matrices(names={"layers.0.fc2.weight"})
    A = weight.tensor.double().numpy()
    R = A / np.linalg.norm(A, axis=1, keepdims=True)
    frame = result.to_frame()
    for name, M in (("raw", A), ("rownorm", R)):
        lam, vecs = np.linalg.eigh(M.T @ M)
        lam, vecs = lam[::-1], vecs[:, ::-1]
        np.testing.assert_allclose(frame[f"eig_AtA_{name}"], lam[:5], rtol=1e-10)
        np.testing.assert_allclose(frame[f"explained_{name}"], lam[:5] / np.trace(M.T @ M), rtol=1e-10)
        np.testing.assert_allclose(frame[f"eigengap_{name}"], (lam[:5] - lam[1:6]) / lam[:5], rtol=1e-8, atol=1e-12)
        threshold = math.sqrt(2 / A.shape[0])
        gap = (lam[:5] - lam[1:6]) / lam[:5] > threshold
        assert list(frame[f"resolved_{name}"]) == [bool(gap[i] and (i == 0 or gap[i - 1])) for i in range(5)]
        if name == "raw":
            np.testing.assert_allclose(frame["sv_raw"], np.linalg.svd(A, compute_uv=False)[:5], rtol=1e-12)
            raw = vecs[:, :5]
        else:
            rownorm = vecs[:, :5]
    cos = np.abs(rownorm.T @ np.linalg.svd(A, full_matrices=False)[2].T)
    np.testing.assert_allclose(np.asarray(result.rownorm_vs_raw), cos[:, :5], atol=1e-8)
    np.testing.assert_allclose(frame["cos_rownorm_raw"], np.diag(cos), atol=1e-8)
    assert list(frame["best_raw_match"]) == list(cos.argmax(axis=1) + 1)
    expected = np.sort(np.cos(subspace_angles(rownorm, raw)))[::-1]
    np.testing.assert_allclose(result.principal_cosines, expected, atol=1e-8)
    assert result.subspace_overlap == pytest.approx(np.linalg.norm(rownorm.T @ raw) ** 2 / 5, abs=1e-10)
    # Uneven rows move the genforce directions away from the closed form.
    assert result.subspace_overlap < 0.99


def test_planted_singular_values_come_back_and_resolved_spectra_lead_per_direction(tmp_path):
    s = np.array([9.0, 7.0, 5.0, 3.0, 2.0, 1.0])
    handle, V = equal_row_norm_file(tmp_path / "p.safetensors", s)
    for normalize in (False, True):
        result = d.run(handle, {"matrices": ["layers.0.fc1.weight"], "k": 3, "normalize": normalize, "fit_iters": 0})
        frame = result.to_frame()
        np.testing.assert_allclose(frame["sv_raw"], s[:3], rtol=1e-13)
        np.testing.assert_allclose(frame["eig_AtA_raw"], s[:3] ** 2, rtol=1e-13)
        np.testing.assert_allclose(frame["eig_AtA_rownorm"], s[:3] ** 2 * 32 / np.sum(s**2), rtol=1e-12)
        np.testing.assert_allclose(frame["eigengap_raw"], (s[:3] ** 2 - s[1:4] ** 2) / s[:3] ** 2, rtol=1e-12)
        np.testing.assert_allclose(frame["eigengap_rownorm"], frame["eigengap_raw"], rtol=1e-10)
        np.testing.assert_allclose(frame["cos_rownorm_raw"], 1.0, atol=1e-10)
        # Relative gaps 0.40, 0.49, 0.64 against sqrt(2/32) = 0.25: every direction stands alone.
        assert result.degeneracy["threshold"] == pytest.approx(0.25)
        assert frame["resolved_raw"].all() and frame["resolved_rownorm"].all()
        assert not result.degeneracy["near_degenerate"] and result.degeneracy["headline"] == "per_direction"
        assert result.degeneracy["nearest_resolved_k"] == 3
        assert "all 3 directions resolved" in d.headline(result)
        chosen = d.sefa(d.stacked(d.load_matrices(handle, ["layers.0.fc1.weight"])), 3, normalize)[1]
        np.testing.assert_allclose(np.abs(np.sum(chosen.numpy() * V[:, :3], axis=0)), 1.0, atol=1e-10)
        assert [f.layout.title.text.split("<br>")[0] for f in charts.comparison(result)] == [
            "Directions: rownorm (genforce) against raw (A^T A)", "Top-3 subspaces, rownorm against raw: overlap 1.0000"]


@pytest.mark.parametrize("s, k, unresolved, boundary, nearest", [
    # Three equal singular values: no single direction is defined, their 3-dimensional span is.
    ([6.0, 6.0, 6.0, 3.0, 1.0], 3, [1, 2, 3], True, 3),
    # Cutting through the cluster leaves even the top-k subspace undefined; k = 3 closes it.
    ([6.0, 6.0, 6.0, 3.0, 1.0], 2, [1, 2], False, 3),
    # Not equal, but 34.81 vs 36 is a relative gap of 0.033, within sqrt(2/32) = 0.25.
    ([6.0, 5.9, 3.0, 1.0], 3, [1, 2], True, 3),
])
def test_near_degenerate_spectra_lead_with_the_subspace_overlap(tmp_path, s, k, unresolved, boundary, nearest):
    s = np.asarray(s)
    handle, V = equal_row_norm_file(tmp_path / "p.safetensors", s)
    result = d.run(handle, {"matrices": ["layers.0.fc1.weight"], "k": k, "fit_iters": 0})
    lam = s**2
    expected_gaps = (lam - np.append(lam[1:], 0.0)) / lam
    for variant in d.VARIANTS:
        np.testing.assert_allclose(result.variants[variant]["eigengaps"], expected_gaps[:k], atol=1e-12)
        assert result.variants[variant]["unresolved"] == unresolved
        assert result.variants[variant]["boundary_resolved"] is boundary
    assert result.degeneracy["near_degenerate"] and result.degeneracy["headline"] == "subspace_overlap"
    assert result.degeneracy["nearest_resolved_k"] == nearest
    text = d.headline(result)
    assert text.startswith(f"SeFa: near-degenerate spectrum, so the headline is the top-{k} subspace overlap")
    assert ("not well defined: k = 3 is the nearest" in text) is (not boundary)
    # The raw top-k subspace is the planted one whenever its boundary is resolved, however the cluster
    # is split into vectors; equal row norms make the genforce subspace the same.
    N = d.sefa(d.stacked(d.load_matrices(handle, ["layers.0.fc1.weight"])), k, False)[1].numpy()
    if boundary:
        np.testing.assert_allclose(N @ N.T, V[:, :k] @ V[:, :k].T, atol=1e-10)
        assert result.subspace_overlap == pytest.approx(1.0, abs=1e-10)
        np.testing.assert_allclose(result.principal_cosines, 1.0, atol=1e-10)
    else:
        # An arbitrary plane inside the planted 3-dimensional cluster: only its home is determined.
        V3 = V[:, :3]
        assert np.abs(N - V3 @ (V3.T @ N)).max() < 1e-10
    titles = [f.layout.title.text.split("<br>")[0] for f in charts.figures(result)]
    assert titles[2].startswith(f"Top-{k} subspaces") and titles[3].startswith("Directions: rownorm")


def test_a_degenerate_genforce_spectrum_alone_switches_the_headline(tmp_path):
    # R has unit rows and a planted triple eigenvalue; A = D R scales its rows unequally, so
    # diag(1/||a_r||) A is exactly R while A^T A = R^T D^2 R spreads the cluster apart.
    s = np.array([6.0, 6.0, 6.0, 3.0, 1.0])
    R = (hadamard(32)[:, :5] / np.sqrt(32) * s) @ ortho_group.rvs(16, random_state=1)[:, :5].T
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    A = np.geomspace(0.1, 10, 32)[:, None] * R
    save_file({"layers.0.fc1.weight": torch.from_numpy(A)}, tmp_path / "scaled.safetensors")
    result = d.run(models.load(str(tmp_path / "scaled.safetensors")), {"matrices": ["layers.0.fc1.weight"], "k": 3,
                                                                       "fit_iters": 0})
    np.testing.assert_allclose(result.variants["rownorm"]["eigenvalues"], s[:3] ** 2 * 32 / np.sum(s**2), rtol=1e-12)
    lam = np.linalg.eigvalsh(A.T @ A)[::-1]
    raw_gaps = (lam[:3] - lam[1:4]) / lam[:3]
    np.testing.assert_allclose(result.variants["raw"]["eigengaps"], raw_gaps, rtol=1e-8)
    assert raw_gaps.min() > 0.25  # sqrt(2/32): the closed form alone would be compared direction by direction
    assert result.variants["raw"]["unresolved"] == [] and result.variants["rownorm"]["unresolved"] == [1, 2, 3]
    assert result.degeneracy["near_degenerate"] and result.degeneracy["headline"] == "subspace_overlap"
    assert "(unresolved directions: rownorm 1, 2, 3;" in d.headline(result)


def test_stacking_concatenates_rows_as_sefa_does(state_dict_file):
    mats = d.load_matrices(state_dict_file, ["layers.0.fc2.weight", "layers.0.fc1.weight"])
    A = d.stacked(mats)
    assert A.shape == (24 + 32, 16)
    torch.testing.assert_close(A.T @ A, sum(m.tensor.double().T @ m.tensor.double() for m in mats))


@pytest.mark.parametrize("params, phrase", [
    ({"matrices": ["layers.0.fc1.bias"]}, "is a 1-D tensor of shape (32,)"),
    ({"matrices": ["layers.0.fc1.weigth"]}, "no weight matrix named 'layers.0.fc1.weigth'"),
    ({"matrices": ["layers.0.fc1.weigth"]}, "Did you mean layers.0.fc1.weight"),
    ({"matrices": ["layers.0.fc1.weight"], "k": 4}, "k=4 is larger than the rank of layers.0.fc1.weight (3"),
    ({"matrices": ["layers.0.fc1.weight", "layers.0.fc3.weight"]}, "must share their input width"),
    ({"matrices": ["layers.0.fc2.weight"], "k": 3, "traverse": [4]}, "traverse names directions [4]"),
    ({"matrices": ["layers.0.fc2.weight"], "k": 0}, "k must be at least 1"),
    ({"matrices": ["layers.0.fc2.weight"], "alphas": [math.inf]}, "alphas must be finite"),
])
def test_bad_input_is_refused_with_a_specific_message(state_dict_file, params, phrase):
    with pytest.raises(OrthoscopeError) as exc:
        d.run(state_dict_file, params)
    assert phrase in str(exc.value)


@pytest.mark.parametrize("bad, phrase", [(math.nan, "1 NaN"), (math.inf, "1 infinite")])
def test_a_matrix_with_non_finite_weights_is_refused_in_one_line_not_an_svd_failure(bad, phrase, tmp_path):
    w = torch.randn(40, 20)
    w[3, 4] = bad
    path = tmp_path / "m.safetensors"
    save_file({"layers.0.mlp.down_proj.weight": w, "layers.0.mlp.up_proj.weight": torch.randn(20, 40)}, path)
    with pytest.raises(OrthoscopeError, match=f"{phrase} weight.*not finite"):
        d.run(models.load(str(path)), {"matrices": ["layers.0.mlp.down_proj.weight"], "k": 2, "traverse": []})
