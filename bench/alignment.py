"""Benchmark: every map and every held-out measure on 10,000 x 384 pairs, beside scipy's Procrustes.

    OMP_NUM_THREADS=2 python bench/alignment.py [--repeats 5] [--rows 10000] [--dims 384]

The pairs are planted (Y = X Q + mu + noise, Q random orthogonal), split 80/20; all 8,000 pool
rows are anchors. Timed: ``diagnostics.alignment.run`` without the two curves (six maps, the
no-map baseline, retrieval both ways, cosines, map geometry, four map-free measures with 20
permutation nulls), and ``scipy.linalg.orthogonal_procrustes`` on the same centred anchors, with
the process's BLAS threads and with one. Medians over the repeats, all in this one process.

Why Orthoscope fits Procrustes with its own SVD: every map shares the anchors' cross products
and eigenbasis, and ``run`` keeps BLAS on one thread (the map-free measures run in a second
Python thread), because the threaded SVD of a d x d matrix is many times slower than the
single-threaded one whenever the cores are busy (the last lines time both on a 384 x 384 matrix;
the gap shows only when other jobs hold a core, so the load average is printed first). The line
"procrustes alone" includes the anchors' Gram matrix and its eigenbasis, which scipy does not
compute and the other five maps then reuse.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg as sl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import alignment as al  # noqa: E402


def planted(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Q = sl.qr(rng.standard_normal((d, d)))[0]
    Y = (X @ Q + rng.standard_normal(d) + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return X, Y, Q


def median_time(func, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    X, Y, Q = planted(args.rows, args.dims)
    params = {"curves": False, "test_fraction": 0.2, "anchors": [int(args.rows * 0.8)]}
    inputs = al.AlignmentInputs(X=X, Y=Y, name_a="planted A", name_b="planted B")
    al.run(inputs, params)  # warm-up: BLAS threads, imports

    total, result = median_time(lambda: al.run(inputs, params), args.repeats)
    pool, _ = al.split_rows(args.rows, 0.2, 0)
    Xa, Ya = al.unit_rows(X[pool].astype(np.float64)), al.unit_rows(Y[pool].astype(np.float64))
    Xc, Yc = Xa - Xa.mean(0), Ya - Ya.mean(0)
    scipy_t, (R, _) = median_time(lambda: sl.orthogonal_procrustes(Xc, Yc), args.repeats)
    with al._THREADS.limit(limits=1, user_api="blas"):
        scipy_1t, _ = median_time(lambda: sl.orthogonal_procrustes(Xc, Yc), args.repeats)
        ours_t, m = median_time(lambda: al.Fitter(Xa, Ya).procrustes(), args.repeats)
        M = Xc.T @ Yc
        svd_1t, _ = median_time(lambda: np.linalg.svd(M), args.repeats)
    svd_default, _ = median_time(lambda: np.linalg.svd(M), args.repeats)

    frame = result.to_frame().set_index("map")
    penalised = next(g for g in result.geometry if g["map"] == "penalised")
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {os.getloadavg()[0]:.2f}")
    print(f"data: {args.rows} x {args.dims} planted pairs, {len(pool)} anchors, {result.data['n_test']} held out; "
          f"median of {args.repeats} runs")
    print(f"orthoscope run (6 maps, all metrics, 20-shuffle nulls): {total:8.3f} s   "
          f"[{'under' if total < 2 else 'OVER'} the 2 s target]")
    for key in ("fit_and_score_s", "geometry_s", "similarity_s"):
        print(f"    {key:<18} {result.timings[key]:8.3f} s (last run)")
    print(f"scipy orthogonal_procrustes alone, default threads:     {scipy_t:8.3f} s")
    print(f"scipy orthogonal_procrustes alone, one BLAS thread:     {scipy_1t:8.3f} s")
    print(f"orthoscope procrustes alone (Fitter + SVD), one thread: {ours_t:8.3f} s")
    print(f"ratio run / scipy procrustes (default threads): {total / scipy_t:.1f}x; same map as scipy: "
          f"max |W - R| = {np.abs(m.W - R).max():.1e}")
    print(f"np.linalg.svd of the {args.dims} x {args.dims} cross product: default threads {svd_default:.3f} s, "
          f"one thread {svd_1t:.3f} s")
    print(f"held-out top-1 A->B: procrustes {frame.loc['procrustes', 'top1_ab']:.3f}, none "
          f"{frame.loc['none', 'top1_ab']:.3f}; penalised map (lambda {result.params['penalised_lambda']:g}): "
          f"||W^T W - I|| = {penalised['orth_error']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
