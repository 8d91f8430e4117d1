"""The cylindrical steering diagnostic: geometry on planted data, the protocols on a planted toy,
the hook and the scores against full forward passes, inputs, runs, and SmolLM2 against its null.

Every reference here is computed independently of diagnostics/steering.py: numpy on planted
cylinders, a linear read-out as a toy model whose steering response is known, and full forward
passes (with our own hooks) on a tiny random llama for activations, window scores, continuations
and neutral likelihoods; scipy for the interval and test formulas.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

import models
import reports
from diagnostics import steering, steering_data
from models import OrthoscopeError

TINY_PARAMS = dict(strengths=[1.0, 2.0, 4.0], penalties=[0.0, 1.0], sectors=4, max_heldout=2, window=3,
                   gen_tokens=3, neutral_sentences=2, boot=50)


# --- planted data ----------------------------------------------------------------------------------

def planted(n=400, d=64, seed=0, c=(2.0, 4.0), r=(0.5, 1.5), noise=0.005):
    """D = c_i a + r_i (cos psi_i e1 + sin psi_i e2) + noise, with (psi, r, c) repeated at psi + pi so
    that the planar part has mean exactly zero and the axis is mean(c) a up to the noise."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    a, e1, e2 = Q.T
    half = n // 2
    psi = rng.uniform(0, 2 * np.pi, half)
    psi = np.r_[psi, psi + np.pi] % (2 * np.pi)
    rr = np.tile(rng.uniform(*r, half), 2)
    cc = np.tile(rng.uniform(*c, half), 2)
    D = cc[:, None] * a + rr[:, None] * (np.cos(psi)[:, None] * e1 + np.sin(psi)[:, None] * e2)
    D += noise * rng.standard_normal(D.shape)
    return dict(D=D, a=a, e1=e1, e2=e2, psi=psi, r=rr, c=cc)


def circular_fit(phi, psi):
    """(sign, offset, resultant length) of the best relation phi = sign * psi + offset (mod 2 pi)."""
    best = None
    for sign in (1, -1):
        z = np.mean(np.exp(1j * (phi - sign * psi)))
        if best is None or abs(z) > best[2]:
            best = (sign, float(np.angle(z)), float(abs(z)))
    return best


# --- 1. the cylinder on planted data -------------------------------------------------------------------

def test_cylinder_recovers_planted_axis_plane_angles_and_sectors():
    P = planted()
    K = 8
    cyl = steering.cylinder(P["D"], K)
    D = P["D"]

    assert float(cyl["a_hat"] @ P["a"]) > 0.99
    assert np.allclose(cyl["axis"], D.mean(0))
    assert cyl["axis_norm"] == pytest.approx(np.linalg.norm(D.mean(0)))
    assert np.allclose(cyl["norms"], np.linalg.norm(D, axis=1))
    # cos(theta_i) against the planted geometry: c_i / sqrt(c_i^2 + r_i^2)
    assert np.allclose(cyl["cos_theta"], P["c"] / np.hypot(P["c"], P["r"]), atol=0.01)
    # normal components: orthogonal to the axis, mean zero, lengths r_i
    assert np.abs(cyl["normal"] @ cyl["a_hat"]).max() < 1e-10
    assert np.linalg.norm(cyl["normal"].mean(0)) < 1e-10
    assert np.allclose(cyl["normal_norms"], P["r"], atol=0.05)
    assert cyl["normal_spread"] == pytest.approx(np.sqrt(np.mean(P["r"] ** 2)), rel=0.02)

    # the plane: basis orthonormal, spanning span(e1, e2); two PCs explain ~everything
    B = cyl["basis"]
    assert B.shape == (2, 64)
    assert np.allclose(B @ B.T, np.eye(2), atol=1e-10)
    E = np.stack([P["e1"], P["e2"]])
    assert np.linalg.norm(B @ E.T) ** 2 / 2 > 0.99
    assert sum(cyl["explained"]) > 0.99
    assert np.allclose(cyl["coords"], cyl["normal"] @ B.T)
    # sign convention: the triple with the largest |coordinate| on each basis vector has a positive one
    for k in range(2):
        col = cyl["coords"][:, k]
        assert col[np.argmax(np.abs(col))] > 0

    # angles: phi = +-psi + const (mod 2 pi); sectors follow from phi
    phi = cyl["phi"]
    assert np.all((phi >= 0) & (phi < 2 * np.pi))
    assert np.allclose(phi, np.mod(np.arctan2(cyl["coords"][:, 1], cyl["coords"][:, 0]), 2 * np.pi))
    sign, offset, length = circular_fit(phi, P["psi"])
    assert length > 0.999
    assert np.allclose(cyl["sector"], np.floor(phi / (2 * np.pi / K)).astype(int))
    assert set(np.unique(cyl["sector"])) == set(range(K))


def test_held_out_triples_are_placed_on_the_fit_cylinder():
    P = planted(n=400, seed=7)
    fit, held = np.arange(0, 400, 2), np.arange(1, 400, 2)  # mirrored pairs (i, i + 200) stay together
    cyl = steering.cylinder(P["D"][fit], 8)
    placed = steering.project(cyl, P["D"][held])
    # the same geometry the planted data has
    assert np.allclose(placed["cos_theta"], P["c"][held] / np.hypot(P["c"][held], P["r"][held]), atol=0.01)
    assert np.allclose(placed["normal_norms"], P["r"][held], atol=0.05)
    assert np.abs(placed["normal"] @ cyl["a_hat"]).max() < 1e-10
    assert np.allclose(placed["coords"], placed["normal"] @ cyl["basis"].T)
    sign, _, length = circular_fit(placed["phi"], P["psi"][held])
    assert length > 0.999
    assert np.allclose(placed["sector"], np.floor(placed["phi"] / (2 * np.pi / 8)).astype(int))


# --- 2. baselines -------------------------------------------------------------------------------------

def _unit(v):
    return v / np.linalg.norm(v)


