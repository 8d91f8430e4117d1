"""The planted cases of the spectra trust rule, over many draws: what phase, trust and goodness of
fit say when the answer is known.

    python bench/spectra_planted.py            # 10 draws per case, goodness of fit on (n_boot 200)
    python bench/spectra_planted.py --draws 3

Matrices (1000 x 400): Gaussian noise; noise plus 20 or 5 rank-one spikes at 3-6x the BBP
threshold (N M)^(1/4); entries +-(1 + Pareto(mu)) for mu = 1.5 (Martin & Mahoney: ESD tail alpha
~ 1 + mu / 2 = 1.75). Samples (n = 500): exact Pareto with alpha 2 and 3 (the power law should
pass, p > 0.1) and lognormal (the likelihood-ratio test should prefer the lognormal, R < 0). The
lognormal nests the power law as a limit, so on Pareto samples R < 0 is common and not significant.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import power_law, spectra  # noqa: E402


def spikes(rng, k: int) -> np.ndarray:
    n, m = 1000, 400
    W = rng.standard_normal((n, m))
    U = np.linalg.qr(rng.standard_normal((n, k)))[0]
    V = np.linalg.qr(rng.standard_normal((m, k)))[0]
    return W + (U * (n * m) ** 0.25 * 3.0 * np.linspace(1, 2, k)) @ V.T


MATRICES = {
    "Gaussian": lambda rng: rng.standard_normal((1000, 400)),
    "Gaussian + 20 spikes": lambda rng: spikes(rng, 20),
    "Gaussian + 5 spikes": lambda rng: spikes(rng, 5),
    "Pareto entries, mu = 1.5": lambda rng: rng.choice([-1.0, 1.0], (1000, 400)) * (rng.pareto(1.5, (1000, 400)) + 1),
}
SAMPLES = {
    "Pareto sample, alpha = 2": lambda rng: (1 - rng.random(500)) ** (-1 / 1.0),
    "Pareto sample, alpha = 3": lambda rng: (1 - rng.random(500)) ** (-1 / 2.0),
    "lognormal sample": lambda rng: rng.lognormal(0.0, 1.0, 500),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    params = spectra.SpectraParams(gof=True, n_boot=args.n_boot)
    print(f"{args.draws} draws per case; goodness of fit with {args.n_boot} resamples; OMP_NUM_THREADS=1\n")
    print(f"{'matrix':<26} {'phases':<34} {'trusted':>8} {'median alpha':>13} {'median p':>9} {'CI covers 1.75':>15}")
    for label, make in MATRICES.items():
        rows = [spectra.analyse_matrix(make(np.random.default_rng(seed)), params, name=label)[0]
                for seed in range(args.draws)]
        phases = ", ".join(f"{n} {p}" for p, n in Counter(r["phase"] for r in rows).most_common())
        trusted = sum(r["pl_trust"] for r in rows)
        covers = sum(r["alpha_ci_low"] <= 1.75 <= r["alpha_ci_high"] for r in rows) if "Pareto" in label else None
        print(f"{label:<26} {phases:<34} {trusted:>5}/{len(rows)} {statistics.median(r['alpha'] for r in rows):>13.3f} "
              f"{statistics.median(r['pl_pvalue'] for r in rows):>9.3f} {'' if covers is None else f'{covers}/{len(rows)}':>15}")
    print(f"\n{'sample':<26} {'p > 0.1':>8} {'median p':>9} {'lognormal preferred (R < 0)':>28} {'and significant (p < 0.1)':>26}")
    for label, make in SAMPLES.items():
        pvalues, lognormal_wins, significant = [], 0, 0
        for seed in range(args.draws):
            x = make(np.random.default_rng(100 + seed))
            fit = power_law.fit_power_law(x)
            data = power_law.fitted_sample(x, fit)
            pvalues.append(power_law.bootstrap_pvalue(data, fit, n_boot=args.n_boot, seed=seed))
            lr = power_law.compare_distributions(data, fit)
            lognormal_wins += lr["lr_lognormal_R"] < 0
            significant += lr["lr_lognormal_R"] < 0 and lr["lr_lognormal_p"] < 0.1
        passed = sum(p > 0.1 for p in pvalues)
        print(f"{label:<26} {passed:>5}/{args.draws} {statistics.median(pvalues):>9.3f} {lognormal_wins:>25}/{args.draws} "
              f"{significant:>23}/{args.draws}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
