"""The Ray Tune adapter: a thin function trainable over :class:`~zskt_ray.loop.ZeroShotDistiller`.

It only translates: config -> DistillConfig, loop reports -> ``tune.report`` with a checkpoint,
``tune.get_checkpoint()`` -> a resumed loop, and loop metrics -> the trial's MLflow run (through
:mod:`.tracking`). The final evaluation (validation and test accuracy, MTE with K and xi, student
weights, image grid) happens *before* the last report: code after it may never run.

A trial whose loss turns NaN/inf (``DivergenceError``) ends as *failed* with the reason, through a
last report (no retry: a diverged run would diverge again); any other exception tags the run with
the reason and re-raises so Tune's failure retries apply (the retry resumes from the checkpoint and
continues the same MLflow run; when Tune gives up, the driver ends the run FAILED).

A trial that the study's records (Optuna, MLflow) show as ended, but that a resumed experiment
restores as unfinished because Tune's state was saved before it ended, reports its stored result
and returns: it is never trained again (``TrialContext.ended``, filled by the runner).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ray import tune

from .. import names
from ..checkpoint import save_model, student_meta
from ..config import DistillConfig, KDATConfig, from_dict, to_dict
from ..data import load_dataset, make_loader
from ..loop import DivergenceError, ZeroShotDistiller
from ..models import build_model
from ..toy import frame_iterations
from ..utils import resolve_device
from .results import trial_label
from .spec import MTESpec, config_id
from .tracking import TrackingInfo, TrialRun

STATE_FILE = "state.pt"
RUN_ID_FILE = "mlflow_run_id.txt"
FINAL_FILE = "final.json"


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """Everything fixed for the trials of one Tune experiment (sent once via with_parameters)."""

    kind: str  # "search" | "final" | "kdat"
    base: dict[str, Any]  # DistillConfig (or KDATConfig for kdat) as a dict
    tracking: TrackingInfo
    teacher_state: dict[str, Any]  # state_dict of the teacher
    teacher_meta: dict[str, Any]
    mte: MTESpec
    image_grids: int  # evaluation.image_grids: pseudo-image grids logged over a run
    threads: int
    metric: str
    mode: str
    # Test hook: {"param": name, "value": v, "iteration": i} poisons the student's weights with
    # NaN at iteration i in trials whose ``param`` equals ``v``, so the real divergence check fires.
    fault: dict[str, Any] | None = None
    # Trials of a resumed experiment that had already ended (the study's records say so, while
    # Tune's saved state lags behind): trial id -> the last result, reported again without training.
    ended: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _device_note(name: str, device: torch.device) -> str:
    """Why a trial runs on another device than it asked for ("" when it runs where it asked)."""
    if name == "cpu" or device.type != "cpu":
        return ""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    return (
        f"asked for {name} (Ray assigned CUDA_VISIBLE_DEVICES={visible!r}) but torch sees no CUDA "
        "device on this node: running on the CPU"
    )


def _open_run(
    ctx: TrialContext,
    kind: str,
    trial_id: str,
    values: dict[str, Any],
    cid: str,
    asked: str,
    device: torch.device,
    run_id: str | None,
) -> TrialRun:
    """The trial's MLflow run, with a device note (tag and log line) when it fell back."""
    run = TrialRun.open(ctx.tracking, kind, trial_id, values, cid, str(device), run_id=run_id)
    note = _device_note(asked, device)
    if note:
        print(f"trial {trial_id}: {note}", flush=True)
        run.set_tags({names.TAG_DEVICE_NOTE: note})
    return run


def _save_student(
    run: TrialRun, student: torch.nn.Module, cfg: Any, info: Any, metrics: dict[str, Any]
) -> None:
    """The student as a zskt-ray model file (weights_only-loadable, usable by `zskt mte`)."""
    meta = student_meta(cfg, info, metrics)
    with tempfile.TemporaryDirectory() as d:
        run.log_file(save_model(student, meta, Path(d, "student.pt")), "student")


