"""Cylindrical steering analysis: the axis and normal plane of a concept's difference vectors.

The Cylindrical Representation Hypothesis (Gao, Zhang, Liu et al., "The Cylindrical
Representation Hypothesis for Language Model Steering", ICML 2026, arXiv:2605.01844) says that
the difference vectors ``d_i = h(prompt_i + response with the concept) - h(prompt_i + response
without it)`` of a concept share a central axis, which drives the concept, while their
components in the surrounding normal plane set how easily steering works, and only some
sectors of that plane help.

Measured here, at the output of decoder block ``L`` (``hidden_states[L + 1]`` in transformers;
read by a forward hook on the block itself, which for the last block is the output before the
final norm, where ``hidden_states`` has the normed one):

- ``a = mean_i d_i``, the axis; baselines: the first principal direction of the ``d_i``
  (uncentred and centred) and a logistic probe separating the two kinds of activations; cosines
  between all four;
- per triple ``cos(theta_i) = <d_i, a_hat> / |d_i|``, ``|d_i|`` and the normal component
  ``o_i = d_i - <d_i, a_hat> a_hat`` (whose mean is zero by construction); a 2-D basis of the
  normal plane from the principal directions of the ``o_i``; the sector angle ``phi_i`` of each
  ``o_i`` in that basis, in ``K`` equal sectors;
- steering: a hook adds ``v_i(s, p) = s m (cos(theta_i) a_hat + (1 - p) sin(theta_i) o_hat_i)``
  at the same block output, where ``m`` is the mean ``|d_i|`` (so ``s`` counts typical
  difference lengths): ``p = 0`` steers along the triple's own direction ``d_hat_i``, ``p = 1``
  only along the axis. It is added from the last prompt token on (that token and every
  generated one), which is where responses are read. Scores, on held-out prompts and without
  a judge model: the concept gain (change of the log of the next-token probability mass on the
  concept's tokens) and the corruption (change of the mean negative log-likelihood of neutral
  sentences, in nats per token, with the vector added at every position);
- per triple, the smallest strength whose concept gain reaches ``threshold`` (interpolated on
  the strength grid), its inverse as the steerability, and the steerability per sector;
- a sweep over all blocks of the axis norm, the mean ``cos(theta)`` and the normal-plane spread.
"""

from __future__ import annotations

import copy
import math
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
    "tokens": None,  # None: the built-in concept's tokens
    "layer": None,  # None: three fifths of the way up (see default_layer)
    "position": "mean",
    "template": "chat",
    "sectors": 8,
    "strengths": [1.0, 2.0, 4.0, 8.0],
    "penalties": [0.0, 0.5, 1.0],
    "threshold": 1.0,
    "heldout_fraction": 0.25,
    "seed": 0,
    "grid_samples": 4,
    "heldout_prompts": 8,
    "neutral_sentences": 4,
    "gen_strength": 4.0,
    "gen_penalty": 0.0,
    "gen_tokens": 16,
    "gen_prompts": 3,
    "sweep": True,
    "batch_size": 16,
}
POSITIONS = ("last", "mean")
TEMPLATES = ("chat", "plain")
MAX_GEN_TOKENS = 64
PROBE_C = 1.0


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
                              "without a causal LM head; steering scores next-token probabilities, so it needs a "
                              "causal language model (e.g. builtin:smollm2).")
    model = handle.module()
    if model.get_output_embeddings() is None:
        raise OrthoscopeError(f"{handle.name} has no LM head (output embeddings); steering needs next-token logits.")
    return model


def default_layer(n_layers: int) -> int:
    """Three fifths of the way up. On SmolLM2 (30 blocks) and the built-in dog triples, of blocks
    5, 9, 14 and 18, block 18 raised the concept most per unit of corruption along the axis."""
    return min(n_layers - 1, round(0.6 * n_layers))


def _block_output(output):
    return output[0] if isinstance(output, tuple) else output


