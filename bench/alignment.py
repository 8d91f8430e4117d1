"""Benchmark: every map and every held-out measure on 10,000 x 384 pairs, beside scipy's Procrustes.

    OMP_NUM_THREADS=2 python bench/alignment.py [--repeats 5] [--rows 10000] [--dims 384]

The pairs are planted (Y = X Q + mu + noise, Q random orthogonal), split 80/20; all 8,000 pool
rows are anchors. Timed: ``diagnostics.alignment.run`` without the two curves (six maps, the
no-map baseline, retrieval both ways, cosines, map geometry, four map-free measures with their
permutation nulls), once as configured before issue 13 (one draw, 20 shuffles: the 2 s target)
and once with today's defaults (5 anchor draws, 200 shuffles); and
``scipy.linalg.orthogonal_procrustes`` on the same centred anchors, with the process's BLAS
threads and with one. Medians over the repeats, all in this one process. Then the permutation
nulls alone, 200 shuffles, at the held-out sizes of this benchmark and of the page's built-in
sentences (140 rows), and the cost of one gathered Gram element against one multiply-add in a
matrix product, the ratio behind the choice between the two forms of the shuffled CKA.

Why Orthoscope fits Procrustes with its own SVD: every map shares the anchors' cross products
and eigenbasis, and ``run`` keeps BLAS on one thread per Python thread (draws and the map-free
measures run in two Python threads), because the threaded SVD of a d x d matrix is many times
slower than the single-threaded one whenever the cores are busy (the last lines time both on a
384 x 384 matrix; the gap shows only when other jobs hold a core, so the load average is printed
first). The line "procrustes alone" includes the anchors' Gram matrix and its eigenbasis, which
scipy does not compute and the other five maps then reuse.
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


def null_costs(n: int, d: int, perms: int = 200) -> tuple[float, float]:
    """Seconds for ``similarity_with_nulls`` with ``perms`` shuffles on n x d planted pairs, and
    the seconds per gathered Gram element over those per multiply-add of the feature form."""
    X, Y, _ = planted(n, d, seed=1)
    t, _ = median_time(lambda: al.similarity_with_nulls(X, Y, n_permutations=perms, seed=0, k=10, svcca_dims=32), 1)
    rng = np.random.default_rng(0)
    P = np.stack([rng.permutation(n) for _ in range(20)])
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    L = (Yc @ Yc.T).astype(np.float64)
    gather, _ = median_time(lambda: [L[p[:, None], p[None, :]].sum() for p in P], 1)
    multiply, _ = median_time(lambda: [(Xc.T @ Yc[p]).sum() for p in P], 1)
    return t, (gather / (20 * n * n)) / (multiply / (20 * n * d * d))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    X, Y, Q = planted(args.rows, args.dims)
    before = {"curves": False, "test_fraction": 0.2, "anchors": [int(args.rows * 0.8)], "draws": 1,
              "n_permutations": 20}
    today = {**before, "draws": al.DEFAULTS["draws"], "n_permutations": al.DEFAULTS["n_permutations"]}
    inputs = al.AlignmentInputs(X=X, Y=Y, name_a="planted A", name_b="planted B")
    al.run(inputs, before)  # warm-up: BLAS threads, imports

    total, result = median_time(lambda: al.run(inputs, before), args.repeats)
    total_today, result_today = median_time(lambda: al.run(inputs, today), args.repeats)
    pool, _ = al.split_rows(args.rows, 0.2, 0)
    Xa, Ya = X[pool].astype(np.float64), Y[pool].astype(np.float64)  # rows not normalised: the default
    Xc, Yc = Xa - Xa.mean(0), Ya - Ya.mean(0)
    scipy_t, (R, _) = median_time(lambda: sl.orthogonal_procrustes(Xc, Yc), args.repeats)
    with al._THREADS.limit(limits=1, user_api="blas"):
        scipy_1t, _ = median_time(lambda: sl.orthogonal_procrustes(Xc, Yc), args.repeats)
        ours_t, m = median_time(lambda: al.Fitter(Xa, Ya).procrustes(), args.repeats)
        M = Xc.T @ Yc
        svd_1t, _ = median_time(lambda: np.linalg.svd(M), args.repeats)
        nulls = {n: null_costs(n, args.dims) for n in (140, result.data["n_test"])}
    svd_default, _ = median_time(lambda: np.linalg.svd(M), args.repeats)

    frame = result.to_frame().set_index("map")
    penalised = next(g for g in result.geometry if g["map"] == "penalised")
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {os.getloadavg()[0]:.2f}")
    print(f"data: {args.rows} x {args.dims} planted pairs, {len(pool)} anchors, {result.data['n_test']} held out; "
          f"median of {args.repeats} runs")
    print(f"orthoscope run as before issue 13 (6 maps, 1 draw, 20-shuffle nulls): {total:8.3f} s   "
          f"[{'under' if total < 2 else 'OVER'} the 2 s target]")
    for key in ("fit_and_score_s", "geometry_s", "similarity_s"):
        print(f"    {key:<18} {result.timings[key]:8.3f} s (last run)")
    print(f"orthoscope run with today's defaults ({today['draws']} draws, {today['n_permutations']}-shuffle nulls): "
          f"{total_today:8.3f} s")
    for key in ("fit_and_score_s", "similarity_s"):
        print(f"    {key:<18} {result_today.timings[key]:8.3f} s (last run; the nulls run beside the fits)")
    for n, (t, ratio) in nulls.items():
        print(f"200-shuffle nulls of the four measures on {n} x {args.dims} rows, one thread: {t:7.3f} s; "
              f"a gathered Gram element costs {ratio:.0f} multiply-adds")
    print(f"scipy orthogonal_procrustes alone, default threads:     {scipy_t:8.3f} s")
    print(f"scipy orthogonal_procrustes alone, one BLAS thread:     {scipy_1t:8.3f} s")
    print(f"orthoscope procrustes alone (Fitter + SVD), one thread: {ours_t:8.3f} s")
    print(f"ratio run / scipy procrustes (default threads): {total / scipy_t:.1f}x; same map as scipy: "
          f"max |W - R| = {np.abs(m.W - R).max():.1e}")
    print(f"np.linalg.svd of the {args.dims} x {args.dims} cross product: default threads {svd_default:.3f} s, "
          f"one thread {svd_1t:.3f} s")
    print(f"held-out top-1 A->B: procrustes {frame.loc['procrustes', 'top1_ab']:.3f}, none "
          f"{frame.loc['none', 'top1_ab']:.3f}; penalised map (weight {result.params['penalised_weight']:g}): "
          f"||W^T W - I|| = {penalised['orth_error']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
