"""Optimizer traces: train built-in benchmarks with several optimizers, seeds and learning rates,
recording the geometry of every update (see :mod:`diagnostics.trace_recorder`).

Benchmarks (both run on a 2-core CPU in seconds per run):

- ``digits``: a 64-256-256-10 ReLU MLP on scikit-learn's 8x8 digits (1,797 images), standardised
  with the training split's mean and deviation, 25 % held out (stratified, fixed split).
- ``chars``: a two-block character-level transformer (width 64, 4 heads, separate q/k/v/o and
  a 4x MLP, pre-norm) on the English text of Python's own documentation topics
  (``pydoc_data.topics``, shipped with CPython); the last 10 % of the text is held out.

A run's routing (:func:`diagnostics.optimizers.route`) sends hidden matrices to the matrix
optimizer and the rest to AdamW; ``scope="hidden_only"`` also keeps the digits MLP's first layer
(fed raw pixels) on AdamW. All runs with one seed start from the same initial weights and see
the same batches.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from diagnostics import optimizers
from diagnostics.result import Result
from diagnostics.threads import single_thread
from diagnostics.trace_recorder import TraceRecorder
from models.errors import OrthoscopeError

DEFAULTS = {
    "bench": "digits",
    "optimizers": ["adamw", "muon", "normuon", "auon", "root", "aro"],
    "lr_scales": [1.0],
    "lrs": {},
    "seeds": 3,
    "steps": 500,
    "scope": "all_but_head",
    "decay": "none",
    # The recorder's default intervals keep its cost under 10 % of a digits AdamW step (the
    # cheapest step here; see bench/optimizer_overhead.py); the page and CLI can ask for more.
    "every": 50,
    "alpha_every": 250,
    "eval_every": 50,
    "adamw_lr": 1e-3,
    "weight_decay": 0.0,
}
DECAYS = ("none", "linear", "cosine")
MAX_STEPS = 20000
MAX_RUNS = 200
# Training seeds torch's global generator and sets the process's thread count: comparisons started
# from several dashboard sessions run one after the other, never interleaved.
_RUN_LOCK = threading.Lock()


# --- benchmarks ----------------------------------------------------------------------------------

@dataclass
class Benchmark:
    name: str
    description: str
    head: tuple[str, ...]
    input_layers: tuple[str, ...]
    build_model: Callable[[], nn.Module]
    batches: Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    evaluate: Callable[[nn.Module], dict]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    data_digest: str


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _digits() -> Benchmark:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0  # always-blank border pixels
    Xtr = torch.tensor((X_train - mean) / std, dtype=torch.float32)
    Xte = torch.tensor((X_test - mean) / std, dtype=torch.float32)
    ytr, yte = torch.tensor(y_train), torch.tensor(y_test)
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

    @torch.no_grad()
    def evaluate(model):
        logits = model(Xte)
        return {"test_loss": float(F.cross_entropy(logits, yte)),
                "test_accuracy": float((logits.argmax(1) == yte).float().mean())}

    return Benchmark("digits", "64-256-256-10 MLP on scikit-learn digits (1,347 train / 450 test, standardised)",
                     head=("4",), input_layers=("0",), build_model=build, batches=batches, evaluate=evaluate,
                     loss=loss, data_digest=_digest(X, y))


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


def _chars() -> Benchmark:
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(data))
    train, test = data[:cut], data[cut:]
    context, batch = 64, 32
    # A fixed held-out set of windows, so every run is scored on the same characters.
    starts = torch.arange(0, len(test) - context - 1, (len(test) - context - 1) // 64)[:64]
    Xte = torch.stack([test[s:s + context] for s in starts])
    Yte = torch.stack([test[s + 1:s + context + 1] for s in starts])

    def build() -> nn.Module:
        return CharTransformer(len(vocab), context)

    def batches(gen: torch.Generator):
        while True:
            s = torch.randint(0, len(train) - context - 1, (batch,), generator=gen)
            yield (torch.stack([train[i:i + context] for i in s.tolist()]),
                   torch.stack([train[i + 1:i + context + 1] for i in s.tolist()]))

    def loss(model, x, y):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate(model):
        logits = model(Xte).flatten(0, 1)
        y = Yte.flatten()
        return {"test_loss": float(F.cross_entropy(logits, y)),
                "test_accuracy": float((logits.argmax(1) == y).float().mean())}

    return Benchmark("chars", f"character transformer (2 blocks, width 64, {len(vocab)} symbols) on Python's "
                     f"documentation topics ({len(text):,} characters, last 10 % held out)",
                     head=("head",), input_layers=(), build_model=build, batches=batches, evaluate=evaluate,
                     loss=loss, data_digest=hashlib.sha256(text.encode()).hexdigest()[:16])


BENCHMARKS: dict[str, Callable[[], Benchmark]] = {"digits": _digits, "chars": _chars}


def benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]()
    except KeyError:
        raise OrthoscopeError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}.") from None


# --- parameters ----------------------------------------------------------------------------------

def check_params(params: dict) -> dict:
    """Defaults filled in and every value checked, with messages written for the user."""
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
                           ("alpha_every", 1, MAX_STEPS), ("eval_every", 1, MAX_STEPS)):
        if not isinstance(p[key], int) or not low <= p[key] <= high:
            raise OrthoscopeError(f"{key} must be a whole number from {low} to {high}, got {p[key]!r}.")
    if p["scope"] not in optimizers.SCOPES:
        raise OrthoscopeError(f"unknown scope {p['scope']!r}; use one of {', '.join(optimizers.SCOPES)}.")
    if p["decay"] not in DECAYS:
        raise OrthoscopeError(f"unknown lr decay {p['decay']!r}; use one of {', '.join(DECAYS)}.")
    p["optimizers"] = list(dict.fromkeys(p["optimizers"]))
    p["lr_scales"] = list(dict.fromkeys(float(s) for s in p["lr_scales"]))
    runs = len(p["optimizers"]) * len(p["lr_scales"]) * p["seeds"]
    if runs > MAX_RUNS:
        raise OrthoscopeError(f"{runs} runs requested; at most {MAX_RUNS} (optimizers x lr scales x seeds).")
    ids = [r["run_id"] for r in plan(p)]
    if len(set(ids)) < len(ids):
        raise OrthoscopeError("two learning-rate scales give the same rate to 6 digits; give distinct scales.")
    return p


def plan(params: dict) -> list[dict]:
    """One entry per run: optimizer, learning rate and seed."""
    runs = []
    for name in params["optimizers"]:
        base = params["lrs"].get(name, optimizers.default_lr(name))
        for scale in params["lr_scales"]:
            for seed in range(params["seeds"]):
                runs.append({"run_id": f"{name}|lr={base * scale:.6g}|seed={seed}", "optimizer": name,
                             "label": optimizers.label_of(name), "lr": base * scale, "lr_scale": scale, "seed": seed})
    return runs


def _schedule(decay: str, steps: int) -> Callable[[int], float]:
    if decay == "linear":
        return lambda t: max(0.0, 1.0 - t / steps)
    if decay == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
    return lambda t: 1.0


# --- one run ---------------------------------------------------------------------------------------

def train_run(bench: Benchmark, run: dict, params: dict, sink: Callable[[dict], None],
              progress: Callable[[int], None] | None = None) -> tuple[dict, list[optimizers.Route]]:
    """Train one run, streaming its records to ``sink``; returns its summary row and routing."""
    torch.manual_seed(run["seed"])
    model = bench.build_model()
    opt, routes = optimizers.build(run["optimizer"], model, lr=run["lr"], adamw_lr=params["adamw_lr"],
                                   weight_decay=params["weight_decay"], scope=params["scope"],
                                   head=bench.head, input_layers=bench.input_layers)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(params["decay"], params["steps"]))
    header = {**run, "bench": bench.name, "scope": params["scope"], "decay": params["decay"],
              "adamw_lr": params["adamw_lr"], "weight_decay": params["weight_decay"],
              "routes": [r.__dict__ for r in routes]}
    # Every run tracks the same matrices, the ones a matrix optimizer takes in this scope, so that
    # the geometry of AdamW's and SGD's updates is compared on equal terms.
    matrices = [r.name for r in optimizers.route(model, "muon", scope=params["scope"], head=bench.head,
                                                 input_layers=bench.input_layers) if r.optimizer == "muon"]
    rec = TraceRecorder(model, opt, run=header, every=params["every"], alpha_every=params["alpha_every"],
                        matrices=matrices, sink=sink, run_id=run["run_id"])
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
                scores = bench.evaluate(model)
                model.train()
                evals.append(scores)
                rec.log("eval", **scores)
            if progress:
                progress(t)
        if rec.step % params["alpha_every"]:
            rec.record_alphas()  # the trained weights, whatever the interval
    finally:
        rec.close()
    steps = [r for r in rec.records if r["type"] == "step"]
    per_step = {k: float(np.mean([s["time_ms"].get(k, 0.0) for s in steps])) if steps else math.nan
                for k in ("forward", "backward", "optimizer", "recorder")}
    summary = {
        "type": "summary", "run_id": run["run_id"], "optimizer": run["optimizer"], "label": run["label"],
        "lr": run["lr"], "lr_scale": run["lr_scale"], "seed": run["seed"], "steps_done": rec.step,
        "diverged": diverged,
        "final_test_loss": evals[-1]["test_loss"] if evals else math.nan,
        "final_test_accuracy": evals[-1]["test_accuracy"] if evals else math.nan,
        "best_test_loss": min((e["test_loss"] for e in evals), default=math.nan),
        "best_test_accuracy": max((e["test_accuracy"] for e in evals), default=math.nan),
        "final_train_loss": steps[-1]["loss"] if steps else math.nan,
        "ms_per_step": per_step["forward"] + per_step["backward"] + per_step["optimizer"],
        **{f"ms_{k}": v for k, v in per_step.items()},
    }
    sink(summary)
    return summary, routes


# --- the result ----------------------------------------------------------------------------------

RUN_COLUMNS = ["optimizer", "label", "lr", "lr_scale", "seed", "steps_done", "diverged", "final_test_loss",
               "final_test_accuracy", "best_test_loss", "best_test_accuracy", "final_train_loss",
               "ms_per_step", "ms_forward", "ms_backward", "ms_optimizer", "ms_recorder", "run_id"]


@dataclass
class OptimizerTracesResult(Result):
    """Runs, their summaries and every trace record (``records``: the JSONL lines, in order)."""

    diagnostic: ClassVar[str] = "optimizer_traces"
    records: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
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
                   "lr": run.get("lr"), "lr_scale": run.get("lr_scale"), "seed": run.get("seed")}
            if run_id in summaries:
                row.update({k: v for k, v in summaries[run_id].items() if k not in ("type",)})
            else:
                steps = [r for r in self._of("step") if r["run_id"] == run_id]
                evals = [r for r in self._of("eval") if r["run_id"] == run_id]
                row.update(steps_done=steps[-1]["step"] if steps else 0,
                           final_train_loss=steps[-1]["loss"] if steps else None,
                           final_test_accuracy=evals[-1].get("test_accuracy") if evals else None,
                           best_test_accuracy=max((a for e in evals if (a := e.get("test_accuracy")) is not None),
                                                  default=None))
            rows.append(row)
        frame = pd.DataFrame(rows)
        return frame.reindex(columns=[c for c in RUN_COLUMNS if c in frame.columns]
                             + [c for c in frame.columns if c not in RUN_COLUMNS])

    def table(self, kind: str) -> pd.DataFrame:
        """The records of one type, joined with their run's optimizer, label, lr and seed."""
        return self._memoised(kind, lambda: self._table(kind))

    def _table(self, kind: str) -> pd.DataFrame:
        rows = self._of(kind)
        if kind == "step":
            rows = [{**{k: v for k, v in r.items() if k != "time_ms"},
                     **{f"ms_{k}": v for k, v in r["time_ms"].items()}} for r in rows]
        frame = pd.DataFrame(rows).drop(columns=["type"], errors="ignore")
        if frame.empty:
            return frame
        meta = self.runs().set_index("run_id")[["optimizer", "label", "lr", "seed"]]
        return frame.join(meta, on="run_id")

    def routes(self) -> pd.DataFrame:
        rows = []
        done = set()
        for h in self.headers().values():
            run = h.get("run", {})
            if run.get("optimizer") in done:
                continue
            done.add(run.get("optimizer"))
            for r in run.get("routes", []):
                rows.append({"run_optimizer": run.get("label", run.get("optimizer")), **r})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        return self.runs()

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"runs": self.runs(), "steps": self.table("step"), "updates": self.table("update"),
                "alphas": self.table("alpha"), "evals": self.table("eval"), "routes": self.routes()}


