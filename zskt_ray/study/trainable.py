"""The Ray Tune function trainables: build, restore, loop, report, checkpoint.

:func:`train_distill` (search trials and final re-runs) reads like Ray's own examples:

1. build: the trial's :class:`~zskt_ray.config.DistillConfig`, its device, the teacher, the data
   and a :class:`~zskt_ray.loop.ZeroShotDistiller`;
2. restore: the loop's state from ``tune.get_checkpoint()`` (a trial Tune retries, or resumes);
3. loop: ``distiller.run()`` yields a report every ``eval_every`` iterations;
4. report and checkpoint: ``tune.report(metrics, checkpoint=...)``. The final evaluation
   (validation and test accuracy, MTE with K and xi) comes *before* the last report: code after
   it may never run.

What the trial leaves in MLflow (metrics, pseudo-image grids, the student file, MTE curves,
config, results) is logged by :mod:`.records`; the trainable only says when.

A trial whose loss turns NaN/inf (``DivergenceError``) ends as *failed* with the reason, through a
last report (no retry: a diverged run would diverge again); any other exception tags the run with
the reason and re-raises so Tune's failure retries apply (the retry resumes from the checkpoint and
continues the same MLflow run; when Tune gives up, the driver ends the run FAILED). A trial the
study's records show as ended (``TrialContext.ended``, filled by the runner) reports its stored
result and returns: it is never trained again.

Data: a trial makes sure its data set is on its node (:func:`~zskt_ray.data.prepare_dataset`: a
no-op where the study prepared it before the trials; a download behind the data root's lock on a
node that joined later, when the study downloads), then reads it with ``download=False``.

Temporary folders (a checkpoint handed to Tune, a copy of the state being restored) live in the
study's scratch folder on the node (:func:`~zskt_ray.paths.study_scratch_dir`) and are removed on
every path the trial controls; a worker killed mid-report can leave one, which the next run of the
study removes (:mod:`.nodes`).
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

import torch
from ray import tune

from .. import names
from ..audit import AuditError, GuardedLoader
from ..config import DistillConfig, KDATConfig, from_dict
from ..cost import reset_peak_memory
from ..data import load_dataset, make_loader, prepare_dataset
from ..loop import DivergenceError, ZeroShotDistiller
from ..models import build_model
from ..paths import study_scratch_dir
from ..toy import frame_iterations
from ..utils import first_line, resolve_device
from . import faults, records
from .objectives import with_placeholders
from .results import trial_label, worst_value
from .schema import MTESection
from .spec import config_id
from .tracking import TrackingInfo, TrackingUnavailable, TrialRun, system_metrics
from .watch import TrialWatch, Unhealthy, WatchSettings, cost_device_tag, failure_reason, wall_cost

STATE_FILE = "state.pt"
RUN_ID_FILE = "mlflow_run_id.txt"
FINAL_FILE = "final.json"


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """Everything fixed for the trials of one Tune experiment (sent once via with_parameters)."""

    kind: str  # names.KIND_SEARCH, KIND_ABLATION, KIND_FINAL or KIND_KDAT
    base: dict[str, Any]  # DistillConfig (or KDATConfig for kdat) as a dict
    tracking: TrackingInfo
    teacher_state: dict[str, Any]  # state_dict of the teacher
    teacher_meta: dict[str, Any]
    mte: MTESection
    image_grids: int  # evaluation.image_grids: pseudo-image grids logged over a run
    threads: int
    metric: str  # the metric the scheduler judges (a result always holds it)
    mode: str
    # A multi-objective study's search objectives: every report holds each (NaN until measured).
    objectives: tuple[str, ...] = ()
    # Test hooks (:mod:`.faults`): {"param": name, "value": v, "iteration": i} poisons the
    # student's weights with NaN at iteration i in trials whose ``param`` equals ``v``, so the real
    # divergence check fires; other kinds provoke a collapse, a failed audit, a test-split read.
    fault: dict[str, Any] | list[dict[str, Any]] | None = None
    # Trials of a resumed experiment that had already ended (the study's records say so, while
    # Tune's saved state lags behind): trial id -> the last result, reported again without training.
    ended: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # An ablation's cells: id -> {"id", "label", "control", "settings"} (space.design_cells).
    cells: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # The health rule, what a flagged trial does, the allocation cost is counted in (.watch).
    watch: WatchSettings = WatchSettings()
    # The study's storage folder (``spec.study_dir``): with the study's name it names the study's
    # scratch folder on each node (paths.study_scratch_dir). Empty: the temp folder.
    study_dir: str = ""

    def scratch(self) -> str:
        """This node's scratch folder of the study (created, private to the user)."""
        if not self.study_dir:
            return tempfile.gettempdir()
        d = study_scratch_dir(self.tracking.study, self.study_dir)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(d)


