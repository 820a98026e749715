"""What a trial leaves in its MLflow run, logged through :class:`~.tracking.TrialRun`.

The trainable trains and reports; this module records: the run opened (or reopened) for the trial,
with a note when the trial runs on another device than it asked for; the loop's metrics at every
report and pseudo-image grids spread over training; at the end the MTE transition curves, the
student file, the config, the toy problem's decision-region picture and the final metrics. It also
holds the study's record of trials that had already ended when a resumed experiment restores them
as unfinished (:func:`ended_result`): such a trial reports that result again instead of training.

No MLflow import here: every call goes through ``TrialRun`` (:mod:`.tracking`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .. import names
from ..checkpoint import save_model, student_meta
from ..config import DistillConfig, to_dict
from ..loop import EvalReport, ZeroShotDistiller
from .results import worst_value
from .tracking import TrackingInfo, TrialRun

GRID_MIN_SIZE = 32  # pixels per image in logged pseudo-image grids


def open_run(
    info: TrackingInfo,
    kind: str,
    trial_id: str,
    cfg: Any,
    cid: str,
    device: torch.device,
    run_id: str | None,
) -> TrialRun:
    """The trial's MLflow run (its config as params), with a device note (tag and log line) when
    it fell back to another device than ``cfg.device``."""
    run = TrialRun.open(info, kind, trial_id, to_dict(cfg), cid, str(device), run_id=run_id)
    note = device_note(cfg.device, device)
    if note:
        print(f"trial {trial_id}: {note}", flush=True)
        run.set_tags({names.TAG_DEVICE_NOTE: note})
    return run


def tag_cell(run: TrialRun, cell: Mapping[str, Any], trial_id: str, seed: int) -> None:
    """An ablation run's cell (stable id and label) as tags, and a run name that says which
    cell and seed it is (``ablation 3: beta=0, n_s=5, seed 1``)."""
    number = trial_id.rsplit("_", 1)[-1]
    head = f"{names.KIND_ABLATION} {int(number) if number.isdigit() else trial_id}"
    run.set_tags(
        {
            names.TAG_CELL: cell["id"],
            names.TAG_CELL_LABEL: cell["label"],
            names.TAG_RUN_NAME: f"{head}: {cell['label']}, seed {seed}",
        }
    )


def device_note(name: str, device: torch.device) -> str:
    """Why a trial runs on another device than it asked for ("" when it runs where it asked)."""
    if name == "cpu" or device.type != "cpu":
        return ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    return (
        f"asked for {name} (Ray assigned CUDA_VISIBLE_DEVICES={visible!r}) but torch sees no CUDA "
        "device on this node: running on the CPU"
    )


def ended_result(
    ended: Mapping[str, Mapping[str, Any]], trial_id: str, metric: str, mode: str
) -> dict[str, Any] | None:
    """The stored last result of a trial the study's records (Optuna, MLflow) show as ended,
    ready to report again; None for a trial to train. Tune requires the objective in a result:
    a trial that ended without one reports the worst value."""
    result = ended.get(trial_id)
    if result is None:
        return None
    return {metric: worst_value(mode), names.ITERATION: 0, **result}


# ------------------------------------------------------------------ during training


def image_iterations(cfg: DistillConfig, n: int) -> set[int]:
    """``n`` report iterations spread over training, always the first and the last."""
    points = sorted(
        set(range(cfg.eval_every, cfg.iterations + 1, cfg.eval_every)) | {cfg.iterations}
    )
    if n <= 0:
        return set()
    idx = np.unique(np.linspace(0, len(points) - 1, min(n, len(points))).round().astype(int))
    return {points[i] for i in idx}


def log_report(
    run: TrialRun, distiller: ZeroShotDistiller, report: EvalReport, grids: set[int]
) -> None:
    """A loop report's metrics, and a pseudo-image grid at the chosen iterations."""
    run.log_metrics(report.metrics, step=report.iteration)
    if report.iteration in grids and distiller.info.is_image:
        log_grid(run, distiller, report.iteration)


def log_grid(run: TrialRun, distiller: ZeroShotDistiller, iteration: int) -> None:
    """64 pseudo images of the generator, denormalised, as one PNG grid."""
    from torchvision.utils import save_image

    info = distiller.info
    x = distiller.sample_images(64)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    x = (x * std + mean).clamp(0, 1)
    # Small images (digits: 8x8) are enlarged pixel by pixel so the grid can be looked at.
    scale = max(1, GRID_MIN_SIZE // info.image_size)
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, f"pseudo_iter{iteration:06d}.png")
        save_image(x, p, nrow=8, padding=2)
        run.log_file(p, names.IMAGES_ARTIFACT_DIR)


# ------------------------------------------------------------------ at the end


def log_regions(run: TrialRun, distiller: ZeroShotDistiller, cfg: DistillConfig) -> None:
    """The toy problem's decision-region picture (PNG strip and GIF) of this trial."""
    from ..toy import draw_regions

    with tempfile.TemporaryDirectory() as d:
        result = draw_regions(
            distiller.teacher,
            cfg.student_arch,
            distiller.info,
            distiller.snapshots,
            Path(d, names.REGIONS_PNG),
            Path(d, names.REGIONS_GIF),
            title=f"{cfg.teacher_arch} -> {cfg.student_arch} on {cfg.dataset}, seed {cfg.seed}",
        )
        run.log_file(result["png"], names.IMAGES_ARTIFACT_DIR)
        run.log_file(result["gif"], names.IMAGES_ARTIFACT_DIR)


def log_results(
    run: TrialRun,
    student: torch.nn.Module,
    cfg: Any,
    info: Any,
    metrics: Mapping[str, Any],
    curves: Mapping[str, Any] | None,
) -> None:
    """MTE transition curves (when computed), the student file and the run's config."""
    if curves is not None:
        run.log_json(dict(curves), names.TRANSITION_CURVES_ARTIFACT)
    meta = student_meta(cfg, info, dict(metrics))
    with tempfile.TemporaryDirectory() as d:  # weights_only-loadable, usable by `zskt mte`
        path = save_model(student, meta, Path(d, names.STUDENT_FILE))
        run.log_file(path, names.STUDENT_ARTIFACT_DIR)
    run.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), names.CONFIG_FILE)


def log_final_metrics(run: TrialRun, metrics: Mapping[str, Any], step: int) -> None:
    """The evaluation's results at the last step (the validation accuracy is already there)."""
    run.log_metrics({k: v for k, v in metrics.items() if k != names.VAL_ACC}, step=step)
