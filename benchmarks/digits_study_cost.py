"""Where the time of `zskt study run studies/digits.yaml` goes, measured in CPU seconds.

A study's wall time on 2 cores is (roughly) the CPU work of its parts divided by the cores they
share, plus start-up costs. CPU seconds of one thread (``time.process_time``) are far less
sensitive to a busy machine than wall time, so this script measures the parts that way, one torch
thread as in a study trial:

* the loop: CPU s per iteration at the study's batch size for several (n_g, n_s), fitted as
  ``a + b * n_g + c * n_s``, and the official-style reference step at n_g 1, n_s 6 (the machine's
  speed, to print next to every wall time);
* evaluation (validation and test accuracy), one image grid, the MTE of a search trial and of a
  final re-run (the study file's K, xi, N_test), with the study's teacher architecture;

and prints an estimate of the search and the final re-runs for the study file's settings.

    python benchmarks/digits_study_cost.py studies/digits.yaml
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_speed import reference_iteration  # noqa: E402

from zskt_ray.config import DistillConfig  # noqa: E402
from zskt_ray.data import load_dataset, make_loader  # noqa: E402
from zskt_ray.loop import ZeroShotDistiller  # noqa: E402
from zskt_ray.models import build_model  # noqa: E402
from zskt_ray.mte import mean_transition_error  # noqa: E402


def cpu_seconds(fn: Any, repeat: int = 1) -> float:
    """Median CPU seconds of this thread for one call of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("study", nargs="?", default="studies/digits.yaml")
    p.add_argument("--timed", type=int, default=3, help="timed iterations per (n_g, n_s)")
    a = p.parse_args()
    torch.set_num_threads(1)
    spec = yaml.safe_load(Path(a.study).read_text())
    loop = spec.get("loop", {})
    batch = int(loop.get("batch_size", 128))
    t_arch, s_arch = spec["teacher"]["arch"], spec["student"]["arch"]
    splits = load_dataset(spec["dataset"])
    info = splits.info

    def distiller(n_g: int, n_s: int, z_dim: int = 100) -> ZeroShotDistiller:
        cfg = DistillConfig(
            dataset=spec["dataset"],
            teacher_arch=t_arch,
            student_arch=s_arch,
            n_g=n_g,
            n_s=n_s,
            batch_size=batch,
            z_dim=z_dim,
            iterations=10_000,
            device="cpu",
        )
        torch.manual_seed(0)
        teacher = build_model(t_arch, info.num_classes, info.in_channels)
        return ZeroShotDistiller(cfg, teacher, info, device="cpu")

    d = distiller(1, 6)
    d.train_iteration()
    ref = cpu_seconds(lambda: reference_iteration(d), a.timed)
    print(
        f"reference step (official style), n_g 1, n_s 6, batch {batch}: {ref:.3f} CPU s/iteration"
    )
    points = []
    for n_g, n_s in ((1, 3), (1, 6), (1, 10), (2, 6)):
        d = distiller(n_g, n_s)
        d.train_iteration()  # warm-up
        sec = cpu_seconds(d.train_iteration, a.timed)
        points.append((n_g, n_s, sec))
        print(f"loop n_g {n_g} n_s {n_s}: {sec:.3f} CPU s/iteration ({sec / ref:.2f} x reference)")
    # cost = a + b n_g + c n_s from the points (n_s slope at n_g 1, n_g slope at n_s 6)
    c = (points[2][2] - points[0][2]) / 7
    b = points[3][2] - points[1][2]
    a0 = points[1][2] - b - 6 * c
    print(f"fit: {a0:.3f} + {b:.3f} n_g + {c:.3f} n_s CPU s/iteration")

    d = distiller(1, 6)
    val = make_loader(splits.val, 500, shuffle=False)
    test = make_loader(splits.test, 500, shuffle=False)
    t_eval = cpu_seconds(lambda: (d.evaluate(val), d.evaluate(test)), 3)
    print(f"validation + test accuracy: {t_eval:.3f} CPU s")

    def grid() -> None:
        from torchvision.utils import save_image

        with tempfile.TemporaryDirectory() as tmp:
            save_image(d.sample_images(64), Path(tmp, "g.png"), nrow=8)

    print(f"one image grid: {cpu_seconds(grid, 3):.3f} CPU s")
    ev = spec.get("evaluation", {})
    student = d.student.eval()
    mte = {}
    for key in ("mte_search", "mte_final"):
        m = ev.get(key, {"k": 100, "xi": 1.0, "n_test": 1000})
        # the networks agree on few images at random init: a teacher copy as both A and B
        # agrees everywhere, so N_test images are stepped as in a real study
        mte[key] = cpu_seconds(
            lambda m=m: mean_transition_error(
                student, student, splits.test, n_test=m["n_test"], k=m["k"], xi=m["xi"]
            )
        )
        teacher_fwd = cpu_seconds(
            lambda: d.teacher(torch.randn(256, info.in_channels, info.image_size, info.image_size))
        )
        student_fwd = cpu_seconds(
            lambda: student(torch.randn(256, info.in_channels, info.image_size, info.image_size))
        )
        # B is the teacher in a study: add its extra forward cost per step
        extra = (teacher_fwd - student_fwd) * m["k"] * -(-min(m["n_test"], 360) * 9 // 256)
        mte[key] += max(extra, 0.0)
        print(f"{key} (K {m['k']}, N_test {m['n_test']}): {mte[key]:.2f} CPU s")

    search, final = spec.get("search", {}), spec.get("final", {})
    space = search.get("space", {})
    ns = space.get("n_s", {"low": loop.get("n_s", 10), "high": loop.get("n_s", 10)})
    ng = space.get("n_g", {"low": loop.get("n_g", 1), "high": loop.get("n_g", 1)})
    mean_it = a0 + b * (ng["low"] + ng["high"]) / 2 + c * (ns["low"] + ns["high"]) / 2
    worst_it = a0 + b * ng["high"] + c * ns["high"]
    iters, trials = int(loop.get("iterations", 100)), int(search.get("num_trials", 8))
    grace = int(search.get("scheduler", {}).get("grace_period", iters))
    # ASHA at reduction 3: about 1/3 of the trials pass the first rung, 1/9 finish
    search_its = trials * (grace + (iters - grace) / 3)
    cores = 2
    est_search = (search_its * mean_it + trials / 3 * mte["mte_search"]) / cores
    f_its = int(final.get("iterations", iters))
    seeds = len(final.get("seeds", [0, 1, 2])) * int(final.get("top_k", 1))
    for label, it_cost in (("mean", mean_it), ("worst", worst_it)):
        est_final = seeds * (f_its * it_cost + mte["mte_final"] + t_eval) / cores
        print(
            f"estimate on {cores} idle cores ({label} config of the space): search "
            f"{est_search:.0f} s + final re-runs {est_final:.0f} s (+ teacher and start-up)"
        )


if __name__ == "__main__":
    main()
