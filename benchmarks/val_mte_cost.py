"""What `val_mte` (MTE on validation images, end of a search trial) costs next to the trial itself.

Trains one search trial's student as a study would (the study file's loop settings, each searched
parameter at the middle of its range, one torch thread, the study's teacher from the teacher store,
trained first if missing), then times :func:`zskt_ray.mte.validation_mte` on it with the study's
search-MTE settings (``evaluation.mte_search``: K, xi, N), or with ``--k/--xi/--n``. Prints wall and
CPU seconds of one thread (``time.process_time``, less sensitive to a busy machine) for both, and
the load average, since the machine may be shared.

    python benchmarks/val_mte_cost.py studies/digits.yaml
    python benchmarks/val_mte_cost.py studies/toy2d.yaml --repeat 5
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from zskt_ray.config import DistillConfig, TeacherConfig, from_dict
from zskt_ray.data import load_dataset, make_loader
from zskt_ray.loop import ZeroShotDistiller
from zskt_ray.mte import validation_mte
from zskt_ray.teacher import ensure_teacher, load_teacher


def middle(p: dict[str, Any]) -> Any:
    """A searched parameter at the middle of its range (geometric for log ranges)."""
    if p.get("type") == "categorical":
        choices = p["choices"]
        return choices[len(choices) // 2]
    lo, hi = float(p["low"]), float(p["high"])
    mid = math.sqrt(lo * hi) if p.get("log") else (lo + hi) / 2
    return int(round(mid)) if p.get("type") == "int" else mid


def timed(fn: Any) -> tuple[Any, float, float]:
    """(result, wall s, CPU s of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("study", nargs="?", default="studies/digits.yaml")
    p.add_argument("--k", type=int, help="K (default: evaluation.mte_search.k)")
    p.add_argument("--xi", type=float, help="xi (default: evaluation.mte_search.xi)")
    p.add_argument("--n", type=int, help="validation images (default: mte_search.n_test)")
    p.add_argument("--repeat", type=int, default=3, help="timed val_mte calls (median printed)")
    a = p.parse_args()
    torch.set_num_threads(1)  # cpus_per_trial 1 in the shipped studies
    spec = yaml.safe_load(Path(a.study).read_text())
    mte = spec.get("evaluation", {}).get("mte_search", {})
    k, xi, n = a.k or mte.get("k", 10), a.xi or mte.get("xi", 1.0), a.n or mte.get("n_test", 100)

    dataset, t_arch = spec["dataset"], spec["teacher"]["arch"]
    teacher, _ = load_teacher(ensure_teacher(TeacherConfig.recipe(dataset, t_arch)), "cpu")
    searched = {name: middle(q) for name, q in spec["search"]["space"].items()}
    values = {
        **spec.get("loop", {}),
        **searched,
        "dataset": dataset,
        "teacher_arch": t_arch,
        "student_arch": spec["student"]["arch"],
        "seed": spec.get("seed", 0),
        "device": "cpu",
    }
    cfg = from_dict(DistillConfig, values)
    splits = load_dataset(dataset)
    val_loader = make_loader(splits.val, cfg.eval_batch_size, shuffle=False)

    def trial() -> ZeroShotDistiller:
        d = ZeroShotDistiller(cfg, teacher, splits.info, val_loader, "cpu")
        for _ in d.run():
            pass
        return d

    print(f"{a.study}: {cfg.iterations} iterations, searched at {searched}")
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    distiller, t_wall, t_cpu = timed(trial)
    val_acc = distiller.evaluate()
    print(f"search trial: {t_wall:.2f} s wall, {t_cpu:.2f} s CPU; val_acc {val_acc:.2f}")

    runs = []
    for _ in range(a.repeat):
        res, w, c = timed(
            lambda: validation_mte(distiller.student, teacher, splits, n_val=n, k=k, xi=xi, seed=0)
        )
        runs.append((w, c, res))
    runs.sort(key=lambda r: r[1])
    w, c, res = runs[len(runs) // 2]
    assert all(r[2].mte == res.mte for r in runs), "val_mte differs between identical calls"
    print(
        f"val_mte (K {k}, xi {xi}, N {n}): {res.mte:.4f} on {res.n_test} agreeing images, "
        f"{res.n_test * (res.num_classes - 1)} curves; median of {a.repeat}: {w:.3f} s wall, "
        f"{c:.3f} s CPU = {100 * c / t_cpu:.1f} % of the trial's CPU time"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
