"""The zero-shot loop: adversarial belief matching between a generator and a student.

Per iteration (section 2 of the method doc):

1. one noise batch ``z`` for the whole iteration;
2. ``n_g`` generator steps maximising KL(T(x) || S(x)) with the student in *train* mode (its BN
   statistics come from pseudo data) and the teacher in eval mode;
3. one generator forward and one teacher forward under ``no_grad`` (the images and the teacher's
   targets are fixed during the student phase: the generator does not move), then ``n_s`` student
   steps on KL + beta * sum of attention terms;
4. both cosine schedulers step once.

Networks without attention groups (the toy problem's MLPs) give an attention term of zero; their
configs have ``beta = 0``.

The discrepancies and the generator's prior terms are settings (section 9 of the method doc):
DFAD's L1 in place of the KL, a generator without a loss (its steps are skipped), and
DeepInversion's batch-norm statistics prior and DAFL's one-hot and entropy terms added to the
generator's loss. The defaults compute exactly the paper's losses.

The official code regenerates ``x`` with gradients in every student step and throws the generator
gradients away; that is wasted compute, not part of the method, and is skipped here (the images are
identical: same ``z``, same generator weights, generator BN always in train mode).

Step functions return named loss terms; the loop aggregates them and hands a report to the caller
every ``eval_every`` iterations, so an orchestrator (Ray Tune, a progress bar) can report them.
Each report also carries the run's health metrics and verdict (``zskt_ray/health.py``) and its
cost counters (``zskt_ray/cost.py``); the wiring audits of ``zskt_ray/audit.py`` run before the
first iteration. None of them changes what the run computes.

Precision (``cfg.precision``): ``fp32`` runs exactly the code path the paper's numbers came from.
``bf16`` and ``fp16`` autocast the networks' forward passes only; logits and attention features are
cast to fp32 before any softmax, KL or attention map, so every loss term is an fp32 computation.
``fp16`` scales each loss with its own gradient scaler (generator and student) and unscales the
gradients before they are clipped, so the clip threshold of 5 applies to the true gradients.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .audit import arm_gradient_check, check_networks
from .checkpoint import load_file
from .config import DistillConfig, from_dict, to_dict
from .cost import CostMeter
from .data import DatasetInfo
from .health import HealthFlag, HealthMonitor, HealthRule
from .losses import (
    BatchNormStatistics,
    attention_losses,
    information_entropy_term,
    kl_divergence,
    l1_discrepancy,
    one_hot_term,
    sum_in_order,
)
from .models import build_generator, build_model
from .names import GEN_KL, SCHEDULE_METRICS, SPEED_METRIC, TEST_ACC, VAL_ACC
from .utils import accuracy, resolve_device, seed_everything

CHECKPOINT_FORMAT = 1
_STATE_KEYS = ("config", "iteration", "student", "generator", "opt_s", "opt_g", "noise_rng")
# Settings a resumed run may change: where and how fast it runs and evaluates, not what it trains.
RESUME_FREE_FIELDS = ("device", "eval_batch_size", "data_root", "download", "teacher_path")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A loop checkpoint's state (``weights_only``: runs no code); one-line ValueError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = load_file(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a zskt-ray checkpoint file (no zskt-ray format marker)")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        hint = "it is a model file" if "meta" in state and "state_dict" in state else "incomplete"
        raise ValueError(f"{path}: not a zskt-ray checkpoint file ({hint})")
    try:
        from_dict(DistillConfig, state["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: not a zskt-ray checkpoint file (its config does not load: {e})"
        ) from None
    return state


def resume_conflicts(saved: dict[str, Any], cfg: DistillConfig) -> list[str]:
    """The settings in which ``cfg`` differs from a checkpoint's config, as ``name: old -> new``.

    Resuming with any of them changed would continue a run under a config it did not start with;
    only :data:`RESUME_FREE_FIELDS` may differ.
    """
    old = to_dict(from_dict(DistillConfig, saved["config"]))
    new = to_dict(cfg)
    return [
        f"{name}: {old[name]!r} -> {new[name]!r}"
        for name in new
        if name not in RESUME_FREE_FIELDS and old.get(name) != new[name]
    ]


AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Layout of the networks on CUDA per precision. Tensor cores read NHWC natively in half precision,
# so bf16/fp16 start from channels_last; fp32/tf32 keep NCHW. Not yet measured on a GPU:
# `bash benchmarks/gpu.sh` times both layouts for every precision, and this table is to follow
# its rows.
CUDA_LAYOUT: dict[str, torch.memory_format] = {
    "fp32": torch.contiguous_format,
    "tf32": torch.contiguous_format,
    "bf16": torch.channels_last,
    "fp16": torch.channels_last,
}


def memory_format(device: torch.device, precision: str = "fp32") -> torch.memory_format:
    """Tensor layout of the loop's networks: NHWC (``channels_last``) on the CPU.

    oneDNN's NHWC convolutions made a digits iteration (8x8, batch 128, one thread) about 25 %
    faster and a 32x32x3 one about 18 % (``benchmarks/loop_speed.py``); the values are the same up
    to float rounding. On CUDA the layout comes from :data:`CUDA_LAYOUT`.
    """
    if device.type == "cuda":
        return CUDA_LAYOUT[precision]
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def configure_cuda(precision: str) -> None:
    """Process-wide CUDA settings of a run: cuDNN autotuning, and TF32 unless precision is fp32.

    ``fp32`` keeps IEEE fp32 matmuls and convolutions (the paper's arithmetic); every other setting
    allows TF32 for whatever still runs in fp32. A trial owns its process, so global flags are safe.
    """
    torch.backends.cudnn.benchmark = True
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def make_adam(params: Any, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as in the paper; on CUDA the fused kernel (one launch per step, no host sync with a
    gradient scaler). The CPU keeps the default implementation, so fp32 CPU runs are unchanged."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


class DivergenceError(RuntimeError):
    """A loss became NaN or infinite; the message names the term and the iteration."""


@dataclass
class EvalReport:
    """What the loop hands out at each evaluation interval."""

    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)
    done: bool = False
    health: HealthFlag | None = None  # set once the health rule has flagged the run


class ZeroShotDistiller:
    """Owns student, generator, optimisers, schedulers and the noise RNG of one run."""

    def __init__(
        self,
        cfg: DistillConfig,
        teacher: nn.Module,
        info: DatasetInfo,
        val_loader: DataLoader | None = None,
        device: torch.device | str | None = None,
        snapshot_at: Collection[int] = (),
        snapshot_points: int = 200,
        health: HealthRule | None = HealthRule(),  # noqa: B008 (frozen, so one shared default)
    ) -> None:
        """``health=None`` leaves out the health metrics and rule (cost counters stay)."""
        self.cfg = cfg
        self.info = info
        self.device = resolve_device(cfg.device) if device is None else torch.device(device)
        self.val_loader = val_loader

        self.teacher = teacher.to(self.device).eval()
        self.teacher.requires_grad_(False)
        # Hooks on the teacher's batch-norm layers, live only during generator-step forwards.
        self.bn_prior = BatchNormStatistics(self.teacher) if cfg.prior_bn > 0 else None

        seed_everything(cfg.seed)
        self.student = build_model(cfg.student_arch, info.num_classes, info.in_channels).to(
            self.device
        )
        # Images or points, as the data set has them.
        self.generator = build_generator(cfg.z_dim, info.image_size, info.in_channels).to(
            self.device
        )
        self.student.train()
        self.generator.train()  # always: the paper's generator uses batch statistics
        if self.device.type == "cuda":
            configure_cuda(cfg.precision)
        layout = memory_format(self.device, cfg.precision)
        for net in (self.teacher, self.student, self.generator):
            net.to(memory_format=layout)

        self.opt_s = make_adam(self.student.parameters(), cfg.lr_s, self.device)
        self.opt_g = make_adam(self.generator.parameters(), cfg.lr_g, self.device)
        # One scaler per optimiser: the two losses differ in scale and overflow independently.
        fp16 = cfg.precision == "fp16"
        self.scaler_s = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt_s, T_max=cfg.iterations, eta_min=0.0
        )
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt_g, T_max=cfg.iterations, eta_min=0.0
        )
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(cfg.seed)
        self.iteration = 0
        self._sums: dict[str, float] = {}
        self._count = 0
        # Snapshots (student weights and pseudo inputs) at chosen iterations, for pictures of the
        # run (the toy problem's decision regions); saved with the checkpoint.
        self.snapshot_at = frozenset(int(i) for i in snapshot_at)
        self.snapshot_points = snapshot_points
        self.snapshots: list[dict[str, Any]] = []
        self._watch(health)

    # ------------------------------------------------------------------ steps

    def sample_z(self) -> torch.Tensor:
        """One noise batch from the run's own RNG (saved with the checkpoint)."""
        return torch.randn(
            self.cfg.batch_size, self.cfg.z_dim, device=self.device, generator=self.noise
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for the networks' forward passes (``fp32``/``tf32``: no context at all)."""
        dtype = AUTOCAST_DTYPES.get(self.cfg.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _update(
        self,
        loss: torch.Tensor,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        net: nn.Module,
    ) -> None:
        """Backward, clip, step; with a gradient scaler the clip sees unscaled gradients."""
        opt.zero_grad(set_to_none=True)
        if not scaler.is_enabled():
            loss.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
            opt.step()
            return
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # before clipping: the threshold is for the true gradients
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
        scaler.step(opt)  # skipped when a gradient overflowed; the scale then shrinks
        scaler.update()

    def _kl(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kl_divergence(
            student_logits,
            teacher_logits,
            temperature=self.cfg.temperature,
            reduction=self.cfg.kl_reduction,  # type: ignore[arg-type]
        )

    def _discrepancy(
        self, kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor
    ) -> torch.Tensor:
        """KL(T || S) (temperature, reduction of the config) or DFAD's L1 of the logits."""
        if kind == "l1":
            return l1_discrepancy(student_logits, teacher_logits)
        return self._kl(student_logits, teacher_logits)

    def generator_step(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator step: maximise the discrepancy (KL(T || S) by default) on G(z), plus any
        weighted prior terms. Student stays in train mode; without an adversarial term it is not
        run at all (the priors need the teacher only)."""
        cfg = self.cfg
        adversarial = cfg.adversarial_discrepancy != "none"
        recording = self.bn_prior.recording() if self.bn_prior else contextlib.nullcontext([])
        self.student.requires_grad_(False)  # gradients flow through S to x, not into S's weights
        try:
            with self.autocast(), recording as bn_terms:
                x = self.generator(z)
                teacher_logits, _ = self.teacher(x)
                student_logits = self.student(x)[0] if adversarial else None
            # The loss in fp32 (``.float()`` returns the tensor itself when it already is fp32).
            teacher_logits = teacher_logits.float()
            terms: dict[str, torch.Tensor] = {}
            if student_logits is not None:
                terms["g_adv"] = self._discrepancy(
                    cfg.adversarial_discrepancy, student_logits.float(), teacher_logits
                )
            if cfg.prior_bn > 0:
                terms["g_bn"] = sum_in_order(bn_terms)  # over the teacher's BN layers
            if cfg.prior_onehot > 0:
                terms["g_onehot"] = one_hot_term(teacher_logits)
            if cfg.prior_entropy > 0:
                terms["g_entropy"] = information_entropy_term(teacher_logits)
            # Only the configured terms enter: the paper's loss is exactly -g_adv, not -g_adv + 0.
            parts = [-terms["g_adv"]] if "g_adv" in terms else []
            parts += [
                weight * terms[name]
                for name, weight in (
                    ("g_bn", cfg.prior_bn),
                    ("g_onehot", cfg.prior_onehot),
                    ("g_entropy", cfg.prior_entropy),
                )
                if name in terms
            ]
            if not parts:
                raise RuntimeError("generator_step called for a generator without a loss")
            loss_g = sum_in_order(parts)
            self._update(loss_g, self.opt_g, self.scaler_g, self.generator)
        finally:
            self.student.requires_grad_(True)
        out = {"loss_g": loss_g.detach()}
        if len(terms) > 1 or not adversarial:  # with a prior: its unweighted parts as well
            out.update({name: value.detach() for name, value in terms.items()})
        # loss_g is not -KL(T || S): the run's health reads the steps' KL under GEN_KL; without an
        # adversarial term there is none (the student is not run), which it reads as 0.
        if student_logits is None:
            out[GEN_KL] = loss_g.new_zeros(())
        elif len(terms) > 1 or cfg.adversarial_discrepancy != "kl":
            if cfg.adversarial_discrepancy == "kl":
                out[GEN_KL] = terms["g_adv"].detach()
            else:
                with torch.no_grad():
                    out[GEN_KL] = self._kl(student_logits.float(), teacher_logits)
        return out

    def student_phase(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``n_s`` student steps on one batch of pseudo images; returns mean terms over the steps.

        The student's loss is KL(T || S) + beta * AT, or with ``student_discrepancy='l1'`` DFAD's
        L1 of the logits + beta * AT (the KL is then still reported, computed without gradients).
        """
        with torch.no_grad(), self.autocast():
            x = self.generator(z)
            teacher_logits, teacher_feats = self.teacher(x)
        teacher_logits = teacher_logits.float()
        teacher_feats = [f.float() for f in teacher_feats]
        sums = {"loss_s": 0.0, "kl": 0.0, "at": 0.0}
        l1 = self.cfg.student_discrepancy == "l1"
        if l1:
            sums["l1"] = 0.0
        for _ in range(self.cfg.n_s):
            with self.autocast():
                student_logits, student_feats = self.student(x)
            student_logits = student_logits.float()
            if l1:
                match = l1_discrepancy(student_logits, teacher_logits)
                with torch.no_grad():  # reported beside it, for comparison with KL runs
                    kl = self._kl(student_logits, teacher_logits)
            else:
                match = kl = self._kl(student_logits, teacher_logits)
            # MLPs have no groups (and beta = 0): the term is a zero on the run's device.
            at = (
                attention_losses([f.float() for f in student_feats], teacher_feats)
                if student_feats
                else kl.new_zeros(())
            )
            loss_s = match + self.cfg.beta * at
            self._update(loss_s, self.opt_s, self.scaler_s, self.student)
            for name, value in (("loss_s", loss_s), ("kl", kl), ("at", at), ("l1", match)):
                if name in sums:
                    sums[name] = sums[name] + value.detach()
        out = {name: value / self.cfg.n_s for name, value in sums.items()}  # type: ignore[operator]
        with torch.no_grad():
            p_t = teacher_logits.softmax(dim=1)
            p_s = student_logits.detach().softmax(dim=1)
            out["teacher_conf"] = p_t.max(dim=1).values.mean()
            out["student_conf"] = p_s.max(dim=1).values.mean()
            out["pseudo_agreement"] = (p_t.argmax(1) == p_s.argmax(1)).float().mean()
        return out

    def train_iteration(self) -> dict[str, float]:
        """One outer iteration; raises DivergenceError when a term is not finite."""
        z = self.sample_z()
        # A generator without a loss (adversarial_discrepancy 'none', no prior) is not stepped.
        n_g = self.cfg.n_g if self.cfg.generator_learns else 0
        g_terms: list[dict[str, torch.Tensor]] = [self.generator_step(z) for _ in range(n_g)]
        terms: dict[str, torch.Tensor] = self.student_phase(z)
        for name in g_terms[0] if g_terms else ():
            terms[name] = torch.stack([t[name] for t in g_terms]).mean()
        self.sched_s.step()
        with warnings.catch_warnings():
            if not g_terms:  # no generator step to come before it: torch's order warning is moot
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
            self.sched_g.step()
        self.iteration += 1
        names = list(terms)
        values = torch.stack([terms[n].float() for n in names]).cpu().tolist()  # one sync
        result = dict(zip(names, values, strict=True))
        for name, value in result.items():
            if value != value or value in (float("inf"), float("-inf")):
                raise DivergenceError(f"{name} became {value} at iteration {self.iteration}")
        return result

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, loader: DataLoader | None = None) -> float:
        """Student accuracy (%) on ``loader`` (default: the validation loader)."""
        loader = loader if loader is not None else self.val_loader
        if loader is None:
            raise ValueError("no evaluation loader was given to the distiller")
        return accuracy(self.student, loader, self.device)

    def final_metrics(self, test_loader: DataLoader) -> dict[str, float]:
        """What a finished run reports, the same for the CLI and study trials."""
        return {
            VAL_ACC: self.evaluate(),
            TEST_ACC: self.evaluate(test_loader),
            "iterations_done": float(self.iteration),
        }

    @torch.no_grad()
    def sample_images(self, n: int = 64, seed: int = 1234) -> torch.Tensor:
        """Pseudo inputs from a fixed noise batch (for grids, pictures); leaves the run's RNG alone."""
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        z = torch.randn(max(n, 2), self.cfg.z_dim, device=self.device, generator=g)
        return self.generator(z)[:n].cpu()

    def snapshot(self) -> dict[str, Any]:
        """The student's weights (CPU copies) and pseudo inputs from a fixed noise batch, now."""
        return {
            "iteration": self.iteration,
            "student": {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()},
            "points": self.sample_images(self.snapshot_points),
        }

    def _maybe_snapshot(self) -> None:
        if self.iteration in self.snapshot_at and not any(
            s["iteration"] == self.iteration for s in self.snapshots
        ):
            self.snapshots.append(self.snapshot())

    # ------------------------------------------------------------------ running

    def run(
        self, until: int | None = None, on_iteration: Callable[[int], None] | None = None
    ) -> Iterator[EvalReport]:
        """Train up to ``until`` iterations (default: all), yielding a report every ``eval_every``.

        The last report (``done=True``) comes at ``cfg.iterations``. Resuming from a checkpoint
        continues from ``self.iteration``. ``on_iteration`` (e.g. a progress bar) gets the
        iteration number after each iteration.
        """
        stop = self.cfg.iterations if until is None else min(until, self.cfg.iterations)
        self._before_training()
        t0, it0 = time.perf_counter(), self.iteration
        self._maybe_snapshot()  # iteration 0: the untrained student
        while self.iteration < stop:
            for name, value in self.train_iteration().items():
                self._sums[name] = self._sums.get(name, 0.0) + value
            self._count += 1
            self._maybe_snapshot()
            if on_iteration is not None:
                on_iteration(self.iteration)
            if self.iteration % self.cfg.eval_every == 0 or self.iteration == self.cfg.iterations:
                metrics = {name: v / self._count for name, v in self._sums.items()}
                self._sums, self._count = {}, 0
                for name, sched in zip(SCHEDULE_METRICS, (self.sched_s, self.sched_g), strict=True):
                    metrics[name] = sched.get_last_lr()[0]
                elapsed = time.perf_counter() - t0
                metrics[SPEED_METRIC] = (self.iteration - it0) / max(elapsed, 1e-9)
                t0, it0 = time.perf_counter(), self.iteration
                if self.val_loader is not None:
                    metrics[VAL_ACC] = self.evaluate()
                if self.health is not None:
                    metrics.update(self.health.measure(self.iteration, metrics))
                metrics.update(self.cost.metrics())
                yield EvalReport(
                    self.iteration,
                    metrics,
                    done=self.iteration >= self.cfg.iterations,
                    health=self.health.flag if self.health is not None else None,
                )

    def _watch(self, rule: HealthRule | None) -> None:
        """Run health and cost (zskt_ray/health.py, zskt_ray/cost.py): measured at evaluations,
        counted by hooks on the three networks; neither touches the training state."""
        self.health = (
            None
            if rule is None
            else HealthMonitor(
                rule.for_generator(self.cfg.n_g > 0 and self.cfg.generator_learns),
                self.generator,
                self.teacher,
                self.info.num_classes,
                self.cfg.z_dim,
                self.cfg.batch_size,
                self.device,
                self.autocast,
                self.cfg.lr_g,
            )
        )
        self.cost = CostMeter(self.device)
        for role, net in (
            ("teacher", self.teacher),
            ("student", self.student),
            ("generator", self.generator),
        ):
            self.cost.watch(role, net)
        self._gradient_checked = False

    def _before_training(self) -> None:
        """Audits (zskt_ray/audit.py), the health baseline and the cost clock of this process."""
        check_networks(self.teacher, self.student)
        if not self._gradient_checked:  # the first generator step of this process
            arm_gradient_check(self.opt_g, self.generator)
            self._gradient_checked = True
        if self.health is not None:
            self.health.start(self.iteration)
        self.cost.start()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit-for-bit (on the same device type)."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.cfg),
            "iteration": self.iteration,
            "student": self.student.state_dict(),
            "generator": self.generator.state_dict(),
            "opt_s": self.opt_s.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "sched_s": self.sched_s.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "noise_rng": self.noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "sums": dict(self._sums),
            "count": self._count,
            "snapshots": list(self.snapshots),
            "cost": self.cost.state_dict(),
        }
        if self.health is not None:
            state["health"] = self.health.state_dict()
        if self.scaler_s.is_enabled():
            state["scaler_s"] = self.scaler_s.state_dict()
            state["scaler_g"] = self.scaler_g.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; the config must describe the same run shape."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
        saved = from_dict(DistillConfig, state["config"])
        for name in ("student_arch", "z_dim", "batch_size", "iterations", "dataset", "precision"):
            if getattr(saved, name) != getattr(self.cfg, name):
                raise ValueError(
                    f"checkpoint was written for {name}={getattr(saved, name)!r}, "
                    f"this run has {name}={getattr(self.cfg, name)!r}"
                )
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_s.load_state_dict(state["sched_s"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.scaler_s.is_enabled():
            self.scaler_s.load_state_dict(state["scaler_s"])
            self.scaler_g.load_state_dict(state["scaler_g"])
        # RNG states are CPU byte tensors whatever the device (checkpoints load on the CPU).
        self.noise.set_state(state["noise_rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.iteration = int(state["iteration"])
        self._sums = dict(state.get("sums", {}))
        self._count = int(state.get("count", 0))
        self.snapshots = list(state.get("snapshots", []))
        self.cost.load_state_dict(state.get("cost", {}))
        if self.health is not None:
            self.health.load_state_dict(state.get("health", {}))

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomically write the full state (a crash mid-write never leaves a broken file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save_checkpoint` (``weights_only``: runs no code;
        optimisers move their state to the device)."""
        self.load_state_dict(read_checkpoint(path))
