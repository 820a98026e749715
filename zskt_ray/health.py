"""Health of a zero-shot run: is the generator still making varied inputs, and still moving?

An adversarial generator/student loop fails in ways an accuracy curve shows late or never: the
generator collapses to one input or one class, or stops moving (no adversarial signal reaches it).
At each evaluation :class:`HealthMonitor` measures, on a *fixed* noise batch drawn from its own
``torch.Generator`` (the run's noise RNG is never touched) and with the teacher only (eval mode,
``no_grad``; the student is never forwarded, so its BN statistics stay as training left them):

- ``health_classes``: how many classes the teacher predicts on the pseudo batch;
- ``health_class_entropy``: the entropy of that class histogram divided by ``log(C)`` (1: every
  class equally often, 0: one class);
- ``health_div_input``: diversity of the pseudo inputs, :func:`diversity` of the flattened batch;
- ``health_div_feature``: the same in the teacher's feature space (the input of its last linear
  layer: a WRN's pooled last-group features after BN-ReLU, an MLP's last hidden layer);
- ``health_adv_kl``: the adversarial signal, the generator steps' KL(T || S) averaged since the
  last evaluation (``-loss_g`` for the paper's objective; :data:`~zskt_ray.names.GEN_KL` when a
  generator objective reports it), 0 when no generator step ran;
- ``health_adv_kl_trend``: the least-squares slope of that KL over the last ``trend_window``
  evaluations, per evaluation, divided by their mean |KL| (-0.1: falling by a tenth per report);
- ``health_gen_move``: how far the generator moved since the last evaluation, as the relative
  change ``||G(z) - G_prev(z)|| / max(||G_prev(z)||, ||G(z)||)`` of its outputs on the fixed batch
  (in [0, 2]; the rule judges it per iteration at the initial learning rate, see
  ``HealthRule.min_generator_move``).

The generator runs in train mode as in training (its BN uses batch statistics); its BN running
buffers, which a train-mode forward updates but nothing in the method reads, are put back, so a run
with health metrics computes exactly the weights of one without.

:class:`HealthRule` turns the measurements into a verdict: ``collapsed`` (too few classes, or too
little diversity) or ``stalled`` (the generator stops moving, or the adversarial KL is ~0) after
``patience`` consecutive evaluations. The first verdict is kept, with its reason and iteration
(:class:`HealthFlag`); the monitor's state goes into the loop checkpoint, so a resumed run
continues its streaks exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .names import (
    COLLAPSED,
    GEN_KL,
    HEALTH_ADV_KL,
    HEALTH_ADV_KL_TREND,
    HEALTH_CLASS_ENTROPY,
    HEALTH_CLASSES,
    HEALTH_DIV_FEATURE,
    HEALTH_DIV_INPUT,
    HEALTH_FLAG,
    HEALTH_GEN_MOVE,
    HEALTH_STATUSES,
    HEALTHY,
    STALLED,
)

__all__ = [
    "HEALTH_NOISE_SEED",
    "HealthFlag",
    "HealthMonitor",
    "HealthRule",
    "adversarial_kl",
    "class_coverage",
    "diversity",
    "penultimate_layer",
]

# Seed of the fixed noise batch: the same batch for every run of a z_dim and batch size.
HEALTH_NOISE_SEED = 20190527


def _f(default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class HealthRule:
    """When a run counts as collapsed or stalled. Defaults come from healthy and provoked runs
    on digits and toy2d (README, "Run health"); 0 turns a threshold off."""

    patience: int = _f(
        3,
        "Consecutive evaluations a condition must hold before the run is flagged (a single bad "
        "evaluation is noise).",
    )
    min_classes: int = _f(
        2,
        "Collapsed when the teacher predicts fewer classes than this on the pseudo batch.",
    )
    min_class_entropy: float = _f(
        0.0,
        "Collapsed when the class histogram's entropy / log(C) falls below this (0: off).",
    )
    min_input_diversity: float = _f(
        0.05,
        "Collapsed when the pseudo inputs' diversity (mean pairwise distance / (sqrt 2 * RMS "
        "norm)) falls below this.",
    )
    min_feature_diversity: float = _f(
        0.02,
        "Collapsed when the diversity of the teacher's penultimate features falls below this.",
    )
    min_generator_move: float = _f(
        1e-5,
        "Stalled when the generator's outputs on the fixed batch change by less than this per "
        "iteration at its initial learning rate: health_gen_move / (iterations since the last "
        "evaluation x the mean of lr_g at the two evaluations / its initial value). Scaling by "
        "the schedule keeps the end of a cosine schedule, where every generator slows down, from "
        "counting as a stall; scaling by the interval makes the threshold independent of "
        "eval_every.",
    )
    min_adv_kl: float = _f(
        1e-6,
        "Stalled when the generator steps' KL(T || S) (in the run's KL reduction; no generator "
        "step: 0) falls below this.",
    )
    trend_window: int = _f(5, "Evaluations over which health_adv_kl_trend is fitted.")
    batch_size: int = _f(
        0,
        "Pseudo inputs in the fixed noise batch (0: the run's batch size, so the generator's BN "
        "sees batches of the size it trains on).",
    )

    def __post_init__(self) -> None:
        for name in ("patience", "trend_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in (
            "min_classes",
            "min_class_entropy",
            "min_input_diversity",
            "min_feature_diversity",
            "min_generator_move",
            "min_adv_kl",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.batch_size == 1 or self.batch_size < 0:
            raise ValueError(f"batch_size must be 0 or >= 2, got {self.batch_size!r}")

    def for_generator(self, learns: bool) -> HealthRule:
        """The rule for a run whose generator learns (``learns``) or does not by design.

        A generator that takes no step (``n_g`` 0, or no loss at all: ``adversarial_discrepancy``
        none without a prior) neither moves nor gets an adversarial signal; that is the run's
        setting, not a failure, so its stall conditions are off (``min_generator_move`` and
        ``min_adv_kl`` 0). The collapse conditions stay: a fixed random generator can still make
        inputs that are all alike. A generator that should learn but cannot (a learning rate of 0)
        keeps every condition.
        """
        if learns:
            return self
        return dataclasses.replace(self, min_generator_move=0.0, min_adv_kl=0.0)


@dataclasses.dataclass(frozen=True)
class HealthFlag:
    """A run the rule flagged: ``status`` (collapsed / stalled), why, and the evaluation."""

    status: str
    reason: str
    iteration: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- measurements


def diversity(v: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance of the rows of ``v`` divided by sqrt(2) x their RMS norm.

    Scale-free and bounded by [0, sqrt 2]: 0 when every row is the same, about 1 for rows drawn
    independently around the origin (E||a - b||^2 = 2 E||a||^2), lower when the rows share a
    common offset that dwarfs their differences. Distances are computed directly (not through
    ``||a||^2 + ||b||^2 - 2ab``, whose rounding leaves identical rows about 1e-4 apart).
    """
    v = v.detach().flatten(1).double()
    n = v.shape[0]
    if n < 2:
        return 0.0
    rms = v.pow(2).sum(dim=1).mean().sqrt()
    if rms == 0:
        return 0.0
    dist = torch.cdist(v, v, compute_mode="donot_use_mm_for_euclid_dist")
    mean_pair = dist.sum() / (n * (n - 1))  # the diagonal is 0
    return float(mean_pair / (math.sqrt(2.0) * rms))


