"""Optimizer traces: train built-in benchmarks with several optimizers, seeds and learning rates,
recording the geometry of every update (see :mod:`diagnostics.trace_recorder`), and compare the
optimizers under one protocol that never selects on the test split.

Benchmarks (both run on a 2-core CPU in seconds per run); each has a train, a validation and a
test split, the validation split carved from the training data with ``split_seed``:

- ``digits``: a 64-256-256-10 ReLU MLP on scikit-learn's 8x8 digits (1,797 images). 25 % are the
  test split (stratified, fixed: it defines the benchmark); ``val_fraction`` of the rest (stratified)
  is the validation split; inputs are standardised with the remaining training images' statistics.
- ``chars``: a two-block character-level transformer (width 64, 4 heads, separate q/k/v/o and
  a 4x MLP, pre-norm) on the English text of Python's own documentation topics
  (``pydoc_data.topics``, shipped with CPython); the last 10 % of the text is the test split and a
  contiguous block of ``val_fraction`` of the rest, at a seeded offset, the validation split.

Protocol. A run's routing (:func:`diagnostics.optimizers.route`) sends hidden matrices to the
matrix optimizer and the rest to AdamW; the default scope ``hidden_only`` also keeps the first
layer (fed raw pixels) on AdamW, as the Muon authors advise, and ``scopes`` may list both scopes
to run them side by side (element-wise optimizers run once, they have no scope). Every optimizer
runs at each multiple in ``lr_scales`` of its rate, with ``seeds`` seeds; all runs with one seed
start from the same initial weights and see the same batches. Each run is evaluated every
``eval_every`` steps on both held-out splits; its checkpoint is the one of lowest validation loss
(``best_val_loss``), and the test metrics are read there (``test_loss_at_best_val``,
``test_acc_at_best_val``). Each optimizer (and scope) is reported at the rate of lowest mean
``best_val_loss`` over seeds (:func:`choose_rates`), with the mean and a Student-t interval over
seeds of its test metrics (:meth:`OptimizerTracesResult.compare`). Nothing is chosen on test:
the functions that choose see only validation columns.

Checkpoints and fine-tunes. With ``save_checkpoints=DIR`` every run writes its model's state dict
as safetensors, ``DIR/RUN/step_NNNNNN.safetensors`` (:func:`checkpoint_path`; ``RUN`` is the run id
made safe for a file name, e.g. ``adamw-lr-0.001-seed-0``, one folder per run even for a single run),
at step 0 (the initial weights), every ``save_every`` steps and at the last step; the file's
metadata names bench, corpus, optimizer, scope, lr, seed and step. A run folder that already holds
checkpoints is refused rather than mixed. ``init_from=FILE`` starts every run from a safetensors
checkpoint of the same benchmark model (names, shapes and, for ``chars``, the vocabulary are checked
before anything is read; the optimizer state starts fresh), and ``corpus`` trains ``chars`` on
another text shipped with CPython (:data:`CORPORA`) mapped onto the vocabulary of the default corpus,
so that checkpoints of every corpus fit one model: two fine-tunes of one base checkpoint on two
corpora give two task vectors from one base.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import os
import re
import sys
import sysconfig
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from diagnostics import optimizers
from diagnostics.result import Result
from diagnostics.threads import single_thread
from diagnostics.trace_recorder import TraceRecorder, upgrade_records
from models.errors import OrthoscopeError

DEFAULTS = {
    "bench": "digits",
    "optimizers": ["adamw", "muon", "normuon", "auon", "root", "aro"],
    # Four rates on a factor-2 log grid around each optimizer's default rate.
    "lr_scales": [0.25, 0.5, 1.0, 2.0],
    "lrs": {},
    "seeds": 2,
    "steps": 300,
    "scopes": ["hidden_only"],
    "decay": "none",
    # The recorder's default intervals keep its cost under 10 % of a digits AdamW step (the
    # cheapest step here; see bench/optimizer_overhead.py); the page and CLI can ask for more.
    "every": 50,
    "alpha_every": 250,
    "eval_every": 25,
    "val_fraction": 0.2,
    "split_seed": 0,
    "adamw_lr": 1e-3,
    "weight_decay": 0.0,
    # Checkpoints (off unless a folder is given), the weights to start from, and the chars corpus
    # (None: the benchmark's own data; chars reads it as "topics").
    "save_checkpoints": None,
    "save_every": 50,
    "init_from": None,
    "corpus": None,
}
DECAYS = ("none", "linear", "cosine")
MAX_STEPS = 20000
MAX_RUNS = 200
# Coverage of the intervals over seeds in the comparison table.
INTERVAL = 0.95
# Training seeds torch's global generator and sets the process's thread count: comparisons started
# from several dashboard sessions run one after the other, never interleaved.
_RUN_LOCK = threading.Lock()


# --- benchmarks ----------------------------------------------------------------------------------

@dataclass
class Benchmark:
    """A model, its training batches and its two held-out splits.

    ``evaluate_val`` and ``evaluate_test`` score a model on one split each (``val_loss`` /
    ``val_accuracy``, ``test_loss`` / ``test_accuracy``). ``split_index`` gives the members of each
    split (image indices, or character positions) so that their disjointness can be checked.
    """

    name: str
    description: str
    head: tuple[str, ...]
    input_layers: tuple[str, ...]
    build_model: Callable[[], nn.Module]
    batches: Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    evaluate_val: Callable[[nn.Module], dict]
    evaluate_test: Callable[[nn.Module], dict]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    data_digest: str
    splits: dict
    split_index: Callable[[], dict[str, np.ndarray]]
    # chars: the symbols, in token order (the vocabulary of the default corpus, whatever the corpus).
    vocab: tuple[str, ...] = ()
    corpus: str | None = None


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _scorer(X: torch.Tensor, y: torch.Tensor, split: str) -> Callable[[nn.Module], dict]:
    @torch.no_grad()
    def score(model: nn.Module) -> dict:
        logits = model(X)
        if logits.ndim == 3:
            logits, target = logits.flatten(0, 1), y.flatten()
        else:
            target = y
        return {f"{split}_loss": float(F.cross_entropy(logits, target)),
                f"{split}_accuracy": float((logits.argmax(1) == target).float().mean())}
    return score


def _digits(val_fraction: float = DEFAULTS["val_fraction"], split_seed: int = DEFAULTS["split_seed"]) -> Benchmark:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    index = np.arange(len(y))
    # The test split is the benchmark's and never moves; the validation split comes out of the rest.
    rest, test = train_test_split(index, test_size=0.25, stratify=y, random_state=0)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest], random_state=split_seed)
    mean, std = X[train].mean(0), X[train].std(0)
    std[std == 0] = 1.0  # always-blank border pixels

    def tensors(ids):
        return torch.tensor((X[ids] - mean) / std, dtype=torch.float32), torch.tensor(y[ids])

    (Xtr, ytr), (Xva, yva), (Xte, yte) = tensors(train), tensors(val), tensors(test)
    batch = 128

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def batches(gen: torch.Generator):
        while True:
            order = torch.randperm(len(Xtr), generator=gen)
            for i in range(0, len(order) - batch + 1, batch):
                idx = order[i:i + batch]
                yield Xtr[idx], ytr[idx]

    def loss(model, x, y):
        return F.cross_entropy(model(x), y)

    splits = {"train": len(train), "val": len(val), "test": len(test), "unit": "images",
              "val_from": "training data", "val_fraction": val_fraction, "split_seed": split_seed}
    return Benchmark("digits", f"64-256-256-10 MLP on scikit-learn digits ({len(train):,} train / {len(val):,} "
                     f"validation / {len(test):,} test images, standardised)",
                     head=("4",), input_layers=("0",), build_model=build, batches=batches,
                     evaluate_val=_scorer(Xva, yva, "val"), evaluate_test=_scorer(Xte, yte, "test"), loss=loss,
                     data_digest=_digest(X, y), splits=splits,
                     split_index=lambda: {"train": train, "val": val, "test": test})


class CharTransformer(nn.Module):
    """Pre-norm decoder: token + position embeddings, blocks of causal attention and a GELU MLP, a head."""

    def __init__(self, vocab: int, context: int, width: int = 64, heads: int = 4, blocks: int = 2):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(width), "q": nn.Linear(width, width, bias=False),
                "k": nn.Linear(width, width, bias=False), "v": nn.Linear(width, width, bias=False),
                "o": nn.Linear(width, width, bias=False), "ln2": nn.LayerNorm(width),
                "up": nn.Linear(width, 4 * width), "down": nn.Linear(4 * width, width),
            }))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T))
        for b in self.blocks:
            h = b["ln1"](x)
            q, k, v = (b[n](h).view(B, T, self.heads, -1).transpose(1, 2) for n in ("q", "k", "v"))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b["o"](a.transpose(1, 2).reshape(B, T, -1))
            x = x + b["down"](F.gelu(b["up"](b["ln2"](x))))
        return self.head(self.ln(x))


def _windows(data: torch.Tensor, lo: int, hi: int, context: int, count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced windows of ``data[lo:hi]``, inputs and next-character targets."""
    starts = torch.linspace(lo, hi - context - 1, count).long()
    return (torch.stack([data[s:s + context] for s in starts.tolist()]),
            torch.stack([data[s + 1:s + context + 1] for s in starts.tolist()]))


