"""The measurements behind the health rule's defaults: healthy runs against provoked failures.

Runs the zero-shot loop (the code path of ``zskt distill``, one torch thread) on toy2d and digits
and prints, for every health quantity the rule judges, its minimum over all reports of the healthy
runs and its values in each provoked failure, and which runs the default rule flagged:

- healthy toy2d: 32 corners of ``studies/toy2d.yaml``'s search space (n_g 1/3, n_s 1/8, z_dim 2/32,
  lr_s 0.001/0.02, lr_g 0.0005/0.01) x ``--seeds`` x 60 (search) and 150 (final) iterations;
- healthy digits: 5 points of ``studies/digits.yaml``'s search space at its 60-iteration budget
  (its final re-runs are ``zskt distill`` by hand; the README gives the command);
- provoked: a generator that does not train (n_g 0; by design, so the loop's rule has no stall
  conditions for it and leaves it unflagged, while its metrics show what they would see), one
  with a learning rate too small to move it
  (1e-8; on toy2d also 1e-6), one forced to a constant output (last BN scale zeroed and frozen),
  and a student that is a copy of the teacher (toy2d; the gradient audit, which refuses it before
  training, is skipped here to watch what the rule would see).

``--gradients`` prints instead the largest entry of the first generator step's gradient with a
fresh student and with the teacher as the student (KL(T || T), zero up to rounding), the two
sides of the gradient audit's threshold (``zskt_ray.audit.ZERO_GRADIENT``).

Teachers come from the store (``$ZSKT_HOME/teachers``; ``zskt teacher train --dataset toy2d --arch
mlp-3x64`` and ``--dataset digits --arch wrn-16-2`` make them). Runs that diverge are listed, not
counted.

    python benchmarks/health_thresholds.py --toy --digits --seeds 0,1 --json health.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zskt_ray import names
from zskt_ray.config import DistillConfig
from zskt_ray.data import load_dataset, make_loader
from zskt_ray.loop import DivergenceError, ZeroShotDistiller
from zskt_ray.paths import default_teacher_path
from zskt_ray.teacher import load_teacher

# The quantities the rule judges (move: per iteration at the initial learning rate).
QUANTITIES = (
    names.HEALTH_CLASSES,
    names.HEALTH_CLASS_ENTROPY,
    names.HEALTH_DIV_INPUT,
    names.HEALTH_DIV_FEATURE,
    "move_rate",
    names.HEALTH_ADV_KL,
)


def base(dataset: str, **kw: Any) -> DistillConfig:
    """The study's fixed loop settings for ``dataset``, with ``kw`` on top."""
    if dataset == "toy2d":
        values: dict[str, Any] = dict(
            dataset="toy2d",
            teacher_arch="mlp-3x64",
            student_arch="mlp-2x16",
            beta=0.0,
            iterations=60,
            eval_every=20,
            eval_batch_size=1000,
            batch_size=128,
        )
    else:
        values = dict(
            dataset="digits",
            teacher_arch="wrn-16-2",
            student_arch="wrn-16-1",
            iterations=60,
            eval_every=20,
            batch_size=128,
            n_g=1,
        )
    values.update(device="cpu", **kw)
    return DistillConfig(**values)


_SPLITS: dict[str, Any] = {}


def run(cfg: DistillConfig, mutate: Callable[[ZeroShotDistiller], None] | None = None) -> dict:
    """One run: its health quantities at every report, the verdict, or the divergence."""
    splits = _SPLITS.setdefault(cfg.dataset, load_dataset(cfg.dataset))
    path = default_teacher_path(cfg.dataset, cfg.teacher_arch)
    teacher, _ = load_teacher(path, "cpu", cfg.dataset, cfg.teacher_arch)
    val = make_loader(splits.val, cfg.eval_batch_size, shuffle=False)
    d = ZeroShotDistiller(cfg, teacher, splits.info, val)
    if mutate is not None:
        mutate(d)
    reports: list[dict[str, float]] = []
    try:
        for r in d.run():
            values = {q: r.metrics[q] for q in QUANTITIES if q in r.metrics}
            values["move_rate"] = d.health.move_rate  # what min_generator_move bounds
            reports.append({**values, names.VAL_ACC: r.metrics[names.VAL_ACC]})
    except DivergenceError as e:
        return {"reports": reports, "diverged": str(e)}
    flag = d.health.flag
    return {"reports": reports, "flag": flag.reason if flag else None}


