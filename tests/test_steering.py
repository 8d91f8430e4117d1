"""The cylindrical steering diagnostic: geometry on planted data, the hook, the scores, inputs, runs.

Every reference here is computed independently of diagnostics/steering.py: numpy on planted
cylinders, and full forward passes (with our own hooks) on a tiny random llama for the
activations, the steering hook, the cached concept scores and the neutral likelihoods.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import models
import reports
from diagnostics import steering, steering_data
from models import OrthoscopeError

TINY_PARAMS = dict(strengths=[1.0, 2.0, 4.0], penalties=[0.0, 1.0], threshold=0.01, sectors=4, grid_samples=2,
                   heldout_prompts=2, neutral_sentences=2, gen_prompts=1, gen_tokens=3)


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


def test_sector_table_finds_the_planted_steerable_direction():
    P = planted(n=600, seed=1)
    K = 8
    width = 2 * np.pi / K
    cyl = steering.cylinder(P["D"], K)
    sign, offset, length = circular_fit(cyl["phi"], P["psi"])
    assert length > 0.999
    # Plant the peak at the planted angle that maps to the middle of sector 3 (recovered frame).
    target = 3
    psi0 = sign * ((target + 0.5) * width - offset)
    steer = np.exp(4 * np.cos(P["psi"] - psi0))
    gain = np.cos(P["psi"] - psi0)
    rows = steering.sector_table(cyl["phi"], cyl["sector"], steer, gain, K)
    assert [r["sector"] for r in rows] == list(range(K))
    assert sum(r["count"] for r in rows) == len(steer)
    assert [r["count"] for r in rows] == np.bincount(cyl["sector"], minlength=K).tolist()
    means = [r["mean_steerability"] for r in rows]
    assert int(np.argmax(means)) == target
    assert int(np.argmax([r["mean_gain"] for r in rows])) == target
    # the opposite sector is the worst
    assert int(np.argmin(means)) == (target + K // 2) % K
    for r in rows:
        hit = cyl["sector"] == r["sector"]
        assert r["mean_steerability"] == pytest.approx(steer[hit].mean())
        assert r["phi_from_deg"] == pytest.approx(r["sector"] * 360 / K)
        assert r["phi_to_deg"] == pytest.approx((r["sector"] + 1) * 360 / K)
    # an empty sector reads NaN, not 0
    rows = steering.sector_table(np.array([0.1, 0.2]), np.array([0, 0]), np.ones(2), np.ones(2), 4)
    assert rows[0]["count"] == 2 and math.isnan(rows[1]["mean_steerability"]) and math.isnan(rows[1]["mean_gain"])


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


# --- 3. steering vectors -------------------------------------------------------------------------------

def test_steering_vectors_match_direct_numpy():
    P = planted(n=60, seed=6, c=(0.5, 2.0), r=(0.5, 2.0), noise=0.05)
    D = P["D"]
    cyl = steering.cylinder(D, 8)
    a_hat = _unit(D.mean(0))
    samples = np.array([0, 7, 33])
    S, Pen, m = [0.5, 3.0], [0.0, 0.25, 1.0], 1.7
    V = steering.steering_vectors(cyl, samples, S, Pen, m)
    assert V.shape == (3, 2, 3, 64)
    for r, i in enumerate(samples):
        d_hat = _unit(D[i])
        cos_t = d_hat @ a_hat
        for si, s in enumerate(S):
            assert np.allclose(V[r, si, 0], s * m * d_hat, atol=1e-12)  # p = 0: the triple's own direction
            assert np.linalg.norm(V[r, si, 0]) == pytest.approx(s * m)
            assert np.allclose(V[r, si, 2], s * m * cos_t * a_hat, atol=1e-12)  # p = 1: the axis only
            assert np.allclose(V[r, si, 1], s * m * (cos_t * a_hat + 0.75 * (d_hat - cos_t * a_hat)), atol=1e-12)
    # a difference vector exactly on the axis: no normal part, no NaN
    D2 = np.vstack([np.eye(4)[0] * 2, np.eye(4)[0] * 2 + np.eye(4)[1], np.eye(4)[0] * 2 - np.eye(4)[1]])
    cyl2 = steering.cylinder(D2, 4)
    V2 = steering.steering_vectors(cyl2, np.array([0]), [1.0], [0.0], 1.0)
    assert np.allclose(V2[0, 0, 0], np.eye(4)[0])


# --- 4. min_strength -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gains, threshold, expected", [
    ([0.2, 0.6, 1.4], 1.0, 3.0),  # between 2 (0.6) and 4 (1.4): 2 + 0.4 / 0.8 * 2
    ([0.5, 1.0, 2.0], 1.0, 2.0),  # exactly on a grid point
    ([1.0, 3.0, 5.0], 1.0, 1.0),  # exactly at the first grid point
    ([2.0, 3.0, 5.0], 1.0, 0.5),  # beyond it at the first point: from (0, 0) to (1, 2)
    ([1.5, 0.2, 3.0], 1.0, 2 / 3),  # the first crossing counts, even if the gain drops later
    ([-1.0, 3.0, 0.0], 1.0, 1.5),  # from (1, -1) to (2, 3)
    ([0.1, 0.2, 0.3], 1.0, math.nan),  # never reached
    ([0.1, 0.2, 0.3], 0.3, 4.0),
])
def test_min_strength_hand_worked(gains, threshold, expected):
    got = steering.min_strength([1.0, 2.0, 4.0], np.array(gains), threshold)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


# --- the tiny model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_chat_llama):
    handle = models.load(str(tiny_chat_llama), allowed_roots=[tiny_chat_llama.parent])
    return handle, handle.module(), handle.tokenizer()


@pytest.fixture(scope="module")
def tiny_run(tiny):
    return steering.run(tiny[0], dict(TINY_PARAMS))


def _hooks(blocks):
    """The forward hooks on the blocks. transformers installs its own output-capturing hooks the first
    time hidden states are asked for, and keeps them, so tests compare with a snapshot."""
    return [dict(b._forward_hooks) for b in blocks]


def _capture(blocks):
    """Forward hooks that record every block's output (registered last, so they see steered outputs)."""
    seen = {}
    handles = [b.register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(i, steering._block_output(out).detach().clone()))
               for i, b in enumerate(blocks)]
    return seen, handles


