"""What a run cost: wall seconds, pseudo inputs, forward and backward passes, peak memory.

:class:`CostMeter` counts passes where they really happen, with a forward hook on each network
(teacher, student, generator): a forward call adds one forward pass; when a backward pass reaches
any of that call's outputs, one backward pass is added (a tensor hook on the outputs, fired once
per forward call). A new loss or step variant that calls the networks is counted without any
change here. Every call counts: the generator and student steps, the student phase's targets, the
health batch and validation accuracy at each evaluation. A teacher backward pass computes
gradients for the teacher's *input* only (its weights are frozen); it costs about as much as one
that also computes weight gradients, so it is counted all the same.

Wall seconds run from the moment the run starts training in a process (``start``) and add up over
resumes (the checkpoint carries the total), so a resumed run reports what all its processes spent;
time after the last checkpoint of a process that died is not in it. Device-seconds need the
allocation (CPUs, or the GPU fraction) that only the study layer knows: :func:`device_seconds`.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .names import (
    COST_GENERATOR_BWD,
    COST_GENERATOR_FWD,
    COST_PASSES,
    COST_PEAK_MEM_MIB,
    COST_PSEUDO_IMAGES,
    COST_STUDENT_BWD,
    COST_STUDENT_FWD,
    COST_TEACHER_BWD,
    COST_TEACHER_FWD,
    COST_WALL_S,
)

__all__ = ["CostMeter", "device_kind", "device_seconds", "peak_memory_mib", "reset_peak_memory"]

_PASSES = {
    "teacher": (COST_TEACHER_FWD, COST_TEACHER_BWD),
    "student": (COST_STUDENT_FWD, COST_STUDENT_BWD),
    "generator": (COST_GENERATOR_FWD, COST_GENERATOR_BWD),
}


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    """The tensors in a network's output (a tensor, or nested tuples/lists of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, tuple | list):
        for item in out:
            yield from _tensors(item)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process so far, in MiB: CUDA max allocated on a GPU, else peak RSS.

    Peak RSS is the whole process's (the interpreter, torch and everything else it holds); NaN
    where the platform has no ``resource`` module.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, else KiB


def reset_peak_memory(device: torch.device) -> bool:
    """Start the peak-memory count of this process afresh; False where it cannot be reset.

    A process that runs several runs in turn (a Ray worker reused for the next trial) would
    otherwise report the largest earlier run's peak. CUDA: torch's peak statistics of ``device``.
    CPU, on Linux: writing ``5`` to ``/proc/self/clear_refs`` resets the peak RSS (VmHWM, which
    ``getrusage`` reports as ``ru_maxrss``) to the current RSS; elsewhere it cannot be reset.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # no procfs (macOS, Windows), or a kernel that refuses
        return False
    return True


def device_kind(cpus: float, gpus: float) -> str:
    """``"gpu"`` when the run holds a GPU share, else ``"cpu"``: what its device-seconds count."""
    return "gpu" if gpus > 0 else "cpu"


def device_seconds(wall_s: float, cpus: float = 1.0, gpus: float = 0.0) -> float:
    """GPU-seconds (``gpus`` x wall, a fraction for a shared GPU) when the run holds a GPU share,
    else CPU-seconds (``cpus`` x wall): the device time its allocation kept from others."""
    if wall_s < 0 or cpus < 0 or gpus < 0:
        raise ValueError(
            f"device_seconds: wall_s, cpus and gpus must be >= 0, got {wall_s}, {cpus}, {gpus}"
        )
    return wall_s * (gpus if gpus > 0 else cpus)


class CostMeter:
    """Cumulative cost counters of one run, saved with its checkpoint."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.counts = dict.fromkeys(COST_PASSES, 0)
        self.pseudo_images = 0
        self.wall_before = 0.0  # seconds spent by earlier processes of the run
        self.peak_before = 0.0  # their peak memory (MiB)
        self.started: float | None = None
        self.handles: list[RemovableHandle] = []

    def watch(self, role: str, net: nn.Module) -> None:
        """Count ``net``'s forward and backward passes as the ``role`` network's.

        The hook holds the meter weakly and removes itself once the meter is gone, so a network
        that outlives its run (a teacher handed to several runs in turn) does not keep counting
        for it.
        """
        meter = weakref.ref(self)

        def on_forward(module: nn.Module, args: Any, out: Any) -> None:
            live = meter()
            if live is None:
                handle.remove()
            else:
                live.count(role, out)

        handle = net.register_forward_hook(on_forward)
        self.handles.append(handle)

    def count(self, role: str, out: Any) -> None:
        """One forward call of the ``role`` network with output ``out``; arms its backward count."""
        fwd, bwd = _PASSES[role]
        self.counts[fwd] += 1
        outputs = list(_tensors(out))
        if role == "generator" and outputs:
            self.pseudo_images += int(outputs[0].shape[0])
        grads = [t for t in outputs if t.requires_grad]
        if not grads:
            return
        fired = [False]

        def on_grad(grad: torch.Tensor) -> None:
            if not fired[0]:  # once per forward call, however many of its outputs get gradients
                fired[0] = True
                self.counts[bwd] += 1

        for t in grads:
            t.register_hook(on_grad)

    def close(self) -> None:
        """Stop counting (removes the hooks)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def start(self) -> None:
        """Start the wall clock of this process (once; later calls keep the first start)."""
        if self.started is None:
            self.started = time.perf_counter()

    def wall_s(self) -> float:
        now = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.wall_before + now

    def metrics(self) -> dict[str, float]:
        """The counters now, under their names in :mod:`zskt_ray.names`."""
        return {
            COST_WALL_S: self.wall_s(),
            COST_PSEUDO_IMAGES: float(self.pseudo_images),
            **{name: float(n) for name, n in self.counts.items()},
            COST_PEAK_MEM_MIB: max(self.peak_before, peak_memory_mib(self.device)),
        }

    def state_dict(self) -> dict[str, Any]:
        m = self.metrics()
        return {
            "counts": dict(self.counts),
            "pseudo_images": self.pseudo_images,
            "wall_s": m[COST_WALL_S],
            "peak_mem_mib": m[COST_PEAK_MEM_MIB],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = {**dict.fromkeys(COST_PASSES, 0), **state.get("counts", {})}
        self.pseudo_images = int(state.get("pseudo_images", 0))
        self.wall_before = float(state.get("wall_s", 0.0))
        self.peak_before = float(state.get("peak_mem_mib", 0.0))
        self.started = None  # the clock restarts when this process starts training
