"""Correctness audits of a zero-shot run, each failing with a one-line error before it trains.

Data-free distillation fails silently when it is wired wrongly: with the teacher passed in as the
student the adversarial loss is KL(T || T) = 0 and the generator learns nothing, yet the run
completes and reports a (poor) accuracy. The loop runs these checks before its first iteration:

- :func:`check_networks`: teacher and student are different objects sharing no parameter; the
  teacher is in eval mode and frozen (no parameter requires a gradient);
- :func:`arm_gradient_check`: the first generator step's gradient is not zero (checked just
  before the generator's optimiser steps, so nothing has moved yet; a run whose generator never
  steps is not checked);

and :class:`GuardedLoader` wraps a test loader for runs that must not read the test split (search
trials): iterating it raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "AuditError",
    "GuardedLoader",
    "NetworkAuditError",
    "SplitReadError",
    "ZeroGradientError",
    "arm_gradient_check",
    "check_networks",
]


class AuditError(ValueError):
    """A run is wired wrongly; the message is one line naming what and why it matters."""


class NetworkAuditError(AuditError):
    """Teacher and student are the same network or share parameters, or the teacher is live."""


class ZeroGradientError(AuditError):
    """The generator's first step got no gradient: no adversarial signal reaches it."""


class SplitReadError(AuditError):
    """A run that must not read the test split iterated it."""


def _storages(net: nn.Module) -> dict[int, str]:
    """Storage address -> the name of a parameter in it."""
    return {p.untyped_storage().data_ptr(): name for name, p in net.named_parameters()}


def check_networks(teacher: nn.Module, student: nn.Module) -> None:
    """Teacher and student are distinct, share no parameter, and the teacher is eval and frozen."""
    if teacher is student:
        raise NetworkAuditError(
            "the teacher was passed as the student: KL(T || S) would be KL(T || T) = 0 and the "
            "generator would learn nothing"
        )
    shared = _storages(teacher).keys() & _storages(student).keys()
    if shared:
        names = sorted(_storages(student)[k] for k in shared)
        raise NetworkAuditError(
            f"teacher and student share {len(names)} parameter tensor(s) (student's "
            f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): training the student "
            "would change the teacher"
        )
    training = [name or type(teacher).__name__ for name, m in teacher.named_modules() if m.training]
    if training:
        raise NetworkAuditError(
            f"the teacher is in train mode ({training[0]}): call teacher.eval(); its batch-norm "
            "statistics would drift with the pseudo inputs"
        )
    live = [name for name, p in teacher.named_parameters() if p.requires_grad]
    if live:
        raise NetworkAuditError(
            f"the teacher is not frozen: {len(live)} parameter(s) require gradients (e.g. "
            f"{live[0]}); call teacher.requires_grad_(False)"
        )


# Largest gradient entry that still counts as zero. KL(T || T) is 0 only up to rounding: its
# generator gradient had a largest entry of 3e-8 (toy2d) and 7e-9 (digits), against 0.25 and 0.11
# for a fresh student (first generator step, batch 128, the paper's loss;
# `python benchmarks/health_thresholds.py --toy --digits --gradients`).
ZERO_GRADIENT = 1e-6


def arm_gradient_check(
    optimizer: torch.optim.Optimizer, net: nn.Module, atol: float = ZERO_GRADIENT
) -> RemovableHandle:
    """Check ``net``'s gradients just before ``optimizer``'s next step, once.

    Raises :class:`ZeroGradientError` when every gradient entry of ``net`` is missing or at most
    ``atol`` in magnitude. The hook removes itself after the first step it sees (a run never pays
    for it again).
    """
    handle: RemovableHandle | None = None

    def check(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        assert handle is not None
        handle.remove()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        largest = max((float(g.abs().max()) for g in grads if g.numel()), default=0.0)
        if largest <= atol:
            raise ZeroGradientError(
                f"the first generator step got a zero gradient (largest entry {largest:.3g} <= "
                f"{atol:g}): no adversarial signal reaches the generator (is the student a copy "
                "of the teacher, or are the pseudo inputs detached?)"
            )

    handle = optimizer.register_step_pre_hook(check)
    return handle


class GuardedLoader:
    """A loader a run must not read: iterating it raises :class:`SplitReadError`.

    ``len`` and attribute access pass through to the wrapped loader (so code can be handed it
    without reading it); only iteration, which reads the data, is refused.
    """

    def __init__(self, loader: Any, why: str = "this run must not read the test split") -> None:
        self._loader = loader
        self._why = why

    def __iter__(self) -> Iterator[Any]:
        raise SplitReadError(f"test split read refused: {self._why}")

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_loader"], name)