# --- the chars corpora ---------------------------------------------------------------------------

# Texts that ship with CPython. The vocabulary is always the one of "topics", so that a checkpoint
# trained on any corpus fits the same model (a fine-tune continues a base run on another text).
CORPORA = {
    "topics": "Python's documentation topics (pydoc_data.topics)",
    "license": "the text of Python's licence (LICENSE.txt beside the standard library)",
    "inspect": "the source of the standard library's inspect.py",
    "typing": "the source of the standard library's typing.py",
}
DEFAULT_CORPUS = "topics"
# A corpus must leave a validation block, a test split and training windows of 64 characters.
MIN_CORPUS_CHARS = 5_000
MAX_CORPUS_BYTES = 16 * 2**20
# The characters written for a tab (not in the documentation topics' vocabulary).
TAB = "    "


@functools.lru_cache(maxsize=1)
def _topics_text() -> str:
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def stdlib_dirs() -> list[Path]:
    """Where the standard library and the files beside it lie (the folders ``site`` searches for
    the licence, and the installation prefix, where Windows keeps LICENSE.txt)."""
    found: dict[str, Path] = {}
    for d in (sysconfig.get_path("stdlib"), os.path.dirname(os.__file__)):
        if d:
            for where in (Path(d), Path(d).parent):
                found.setdefault(os.path.normcase(os.path.abspath(where)), where)
    base = Path(sys.base_prefix)
    found.setdefault(os.path.normcase(os.path.abspath(base)), base)
    return list(found.values())


def _read_shipped(path: Path, what: str) -> str:
    from models.limits import read_text

    try:
        return read_text(path, what, max_bytes=MAX_CORPUS_BYTES).replace("\r\n", "\n")
    except OrthoscopeError as exc:
        raise OrthoscopeError(f"corpus {what}: {exc}") from None


def corpus_text(name: str) -> str:
    """The raw text of one of :data:`CORPORA`, found in this Python's installation."""
    if name == "topics":
        return _topics_text()
    if name == "license":
        dirs = stdlib_dirs()
        for d in dirs:
            for file in ("LICENSE.txt", "LICENSE"):
                if (d / file).is_file():
                    return _read_shipped(d / file, "'license'")
        raise OrthoscopeError(f"corpus 'license': this Python ships no LICENSE.txt (looked in "
                              f"{', '.join(map(str, dirs))}); choose another corpus.")
    if name in ("inspect", "typing"):
        import importlib.util

        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is None or origin.suffix != ".py" or not origin.is_file():
            raise OrthoscopeError(f"corpus {name!r}: the source file {name}.py does not ship with this Python "
                                  f"(only compiled code); choose another corpus.")
        return _read_shipped(origin, repr(name))
    raise OrthoscopeError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}.")


def to_vocab(text: str, vocab: list[str] | tuple[str, ...]) -> tuple[str, int, int]:
    """``text`` written with the symbols of ``vocab`` only: a tab becomes four spaces, a character with
    a compatibility decomposition into known symbols becomes them (e.g. an accented letter its base
    letter), any other unknown character is dropped. Returns the text and the counts of characters
    mapped and dropped."""
    known = set(vocab)
    counts = collections.Counter(c for c in text if c not in known)
    table: dict[int, str | None] = {}
    mapped = dropped = 0
    for c, n in counts.items():
        if c == "\t" and " " in known:
            table[ord(c)] = TAB
        else:
            parts = "".join(x for x in unicodedata.normalize("NFKD", c) if x in known)
            table[ord(c)] = parts or None
        if table[ord(c)] is None:
            dropped += n
        else:
            mapped += n
    return (text.translate(table) if table else text), mapped, dropped