def _with_block_output(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def steering_hook(block: nn.Module, vectors: torch.Tensor, where: str = "from_last") -> Iterator[None]:
    """Add ``vectors`` to the output of ``block`` while the block is inside.

    ``vectors``: ``(d,)`` for every row, or ``(batch, d)``, one per row. ``where="all"`` adds to
    every position; ``"from_last"`` to the last position of each call, i.e. the last prompt token
    on the first call and each new token after it when generating with a cache. The hook is
    removed on leaving, also when the forward pass or generation raises.
    """
    if where not in ("all", "from_last"):
        raise ValueError(f"where must be 'all' or 'from_last', got {where!r}")

    def hook(module, args, output):
        hidden = _block_output(output)
        v = vectors.to(hidden.dtype).reshape(-1, 1, hidden.shape[-1])
        if where == "all":
            hidden = hidden + v
        else:
            hidden = torch.cat([hidden[:, :-1], hidden[:, -1:] + v], dim=1)
        return _with_block_output(output, hidden)

    handle = block.register_forward_hook(hook)
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


def effective_template(tokenizer, template: str) -> tuple[str, str | None]:
    if template not in TEMPLATES:
        raise OrthoscopeError(f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)}.")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        return "plain", "the tokenizer has no chat template, so prompts are plain text followed by a newline."
    return template, None


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


# --- activations -----------------------------------------------------------------------------------

@dataclass
class Activations:
    """Block outputs of every layer for the texts with and without the concept: ``(layers, n, d)``."""

    positive: np.ndarray
    negative: np.ndarray
    tokens: int
    passes: int
    seconds: float


