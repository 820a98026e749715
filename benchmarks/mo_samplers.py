"""Which Optuna sampler for a multi-objective study: the hypervolume each reaches in a few trials.

A study has few trials (8 to a few dozen): what matters is how good a front a sampler finds in
that many. On ZDT1 (two objectives, both minimised; the first is x0, the second trades off
against it; ``--dims`` parameters in [0, 1]), each sampler runs ``--seeds`` independent studies
of the largest budget; the hypervolume of the first n trials of each (reference point (1.1, 11),
the worst values ZDT1 can give plus a margin) is printed as mean +- population std over seeds,
for each budget n. Samplers: TPE as the study layer builds it (multivariate, constant liar, 4
start-up trials), TPE with Optuna's defaults (for several objectives: independent, not
multivariate, 10 random start-up trials) and the same with 4 start-up trials, NSGA-II with its
default population (50: its first 50 trials are random) and with a population of 8, and random.

    python benchmarks/mo_samplers.py                      # budgets 8 16 32 64, 10 seeds
    python benchmarks/mo_samplers.py --budgets 8 16 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import optuna

from zskt_ray.pareto import hypervolume

REF = (1.1, 11.0)


def zdt1(trial: optuna.Trial, dims: int) -> tuple[float, float]:
    x = np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(dims)])
    f1 = float(x[0])
    g = 1.0 + 9.0 * float(x[1:].mean())
    return f1, g * (1.0 - np.sqrt(f1 / g))


SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "TPE multivariate + constant liar (zskt)": lambda s: optuna.samplers.TPESampler(
        seed=s, n_startup_trials=4, multivariate=True, constant_liar=True
    ),
    "TPE independent, constant liar, 4 start-up trials": lambda s: optuna.samplers.TPESampler(
        seed=s, n_startup_trials=4, multivariate=False, constant_liar=True
    ),
    "TPE, Optuna defaults (independent, 10 start-up trials)": lambda s: optuna.samplers.TPESampler(
        seed=s
    ),
    "NSGA-II, population 50 (default)": lambda s: optuna.samplers.NSGAIISampler(seed=s),
    "NSGA-II, population 8": lambda s: optuna.samplers.NSGAIISampler(seed=s, population_size=8),
    "random": lambda s: optuna.samplers.RandomSampler(seed=s),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--dims", type=int, default=4)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    n = max(args.budgets)
    print(
        f"ZDT1, {args.dims} parameters, {args.seeds} seeds; load average {os.getloadavg()[0]:.1f}"
    )
    print("| sampler | " + " | ".join(f"HV after {b} trials" for b in args.budgets) + " | s |")
    print("|---|" + "---|" * (len(args.budgets) + 1))
    for name, make in SAMPLERS.items():
        t0 = time.perf_counter()
        hv = np.zeros((args.seeds, len(args.budgets)))
        for seed in range(args.seeds):
            study = optuna.create_study(directions=["minimize", "minimize"], sampler=make(seed))
            study.optimize(lambda t: zdt1(t, args.dims), n_trials=n)
            values = np.array([t.values for t in study.trials])
            for j, b in enumerate(args.budgets):
                hv[seed, j] = hypervolume(values[:b], ["min", "min"], REF)
        cells = [f"{hv[:, j].mean():.2f} +- {hv[:, j].std():.2f}" for j in range(len(args.budgets))]
        print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