def test_baselines_agree_with_the_axis_when_it_dominates():
    P = planted(n=200, seed=2, c=(4.0, 6.0), r=(0.3, 0.8))
    rng = np.random.default_rng(3)
    negative = rng.standard_normal(P["D"].shape) * 0.5 + rng.standard_normal(P["D"].shape[1])
    positive = negative + P["D"]
    a_hat = steering.cylinder(P["D"], 8)["a_hat"]
    names, C, extra = steering.baselines(P["D"], positive, negative, a_hat)
    assert names[0].startswith("axis") and len(names) == 4
    assert C.shape == (4, 4)
    assert np.allclose(C, C.T) and np.allclose(np.diag(C), 1)
    assert C[0, 1] >= 0 and C[0, 2] >= 0
    # independent references: numpy SVDs, sign-aligned with the axis
    unc = np.linalg.svd(P["D"])[2][0]
    cen = np.linalg.svd(P["D"] - P["D"].mean(0))[2][0]
    assert C[0, 1] == pytest.approx(abs(unc @ a_hat), abs=1e-9)
    assert C[0, 2] == pytest.approx(abs(cen @ a_hat), abs=1e-9)
    assert C[1, 2] == pytest.approx(abs(unc @ cen), abs=1e-9)
    assert C[0, 1] > 0.99 and abs(unc @ P["a"]) > 0.99
    assert C[0, 3] > 0.9, f"probe vs axis cosine {C[0, 3]:.3f}"
    assert extra["train_accuracy"] == 1.0


def test_baselines_align_a_flipped_principal_direction():
    P = planted(n=100, seed=4)
    a_hat = steering.cylinder(P["D"], 8)["a_hat"]
    rng = np.random.default_rng(5)
    neg = rng.standard_normal(P["D"].shape)
    # hand it the opposite axis: every principal direction must turn to agree with it
    _, C, _ = steering.baselines(P["D"], neg + P["D"], neg, -a_hat)
    assert C[0, 1] > 0.99 and C[0, 2] >= 0


def test_baselines_return_the_steered_unit_directions():
    P = planted(n=120, seed=8)
    rng = np.random.default_rng(9)
    neg = rng.standard_normal(P["D"].shape)
    a_hat = steering.cylinder(P["D"], 8)["a_hat"]
    names, C, extra = steering.baselines(P["D"], neg + P["D"], neg, a_hat)
    pc1, probe = extra["directions"]["pc1"], extra["directions"]["probe"]
    assert np.linalg.norm(pc1) == pytest.approx(1) and np.linalg.norm(probe) == pytest.approx(1)
    assert float(pc1 @ a_hat) == pytest.approx(C[0, 2]) and float(probe @ a_hat) == pytest.approx(C[0, 3])


# --- 3. steering vectors and intervals ------------------------------------------------------------------

def test_self_vectors_match_direct_numpy():
    P = planted(n=60, seed=6, c=(0.5, 2.0), r=(0.5, 2.0), noise=0.05)
    D = P["D"]
    cyl = steering.cylinder(D, 8)
    a_hat = _unit(D.mean(0))
    rows = np.array([0, 7, 33])
    S, Pen, m = [0.5, 3.0], [0.0, 0.25, 1.0], 1.7
    V = steering.self_vectors(cyl["a_hat"], cyl["cos_theta"][rows], cyl["normal"][rows], S, Pen, m)
    assert V.shape == (3, 2, 3, 64)
    for r, i in enumerate(rows):
        d_hat = _unit(D[i])
        cos_t = d_hat @ a_hat
        for si, s in enumerate(S):
            assert np.allclose(V[r, si, 0], s * m * d_hat, atol=1e-12)  # p = 0: the sample's own direction
            assert np.linalg.norm(V[r, si, 0]) == pytest.approx(s * m)
            assert np.allclose(V[r, si, 2], s * m * cos_t * a_hat, atol=1e-12)  # p = 1: the axis only
            assert np.allclose(V[r, si, 1], s * m * (cos_t * a_hat + 0.75 * (d_hat - cos_t * a_hat)), atol=1e-12)
    # a difference vector exactly on the axis: no normal part, no NaN
    D2 = np.vstack([np.eye(4)[0] * 2, np.eye(4)[0] * 2 + np.eye(4)[1], np.eye(4)[0] * 2 - np.eye(4)[1]])
    cyl2 = steering.cylinder(D2, 4)
    V2 = steering.self_vectors(cyl2["a_hat"], cyl2["cos_theta"][:1], cyl2["normal"][:1], [1.0], [0.0], 1.0)
    assert np.allclose(V2[0, 0, 0], np.eye(4)[0])


def test_axis_uncertainty_separates_a_planted_axis_from_noise():
    P = planted(n=80, seed=10, c=(2.0, 3.0), r=(0.5, 1.0), noise=0.05)
    u = steering.axis_uncertainty(P["D"][:60], P["D"][60:], boot=200, seed=0)
    assert u["split_half_cos"]["lo"] > 0.97
    # leave-one-out cosines by hand
    D = P["D"][:60]
    loo = [D[i] @ _unit(D.sum(0) - D[i]) / np.linalg.norm(D[i]) for i in range(60)]
    assert u["mean_cos_fit_loo"]["value"] == pytest.approx(np.mean(loo))
    held = [d @ _unit(D.mean(0)) / np.linalg.norm(d) for d in P["D"][60:]]
    assert u["mean_cos_heldout"]["value"] == pytest.approx(np.mean(held))
    for key in ("split_half_cos", "mean_cos_fit_loo", "mean_cos_heldout"):
        assert u[key]["lo"] <= u[key]["value"] <= u[key]["hi"]
    noise = np.random.default_rng(11).standard_normal((80, 64))
    n = steering.axis_uncertainty(noise[:60], noise[60:], boot=200, seed=0)
    # no shared axis: the halves disagree and a triple does not lean toward the others' mean
    assert abs(n["split_half_cos"]["value"]) < 0.4 and n["mean_cos_fit_loo"]["lo"] < 0.05 < u["mean_cos_fit_loo"]["lo"]
    # in-sample, the same noise would look aligned: each d_i pulls the axis toward itself
    assert np.mean(steering.cylinder(noise[:60], 4)["cos_theta"]) > n["mean_cos_fit_loo"]["value"] + 0.05