def _chars(val_fraction: float = DEFAULTS["val_fraction"], split_seed: int = DEFAULTS["split_seed"],
           corpus: str = DEFAULT_CORPUS) -> Benchmark:
    vocab = sorted(set(_topics_text()))
    text, mapped, dropped = to_vocab(corpus_text(corpus), vocab)
    if len(text) < MIN_CORPUS_CHARS:
        raise OrthoscopeError(f"corpus {corpus!r} holds {len(text):,} usable characters; at least "
                              f"{MIN_CORPUS_CHARS:,} are needed for its three splits.")
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    context, batch = 64, 32
    cut = int(0.9 * len(data))
    # A contiguous validation block (neighbouring characters are not independent) at a seeded offset.
    n_val = max(int(val_fraction * cut), 4 * context)
    rng = np.random.default_rng(split_seed)
    v0 = int(rng.integers(0, cut - n_val + 1))
    v1 = v0 + n_val
    Xva, Yva = _windows(data, v0, v1, context)
    Xte, Yte = _windows(data, cut, len(data), context)
    # Training windows lie wholly before or wholly after the validation block.
    n_before, n_after = max(v0 - context, 0), max(cut - v1 - context, 0)

    def build() -> nn.Module:
        return CharTransformer(len(vocab), context)

    def batches(gen: torch.Generator):
        while True:
            u = torch.randint(0, n_before + n_after, (batch,), generator=gen)
            s = torch.where(u < n_before, u, v1 + (u - n_before)).tolist()
            yield (torch.stack([data[i:i + context] for i in s]), torch.stack([data[i + 1:i + context + 1] for i in s]))

    def loss(model, x, y):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    def split_index():
        return {"train": np.r_[np.arange(0, v0), np.arange(v1, cut)], "val": np.arange(v0, v1),
                "test": np.arange(cut, len(data))}

    splits = {"train": cut - n_val, "val": n_val, "test": len(data) - cut, "unit": "characters",
              "val_from": "training text", "val_fraction": val_fraction, "split_seed": split_seed,
              "eval_windows": 64}
    source = "Python's documentation topics"
    if corpus != DEFAULT_CORPUS:
        source = CORPORA[corpus]
        # Said wherever the splits are shown: the text was rewritten onto the base vocabulary.
        splits.update(corpus=corpus, mapped_chars=mapped, dropped_chars=dropped)
    changed = (f"; {mapped:,} characters outside the topics' vocabulary mapped, {dropped:,} dropped"
               if mapped or dropped else "")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Benchmark("chars", f"character transformer (2 blocks, width 64, {len(vocab)} symbols) on "
                     f"{source} ({len(text):,} characters: last 10 % test, a block of "
                     f"{val_fraction:.0%} of the rest validation{changed})",
                     head=("head",), input_layers=(), build_model=build, batches=batches,
                     evaluate_val=_scorer(Xva, Yva, "val"), evaluate_test=_scorer(Xte, Yte, "test"), loss=loss,
                     data_digest=digest, splits=splits, split_index=split_index, vocab=tuple(vocab), corpus=corpus)


BENCHMARKS: dict[str, Callable[..., Benchmark]] = {"digits": _digits, "chars": _chars}


def benchmark(name: str, val_fraction: float = DEFAULTS["val_fraction"],
              split_seed: int = DEFAULTS["split_seed"], corpus: str | None = None) -> Benchmark:
    """A benchmark; ``corpus`` (one of :data:`CORPORA`) picks the text of ``chars``, None its default."""
    try:
        build = BENCHMARKS[name]
    except KeyError:
        raise OrthoscopeError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}.") from None
    if corpus is None:
        return build(val_fraction, split_seed)
    if name != "chars":
        raise OrthoscopeError(f"a corpus applies to the chars benchmark only, not to {name}.")
    if corpus not in CORPORA:
        raise OrthoscopeError(f"unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}.")
    return build(val_fraction, split_seed, corpus)


# --- parameters ----------------------------------------------------------------------------------

def check_params(params: dict) -> dict:
    """Defaults filled in and every value checked, with messages written for the user.

    A single ``scope`` (the earlier parameter) is read as ``scopes=[scope]``.
    """
    params = dict(params)
    if "scope" in params:
        legacy = params.pop("scope")
        params.setdefault("scopes", [legacy] if isinstance(legacy, str) else legacy)
    p = {**DEFAULTS, **params}
    if p["bench"] not in BENCHMARKS:
        raise OrthoscopeError(f"unknown benchmark {p['bench']!r}; choose from {', '.join(BENCHMARKS)}.")
    names = optimizers.optimizer_names()
    if not p["optimizers"]:
        raise OrthoscopeError("choose at least one optimizer.")
    unknown = [o for o in p["optimizers"] if o not in names]
    if unknown:
        raise OrthoscopeError(f"unknown optimizer {', '.join(unknown)}; choose from {', '.join(names)}.")
    bad_lrs = [o for o in p["lrs"] if o not in names]
    if bad_lrs:
        raise OrthoscopeError(f"learning rate given for unknown optimizer {', '.join(bad_lrs)}.")
    if not p["lr_scales"] or any(not (s > 0 and math.isfinite(s)) for s in p["lr_scales"]):
        raise OrthoscopeError("learning-rate scales must be positive numbers.")
    if any(not (v > 0 and math.isfinite(v)) for v in p["lrs"].values()):
        raise OrthoscopeError("learning rates must be positive numbers.")
    for key, low, high in (("seeds", 1, 20), ("steps", 1, MAX_STEPS), ("every", 1, MAX_STEPS),
                           ("alpha_every", 1, MAX_STEPS), ("eval_every", 1, MAX_STEPS), ("split_seed", 0, 2**31 - 1),
                           ("save_every", 1, MAX_STEPS)):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or not low <= p[key] <= high:
            raise OrthoscopeError(f"{key} must be a whole number from {low} to {high}, got {p[key]!r}.")
    if isinstance(p["val_fraction"], bool) or not isinstance(p["val_fraction"], (int, float)) \
            or not 0.05 <= p["val_fraction"] <= 0.5:
        raise OrthoscopeError(f"val_fraction (the share of the training data held out for validation) must lie "
                              f"between 0.05 and 0.5, got {p['val_fraction']!r}.")
    if isinstance(p["scopes"], str) or not p["scopes"]:
        raise OrthoscopeError(f"choose at least one scope from {', '.join(optimizers.SCOPES)}.")
    bad_scopes = [s for s in p["scopes"] if s not in optimizers.SCOPES]
    if bad_scopes:
        raise OrthoscopeError(f"unknown scope {', '.join(map(repr, bad_scopes))}; use one of {', '.join(optimizers.SCOPES)}.")
    if p["decay"] not in DECAYS:
        raise OrthoscopeError(f"unknown lr decay {p['decay']!r}; use one of {', '.join(DECAYS)}.")
    _check_checkpoint_params(p)
    p["optimizers"] = list(dict.fromkeys(p["optimizers"]))
    p["scopes"] = list(dict.fromkeys(p["scopes"]))
    p["lr_scales"] = list(dict.fromkeys(float(s) for s in p["lr_scales"]))
    p["val_fraction"] = float(p["val_fraction"])
    runs = len(plan(p))
    if runs > MAX_RUNS:
        raise OrthoscopeError(f"{runs} runs requested; at most {MAX_RUNS} (optimizers x scopes x lr scales x seeds).")
    ids = [r["run_id"] for r in plan(p)]
    if len(set(ids)) < len(ids):
        raise OrthoscopeError("two learning-rate scales give the same rate to 6 digits; give distinct scales.")
    folders = [run_folder(r) for r in plan(p)]
    if p["save_checkpoints"] is not None and len(set(folders)) < len(folders):
        raise OrthoscopeError("two runs would write their checkpoints to the same folder; give distinct rates.")
    return p