def _teacher(ctx: TrialContext, device: torch.device) -> torch.nn.Module:
    meta = ctx.teacher_meta
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"])
    model.load_state_dict(ctx.teacher_state)
    return model.to(device).eval().requires_grad_(False)


def _trial_id_and_config(config: dict[str, Any], ctx: TrialContext) -> tuple[str, DistillConfig]:
    values = dict(ctx.base)
    if ctx.kind == "search":
        values.update(config)
        trial_id = tune.get_context().get_trial_id() or "local"
    else:
        run = config.get("run", config)
        values.update(run["params"])
        values["seed"] = run["seed"]
        trial_id = trial_label("final", run["rank"], run["seed"])
    return trial_id, from_dict(DistillConfig, values)


def _image_iterations(cfg: DistillConfig, n: int) -> set[int]:
    """``n`` report iterations spread over training, always the first and the last."""
    points = sorted(
        set(range(cfg.eval_every, cfg.iterations + 1, cfg.eval_every)) | {cfg.iterations}
    )
    if n <= 0:
        return set()
    idx = np.unique(np.linspace(0, len(points) - 1, min(n, len(points))).round().astype(int))
    return {points[i] for i in idx}


GRID_MIN_SIZE = 32  # pixels per image in logged pseudo-image grids


def _log_grid(run: TrialRun, distiller: ZeroShotDistiller, iteration: int) -> None:
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
        run.log_file(p, "images")


def _scratch_dir() -> str | None:
    """The trial's working directory when Tune runs us there (Ray owns it), else the temp folder."""
    cwd = os.getcwd()
    return cwd if "working_dirs" in Path(cwd).parts and os.access(cwd, os.W_OK) else None


def _log_regions(run: TrialRun, distiller: ZeroShotDistiller, cfg: DistillConfig) -> None:
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


def _checkpoint(
    distiller: ZeroShotDistiller | None, run_id: str, final: dict | None = None
) -> tune.Checkpoint:
    d = tempfile.mkdtemp(prefix="zskt-ckpt-", dir=_scratch_dir())
    if distiller is not None:
        distiller.save_checkpoint(Path(d, STATE_FILE))
    Path(d, RUN_ID_FILE).write_text(run_id)
    if final is not None:
        Path(d, FINAL_FILE).write_text(json.dumps(final))
    return tune.Checkpoint.from_directory(d)


def _report(metrics: dict[str, Any], checkpoint: tune.Checkpoint | None) -> None:
    """Report; the checkpoint's scratch folder goes on every path (Tune persisted its own copy,
    or the trial is being stopped and will not need it)."""
    try:
        tune.report(metrics, checkpoint=checkpoint)
    finally:
        if checkpoint is not None and Path(checkpoint.path).name.startswith("zskt-ckpt-"):
            shutil.rmtree(checkpoint.path, ignore_errors=True)