def test_wilson_and_fisher_match_scipy():
    from scipy.stats import binomtest, fisher_exact
    for k, n in ((0, 8), (3, 8), (8, 8), (17, 40)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert steering.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert all(math.isnan(x) for x in steering.wilson(0, 0))
    assert steering._more_mentions(1, 8, 0, 16) == pytest.approx(fisher_exact([[1, 7], [0, 16]], alternative="greater")[1])
    assert steering._more_mentions(1, 8, 0, 16) == pytest.approx(8 / 24)  # hypergeometric by hand
    assert steering._more_mentions(6, 8, 0, 16) < 0.001


# --- 4. the protocols on a planted toy --------------------------------------------------------------------

def _toy_frame(w, plan, held, mention_level, noise=0.0, seed=0):
    """A toy model whose concept score is the read-out <v, w> of the added vector plus measurement
    noise of a fixed size (so that a larger push clears the null more easily): scores, mentions and a
    perplexity that grows with |v|, for every planned row."""
    rng = np.random.default_rng(seed)
    records = []
    for r, i in enumerate(held):
        for desc, v in plan[r]:
            score = float(v @ w) + (noise * rng.standard_normal() if desc["kind"] != "unsteered" else 0.0)
            records.append({"sample": int(i), **desc, "norm": float(np.linalg.norm(v)), "concept_score": score,
                            "mentions": score > mention_level, "repetition": 0.0, "text": "",
                            "ppl_ratio": float(np.exp(np.linalg.norm(v) ** 2 / 400))})
    frame = pd.DataFrame(records)
    base = frame[frame["kind"] == "unsteered"].set_index("sample")["concept_score"]
    frame["gain"] = frame["concept_score"] - frame["sample"].map(base)
    return frame


def test_planted_toy_self_steering_ranks_samples_by_their_normal_component():
    """Plant a cylinder (axis a, plane e1, e2, constant |d|) and a read-out w = a + 1.5 e1: steering a
    sample along its own direction then gains s u (cos theta + 1.5 sin theta cos psi), so the
    self-steering table must rank samples by their planted normal component along e1, the axis
    must beat the random null of the same norm, and an orthogonal control must not."""
    P = planted(n=200, seed=12, c=(3.0, 3.0), r=(1.0, 1.0), noise=0.0)
    fit, held = np.arange(0, 200, 2), np.arange(1, 200, 2)
    cyl = steering.cylinder(P["D"][fit], 8)
    placed = steering.project(cyl, P["D"][held])
    assert float(cyl["a_hat"] @ P["a"]) > 0.999
    E = np.stack([P["e1"], P["e2"]])
    assert np.linalg.norm(cyl["basis"] @ E.T) ** 2 / 2 > 0.999
    e3 = np.linalg.qr(np.column_stack([P["a"], P["e1"], P["e2"], np.random.default_rng(0).standard_normal(64)]))[0][:, 3]
    params = steering.check_params({"strengths": [0.25, 0.5, 1.0, 2.0], "penalties": [0.0, 1.0], "null_draws": 4,
                                    "sectors": 8})
    directions = {"axis": cyl["a_hat"], "pc1": cyl["basis"][0], "probe": _unit(P["a"] + P["e1"]), "control": e3}
    count = 40
    plan = steering._steering_rows(cyl, placed, directions, params, cyl["axis_norm"], count)
    # rows per sample: unsteered, 4 s x 2 p self, 4 s x 2 p x 4 nulls, 4 s x 4 directions
    assert [len(rows) for rows in plan] == [1 + 8 + 32 + 16] * count
    for desc, v in plan[0]:
        if desc["kind"] == "random":
            own = steering.self_vectors(cyl["a_hat"], placed["cos_theta"][:1], placed["normal"][:1], [desc["s"]],
                                        [desc["p"]], cyl["axis_norm"])[0, 0, 0]
            assert np.linalg.norm(v) == pytest.approx(np.linalg.norm(own))  # the null has the steered vector's norm
    w = 0.3 * P["a"] + 1.5 * P["e1"]
    frame = _toy_frame(w, plan, held[:count], mention_level=3.0, noise=0.3)
    grid, dirs = steering.aggregate(frame, params["strengths"], params["penalties"], 100, 0)
    rows = steering.self_table(frame, held[:count], [""] * count, placed, params["strengths"], 0.0, grid)
    component = np.array([P["D"][i] @ P["e1"] for i in held[:count]])
    gains = np.array([r["gain_at_max"] for r in rows])
    assert spearmanr(gains, component)[0] > 0.95, "gain must rise with the planted normal component"
    need = np.array([r["min_strength"] for r in rows])
    need = np.where(np.isnan(need), np.inf, need)
    assert spearmanr(need, component)[0] < -0.6, "the strength needed must fall as the normal component grows"
    assert len(set(need)) >= 3
    assert component[np.isinf(need)].max() < component[need == need.min()].mean()
    order = np.argsort(component)
    assert np.isinf(need[order[:5]]).all() and (need[order[-5:]] <= 0.5).all()
    # the samples' sectors follow the planted angle (up to the plane's orientation)
    sign, _, length = circular_fit(np.radians([r["phi_deg"] for r in rows]), P["psi"][held[:count]])
    assert length > 0.999
    # a read-out along the axis: the axis direction beats its null at every strength, an orthogonal
    # control never does, and the random row is the null itself
    frame = _toy_frame(P["a"], plan, held[:count], mention_level=3.0)
    grid, dirs = steering.aggregate(frame, params["strengths"], params["penalties"], 100, 0)
    by = {(d["direction"], d["s"]): d for d in dirs}
    for s in params["strengths"]:
        assert by[("axis", s)]["reaching"] and by[("axis", s)]["concept_gain"] == pytest.approx(s * cyl["axis_norm"])
        assert not by[("control", s)]["reaching"] and abs(by[("control", s)]["concept_gain"]) < 1e-9
        assert by[("random", s)]["reaching"] is None
        null = frame[(frame["kind"] == "random") & np.isclose(frame["s"], s) & np.isclose(frame["p"], 0.0)]["gain"]
        assert by[("random", s)]["null_q95"] == pytest.approx(np.quantile(null, 0.95))
    cells = {(g["s"], g["p"]): g for g in grid}
    assert set(cells) == {(s, p) for s in params["strengths"] for p in (0.0, 1.0)}
    assert cells[(2.0, 1.0)]["concept_gain"] == pytest.approx(2 * cyl["axis_norm"] * np.mean(placed["cos_theta"][:count]))
    rows = steering.self_table(frame, held[:count], [""] * count, placed, params["strengths"], 0.0, grid)
    sectors = steering.sector_table(rows, 8)
    assert sum(r["count"] for r in sectors) == count
    best = int(np.nanargmax([r["mean_gain"] for r in sectors]))
    assert sectors[best]["mean_gain"] == pytest.approx(max(np.mean([r["gain_at_max"] for r in rows if r["sector"] == k])
                                                           for k in range(8) if any(r["sector"] == k for r in rows)))


def test_random_directions_do_not_reach_against_their_own_null():
    """Calibration: score a fresh random direction per (sample, strength) with the toy read-out; its
    mean gain stays inside the null's 95th percentile, however the seed falls."""
    P = planted(n=120, seed=13, noise=0.0)
    cyl = steering.cylinder(P["D"][:80], 4)
    placed = steering.project(cyl, P["D"][80:])
    w = P["a"] + P["e1"]
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        params = steering.check_params({"strengths": [1.0, 2.0], "penalties": [0.0], "null_draws": 3, "seed": seed})
        directions = {name: _unit(rng.standard_normal(64)) for name in ("axis", "pc1", "probe", "control")}
        plan = steering._steering_rows(cyl, placed, directions, params, 1.0, 40)
        frame = _toy_frame(w, plan, np.arange(80, 120), mention_level=1e9)
        _, dirs = steering.aggregate(frame, params["strengths"], params["penalties"], 50, seed)
        assert not any(d["reaching"] for d in dirs if d["direction"] != "random" and abs(d["concept_gain"]) < 0.05)


def test_headline_picks_the_best_coherent_axis_strength_and_says_when_text_is_untouched():
    def row(s, gain, null, ppl, k, n=8, direction=None):
        lo, hi = steering.wilson(k, n)
        out = {"s": s, "p": 0.0, "concept_gain": gain, "concept_gain_lo": gain - 0.1,
               "concept_gain_hi": gain + 0.1, "null_gain": null, "null_q95": null + 0.5, "ppl_ratio": ppl,
               "concept_rate": k / n, "concept_rate_lo": lo, "concept_rate_hi": hi, "null_rate": 0.0,
               "text_pvalue": steering._more_mentions(k, n, 0, 16)}
        return {"direction": direction, **out} if direction else out
    dirs = [row(2, 0.5, 0.0, 1.1, 0, direction="axis"), row(4, 1.5, 0.1, 1.4, 1, direction="axis"),
            row(8, 5.0, 0.2, 9.0, 8, direction="axis"), row(4, 9.0, 0.0, 1.0, 8, direction="probe")]
    grid = [row(4, 1.0, 0.0, 1.3, 0), row(8, 0.2, 0.0, 2.0, 2)]
    h = steering.headline(grid, dirs, 0.0)
    assert h["best_axis"]["s"] == 4  # s = 8 gains most but garbles the model (ppl 9x)
    assert h["best_self"]["s"] == 4 and h["settings_tested"] == 4 and h["alpha"] == pytest.approx(0.05 / 4)
    # the negative verdict quotes the highest rate among coherent settings, not the best-gain one's
    assert not h["concept_in_text"] and "beyond chance: the highest rate, with the self-steering at s = 8" in h["verdict"]
    assert "25% of continuations" in h["verdict"]
    h = steering.headline([row(4, 1.0, 0.0, 1.3, 6)], dirs, 0.0)
    assert h["concept_in_text"]
    assert h["verdict"].startswith("Steering puts the concept into the text: with the self-steering at s = 4, p = 0, 75%")
    # 3 of 8 against 0 of 16 would pass alone (p = 0.03) but not after Bonferroni over 3 settings
    h = steering.headline([row(4, 1.0, 0.0, 1.3, 3)], dirs, 0.0)
    assert steering._more_mentions(3, 8, 0, 16) < 0.05 and not h["concept_in_text"]
    h = steering.headline([row(4, 1.0, 0.0, 4.0, 6)], [row(2, 1.0, 0.0, 5.0, 8, direction="axis")], 0.0)
    assert h["best_axis"] is None and h["verdict"].startswith("No strength keeps")


# --- 5. text ---------------------------------------------------------------------------------------------

def test_word_pattern_matches_whole_words_in_any_case():
    pat = steering.word_pattern(["dog", " puppy", "bark"])
    assert pat.search("My Dog sleeps.") and pat.search("PUPPY!") and pat.search("a bark, then")
    assert not pat.search("hotdogs and dogma") and not pat.search("embarked") and not pat.search("")
    assert steering.repetition_rate("the door creaked open and the door creaked open and") == pytest.approx(1 - 5 / 8)  # 8 trigrams, 5 distinct
    assert steering.repetition_rate("one two three four") == 0.0 and steering.repetition_rate("hi") == 0.0


def test_concept_forms_cover_space_and_case_and_list_the_prefixes(tiny):
    tok = tiny[2]
    forms = steering.concept_forms(tok, ["dog", "puppy"])
    assert set(forms.texts) == {" dog", "dog", " Dog", "Dog", " puppy", "puppy", " Puppy", "Puppy"}
    assert all(forms.ids[k] == tuple(tok.encode(t, add_special_tokens=False)) for k, t in enumerate(forms.texts))
    prefixes = {f[:k] for f in forms.ids for k in range(1, len(f))}
    assert set(forms.nodes) == prefixes and [len(n) for n in forms.nodes] == sorted(len(n) for n in forms.nodes)
    assert " puppy" in forms.split and " dog" not in forms.split  # the fixture's tokenizer splits ' puppy'
    with pytest.raises(OrthoscopeError, match="at least one concept word"):
        steering.concept_forms(tok, ["  "])


# --- the tiny model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_chat_llama):
    handle = models.load(str(tiny_chat_llama), allowed_roots=[tiny_chat_llama.parent])
    return handle, handle.module(), handle.tokenizer()


@pytest.fixture(scope="module")
def tiny_run(tiny):
    return steering.run(tiny[0], dict(TINY_PARAMS))


# --- 6. the hook ---------------------------------------------------------------------------------------

def _hooks(blocks):
    """Our hooks on the blocks (forward and pre-forward). transformers installs its own
    output-capturing hooks the first time hidden states are asked for, so tests compare snapshots."""
    return [(dict(b._forward_hooks), dict(b._forward_pre_hooks)) for b in blocks]


@pytest.mark.parametrize("hook", ["input", "output"])
@pytest.mark.parametrize("tokens", ["all", "from_last"])
@pytest.mark.parametrize("per_row", [False, True])
def test_hook_adds_exactly_v_at_the_steered_positions(tiny, hook, tokens, per_row):
    """With output_hidden_states, hidden_states[L] is block L's input and hidden_states[L + 1] its output."""
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    L = 1
    ids = torch.tensor([tok.encode("My dog likes long walks.", add_special_tokens=False)[:6],
                        tok.encode("The sea was calm today.", add_special_tokens=False)[:6]])
    v = torch.randn((2, 32) if per_row else (32,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True)
        before = _hooks(blocks)
        with steering.steering_hook(blocks[L], v, hook=hook, tokens=tokens):
            steered = model(input_ids=ids, output_hidden_states=True)
    for i in range(L + 1):
        assert torch.equal(steered.hidden_states[i], base.hidden_states[i])
    vv = v.reshape(-1, 1, 32)
    if hook == "output":
        # transformers records hidden_states[L + 1] before later hooks run: read block L + 1's input
        seen = {}

        def keep(module, args, kwargs):
            seen["in"] = args[0].clone()

        handle = blocks[L + 1].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with torch.no_grad(), steering.steering_hook(blocks[L], v, hook=hook, tokens=tokens):
                model(input_ids=ids)
        finally:
            handle.remove()
        x = base.hidden_states[L + 1]
        expected = x + vv if tokens == "all" else torch.cat([x[:, :-1], x[:, -1:] + vv], 1)
        assert torch.allclose(seen["in"], expected, atol=1e-5)
    else:
        # the block must see its input plus v: feed that input by hand and compare the block's output
        x = base.hidden_states[L]
        shifted = x + vv if tokens == "all" else torch.cat([x[:, :-1], x[:, -1:] + vv], 1)
        handle = blocks[L].register_forward_pre_hook(lambda m, a, k: ((shifted, *a[1:]), k), with_kwargs=True)
        try:
            with torch.no_grad():
                expected = model(input_ids=ids, output_hidden_states=True).hidden_states[L + 1]
        finally:
            handle.remove()
        assert torch.allclose(steered.hidden_states[L + 1], expected, atol=1e-5)
    if tokens == "from_last":
        assert torch.allclose(steered.logits[:, :-1], base.logits[:, :-1], atol=1e-6)  # causal: earlier positions untouched
    assert not torch.allclose(steered.logits[:, -1], base.logits[:, -1])
    assert _hooks(blocks) == before


def test_hook_rejects_unknown_options_and_is_removed_when_the_pass_raises(tiny):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    before = _hooks(blocks)
    with pytest.raises(ValueError, match="tokens must be one of"):
        with steering.steering_hook(blocks[0], torch.zeros(32), tokens="first"):
            pass
    with pytest.raises(ValueError, match="hook must be 'input' or 'output'"):
        with steering.steering_hook(blocks[0], torch.zeros(32), hook="middle"):
            pass
    ids = torch.tensor([tok.encode("My dog", add_special_tokens=False)])
    for hook in ("input", "output"):
        with pytest.raises(RuntimeError):
            with steering.steering_hook(blocks[2], torch.zeros(33), hook=hook), torch.no_grad():  # wrong width
                model(input_ids=ids)
    assert _hooks(blocks) == before


# --- 7. activations --------------------------------------------------------------------------------------

@pytest.mark.parametrize("position, template, hook", [("last", "chat", "input"), ("mean", "chat", "output"),
                                                       ("mean", "plain", "input")])
def test_activations_equal_hidden_states(tiny, position, template, hook):
    _, model, tok = tiny
    triples = steering_data.builtin_triples("dogs")[:3]
    acts = steering.activations(model, tok, triples, position=position, template=template, hook=hook, batch_size=4)
    assert acts.positive.shape == (4, 3, 32) and acts.negative.shape == (4, 3, 32)
    assert acts.passes == 2
    for i, t in enumerate(triples):
        p_ids = steering.prompt_ids(tok, t["prompt"], template)
        for kind, got in (("positive", acts.positive), ("negative", acts.negative)):
            response = t[kind] if template == "chat" else " " + t[kind]
            r_ids = tok.encode(response, add_special_tokens=False)
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([p_ids + r_ids]), output_hidden_states=True).hidden_states
            for L in range(3):  # before the last block, whose output hidden_states gives after the final norm
                h = hs[L if hook == "input" else L + 1][0]
                ref = h[-1] if position == "last" else h[len(p_ids):].mean(0)
                np.testing.assert_allclose(got[L, i], ref.numpy(), atol=2e-5, rtol=1e-5)


# --- 8. scores against full forward passes -----------------------------------------------------------------

def _steered_logp(model, block, seq, v, hook, start):
    """log-softmax over a cache-free pass with v added from position ``start`` on."""
    def edit(h):
        add = torch.zeros_like(h)
        add[:, start:] = v
        return h + add
    handle = steering._on_block(block, hook, edit)
    try:
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0].double(), -1)
    finally:
        handle.remove()