def activations(model: nn.Module, tokenizer, triples: list[dict], *, position: str, template: str,
                batch_size: int, progress: Progress | None = None) -> Activations:
    """Forward passes over prompt + response, keeping each block's output at the chosen position."""
    if position not in POSITIONS:
        raise OrthoscopeError(f"unknown token position {position!r}; use one of {', '.join(POSITIONS)}.")
    blocks = decoder_blocks(model)
    texts, spans = [], []
    for t in triples:
        p_ids = prompt_ids(tokenizer, t["prompt"], template)
        for response in (t["positive"], t["negative"]):
            r_ids = tokenizer.encode(" " + response if template == "plain" else response, add_special_tokens=False)
            texts.append(p_ids + r_ids)
            spans.append((len(p_ids), len(p_ids) + len(r_ids)))
    captured: list[torch.Tensor] = [None] * len(blocks)

    def keep(i):
        def hook(module, args, output):
            captured[i] = _block_output(output).detach()
        return hook

    handles = [b.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    out = np.zeros((len(blocks), len(texts), model.config.hidden_size), dtype=np.float32)
    t0, passes = time.perf_counter(), 0
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                ids, mask, _ = right_padded(chunk)
                model(input_ids=ids, attention_mask=mask, use_cache=False)
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


def _activations_once(handle: ModelHandle, triples: list[dict], *, position: str, template: str, batch_size: int,
                      cache: ActivationCache | None, progress: Progress | None) -> tuple[Activations, bool]:
    """The activations, through ``cache(key, compute)`` when the caller keeps one (the page does:
    keyed by model, data set, position and template, so a new block or grid reuses them)."""
    computed = []

    def compute() -> Activations:
        computed.append(True)
        return activations(handle.module(), handle.tokenizer(), triples, position=position, template=template,
                           batch_size=batch_size, progress=progress)

    if cache is None:
        return compute(), False
    key = f"steering-activations|{handle.fingerprint}|{steering_data.digest(triples)}|{position}|{template}"
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
    phi = np.mod(np.arctan2(coords[:, 1], coords[:, 0]), 2 * np.pi)
    sector = np.minimum((phi / (2 * np.pi / sectors)).astype(int), sectors - 1)
    normal_norms = np.linalg.norm(O, axis=1)
    return {
        "axis": axis, "a_hat": a_hat, "axis_norm": float(np.linalg.norm(axis)), "norms": norms,
        "cos_theta": cos_theta, "normal": O, "normal_norms": normal_norms, "basis": basis, "coords": coords,
        "explained": explained, "phi": phi, "sector": sector,
        "normal_spread": float(np.sqrt(np.mean(normal_norms ** 2))),
    }


def baselines(D: np.ndarray, positive: np.ndarray, negative: np.ndarray, a_hat: np.ndarray) -> tuple[list[str], np.ndarray, dict]:
    """Axis, first PC of the d_i (uncentred, centred) and a logistic probe; their pairwise cosines.

    A principal direction's sign is arbitrary: it is turned to agree with the axis. The probe is
    an L2 logistic regression on standardised activations (scikit-learn's usual setting); its
    weights are mapped back to activation space (``w / std``) before any cosine is taken. On
    unstandardised activations a regularised probe would just return the class-mean difference,
    the axis itself.
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
    return names, V @ V.T, {"train_accuracy": float(probe.score(X, y)), "model": probe}


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


def steering_vectors(cyl: dict, samples: np.ndarray, strengths: list[float], penalties: list[float],
                     unit: float) -> np.ndarray:
    """``v_i(s, p) = s unit (cos(theta_i) a_hat + (1 - p) sin(theta_i) o_hat_i)``, shape (samples, s, p, d)."""
    a_hat = cyl["a_hat"]
    out = np.zeros((len(samples), len(strengths), len(penalties), a_hat.size))
    for r, i in enumerate(samples):
        cos_t = cyl["cos_theta"][i]
        sin_t = math.sqrt(max(0.0, 1.0 - cos_t ** 2))
        o_hat = _unit(cyl["normal"][i])
        for si, s in enumerate(strengths):
            for pi, p in enumerate(penalties):
                out[r, si, pi] = s * unit * (cos_t * a_hat + (1 - p) * sin_t * o_hat)
    return out


def min_strength(strengths: list[float], gains: np.ndarray, threshold: float) -> float:
    """Smallest strength whose gain reaches ``threshold``, linear between grid points (0 counts as gain 0)."""
    xs = [0.0, *strengths]
    ys = [0.0, *gains]
    for k in range(1, len(xs)):
        if ys[k] >= threshold:
            # ys[k - 1] < threshold <= ys[k] here (the threshold is positive and ys[0] = 0).
            return xs[k - 1] + (threshold - ys[k - 1]) * (xs[k] - xs[k - 1]) / (ys[k] - ys[k - 1])
    return math.nan


def sector_table(phi: np.ndarray, sector: np.ndarray, steerability: np.ndarray, gain: np.ndarray, sectors: int) -> list[dict]:
    width = 2 * math.pi / sectors
    rows = []
    for k in range(sectors):
        hit = sector == k
        rows.append({"sector": k, "phi_from_deg": math.degrees(k * width), "phi_to_deg": math.degrees((k + 1) * width),
                     "count": int(hit.sum()),
                     "fraction_reaching": float((steerability[hit] > 0).mean()) if hit.any() else math.nan,
                     "mean_steerability": float(steerability[hit].mean()) if hit.any() else math.nan,
                     "mean_gain": float(gain[hit].mean()) if hit.any() else math.nan})
    return rows


# --- scoring ---------------------------------------------------------------------------------------

class Scorer:
    """Next-token concept scores and neutral-text likelihoods under steering, counting the work."""

    def __init__(self, model: nn.Module, block: nn.Module, concept_ids: list[int], batch_size: int):
        self.model, self.block = model, block
        self.concept_ids = torch.tensor(sorted(set(concept_ids)))
        self.batch_size = batch_size
        self.passes, self.tokens = 0, 0

    def _concept_logmass(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(torch.log_softmax(logits.float(), dim=-1)[..., self.concept_ids], dim=-1)

    @torch.no_grad()
    def concept_scores(self, prompt: list[int], vectors: torch.Tensor) -> np.ndarray:
        """log P(concept tokens next) after ``prompt``, with each vector added (``vectors``: (k, d)).

        The prompt but its last token runs once, unsteered, into a cache; the last token then runs
        once per vector in batches, with the vector added at the block's output there.
        """
        prefix = self.model(input_ids=torch.tensor([prompt[:-1]]), use_cache=True)
        self.passes += 1
        self.tokens += len(prompt) - 1
        last = torch.tensor([[prompt[-1]]])
        out = []
        # One new token per row and a short cache: far more rows fit in a pass than for full texts.
        rows = 16 * self.batch_size
        for start in range(0, len(vectors), rows):
            v = vectors[start:start + rows]
            cache = copy.deepcopy(prefix.cache)
            cache.batch_repeat_interleave(len(v))
            with steering_hook(self.block, v, "from_last"):
                logits = self.model(input_ids=last.expand(len(v), 1), cache=cache, use_cache=True).logits[:, -1]
            self.passes += 1
            self.tokens += len(v)
            out.append(self._concept_logmass(logits))
        return torch.cat(out).numpy()

    @torch.no_grad()
    def unsteered_score(self, prompt: list[int]) -> float:
        logits = self.model(input_ids=torch.tensor([prompt])).logits[:, -1]
        self.passes += 1
        self.tokens += len(prompt)
        return float(self._concept_logmass(logits)[0])

    @torch.no_grad()
    def neutral_nll(self, sentences: list[list[int]], vectors: torch.Tensor | None) -> np.ndarray:
        """Mean negative log-likelihood per token of the sentences for each vector (added everywhere).

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
            if vectors is None:
                hook = _nothing()
            else:
                hook = steering_hook(self.block, vectors[start:start + n_v].repeat_interleave(len(sentences), 0), "all")
            with hook:
                logits = self.model(input_ids=rows, attention_mask=rmask, use_cache=False).logits
            self.passes += 1
            self.tokens += int(rmask.sum())
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, rows[:, 1:, None])[..., 0]
            m = rmask[:, 1:].float()
            nll = -(logp * m).sum(1).view(n_v, -1).sum(1) / m.sum(1).view(n_v, -1).sum(1)
            out.append(nll)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def generate(self, prompt: list[int], tokens: int, vector: torch.Tensor | None, tokenizer) -> str:
        ids = torch.tensor([prompt])
        hook = steering_hook(self.block, vector, "from_last") if vector is not None else _nothing()
        with hook:
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                      do_sample=False, pad_token_id=_pad_id(tokenizer))
        self.passes += tokens
        self.tokens += len(prompt) + tokens
        return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).replace("\n", " ⏎ ")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- parameters and the result ---------------------------------------------------------------------