def _outputs(model, blocks, ids, hook=None):
    with hook if hook is not None else steering._nothing():
        seen, handles = _capture(blocks)
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
    return seen, logits


# --- 5. the hook ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["all", "from_last"])
@pytest.mark.parametrize("per_row", [False, True])
def test_hook_adds_exactly_v_at_the_steered_positions(tiny, where, per_row):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    assert len(blocks) == 4
    L = 1
    ids = torch.tensor([tok.encode("My dog likes long walks.", add_special_tokens=False)[:6],
                        tok.encode("The sea was calm today.", add_special_tokens=False)[:6]])
    assert ids.shape[1] == 6
    g = torch.Generator().manual_seed(0)
    v = torch.randn((2, 32) if per_row else (32,), generator=g)
    before = _hooks(blocks)
    base, base_logits = _outputs(model, blocks, ids)
    steered, logits = _outputs(model, blocks, ids, steering.steering_hook(blocks[L], v, where))
    for i in range(L):
        assert torch.equal(steered[i], base[i])
    expected = base[L].clone()
    vv = v.reshape(-1, 1, 32)
    if where == "all":
        expected = expected + vv
    else:
        expected[:, -1:] = expected[:, -1:] + vv
    assert torch.allclose(steered[L], expected, rtol=0, atol=1e-6)
    if where == "from_last":
        assert torch.equal(steered[L][:, :-1], base[L][:, :-1])
        assert torch.equal(logits[:, :-1], base_logits[:, :-1])  # causal: earlier positions untouched
    assert not torch.allclose(steered[L + 1], base[L + 1])
    assert not torch.allclose(logits[:, -1], base_logits[:, -1])
    # after leaving: no hooks of ours, unsteered outputs
    assert _hooks(blocks) == before
    again, again_logits = _outputs(model, blocks, ids)
    assert all(torch.equal(again[i], base[i]) for i in range(4)) and torch.equal(again_logits, base_logits)


