"""Cylindrical steering: the axis and normal plane of a concept's difference vectors, scored by what
the model then says, beside a null and baselines.

The Cylindrical Representation Hypothesis (Gao, Zhang, Liu et al., "The Cylindrical
Representation Hypothesis for Language Model Steering", ICML 2026, arXiv:2605.01844; reference code
mbzuai-nlp/CRH) says that the difference vectors ``d_i = h(prompt_i + response with the concept) -
h(prompt_i + response without it)`` of a concept share a central axis, which drives the concept,
while their components in the normal plane around it decide how easily a sample is steered.

Geometry, on the fit split of the triples: the axis ``a = mean_i d_i``; per triple ``cos(theta_i)``,
``|d_i|`` and the normal component ``o_i = d_i - <d_i, a_hat> a_hat``; a 2-D basis of the normal
plane (top principal directions of the ``o_i``) and each triple's sector angle in it. Intervals:
split-half agreement of the axis and a bootstrap of the mean ``cos(theta)`` over triples.

Steering, on the held-out split, is scored by what the model says, never against a fixed number:

- *self-steering* (the reference's penalty experiment): each held-out sample ``i`` is steered on
  its own prompt with its own vector ``v_i(s, p) = s u (cos(theta_i) a_hat + (1 - p) sin(theta_i)
  o_hat_i)``, where ``u`` is the strength unit (``|a|`` as in the reference, or the mean ``|d|``);
- *directions*: the axis, the first principal component of the ``d_i``, the logistic-probe
  direction and the axis of an unrelated control concept, each at norm ``s u`` on every held-out
  prompt, so the axis is compared with what it claims to beat;
- the *null*: random directions with exactly the norm of each steered vector (an independent
  draw per sample and draw index). A cell or direction "reaches" only when its mean gain is above
  the 95th percentile of the null gains of the same norm.

Scores per steered vector and prompt: the *concept gain*, the change of the log of the expected
number of concept words starting anywhere in a teacher-forced window of the held-out response
without the concept (every word in four forms, with and without a leading space and capitalised;
words the tokenizer splits are scored as whole token sequences); the *concept rate*, whether a
greedy (or sampled) continuation of ``gen_tokens`` tokens contains a concept word (word-boundary
match); and the coherence guard: the perplexity ratio of neutral text under the same vector and the
repetition rate of the continuation.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from diagnostics import steering_data
from diagnostics.batching import right_padded
from diagnostics.result import Result
from models import ModelHandle, OrthoscopeError

Progress = Callable[[float, str], None]

DEFAULTS = {
    "concept": "dogs",
    "tokens": None,  # the concept's words; None: the built-in concept's
    "control": None,  # the unrelated concept whose axis is a null; None: picked (see control_concept)
    "layer": None,  # None: three fifths of the way up (see default_layer)
    "position": "last",
    "unit": "axis",
    "steer_tokens": "all",
    "hook": "input",
    "template": "chat",
    "sectors": 8,
    "strengths": [2.0, 4.0, 8.0],
    "penalties": [0.0, 1.0],
    "null_draws": 1,
    "heldout_fraction": 0.25,
    "max_heldout": 16,
    "seed": 0,
    "window": 6,
    "gen_tokens": 32,
    "temperature": 0.0,
    "neutral_sentences": 2,
    "boot": 200,
    "sweep": True,
    "batch_size": 32,
}
# The reference's settings, where the options above allow another; the page offers both.
REFERENCE = {"position": "last", "unit": "axis", "steer_tokens": "all", "hook": "input"}
POSITIONS = ("last", "mean")
UNITS = ("axis", "mean_d")
STEER_TOKENS = ("all", "from_last")
HOOKS = ("input", "output")
TEMPLATES = ("chat", "plain")
OPTION_HELP = {
    "position": "where a response's activation is read: its last token (the reference) or the mean over its tokens",
    "unit": "what s counts: multiples of |a|, the norm of the mean difference (the reference), or of the mean |d|",
    "steer_tokens": "which tokens get the vector: every token, prompt included (the reference), or the last prompt "
                    "token and every generated one",
    "hook": "where block L is read and steered: its input, i.e. hidden_states[L] (the reference), or its output, "
            "hidden_states[L + 1]",
}
MAX_GEN_TOKENS = 64
MAX_WINDOW = 32
PROBE_C = 1.0
NULL_QUANTILE = 0.95
PPL_LIMIT = 3.0  # the coherence guard the headline uses: the best strength is chosen among ppl_ratio <= 3
CONTROL_TRIPLES = 12


# --- the model side ------------------------------------------------------------------------------

def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: the ``nn.ModuleList`` as long as the config's layer count."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise OrthoscopeError(f"cannot find the {n} decoder blocks of this {type(model).__name__}.")


def check_causal_lm(handle: ModelHandle) -> nn.Module:
    if handle.kind != "causal-lm":
        raise OrthoscopeError(f"{handle.name} is {'an encoder' if handle.kind == 'encoder' else 'not a language model'} "
                              "without a causal LM head; steering scores what the model writes, so it needs a "
                              "causal language model (e.g. builtin:smollm2).")
    model = handle.module()
    if model.get_output_embeddings() is None:
        raise OrthoscopeError(f"{handle.name} has no LM head (output embeddings); steering needs next-token logits.")
    return model


def default_layer(n_layers: int) -> int:
    """Three fifths of the way up: block 18 of SmolLM2's 30."""
    return min(n_layers - 1, round(0.6 * n_layers))


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _on_block(block: nn.Module, hook: str, edit: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register ``edit(hidden)`` on the block's input (a pre-hook) or output; a returned tensor
    replaces the hidden states, None leaves them."""
    if hook == "input":
        def pre(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = edit(hidden)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        return block.register_forward_pre_hook(pre, with_kwargs=True)
    if hook == "output":
        def post(module, args, output):
            new = edit(_hidden_of(output))
            return None if new is None else _with_hidden(output, new)
        return block.register_forward_hook(post)
    raise ValueError(f"hook must be 'input' or 'output', got {hook!r}")


@contextmanager
def steering_hook(block: nn.Module, vectors: torch.Tensor, *, hook: str = "input",
                  tokens: str = "all") -> Iterator[None]:
    """Add ``vectors`` to block ``block``'s input or output while inside.

    ``vectors``: ``(d,)`` for every row or ``(batch, d)``, one per row. ``tokens="all"`` adds to
    every position of every call; ``"from_last"`` adds to the last position of the first call (the
    last prompt token) and to every position of later calls (the tokens that follow it, read with
    the cache). The hook is removed on leaving, also when the forward pass raises.
    """
    if tokens not in STEER_TOKENS:
        raise ValueError(f"tokens must be one of {STEER_TOKENS}, got {tokens!r}")
    calls = [0]

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        v = vectors.to(hidden.dtype).reshape(-1, 1, hidden.shape[-1])
        first = calls[0] == 0
        calls[0] += 1
        if tokens == "all" or not first:
            return hidden + v
        return torch.cat([hidden[:, :-1], hidden[:, -1:] + v], dim=1)

    handle = _on_block(block, hook, edit)
    try:
        yield
    finally:
        handle.remove()


# --- text ------------------------------------------------------------------------------------------

def prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    """The prompt as the model sees it just before answering."""
    if template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt + "\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    if template == "plain" and bos is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [bos, *ids]
    return ids


def response_ids(tokenizer, response: str, template: str) -> list[int]:
    return tokenizer.encode(" " + response if template == "plain" else response, add_special_tokens=False)


def effective_template(tokenizer, template: str) -> tuple[str, str | None]:
    if template not in TEMPLATES:
        raise OrthoscopeError(f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}.")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        return "plain", "the tokenizer has no chat template, so prompts are plain text followed by a newline."
    return template, None


def word_pattern(words: list[str]) -> re.Pattern:
    """Whole-word, case-insensitive match of any concept word in decoded text."""
    alternatives = sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in alternatives) + r")(?!\w)", re.IGNORECASE)


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0: none; near 1: a loop)."""
    words = re.findall(r"\w+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


# --- activations -----------------------------------------------------------------------------------

@dataclass
class Activations:
    """Every block's input or output for the texts with and without the concept: ``(layers, n, d)``."""

    positive: np.ndarray
    negative: np.ndarray
    tokens: int
    passes: int
    seconds: float


def activations(model: nn.Module, tokenizer, triples: list[dict], *, position: str, template: str, hook: str,
                batch_size: int, progress: Progress | None = None) -> Activations:
    """Forward passes over prompt + response, keeping each block's input (or output) at the chosen position."""
    if position not in POSITIONS:
        raise OrthoscopeError(f"unknown token position {position!r}; use one of {', '.join(POSITIONS)}.")
    blocks = decoder_blocks(model)
    texts, spans = [], []
    for t in triples:
        p_ids = prompt_ids(tokenizer, t["prompt"], template)
        for response in (t["positive"], t["negative"]):
            r_ids = response_ids(tokenizer, response, template)
            texts.append(p_ids + r_ids)
            spans.append((len(p_ids), len(p_ids) + len(r_ids)))
    captured: list[torch.Tensor | None] = [None] * len(blocks)

    def keep(i):
        def edit(hidden):
            captured[i] = hidden.detach()
        return edit

    handles = [_on_block(b, hook, keep(i)) for i, b in enumerate(blocks)]
    out = np.zeros((len(blocks), len(texts), model.config.hidden_size), dtype=np.float32)
    t0, passes = time.perf_counter(), 0
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                ids, mask, _ = right_padded(chunk)
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)  # no logits needed
                passes += 1
                for j, (lo, hi) in enumerate(spans[start:start + batch_size]):
                    for layer in range(len(blocks)):
                        h = captured[layer][j]
                        out[layer, start + j] = (h[hi - 1] if position == "last" else h[lo:hi].mean(0)).float().numpy()
                if progress:
                    progress(min(1.0, (start + len(chunk)) / len(texts)), f"activations: {start + len(chunk)}/{len(texts)} texts")
    finally:
        for h in handles:
            h.remove()
    return Activations(out[:, 0::2], out[:, 1::2], sum(len(t) for t in texts), passes, time.perf_counter() - t0)


ActivationCache = Callable[[str, Callable[[], Activations]], Activations]


def _activations_once(handle: ModelHandle, triples: list[dict], *, position: str, template: str, hook: str,
                      batch_size: int, cache: ActivationCache | None, progress: Progress | None) -> tuple[Activations, bool]:
    """The activations, through ``cache(key, compute)`` when the caller keeps one (the page does:
    keyed by model, data set, position, template and hook, so a new block or grid reuses them)."""
    computed = []

    def compute() -> Activations:
        computed.append(True)
        return activations(handle.module(), handle.tokenizer(), triples, position=position, template=template,
                           hook=hook, batch_size=batch_size, progress=progress)

    if cache is None:
        return compute(), False
    key = f"steering-activations|{handle.fingerprint}|{steering_data.digest(triples)}|{position}|{template}|{hook}"
    return cache(key, compute), not computed


# --- geometry ----------------------------------------------------------------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def cylinder(D: np.ndarray, sectors: int) -> dict:
    """Axis, angles, norms, normal components and sectors of the difference vectors ``D`` (n x d).

    The normal plane's basis is the top two right singular vectors of the normal components
    ``O`` (their mean is zero, so these are also their principal directions); each basis vector's
    sign is chosen so that the triple with the largest coordinate on it has a positive one, which
    makes the sector numbering reproducible.
    """
    D = np.asarray(D, dtype=np.float64)
    n = D.shape[0]
    axis = D.mean(axis=0)
    a_hat = _unit(axis)
    norms = np.linalg.norm(D, axis=1)
    along = D @ a_hat
    cos_theta = np.divide(along, norms, out=np.zeros(n), where=norms > 0)
    O = D - np.outer(along, a_hat)
    _, s, Vt = np.linalg.svd(O, full_matrices=False)
    basis = Vt[:2].copy()
    coords = O @ basis.T
    for k in range(basis.shape[0]):
        if coords[np.argmax(np.abs(coords[:, k])), k] < 0:
            basis[k], coords[:, k] = -basis[k], -coords[:, k]
    total = float((s ** 2).sum())
    explained = (s[:2] ** 2 / total).tolist() if total > 0 else [0.0, 0.0]
    phi, sector = sector_of(coords, sectors)
    normal_norms = np.linalg.norm(O, axis=1)
    return {
        "axis": axis, "a_hat": a_hat, "axis_norm": float(np.linalg.norm(axis)), "norms": norms,
        "cos_theta": cos_theta, "normal": O, "normal_norms": normal_norms, "basis": basis, "coords": coords,
        "explained": explained, "phi": phi, "sector": sector, "sectors": sectors,
        "normal_spread": float(np.sqrt(np.mean(normal_norms ** 2))),
    }


def sector_of(coords: np.ndarray, sectors: int) -> tuple[np.ndarray, np.ndarray]:
    """Angle in [0, 2 pi) and sector index of 2-D normal-plane coordinates."""
    phi = np.mod(np.arctan2(coords[:, 1], coords[:, 0]), 2 * np.pi)
    return phi, np.minimum((phi / (2 * np.pi / sectors)).astype(int), sectors - 1)


def project(cyl: dict, D: np.ndarray) -> dict:
    """Held-out difference vectors placed on the fit cylinder: cos(theta), |d|, normal part, plane angle, sector."""
    D = np.asarray(D, dtype=np.float64)
    norms = np.linalg.norm(D, axis=1)
    along = D @ cyl["a_hat"]
    O = D - np.outer(along, cyl["a_hat"])
    coords = O @ cyl["basis"].T
    phi, sector = sector_of(coords, cyl["sectors"])
    return {"norms": norms, "cos_theta": np.divide(along, norms, out=np.zeros(len(D)), where=norms > 0),
            "normal": O, "normal_norms": np.linalg.norm(O, axis=1), "coords": coords, "phi": phi, "sector": sector}


def baselines(D: np.ndarray, positive: np.ndarray, negative: np.ndarray, a_hat: np.ndarray) -> tuple[list[str], np.ndarray, dict]:
    """Axis, first PC of the d_i (uncentred, centred) and a logistic probe; their pairwise cosines.

    A principal direction's sign is arbitrary: it is turned to agree with the axis. The probe is
    an L2 logistic regression on standardised activations (scikit-learn's usual setting); its
    weights are mapped back to activation space (``w / std``) before any cosine is taken. On
    unstandardised activations a regularised probe would just return the class-mean difference,
    the axis itself. ``extra["directions"]`` holds the unit vectors steered as baselines: the
    centred first PC (PCA as usually run) and the probe.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    D = np.asarray(D, dtype=np.float64)
    unc = np.linalg.svd(D, full_matrices=False)[2][0]
    cen = np.linalg.svd(D - D.mean(0), full_matrices=False)[2][0]
    X = np.vstack([positive, negative]).astype(np.float64)
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000)).fit(X, y)
    scaler, logistic = probe[0], probe[1]
    w = logistic.coef_[0] / scaler.scale_
    vectors = [a_hat, np.sign(unc @ a_hat or 1) * unc, np.sign(cen @ a_hat or 1) * cen, w]
    names = ["axis (mean d)", "first PC, uncentred", "first PC, centred", "logistic probe"]
    V = np.array([_unit(v) for v in vectors])
    return names, V @ V.T, {"train_accuracy": float(probe.score(X, y)), "model": probe,
                            "directions": {"pc1": V[2], "probe": V[3]}}


def axis_uncertainty(D: np.ndarray, D_held: np.ndarray, boot: int, seed: int, level: float = 0.95) -> dict:
    """Split-half agreement of the axis and intervals of the mean cos(theta).

    - split-half: the fit triples cut at random into two halves, the cosine between the halves'
      axes, over ``boot`` cuts (median and central interval);
    - fit mean cos(theta), leave-one-out: each triple against the axis of the others, so that it
      does not pull the axis toward itself (the in-sample mean is biased upward); bootstrap over
      triples;
    - held-out mean cos(theta): held-out triples against the fit axis; bootstrap over triples.
    """
    D = np.asarray(D, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(D)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    halves = []
    for _ in range(boot):
        order = rng.permutation(n)
        halves.append(float(_unit(D[order[: n // 2]].mean(0)) @ _unit(D[order[n // 2:]].mean(0))))
    norms = np.linalg.norm(D, axis=1).clip(1e-300)
    others = D.sum(0)[None, :] - D
    loo = np.einsum("ij,ij->i", D, others) / (norms * np.linalg.norm(others, axis=1).clip(1e-300))
    held_cos = (D_held @ _unit(D.mean(0))) / np.linalg.norm(D_held, axis=1).clip(1e-300)

    def band(values, point):
        return {"value": float(point), "lo": float(np.quantile(values, lo_q)), "hi": float(np.quantile(values, hi_q))}

    def boot_band(values):
        means = values[rng.integers(0, len(values), (boot, len(values)))].mean(1)
        return band(means, values.mean())

    return {"level": level, "boot": boot, "split_half_cos": band(halves, np.median(halves)),
            "mean_cos_fit_loo": boot_band(loo), "mean_cos_heldout": boot_band(held_cos)}


def layer_sweep(acts: Activations, rows: np.ndarray | None = None) -> list[dict]:
    """Axis norm, mean cos(theta) and normal spread at every block, over the triples ``rows`` (all by default)."""
    pick = slice(None) if rows is None else rows
    out = []
    for layer in range(acts.positive.shape[0]):
        D = acts.positive[layer][pick].astype(np.float64) - acts.negative[layer][pick].astype(np.float64)
        c = cylinder(D, 4)
        out.append({"layer": layer, "axis_norm": c["axis_norm"], "mean_norm": float(c["norms"].mean()),
                    "mean_cos_theta": float(c["cos_theta"].mean()), "normal_spread": c["normal_spread"],
                    "spread_ratio": c["normal_spread"] / c["axis_norm"] if c["axis_norm"] > 0 else math.nan,
                    "plane_explained": float(sum(c["explained"]))})
    return out


def self_vectors(a_hat: np.ndarray, cos_theta: np.ndarray, normal: np.ndarray, strengths: list[float],
                 penalties: list[float], unit: float) -> np.ndarray:
    """``v_i(s, p) = s unit (cos(theta_i) a_hat + (1 - p) sin(theta_i) o_hat_i)``, shape (samples, s, p, d)."""
    sin_t = np.sqrt(np.clip(1.0 - cos_theta ** 2, 0.0, None))
    o_hat = normal / np.linalg.norm(normal, axis=1, keepdims=True).clip(1e-300)
    S = np.asarray(strengths, dtype=np.float64)[None, :, None, None]
    P = np.asarray(penalties, dtype=np.float64)[None, None, :, None]
    along = (cos_theta[:, None] * a_hat[None, :])[:, None, None, :]
    normal_part = (sin_t[:, None] * o_hat)[:, None, None, :]
    return S * unit * (along + (1 - P) * normal_part)


# --- scoring ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConceptForms:
    """The concept's words as token sequences, and the proper prefixes of the split ones.

    Every word is scored in four forms (with and without a leading space, lower case and
    capitalised), de-duplicated by token ids. A form of k pieces needs the model's distribution
    after each of its first k - 1 pieces: one extra query token per distinct proper prefix
    (``nodes``, shortest first, so a prefix's parent comes before it).
    """

    texts: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]
    nodes: tuple[tuple[int, ...], ...]

    @property
    def split(self) -> list[str]:
        return [t for t, i in zip(self.texts, self.ids) if len(i) > 1]


def concept_forms(tokenizer, words: list[str]) -> ConceptForms:
    if not words or not any(w.strip() for w in words):
        raise OrthoscopeError("give at least one concept word (e.g. 'dog, dogs').")
    texts, ids = [], []
    for word in words:
        w = word.strip()
        if not w:
            raise OrthoscopeError("a concept word is empty.")
        for form in (" " + w, w, " " + w[:1].upper() + w[1:], w[:1].upper() + w[1:]):
            t = tuple(tokenizer.encode(form, add_special_tokens=False))
            if t and t not in ids:
                texts.append(form)
                ids.append(t)
    if not ids:
        raise OrthoscopeError(f"the tokenizer turns the concept words {words!r} into nothing.")
    nodes = sorted({f[:k] for f in ids for k in range(1, len(f))}, key=lambda p: (len(p), p))
    return ConceptForms(tuple(texts), tuple(ids), tuple(nodes))


@dataclass
class WindowLayout:
    """One query block that scores every concept form at every slot of a teacher-forced window.

    After the prompt (already in the cache, ``prompt_len`` tokens) the block holds the window's
    first ``W - 1`` tokens, then for each slot ``t`` and prefix node one token: the node's last
    piece at position ``prompt_len + t + len(node) - 1``, seeing the prompt, the window before
    slot ``t``, its own ancestors and itself. ``mask`` is (query, prompt_len + query), True = seen.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    slots: int
    node_count: int

    def node_query(self, slot: int, node: int) -> int:
        return self.slots - 1 + slot * self.node_count + node


def window_layout(window: list[int], forms: ConceptForms, prompt_len: int) -> WindowLayout:
    W = len(window)
    node_index = {n: k for k, n in enumerate(forms.nodes)}
    ids, pos = list(window[:W - 1]), list(range(prompt_len, prompt_len + W - 1))
    Q = W - 1 + W * len(forms.nodes)
    mask = torch.zeros(Q, prompt_len + Q, dtype=torch.bool)
    mask[:, :prompt_len] = True
    for j in range(W - 1):
        mask[j, prompt_len:prompt_len + j + 1] = True
    for t in range(W):
        for n, node in enumerate(forms.nodes):
            q = W - 1 + t * len(forms.nodes) + n
            ids.append(node[-1])
            pos.append(prompt_len + t + len(node) - 1)
            mask[q, prompt_len:prompt_len + t] = True
            for k in range(1, len(node)):
                mask[q, prompt_len + W - 1 + t * len(forms.nodes) + node_index[node[:k]]] = True
            mask[q, prompt_len + q] = True
    return WindowLayout(torch.tensor(ids), torch.tensor(pos), mask, W, len(forms.nodes))


def window_log_mass(first_logp: torch.Tensor, query_logp: torch.Tensor, layout: WindowLayout,
                    forms: ConceptForms) -> torch.Tensor:
    """log of the expected number of concept forms starting at the window's slots, per row.

    ``first_logp``: (rows, vocab) log-probabilities after the prompt (slot 0); ``query_logp``:
    (rows, query, vocab) for the layout's query block. A form's log-probability at a slot is the
    sum of its pieces' log-probabilities along its prefix nodes.
    """
    node_index = {n: k for k, n in enumerate(forms.nodes)}
    terms = []
    for t in range(layout.slots):
        slot = first_logp if t == 0 else query_logp[:, t - 1]
        for f in forms.ids:
            lp = slot[:, f[0]]
            for k in range(1, len(f)):
                lp = lp + query_logp[:, layout.node_query(t, node_index[f[:k]]), f[k]]
            terms.append(lp)
    return torch.logsumexp(torch.stack(terms, dim=1), dim=1)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class Steerer:
    """Steered scores and continuations on one prompt for many vectors at once, counting the work.

    Rows of a batch share the prompt, so there is no padding: the prompt runs once per row with
    the row's vector (the reference steers every token, prompt included), the window block and the
    greedy continuation then read the same cache.
    """

    def __init__(self, model: nn.Module, block: nn.Module, forms: ConceptForms, *, hook: str, tokens: str,
                 batch_size: int, eos_ids: set[int]):
        self.model, self.block, self.forms = model, block, forms
        self.hook, self.tokens, self.batch_size, self.eos_ids = hook, tokens, batch_size, eos_ids
        self.passes, self.tokens_run = 0, 0

    def _steer(self, vectors: torch.Tensor | None, tokens: str | None = None):
        if vectors is None:
            return _nothing()
        return steering_hook(self.block, vectors, hook=self.hook, tokens=tokens or self.tokens)

    @torch.no_grad()
    def prompt_rows(self, prompt: list[int], window: list[int], vectors: torch.Tensor, gen_tokens: int,
                    temperature: float, seed: int) -> tuple[np.ndarray, list[list[int]]]:
        """Concept log-mass in the teacher-forced window and the continuation's ids, for each vector."""
        layout = window_layout(window, self.forms, len(prompt)) if window else None
        scores, continuations = [], []
        for start in range(0, len(vectors), self.batch_size):
            v = vectors[start:start + self.batch_size]
            rows = len(v)
            with self._steer(v):
                out = self.model(input_ids=torch.tensor([prompt]).expand(rows, -1), use_cache=True, logits_to_keep=1)
                self.passes += 1
                self.tokens_run += rows * len(prompt)
                cache = out.cache
                first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
                if layout is not None:
                    q = self.model(input_ids=layout.ids.expand(rows, -1), position_ids=layout.positions.expand(rows, -1),
                                   attention_mask=layout.mask[None, None].expand(rows, 1, -1, -1), cache=cache,
                                   use_cache=True)
                    self.passes += 1
                    self.tokens_run += rows * len(layout.ids)
                    scores.append(window_log_mass(first, torch.log_softmax(q.logits.float(), dim=-1), layout, self.forms))
                    cache.crop(-len(layout.ids))  # back to the prompt alone
                    del q
                else:
                    scores.append(torch.full((rows,), math.nan))
                continuations.extend(self._continue(first, cache, gen_tokens, temperature, seed + start))
        return torch.cat(scores).numpy(), continuations

    def _continue(self, first: torch.Tensor, cache, gen_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        if gen_tokens == 0:
            return [[] for _ in range(len(first))]
        generator = torch.Generator().manual_seed(seed)

        def pick(logp: torch.Tensor) -> torch.Tensor:
            if temperature > 0:
                return torch.multinomial(torch.softmax(logp / temperature, dim=-1), 1, generator=generator)[:, 0]
            return logp.argmax(dim=-1)

        token = pick(first)
        out = [token]
        for _ in range(gen_tokens - 1):
            logits = self.model(input_ids=token[:, None], cache=cache, use_cache=True).logits[:, -1]
            self.passes += 1
            self.tokens_run += len(token)
            token = pick(torch.log_softmax(logits.float(), dim=-1))
            out.append(token)
        ids = torch.stack(out, dim=1).tolist()
        trimmed = []
        for row in ids:
            stop = next((k for k, i in enumerate(row) if i in self.eos_ids), len(row))
            trimmed.append(row[:stop])
        return trimmed

    @torch.no_grad()
    def neutral_nll(self, sentences: list[list[int]], vectors: torch.Tensor | None) -> np.ndarray:
        """Mean negative log-likelihood per token of the sentences for each vector, added at every token.

        ``vectors``: (k, d), or None for the unsteered model (one value). Rows are (vector,
        sentence) pairs, batched so that several vectors share a forward pass.
        """
        k = 1 if vectors is None else len(vectors)
        per = max(1, self.batch_size // len(sentences))
        ids, mask, _ = right_padded(sentences)
        out = []
        for start in range(0, k, per):
            n_v = min(per, k - start)
            rows, rmask = ids.repeat(n_v, 1), mask.repeat(n_v, 1)
            v = None if vectors is None else vectors[start:start + n_v].repeat_interleave(len(sentences), 0)
            with self._steer(v, "all"):
                logits = self.model(input_ids=rows, attention_mask=rmask, use_cache=False).logits
            self.passes += 1
            self.tokens_run += int(rmask.sum())
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, rows[:, 1:, None])[..., 0]
            m = rmask[:, 1:].float()
            out.append(-(logp * m).sum(1).view(n_v, -1).sum(1) / m.sum(1).view(n_v, -1).sum(1))
        return torch.cat(out).numpy()


# --- parameters ------------------------------------------------------------------------------------

def _choice(p: dict, key: str, allowed: tuple[str, ...], what: str) -> None:
    if p[key] not in allowed:
        raise OrthoscopeError(f"unknown {what} {p[key]!r}; use one of {', '.join(allowed)}.")


def check_params(params: dict, n_layers: int | None = None) -> dict:
    unknown = set(params) - set(DEFAULTS) - {"triples_sha256"}
    if unknown:
        raise OrthoscopeError(f"unknown steering setting(s): {', '.join(sorted(unknown))}.")
    p = {**DEFAULTS, **params}
    _choice(p, "position", POSITIONS, "token position")
    _choice(p, "template", TEMPLATES, "prompt template")
    _choice(p, "unit", UNITS, "strength unit")
    _choice(p, "steer_tokens", STEER_TOKENS, "choice of steered tokens")
    _choice(p, "hook", HOOKS, "layer convention")
    if n_layers is not None:
        if p["layer"] is None:
            p["layer"] = default_layer(n_layers)
        if not isinstance(p["layer"], int) or not 0 <= p["layer"] < n_layers:
            raise OrthoscopeError(f"layer {p['layer']} is out of range: this model has {n_layers} blocks, "
                                  f"numbered 0 to {n_layers - 1}.")
    if not isinstance(p["sectors"], int) or not 2 <= p["sectors"] <= 36:
        raise OrthoscopeError(f"sectors must be a whole number from 2 to 36, got {p['sectors']!r}.")
    strengths = p["strengths"]
    if not strengths or any(not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)) for s in strengths):
        raise OrthoscopeError("strengths must be positive numbers (multiples of the strength unit).")
    p["strengths"] = sorted(float(s) for s in set(strengths))
    if not p["penalties"] or any(not (isinstance(x, (int, float)) and 0 <= x <= 1) for x in p["penalties"]):
        raise OrthoscopeError("penalties must be numbers from 0 (the sample's own direction) to 1 (the axis only).")
    p["penalties"] = sorted(float(x) for x in set(p["penalties"]))
    if not (isinstance(p["heldout_fraction"], (int, float)) and 0 < p["heldout_fraction"] < 1):
        raise OrthoscopeError("the held-out fraction must lie between 0 and 1.")
    for key, low, high in (("null_draws", 1, 16), ("max_heldout", 1, 256), ("window", 1, MAX_WINDOW),
                           ("gen_tokens", 1, MAX_GEN_TOKENS), ("neutral_sentences", 1, 64), ("boot", 20, 10000),
                           ("batch_size", 1, 256), ("seed", 0, 2**32 - 1)):
        if not isinstance(p[key], int) or isinstance(p[key], bool) or not low <= p[key] <= high:
            raise OrthoscopeError(f"{key} must be a whole number from {low} to {high}, got {p[key]!r}.")
    if not (isinstance(p["temperature"], (int, float)) and 0 <= p["temperature"] <= 5):
        raise OrthoscopeError("the temperature must be from 0 (greedy) to 5.")
    p["temperature"] = float(p["temperature"])
    words = p["tokens"]
    if words is not None and (isinstance(words, str) or not all(isinstance(w, str) for w in words)):
        raise OrthoscopeError("the concept words must be a list of words (e.g. ['dog', 'dogs']).")
    if p["control"] is not None and p["control"] not in steering_data.concepts():
        raise OrthoscopeError(f"no built-in concept {p['control']!r} to use as the control; the built-in concepts are "
                              f"{', '.join(steering_data.concept_names())}.")
    return p


def control_concept(concept: str, words: list[str], chosen: str | None) -> str:
    """The control: the chosen one, else the built-in concept after this one (or the first, for a
    user's concept) that shares no word with it."""
    table = steering_data.concepts()
    mine = {w.strip().lower() for w in words}
    if chosen is not None:
        if chosen == concept or mine & {w.strip().lower() for w in table[chosen]["tokens"]}:
            raise OrthoscopeError(f"the control concept {chosen!r} shares words with {concept!r}; pick an unrelated one.")
        return chosen
    names = list(table)
    order = names[names.index(concept) + 1:] + names[:names.index(concept)] if concept in names else names
    for name in order:
        if not mine & {w.strip().lower() for w in table[name]["tokens"]}:
            return name
    raise OrthoscopeError("every built-in concept shares a word with this one; name an unrelated control concept.")


# --- statistics ------------------------------------------------------------------------------------

def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n."""
    if n == 0:
        return math.nan, math.nan
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - level) / 2))
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def boot_mean(values: np.ndarray, boot: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over the rows of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return math.nan, math.nan
    means = values[rng.integers(0, values.size, (boot, values.size))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2))


# --- the result --------------------------------------------------------------------------------------

SAMPLE_COLUMNS = ["index", "split", "prompt", "cos_theta", "norm", "normal_norm", "x", "y", "phi_deg", "sector"]
SELF_COLUMNS = ["index", "prompt", "cos_theta", "norm", "normal_norm", "x", "y", "phi_deg", "sector", "p",
                "min_strength", "steerability", "gain_at_max", "null_gain_at_max", "null_q95_at_max", "rate",
                "mentions_at_max", "ppl_ratio_at_max"]
STEERED_COLUMNS = ["sample", "kind", "direction", "s", "p", "draw", "norm", "concept_score", "gain", "mentions",
                   "repetition", "ppl_ratio", "text"]
DIRECTION_NAMES = {"axis": "axis (mean d)", "pc1": "first PC (centred)", "probe": "logistic probe",
                   "control": "control concept's axis", "random": "random (the null)"}


def _typed(rows: list[dict], columns: list[str], text: tuple[str, ...]) -> pd.DataFrame:
    # JSON carries NaN as null: a reloaded all-NaN column must come back as floats, not objects.
    frame = pd.DataFrame(rows).reindex(columns=columns)
    for c in columns:
        if c not in text and frame[c].dtype == object:
            frame[c] = frame[c].astype(float)
    return frame


@dataclass
class SteeringResult(Result):
    diagnostic: ClassVar[str] = "steering"
    concept: dict = field(default_factory=dict)
    layer: int = 0
    n_layers: int = 0
    hidden_size: int = 0
    n_fit: int = 0
    n_heldout: int = 0
    n_steered: int = 0
    axis_norm: float = math.nan
    mean_norm: float = math.nan
    unit_value: float = math.nan
    explained: list = field(default_factory=list)
    uncertainty: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    self_steering: list = field(default_factory=list)
    grid: list = field(default_factory=list)
    directions: list = field(default_factory=list)
    sectors: list = field(default_factory=list)
    steered: list = field(default_factory=list)
    unsteered: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)
    sweep: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    work: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return _typed(self.samples, SAMPLE_COLUMNS, ("split", "prompt"))

    @classmethod
    def from_dict(cls, data: dict):
        if data.get("diagnostic") == cls.diagnostic and ("self_steering" not in data or "directions" not in data):
            raise OrthoscopeError("this steering report comes from an earlier protocol, scored without a null "
                                  "(no self_steering or directions tables); run the diagnostic again.")
        return super().from_dict(data)

    def tables(self) -> dict[str, pd.DataFrame]:
        tables = {"samples": self.to_frame(),
                "self_steering": _typed(self.self_steering, SELF_COLUMNS, ("prompt",)),
                "grid": pd.DataFrame(self.grid), "directions": pd.DataFrame(self.directions),
                "sectors": pd.DataFrame(self.sectors),
                "steered": _typed(self.steered, STEERED_COLUMNS, ("kind", "direction", "text"))}
        if self.sweep:
            tables["sweep"] = pd.DataFrame(self.sweep)
        return tables


def split_triples(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, round(n * fraction))
    if n - held < 4:
        raise OrthoscopeError(f"{n} triples leave {n - held} to fit after holding out {held}; give more triples.")
    return np.sort(order[held:]), np.sort(order[:held])


# --- aggregation -------------------------------------------------------------------------------------

def _cell_stats(on: pd.DataFrame, null: pd.DataFrame, boot: int, rng: np.random.Generator,
                controls: tuple[int, int]) -> dict:
    """An effect beside its null: mean gain with its interval over samples, the null's mean, spread
    and 95th percentile, rates with Wilson intervals, coherence, whether the mean gain is above the
    null's 95th percentile, and the p-value of more mentions than the null and the unsteered
    continuations (``controls``: their mentions and count) together."""
    q95 = float(np.quantile(null["gain"], NULL_QUANTILE)) if len(null) else math.nan
    gain = on["gain"].to_numpy(dtype=float)
    lo, hi = boot_mean(gain, boot, rng)
    k = int(on["mentions"].sum())
    rate_lo, rate_hi = wilson(k, len(on))
    return {"n": len(on), "concept_gain": float(gain.mean()), "concept_gain_lo": lo, "concept_gain_hi": hi,
            "null_gain": float(null["gain"].mean()), "null_gain_sd": float(null["gain"].std(ddof=1)) if len(null) > 1 else math.nan,
            "null_q95": q95, "concept_rate": k / len(on), "concept_rate_lo": rate_lo, "concept_rate_hi": rate_hi,
            "null_rate": float(null["mentions"].mean()),
            "ppl_ratio": float(np.exp(np.log(on["ppl_ratio"]).mean())),
            "null_ppl_ratio": float(np.exp(np.log(null["ppl_ratio"]).mean())),
            "repetition": float(on["repetition"].mean()), "null_repetition": float(null["repetition"].mean()),
            "fraction_reaching": float((gain > q95).mean()), "reaching": bool(gain.mean() > q95),
            "text_pvalue": _more_mentions(k, len(on), int(null["mentions"].sum()) + controls[0], len(null) + controls[1])}


def _more_mentions(k: int, n: int, k0: int, n0: int) -> float:
    """One-sided Fisher exact p-value that steered continuations mention the concept more often
    (k of n) than the reference ones (k0 of n0: random directions of the same norm and unsteered)."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater")[1])