def constant_output(d: ZeroShotDistiller) -> None:
    last = [m for m in d.generator.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    with torch.no_grad():
        last[-1].weight.zero_()
        last[-1].bias.fill_(0.5)
    last[-1].weight.requires_grad_(False)


def student_copies_teacher(d: ZeroShotDistiller) -> None:
    d.student = copy.deepcopy(d.teacher).train().requires_grad_(True)
    d.opt_s = torch.optim.Adam(d.student.parameters(), lr=d.cfg.lr_s)
    d.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(d.opt_s, T_max=d.cfg.iterations)
    d._gradient_checked = True  # measure what the rule sees; the audit would refuse the run


def healthy_toy(seeds: list[int]) -> dict[str, DistillConfig]:
    out = {}
    for n_g, n_s, z, lr_s, lr_g, seed, n in itertools.product(
        (1, 3), (1, 8), (2, 32), (0.001, 0.02), (0.0005, 0.01), seeds, (60, 150)
    ):
        label = f"toy2d n_g {n_g} n_s {n_s} z_dim {z} lr_s {lr_s} lr_g {lr_g} seed {seed} N {n}"
        out[label] = base(
            "toy2d", n_g=n_g, n_s=n_s, z_dim=z, lr_s=lr_s, lr_g=lr_g, seed=seed, iterations=n
        )
    return out


def healthy_digits() -> dict[str, DistillConfig]:
    points = [(0, 32, 0.001, 6), (1000, 100, 0.006, 7), (250, 64, 0.0025, 6)]
    points += [(50, 32, 0.006, 7), (1000, 32, 0.001, 6)]
    return {
        f"digits beta {b} z_dim {z} lr_s {lr} n_s {ns}": base(
            "digits", beta=float(b), z_dim=z, lr_s=lr, n_s=ns
        )
        for b, z, lr, ns in points
    }


def provoked(dataset: str) -> dict[str, tuple[DistillConfig, Any]]:
    ns = {"n_s": 6} if dataset == "digits" else {}
    out: dict[str, tuple[DistillConfig, Any]] = {
        f"{dataset} n_g 0": (base(dataset, n_g=0, **ns), None),
        f"{dataset} lr_g 1e-8": (base(dataset, lr_g=1e-8, **ns), None),
        f"{dataset} constant generator": (base(dataset, **ns), constant_output),
    }
    if dataset == "toy2d":
        out["toy2d lr_g 1e-6 N 150"] = (base(dataset, lr_g=1e-6, iterations=150), None)
        out["toy2d student copies teacher N 150"] = (
            base(dataset, student_arch="mlp-3x64", iterations=150),
            student_copies_teacher,
        )
    return out


def first_gradient(dataset: str, teacher_as_student: bool) -> float:
    """Largest entry of the generator's gradient in a run's first generator step (batch 128)."""
    cfg = base(dataset)
    splits = _SPLITS.setdefault(cfg.dataset, load_dataset(cfg.dataset))
    path = default_teacher_path(cfg.dataset, cfg.teacher_arch)
    teacher, _ = load_teacher(path, "cpu", cfg.dataset, cfg.teacher_arch)
    d = ZeroShotDistiller(cfg, teacher, splits.info)
    student = d.teacher if teacher_as_student else d.student
    x = d.generator(d.sample_z())
    loss = -d._kl(student(x)[0], d.teacher(x)[0])
    loss.backward()
    return max(float(q.grad.abs().max()) for q in d.generator.parameters())


def _fmt(v: float) -> str:
    return f"{v:.3g}" if not math.isnan(v) else "nan"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--toy", action="store_true", help="toy2d runs")
    p.add_argument("--digits", action="store_true", help="digits runs")
    p.add_argument("--seeds", default="0,1", help="seeds of the toy2d grid")
    p.add_argument("--json", help="also write every run's reports here")
    p.add_argument("--gradients", action="store_true", help="the gradient audit's two sides")
    a = p.parse_args()
    torch.set_num_threads(1)
    datasets = [d for d, on in (("toy2d", a.toy), ("digits", a.digits)) if on]
    if a.gradients:
        for dataset in datasets:
            fresh, same = (first_gradient(dataset, t) for t in (False, True))
            print(
                f"{dataset}: largest gradient entry of the first generator step: fresh student "
                f"{fresh:.3g}, the teacher as the student {same:.3g}"
            )
        return
    results: dict[str, dict] = {}
    for dataset in datasets:
        if dataset == "toy2d":
            grid = healthy_toy([int(s) for s in a.seeds.split(",")])
        else:
            grid = healthy_digits()
        healthy = {label: run(cfg) for label, cfg in grid.items()}
        ok = {k: v for k, v in healthy.items() if "diverged" not in v}
        print(f"\n{dataset}: {len(ok)} healthy runs ({len(healthy) - len(ok)} diverged)")
        for label, res in healthy.items():
            if "diverged" in res:
                print(f"  diverged: {label}: {res['diverged']}")
        flagged = [label for label, res in ok.items() if res["flag"]]
        print(f"  flagged by the default rule: {len(flagged)} {flagged}")
        for q in QUANTITIES:
            values = [r[q] for res in ok.values() for r in res["reports"] if not math.isnan(r[q])]
            print(f"  {q:<22} healthy minimum {_fmt(min(values))}")
        for label, (cfg, mutate) in provoked(dataset).items():
            res = run(cfg, mutate)
            healthy[label] = res
            print(f"  provoked {label}: flag {res.get('flag') or res.get('diverged')}")
            for q in QUANTITIES:
                print(f"    {q:<22} {', '.join(_fmt(r[q]) for r in res['reports'])}")
        results.update(healthy)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