def _check_checkpoint_params(p: dict) -> None:
    """``save_checkpoints``, ``init_from`` and ``corpus`` checked (and made JSON-safe) in place."""
    from models.limits import check_regular_file

    for key in ("save_checkpoints", "init_from"):
        value = p[key]
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise OrthoscopeError(f"{key} must be a path, got {value!r}.")
        p[key] = os.fspath(value)
    if p["save_checkpoints"] is not None:
        root = Path(p["save_checkpoints"])
        if root.exists() and not root.is_dir():
            raise OrthoscopeError(f"save_checkpoints: {root.name} exists and is not a folder; give a folder "
                                  f"for the checkpoints.")
    if p["init_from"] is not None:
        check_regular_file(Path(p["init_from"]), f"init_from: {Path(p['init_from']).name}")
    if p["bench"] == "chars":
        p["corpus"] = DEFAULT_CORPUS if p["corpus"] is None else p["corpus"]
        if p["corpus"] not in CORPORA:
            raise OrthoscopeError(f"unknown corpus {p['corpus']!r}; choose from {', '.join(CORPORA)}.")
    elif p["corpus"] is not None:
        raise OrthoscopeError(f"a corpus applies to the chars benchmark only, not to {p['bench']}.")


def plan(params: dict) -> list[dict]:
    """One entry per run: optimizer, scope ("" for element-wise optimizers, which take every
    parameter), learning rate and seed."""
    runs = []
    for name in params["optimizers"]:
        base = params["lrs"].get(name, optimizers.default_lr(name))
        scopes = [""] if name in optimizers.ELEMENTWISE else params["scopes"]
        for scope in scopes:
            for scale in params["lr_scales"]:
                for seed in range(params["seeds"]):
                    lr = base * scale
                    where = f"|scope={scope}" if scope else ""
                    runs.append({"run_id": f"{name}{where}|lr={lr:.6g}|seed={seed}", "optimizer": name,
                                 "label": optimizers.label_of(name), "scope": scope, "lr": lr, "lr_scale": scale,
                                 "seed": seed})
    return runs


def _schedule(decay: str, steps: int) -> Callable[[int], float]:
    if decay == "linear":
        return lambda t: max(0.0, 1.0 - t / steps)
    if decay == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
    return lambda t: 1.0


# --- selection: validation only ------------------------------------------------------------------

def best_val_checkpoint(val_losses: list[float]) -> int | None:
    """Index of the evaluation with the lowest validation loss (the first, on ties); None if none is finite."""
    finite = [(v, i) for i, v in enumerate(val_losses) if v is not None and math.isfinite(v)]
    return min(finite)[1] if finite else None


# The only columns the choice of rate sees.
SELECTION_COLUMNS = ["scope", "optimizer", "lr", "seed", "best_val_loss", "diverged"]


def choose_rates(val: pd.DataFrame) -> pd.DataFrame:
    """Per (scope, optimizer), the learning rate of lowest mean ``best_val_loss`` over seeds.

    ``val`` holds :data:`SELECTION_COLUMNS` only (any other column is refused, so no test metric can
    take part). A rate at which some seed diverged, or some seed has no validation loss, ranks
    after every rate at which none did. Returns ``scope, optimizer, lr, mean_best_val_loss, seeds,
    diverged, n_rates``.
    """
    extra = set(val.columns) - set(SELECTION_COLUMNS)
    if extra:
        raise ValueError(f"choose_rates takes validation columns only; got {sorted(extra)}")
    out_columns = ["scope", "optimizer", "lr", "mean_best_val_loss", "seeds", "diverged", "n_rates"]
    if val.empty or val["best_val_loss"].isna().all():
        return pd.DataFrame(columns=out_columns)
    frame = val.assign(diverged=val["diverged"].fillna(False).astype(bool), scope=val["scope"].fillna(""))
    per_rate = frame.groupby(["scope", "optimizer", "lr"], sort=False).agg(
        mean_best_val_loss=("best_val_loss", "mean"), seeds=("seed", "nunique"),
        diverged=("diverged", "sum"), missing=("best_val_loss", lambda v: int(v.isna().sum()))).reset_index()
    per_rate["penalty"] = ((per_rate["diverged"] > 0) | (per_rate["missing"] > 0)).astype(int)
    per_rate["key"] = per_rate["mean_best_val_loss"].fillna(math.inf)
    rows = []
    for (scope, name), g in per_rate.groupby(["scope", "optimizer"], sort=False):
        best = g.sort_values(["penalty", "key", "lr"], kind="stable").iloc[0]
        rows.append({"scope": scope, "optimizer": name, "lr": float(best["lr"]),
                     "mean_best_val_loss": float(best["mean_best_val_loss"]), "seeds": int(best["seeds"]),
                     "diverged": int(best["diverged"]), "n_rates": len(g)})
    return pd.DataFrame(rows, columns=out_columns)


def mean_interval(values, level: float = INTERVAL) -> tuple[float, float, float]:
    """Mean and Student-t interval ``mean -+ t_{(1+level)/2, n-1} s / sqrt(n)`` over the finite values
    (NaN bounds for fewer than two)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


SCOPE_TAGS = {"hidden_only": "hidden-only", "all_but_head": "all-but-head", "": ""}


# --- checkpoints ---------------------------------------------------------------------------------

CHECKPOINT_GLOB = "step_*.safetensors"


def run_folder(run: dict) -> str:
    """The folder name of one run's checkpoints: its run id with every run of characters other than
    letters, digits, ``.``, ``_`` and ``-`` made one ``-`` (``muon|lr=0.02|seed=0`` ->
    ``muon-lr-0.02-seed-0``), safe on every file system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run["run_id"]).strip("-.") or "run"