@pytest.mark.parametrize("hook", ["input", "output"])
@pytest.mark.parametrize("tokens", ["all", "from_last"])
def test_window_scores_and_continuations_equal_full_passes(tiny, hook, tokens):
    """The packed window block (prefix nodes with a 4-D mask after the cached prompt) gives each
    form's whole-sequence probability at every slot; the cached greedy loop gives the same tokens
    as a cache-free loop."""
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    forms = steering.concept_forms(tok, ["dog", "puppy", "bark"])
    assert any(len(f) > 2 for f in forms.ids)  # three-piece forms exercise chained nodes
    prompt = steering.prompt_ids(tok, "Tell me about your day.", "chat")
    window = tok.encode("I went to the shops and", add_special_tokens=False)[:4]
    V = torch.randn(3, 32, generator=torch.Generator().manual_seed(4)) * 4
    eos = {tok.eos_token_id}
    st = steering.Steerer(model, blocks[1], forms, hook=hook, tokens=tokens, batch_size=2, eos_ids=eos)
    before = _hooks(blocks)
    scores, conts = st.prompt_rows(prompt, window, V, 5, 0.0, 0)
    assert _hooks(blocks) == before
    start = 0 if tokens == "all" else len(prompt) - 1
    for r in range(3):
        terms = []
        for t in range(len(window)):
            for f in forms.ids:
                lp = _steered_logp(model, blocks[1], prompt + window[:t] + list(f), V[r], hook, start)
                terms.append(sum(lp[len(prompt) + t + k - 1, f[k]] for k in range(len(f))))
        assert scores[r] == pytest.approx(float(torch.logsumexp(torch.stack(terms), 0)), abs=1e-4)
        ids = list(prompt)
        for _ in range(5):
            ids.append(int(_steered_logp(model, blocks[1], ids, V[r], hook, start)[-1].argmax()))
        expected = ids[len(prompt):]
        stop = next((k for k, i in enumerate(expected) if i in eos), len(expected))
        assert conts[r] == expected[:stop]
    assert np.ptp(scores) > 1e-3  # the vectors matter