def aggregate(frame: pd.DataFrame, strengths: list[float], penalties: list[float], boot: int,
              seed: int) -> tuple[list[dict], list[dict]]:
    """The self-steering grid (one row per (s, p)) and the directions table (one row per (direction, s))."""
    rng = np.random.default_rng(seed + 2)
    unsteered = frame[frame["kind"] == "unsteered"]
    controls = (int(unsteered["mentions"].sum()), len(unsteered))

    def pick(kind, s, p=None, direction=None):
        sel = (frame["kind"] == kind) & np.isclose(frame["s"], s)
        if p is not None:
            sel &= np.isclose(frame["p"], p)
        if direction is not None:
            sel &= frame["direction"] == direction
        return frame[sel]

    grid = [{"s": s, "p": p, **_cell_stats(pick("self", s, p), pick("random", s, p), boot, rng, controls)}
            for s in strengths for p in penalties]
    directions = []
    for s in strengths:
        null = pick("random", s, 0.0)
        for name in ("axis", "pc1", "probe", "control"):
            directions.append({"direction": name, "s": s, **_cell_stats(pick("direction", s, direction=name), null, boot, rng, controls)})
        row = {"direction": "random", "s": s, **_cell_stats(null, null, boot, rng, controls)}
        row.update(fraction_reaching=math.nan, reaching=None, text_pvalue=math.nan)  # the null itself is the reference, not a contender
        directions.append(row)
    return grid, directions