def checkpoint_path(root: str | os.PathLike, run: dict, step: int) -> Path:
    """``root/RUN/step_NNNNNN.safetensors``: zero-padded, so that names sort in step order."""
    return Path(root) / run_folder(run) / f"step_{step:06d}.safetensors"


def _prepare_checkpoint_folders(root: str, runs: list[dict]) -> None:
    """Create ``root`` and one folder per run; refuse a run folder that already holds checkpoints
    (a rerun would interleave two runs' steps in one series)."""
    root_path = Path(root)
    try:
        root_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OrthoscopeError(f"save_checkpoints: cannot create {root_path.name} ({exc.strerror or exc}).") from None
    for r in runs:
        folder = root_path / run_folder(r)
        if folder.exists() and not folder.is_dir():
            raise OrthoscopeError(f"save_checkpoints: {folder.name} exists and is not a folder.")
        if folder.is_dir() and next(folder.glob(CHECKPOINT_GLOB), None) is not None:
            raise OrthoscopeError(f"save_checkpoints: {root_path.name}/{folder.name} already holds checkpoints; "
                                  f"give an empty folder or remove them.")
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise OrthoscopeError(f"save_checkpoints: cannot create {folder.name} ({exc.strerror or exc}).") from None


def save_checkpoint(model: nn.Module, path: Path, metadata: dict) -> None:
    """The model's state dict as safetensors, each tensor its own contiguous CPU copy (safetensors
    refuses shared storage); written beside and renamed, so that a killed run never leaves half a
    file under a checkpoint's name. ``metadata`` values are written as strings."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    part = path.with_name(path.name + ".part")
    try:
        save_file(tensors, str(part), metadata={str(k): str(v) for k, v in metadata.items()})
        os.replace(part, path)
    except OSError as exc:
        raise OrthoscopeError(f"cannot write checkpoint {path.parent.name}/{path.name} ({exc.strerror or exc}).") from None


def load_init(path: str | os.PathLike, bench: Benchmark) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of ``path`` (a safetensors checkpoint of ``bench``'s model), checked against the
    model before its data is read: the same tensor names, shapes and float dtypes, and for ``chars``
    the same vocabulary when the file states one. Returns it with the file's sha256 (16 hex digits).
    Read with safetensors only (no pickle)."""
    from safetensors.torch import load_file

    from models.safety import DEFAULT_MAX_MB, check_size, sniff, validate_safetensors

    path = Path(path)
    name = f"init_from: {path.name}"
    try:
        check_size(path, DEFAULT_MAX_MB)
        kind = sniff(path)
        if kind != "safetensors":
            raise OrthoscopeError(f"it is a {kind} file; only safetensors checkpoints are read here.")
        layout = validate_safetensors(path)
    except OrthoscopeError as exc:
        message = str(exc)
        raise OrthoscopeError(f"init_from: {message}" if message.startswith(path.name) else f"{name}: {message}") from None
    expected = {k: tuple(v.shape) for k, v in bench.build_model().state_dict().items()}
    stored = {t.name: t for t in layout.tensors}

    def listed(names: list[str]) -> str:
        return ", ".join(n[:60] for n in names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

    problems = []
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    if missing:
        problems.append(f"missing {listed(missing)}")
    if extra:
        problems.append(f"unexpected {listed(extra)}")
    for k, shape in expected.items():
        if k in stored and stored[k].shape != shape:
            problems.append(f"{k} is {'x'.join(map(str, stored[k].shape)) or 'a scalar'}, the model's "
                            f"{'x'.join(map(str, shape))}")
        elif k in stored and stored[k].dtype not in ("F32", "F64", "F16", "BF16"):
            problems.append(f"{k} is {stored[k].dtype}, not floating point")
    if problems:
        raise OrthoscopeError(f"{name} does not fit the {bench.name} model: {'; '.join(problems[:3])}"
                              f"{' ...' if len(problems) > 3 else ''}.")
    vocab = layout.metadata.get("vocab")
    if bench.vocab and vocab is not None and vocab != json.dumps("".join(bench.vocab)):
        raise OrthoscopeError(f"{name} was trained with another character vocabulary (saved by another Python "
                              f"version's documentation topics?); it cannot continue here.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    state = load_file(str(path))
    return {k: v.to(torch.float32) for k, v in state.items()}, digest


def checkpoint_metadata(bench: Benchmark, run: dict, params: dict, init: str | None) -> dict:
    """What a checkpoint says about itself, in its safetensors header (strings only)."""
    meta = {"format": "pt", "producer": "orthoscope optimizer_traces", "bench": bench.name,
            "optimizer": run["optimizer"], "scope": run.get("scope", ""), "lr": f"{run['lr']:.6g}",
            "lr_scale": f"{run['lr_scale']:g}", "seed": str(run["seed"]), "steps": str(params["steps"]),
            "run_id": run["run_id"], "data_digest": bench.data_digest}
    if bench.corpus is not None:
        meta["corpus"] = bench.corpus
    if bench.vocab:
        meta["vocab"] = json.dumps("".join(bench.vocab))
    if init is not None:
        meta["init_from"] = init
    return meta


# --- one run ---------------------------------------------------------------------------------------

def tracked_matrices(bench: Benchmark, model: nn.Module, scopes: list[str]) -> list[str]:
    """The matrices every run of a comparison tracks: those a matrix optimizer takes in any of its
    scopes, so that all optimizers' update geometry is measured on the same matrices."""
    names: dict[str, None] = {}
    for scope in scopes:
        for r in optimizers.route(model, "muon", scope=scope, head=bench.head, input_layers=bench.input_layers):
            if r.optimizer == "muon":
                names[r.name] = None
    return list(names)


def train_run(bench: Benchmark, run: dict, params: dict, sink: Callable[[dict], None],
              progress: Callable[[int], None] | None = None,
              init: tuple[dict[str, torch.Tensor], str] | None = None) -> tuple[dict, list[optimizers.Route]]:
    """Train one run, streaming its records to ``sink``; returns its summary row and routing.

    ``init``: a state dict to start from (instead of the seed's fresh weights) and its digest, as
    :func:`load_init` returns them. With ``params["save_checkpoints"]`` the run writes its weights at
    step 0, every ``save_every`` steps and at the last step (:func:`checkpoint_path`)."""
    torch.manual_seed(run["seed"])
    model = bench.build_model()
    init_tag = None
    if init is not None:
        model.load_state_dict(init[0], strict=True)
        init_tag = f"{Path(params['init_from']).name if params.get('init_from') else 'state dict'} sha256:{init[1]}"
    scope = run.get("scope") or params["scopes"][0]
    opt, routes = optimizers.build(run["optimizer"], model, lr=run["lr"], adamw_lr=params["adamw_lr"],
                                   weight_decay=params["weight_decay"], scope=scope,
                                   head=bench.head, input_layers=bench.input_layers)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(params["decay"], params["steps"]))
    header = {**run, "bench": bench.name, "decay": params["decay"], "adamw_lr": params["adamw_lr"],
              "weight_decay": params["weight_decay"], "splits": bench.splits, "routes": [r.__dict__ for r in routes]}
    if bench.corpus is not None:
        header["corpus"] = bench.corpus
    if init_tag is not None:
        header["init_from"] = init_tag
    root, save_every, saved = params.get("save_checkpoints"), params.get("save_every", DEFAULTS["save_every"]), []
    if root is not None:
        meta = checkpoint_metadata(bench, run, params, init_tag)

        def save(t: int) -> None:
            path = checkpoint_path(root, run, t)
            save_checkpoint(model, path, {**meta, "step": t})
            saved.append(path)

        save(0)
    rec = TraceRecorder(model, opt, run=header, every=params["every"], alpha_every=params["alpha_every"],
                        matrices=tracked_matrices(bench, model, params["scopes"]), sink=sink, run_id=run["run_id"])
    gen = torch.Generator().manual_seed(1000 + run["seed"])
    batches = bench.batches(gen)
    evals, diverged = [], False
    try:
        for t in range(1, params["steps"] + 1):
            x, y = next(batches)
            with rec.phase("forward"):
                loss = bench.loss(model, x, y)
            with rec.phase("backward"):
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            scheduler.step()
            rec.log_loss(loss.detach())
            if not math.isfinite(float(loss.detach())):
                diverged = True
                break
            if t % params["eval_every"] == 0 or t == params["steps"]:
                model.eval()
                scores = {"step": t, **bench.evaluate_val(model), **bench.evaluate_test(model)}
                model.train()
                evals.append(scores)
                rec.log("eval", **{k: v for k, v in scores.items() if k != "step"})
            if root is not None and (t % save_every == 0 or t == params["steps"]):
                save(t)
            if progress:
                progress(t)
        if rec.step % params["alpha_every"]:
            rec.record_alphas()  # the trained weights, whatever the interval
    finally:
        rec.close()
    steps = [r for r in rec.records if r["type"] == "step"]
    per_step = {k: float(np.mean([s["time_ms"].get(k, 0.0) for s in steps])) if steps else math.nan
                for k in ("forward", "backward", "optimizer", "recorder")}
    best = best_val_checkpoint([e["val_loss"] for e in evals])
    # A diverged run has no final model to score; its best-validation checkpoint came before.
    last = evals[-1] if evals and not diverged else {}
    at_best = evals[best] if best is not None else {}
    summary = {
        "type": "summary", "run_id": run["run_id"], "optimizer": run["optimizer"], "label": run["label"],
        "scope": run.get("scope", ""), "lr": run["lr"], "lr_scale": run["lr_scale"], "seed": run["seed"],
        "steps_done": rec.step, "diverged": diverged,
        "best_val_loss": at_best.get("val_loss", math.nan), "best_val_step": at_best.get("step"),
        "test_loss_at_best_val": at_best.get("test_loss", math.nan),
        "test_acc_at_best_val": at_best.get("test_accuracy", math.nan),
        "final_val_loss": last.get("val_loss", math.nan), "final_val_accuracy": last.get("val_accuracy", math.nan),
        "final_test_loss": last.get("test_loss", math.nan), "final_test_accuracy": last.get("test_accuracy", math.nan),
        "final_train_loss": steps[-1]["loss"] if steps else math.nan,
        "ms_per_step": per_step["forward"] + per_step["backward"] + per_step["optimizer"],
        **{f"ms_{k}": v for k, v in per_step.items()},
    }
    if root is not None:
        # A diverged run stops at its last finite checkpoint.
        summary.update(checkpoints=len(saved), checkpoint_dir=run_folder(run),
                       last_checkpoint=saved[-1].name if saved else "")
    sink(summary)
    return summary, routes


# --- the result ----------------------------------------------------------------------------------

RUN_COLUMNS = ["optimizer", "label", "scope", "lr", "lr_scale", "seed", "steps_done", "diverged", "best_val_loss",
               "best_val_step", "test_loss_at_best_val", "test_acc_at_best_val", "final_val_loss",
               "final_val_accuracy", "final_test_loss", "final_test_accuracy", "final_train_loss",
               "ms_per_step", "ms_forward", "ms_backward", "ms_optimizer", "ms_recorder", "run_id"]
# The comparison's reported metrics, each as mean, lo and hi over seeds.
REPORTED = ("test_loss_at_best_val", "test_acc_at_best_val", "final_test_loss", "final_test_accuracy")


@dataclass
class OptimizerTracesResult(Result):
    """Runs, their summaries and every trace record (``records``: the JSONL lines, in order).

    ``splits``: sizes of the benchmark's train, validation and test splits and how the validation
    split was drawn (empty for a loaded trace).
    """

    diagnostic: ClassVar[str] = "optimizer_traces"
    records: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)

    def __post_init__(self):
        self.records = upgrade_records(self.records)
        # Records do not change after construction; the charts ask for the same tables many times.
        self._memo: dict = {}

    def _memoised(self, key: str, build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key].copy()

    def _of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("type") == kind]

    def headers(self) -> dict[str, dict]:
        return {r["run_id"]: r for r in self._of("header")}

    def runs(self) -> pd.DataFrame:
        """One row per run (from the summary records, or from the trace when a loop wrote none)."""
        return self._memoised("runs", self._runs)

    def _runs(self) -> pd.DataFrame:
        summaries = {r["run_id"]: r for r in self._of("summary")}
        rows = []
        for run_id, h in self.headers().items():
            run = h.get("run", {})
            row = {"run_id": run_id, "optimizer": run.get("optimizer", run_id), "label": run.get("label", run.get("optimizer", run_id)),
                   "scope": run.get("scope", ""), "lr": run.get("lr"), "lr_scale": run.get("lr_scale"),
                   "seed": run.get("seed")}
            if run_id in summaries:
                row.update({k: v for k, v in summaries[run_id].items() if k not in ("type",)})
            else:
                steps = [r for r in self._of("step") if r["run_id"] == run_id]
                evals = [r for r in self._of("eval") if r["run_id"] == run_id]
                # A loop's own trace may end without a summary: divergence is then read off its losses.
                losses = [r.get("loss") for r in steps]
                row.update(steps_done=steps[-1]["step"] if steps else 0,
                           diverged=any(isinstance(v, (int, float)) and not math.isfinite(v) for v in losses),
                           final_train_loss=steps[-1]["loss"] if steps else None,
                           final_test_accuracy=evals[-1].get("test_accuracy") if evals else None)
                best = best_val_checkpoint([e.get("val_loss") for e in evals])
                if best is not None:
                    row.update(best_val_loss=evals[best]["val_loss"], best_val_step=evals[best]["step"],
                               test_loss_at_best_val=evals[best].get("test_loss"),
                               test_acc_at_best_val=evals[best].get("test_accuracy"))
            row["scope"] = row.get("scope") or ""
            rows.append(row)
        frame = pd.DataFrame(rows)
        return frame.reindex(columns=[c for c in RUN_COLUMNS if c in frame.columns]
                             + [c for c in frame.columns if c not in RUN_COLUMNS])

    # --- the protocol: rates chosen on validation, reported on test ---------------------------
    def choices(self) -> pd.DataFrame:
        """Per (scope, optimizer), the rate chosen on validation (:func:`choose_rates`)."""
        return self._memoised("choices", self._choices)

    def _choices(self) -> pd.DataFrame:
        runs = self.runs()
        if "best_val_loss" not in runs:
            return choose_rates(pd.DataFrame(columns=SELECTION_COLUMNS))
        val = runs.reindex(columns=SELECTION_COLUMNS)
        val["best_val_loss"] = pd.to_numeric(val["best_val_loss"], errors="coerce")
        return choose_rates(val)

    def shown_runs(self) -> list[str]:
        """The runs at each optimizer's chosen rate (every run when nothing could be chosen)."""
        runs, chosen = self.runs(), self.choices()
        if chosen.empty:
            return list(runs["run_id"])
        keys = set(zip(chosen["scope"], chosen["optimizer"], chosen["lr"]))
        return [r for r, s, o, lr in zip(runs["run_id"], runs["scope"], runs["optimizer"], runs["lr"])
                if (s, o, lr) in keys or not any((s, o) == k[:2] for k in keys)]

    def series(self, run_ids: list[str] | None = None) -> dict[str, str]:
        """run_id -> display name: the label, with the scope when several ran, with the rate when
        one (optimizer, scope) shows several."""
        runs = self.runs()
        if run_ids is not None:
            runs = runs[runs["run_id"].isin(run_ids)]
        several_scopes = runs.loc[runs["scope"] != "", "scope"].nunique() > 1
        several_rates = runs.groupby(["optimizer", "scope"])["lr"].nunique().gt(1).to_dict()
        names = {}
        for run_id, label, name, scope, lr in zip(runs["run_id"], runs["label"], runs["optimizer"], runs["scope"], runs["lr"]):
            text = str(label)
            if several_scopes and scope:
                text += f" · {SCOPE_TAGS.get(scope, scope)}"
            if several_rates.get((name, scope)) and lr is not None and not pd.isna(lr):
                text += f" lr={lr:.3g}"
            names[run_id] = text
        return names

    def compare(self) -> pd.DataFrame:
        """One row per (scope, optimizer) at its chosen rate: the headline table.

        ``name, optimizer, label, scope, lr, lr_grid, lr_at_grid_edge, seeds, diverged, best_val_loss``
        (mean over seeds, what chose the rate), then for each of :data:`REPORTED` its mean, ``_lo`` and ``_hi``
        (Student-t interval at :data:`INTERVAL` over seeds), and ``test_loss_ratio_to_adamw`` (mean
        test loss at best validation over AdamW's, when AdamW ran).
        """
        return self._memoised("compare", self._compare)

    def _compare(self) -> pd.DataFrame:
        chosen, runs = self.choices(), self.runs()
        if chosen.empty:
            return pd.DataFrame()
        names = self.series(self.shown_runs())
        rows = []
        for c in chosen.itertuples(index=False):
            group = runs[(runs["scope"] == c.scope) & (runs["optimizer"] == c.optimizer)]
            at = group[group["lr"] == c.lr]
            grid = sorted(group["lr"].unique())
            row = {"name": names.get(at["run_id"].iloc[0], c.optimizer), "optimizer": c.optimizer,
                   "label": at["label"].iloc[0], "scope": c.scope, "lr": c.lr,
                   "lr_grid": ", ".join(f"{x:.3g}" for x in grid),
                   # The best rate may lie beyond the grid: worth a wider sweep before trusting the row.
                   "lr_at_grid_edge": len(grid) > 1 and c.lr in (grid[0], grid[-1]),
                   "seeds": int(at["seed"].nunique()), "diverged": int(at["diverged"].fillna(False).astype(bool).sum()),
                   "best_val_loss": c.mean_best_val_loss}
            for metric in REPORTED:
                values = pd.to_numeric(at[metric], errors="coerce") if metric in at else pd.Series(dtype=float)
                row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = mean_interval(values.tolist())
            rows.append(row)
        frame = pd.DataFrame(rows)
        adamw = frame.loc[frame["optimizer"] == "adamw", "test_loss_at_best_val"]
        frame["test_loss_ratio_to_adamw"] = frame["test_loss_at_best_val"] / adamw.iloc[0] if len(adamw) else math.nan
        return frame

    def sweep(self) -> pd.DataFrame:
        """Per (scope, optimizer, rate): mean and interval over seeds of ``best_val_loss`` (what chose
        the rate; also its min and max over seeds) and of ``test_loss_at_best_val``; ``chosen`` marks
        the chosen rate."""
        return self._memoised("sweep", self._sweep)

    def _sweep(self) -> pd.DataFrame:
        runs, chosen = self.runs(), self.choices()
        if chosen.empty:
            return pd.DataFrame()
        picked = set(zip(chosen["scope"], chosen["optimizer"], chosen["lr"]))
        shown = self.series(self.shown_runs())
        # Named as in the comparison: one name per (scope, optimizer), whatever the rate.
        name_of = {(s, o): shown[r] for r, s, o in zip(runs["run_id"], runs["scope"], runs["optimizer"]) if r in shown}
        rows = []
        for (scope, name, lr), g in runs.groupby(["scope", "optimizer", "lr"], sort=False):
            row = {"name": name_of.get((scope, name), str(g["label"].iloc[0])), "optimizer": name, "label": g["label"].iloc[0], "scope": scope,
                   "lr": lr, "seeds": int(g["seed"].nunique()),
                   "diverged": int(g["diverged"].fillna(False).astype(bool).sum()) if "diverged" in g else 0,
                   "chosen": (scope, name, lr) in picked}
            for metric in ("best_val_loss", "test_loss_at_best_val"):
                values = pd.to_numeric(g[metric], errors="coerce").tolist() if metric in g else []
                row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = mean_interval(values)
            val = pd.to_numeric(g["best_val_loss"], errors="coerce")
            row["best_val_loss_min"], row["best_val_loss_max"] = val.min(), val.max()
            rows.append(row)
        return pd.DataFrame(rows)

    def table(self, kind: str) -> pd.DataFrame:
        """The records of one type, joined with their run's optimizer, label, scope, lr and seed."""
        return self._memoised(kind, lambda: self._table(kind))

    def _table(self, kind: str) -> pd.DataFrame:
        rows = self._of(kind)
        if kind == "step":
            rows = [{**{k: v for k, v in r.items() if k != "time_ms"},
                     **{f"ms_{k}": v for k, v in r["time_ms"].items()}} for r in rows]
        frame = pd.DataFrame(rows).drop(columns=["type"], errors="ignore")
        if frame.empty:
            return frame
        meta = self.runs().set_index("run_id")[["optimizer", "label", "scope", "lr", "seed"]]
        return frame.join(meta, on="run_id")

    def routes(self) -> pd.DataFrame:
        rows = []
        done = set()
        for h in self.headers().values():
            run = h.get("run", {})
            key = (run.get("optimizer"), run.get("scope", ""))
            if key in done:
                continue
            done.add(key)
            for r in run.get("routes", []):
                rows.append({"run_optimizer": run.get("label", run.get("optimizer")), "scope": run.get("scope", ""), **r})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """The comparison at the chosen rates when the runs were evaluated on validation; else the runs."""
        compare = self.compare()
        return compare if not compare.empty else self.runs()

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"compare": self.compare(), "sweep": self.sweep(), "runs": self.runs(), "steps": self.table("step"),
               "updates": self.table("update"), "alphas": self.table("alpha"), "evals": self.table("eval"),
               "routes": self.routes()}
        return {k: v for k, v in out.items() if k not in ("compare", "sweep") or not v.empty}


