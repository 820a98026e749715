"""What a trial records about its own health and cost, and how it ends when either says so.

The loop measures (``zskt_ray/health.py``, ``zskt_ray/cost.py``); a trial adds what only the study
knows, through :class:`TrialWatch`, which the trainable calls at each loop report:

- cost: ``cost_device_s``, the loop's ``cost_wall_s`` times the trial's Ray allocation
  (:func:`~zskt_ray.cost.device_seconds`: CPUs, or the GPU share), joins the cost counters of every
  report; the tag ``zskt.cost_device`` says whether it counts CPU- or GPU-seconds. The last
  report's counters are logged after the final evaluation (MTE included), whose time and passes
  are the trial's too. Setting up (data, teacher, the MLflow run) is not counted, nor a pruned
  trial's iterations after its last report.
- health: the tags ``zskt.health`` (``healthy`` from the first report; ``collapsed`` or
  ``stalled`` once the rule flags the trial), ``zskt.health_reason`` and
  ``zskt.health_iteration``, and the generator's pseudo images at the flag's iteration
  (``images/pseudo_iter<it>.png``: a grid of images, or for 2-D data the pseudo points over the
  teacher's decision regions).
- stop: with the study's ``health.stop``, a flagged trial ends at that report as *failed* with
  the flag as its reason (:class:`Unhealthy`), not pruned.

:func:`failure_reason` words the ends that a retry would only repeat (the loop diverged, a wiring
audit failed, the health rule stopped the trial), and tags a failed audit ``zskt.audit``.
No MLflow import here: every call goes through :class:`~.tracking.TrialRun`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import names
from ..audit import AuditError
from ..cost import device_kind, device_seconds, peak_memory_mib
from ..health import HealthRule
from ..loop import DivergenceError, EvalReport, ZeroShotDistiller
from ..utils import first_line
from . import records
from .tracking import TrialRun

_COST = (*names.COST_METRICS, names.COST_DEVICE_S)
POINTS_SHOWN = 256  # pseudo points in the picture of a 2-D generator


@dataclasses.dataclass(frozen=True)
class WatchSettings:
    """What the study says about its trials' health and cost (sent once with the trial context)."""

    rule: HealthRule = HealthRule()
    stop: bool = False  # health.stop: a flagged trial ends failed
    cpus: float = 1.0  # the trial's Ray allocation, which its device-seconds count
    gpus: float = 0.0
    system_metrics: bool = False  # mlflow.system_metrics

    @classmethod
    def of(cls, spec: Any, kind: str) -> WatchSettings:
        """The settings of a phase's trials (``spec``: a :class:`~.spec.StudySpec`). Only search
        trials are stopped when flagged: final seeds and a designed ablation's runs are full-budget
        measurements, the study's result, and leaving out a collapsed one would flatter its mean
        (an ablation's collapse rate per cell is itself a finding)."""
        resources = spec.trial_resources(kind)
        return cls(
            rule=spec.health.rule(),
            stop=spec.health.stop and kind == names.KIND_SEARCH,
            cpus=resources["cpu"],
            gpus=resources["gpu"],
            system_metrics=spec.mlflow.system_metrics,
        )


class Unhealthy(RuntimeError):
    """The health rule flagged a trial of a study that stops such trials; the message is the reason."""


def failure_reason(e: BaseException, run: TrialRun) -> str:
    """The one-line reason of a trial that ends failed without a retry (``zskt.audit`` is set for a
    failed audit)."""
    if isinstance(e, DivergenceError):
        return f"diverged: {e}"
    if isinstance(e, AuditError):
        reason = first_line(e, with_type=True)
        run.set_tags({names.TAG_AUDIT: reason})
        return reason
    return first_line(e)


