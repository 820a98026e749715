"""Fault injection for search trials: failures provoked for real, through a whole study.

Tests (and ``zskt study run --inject-nan``) pass ``run_study(..., fault=F)``; the runner hands
``F`` to the search trials only. ``F`` is one mapping or a list of them::

    {"kind": "nan", "param": "n_s", "value": 1, "iteration": 3}

A fault applies to the trials whose loop setting ``param`` equals ``value`` (to every search trial
when ``param`` is left out). Its ``kind`` (default ``nan``) says what is done to them:

- ``nan``: the student's weights are set to NaN at ``iteration``; the loop's own divergence check
  then fails the trial (no retry: it would diverge again);
- ``constant_generator``: before training, the generator's last batch norm gets a scale of 0
  (frozen) and a bias of 0.5, so every pseudo input is the same while the bias still gets a
  gradient; the health rule flags the trial *collapsed*;
- ``teacher_as_student``: before training, the distiller's student is the teacher itself (the
  bug of a public code base: KL(T || T) = 0); the network audit refuses it before any step;
- ``read_test``: the trial's final evaluation reads the test loader it is given; a search trial's
  is a :class:`~zskt_ray.audit.GuardedLoader`, which refuses with a one-line error.

Nothing here runs unless a fault is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..config import DistillConfig
from ..loop import ZeroShotDistiller

Fault = Mapping[str, Any]
KINDS = ("nan", "constant_generator", "teacher_as_student", "read_test")


def _faults(fault: Fault | Sequence[Fault] | None) -> list[Fault]:
    if fault is None:
        return []
    faults = [fault] if isinstance(fault, Mapping) else list(fault)
    unknown = [f.get("kind") for f in faults if f.get("kind", "nan") not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind {unknown[0]!r} (known: {', '.join(KINDS)})")
    return faults


def applies(fault: Fault | Sequence[Fault] | None, cfg: DistillConfig, kind: str) -> Fault | None:
    """The fault of ``kind`` that applies to a trial of config ``cfg`` (None: none does)."""
    for f in _faults(fault):
        if f.get("kind", "nan") != kind:
            continue
        if "param" not in f or getattr(cfg, f["param"]) == f["value"]:
            return f
    return None


def nan_iteration(fault: Fault | Sequence[Fault] | None, cfg: DistillConfig) -> int | None:
    """The iteration at which this trial's student is poisoned with NaN (None: never)."""
    f = applies(fault, cfg, "nan")
    return None if f is None else int(f["iteration"])


def poison(distiller: ZeroShotDistiller) -> None:
    """NaN into the student's first weight tensor: the loop's divergence check fires next."""
    with torch.no_grad():
        next(distiller.student.parameters()).fill_(float("nan"))


def before_training(
    fault: Fault | Sequence[Fault] | None, cfg: DistillConfig, distiller: ZeroShotDistiller
) -> None:
    """Apply this trial's faults that act on the networks before the first iteration."""
    if applies(fault, cfg, "constant_generator") is not None:
        constant_output(distiller.generator)
    if applies(fault, cfg, "teacher_as_student") is not None:
        distiller.student = distiller.teacher


def constant_output(generator: nn.Module) -> None:
    """Zero and freeze the scale of the generator's last batch norm: every output becomes that
    layer's bias (set to 0.5, not 0, so that the teacher's ReLUs pass a gradient to it)."""
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    last = norms[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.5)
    last.weight.requires_grad_(False)


def read_test(
    fault: Fault | Sequence[Fault] | None,
    cfg: DistillConfig,
    distiller: ZeroShotDistiller,
    test_loader: Any,
) -> None:
    """Read ``test_loader`` as a careless evaluation would, when this trial's fault says so."""
    if applies(fault, cfg, "read_test") is not None:
        distiller.evaluate(test_loader)