def test_sampled_continuations_are_seeded(tiny):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    st = steering.Steerer(model, blocks[1], steering.concept_forms(tok, ["dog"]), hook="input", tokens="all",
                          batch_size=4, eos_ids=set())
    prompt = steering.prompt_ids(tok, "Tell me about your day.", "chat")
    V = torch.zeros(4, 32)
    a = st.prompt_rows(prompt, [], V, 8, 1.0, 7)[1]
    b = st.prompt_rows(prompt, [], V, 8, 1.0, 7)[1]
    c = st.prompt_rows(prompt, [], V, 8, 1.0, 8)[1]
    assert a == b and a != c and len({tuple(x) for x in a}) > 1


def test_neutral_nll_equals_per_sentence_references(tiny):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    L = 1
    sentences = [tok.encode(s, add_special_tokens=False) for s in steering_data.neutral_sentences()[:3]]
    assert len({len(s) for s in sentences}) > 1  # padding is exercised
    st = steering.Steerer(model, blocks[L], steering.concept_forms(tok, ["dog"]), hook="output", tokens="from_last",
                          batch_size=4, eos_ids=set())  # one vector per pass with 3 sentences
    V = torch.randn(3, 32, generator=torch.Generator().manual_seed(3)) * 2
    got = st.neutral_nll(sentences, V)
    got0 = st.neutral_nll(sentences, None)

    def ref(v):
        total, count = 0.0, 0
        for s in sentences:
            if v is None:
                with torch.no_grad():
                    logp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0].double(), -1)
            else:
                logp = _steered_logp(model, blocks[L], s, v, "output", 0)  # neutral text: every token steered
            total -= float(logp[:-1].gather(-1, torch.tensor(s[1:])[:, None]).sum())
            count += len(s) - 1
        return total / count

    np.testing.assert_allclose(got, [ref(v) for v in V], atol=1e-4)
    assert got0.shape == (1,) and got0[0] == pytest.approx(ref(None), abs=1e-4)