def test_hook_rejects_unknown_where(tiny):
    blocks = steering.decoder_blocks(tiny[1])
    before = _hooks(blocks)
    with pytest.raises(ValueError, match="where must be"):
        with steering.steering_hook(blocks[0], torch.zeros(32), "first"):
            pass
    assert _hooks(blocks) == before


def test_hook_is_removed_when_the_forward_pass_raises(tiny):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    ids = torch.tensor([tok.encode("My dog", add_special_tokens=False)])
    before = _hooks(blocks)
    with pytest.raises(RuntimeError):
        with steering.steering_hook(blocks[2], torch.zeros(33), "all"), torch.no_grad():  # wrong width: fails in the hook
            model(input_ids=ids)
    assert _hooks(blocks) == before
    with pytest.raises(KeyError):
        with steering.steering_hook(blocks[2], torch.zeros(32), "from_last"), torch.no_grad():
            model(input_ids=ids)
            raise KeyError("after the pass")
    assert _hooks(blocks) == before


def test_hook_is_removed_when_generation_raises(tiny, monkeypatch):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    scorer = steering.Scorer(model, blocks[1], [5], 4)
    prompt = steering.prompt_ids(tok, "Tell me about your day.", "chat")
    v = torch.ones(32)
    before = _hooks(blocks)
    with pytest.raises(ValueError, match="max_new_tokens"):
        scorer.generate(prompt, -1, v, tok)
    assert _hooks(blocks) == before

    calls = []

    def failing_generate(*args, **kwargs):
        calls.append(len(blocks[1]._forward_hooks) - len(before[1]))  # the hook is in place while generating
        model(input_ids=kwargs["input_ids"])
        raise RuntimeError("generation failed")

    monkeypatch.setattr(model, "generate", failing_generate)
    with pytest.raises(RuntimeError, match="generation failed"):
        scorer.generate(prompt, 3, v, tok)
    assert calls == [1]
    assert _hooks(blocks) == before


def test_generation_steers_from_the_last_prompt_token_on(tiny):
    """Greedy generation with the cache equals a cache-free greedy loop that adds v at every position
    from the last prompt token on."""
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    L, n_new = 1, 5
    prompt = steering.prompt_ids(tok, "Tell me about your day.", "chat")
    v = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 8
    scorer = steering.Scorer(model, blocks[L], [5], 4)
    before = _hooks(blocks)
    text = scorer.generate(prompt, n_new, v, tok)
    plain = scorer.generate(prompt, n_new, None, tok)
    assert _hooks(blocks) == before

    def greedy(vector):
        ids = list(prompt)
        start = len(prompt) - 1

        def add(mod, args, out):
            h = steering._block_output(out).clone()
            h[:, start:] += vector
            return steering._with_block_output(out, h)

        handle = blocks[L].register_forward_hook(add) if vector is not None else None
        try:
            with torch.no_grad():
                for _ in range(n_new):
                    ids.append(int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
        finally:
            if handle:
                handle.remove()
        return tok.decode(ids[len(prompt):], skip_special_tokens=True).replace("\n", " ⏎ ")

    assert text == greedy(v)
    assert plain == greedy(None)
    assert text != plain


# --- 6. activations --------------------------------------------------------------------------------------

@pytest.mark.parametrize("position, template", [("last", "chat"), ("mean", "chat"), ("mean", "plain")])
def test_activations_equal_hidden_states(tiny, position, template):
    _, model, tok = tiny
    triples = steering_data.builtin_triples("dogs")[:3]
    acts = steering.activations(model, tok, triples, position=position, template=template, batch_size=4)
    assert acts.positive.shape == (4, 3, 32) and acts.negative.shape == (4, 3, 32)
    assert acts.passes == 2
    for i, t in enumerate(triples):
        p_ids = steering.prompt_ids(tok, t["prompt"], template)
        for kind, got in (("positive", acts.positive), ("negative", acts.negative)):
            response = t[kind] if template == "chat" else " " + t[kind]
            r_ids = tok.encode(response, add_special_tokens=False)
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([p_ids + r_ids]), output_hidden_states=True).hidden_states
            for L in range(3):  # blocks before the last: hidden_states[L + 1] is the block output
                h = hs[L + 1][0]
                ref = h[-1] if position == "last" else h[len(p_ids):].mean(0)
                np.testing.assert_allclose(got[L, i], ref.numpy(), atol=2e-5, rtol=1e-5)