def from_trace(records: list[dict], source: str = "uploaded trace") -> OptimizerTracesResult:
    """A result from a loaded JSONL trace (the dashboard's, or one recorded in a user's loop)."""
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]
    return OptimizerTracesResult(model_name=source, fingerprint=f"trace:{digest}", params={"source": source},
                                 timings={}, records=records, notes=method_notes())


def method_notes() -> dict:
    """Citation and paper-versus-code notes of every optimizer, for the page and the report."""
    out = {}
    for name, (label, _, paper) in optimizers.ELEMENTWISE.items():
        out[name] = {"label": label, "paper": paper, "notes": []}
    for name, cls in optimizers.MATRIX_OPTIMIZERS.items():
        out[name] = {"label": cls.label, "paper": cls.paper, "notes": list(cls.notes)}
    return out


def run(params: dict, progress: Callable[[float, str], None] | None = None,
        sink: Callable[[dict], None] | None = None) -> OptimizerTracesResult:
    """Train every planned run of ``params`` (see ``DEFAULTS``) and collect their traces."""
    params = check_params(params)
    bench = benchmark(params["bench"])
    runs = plan(params)
    records: list[dict] = []

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
            def tick(t: int, i=i, r=r) -> None:
                if progress and (t % 10 == 0 or t == params["steps"]):
                    progress((i * params["steps"] + t) / total, f"run {i + 1}/{len(runs)}: {r['label']} "
                             f"lr={r['lr']:.3g} seed={r['seed']}, step {t}/{params['steps']}")
            train_run(bench, r, params, keep, tick)
        seconds = time.perf_counter() - t0
    return OptimizerTracesResult(model_name=bench.description, fingerprint=f"{bench.name}:{bench.data_digest}",
                                 params=params, timings={"total_s": seconds}, records=records, notes=method_notes())