# --- 9. bad input ----------------------------------------------------------------------------------------

def test_encoder_is_refused(tiny_bert_folder):
    handle = models.load(str(tiny_bert_folder), allowed_roots=[tiny_bert_folder.parent])
    with pytest.raises(OrthoscopeError, match="is an encoder.*needs a causal language model"):
        steering.run(handle, {})


def test_identical_last_tokens_at_the_embedding_leave_no_axis(tiny):
    """Block 0's input is the token embedding; at the last token both responses of a triple end on
    '.', so every difference vector is zero: refused, not steered with zero vectors."""
    with pytest.raises(OrthoscopeError, match="average to zero, so there is no axis"):
        steering.run(tiny[0], dict(TINY_PARAMS, layer=0, hook="input", position="last"))


@pytest.mark.parametrize("layer", [4, -1, 2.0])
def test_layer_out_of_range(tiny, layer):
    with pytest.raises(OrthoscopeError, match=r"out of range: this model has 4 blocks, numbered 0 to 3"):
        steering.run(tiny[0], {"layer": layer})


def _csv(rows, header="prompt,positive,negative"):
    return (header + "\n" + "\n".join(",".join(r) for r in rows) + "\n").encode()


GOOD = [(f"Prompt {i}", f"I saw a dog {i}", f"I saw a cat {i}") for i in range(8)]


def test_parse_triples_accepts_good_csv_and_jsonl():
    assert len(steering_data.parse_triples(_csv(GOOD), "t.csv")) == 8
    jsonl = "\n".join(json.dumps(dict(zip(steering_data.FIELDS, r))) for r in GOOD).encode()
    assert steering_data.parse_triples(jsonl, "t.jsonl")[3] == dict(zip(steering_data.FIELDS, GOOD[3]))