def self_table(frame: pd.DataFrame, held: np.ndarray, prompts: list[str], placed: dict, strengths: list[float],
               penalty: float, grid: list[dict]) -> list[dict]:
    """Per held-out sample, at penalty ``penalty``: the smallest strength whose gain clears the
    null's 95th percentile at that strength, the gain and rate, beside the sample's geometry."""
    q95 = {(g["s"], g["p"]): g["null_q95"] for g in grid}
    rows = []
    top = strengths[-1]
    for r, i in enumerate(held):
        mine = frame[(frame["sample"] == int(i)) & (frame["kind"] == "self") & np.isclose(frame["p"], penalty)].sort_values("s")
        nulls = frame[(frame["sample"] == int(i)) & (frame["kind"] == "random") & np.isclose(frame["p"], penalty)]
        reach = [s for s, g in zip(mine["s"], mine["gain"]) if g > q95[(s, penalty)]]
        need = float(reach[0]) if reach else math.nan
        at_max = mine[np.isclose(mine["s"], top)].iloc[0]
        rows.append({"index": int(i), "prompt": prompts[r], "cos_theta": float(placed["cos_theta"][r]),
                     "norm": float(placed["norms"][r]), "normal_norm": float(placed["normal_norms"][r]),
                     "x": float(placed["coords"][r, 0]), "y": float(placed["coords"][r, 1]),
                     "phi_deg": float(math.degrees(placed["phi"][r])), "sector": int(placed["sector"][r]),
                     "p": penalty, "min_strength": need, "steerability": 0.0 if math.isnan(need) else 1.0 / need,
                     "gain_at_max": float(at_max["gain"]),
                     "null_gain_at_max": float(nulls[np.isclose(nulls["s"], top)]["gain"].mean()),
                     "null_q95_at_max": q95[(top, penalty)], "rate": float(mine["mentions"].mean()),
                     "mentions_at_max": bool(at_max["mentions"]), "ppl_ratio_at_max": float(at_max["ppl_ratio"])})
    return rows