def check_params(params: dict, n_layers: int | None = None) -> dict:
    p = {**DEFAULTS, **params}
    if p["position"] not in POSITIONS:
        raise OrthoscopeError(f"unknown token position {p['position']!r}; use one of {', '.join(POSITIONS)}.")
    if p["template"] not in TEMPLATES:
        raise OrthoscopeError(f"unknown prompt template {p['template']!r}; use one of {', '.join(TEMPLATES)}.")
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
        raise OrthoscopeError("strengths must be positive numbers (multiples of the mean difference length).")
    p["strengths"] = sorted(float(s) for s in set(strengths))
    if not p["penalties"] or any(not (isinstance(x, (int, float)) and 0 <= x <= 1) for x in p["penalties"]):
        raise OrthoscopeError("penalties must be numbers from 0 (the triple's own direction) to 1 (the axis only).")
    p["penalties"] = sorted(float(x) for x in set(p["penalties"]))
    if not (isinstance(p["threshold"], (int, float)) and p["threshold"] > 0 and math.isfinite(p["threshold"])):
        raise OrthoscopeError("the threshold (concept gain a triple's vector must reach, in nats) must be a positive number.")
    if not 0 < p["heldout_fraction"] < 1:
        raise OrthoscopeError("the held-out fraction must lie between 0 and 1.")
    for key, low, high in (("grid_samples", 1, 64), ("heldout_prompts", 1, 64), ("neutral_sentences", 1, 64),
                           ("gen_tokens", 0, MAX_GEN_TOKENS), ("gen_prompts", 0, 16), ("batch_size", 1, 256)):
        if not isinstance(p[key], int) or not low <= p[key] <= high:
            raise OrthoscopeError(f"{key} must be a whole number from {low} to {high}, got {p[key]!r}.")
    if not 0 <= p["gen_penalty"] <= 1 or not p["gen_strength"] >= 0:
        raise OrthoscopeError("the generation strength must be >= 0 and its penalty between 0 and 1.")
    return p