def test_parse_triples_errors():
    rows = list(GOOD)
    rows[2] = ("Prompt 2", "  ", "I saw a cat")
    with pytest.raises(OrthoscopeError, match=r"t\.csv, row 3: the response with the concept is empty"):
        steering_data.parse_triples(_csv(rows), "t.csv")
    bad = [dict(zip(steering_data.FIELDS, r)) for r in GOOD]
    bad[4]["negative"] = ""
    with pytest.raises(OrthoscopeError, match=r"row 5: the response without the concept is empty"):
        steering_data.parse_triples("\n".join(json.dumps(b) for b in bad).encode(), "t.jsonl")
    with pytest.raises(OrthoscopeError, match=r"holds 7 triple\(s\); at least 8 are needed"):
        steering_data.parse_triples(_csv(GOOD[:7]), "t.csv")
    with pytest.raises(OrthoscopeError, match="not UTF-8"):
        steering_data.parse_triples(b"prompt,positive,negative\n\xff\xfe,a,b\n", "t.csv")
    with pytest.raises(OrthoscopeError, match=r"the first row lacks negative"):
        steering_data.parse_triples(_csv([r[:2] for r in GOOD], "prompt,positive"), "t.csv")
    rows = list(GOOD)
    rows[0] = ("Prompt", "same answer", " same answer ")
    with pytest.raises(OrthoscopeError, match=r"row 1: both responses are the same"):
        steering_data.parse_triples(_csv(rows), "t.csv")


def test_unknown_concept_and_missing_words(tiny):
    with pytest.raises(OrthoscopeError, match=r"no built-in concept 'cats'"):
        steering_data.builtin_triples("cats")
    with pytest.raises(OrthoscopeError, match=r"no built-in concept 'cats'"):
        steering.run(tiny[0], {"concept": "cats"})
    triples = steering_data.parse_triples(_csv(GOOD), "t.csv")
    with pytest.raises(OrthoscopeError, match=r"give the words that signal the concept 'cats'"):
        steering.run(tiny[0], {"concept": "cats"}, triples)


@pytest.mark.parametrize("params, message", [
    ({"strengths": [1.0, -2.0]}, "strengths must be positive"),
    ({"strengths": []}, "strengths must be positive"),
    ({"penalties": [0.0, 1.5]}, "penalties must be numbers from 0"),
    ({"sectors": 1}, "sectors must be a whole number from 2 to 36, got 1"),
    ({"position": "first"}, "unknown token position 'first'"),
    ({"template": "xml"}, "unknown prompt template 'xml'"),
    ({"unit": "nats"}, "unknown strength unit 'nats'"),
    ({"steer_tokens": "some"}, "unknown choice of steered tokens 'some'"),
    ({"hook": "middle"}, "unknown layer convention 'middle'"),
    ({"heldout_fraction": 1.0}, "held-out fraction"),
    ({"null_draws": 0}, "null_draws must be a whole number from 1 to 16"),
    ({"window": 33}, "window must be a whole number from 1 to 32"),
    ({"gen_tokens": 65}, "gen_tokens must be a whole number from 1 to 64"),
    ({"temperature": -1}, "temperature must be from 0"),
    ({"control": "cats"}, "no built-in concept 'cats' to use as the control"),
    ({"threshold": 1.0}, "unknown steering setting"),
    ({"tokens": "dog"}, "must be a list of words"),
])
def test_check_params_errors(params, message):
    with pytest.raises(OrthoscopeError, match=message):
        steering.check_params(params, 4)


def test_check_params_defaults_follow_the_reference():
    p = steering.check_params({"strengths": [4, 1, 4], "penalties": [1, 0]}, 30)
    assert p["layer"] == 18 and p["strengths"] == [1.0, 4.0] and p["penalties"] == [0.0, 1.0]
    assert {k: p[k] for k in steering.REFERENCE} == steering.REFERENCE
    assert steering.check_params({}, 4)["layer"] == 2
    assert steering.default_layer(1) == 0


def test_control_concept_is_unrelated():
    names = steering_data.concept_names()
    assert steering.control_concept("dogs", ["dog", "dogs"], None) == names[names.index("dogs") + 1]
    assert steering.control_concept(names[-1], steering_data.concepts()[names[-1]]["tokens"], None) == names[0]
    assert steering.control_concept("wet weather", ["rain", "umbrella"], None) == "dogs"
    assert steering.control_concept("pets", ["dog"], None) == names[1]  # shares 'dog' with the first
    with pytest.raises(OrthoscopeError, match="shares words"):
        steering.control_concept("wet weather", ["rain"], "rain")


# --- 10. a run on the tiny model ----------------------------------------------------------------------------