# --- 7. scores -------------------------------------------------------------------------------------------

def _logmass(logits, ids):
    return float(torch.logsumexp(torch.log_softmax(logits.double(), -1)[ids], -1))


def test_concept_scores_with_cache_equal_full_passes(tiny):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    L = 2
    concept = [455, 287, 455, 279]
    unique = torch.tensor(sorted(set(concept)))
    scorer = steering.Scorer(model, blocks[L], concept, batch_size=1)  # 16 rows per pass: 20 vectors -> 2 passes
    prompt = steering.prompt_ids(tok, "What did you do this weekend?", "chat")
    V = torch.randn(20, 32, generator=torch.Generator().manual_seed(2)) * 3
    V[0] = 0
    before = _hooks(blocks)
    got = scorer.concept_scores(prompt, V)
    assert got.shape == (20,)
    refs = []
    for v in V:
        def add(mod, args, out, v=v):
            h = steering._block_output(out).clone()
            h[:, -1] += v
            return steering._with_block_output(out, h)
        handle = blocks[L].register_forward_hook(add)
        try:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt]), use_cache=False).logits[0, -1]
        finally:
            handle.remove()
        refs.append(_logmass(logits, unique))
    np.testing.assert_allclose(got, refs, atol=1e-4)
    assert np.ptp(refs) > 1e-2  # the vectors matter
    base = scorer.unsteered_score(prompt)
    assert base == pytest.approx(refs[0], abs=1e-4)
    assert _hooks(blocks) == before


def test_neutral_nll_equals_per_sentence_references(tiny):
    _, model, tok = tiny
    blocks = steering.decoder_blocks(model)
    L = 1
    sentences = [tok.encode(s, add_special_tokens=False) for s in steering_data.neutral_sentences()[:3]]
    assert len({len(s) for s in sentences}) > 1  # padding is exercised
    scorer = steering.Scorer(model, blocks[L], [5], batch_size=4)  # one vector per pass with 3 sentences
    V = torch.randn(3, 32, generator=torch.Generator().manual_seed(3)) * 2
    got = scorer.neutral_nll(sentences, V)
    got0 = scorer.neutral_nll(sentences, None)

    def ref(v):
        total, count = 0.0, 0
        for s in sentences:
            ctx = steering.steering_hook(blocks[L], v, "all") if v is not None else steering._nothing()
            with ctx, torch.no_grad():
                logits = model(input_ids=torch.tensor([s])).logits[0]
            logp = torch.log_softmax(logits[:-1].double(), -1).gather(-1, torch.tensor(s[1:])[:, None])
            total -= float(logp.sum())
            count += len(s) - 1
        return total / count

    np.testing.assert_allclose(got, [ref(v) for v in V], atol=1e-4)
    assert got0.shape == (1,) and got0[0] == pytest.approx(ref(None), abs=1e-4)


# --- 8. bad input ----------------------------------------------------------------------------------------

def test_encoder_is_refused(tiny_bert_folder):
    handle = models.load(str(tiny_bert_folder), allowed_roots=[tiny_bert_folder.parent])
    with pytest.raises(OrthoscopeError, match="is an encoder.*needs a causal language model"):
        steering.run(handle, {})


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


def test_unknown_concept(tiny):
    with pytest.raises(OrthoscopeError, match=r"no built-in concept 'cats'"):
        steering_data.builtin_triples("cats")
    with pytest.raises(OrthoscopeError, match=r"no built-in concept 'cats'"):
        steering.run(tiny[0], {"concept": "cats"})
    triples = steering_data.parse_triples(_csv(GOOD), "t.csv")
    with pytest.raises(OrthoscopeError, match=r"give the tokens that signal the concept 'cats'"):
        steering.run(tiny[0], {"concept": "cats"}, triples)