class TrialWatch:
    """Health tags, cost metrics and the health stop of one trial's run."""

    def __init__(
        self,
        run: TrialRun,
        distiller: ZeroShotDistiller,
        grids: set[int],
        settings: WatchSettings,
    ) -> None:
        self.run, self.distiller, self.grids, self.settings = run, distiller, grids, settings
        self.tagged: str | None = None  # the health state the run's tags hold
        run.set_tags(cost_device_tag(settings))

    def report(self, report: EvalReport) -> None:
        """Log one loop report (metrics, its grid, health tags) with the trial's device-seconds.

        A done report's cost counters wait for :meth:`cost` (after the final evaluation). Raises
        :class:`Unhealthy` after logging when the study stops flagged trials and this one is.
        """
        report.metrics[names.COST_DEVICE_S] = self._device_s(report.metrics[names.COST_WALL_S])
        shown = report
        if report.done:
            metrics = {k: v for k, v in report.metrics.items() if k not in _COST}
            shown = dataclasses.replace(report, metrics=metrics)
        records.log_report(self.run, self.distiller, shown, self.grids)
        flag = report.health
        if flag is not None and flag.iteration == report.iteration:
            self._picture(report.iteration)
        self._tag(report)
        if flag is not None and self.settings.stop:
            raise Unhealthy(f"unhealthy: {flag.reason}")

    def cost(self) -> dict[str, float]:
        """The trial's cost counters now, logged at the loop's iteration (the trial's total)."""
        metrics = self.distiller.cost.metrics()
        metrics[names.COST_DEVICE_S] = self._device_s(metrics[names.COST_WALL_S])
        self.run.log_metrics(metrics, step=self.distiller.iteration)
        return metrics

    def _device_s(self, wall_s: float) -> float:
        return device_seconds(wall_s, self.settings.cpus, self.settings.gpus)

    def _tag(self, report: EvalReport) -> None:
        flag = report.health
        state = flag.status if flag is not None else names.HEALTHY
        if state == self.tagged:
            return
        tags: dict[str, Any] = {names.TAG_HEALTH: state}
        if flag is not None:
            tags[names.TAG_HEALTH_REASON] = flag.reason
            tags[names.TAG_HEALTH_ITERATION] = flag.iteration
        self.run.set_tags(tags)
        self.tagged = state

    def _picture(self, iteration: int) -> None:
        """The generator's pseudo inputs at the flag (unless a grid of this report is logged)."""
        d = self.distiller
        if d.info.is_image:
            if iteration not in self.grids:
                records.log_grid(self.run, d, iteration)
        elif d.info.input_shape == (2,):
            log_points(self.run, d, iteration)


def log_points(run: TrialRun, distiller: ZeroShotDistiller, iteration: int) -> None:
    """2-D pseudo points of the generator (fixed noise) over the teacher's decision regions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..toy import decision_regions, plane_bounds

    info = distiller.info
    points = distiller.sample_images(POINTS_SHOWN).numpy() * info.std + info.mean
    bounds = plane_bounds(info, [points])
    regions = decision_regions(distiller.teacher, info, bounds, resolution=120)
    # 240 pixels: the width the report shows a row of images at (no rescaling)
    fig = Figure(figsize=(2.4, 2.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(regions, origin="lower", extent=bounds, cmap="Pastel1", interpolation="nearest")
    ax.scatter(points[:, 0], points[:, 1], s=7, c="black", edgecolors="white", linewidths=0.3)
    ax.set(xlim=bounds[:2], ylim=bounds[2:], xticks=[], yticks=[])
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, f"pseudo_iter{iteration:06d}.png")
        fig.savefig(p)
        run.log_file(p, names.IMAGES_ARTIFACT_DIR)


def wall_cost(wall_s: float, settings: WatchSettings, device: torch.device) -> dict[str, float]:
    """Cost of a run without the loop's counters (a KD+AT baseline): its wall seconds, their
    device-seconds and the peak memory."""
    return {
        names.COST_WALL_S: wall_s,
        names.COST_DEVICE_S: device_seconds(wall_s, settings.cpus, settings.gpus),
        names.COST_PEAK_MEM_MIB: peak_memory_mib(device),
    }


def cost_device_tag(settings: WatchSettings) -> dict[str, str]:
    """The tag that says what a trial's device-seconds count (CPU- or GPU-seconds)."""
    return {names.TAG_COST_DEVICE: device_kind(settings.cpus, settings.gpus)}