def test_full_run_tables_and_report_round_trip(tiny, tiny_run):
    r = tiny_run
    triples = steering_data.builtin_triples("dogs")
    fit, held = steering.split_triples(len(triples), 0.25, 0)
    samples = r.to_frame()
    assert list(samples.columns) == steering.SAMPLE_COLUMNS and len(samples) == 40
    assert samples.loc[samples["split"] == "fit", "index"].tolist() == fit.tolist()
    assert samples.loc[samples["split"] == "held-out", "index"].tolist() == held.tolist()
    assert samples["sector"].between(0, 3).all() and samples["cos_theta"].between(-1, 1).all()
    assert r.n_fit == 30 and r.n_heldout == 10 and r.n_steered == 2 and r.layer == 2 and r.n_layers == 4
    assert r.unit_value == pytest.approx(r.axis_norm)  # the reference's unit by default
    steered = pd.DataFrame(r.steered)
    # per steered sample: 1 unsteered + 3 s x 2 p self + 3 s x 2 p nulls + 3 s x 4 directions
    assert len(steered) == 2 * (1 + 6 + 6 + 12)
    assert steered.groupby("kind").size().to_dict() == {"unsteered": 2, "self": 12, "random": 12, "direction": 24}
    # written as CSV and read back by pandas, no kind turns into a missing value
    again = pd.read_csv(io.StringIO(r.tables()["steered"].to_csv(index=False)))
    assert again["kind"].notna().all() and again["direction"].notna().all()
    assert (steered.loc[steered["kind"] == "unsteered", "gain"] == 0).all()
    assert np.allclose(steered.loc[steered["kind"] == "unsteered", "ppl_ratio"], 1, atol=1e-5)
    null = steered[steered["kind"] == "random"].set_index(["sample", "s", "p"])["norm"]
    own = steered[steered["kind"] == "self"].set_index(["sample", "s", "p"])["norm"]
    assert np.allclose(null.loc[own.index], own)
    grid = pd.DataFrame(r.grid)
    assert sorted(zip(grid["s"], grid["p"])) == [(s, p) for s in (1.0, 2.0, 4.0) for p in (0.0, 1.0)]
    assert {"null_gain", "null_rate", "concept_gain", "concept_rate", "ppl_ratio", "reaching"} <= set(grid)
    assert (grid["concept_gain_lo"] <= grid["concept_gain"] + 1e-12).all()
    dirs = pd.DataFrame(r.directions)
    assert dirs.groupby("s")["direction"].apply(list).tolist() == [["axis", "pc1", "probe", "control", "random"]] * 3
    assert dirs.loc[dirs["direction"] == "random", "reaching"].isna().all()
    assert len(r.self_steering) == 2 and len(r.sectors) == 4 and sum(x["count"] for x in r.sectors) == 2
    assert len(r.sweep) == 4 and r.sweep[2]["mean_norm"] == pytest.approx(r.mean_norm, rel=0.2)
    assert r.summary["verdict"] and len(r.examples) == 2 and r.concept["control"]["name"] == "ocean"
    (again,) = reports.from_json(reports.to_json([r]))
    assert isinstance(again, steering.SteeringResult)
    tables, tables2 = r.tables(), again.tables()
    assert list(tables) == ["samples", "self_steering", "grid", "directions", "sectors", "steered", "sweep"]
    for name in tables:
        pd.testing.assert_frame_equal(tables2[name], tables[name], check_dtype=False)
    old = {k: v for k, v in r.to_dict().items() if k not in ("self_steering", "directions")}
    with pytest.raises(OrthoscopeError, match="earlier protocol, scored without a null"):
        steering.SteeringResult.from_dict(old)
    assert "sweep" not in steering.SteeringResult.from_dict({**r.to_dict(), "sweep": []}).tables()


def test_plain_template_when_the_tokenizer_has_none(tiny):
    class NoTemplate:
        chat_template = None
    assert steering.effective_template(NoTemplate(), "chat")[0] == "plain"
    assert steering.effective_template(tiny[2], "chat") == ("chat", None)
    with pytest.raises(OrthoscopeError, match="unknown prompt template 'xml'"):
        steering.effective_template(tiny[2], "xml")
    ids = steering.prompt_ids(tiny[2], "Hello there", "plain")
    assert tiny[2].decode(ids) == "Hello there\n"


def test_activations_go_through_the_callers_cache_once(tiny):
    store, calls = {}, []

    def cache(key, compute):
        calls.append(key)
        if key not in store:
            store[key] = compute()
        return store[key]

    small = dict(TINY_PARAMS, strengths=[1.0], penalties=[0.0], sweep=False)
    first = steering.run(tiny[0], small, activation_cache=cache)
    second = steering.run(tiny[0], {**small, "layer": 1}, activation_cache=cache)
    third = steering.run(tiny[0], {**small, "hook": "output"}, activation_cache=cache)
    assert len(store) == 4 and len(calls) == 6  # concept and control sets, twice per convention
    assert not first.work["activations_cached"] and second.work["activations_cached"]
    assert not third.work["activations_cached"]
    assert second.layer == 1 and first.timings["activations_s"] > 0 == second.timings["activations_s"]


# --- 11. SmolLM2 against its null ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    handle = models.load("builtin:smollm2")
    handle.module()
    return handle


def test_smollm2_axis_beats_the_random_null_and_random_never_reaches(smollm2):
    """The issue's check, on a reduced grid: at the best axis strength whose neutral-text perplexity
    stays within 3x, the concept's sequence gain clears the random null's mean by a wide margin and
    its 95th percentile; random directions are never marked as reaching."""
    r = steering.run(smollm2, dict(concept="dogs", strengths=[4.0, 8.0], penalties=[0.0], max_heldout=4,
                                   gen_tokens=8, boot=100, sweep=False))
    best = r.summary["best_axis"]
    print(f"\nSmolLM2 block {r.layer} ({r.params['hook']}): |a| {r.axis_norm:.2f}, best axis s = {best['s']:g}: "
          f"gain {best['concept_gain']:+.2f} [{best['concept_gain_lo']:+.2f}, {best['concept_gain_hi']:+.2f}] vs null "
          f"{best['null_gain']:+.2f} (q95 {best['null_q95']:+.2f}), ppl {best['ppl_ratio']:.2f}; {r.summary['verdict']}")
    assert best["ppl_ratio"] <= 3
    assert best["concept_gain_lo"] > best["null_gain"] + 0.5
    assert best["concept_gain"] > best["null_q95"] and best["reaching"]
    assert all(d["reaching"] is None for d in r.directions if d["direction"] == "random")
    control = [d for d in r.directions if d["direction"] == "control"]
    assert all(not d["reaching"] for d in control)  # the ocean axis does not raise dog words


def test_triple_files_are_stat_ed_and_bounded_before_they_are_read(tmp_path):
    import os

    from diagnostics import steering_data as sd

    os.mkfifo(tmp_path / "t.jsonl")
    with pytest.raises(OrthoscopeError, match="not a regular file"):
        sd.load_triples(tmp_path / "t.jsonl")
    big = tmp_path / "big.jsonl"
    big.write_bytes(b" " * (sd.MAX_TRIPLES_BYTES + 1))
    with pytest.raises(OrthoscopeError, match="at most"):
        sd.load_triples(big)
    with pytest.raises(OrthoscopeError, match="line 1: JSON nested deeper"):
        sd.parse_triples(b"[" * 100_000 + b"]" * 100_000, "t.jsonl")