def from_trace(records: list[dict], source: str = "uploaded trace") -> OptimizerTracesResult:
    """A result from a loaded JSONL trace (the dashboard's, or one recorded in a user's loop)."""
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]
    splits = next((r.get("run", {}).get("splits") for r in records if r.get("type") == "header"
                   and isinstance(r.get("run", {}).get("splits"), dict)), {})
    return OptimizerTracesResult(model_name=source, fingerprint=f"trace:{digest}", params={"source": source},
                                 timings={}, records=records, notes=method_notes(), splits=splits)


def method_notes() -> dict:
    """Citation and paper-versus-code notes of every optimizer, for the page and the report."""
    out = {}
    for name, (label, _, paper) in optimizers.ELEMENTWISE.items():
        out[name] = {"label": label, "paper": paper, "notes": []}
    for name, cls in optimizers.MATRIX_OPTIMIZERS.items():
        out[name] = {"label": cls.label, "paper": cls.paper, "notes": list(cls.notes)}
    return out


def protocol_text(result: OptimizerTracesResult) -> str:
    """One paragraph naming the splits and the selection rule, for captions and reports."""
    sp = result.splits
    compare = result.compare()
    if compare.empty:
        return "No validation split in this trace: runs are shown as recorded, nothing is chosen."
    seeds = int(compare["seeds"].max())
    unit = sp.get("unit", "examples")
    where = (f"validation: {sp['val']:,} {unit} carved from the {sp.get('val_from', 'training data')} "
             f"(split seed {sp.get('split_seed', 0)}); test: {sp['test']:,} {unit}, used for no choice. "
             if {"val", "test"} <= set(sp) else "")
    return (f"Each optimizer at the learning rate of lowest mean best-validation loss over its grid; each run's "
            f"checkpoint is its best on validation, and the test metrics are read there. {where}"
            f"Mean and {INTERVAL:.0%} Student-t interval over {seeds} seed{'s' if seeds != 1 else ''}.")