@pytest.mark.parametrize("params, message", [
    ({"strengths": [1.0, -2.0]}, "strengths must be positive"),
    ({"strengths": []}, "strengths must be positive"),
    ({"penalties": [0.0, 1.5]}, "penalties must be numbers from 0"),
    ({"sectors": 1}, "sectors must be a whole number from 2 to 36, got 1"),
    ({"position": "first"}, "unknown token position 'first'"),
    ({"template": "xml"}, "unknown prompt template 'xml'"),
    ({"heldout_fraction": 1.0}, "held-out fraction"),
    ({"grid_samples": 0}, "grid_samples must be a whole number from 1 to 64"),
    ({"gen_tokens": 65}, "gen_tokens must be a whole number from 0 to 64"),
])
def test_check_params_errors(params, message):
    with pytest.raises(OrthoscopeError, match=message):
        steering.check_params(params, 4)


def test_check_params_defaults_and_normalises():
    p = steering.check_params({"strengths": [4, 1, 4], "penalties": [1, 0]}, 30)
    assert p["layer"] == 18 and p["strengths"] == [1.0, 4.0] and p["penalties"] == [0.0, 1.0]
    assert steering.check_params({}, 4)["layer"] == 2
    assert steering.default_layer(1) == 0


def test_split_concept_tokens_are_noted(tiny, tiny_run):
    tokens, notes = steering_data.concept_tokens(tiny[2], [" dog", " puppy"])
    assert [t.split for t in tokens] == [False, True]
    assert len(notes) == 1 and "' puppy' is split into" in notes[0] and "first piece ' p'" in notes[0]
    by_word = {t["word"]: t for t in tiny_run.concept["tokens"]}
    assert by_word[" dog"]["split"] is False and by_word[" puppy"]["split"] is True
    assert by_word[" puppy"]["ids"] == tiny[2].encode(" puppy", add_special_tokens=False)
    assert any("' puppy' is split" in n for n in tiny_run.notes)
    with pytest.raises(OrthoscopeError, match="concept token is empty"):
        steering_data.concept_tokens(tiny[2], [" dog", "  "])


# --- 9. a full run on the tiny model ---------------------------------------------------------------------

def test_full_run_tables_and_report_round_trip(tiny, tiny_run):
    r = tiny_run
    triples = steering_data.builtin_triples("dogs")
    fit, held = steering.split_triples(len(triples), 0.25, 0)
    samples = r.to_frame()
    assert len(samples) == len(triples) == 40
    assert list(samples.columns) == steering.SAMPLE_COLUMNS
    assert sorted(samples["index"]) == list(range(40))
    assert samples.loc[samples["split"] == "fit", "index"].tolist() == fit.tolist()
    assert samples.loc[samples["split"] == "held-out", "index"].tolist() == held.tolist()
    assert samples["prompt"].tolist() == [triples[i]["prompt"] for i in samples["index"]]
    assert r.n_fit == len(fit) == 30 and r.n_heldout == len(held) == 10
    assert r.layer == 2 and r.n_layers == 4 and r.hidden_size == 32
    fitted = samples[samples["split"] == "fit"]
    assert fitted["sector"].between(0, 3).all() and fitted["cos_theta"].between(-1, 1).all()
    assert (samples.loc[samples["split"] == "held-out", "sector"] == -1).all()
    # steerability is 1 / min_strength where reached, else 0
    ms, st = fitted["min_strength"].to_numpy(), fitted["steerability"].to_numpy()
    assert np.allclose(st[np.isfinite(ms)], 1 / ms[np.isfinite(ms)]) and (st[~np.isfinite(ms)] == 0).all()
    grid = pd.DataFrame(r.grid)
    assert len(grid) == 3 * 2 and sorted(set(zip(grid["s"], grid["p"]))) == [(s, p) for s in (1.0, 2.0, 4.0) for p in (0.0, 1.0)]
    assert (grid["concept_gain_min"] <= grid["concept_gain"] + 1e-12).all()
    assert (grid["concept_gain"] <= grid["concept_gain_max"] + 1e-12).all()
    assert len(r.sweep) == 4 and [row["layer"] for row in r.sweep] == [0, 1, 2, 3]
    assert len(r.sectors) == 4 and sum(row["count"] for row in r.sectors) == 30
    assert len(r.generations) == 1 and set(r.generations[0]) == {"prompt", "unsteered", "steered"}
    assert len(r.baselines["cosines"]) == 4
    assert r.baseline_scores["grid_samples"] and all(i in set(fit.tolist()) for i in r.baseline_scores["grid_samples"])
    # the sweep at the analysed layer agrees with the run's own geometry
    assert r.sweep[2]["mean_norm"] == pytest.approx(r.mean_norm, rel=0.2)

    (again,) = reports.from_json(reports.to_json([r]))
    assert isinstance(again, steering.SteeringResult)
    tables, tables2 = r.tables(), again.tables()
    assert list(tables) == list(tables2) == ["samples", "grid", "sectors", "sweep", "generations"]
    for name in tables:
        pd.testing.assert_frame_equal(tables2[name], tables[name], check_dtype=False)