def sector_table(rows: list[dict], sectors: int) -> list[dict]:
    """Self-steering per normal-plane sector of the held-out samples (placed on the fit plane)."""
    width = 360.0 / sectors
    out = []
    for k in range(sectors):
        hit = [r for r in rows if r["sector"] == k]
        out.append({"sector": k, "phi_from_deg": k * width, "phi_to_deg": (k + 1) * width, "count": len(hit),
                    "fraction_reaching": float(np.mean([math.isfinite(r["min_strength"]) for r in hit])) if hit else math.nan,
                    "mean_steerability": float(np.mean([r["steerability"] for r in hit])) if hit else math.nan,
                    "mean_gain": float(np.mean([r["gain_at_max"] for r in hit])) if hit else math.nan,
                    "mean_cos_theta": float(np.mean([r["cos_theta"] for r in hit])) if hit else math.nan})
    return out


def headline(grid: list[dict], directions: list[dict], unsteered_rate: float) -> dict:
    """The best axis strength and the best self-steering cell among those whose ppl_ratio <= 3
    (largest gain over the null's mean), and a plain verdict on whether the concept reached the text.

    The verdict looks at every coherent self-steering cell and axis strength: the concept is in the
    text when one of them mentions it more often than the random directions and the unsteered
    model together (one-sided Fisher test, Bonferroni over the settings looked at); otherwise it
    quotes the highest rate seen, beside its null.
    """
    coherent = [r for r in grid if r["ppl_ratio"] <= PPL_LIMIT]
    coherent += [r for r in directions if r.get("direction") == "axis" and r["ppl_ratio"] <= PPL_LIMIT]

    def best(rows):
        return max(rows, key=lambda r: r["concept_gain"] - r["null_gain"]) if rows else None

    axis = best([r for r in coherent if r.get("direction") == "axis"])
    cell = best([r for r in coherent if "direction" not in r])
    alpha = 0.05 / max(1, len(coherent))
    in_text = [r for r in coherent if r["text_pvalue"] < alpha]

    def where(r):
        return (f"axis direction at s = {r['s']:g}" if r.get("direction") == "axis"
                else f"self-steering at s = {r['s']:g}, p = {r['p']:g}")

    if not coherent:
        verdict = (f"No strength keeps the neutral-text perplexity within {PPL_LIMIT:g}x: every steered setting "
                   "garbles the model, so no gain here means anything.")
    elif in_text:
        r = max(in_text, key=lambda r: r["concept_rate"])
        verdict = (f"Steering puts the concept into the text: with the {where(r)}, {r['concept_rate']:.0%} of "
                   f"continuations mention it (95% CI {r['concept_rate_lo']:.0%} to {r['concept_rate_hi']:.0%}) against "
                   f"{r['null_rate']:.0%} along random directions of the same norm and {unsteered_rate:.0%} unsteered.")
    else:
        r = max(coherent, key=lambda r: (r["concept_rate"], r["concept_gain"]))
        verdict = (f"Steering does not put the concept into the text beyond chance: the highest rate, with the "
                   f"{where(r)}, is {r['concept_rate']:.0%} of continuations (95% CI {r['concept_rate_lo']:.0%} to "
                   f"{r['concept_rate_hi']:.0%}; random directions of the same norm {r['null_rate']:.0%}, unsteered "
                   f"{unsteered_rate:.0%}), over the {len(coherent)} settings whose neutral-text perplexity stays "
                   f"within {PPL_LIMIT:g}x.")
    gain_note = None
    if axis is not None:
        gain_note = (f"axis at s = {axis['s']:g}: concept gain {axis['concept_gain']:+.3g} nats "
                     f"({axis['concept_gain_lo']:+.3g} to {axis['concept_gain_hi']:+.3g}) against the random null's "
                     f"{axis['null_gain']:+.3g} (95th percentile {axis['null_q95']:+.3g}), ppl_ratio {axis['ppl_ratio']:.3g}")
    return {"best_axis": axis, "best_self": cell, "concept_in_text": bool(in_text), "verdict": verdict,
            "axis_gain": gain_note, "ppl_limit": PPL_LIMIT, "unsteered_rate": unsteered_rate,
            "settings_tested": len(coherent), "alpha": alpha}


