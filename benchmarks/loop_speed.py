"""Inner steps per second of the zero-shot loop vs. a reference step written the official way.

The official implementation (polo5/ZeroShotKnowledgeTransfer) draws ``x = G(z)`` *with gradients*
for every one of the ``n_g + n_s`` inner steps of an iteration, so each student step also runs a
generator forward and a generator backward whose gradients are thrown away. Our loop draws the
student phase's images once under ``no_grad``. Both compute the same updates; this script times
both, on the CPU and (where present) on CUDA, in one run, and prints the ratio.

    python benchmarks/loop_speed.py                    # WRN-16-2 -> WRN-16-1, 32x32x3, batch 64, n_s 10
    python benchmarks/loop_speed.py --image-size 16 --channels 1 --batch-size 128

An *inner step* is one generator or student step: an iteration has ``n_g + n_s`` of them.

``--health-overhead`` times instead what the run-health metrics (``zskt_ray/health.py``) and the
cost counters' hooks (``zskt_ray/cost.py``) add to the loop with an evaluation every
``--eval-every`` iterations, in CPU seconds (``time.process_time``: a busy machine disturbs it far
less than wall time; use ``--threads 1``). The variants, *bare* (no health metrics, no counting
hooks), *cost* (hooks only) and *health* (both: the loop's default), run ``--repeats`` times in
turn, in a rotated order, each over ``--iterations`` iterations of ``ZeroShotDistiller.run``; it
also times the health measurement alone, which gives the overhead without the machine's noise:

    python benchmarks/loop_speed.py --health-overhead --threads 1 --image-size 8 --channels 1 \
        --batch-size 128 --n-s 7 --eval-every 20 --iterations 40 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from zskt_ray.config import DistillConfig
from zskt_ray.data import DatasetInfo
from zskt_ray.health import HealthRule
from zskt_ray.loop import ZeroShotDistiller, memory_format
from zskt_ray.losses import attention_losses
from zskt_ray.models import build_model


def reference_iteration(d: ZeroShotDistiller) -> None:
    """One iteration computed the way the official code does (same updates, wasted work kept)."""
    cfg = d.cfg
    z = d.sample_z()
    teacher_logits = teacher_feats = None
    for step in range(cfg.n_g + cfg.n_s):
        x = d.generator(z)  # regenerated with gradients at every inner step
        if step < cfg.n_g:
            s_logits, _ = d.student(x)
            t_logits, _ = d.teacher(x)
            loss = -d._kl(s_logits, t_logits)
            d.opt_g.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(d.generator.parameters(), cfg.grad_clip)
            d.opt_g.step()
            continue
        if step == cfg.n_g:
            with torch.no_grad():
                teacher_logits, teacher_feats = d.teacher(x)
        s_logits, s_feats = d.student(x)
        loss = d._kl(s_logits, teacher_logits) + cfg.beta * attention_losses(s_feats, teacher_feats)
        d.opt_s.zero_grad()
        loss.backward()  # also back-propagates into the generator: thrown away
        nn.utils.clip_grad_norm_(d.student.parameters(), cfg.grad_clip)
        d.opt_s.step()
    d.sched_s.step()
    d.sched_g.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(step, d: ZeroShotDistiller, iterations: int, warmup: int) -> float:
    """Seconds per iteration (median of ``iterations`` timed calls after ``warmup``)."""
    for _ in range(warmup):
        step(d)
    _sync(d.device)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        step(d)
        _sync(d.device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _bench_distiller(cfg: DistillConfig, info: DatasetInfo, variant: str) -> ZeroShotDistiller:
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher_arch, info.num_classes, info.in_channels)
    d = ZeroShotDistiller(cfg, teacher, info, health=HealthRule() if variant == "health" else None)
    if variant == "bare":
        d.cost.close()
    return d


def health_overhead(a: argparse.Namespace, info: DatasetInfo, cfg: DistillConfig) -> list[dict]:
    """CPU seconds per iteration of run() in each variant, interleaved; health measurement alone."""
    variants = ("bare", "cost", "health")
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(a.repeats):
        order = variants[r % 3 :] + variants[: r % 3]  # rotated: drift hits every variant alike
        for variant in order:
            d = _bench_distiller(cfg, info, variant)
            for _ in range(a.warmup):
                d.train_iteration()
            d.iteration = 0
            t0 = time.process_time()
            for _ in d.run(until=a.iterations):
                pass
            cpu[variant].append((time.process_time() - t0) / a.iterations)
        print(f"repeat {r + 1}: " + ", ".join(f"{v} {cpu[v][-1]:.4f}" for v in variants))
    d = _bench_distiller(cfg, info, "health")
    d.health.start()
    t0 = time.process_time()
    for i in range(a.measure_repeats):
        d.health.measure(i + 1, {"loss_g": -0.1, "lr_g": cfg.lr_g})
    measure = (time.process_time() - t0) / a.measure_repeats
    rows = []
    base = statistics.median(cpu["bare"])
    for v in variants:
        med = statistics.median(cpu[v])
        rows.append({"variant": v, "cpu_s_per_iter": cpu[v], "median": med, "vs_bare": med / base})
        print(
            f"{v:<7} median {med:.4f} CPU s/iteration ({med / base - 1:+.2%} vs bare); "
            f"runs {', '.join(f'{x:.4f}' for x in cpu[v])}"
        )
    share = measure / (a.eval_every * base)
    print(
        f"health measurement alone: {measure * 1000:.1f} CPU ms per evaluation = {share:.2%} of "
        f"{a.eval_every} bare iterations"
    )
    rows.append({"variant": "measure", "cpu_s_per_eval": measure, "share": share})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", default="wrn-16-2")
    p.add_argument("--student", default="wrn-16-1")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-g", type=int, default=1)
    p.add_argument("--n-s", type=int, default=10)
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)"
    )
    p.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when absent")
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--health-overhead",
        action="store_true",
        help="time the loop with and without health metrics and cost hooks (see above)",
    )
    p.add_argument("--eval-every", type=int, default=20, help="with --health-overhead")
    p.add_argument("--repeats", type=int, default=5, help="with --health-overhead")
    p.add_argument(
        "--measure-repeats", type=int, default=50, help="health measurements timed alone"
    )
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    info = DatasetInfo(
        "bench", 10, a.channels, a.image_size, (0.0,) * a.channels, (1.0,) * a.channels
    )
    cfg = DistillConfig(
        dataset="bench",
        teacher_arch=a.teacher,
        student_arch=a.student,
        n_g=a.n_g,
        n_s=a.n_s,
        batch_size=a.batch_size,
        iterations=10_000,
        eval_every=a.eval_every,
        device="cpu",
    )
    if a.health_overhead:
        print(
            f"{a.teacher} -> {a.student}, {a.channels}x{a.image_size}x{a.image_size}, batch "
            f"{a.batch_size}, n_g {a.n_g}, n_s {a.n_s}, eval every {a.eval_every}; "
            f"{torch.get_num_threads()} CPU threads; CPU s per iteration of run()"
        )
        rows = health_overhead(a, info, cfg)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"args": vars(a), "rows": rows}, fh, indent=2)
        return
    inner = a.n_g + a.n_s
    rows = []
    print(
        f"{a.teacher} -> {a.student}, {a.channels}x{a.image_size}x{a.image_size}, batch {a.batch_size}, "
        f"n_g {a.n_g}, n_s {a.n_s}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(
        f"{'device':<8}{'variant':<15}{'s/iter':>9}{'inner steps/s':>15}{'images/s':>11}{'speed-up':>10}"
    )
    for name in a.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("cuda    (not available on this machine: skipped)")
            continue
        device = torch.device(name)
        result = {}
        # Both main variants use the loop's layout (NHWC on the CPU); "zskt-ray NCHW" shows what
        # that layout alone is worth.
        for variant, step, contiguous in (
            ("reference", reference_iteration, False),
            ("zskt-ray", ZeroShotDistiller.train_iteration, False),
            ("zskt-ray NCHW", ZeroShotDistiller.train_iteration, True),
        ):
            if contiguous and memory_format(device) == torch.contiguous_format:
                continue
            torch.manual_seed(0)
            teacher = build_model(a.teacher, 10, a.channels)
            d = ZeroShotDistiller(cfg, teacher, info, device=device)
            if contiguous:
                for net in (d.teacher, d.student, d.generator):
                    net.to(memory_format=torch.contiguous_format)
            result[variant] = time_iterations(step, d, a.iterations, a.warmup)
        for variant, sec in result.items():
            speedup = result["reference"] / sec
            row = {
                "device": name,
                "variant": variant,
                "sec_per_iter": sec,
                "inner_steps_per_s": inner / sec,
                "images_per_s": inner * a.batch_size / sec,
                "speedup_vs_reference": speedup,
            }
            rows.append(row)
            print(
                f"{name:<8}{variant:<15}{sec:>9.3f}{inner / sec:>15.2f}{inner * a.batch_size / sec:>11.0f}{speedup:>9.2f}x"
            )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "args": vars(a),
                    "device_name": torch.cuda.get_device_name()
                    if torch.cuda.is_available()
                    else None,
                    "rows": rows,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