def class_coverage(logits: torch.Tensor, num_classes: int) -> tuple[int, float]:
    """Classes predicted (argmax) on a batch, and the histogram's entropy / log(num_classes)."""
    hist = torch.bincount(logits.argmax(dim=1), minlength=num_classes).double()
    p = hist / hist.sum()
    nz = p[p > 0]
    entropy = max(0.0, float(-(nz * nz.log()).sum()))  # one class: 0, not -0
    return int((hist > 0).sum()), entropy / math.log(num_classes) if num_classes > 1 else 0.0


def penultimate_layer(net: nn.Module) -> nn.Module:
    """The module whose *input* is the network's feature vector: its last ``nn.Linear``."""
    fc = getattr(net, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear layer to take features from")
    return linears[-1]


def adversarial_kl(metrics: Mapping[str, float]) -> float:
    """The generator steps' KL(T || S) from a loop report: ``GEN_KL`` when the generator's
    objective reports it, else ``-loss_g`` (the paper's objective), else 0 (no generator step)."""
    if GEN_KL in metrics:
        return float(metrics[GEN_KL])
    if "loss_g" in metrics:
        return -float(metrics["loss_g"])
    return 0.0


def _relative_slope(values: list[float]) -> float:
    """Least-squares slope per step divided by the mean |value| (0 for < 2 values or all 0)."""
    if len(values) < 2:
        return 0.0
    scale = float(np.mean(np.abs(values)))
    if scale == 0:
        return 0.0
    slope = np.polyfit(np.arange(len(values), dtype=float), np.asarray(values, float), 1)[0]
    return float(slope / scale)


# ---------------------------------------------------------------- the monitor


class HealthMonitor:
    """Health metrics of one run at each evaluation, and the rule's streaks and verdict."""

    def __init__(
        self,
        rule: HealthRule,
        generator: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        z_dim: int,
        batch_size: int,
        device: torch.device,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        lr_g: float = 0.0,
    ) -> None:
        """``lr_g``: the generator's initial learning rate (0: movement is not scaled by it)."""
        self.rule = rule
        self.generator, self.teacher = generator, teacher
        self.num_classes = num_classes
        self.autocast = autocast
        self.features_of = penultimate_layer(teacher)
        n = rule.batch_size or batch_size
        # Drawn on the CPU from its own generator: the same batch on every device, and the run's
        # noise RNG and torch's global RNG are left alone.
        rng = torch.Generator().manual_seed(HEALTH_NOISE_SEED)
        self.z = torch.randn(max(n, 2), z_dim, generator=rng).to(device)
        self.previous: torch.Tensor | None = None  # G's outputs at the last evaluation
        self.lr_g = lr_g
        self.lr_previous = lr_g  # lr_g at the last evaluation
        self.last_iteration = 0  # of the last evaluation (or of the baseline)
        self.kls: list[float] = []  # adversarial KL of the last trend_window evaluations
        self.streaks = {COLLAPSED: 0, STALLED: 0}
        self.since = {COLLAPSED: 0, STALLED: 0}  # first iteration of the current streak
        self.flag: HealthFlag | None = None
        self.move_rate = float("nan")  # of the last interval (see _move_rate)

    @torch.no_grad()
    def pseudo_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, teacher logits, teacher features) on the fixed noise batch.

        The generator's BN buffers are restored afterwards: a train-mode forward updates them, and
        a run must end with the same state whether or not its health is watched.
        """
        saved = [b.clone() for b in self.generator.buffers()]
        feats: list[torch.Tensor] = []
        handle = self.features_of.register_forward_pre_hook(lambda m, a: feats.append(a[0]))
        try:
            with self.autocast():
                x = self.generator(self.z)
                logits, _ = self.teacher(x)
        finally:
            handle.remove()
            for b, s in zip(self.generator.buffers(), saved, strict=True):
                b.copy_(s)
        return x.float(), logits.float(), feats[-1].float()

    def start(self, iteration: int = 0) -> None:
        """Record the generator's outputs before training (or after a checkpoint without them)."""
        if self.previous is None:
            self.previous = self.pseudo_batch()[0].detach().clone()
            self.last_iteration = iteration

    def measure(self, iteration: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """The health metrics now, given the loop's report (its loss terms); updates the rule."""
        x, logits, feats = self.pseudo_batch()
        classes, entropy = class_coverage(logits, self.num_classes)
        prev = self.previous
        move = (
            float((x - prev).norm() / torch.maximum(prev.norm(), x.norm()).clamp_min(1e-12))
            if prev is not None and prev.shape == x.shape
            else float("nan")  # nothing to compare with (a checkpoint of another batch size)
        )
        self.previous = x.detach().clone()
        self.move_rate = self._move_rate(move, iteration, metrics)
        kl = adversarial_kl(metrics)
        self.kls = [*self.kls, kl][-self.rule.trend_window :]
        out = {
            HEALTH_CLASSES: float(classes),
            HEALTH_CLASS_ENTROPY: entropy,
            HEALTH_DIV_INPUT: diversity(x),
            HEALTH_DIV_FEATURE: diversity(feats),
            HEALTH_ADV_KL: kl,
            HEALTH_ADV_KL_TREND: _relative_slope(self.kls),
            HEALTH_GEN_MOVE: move,
        }
        self._judge(iteration, out)
        out[HEALTH_FLAG] = float(HEALTH_STATUSES.index(self.flag.status if self.flag else HEALTHY))
        return out

    def _move_rate(self, move: float, iteration: int, metrics: Mapping[str, float]) -> float:
        """``move`` per iteration at the initial learning rate (what ``min_generator_move`` bounds).

        The interval's learning-rate fraction is the mean of lr_g at its two ends over lr_g at
        the start (1 when either is unknown). NaN when nothing can be compared: no earlier
        outputs, no iteration since, or a learning rate of 0 (nothing moves by design).
        """
        steps = iteration - self.last_iteration
        self.last_iteration = iteration
        fraction = 1.0
        if self.lr_g > 0 and "lr_g" in metrics:
            now = float(metrics["lr_g"])
            fraction = (self.lr_previous + now) / 2 / self.lr_g
            self.lr_previous = now
        if steps <= 0 or fraction <= 0:
            return float("nan")
        return move / (steps * fraction)

    def problems(self, m: Mapping[str, float]) -> dict[str, list[str]]:
        """The rule's conditions that hold for one evaluation's metrics, by status."""
        r = self.rule
        c = self.num_classes
        collapsed, stalled = [], []
        if m[HEALTH_CLASSES] < r.min_classes:
            collapsed.append(
                f"the teacher predicts {m[HEALTH_CLASSES]:.0f} of {c} classes "
                f"(min_classes {r.min_classes})"
            )
        if m[HEALTH_CLASS_ENTROPY] < r.min_class_entropy:
            collapsed.append(
                f"class entropy {m[HEALTH_CLASS_ENTROPY]:.3g} < min_class_entropy "
                f"{r.min_class_entropy:g}"
            )
        if m[HEALTH_DIV_INPUT] < r.min_input_diversity:
            collapsed.append(
                f"input diversity {m[HEALTH_DIV_INPUT]:.3g} < min_input_diversity "
                f"{r.min_input_diversity:g}"
            )
        if m[HEALTH_DIV_FEATURE] < r.min_feature_diversity:
            collapsed.append(
                f"feature diversity {m[HEALTH_DIV_FEATURE]:.3g} < min_feature_diversity "
                f"{r.min_feature_diversity:g}"
            )
        rate = self.move_rate
        if rate == rate and rate < r.min_generator_move:  # NaN: nothing to compare
            stalled.append(
                f"the generator moved {rate:.3g} per iteration at its initial learning rate "
                f"(< min_generator_move {r.min_generator_move:g})"
            )
        if m[HEALTH_ADV_KL] < r.min_adv_kl:
            stalled.append(f"adversarial KL {m[HEALTH_ADV_KL]:.3g} < min_adv_kl {r.min_adv_kl:g}")
        return {COLLAPSED: collapsed, STALLED: stalled}

    def _judge(self, iteration: int, m: Mapping[str, float]) -> None:
        for status, reasons in self.problems(m).items():
            if not reasons:
                self.streaks[status] = 0
                continue
            if self.streaks[status] == 0:
                self.since[status] = iteration
            self.streaks[status] += 1
            if self.flag is None and self.streaks[status] >= self.rule.patience:
                self.flag = HealthFlag(
                    status,
                    f"{status}: {'; '.join(reasons)} (for {self.streaks[status]} evaluations "
                    f"since iteration {self.since[status]})",
                    iteration,
                )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (checkpoints load with ``weights_only``)."""
        return {
            "previous": None if self.previous is None else self.previous.detach().cpu().clone(),
            "kls": list(self.kls),
            "lr_previous": self.lr_previous,
            "last_iteration": self.last_iteration,
            "streaks": dict(self.streaks),
            "since": dict(self.since),
            "flag": None if self.flag is None else self.flag.as_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        prev = state.get("previous")
        self.previous = None if prev is None else prev.to(self.z.device)
        self.kls = [float(v) for v in state.get("kls", [])][-self.rule.trend_window :]
        self.lr_previous = float(state.get("lr_previous", self.lr_g))
        self.last_iteration = int(state.get("last_iteration", 0))
        self.streaks = {COLLAPSED: 0, STALLED: 0, **state.get("streaks", {})}
        self.since = {COLLAPSED: 0, STALLED: 0, **state.get("since", {})}
        flag = state.get("flag")
        self.flag = None if flag is None else HealthFlag(**flag)