# --- the run -----------------------------------------------------------------------------------------

def run(handle: ModelHandle, params: dict, triples: list[dict] | None = None,
        progress: Progress | None = None, activation_cache: ActivationCache | None = None) -> SteeringResult:
    """The cylinder of one concept at one block, and what steering along it makes the model say
    (see the module doc). ``activation_cache(key, compute)``: where the caller keeps activations
    between runs, if it does."""
    with handle.hooks_lock:
        return _run(handle, params, triples, progress, activation_cache)


def _steering_rows(cyl: dict, placed: dict, directions: dict[str, np.ndarray], p: dict, unit: float,
                   count: int) -> list[list[tuple[dict, np.ndarray]]]:
    """Per steered held-out sample, every (row description, vector) to run on its prompt."""
    S, P = p["strengths"], p["penalties"]
    P_null = sorted(set(P) | {0.0})  # the directions' nulls have norm s * unit, the p = 0 norm
    vectors = self_vectors(cyl["a_hat"], placed["cos_theta"][:count], placed["normal"][:count], S, P_null, unit)
    rng = np.random.default_rng(p["seed"] + 1)
    d = cyl["a_hat"].size
    out = []
    for r in range(count):
        rows = [({"kind": "unsteered", "direction": "none", "s": 0.0, "p": math.nan, "draw": -1}, np.zeros(d))]
        for si, s in enumerate(S):
            for pi, pen in enumerate(P_null):
                v = vectors[r, si, pi]
                if pen in P:
                    rows.append(({"kind": "self", "direction": "own", "s": s, "p": pen, "draw": -1}, v))
                for k in range(p["null_draws"]):
                    rows.append(({"kind": "random", "direction": "random", "s": s, "p": pen, "draw": k},
                                 _unit(rng.standard_normal(d)) * np.linalg.norm(v)))
            for name, u in directions.items():
                rows.append(({"kind": "direction", "direction": name, "s": s, "p": math.nan, "draw": -1}, s * unit * u))
        out.append(rows)
    return out