@dataclasses.dataclass(frozen=True)
class _Restored:
    """What the trial's last checkpoint holds."""

    run_id: str | None = None  # the trial's MLflow run, continued
    final: dict[str, Any] | None = None  # the result of a trial that had finished
    state: str | None = None  # a local copy of the loop's state


# ------------------------------------------------------------------ the trainables


def train_distill(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable for search trials and final re-runs."""
    torch.set_num_threads(max(1, ctx.threads))
    start = time.perf_counter()
    trial_id, cfg = _trial_config(config, ctx)
    stored = records.ended_result(ctx.ended, trial_id, ctx.metric, ctx.mode)
    if stored is not None:  # ended before the driver stopped: report it again, do not train
        _report(stored, None, ctx.objectives)
        return
    cid = config_id(cfg)
    device = resolve_device(cfg.device)  # the one device policy: CPU fallback, with a note
    reset_peak_memory(device)  # a reused worker: this trial's peak, not an earlier one's
    restored = _restore(ctx.scratch())
    try:
        run = records.open_run(ctx.tracking, ctx.kind, trial_id, cfg, cid, device, restored.run_id)
        if ctx.kind == names.KIND_ABLATION:
            records.tag_cell(run, ctx.cells[config[names.PARAM_CELL]], trial_id, cfg.seed)
        keys = {names.RUN_ID: run.run_id, names.BUDGET: cfg.iterations, names.CONFIG_ID: cid}
        if restored.final is not None:  # finished before the driver stopped: report it again
            run.finish(names.COMPLETED)
            _report({**restored.final, **keys}, None, ctx.objectives)
            return
        try:
            with system_metrics(ctx.tracking, run.run_id, ctx.watch.system_metrics):
                distiller, splits = _build(cfg, ctx, device)  # build
                if restored.state is not None:  # restore
                    _load_state(distiller, restored.state, run)
                _train(distiller, splits, cfg, ctx, run, keys, start)  # loop, report, checkpoint
        except Exception as e:  # SystemExit (Tune stopping the trial) is left to the driver
            # Not ended here: Tune may retry the trial (it continues this run); when Tune gives
            # up, the driver's CloseTrialRuns ends the run FAILED. A run ended here would be taken
            # for a finished trial by a resumed study.
            _tag_reason(run, e)
            raise
    finally:  # the state's local copy, whatever ended the trial
        if restored.state is not None:
            Path(restored.state).unlink(missing_ok=True)


def train_kdat_baseline(config: dict[str, Any], ctx: TrialContext) -> None:
    """One KD+AT baseline run (few-shot or full data) with the same teacher, evaluated with MTE."""
    from ..kdat import train_kdat

    torch.set_num_threads(max(1, ctx.threads))
    start = time.perf_counter()
    cfg = from_dict(KDATConfig, {**ctx.base, "seed": config["seed"]})
    trial_id = trial_label(names.KIND_KDAT, seed=cfg.seed)
    stored = records.ended_result(ctx.ended, trial_id, ctx.metric, ctx.mode)
    if stored is not None:
        _report(stored, None)
        return
    device = resolve_device(cfg.device)  # the one device policy: CPU fallback, with a note
    reset_peak_memory(device)
    restored = _restore(ctx.scratch())
    cid = config_id(cfg)
    run = records.open_run(ctx.tracking, ctx.kind, trial_id, cfg, cid, device, restored.run_id)
    keys = {names.RUN_ID: run.run_id, names.ITERATION: 1, names.BUDGET: 1}
    if restored.final is not None:
        run.finish(names.COMPLETED)
        _report({**restored.final, **keys}, None)
        return
    try:
        teacher = _teacher(ctx, device)
        augment = cfg.augment and cfg.dataset == "cifar10"
        splits = _open_data(cfg, augment=augment)
        student, m = train_kdat(cfg, teacher, splits, log=None)
        out = {
            names.VAL_ACC: m["val_acc"],
            names.TEST_ACC: m["test_acc"],
            "epochs": float(m["epochs"]),
            "n_images": float(m["n_images"]),
            "teacher_test_acc": _teacher_test_acc(ctx),
        }
        curves = _mte(student, teacher, splits.test, ctx.mte, device, out)
        records.log_results(run, student, cfg, splits.info, out, curves)
        out["wall_time_s"] = time.perf_counter() - start
        out.update(wall_cost(out["wall_time_s"], ctx.watch, device))  # the whole trial's
        run.set_tags(cost_device_tag(ctx.watch))
        run.log_metrics(out, step=int(m["epochs"]))
        result = {**out, **keys, names.STATUS: names.COMPLETED}
        run.finish(names.COMPLETED)
        _report(result, _checkpoint(ctx, None, run.run_id, final=_jsonable(result)))
    except Exception as e:  # ended by the driver when Tune gives up (see train_distill)
        _tag_reason(run, e)
        raise


# ------------------------------------------------------------------ build and restore


def _trial_config(config: dict[str, Any], ctx: TrialContext) -> tuple[str, DistillConfig]:
    """The trial's id and loop config: searched values, an ablation cell's settings and seed, or
    a final re-run's rank and seed."""
    values = dict(ctx.base)
    if ctx.kind == names.KIND_SEARCH:
        values.update(config)
        trial_id = tune.get_context().get_trial_id() or "local"
    elif ctx.kind == names.KIND_ABLATION:
        values.update(ctx.cells[config[names.PARAM_CELL]]["settings"])
        values["seed"] = config[names.PARAM_SEED]
        trial_id = tune.get_context().get_trial_id() or "local"
    else:
        run = config.get("run", config)
        values.update(run["params"])
        values["seed"] = run["seed"]
        trial_id = trial_label(names.KIND_FINAL, run["rank"], run["seed"])
    return trial_id, from_dict(DistillConfig, values)


def _open_data(cfg: Any, augment: bool = False) -> Any:
    """The trial's data splits, read with ``download=False`` once the data set is on this node."""
    prepare_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    return load_dataset(cfg.dataset, cfg.data_root, download=False, augment=augment)


def _tag_reason(run: TrialRun, e: BaseException) -> None:
    """Why the trial stopped, on its run; not when the tracking server is what is missing (the
    tag would wait for it once more)."""
    if not isinstance(e, TrackingUnavailable):
        run.set_tags({names.TAG_REASON: first_line(e, with_type=True)})


def _teacher(ctx: TrialContext, device: torch.device) -> torch.nn.Module:
    meta = ctx.teacher_meta
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"])
    model.load_state_dict(ctx.teacher_state)
    return model.to(device).eval().requires_grad_(False)


def _teacher_test_acc(ctx: TrialContext) -> float:
    return float(ctx.teacher_meta.get("test_acc", float("nan")))


def _build(
    cfg: DistillConfig, ctx: TrialContext, device: torch.device
) -> tuple[ZeroShotDistiller, Any]:
    """The distiller and the data splits (validation for reports, test for the end)."""
    splits = _open_data(cfg)
    val_loader = make_loader(splits.val, cfg.eval_batch_size, shuffle=False)
    # 2-D data: frames of the decision-region picture instead of pseudo-image grids.
    frames = (
        frame_iterations(cfg.iterations, max(2, ctx.image_grids))
        if not splits.info.is_image and ctx.image_grids > 0
        else ()
    )
    distiller = ZeroShotDistiller(
        cfg,
        _teacher(ctx, device),
        splits.info,
        val_loader,
        device,
        snapshot_at=frames,
        health=ctx.watch.rule,
    )
    faults.before_training(ctx.fault, cfg, distiller)  # test hooks; nothing without a fault
    return distiller, splits


def _load_state(distiller: ZeroShotDistiller, state: str, run: TrialRun) -> None:
    """Continue from a checkpoint's loop state (the local copy is removed)."""
    try:
        distiller.load_checkpoint(state)
    finally:
        os.unlink(state)
    run.set_tags({names.TAG_RESUMED_AT: distiller.iteration})  # retried or resumed


def _restore(scratch: str) -> _Restored:
    """What the trial's last checkpoint holds (nothing for a trial's first start); the loop state
    is copied into ``scratch`` (the caller removes the copy)."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return _Restored()
    with ckpt.as_directory() as d:
        files = {name: Path(d, name) for name in (RUN_ID_FILE, FINAL_FILE, STATE_FILE)}
        run_id = files[RUN_ID_FILE].read_text().strip() if files[RUN_ID_FILE].is_file() else None
        final = json.loads(files[FINAL_FILE].read_text()) if files[FINAL_FILE].is_file() else None
        state = None
        if files[STATE_FILE].is_file():
            fd, state = tempfile.mkstemp(
                prefix=names.SCRATCH_STATE_PREFIX, suffix=".pt", dir=scratch
            )
            os.close(fd)
            try:
                shutil.copy(files[STATE_FILE], state)
            except BaseException:
                os.unlink(state)
                raise
    return _Restored(run_id, final, state)


# ------------------------------------------------------------------ loop and evaluation


def _train(
    distiller: ZeroShotDistiller,
    splits: Any,
    cfg: DistillConfig,
    ctx: TrialContext,
    run: TrialRun,
    keys: dict[str, Any],
    start: float,
) -> None:
    """The loop: a report with a checkpoint every ``eval_every`` iterations; the last report
    after the final evaluation. A diverged loop, a failed audit or (with ``health.stop``) a
    flagged trial ends the trial failed, through a last report."""
    grids = records.image_iterations(cfg, ctx.image_grids)
    poison = faults.nan_iteration(ctx.fault, cfg)
    watch = TrialWatch(run, distiller, grids, ctx.watch)
    metrics: dict[str, float] = {}
    iteration = distiller.iteration
    try:
        for report in distiller.run(until=poison):
            iteration, metrics = report.iteration, report.metrics
            watch.report(report)  # metrics, grids, health tags, cost_device_s; may stop
            result = {**metrics, names.ITERATION: iteration, **keys, names.STATUS: names.RUNNING}
            if report.done:
                result.update(_final_evaluation(run, distiller, splits, ctx, cfg, start))
                result.update(watch.cost())  # the final evaluation is the trial's cost too
                result[names.STATUS] = names.COMPLETED
                run.finish(names.COMPLETED)
                final = _checkpoint(ctx, None, run.run_id, final=_jsonable(result))
                _report(result, final, ctx.objectives)
                return
            _report(result, _checkpoint(ctx, distiller, run.run_id), ctx.objectives)
        if poison is not None:  # test hook: poison the weights, let the loop's own check fire
            faults.poison(distiller)
            for _ in distiller.run():
                pass
    except (DivergenceError, AuditError, Unhealthy) as e:  # a retry would end the same way
        reason = failure_reason(e, run)
        metrics = {**metrics, **watch.cost()}
        run.finish(names.FAILED, reason)
        value = metrics.get(ctx.metric, worst_value(ctx.mode))
        result = {**metrics, ctx.metric: value, names.ITERATION: iteration, **keys}
        failed = {**result, names.STATUS: names.FAILED, names.REASON: reason}
        _report(failed, None, ctx.objectives)


def _final_evaluation(
    run: TrialRun,
    distiller: ZeroShotDistiller,
    splits: Any,
    ctx: TrialContext,
    cfg: DistillConfig,
    start: float,
) -> dict[str, float]:
    """The end of a run, recorded with the student, config and pictures: validation and test
    accuracy and test MTE for final re-runs; validation accuracy and validation MTE for search
    trials, which select configurations and so never read a test image."""
    student, teacher = distiller.student, distiller.teacher
    test_loader = _test_loader(ctx, splits, cfg)
    if ctx.kind == names.KIND_SEARCH:
        faults.read_test(ctx.fault, cfg, distiller, test_loader)  # test hook: a careless read
        out = {names.VAL_ACC: distiller.evaluate(), "iterations_done": float(distiller.iteration)}
        curves = _val_mte(student, teacher, splits, ctx.mte, distiller.device, out)
    else:
        out = distiller.final_metrics(test_loader)
        curves = _mte(student, teacher, splits.test, ctx.mte, distiller.device, out)
    out["teacher_test_acc"] = _teacher_test_acc(ctx)  # the teacher file's record, not a test read
    records.log_results(run, student, cfg, splits.info, out, curves)
    if distiller.snapshots:
        records.log_regions(run, distiller, cfg)
    out["wall_time_s"] = time.perf_counter() - start
    records.log_final_metrics(run, out, step=distiller.iteration)
    return out


def _test_loader(ctx: TrialContext, splits: Any, cfg: DistillConfig) -> Any:
    """The test split's loader. A search trial gets it guarded: reading it fails the trial with a
    one-line error (``SplitReadError``), so no test image can steer the search."""
    loader = make_loader(splits.test, cfg.eval_batch_size, shuffle=False)
    if ctx.kind == names.KIND_SEARCH:
        return GuardedLoader(
            loader,
            "search trials select configurations on validation data; test accuracy and MTE "
            "come from the final re-runs",
        )
    return loader


def _mte(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    test_set: Any,
    mte: MTESection,
    device: torch.device,
    out: dict[str, float],
) -> dict[str, Any] | None:
    """MTE of the student against the teacher, added to ``out``; its transition curves (None when
    the phase computes no MTE)."""
    if not mte.enabled:
        return None
    from ..mte import mean_transition_error

    res = mean_transition_error(
        student, teacher, test_set, n_test=mte.n_test, k=mte.k, xi=mte.xi, seed=0, device=device
    )
    out.update(
        {
            names.MTE: res.mte,
            "mte_k": float(res.k),
            "mte_xi": float(res.xi),
            "mte_n_test": float(res.n_test),
        }
    )
    return res.to_dict()


def _val_mte(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    splits: Any,
    mte: MTESection,
    device: torch.device,
    out: dict[str, float],
) -> dict[str, Any] | None:
    """MTE on validation images (``val_mte`` with its K, xi and N), added to ``out``; the
    transition curves, marked as validation curves (None when the phase computes no MTE)."""
    if not mte.enabled:
        return None
    from ..mte import validation_mte

    res = validation_mte(
        student, teacher, splits, n_val=mte.n_test, k=mte.k, xi=mte.xi, seed=0, device=device
    )
    k, xi, n = names.VAL_MTE_PARAMS
    out.update({names.VAL_MTE: res.mte, k: float(res.k), xi: float(res.xi), n: float(res.n_test)})
    return {**res.to_dict(), "split": "val"}


# ------------------------------------------------------------------ reports and checkpoints


def _checkpoint(
    ctx: TrialContext, distiller: ZeroShotDistiller | None, run_id: str, final: dict | None = None
) -> tune.Checkpoint:
    """A checkpoint folder in the study's scratch folder (removed again if writing it fails)."""
    d = tempfile.mkdtemp(prefix=names.SCRATCH_CHECKPOINT_PREFIX, dir=ctx.scratch())
    try:
        if distiller is not None:
            distiller.save_checkpoint(Path(d, STATE_FILE))
        Path(d, RUN_ID_FILE).write_text(run_id)
        if final is not None:
            Path(d, FINAL_FILE).write_text(json.dumps(final))
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return tune.Checkpoint.from_directory(d)


def _report(
    metrics: dict[str, Any], checkpoint: tune.Checkpoint | None, objectives: tuple[str, ...] = ()
) -> None:
    """Report (with a NaN for each of ``objectives`` not measured yet: Tune requires them all);
    the checkpoint's scratch folder goes on every path (Tune persisted its own copy, or the trial
    is being stopped and will not need it)."""
    try:
        tune.report(with_placeholders(metrics, objectives), checkpoint=checkpoint)
    finally:
        if checkpoint is not None and Path(checkpoint.path).name.startswith(
            names.SCRATCH_CHECKPOINT_PREFIX
        ):
            shutil.rmtree(checkpoint.path, ignore_errors=True)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool)) or v is None}