def _restore() -> tuple[str | None, dict | None, str | None]:
    """(run id, final result, local copy of the loop state) from the trial's last checkpoint."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None, None, None
    with ckpt.as_directory() as d:
        run_id = (
            Path(d, RUN_ID_FILE).read_text().strip() if Path(d, RUN_ID_FILE).is_file() else None
        )
        final = (
            json.loads(Path(d, FINAL_FILE).read_text()) if Path(d, FINAL_FILE).is_file() else None
        )
        state = None
        if Path(d, STATE_FILE).is_file():
            fd, state = tempfile.mkstemp(prefix="zskt-state-", suffix=".pt", dir=_scratch_dir())
            os.close(fd)
            shutil.copy(Path(d, STATE_FILE), state)
    return run_id, final, state


def _replay(ctx: TrialContext, trial_id: str) -> bool:
    """A trial that had ended before the driver stopped reports its stored result and stops.

    It is neither trained again nor reopened in MLflow: the study's records (Optuna, MLflow) win
    over a Tune state saved before the trial ended.
    """
    result = ctx.ended.get(trial_id)
    if result is None:
        return False
    result = dict(result)
    result.setdefault(ctx.metric, 0.0 if ctx.mode == "max" else 1e30)  # Tune requires the metric
    result.setdefault(names.ITERATION, 0)
    _report(result, None)
    return True


def train_distill(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable for search trials and final re-runs."""
    torch.set_num_threads(max(1, ctx.threads))
    start = time.perf_counter()
    trial_id, cfg = _trial_id_and_config(config, ctx)
    if _replay(ctx, trial_id):
        return
    cid = config_id(cfg)
    device = resolve_device(cfg.device)  # the one device policy: CPU fallback, with a note
    run_id, final, state = _restore()
    run = _open_run(ctx, ctx.kind, trial_id, to_dict(cfg), cid, cfg.device, device, run_id)
    base = {names.RUN_ID: run.run_id, names.BUDGET: cfg.iterations, "config_id": cid}
    if final is not None:  # finished before the driver stopped: report the stored result again
        run.finish(names.COMPLETED)
        _report({**final, **base}, None)
        return
    metrics: dict[str, float] = {}
    iteration = 0
    try:
        splits = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
        val_loader = make_loader(splits.val, cfg.eval_batch_size, shuffle=False)
        # 2-D data: frames of the decision-region picture instead of pseudo-image grids.
        frames = (
            frame_iterations(cfg.iterations, max(2, ctx.image_grids))
            if not splits.info.is_image and ctx.image_grids > 0
            else ()
        )
        distiller = ZeroShotDistiller(
            cfg, _teacher(ctx, device), splits.info, val_loader, device, snapshot_at=frames
        )
        if state is not None:
            try:
                distiller.load_checkpoint(state)
            finally:
                os.unlink(state)
            run.set_tags({names.TAG_RESUMED_AT: distiller.iteration})  # retried or resumed
        iteration = distiller.iteration
        grids = _image_iterations(cfg, ctx.image_grids)
        poison = _fault_iteration(ctx, cfg)
        for report in distiller.run(until=poison):
            iteration = report.iteration
            metrics = report.metrics
            run.log_metrics(metrics, step=iteration)
            if iteration in grids and splits.info.is_image:
                _log_grid(run, distiller, iteration)
            result = {**metrics, names.ITERATION: iteration, **base, names.STATUS: "running"}
            if report.done:
                result.update(_final_evaluation(run, distiller, splits, ctx, cfg, start))
                result[names.STATUS] = names.COMPLETED
                run.finish(names.COMPLETED)
                _report(result, _checkpoint(None, run.run_id, final=_jsonable(result)))
                return
            _report(result, _checkpoint(distiller, run.run_id))
        if poison is not None:  # test hook: poison the weights, let the loop's own check fire
            with torch.no_grad():
                next(distiller.student.parameters()).fill_(float("nan"))
            for _ in distiller.run():
                pass
    except DivergenceError as e:
        reason = f"diverged: {e}"
        run.finish(names.FAILED, reason)
        worst = 0.0 if ctx.mode == "max" else 1e30
        value = metrics.get(ctx.metric, worst)
        _report(
            {
                **metrics,
                ctx.metric: value,
                names.ITERATION: iteration,
                **base,
                names.STATUS: names.FAILED,
                names.REASON: reason,
            },
            None,
        )
        return
    except Exception as e:  # SystemExit (Tune stopping the trial) is left to the driver
        # Not ended here: Tune may retry the trial (it continues this run); when Tune gives up,
        # the driver's CloseTrialRuns ends the run FAILED. A run ended here would be taken for a
        # finished trial by a resumed study.
        run.set_tags({names.TAG_REASON: _reason(e)})
        raise


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _fault_iteration(ctx: TrialContext, cfg: DistillConfig) -> int | None:
    f = ctx.fault
    if not f or getattr(cfg, f["param"]) != f["value"]:
        return None
    return int(f["iteration"])