def test_report_round_trip_when_no_triple_reaches_the_threshold(tiny):
    """With an unreachable threshold every min_strength is NaN; JSON stores None, and the reloaded
    samples table must still hold NaN floats, not a column of None objects."""
    r = steering.run(tiny[0], dict(TINY_PARAMS, threshold=1e6, strengths=[1.0], penalties=[1.0], heldout_prompts=1,
                                   neutral_sentences=1, gen_prompts=0, sweep=False))
    assert r.to_frame()["min_strength"].isna().all() and (r.to_frame()["split"] == "fit").sum() == 30
    (again,) = reports.from_json(reports.to_json([r]))
    assert again.to_frame()["min_strength"].dtype == r.to_frame()["min_strength"].dtype == np.float64
    assert again.to_frame().equals(r.to_frame())


def test_plain_template_when_the_tokenizer_has_none(tiny):
    class NoTemplate:
        chat_template = None
    assert steering.effective_template(NoTemplate(), "chat")[0] == "plain"
    assert steering.effective_template(tiny[2], "chat") == ("chat", None)
    with pytest.raises(OrthoscopeError, match="unknown prompt template 'xml'"):
        steering.effective_template(tiny[2], "xml")
    ids = steering.prompt_ids(tiny[2], "Hello there", "plain")
    assert tiny[2].decode(ids) == "Hello there\n"


# --- 10. SmolLM2 -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    handle = models.load("builtin:smollm2")
    handle.module()
    return handle


def test_smollm2_axis_steers_the_concept_up_on_heldout_prompts(smollm2):
    r = steering.run(smollm2, dict(concept="dogs", position="mean", strengths=[2.0, 4.0], penalties=[1.0],
                                   grid_samples=2, heldout_prompts=4, neutral_sentences=2, gen_prompts=0, sweep=False))
    grid = {row["s"]: row for row in r.grid}
    print(f"\nSmolLM2 layer {r.layer}/{r.n_layers}: axis norm {r.axis_norm:.3f}, mean |d| {r.mean_norm:.3f}, "
          f"held-out mean cos(theta) {r.heldout['mean_cos_theta']:.3f}, axis held-out accuracy "
          f"{r.baselines['axis_heldout_accuracy']:.2f}, steering {r.timings['steering_s']:.1f}s")
    for s, row in sorted(grid.items()):
        print(f"  s={s} p=1: concept_gain {row['concept_gain']:+.3f} (min {row['concept_gain_min']:+.3f}, "
              f"max {row['concept_gain_max']:+.3f}), corruption {row['corruption']:+.4f} nats/token")
    assert r.layer == 18 and r.n_layers == 30 and len(r.grid) == 2
    assert grid[2.0]["concept_gain"] > 0 and grid[4.0]["concept_gain"] > 0
    assert grid[4.0]["concept_gain"] > grid[2.0]["concept_gain"]
    assert r.heldout["mean_cos_theta"] > 0


def test_activations_go_through_the_callers_cache_once(tiny):
    store, calls = {}, []

    def cache(key, compute):
        calls.append(key)
        if key not in store:
            store[key] = compute()
        return store[key]

    first = steering.run(tiny[0], dict(TINY_PARAMS), activation_cache=cache)
    second = steering.run(tiny[0], {**TINY_PARAMS, "layer": 1}, activation_cache=cache)
    assert len(store) == 1 and len(calls) == 2 and calls[0].startswith("steering-activations|")
    assert not first.work["activations_cached"] and second.work["activations_cached"]
    assert second.layer == 1 and first.timings["activations_s"] > 0 == second.timings["activations_s"]