SAMPLE_COLUMNS = ["index", "split", "prompt", "cos_theta", "norm", "x", "y", "phi_deg", "sector", "min_strength",
                  "steerability", "gain_at_max"]


@dataclass
class SteeringResult(Result):
    diagnostic: ClassVar[str] = "steering"
    concept: dict = field(default_factory=dict)
    layer: int = 0
    n_layers: int = 0
    hidden_size: int = 0
    n_fit: int = 0
    n_heldout: int = 0
    axis_norm: float = math.nan
    mean_norm: float = math.nan
    explained: list = field(default_factory=list)
    baselines: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    sectors: list = field(default_factory=list)
    grid: list = field(default_factory=list)
    baseline_scores: dict = field(default_factory=dict)
    sweep: list = field(default_factory=list)
    generations: list = field(default_factory=list)
    generation_settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    work: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.samples).reindex(columns=SAMPLE_COLUMNS)
        # JSON carries NaN as null: a reloaded all-NaN column must come back as floats, not objects.
        numeric = ["cos_theta", "norm", "x", "y", "phi_deg", "min_strength", "steerability", "gain_at_max"]
        frame[numeric] = frame[numeric].astype(float)
        return frame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"samples": self.to_frame(), "grid": pd.DataFrame(self.grid), "sectors": pd.DataFrame(self.sectors),
                "sweep": pd.DataFrame(self.sweep), "generations": pd.DataFrame(self.generations)}


def split_triples(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, round(n * fraction))
    if n - held < 4:
        raise OrthoscopeError(f"{n} triples leave {n - held} to fit after holding out {held}; give more triples.")
    return np.sort(order[held:]), np.sort(order[:held])


def _spread_samples(phi: np.ndarray, k: int) -> np.ndarray:
    """``k`` samples spread around the normal plane (evenly along the sorted sector angles)."""
    order = np.argsort(phi)
    picks = np.linspace(0, len(order) - 1, num=min(k, len(order))).round().astype(int)
    return order[np.unique(picks)]


