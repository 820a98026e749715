"""The pilot behind the BN-prior weight of ``studies/objectives_digits.yaml``: how large is the
batch-norm statistics term against the adversarial KL, in what it does to the generator?

For each seed (by default 100-104, none of the study's seeds) the loop is built at the paper's
defaults (digits, WRN-16-2 -> WRN-16-1) and, after ``--warmup`` ordinary ZSKT iterations, the
gradient of each generator term on one batch of z is taken with respect to the generator's
parameters: the adversarial KL(T || S) and the unweighted BN term R_bn (DeepInversion's sum over
the teacher's batch-norm layers). It prints both values, both gradient norms and their ratio
||grad KL|| / ||grad R_bn||: the weight at which the two terms pull on the generator equally hard.
No test (or validation) data is read: the weight is chosen before any result of the study exists.

    python benchmarks/bn_prior_pilot.py --seeds 100,101,102,103,104 --warmup 0
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from zskt_ray.config import DistillConfig
from zskt_ray.data import dataset_info
from zskt_ray.loop import ZeroShotDistiller
from zskt_ray.losses import BatchNormStatistics, sum_in_order
from zskt_ray.paths import default_teacher_path
from zskt_ray.teacher import load_teacher


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    """The L2 norm of d loss / d params over all the generator's parameters."""
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


def measure(seed: int, warmup: int) -> dict[str, float]:
    cfg = DistillConfig(
        dataset="digits",
        teacher_arch="wrn-16-2",
        student_arch="wrn-16-1",
        iterations=max(warmup, 1),
        seed=seed,
    )
    teacher, _ = load_teacher(default_teacher_path("digits", "wrn-16-2"), "cpu", "digits")
    d = ZeroShotDistiller(cfg, teacher, dataset_info("digits"), None, "cpu", health=None)
    for _ in range(warmup):
        d.train_iteration()
    bn = BatchNormStatistics(d.teacher)
    z = torch.randn(cfg.batch_size, cfg.z_dim, generator=d.noise)
    params = [p for p in d.generator.parameters() if p.requires_grad]
    with bn.recording() as terms:
        x = d.generator(z)
        t_logits, _ = d.teacher(x)
    s_logits = d.student(x)[0]
    kl = d._kl(s_logits.float(), t_logits.float())
    r_bn = sum_in_order(terms)
    g_kl, g_bn = grad_norm(kl, params), grad_norm(r_bn, params)
    return {
        "kl": float(kl.detach()),
        "r_bn": float(r_bn.detach()),
        "grad_kl": g_kl,
        "grad_bn": g_bn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="100,101,102,103,104")
    parser.add_argument("--warmup", type=int, default=0, help="ZSKT iterations before measuring")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = []
    for seed in (int(s) for s in args.seeds.split(",")):
        m = measure(seed, args.warmup)
        ratios.append(m["grad_kl"] / m["grad_bn"])
        print(
            f"seed {seed}: KL {m['kl']:.4g}  R_bn {m['r_bn']:.4g}  |grad KL| {m['grad_kl']:.4g}"
            f"  |grad R_bn| {m['grad_bn']:.4g}  ratio {ratios[-1]:.4g}"
        )
    print(
        f"median ratio |grad KL| / |grad R_bn| after {args.warmup} iterations: "
        f"{statistics.median(ratios):.4g} (min {min(ratios):.4g}, max {max(ratios):.4g})"
    )


if __name__ == "__main__":
    main()
