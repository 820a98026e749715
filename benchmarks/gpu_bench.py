"""The GPU benchmark of the zero-shot loop, in one run and one table (``benchmarks/gpu.sh``).

Three parts, all on the paper's pair (WRN-40-2 teacher -> WRN-16-1 student, 32x32x3, batch 128,
n_g 1, n_s 10) unless ``--small``:

1. loop: seconds per iteration of ``ZeroShotDistiller.train_iteration`` for every precision
   (fp32 / tf32 / bf16 / fp16) and both memory formats (NCHW, NHWC), next to the official-style
   reference step (fp32, NCHW, ``x = G(z)`` regenerated with gradients at every inner step), with the
   peak memory of each variant and the host syncs of one iteration (CUDA; the loop has one);
2. pack: 1, 2 and 4 trials run as concurrent processes on one device (``gpus_per_trial`` 1, 0.5,
   0.25): every process warms up, waits for the others, then runs for the same wall-clock window;
   aggregate iterations/s and each process's peak memory;
3. mte: batched transition curves against the one-image-at-a-time form (K = 100 steps, xi = 1),
   with the largest difference between the two on the pairs both computed.

    bash benchmarks/gpu.sh                 # on a GPU machine: the full sizes, about 5 minutes
    bash benchmarks/gpu.sh --cpu           # tiny sizes on the CPU, well under a minute (CI)

Networks have random weights and images are random: speed does not depend on what was learnt.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_speed import reference_iteration  # noqa: E402  (the official-style step, shared)

from zskt_ray.config import PRECISIONS, DistillConfig  # noqa: E402
from zskt_ray.data import DatasetInfo  # noqa: E402
from zskt_ray.loop import ZeroShotDistiller  # noqa: E402
from zskt_ray.models import build_model  # noqa: E402
from zskt_ray.mte import transition_curves, transition_curves_per_image  # noqa: E402

LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke run."""

    teacher: str
    student: str
    image_size: int
    channels: int
    batch_size: int
    n_s: int
    warmup: int
    timed: int
    packs: tuple[int, ...]
    pack_seconds: float
    mte_k: int
    mte_batched_images: int
    mte_per_image_images: int

    @staticmethod
    def for_run(small: bool, device: torch.device) -> Sizes:
        if not small:
            return Sizes(
                "wrn-40-2", "wrn-16-1", 32, 3, 128, 10, 3, 10, (1, 2, 4), 20.0, 100, 200, 1
            )
        packs = (1, 2, 4) if device.type == "cuda" else (1, 2)
        return Sizes("wrn-10-1", "wrn-10-1", 8, 1, 8, 2, 1, 1, packs, 1.0, 5, 8, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    """Peak allocated device memory (CUDA) or the process's peak resident memory (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _distiller(sz: Sizes, device: torch.device, precision: str, layout: str | None) -> Any:
    info = DatasetInfo(
        "bench", 10, sz.channels, sz.image_size, (0.0,) * sz.channels, (1.0,) * sz.channels
    )
    cfg = DistillConfig(
        dataset="bench",
        teacher_arch=sz.teacher,
        student_arch=sz.student,
        n_g=1,
        n_s=sz.n_s,
        batch_size=sz.batch_size,
        iterations=100_000,
        precision=precision,
    )
    torch.manual_seed(0)
    d = ZeroShotDistiller(cfg, build_model(sz.teacher, 10, sz.channels), info, device=device)
    if layout is not None:
        for net in (d.teacher, d.student, d.generator):
            net.to(memory_format=LAYOUTS[layout])
    return d


def _host_syncs(d: ZeroShotDistiller) -> int | None:
    """Synchronising CUDA calls in one iteration (``torch.cuda.set_sync_debug_mode``); None on CPU."""
    if d.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            d.train_iteration()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def time_variant(step: Any, d: Any, sz: Sizes) -> float:
    """Median seconds per iteration after warm-up (cuDNN autotuning happens in the warm-up)."""
    for _ in range(sz.warmup):
        step(d)
    _sync(d.device)
    times = []
    for _ in range(sz.timed):
        t0 = time.perf_counter()
        step(d)
        _sync(d.device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def part_loop(sz: Sizes, device: torch.device, rows: list[dict[str, Any]]) -> None:
    """Every precision and layout of the loop against the official-style reference step."""
    variants: list[tuple[str, str, str | None, Any]] = [
        ("reference", "fp32", "NCHW", reference_iteration)
    ]
    for precision in PRECISIONS:
        for layout in LAYOUTS:
            variants.append(("zskt-ray", precision, layout, ZeroShotDistiller.train_iteration))
    ref = None
    for name, precision, layout, step in variants:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            d = _distiller(sz, device, precision, layout)
            sec = time_variant(step, d, sz)
            syncs = _host_syncs(d) if step is ZeroShotDistiller.train_iteration else None
            note = f"host syncs/iter {syncs}" if syncs is not None else ""
        except Exception as e:  # one broken variant must not hide the others
            rows.append(_row("loop", f"{name} {precision} {layout}", None, "", f"failed: {e}"))
            continue
        ref = sec if name == "reference" else ref
        rows.append(
            _row(
                "loop",
                f"{name} {precision} {layout}",
                1.0 / sec,
                "it/s",
                note,
                speedup=(ref / sec) if ref else None,
                mem=_peak_bytes(device) if device.type == "cuda" else None,  # RSS only grows
                extra={"sec_per_iter": sec, "inner_steps_per_s": (1 + sz.n_s) / sec},
            )
        )
        del d


def _worker(args: argparse.Namespace) -> None:
    """One packed trial: warm up, say READY, wait for GO, count iterations in the window."""
    device = torch.device(args.device)
    sz = Sizes.for_run(args.small, device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
    d = _distiller(sz, device, args.precision, None)
    for _ in range(sz.warmup):
        d.train_iteration()
    _sync(device)
    print("READY", flush=True)
    sys.stdin.readline()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < sz.pack_seconds:
        d.train_iteration()  # ends with the loop's one host sync, so the count is honest
        n += 1
    elapsed = time.perf_counter() - t0
    print(json.dumps({"iterations": n, "seconds": elapsed, "peak_bytes": _peak_bytes(device)}))


def part_pack(
    sz: Sizes, device: torch.device, precision: str, small: bool, rows: list[dict[str, Any]]
) -> None:
    """1, 2, 4 concurrent trial processes on one device, timed over the same window."""
    single = None
    for n in sz.packs:
        cmd = [sys.executable, __file__, "--worker", "--device", str(device)]
        cmd += ["--precision", precision] + (["--small"] if small else [])
        procs = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(n)
        ]
        try:
            for p in procs:
                line = p.stdout.readline()  # type: ignore[union-attr]
                if line.strip() != "READY":
                    raise RuntimeError(f"a packed worker did not start (said {line!r})")
            for p in procs:
                p.stdin.write("go\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            results = []
            for p in procs:
                out, _ = p.communicate(timeout=sz.pack_seconds * 10 + 120)
                results.append(json.loads(out.strip().splitlines()[-1]))
        except Exception as e:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            rows.append(_row("pack", f"{n} trial(s) {precision}", None, "", f"failed: {e}"))
            continue
        total = sum(r["iterations"] / r["seconds"] for r in results)
        single = total if n == 1 else single
        share = {1: "1", 2: "0.5", 4: "0.25"}.get(n, f"1/{n}")
        rows.append(
            _row(
                "pack",
                f"{n} trial(s), gpus_per_trial {share}, {precision}",
                total,
                "it/s total",
                f"per trial {total / n:.2f} it/s",
                speedup=(total / single) if single else None,
                mem=max(r["peak_bytes"] for r in results),
            )
        )


def part_mte(sz: Sizes, device: torch.device, rows: list[dict[str, Any]]) -> None:
    """Batched MTE curves vs. one image and one target at a time, on the same first images."""
    torch.manual_seed(1)
    student = build_model(sz.student, 10, sz.channels).to(device).eval()
    teacher = build_model(sz.teacher, 10, sz.channels).to(device).eval()
    g = torch.Generator().manual_seed(0)
    n = sz.mte_batched_images
    images = torch.randn(n, sz.channels, sz.image_size, sz.image_size, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    kw = {"k": sz.mte_k, "xi": 1.0, "device": device}
    transition_curves(student, teacher, images[:1], labels[:1], **kw)  # warm-up (cuDNN tuning)
    _sync(device)
    t0 = time.perf_counter()
    ca, cb, _ = transition_curves(student, teacher, images, labels, batch_size=256, **kw)
    _sync(device)
    t_batched = time.perf_counter() - t0
    m = sz.mte_per_image_images
    t0 = time.perf_counter()
    pa, pb, _ = transition_curves_per_image(student, teacher, images[:m], labels[:m], **kw)
    _sync(device)
    t_single = time.perf_counter() - t0
    pairs_b, pairs_s = n * 9 / t_batched, m * 9 / t_single
    diff = max(abs(ca[:m] - pa).max(), abs(cb[:m] - pb).max())
    rows.append(
        _row(
            "mte", f"per image, {m} image(s), K {sz.mte_k}", pairs_s, "pairs/s", f"{t_single:.1f} s"
        )
    )
    rows.append(
        _row(
            "mte",
            f"batched, {n} images, K {sz.mte_k}",
            pairs_b,
            "pairs/s",
            f"{t_batched:.1f} s; max |diff| {diff:.1e}",
            speedup=pairs_b / pairs_s,
            extra={"max_abs_diff": float(diff)},
        )
    )


def _row(
    part: str,
    variant: str,
    value: float | None,
    unit: str,
    note: str,
    speedup: float | None = None,
    mem: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "part": part,
        "variant": variant,
        "value": value,
        "unit": unit,
        "speedup": speedup,
        "peak_mib": None if mem is None else mem / 2**20,
        "note": note,
        **(extra or {}),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """One table: part, variant, figure, ratio to the part's first row, peak memory, note."""
    print(f"{'part':<6}{'variant':<44}{'value':>10} {'unit':<11}{'x':>7}{'peak MiB':>10}  note")
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}"
        mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(
            f"{r['part']:<6}{r['variant']:<44}{value:>10} {r['unit']:<11}{speed:>7}{mem:>10}  {r['note']}"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    p.add_argument("--small", action="store_true", help="tiny sizes (implied on the CPU)")
    p.add_argument("--parts", default="loop,pack,mte", help="comma list of loop, pack, mte")
    p.add_argument("--pack-precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(a)
        return
    cuda = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda" if cuda else "cpu")
    small = a.small or not cuda
    if device.type == "cpu":
        torch.set_num_threads(1)  # like a study trial; also immune to a busy neighbour's cores
    # fp16: the scaler skips its first steps, and torch warns that the scheduler stepped first.
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
    sz = Sizes.for_run(small, device)
    where = torch.cuda.get_device_name(device) if cuda else "no GPU: CPU figures at small sizes"
    print(
        f"zskt-ray benchmark on {device} ({where}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"{sz.teacher} -> {sz.student}, {sz.channels}x{sz.image_size}x{sz.image_size}, "
        f"batch {sz.batch_size}, n_g 1, n_s {sz.n_s}; median of {sz.timed} iteration(s) after "
        f"{sz.warmup} warm-up; x = ratio to the part's first row"
    )
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    parts = a.parts.split(",")
    if "loop" in parts:
        part_loop(sz, device, rows)
    if "pack" in parts:
        part_pack(sz, device, a.pack_precision, small, rows)
    if "mte" in parts:
        part_mte(sz, device, rows)
    print_table(rows)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": where, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