def run(params: dict, progress: Callable[[float, str], None] | None = None,
        sink: Callable[[dict], None] | None = None) -> OptimizerTracesResult:
    """Train every planned run of ``params`` (see ``DEFAULTS``) and collect their traces."""
    params = check_params(params)
    bench = benchmark(params["bench"], params["val_fraction"], params["split_seed"], corpus=params["corpus"])
    runs = plan(params)
    records: list[dict] = []
    # Both checked before any run trains: a bad file or a used folder costs no training time.
    init = load_init(params["init_from"], bench) if params["init_from"] is not None else None
    if params["save_checkpoints"] is not None:
        _prepare_checkpoint_folders(params["save_checkpoints"], runs)

    def keep(record: dict) -> None:
        records.append(record)
        if sink is not None:
            sink(record)

    if progress and _RUN_LOCK.locked():
        progress(0.0, "waiting for another comparison to finish")
    with _RUN_LOCK, single_thread():
        t0 = time.perf_counter()
        total = len(runs) * params["steps"]
        for i, r in enumerate(runs):
            where = f" ({SCOPE_TAGS.get(r['scope'], r['scope'])})" if r["scope"] else ""

            def tick(t: int, i=i, r=r, where=where) -> None:
                if progress and (t % 10 == 0 or t == params["steps"]):
                    progress((i * params["steps"] + t) / total, f"run {i + 1}/{len(runs)}: {r['label']}{where} "
                             f"lr={r['lr']:.3g} seed={r['seed']}, step {t}/{params['steps']}")
            train_run(bench, r, params, keep, tick, init=init)
        seconds = time.perf_counter() - t0
    fingerprint = f"{bench.name}:{bench.data_digest}" + (f"+init:{init[1]}" if init is not None else "")
    name = bench.description + (f", starting from {Path(params['init_from']).name}" if init is not None else "")
    return OptimizerTracesResult(model_name=name, fingerprint=fingerprint,
                                 params=params, timings={"total_s": seconds}, records=records, notes=method_notes(),
                                 splits=bench.splits)
