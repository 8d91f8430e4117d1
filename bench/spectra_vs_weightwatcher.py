"""Orthoscope's spectra diagnostic against WeightWatcher 0.7.7, measured in one run.

    python bench/spectra_vs_weightwatcher.py              # wall-time ratios on both built-ins
    python bench/spectra_vs_weightwatcher.py --memory     # peak RSS analysing a ~2 GB checkpoint

Timings use one thread for every library (OMP/OpenBLAS/MKL and torch), both tools read the same
weights already in memory (WeightWatcher the transformers module, Orthoscope the matrices the
model handle yields), and WeightWatcher analyses exactly Orthoscope's layers (``layers=`` ids;
SmolLM2's tied lm_head is left out). Each figure is the median over repeats, interleaved so that
a busy machine slows all tools alike. WeightWatcher's Marchenko-Pastur fit costs 2-5 s per layer,
so the option modes run on a layer subset (see SUBSETS; the table names it); the default and gof
modes run on every layer (gof against WeightWatcher's default run: it has no such test), and a
table gives the cost of the trust columns (phase, likelihood-ratio tests, intervals, bootstrap). For SmolLM2 the embedding is timed on its own, and "everything" on the whole model
is estimated for WeightWatcher from the measured parts (and measured for Orthoscope).
WeightWatcher uses its own power-law fit (pl_package="ww"); its powerlaw-package route returns
alpha = -1 everywhere with powerlaw 2.0.0.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from diagnostics import spectra  # noqa: E402

torch.set_num_threads(1)

MODES = {
    "default": ({}, {}),
    # WeightWatcher has no goodness-of-fit test: the reference is its default run (timed once, above).
    "gof": ({"gof": True}, None),
    "randomize": ({"randomize": True}, {"randomize": True}),
    "mp_fit": ({"mp_fit": True}, {"mp_fit": True}),
    "detX": ({"detx": True}, {"detX": True}),
    "everything": ({"randomize": True, "mp_fit": True, "detx": True}, {"randomize": True, "mp_fit": True, "detX": True}),
}
# Layers for the option modes (WeightWatcher's MP fit costs 2-5 s a layer, so not every layer):
# MiniLM's two embeddings, first and last block and pooler; SmolLM2's first and last block. The
# 49152 x 576 SmolLM2 embedding gets its own row: there Orthoscope's randomize is bounded by one
# exact shuffle of 28M elements (torch.randperm, ~1.4 s), so it is reported apart, and the whole
# model is estimated from the measured parts (see whole_model_estimate).
SUBSETS = {
    "minilm": lambda n: n.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.5.", "pooler.")),
    "smollm2": lambda n: n.startswith(("model.layers.0.", "model.layers.29.")),
}
EXTRA = {"smollm2": ("embedding", lambda n: n.startswith("model.embed_tokens"))}


class Preloaded:
    """A model handle whose matrices are already in memory, so only the analysis is timed."""

    def __init__(self, handle):
        start = time.perf_counter()
        # clone(): safetensors tensors are lazy memory maps; read them now, not inside a timing.
        self.mats = [dataclasses.replace(m, tensor=m.tensor.clone()) for m in handle.iter_matrices()]
        self.load_s = time.perf_counter() - start
        self.name, self.fingerprint = handle.name, handle.fingerprint
        self._skipped = handle.skipped()

    def matrix_names(self):
        return [m.name for m in self.mats]

    def skipped(self):
        return self._skipped

    def iter_matrices(self, names=None):
        return (m for m in self.mats if names is None or m.name in names)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bare_svdvals(mats, dtype) -> float:
    start = time.perf_counter()
    for m in mats:
        torch.linalg.svdvals(m.tensor.to(dtype))
    return time.perf_counter() - start


def longname(name: str) -> str:
    return name.removesuffix(".weight")


def bench_model(key: str, repeats: int, ww_repeats: int) -> tuple[list[dict], dict]:
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    handle = models.load(f"builtin:{key}")
    pre = Preloaded(handle)
    names = pre.matrix_names()
    subset = [n for n in names if SUBSETS[key](n)]
    t_module, module = timed(handle.module)
    watcher = weightwatcher.WeightWatcher(model=module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        described = watcher.describe()
    ids_of = dict(zip(described["longname"].astype(str), described["layer_id"].astype(int)))
    print(f"\n{pre.name}: {len(names)} matrices; reading them {pre.load_s:.1f} s, building the transformers module "
          f"{t_module:.1f} s (neither is in the ratios)", flush=True)

    def ww_run(layer_names, opts):
        ids = [ids_of[longname(n)] for n in layer_names]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return timed(lambda: watcher.analyze(layers=ids, pl_package="ww", **opts))

    def ours_run(layer_names, opts):
        return timed(lambda: spectra.run(pre, spectra.SpectraParams(**opts), names=None if layer_names is names else layer_names))

    rows = []
    parity = {}
    plan = [(mode, names if mode in ("default", "gof") else subset, None) for mode in MODES]
    if key in EXTRA:
        label, pick = EXTRA[key]
        plan.append(("everything", [n for n in names if pick(n)], label))
    for mode, layer_names, label in plan:
        ours_opts, ww_opts = MODES[mode]
        expensive = mode in ("randomize", "mp_fit", "everything")
        n_ww = 1 if expensive or key == "smollm2" and mode == "default" else ww_repeats
        if ww_opts is None:  # compared with WeightWatcher's default run on the same layers
            n_ww = 0
            ww_times = list(rows[0]["ww_times"])
        else:
            ww_times = []
        ours_times = []
        for r in range(max(n_ww, repeats)):
            if r < repeats:
                t, result = ours_run(layer_names, ours_opts)
                ours_times.append(t)
            if r < n_ww:
                t, frame = ww_run(layer_names, ww_opts)
                ww_times.append(t)
        if mode == "default":
            parity = alpha_parity(result.to_frame(), frame)
            costs = new_column_costs(result)
        scope = "all" if layer_names is names else (label or "subset")
        rows.append({
            "model": key, "mode": mode, "layers": f"{scope} {len(layer_names)}", "count": len(layer_names),
            "ww": statistics.median(ww_times), "n_ww": len(ww_times) if ww_opts is not None else 0,
            "ww_times": ww_times,
            "ours": statistics.median(ours_times), "n_ours": len(ours_times), "target": label is None,
        })
        print(f"  {mode:<10} {scope:<9} WW {rows[-1]['ww']:7.2f} s  Orthoscope {rows[-1]['ours']:6.2f} s", flush=True)
    if key in EXTRA:
        t, _ = ours_run(names, MODES["everything"][0])
        rows.append(whole_model_estimate(key, rows, len(names), t))

    svd = {"f64": [], "f32": [], "ours": []}
    for _ in range(repeats):
        svd["f64"].append(bare_svdvals(pre.mats, torch.float64))
        svd["f32"].append(bare_svdvals(pre.mats, torch.float32))
        svd["ours"].append(timed(lambda: spectra.run(pre, spectra.SpectraParams()))[0])
    svd_row = {"model": key, "n": repeats, **{k: statistics.median(v) for k, v in svd.items()}, **parity,
               "costs": costs}
    del module, watcher
    return rows, svd_row


def new_column_costs(result) -> dict:
    """Seconds spent on the columns added for trust (issue 11), summed over the layers, timed on the
    full ESDs of the default run: the MP bulk fit and phase, the likelihood-ratio tests, the
    asymptotic interval (all three always on), and the bootstrap p-value with its interval (gof)."""
    from diagnostics import power_law

    costs = {"phase": 0.0, "lr_tests": 0.0, "interval": 0.0, "gof_bootstrap": 0.0}
    params = spectra.SpectraParams()
    for row in result.layers:
        esd = result.esds[row["name"]]
        assert not esd["subsampled"], "new_column_costs needs the full ESD"
        evals = np.asarray(esd["evals"])
        fit = power_law.fit_power_law(evals)
        if not fit.ok:
            continue
        data = power_law.fitted_sample(evals, fit)
        costs["phase"] += timed(lambda: spectra.classify_phase(evals, fit, spectra.fit_mp_bulk(evals, row["N"], row["M"])))[0]
        costs["lr_tests"] += timed(lambda: power_law.compare_distributions(data, fit))[0]
        costs["interval"] += timed(lambda: power_law.alpha_interval_asymptotic(fit))[0]
        costs["gof_bootstrap"] += timed(lambda: power_law.goodness_of_fit(data, fit, n_boot=params.n_boot))[0]
    return costs


def whole_model_estimate(key: str, rows: list[dict], total: int, ours_all: float) -> dict:
    """WeightWatcher's "everything" time on the whole model, estimated as the measured blocks'
    time per layer times the number of block layers plus the measured embedding; Orthoscope's
    whole-model time is measured."""
    blocks = next(r for r in rows if r["mode"] == "everything" and r["layers"].startswith("subset"))
    extra = next(r for r in rows if r["mode"] == "everything" and not r["target"])
    ww = blocks["ww"] / blocks["count"] * (total - extra["count"]) + extra["ww"]
    return {"model": key, "mode": "everything", "layers": f"all {total}*", "count": total, "ww": ww, "n_ww": 0,
            "ours": ours_all, "n_ours": 1, "target": True}


def alpha_parity(ours, theirs) -> dict:
    ours = ours.assign(longname=ours["name"].map(longname)).set_index("longname")
    theirs = theirs.set_index("longname").loc[ours.index]
    out = {}
    for col in ("alpha", "D", "xmin", "lambda_max", "entropy"):
        a, b = ours[col].to_numpy(float), theirs[col].to_numpy(float)
        out[f"maxrel_{col}"] = float(np.max(np.abs(a - b) / np.abs(b)))
    return out


def print_tables(rows: list[dict], svd_rows: list[dict]) -> bool:
    ok = True
    print("\nWall time, one thread; WW/Orthoscope > 1 means Orthoscope is faster (target: default >= 2x, "
          "everything >= 10x; gof is compared with WeightWatcher's default run, which has no such test)")
    print(f"{'model':<8} {'mode':<11} {'layers':<12} {'WeightWatcher s':>16} {'Orthoscope s':>13} {'WW/Orthoscope':>14}  check")
    for r in rows:
        ratio = r["ww"] / r["ours"]
        target = {"default": 2.0, "everything": 10.0}.get(r["mode"]) if r["target"] else None
        check = "" if target is None else ("PASS" if ratio >= target else "FAIL")
        ok &= check != "FAIL"
        n_ww = {0: "est." if r["mode"] != "gof" else "dflt"}.get(r["n_ww"], f"n={r['n_ww']}")
        print(f"{r['model']:<8} {r['mode']:<11} {r['layers']:<12} {r['ww']:>9.2f} ({n_ww:>4}) "
              f"{r['ours']:>7.2f} (n={r['n_ours']}) {ratio:>13.1f}x  {check}")
    if any(r["n_ww"] == 0 and r["mode"] == "everything" for r in rows):
        print("* WeightWatcher estimated: the blocks' measured time per layer x the model's other block layers, plus "
              "the embedding's measured time; Orthoscope measured on every layer.")
    print("\nOrthoscope default run against bare torch.linalg.svdvals over the same matrices (target: <= 1.3x)")
    print(f"{'model':<8} {'svdvals f64 s':>14} {'svdvals f32 s':>14} {'Orthoscope s':>13} {'vs f64':>7} {'vs f32':>7}  check")
    for r in svd_rows:
        v64, v32 = r["ours"] / r["f64"], r["ours"] / r["f32"]
        check = "PASS" if max(v64, v32) <= 1.3 else "FAIL"
        ok &= check == "PASS"
        print(f"{r['model']:<8} {r['f64']:>14.2f} {r['f32']:>14.2f} {r['ours']:>13.2f} {v64:>6.2f}x {v32:>6.2f}x  "
              f"{check}  (n={r['n']})")
    print("\nCost of the trust columns, summed over every layer (seconds; share of the default run)")
    print(f"{'model':<8} {'phase':>14} {'LR tests':>14} {'interval':>14} {'gof bootstrap':>16}  (n_boot "
          f"{spectra.SpectraParams().n_boot})")
    for r in svd_rows:
        c = r["costs"]
        cells = "".join(f" {c[k]:>7.3f} ({c[k] / r['ours']:>4.0%})" for k in ("phase", "lr_tests", "interval"))
        print(f"{r['model']:<8}{cells} {c['gof_bootstrap']:>8.2f} ({c['gof_bootstrap'] / r['ours']:>4.0%})")
    print("\nSame numbers, default mode, every layer: largest relative difference Orthoscope vs WeightWatcher")
    for r in svd_rows:
        cols = "  ".join(f"{k.removeprefix('maxrel_')} {v:.1e}" for k, v in r.items() if k.startswith("maxrel_"))
        print(f"{r['model']:<8} {cols}")
    return ok


# ---------------------------------------------------------------------------------------
# Memory


MEMORY_MATRICES = [(f"model.layers.{i}.mlp.up_proj.weight", 65536, 1024) for i in range(6)] + [
    (f"model.layers.{i}.self_attn.o_proj.weight", 16384, 4096) for i in range(6, 8)
]
MEMORY_LIMIT = 1_000_000_000  # bytes


def write_safetensors(path: Path, specs: list[tuple[str, int, int]]) -> int:
    """A float32 safetensors file written tensor by tensor, 16 MiB at a time (header + raw bytes)."""
    header, offset = {}, 0
    for name, rows, cols in specs:
        size = rows * cols * 4
        header[name] = {"dtype": "F32", "shape": [rows, cols], "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(0)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for _, rows, cols in specs:
            step = max(1, (16 << 20) // (cols * 4))
            for start in range(0, rows, step):
                fh.write(rng.standard_normal((min(step, rows - start), cols), dtype=np.float32).tobytes())
    return path.stat().st_size


def bench_memory() -> bool:
    with tempfile.TemporaryDirectory(prefix="orthoscope-mem-") as tmp:
        path = Path(tmp) / "big.safetensors"
        t, size = timed(lambda: write_safetensors(path, MEMORY_MATRICES))
        print(f"wrote {path.name}: {size / 2**30:.2f} GiB, {len(MEMORY_MATRICES)} float32 matrices "
              f"({', '.join(sorted({f'{r}x{c}' for _, r, c in MEMORY_MATRICES}))}) in {t:.1f} s", flush=True)
        code = (
            "import sys, time; sys.path.insert(0, %r); import torch; torch.set_num_threads(1)\n"
            "import models; from diagnostics import spectra\n"
            "t = time.perf_counter(); r = spectra.run(models.load(%r))\n"
            "print('layers', len(r.layers), 'skipped', [s['name'] for s in r.skipped],"
            " 'seconds', round(time.perf_counter() - t, 1), 'alpha', [round(x['alpha'], 2) for x in r.layers])\n"
        ) % (str(ROOT), str(path))
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", code], capture_output=True, text=True)
        print(proc.stdout.strip())
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return False
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        peak = peak_kb * 1024
        ok = peak < MEMORY_LIMIT
        print(f"peak RSS {peak / 1e6:.0f} MB for a {size / 1e9:.2f} GB checkpoint (limit {MEMORY_LIMIT / 1e6:.0f} MB): "
              f"{'PASS' if ok else 'FAIL'}")
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="only the peak-memory check on a ~2 GB checkpoint")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of Orthoscope and bare svdvals runs")
    parser.add_argument("--ww-repeats", type=int, default=3, help="repeats of WeightWatcher's cheap runs on MiniLM")
    parser.add_argument("--models", default="minilm,smollm2")
    args = parser.parse_args()
    if args.memory:
        return 0 if bench_memory() else 1
    started = time.perf_counter()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, numpy {np.__version__}")
    rows, svd_rows = [], []
    for key in args.models.split(","):
        r, s = bench_model(key.strip(), args.repeats, args.ww_repeats)
        rows += r
        svd_rows.append(s)
    ok = print_tables(rows, svd_rows)
    print(f"\nbench finished in {(time.perf_counter() - started) / 60:.1f} min")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