def run(handle: ModelHandle, params: dict, triples: list[dict] | None = None,
        progress: Progress | None = None, activation_cache: ActivationCache | None = None) -> SteeringResult:
    """The cylinder of one concept at one block, and how steering along it works (see the module doc).

    ``activation_cache(key, compute)``: where the caller keeps activations between runs, if it does.
    """
    with handle.hooks_lock:
        return _run(handle, params, triples, progress, activation_cache)


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
        raise OrthoscopeError(f"give the tokens that signal the concept {p['concept']!r} (e.g. ' dog, dogs').")
    p["tokens"] = list(words)
    ctokens, notes = steering_data.concept_tokens(tokenizer, p["tokens"])
    template, note = effective_template(tokenizer, p["template"])
    if note:
        notes.append(note)
    fit, held = split_triples(len(triples), p["heldout_fraction"], p["seed"])
    layer = p["layer"]

    acts, hit = _activations_once(handle, triples, position=p["position"], template=template,
                                  batch_size=p["batch_size"], cache=activation_cache,
                                  progress=lambda f, m: report(0.4 * f, m))
    t_acts = time.perf_counter()
    pos, neg = acts.positive[layer].astype(np.float64), acts.negative[layer].astype(np.float64)
    D = pos[fit] - neg[fit]
    cyl = cylinder(D, p["sectors"])
    names, cosines, probe = baselines(D, pos[fit], neg[fit], cyl["a_hat"])
    D_held = pos[held] - neg[held]
    held_norms = np.linalg.norm(D_held, axis=1)
    held_cos = (D_held @ cyl["a_hat"]) / np.where(held_norms > 0, held_norms, 1)
    X_held = np.vstack([pos[held], neg[held]])
    y_held = np.r_[np.ones(len(held)), np.zeros(len(held))]
    probe_held = float(probe["model"].score(X_held, y_held))
    # The axis as a classifier: project on it, threshold halfway between the fitted classes' means.
    cut = 0.5 * ((pos[fit] @ cyl["a_hat"]).mean() + (neg[fit] @ cyl["a_hat"]).mean())
    axis_held = float(((X_held @ cyl["a_hat"] > cut) == y_held).mean())
    report(0.45, "geometry done; steering")

    unit = float(cyl["norms"].mean())
    scorer = Scorer(model, blocks[layer], [t.ids[0] for t in ctokens], p["batch_size"])
    prompts = [prompt_ids(tokenizer, triples[i]["prompt"], template) for i in held[:p["heldout_prompts"]]]
    neutral = [tokenizer.encode(s, add_special_tokens=False) for s in steering_data.neutral_sentences()[:p["neutral_sentences"]]]
    n = len(fit)
    grid_samples = _spread_samples(cyl["phi"], p["grid_samples"])
    S, P = p["strengths"], p["penalties"]
    per_sample_p = 0.0
    vecs_all = steering_vectors(cyl, np.arange(n), S, [per_sample_p], unit)[:, :, 0]  # (n, |S|, d)
    vecs_grid = steering_vectors(cyl, grid_samples, S, P, unit)  # (g, |S|, |P|, d)
    d = vecs_all.shape[-1]
    stacked = torch.tensor(np.concatenate([vecs_all.reshape(-1, d), vecs_grid.reshape(-1, d)]), dtype=torch.float32)
    base_scores, gains = [], np.zeros(len(stacked))
    with torch.no_grad():
        for j, prompt in enumerate(prompts):
            base = scorer.unsteered_score(prompt)
            base_scores.append(base)
            gains += scorer.concept_scores(prompt, stacked) - base
            report(0.45 + 0.35 * (j + 1) / len(prompts), f"concept scores: prompt {j + 1}/{len(prompts)}")
    gains /= len(prompts)
    gain_all = gains[:vecs_all.shape[0] * len(S)].reshape(n, len(S))
    gain_grid = gains[vecs_all.shape[0] * len(S):].reshape(len(grid_samples), len(S), len(P))

    base_nll = float(scorer.neutral_nll(neutral, None)[0])
    report(0.82, "corruption of neutral text")
    flat = torch.tensor(vecs_grid.reshape(-1, d), dtype=torch.float32)
    corruption = (scorer.neutral_nll(neutral, flat) - base_nll).reshape(vecs_grid.shape[:3])
    report(0.95, "corruption done")

    grid = []
    for si, s in enumerate(S):
        for pi, pen in enumerate(P):
            grid.append({"s": s, "p": pen, "concept_gain": float(gain_grid[:, si, pi].mean()),
                         "concept_gain_min": float(gain_grid[:, si, pi].min()),
                         "concept_gain_max": float(gain_grid[:, si, pi].max()),
                         "corruption": float(corruption[:, si, pi].mean()),
                         "perplexity_ratio": float(np.exp(corruption[:, si, pi]).mean())})
    strengths_needed = np.array([min_strength(S, gain_all[i], p["threshold"]) for i in range(n)])
    steerability = np.nan_to_num(1.0 / strengths_needed, nan=0.0)
    samples = []
    for r, i in enumerate(fit):
        samples.append({"index": int(i), "split": "fit", "prompt": triples[i]["prompt"],
                        "cos_theta": float(cyl["cos_theta"][r]), "norm": float(cyl["norms"][r]),
                        "x": float(cyl["coords"][r, 0]), "y": float(cyl["coords"][r, 1]),
                        "phi_deg": float(math.degrees(cyl["phi"][r])), "sector": int(cyl["sector"][r]),
                        "min_strength": float(strengths_needed[r]), "steerability": float(steerability[r]),
                        "gain_at_max": float(gain_all[r, -1])})
    for r, i in enumerate(held):
        samples.append({"index": int(i), "split": "held-out", "prompt": triples[i]["prompt"],
                        "cos_theta": float(held_cos[r]), "norm": float(held_norms[r]),
                        "x": math.nan, "y": math.nan, "phi_deg": math.nan, "sector": -1,
                        "min_strength": math.nan, "steerability": math.nan, "gain_at_max": math.nan})
    sectors = sector_table(cyl["phi"], cyl["sector"], steerability, gain_all[:, -1], p["sectors"])

    generations, gen_settings = [], {}
    if p["gen_tokens"] and p["gen_prompts"]:
        best = int(np.argmax(steerability)) if steerability.max() > 0 else int(np.argmax(gain_all[:, -1]))
        v = torch.tensor(steering_vectors(cyl, np.array([best]), [p["gen_strength"]], [p["gen_penalty"]], unit)[0, 0, 0],
                         dtype=torch.float32)
        gen_settings = {"s": p["gen_strength"], "p": p["gen_penalty"], "sample": int(fit[best]),
                        "vector_norm": float(v.norm()), "tokens": p["gen_tokens"]}
        for j, i in enumerate(held[:p["gen_prompts"]]):
            prompt = prompts[j] if j < len(prompts) else prompt_ids(tokenizer, triples[i]["prompt"], template)
            generations.append({"prompt": triples[i]["prompt"],
                                "unsteered": scorer.generate(prompt, p["gen_tokens"], None, tokenizer),
                                "steered": scorer.generate(prompt, p["gen_tokens"], v, tokenizer)})
            report(0.95 + 0.05 * (j + 1) / p["gen_prompts"], f"generations: {j + 1}/{p['gen_prompts']}")

    sweep = layer_sweep(acts, fit) if p["sweep"] else []
    t_end = time.perf_counter()
    steer_s = t_end - t_acts
    work = {"activation_passes": acts.passes, "activation_tokens": acts.tokens, "activation_s": acts.seconds,
            "activations_cached": hit, "steering_passes": scorer.passes, "steering_tokens": scorer.tokens,
            "steering_s": steer_s}
    return SteeringResult(
        model_name=handle.name, fingerprint=handle.fingerprint,
        params={**p, "template": template, "source": source, "n_triples": len(triples),
                "triples_sha256": steering_data.digest(triples)},
        timings={"total_s": t_end - t_start, "activations_s": 0.0 if hit else acts.seconds, "steering_s": steer_s},
        concept={"name": p["concept"], "tokens": [{"word": t.word, "ids": list(t.ids), "pieces": list(t.pieces),
                                                   "split": t.split} for t in ctokens]},
        layer=layer, n_layers=len(blocks), hidden_size=int(D.shape[1]), n_fit=n, n_heldout=len(held),
        axis_norm=cyl["axis_norm"], mean_norm=unit, explained=cyl["explained"],
        baselines={"names": names, "cosines": cosines.tolist(), "probe_train_accuracy": probe["train_accuracy"],
                   "probe_heldout_accuracy": probe_held, "axis_heldout_accuracy": axis_held},
        heldout={"mean_cos_theta": float(held_cos.mean()), "n": len(held)},
        samples=samples, sectors=sectors, grid=grid,
        baseline_scores={"concept_logmass": base_scores, "neutral_nll": base_nll, "per_sample_penalty": per_sample_p,
                         "grid_samples": [int(fit[g]) for g in grid_samples]},
        sweep=sweep, generations=generations, generation_settings=gen_settings, notes=notes, work=work,
    )