def _final_evaluation(
    run: TrialRun,
    distiller: ZeroShotDistiller,
    splits: Any,
    ctx: TrialContext,
    cfg: DistillConfig,
    start: float,
) -> dict[str, float]:
    """Validation and test accuracy, MTE, student weights and config: logged, then returned."""

    test_loader = make_loader(splits.test, cfg.eval_batch_size, shuffle=False)
    out: dict[str, float] = {
        **distiller.final_metrics(test_loader),
        "teacher_test_acc": float(ctx.teacher_meta.get("test_acc", float("nan"))),
    }
    _log_student_results(
        run, distiller.student, distiller.teacher, splits, ctx, cfg, out, distiller.device
    )
    if distiller.snapshots:
        _log_regions(run, distiller, cfg)
    out["wall_time_s"] = time.perf_counter() - start
    run.log_metrics({k: v for k, v in out.items() if k != "val_acc"}, step=distiller.iteration)
    return out


def _log_student_results(
    run: TrialRun,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    splits: Any,
    ctx: TrialContext,
    cfg: Any,
    out: dict[str, float],
    device: torch.device,
) -> None:
    """MTE against the teacher (added to ``out``), transition curves, student file and config."""
    from ..mte import mean_transition_error

    if ctx.mte.enabled:
        res = mean_transition_error(
            student,
            teacher,
            splits.test,
            n_test=ctx.mte.n_test,
            k=ctx.mte.k,
            xi=ctx.mte.xi,
            seed=0,
            device=device,
        )
        out.update(
            {
                "mte": res.mte,
                "mte_k": float(res.k),
                "mte_xi": float(res.xi),
                "mte_n_test": float(res.n_test),
            }
        )
        run.log_json(res.to_dict(), "mte/transition_curves.json")
    _save_student(run, student, cfg, splits.info, out)
    run.log_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool)) or v is None}


# ------------------------------------------------------------------ KD+AT baseline


def train_kdat_baseline(config: dict[str, Any], ctx: TrialContext) -> None:
    """One KD+AT baseline run (few-shot or full data) with the same teacher, evaluated with MTE."""
    from ..kdat import train_kdat

    torch.set_num_threads(max(1, ctx.threads))
    start = time.perf_counter()
    cfg = from_dict(KDATConfig, {**ctx.base, "seed": config["seed"]})
    trial_id = trial_label("kdat", seed=cfg.seed)
    if _replay(ctx, trial_id):
        return
    device = resolve_device(cfg.device)  # the one device policy: CPU fallback, with a note
    run_id, final, _ = _restore()
    values = to_dict(cfg)
    run = _open_run(ctx, "kdat", trial_id, values, config_id(values), cfg.device, device, run_id)
    base = {names.RUN_ID: run.run_id, names.ITERATION: 1, names.BUDGET: 1}
    if final is not None:
        run.finish(names.COMPLETED)
        _report({**final, **base}, None)
        return
    try:
        teacher = _teacher(ctx, device)
        splits = load_dataset(
            cfg.dataset,
            cfg.data_root,
            download=cfg.download,
            augment=cfg.augment and cfg.dataset == "cifar10",
        )
        student, m = train_kdat(cfg, teacher, splits, log=None)
        out = {
            "val_acc": m["val_acc"],
            "test_acc": m["test_acc"],
            "epochs": float(m["epochs"]),
            "n_images": float(m["n_images"]),
            "teacher_test_acc": float(ctx.teacher_meta.get("test_acc", float("nan"))),
        }
        _log_student_results(run, student, teacher, splits, ctx, cfg, out, device)
        out["wall_time_s"] = time.perf_counter() - start
        run.log_metrics(out, step=int(m["epochs"]))
        result = {**out, **base, names.STATUS: names.COMPLETED}
        run.finish(names.COMPLETED)
        _report(result, _checkpoint(None, run.run_id, final=_jsonable(result)))
    except Exception as e:  # ended by the driver when Tune gives up (see train_distill)
        run.set_tags({names.TAG_REASON: _reason(e)})
        raise
