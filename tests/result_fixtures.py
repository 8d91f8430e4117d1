"""One small but complete result per diagnostic, built by running the diagnostic on tiny inputs, for
tests that go over every chart or every table column. Each is built once per test session."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

# The longer built-in model name: titles must fit with it, not only with a test's short names.
LONG_NAME = "SmolLM2-135M-Instruct"


def _named(result):
    return dataclasses.replace(result, model_name=LONG_NAME)


def _weights() -> dict[str, torch.Tensor]:
    """A heavy-tailed matrix (a trusted power law), noise, a conv kernel, a bias, an integer buffer,
    and the tensors the overview must flag: one with a NaN and one all zero."""
    g = torch.Generator().manual_seed(0)
    heavy = torch.from_numpy(np.random.default_rng(0).standard_t(1.5, size=(300, 150)).astype(np.float32))
    nan = torch.randn(40, 20, generator=g)
    nan[3, 4] = float("nan")
    return {
        "layers.0.mlp.up_proj.weight": heavy,
        "layers.0.mlp.up_proj.bias": torch.ones(300),
        "layers.1.self_attn.q_proj.weight": torch.randn(64, 32, generator=g),
        "layers.1.conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "layers.1.mlp.down_proj.weight": nan,
        "layers.2.mlp.up_proj.weight": torch.zeros(40, 20),
        "position_ids": torch.arange(10),
    }


def _load_weights(folder: Path):
    import models

    path = folder / "weights.safetensors"
    save_file(_weights(), path)
    return models.load(str(path))


@functools.cache
def overview():
    from diagnostics import overview as ov

    with tempfile.TemporaryDirectory() as tmp:
        return _named(ov.run(_load_weights(Path(tmp))))


@functools.cache
def spectra():
    """Every optional column on: randomised baseline, MP fit, detX, goodness of fit, clipped fingers,
    the exact conv operator spectrum."""
    from diagnostics import spectra as sp

    params = sp.SpectraParams(randomize=True, mp_fit=True, detx=True, gof=True, n_boot=10, fix_fingers="clip_xmax",
                              conv2d_fft=True, fft_input_size=8)
    with tempfile.TemporaryDirectory() as tmp:
        return _named(sp.run(_load_weights(Path(tmp)), params))


def _alignment(labels: bool):
    from diagnostics import alignment as al

    rng = np.random.default_rng(0)
    n, d = 160, 8
    X = rng.standard_normal((n, d))
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    Y = X @ Q + rng.standard_normal(d) + 0.05 * rng.standard_normal((n, d))
    if not labels:
        return al.run(al.AlignmentInputs(X=X, Y=Y, name_a="A-encoder", name_b=LONG_NAME),
                      {"n_permutations": 3, "curves": False})
    classes = ["cat", "dog", "car", "ship"]
    X2 = rng.standard_normal((n, d)) + 2
    protos = rng.standard_normal((len(classes), d))
    inputs = al.AlignmentInputs(
        X=X, Y=Y, labels=[classes[i % 4] for i in range(n)], X2=X2, Y2=X2 @ Q, modality="images", modality2="texts",
        name_a="clip-vit-base-patch32", name_b=LONG_NAME, fingerprint_a="fa", fingerprint_b="fb",
        class_names=classes, prompts_a=protos, prompts_b=protos @ Q)
    return al.run(inputs, {"n_permutations": 3, "budget_seeds": 2, "tradeoff_weights": [1e-3, 1e-1, 10.0], "draws": 2})


@functools.cache
def alignment():
    """Labels (class-sorted heatmaps, every split), a second modality and zero-shot prompts, the curves."""
    return _alignment(labels=True)


@functools.cache
def alignment_unlabelled():
    return _alignment(labels=False)


@functools.cache
def directions():
    """A tiny causal language model: logit-lens readout and the two-panel next-token traversal."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import models
    from diagnostics import directions as dr
    from tests.conftest import TINY_LLAMA

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny-llama"
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval().save_pretrained(folder)
        words = Tokenizer(WordLevel({f"w{i}": i for i in range(62)} | {"<unk>": 62, "</s>": 63}, unk_token="<unk>"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
        params = {"matrices": ["model.layers.0.mlp.down_proj.weight"], "k": 4, "alphas": [-1.0, 0.5],
                  "traverse": [1, 3], "gen_tokens": 3, "fit_iters": 40, "prompts": ["w1 w2 w3", "w4 w5"]}
        return _named(dr.run(models.load(str(folder)), params))


def recorded_trace(momentum: float = 0.0) -> list[dict]:
    """The records of a user's own loop: SGD on a 6x6 linear layer, four steps, traced every two."""
    from diagnostics import trace_recorder as tr

    model = torch.nn.Linear(6, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    rec = tr.TraceRecorder(model, opt, run={"optimizer": "sgd"}, every=2, alpha_every=4, run_id="mine")
    for _ in range(4):
        loss = model(torch.randn(8, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.log_loss(loss)
    return rec.records


@functools.cache
def optimizer_traces():
    """Two optimizers at two rates over two seeds: the comparison, the sweep and every curve."""
    from diagnostics import optimizer_traces as ot

    return ot.run({"optimizers": ["adamw", "muon"], "seeds": 2, "steps": 10, "every": 5, "alpha_every": 10,
                   "eval_every": 5, "lr_scales": [0.5, 2.0]})


@functools.cache
def steering():
    from tests.test_charts_steering import make_result

    return _named(make_result())


def compare_series(folder: Path) -> list[Path]:
    """A training run in ``folder``: step_0 (a heavy-tailed layer, a noise layer, a layer too small to
    fit), step_100 and step_200 (the same plus a planted rank-2 update and more noise), step_300
    (corrupt). Returns the four files in step order."""
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(1.5, size=(300, 150))
    noise = rng.standard_normal((64, 32))
    paths = []
    for i, step in enumerate((0, 100, 200)):
        r = np.random.default_rng(i + 1)
        update = 0.5 * i * r.standard_normal((300, 2)) @ r.standard_normal((2, 150))
        weights = {"layers.0.mlp.up_proj.weight": heavy + update,
                   "layers.1.self_attn.q_proj.weight": noise + 0.2 * i * r.standard_normal((64, 32)),
                   "layers.1.mlp.down_proj.weight": r.standard_normal((6, 4))}
        paths.append(folder / f"step_{step}.safetensors")
        save_file({k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()}, paths[-1])
    paths.append(folder / "step_300.safetensors")
    paths[-1].write_bytes(b"not a checkpoint")
    return paths


def _compare(as_series: bool):
    from diagnostics import sweep
    from models.checkpoints import discover, from_specs

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        paths = compare_series(folder)
        members = discover(folder) if as_series else from_specs([str(p) for p in paths])
        return sweep.run(members, base=members[0], executor="serial", db=Path(tmp) / "sweep.duckdb")


@functools.cache
def compare():
    """A checkpoint series swept with step_0 as the base: every table filled, one failed checkpoint."""
    return _compare(as_series=True)


@functools.cache
def compare_models():
    """The same files as a list of models (long path names, no steps)."""
    return _compare(as_series=False)