def _run(handle: ModelHandle, params: dict, triples: list[dict] | None, progress: Progress | None,
         activation_cache: ActivationCache | None) -> SteeringResult:
    t_start = time.perf_counter()
    report = progress or (lambda f, m: None)
    model = check_causal_lm(handle)
    tokenizer = handle.tokenizer()
    blocks = decoder_blocks(model)
    p = check_params(params, len(blocks))
    concepts = steering_data.concepts()
    if triples is None:
        triples = steering_data.builtin_triples(p["concept"])
        source = f"built-in set {concepts[p['concept']]['file']}"
    else:
        source = "uploaded triples"
    words = p["tokens"] if p["tokens"] is not None else concepts.get(p["concept"], {}).get("tokens")
    if not words:
        raise OrthoscopeError(f"give the words that signal the concept {p['concept']!r} (e.g. 'dog, dogs').")
    p["tokens"] = [w.strip() for w in words if w.strip()]
    forms = concept_forms(tokenizer, p["tokens"])
    notes = []
    if forms.split:
        notes.append("the tokenizer splits " + ", ".join(repr(t) for t in forms.split) + " into several tokens; each is "
                     "scored as its whole token sequence.")
    template, note = effective_template(tokenizer, p["template"])
    if note:
        notes.append(note)
    control = control_concept(p["concept"], p["tokens"], p["control"])
    control_triples = steering_data.builtin_triples(control)[:CONTROL_TRIPLES]
    fit, held = split_triples(len(triples), p["heldout_fraction"], p["seed"])
    steered = held[:p["max_heldout"]]
    layer = p["layer"]
    acts_kw = dict(position=p["position"], template=template, hook=p["hook"], batch_size=p["batch_size"],
                   cache=activation_cache)
    acts, hit = _activations_once(handle, triples, progress=lambda f, m: report(0.12 * f, m), **acts_kw)
    c_acts, c_hit = _activations_once(handle, control_triples, progress=lambda f, m: report(0.12 + 0.05 * f, f"control set: {m}"),
                                      **acts_kw)
    t_acts = time.perf_counter()

    pos, neg = acts.positive[layer].astype(np.float64), acts.negative[layer].astype(np.float64)
    D = pos[fit] - neg[fit]
    if not np.linalg.norm(D.mean(0)) > 1e-6 * max(1e-30, float(np.abs(pos[fit]).mean())):
        raise OrthoscopeError(
            f"the difference vectors at block {layer} ({p['hook']}, {p['position']} token) average to zero, so there is "
            "no axis to steer along: the two responses look the same to the model there (block 0's input is the token "
            "embedding, and both responses may end on the same token). Pick a later block or the mean position.")
    cyl = cylinder(D, p["sectors"])
    names, cosines, probe = baselines(D, pos[fit], neg[fit], cyl["a_hat"])
    D_held = pos[held] - neg[held]
    placed = project(cyl, D_held)
    X_held = np.vstack([pos[held], neg[held]])
    y_held = np.r_[np.ones(len(held)), np.zeros(len(held))]
    # The axis as a classifier: project on it, threshold halfway between the fitted classes' means.
    cut = 0.5 * ((pos[fit] @ cyl["a_hat"]).mean() + (neg[fit] @ cyl["a_hat"]).mean())
    uncertainty = axis_uncertainty(D, D_held, p["boot"], p["seed"])
    c_hat = _unit((c_acts.positive[layer] - c_acts.negative[layer]).astype(np.float64).mean(0))
    directions = {"axis": cyl["a_hat"], "pc1": probe["directions"]["pc1"], "probe": probe["directions"]["probe"],
                  "control": c_hat}
    unit = cyl["axis_norm"] if p["unit"] == "axis" else float(cyl["norms"].mean())
    report(0.2, "geometry done; steering the held-out prompts")

    eos = {i for i in (getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None))
           for i in (i if isinstance(i, list) else [i]) if i is not None}
    steerer = Steerer(model, blocks[layer], forms, hook=p["hook"], tokens=p["steer_tokens"],
                      batch_size=p["batch_size"], eos_ids=eos)
    plan = _steering_rows(cyl, placed, directions, p, unit, len(steered))
    pattern = word_pattern(p["tokens"])
    records, all_vectors = [], []
    t_steer = time.perf_counter()
    for r, i in enumerate(steered):
        prompt = prompt_ids(tokenizer, triples[i]["prompt"], template)
        window = response_ids(tokenizer, triples[i]["negative"], template)[:p["window"]]
        V = torch.tensor(np.array([v for _, v in plan[r]]), dtype=torch.float32)
        scores, conts = steerer.prompt_rows(prompt, window, V, p["gen_tokens"], p["temperature"], p["seed"] + 1000 * r)
        for (desc, v), score, ids in zip(plan[r], scores, conts):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            records.append({"sample": int(i), **desc, "norm": float(np.linalg.norm(v)), "concept_score": float(score),
                            "mentions": bool(pattern.search(text)), "repetition": repetition_rate(text),
                            "text": text.strip()})
            all_vectors.append(v)
        report(0.2 + 0.65 * (r + 1) / len(steered), f"steering: held-out prompt {r + 1}/{len(steered)}")
    t_gen = time.perf_counter()

    neutral = [tokenizer.encode(s, add_special_tokens=False) for s in steering_data.neutral_sentences()[:p["neutral_sentences"]]]
    base_nll = float(steerer.neutral_nll(neutral, None)[0])
    unique, inverse = np.unique(np.round(np.array(all_vectors), 10), axis=0, return_inverse=True)
    nll = np.empty(len(unique))
    chunk = max(1, p["batch_size"] // len(neutral)) * 4
    for start in range(0, len(unique), chunk):
        nll[start:start + chunk] = steerer.neutral_nll(neutral, torch.tensor(unique[start:start + chunk], dtype=torch.float32))
        report(0.85 + 0.13 * min(1.0, (start + chunk) / len(unique)), "perplexity of neutral text under each vector")
    t_ppl = time.perf_counter()

    frame = pd.DataFrame(records)
    frame["ppl_ratio"] = np.exp(nll[np.ravel(inverse)] - base_nll)
    base = frame[frame["kind"] == "unsteered"].set_index("sample")["concept_score"]
    frame["gain"] = frame["concept_score"] - frame["sample"].map(base)
    grid, dir_rows = aggregate(frame, p["strengths"], p["penalties"], p["boot"], p["seed"])
    prompts = [triples[i]["prompt"] for i in steered]
    self_rows = self_table(frame, steered, prompts, placed, p["strengths"], p["penalties"][0], grid)
    unsteered = frame[frame["kind"] == "unsteered"]
    u_rate = float(unsteered["mentions"].mean())
    u_lo, u_hi = wilson(int(unsteered["mentions"].sum()), len(unsteered))
    summary = headline(grid, dir_rows, u_rate)
    examples = _examples(frame, summary, prompts, steered)
    samples = []
    for split, idx, geo in (("fit", fit, cyl), ("held-out", held, placed)):
        for r, i in enumerate(idx):
            samples.append({"index": int(i), "split": split, "prompt": triples[i]["prompt"],
                            "cos_theta": float(geo["cos_theta"][r]), "norm": float(geo["norms"][r]),
                            "normal_norm": float(geo["normal_norms"][r]), "x": float(geo["coords"][r, 0]),
                            "y": float(geo["coords"][r, 1]), "phi_deg": float(math.degrees(geo["phi"][r])),
                            "sector": int(geo["sector"][r])})
    sweep = layer_sweep(acts, fit) if p["sweep"] else []
    report(1.0, "done")
    t_end = time.perf_counter()
    work = {"activation_passes": acts.passes + c_acts.passes, "activation_tokens": acts.tokens + c_acts.tokens,
            "activation_s": acts.seconds + c_acts.seconds, "activations_cached": hit and c_hit,
            "steering_passes": steerer.passes, "steering_tokens": steerer.tokens_run,
            "steering_s": t_end - t_acts, "generation_s": t_gen - t_steer, "perplexity_s": t_ppl - t_gen,
            "steered_rows": len(frame), "unique_vectors": int(len(unique)), "query_tokens_per_row":
            (p["window"] - 1) + p["window"] * len(forms.nodes)}
    return SteeringResult(
        model_name=handle.name, fingerprint=handle.fingerprint,
        params={**p, "template": template, "source": source, "n_triples": len(triples), "control": control,
                "triples_sha256": steering_data.digest(triples)},
        timings={"total_s": t_end - t_start, "activations_s": 0.0 if hit and c_hit else acts.seconds + c_acts.seconds,
                 "steering_s": t_end - t_acts},
        concept={"name": p["concept"], "words": p["tokens"],
                 "forms": [{"text": t, "ids": list(i), "pieces": tokenizer.convert_ids_to_tokens(list(i))}
                           for t, i in zip(forms.texts, forms.ids)],
                 "control": {"name": control, "n_triples": len(control_triples),
                             "cos_with_axis": float(c_hat @ cyl["a_hat"])}},
        layer=layer, n_layers=len(blocks), hidden_size=int(D.shape[1]), n_fit=len(fit), n_heldout=len(held),
        n_steered=len(steered), axis_norm=cyl["axis_norm"], mean_norm=float(cyl["norms"].mean()), unit_value=unit,
        explained=cyl["explained"], uncertainty=uncertainty,
        baselines={"names": names, "cosines": cosines.tolist(), "probe_train_accuracy": probe["train_accuracy"],
                   "probe_heldout_accuracy": float(probe["model"].score(X_held, y_held)),
                   "axis_heldout_accuracy": float(((X_held @ cyl["a_hat"] > cut) == y_held).mean())},
        heldout={"mean_cos_theta": float(placed["cos_theta"].mean()), "n": len(held)},
        samples=samples, self_steering=self_rows, grid=grid, directions=dir_rows,
        sectors=sector_table(self_rows, p["sectors"]),
        steered=frame.reindex(columns=STEERED_COLUMNS).to_dict("records"),
        unsteered={"rate": u_rate, "rate_lo": u_lo, "rate_hi": u_hi, "neutral_nll": base_nll,
                   "mean_concept_score": float(unsteered["concept_score"].mean()),
                   "repetition": float(unsteered["repetition"].mean())},
        summary=summary, examples=examples, sweep=sweep, notes=notes, work=work,
    )


def _examples(frame: pd.DataFrame, summary: dict, prompts: list[str], steered: np.ndarray, count: int = 3) -> list[dict]:
    """Continuations at the headline's best self-steering cell (else the largest strength): unsteered,
    self-steered and along a random direction of the same norm, for the first held-out prompts."""
    best = summary["best_self"]
    s, pen = (best["s"], best["p"]) if best else (frame["s"].max(), frame.loc[frame["kind"] == "self", "p"].min())
    out = []
    for r, i in enumerate(steered[:count]):
        mine = frame[frame["sample"] == int(i)]

        def text(kind, **extra):
            sel = mine["kind"] == kind
            for key, value in extra.items():
                sel &= np.isclose(mine[key], value)
            rows = mine[sel]
            return rows.iloc[0]["text"] if len(rows) else ""

        out.append({"sample": int(i), "prompt": prompts[r], "s": float(s), "p": float(pen),
                    "unsteered": text("unsteered"), "steered": text("self", s=s, p=pen),
                    "random": text("random", s=s, p=pen, draw=0)})
    return out
