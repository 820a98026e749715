"""Running a study: teacher, tracking, the searched Tune experiment, final re-runs, baseline.

An ablation study runs its cells x seeds through the same machinery as a search: one Tune
experiment (``ablation``) driven by Optuna's grid over (cell, seed) (``space.DesignGrid``), no
scheduler, one MLflow run per trial; it has no final re-runs.

``run_study`` is idempotent: running the same study again resumes it. Each phase is its own Tune
experiment under ``<storage>/<study>/`` (``search``, ``final``, ``kdat``) and is restored with
``Tuner.restore`` when its state exists (finished trials are kept, unfinished ones continue from
their checkpoints). When a search's ``tuner.pkl`` is missing (a driver killed in its first
seconds), the search is re-created from the persistent Optuna study: finished trials count, and
trials left RUNNING are adopted by the searcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import names
from ..config import to_dict
from ..teacher import ensure_teacher, load_teacher
from ..utils import first_line
from . import costs, nodes, space, tracking
from .checkpoints import RepairRestoredCheckpoints
from .cluster import check_cluster_safe, forwarded_env, joins_cluster
from .errors import StudyError
from .lock import study_lock
from .objectives import chosen_line, search_objectives
from .preflight import preflight
from .results import final_rank, trial_label, worst_value
from .spec import StudySpec
from .trainable import TrialContext, train_distill, train_kdat_baseline
from .watch import WatchSettings

Log = Callable[[str], None]


class StudyInterrupted(RuntimeError):
    """The driver was interrupted (Ctrl-C); the state is saved, run the study again to resume."""


@dataclasses.dataclass
class StudyOutcome:
    name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    optuna_storage: str
    search_counts: dict[str, int]
    best: list[dict[str, Any]]
    final: list[dict[str, Any]]
    kdat: list[dict[str, Any]]
    summary: dict[str, Any]
    teacher_seconds: float
    wall_seconds: float


def _ensure_ray(address: str | None, env_vars: dict[str, str], log: Log) -> bool:
    """Start local Ray or join a cluster (``address`` or ``RAY_ADDRESS``); True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    with _own_sigterm():
        return _init_ray(address, env_vars, log)


@contextlib.contextmanager
def _own_sigterm() -> Iterator[None]:
    """Keep the caller's own SIGTERM handler: ``ray.init`` replaces it with ``sys.exit(15)``,
    which would end a study in the middle of Tune's loop instead of stopping it like Ctrl-C
    (``zskt study run``'s handler, :mod:`.cli`). Without one, Ray's stays (the runner treats its
    SystemExit as an interruption)."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)


def _init_ray(address: str | None, env_vars: dict[str, str], log: Log) -> bool:
    import ray

    runtime_env = {"env_vars": env_vars}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(
            address=address or os.environ["RAY_ADDRESS"],
            runtime_env=runtime_env,
            log_to_driver=True,
        )
        log(f"joined Ray cluster at {address or os.environ['RAY_ADDRESS']}")
    else:
        # "local": a new instance of our own. Without it ray.init() joins the local instance another
        # driver started (e.g. a second study at once), which that driver's ray.shutdown() kills.
        ray.init(
            address="local",
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=False,
        )
        log(f"started local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")
    return True


def _trial_ids(path: str) -> dict[str, str]:
    """Trial id -> Tune status of an experiment's saved state."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(path)
    except Exception:  # noqa: BLE001 - nothing saved yet
        return {}
    return {t.trial_id: t.status for t in analysis.trials}


def _run_config(spec: StudySpec, kind: str, info: tracking.TrackingInfo):
    """Where Tune keeps a phase's experiment (``spec.tune_dir(kind)``), and how trials end."""
    from ray import tune

    return tune.RunConfig(
        name=kind,
        storage_path=spec.study_dir,
        callbacks=[tracking.CloseTrialRuns(info, kind), RepairRestoredCheckpoints(kind)],
        failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=int(os.environ.get("ZSKT_TUNE_VERBOSE", "1")),
    )


def _run_grid(
    spec: StudySpec,
    trainable: Any,
    param_space: dict[str, Any],
    kind: str,
    info: tracking.TrackingInfo,
    log: Log,
    what: str,
) -> None:
    """A grid experiment (final re-runs, KD+AT baseline), restored when its state exists."""
    from ray import tune

    path = spec.tune_dir(kind)
    if tune.Tuner.can_restore(path):
        log(f"{what}: resuming from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=1,
                max_concurrent_trials=spec.final.max_concurrent,
                reuse_actors=True,
            ),
            run_config=_run_config(spec, kind, info),
        )
    tuner.fit()


def _check_finished(path: str, expected: int, what: str, name: str) -> dict[str, str]:
    ids = _trial_ids(path)
    unfinished = [t for t, s in ids.items() if s not in ("TERMINATED", "ERROR")]
    if unfinished or len(ids) < expected:
        raise StudyInterrupted(
            f"{what} of study {name!r} was interrupted ({len(ids) - len(unfinished)}/{expected} trials "
            f"finished); its state is saved: run `zskt study resume` (or the same run command) to continue"
        )
    return ids


def run_study(
    spec: StudySpec,
    address: str | None = None,
    log: Log = print,
    fault: dict[str, Any] | None = None,
) -> StudyOutcome:
    """Run (or resume) a study end to end and return what it found.

    Everything is checked before anything is created; then the study's lock is taken, so a second
    run of the same study is refused at once (:class:`~.lock.StudyLocked`, naming the holder).
    """
    check_cluster_safe(spec, address)  # on a cluster: no store only one node can see
    preflight(spec, cluster={"CPU": math.inf, "GPU": math.inf})  # teacher and data
    with study_lock(spec.name, spec.source):
        return _run_study(spec, address, log, fault)


@dataclasses.dataclass(frozen=True)
class _Teacher:
    """The study's teacher, ready to send to every trial."""

    state: dict[str, Any]
    meta: dict[str, Any]
    seconds: float


def _run_study(
    spec: StudySpec, address: str | None, log: Log, fault: dict[str, Any] | None
) -> StudyOutcome:
    t_start = time.perf_counter()
    tracking.experiment_env_cleanup()
    tracking.use_http_retry_defaults(spec.tracking_uri)
    on_cluster = joins_cluster(address)
    # On a cluster the teacher is trained by a Ray task where the GPUs are, once Ray is joined.
    teacher = None if on_cluster else _prepare_teacher(spec, log)
    study, info = _open_stores(spec, log)
    started = False
    try:
        env_vars = {**tracking.runtime_env_vars(spec.tracking_uri), **forwarded_env()}
        started = _ensure_ray(address, env_vars, log)
        _check_joined_resources(spec, address, log)
        _prepare_nodes(spec, log)
        if teacher is None:
            teacher = _prepare_teacher(spec, log, on_cluster=True)
        return _run_phases(spec, study, info, teacher, fault, log, t_start)
    except (StudyInterrupted, KeyboardInterrupt, SystemExit):  # SystemExit: SIGTERM under Ray
        closed = tracking.close_interrupted(info)
        if closed:
            log(
                f"interrupted: {len(closed)} trial runs in flight were marked interrupted in MLflow"
            )
        tracking.finish_study(info, {names.INTERRUPTED: "yes"}, status="KILLED")
        raise
    except Exception as e:  # a study that stops on an error leaves no run RUNNING
        reason = first_line(e, with_type=not isinstance(e, StudyError))
        closed = tracking.close_interrupted(info)
        tracking.fail_study(info, reason)
        log(
            f"study run failed ({reason}); {len(closed)} trial runs in flight were closed"
            if closed
            else f"study run failed: {reason}"
        )
        raise
    finally:
        _clean_nodes(spec, log)
        if started:
            import ray

            ray.shutdown()


def _run_phases(
    spec: StudySpec,
    study: Any,
    info: tracking.TrackingInfo,
    teacher: _Teacher,
    fault: dict[str, Any] | None,
    log: Log,
    t_start: float,
) -> StudyOutcome:
    """Search, final re-runs and baseline, then the study's summary on its MLflow run."""
    counts = _run_search(spec, study, info, teacher, fault, log)
    best, final_rows = _run_final(spec, study, info, teacher, log)
    kdat_rows = _run_kdat(spec, info, teacher, log)
    wall = time.perf_counter() - t_start
    summary = _summary(counts, best, final_rows, kdat_rows, teacher.seconds, wall)
    summary.update(costs.totals(info))  # the trials' device-seconds, from their runs
    tracking.finish_study(info, summary)
    for line in [*_summary_lines(spec, summary), summary[costs.COST_LINE]]:
        log(line)
    log(tracking.how_to_open(spec.tracking_uri, info.experiment_id))
    return StudyOutcome(
        spec.name,
        spec.tracking_uri,
        spec.experiment,
        info.parent_run_id,
        spec.optuna_storage,
        counts,
        best,
        final_rows,
        kdat_rows,
        summary,
        teacher.seconds,
        time.perf_counter() - t_start,
    )


def _prepare_teacher(spec: StudySpec, log: Log, on_cluster: bool = False) -> _Teacher:
    """The teacher from the store; a missing one is trained first under the store's lock: by the
    driver before Ray starts, or on a cluster by a Ray task with ``teacher.resources``."""
    t0 = time.perf_counter()
    train = None
    if on_cluster:
        resources = nodes.teacher_resources(
            spec.teacher.resources.cpus,
            spec.teacher.resources.gpus,
            spec.resources.cpus_per_trial,
            spec.resources.gpus_per_trial,
        )
        train = functools.partial(nodes.train_teacher_remotely, resources=resources)
    teacher_path = ensure_teacher(spec.teacher_config(), spec.teacher.path, log=log, train=train)
    teacher, meta = load_teacher(
        teacher_path, "cpu", expect_dataset=spec.dataset, expect_arch=spec.teacher.arch
    )
    seconds = time.perf_counter() - t0
    log(
        f"teacher {spec.teacher.arch} on {spec.dataset}: test {meta['test_acc']:.2f}% ({seconds:.1f} s)"
    )
    return _Teacher({k: v.detach().cpu() for k, v in teacher.state_dict().items()}, meta, seconds)


def _open_stores(spec: StudySpec, log: Log) -> tuple[Any, tracking.TrackingInfo]:
    """The Optuna study, then the MLflow study run. Optuna first: it refuses a changed study file
    before the MLflow study run is touched."""
    study = space.open_study(spec)
    searched = [p.name for p in spec.space]
    info = tracking.setup_study(
        spec.tracking_uri,
        spec.experiment,
        spec.name,
        spec.raw,
        searched,
        spec.mlflow.run_tags,
        spec.mlflow.max_outage_s,
    )
    log(
        f"study {spec.name!r}: Optuna storage {spec.optuna_storage}; results under "
        f"{spec.storage_path}/{spec.name}"
    )
    return study, info


def _prepare_nodes(spec: StudySpec, log: Log) -> None:
    """Before any trial: what killed workers of an earlier run left in the study's scratch
    folders is removed, and the data set is made readable on every node that runs trials."""
    nodes.clean_scratch(spec.name, spec.study_dir, log)
    nodes.prepare_data(
        spec.dataset,
        spec.data_root,
        spec.download,
        bool(spec.data_shared),
        min(spec.resources.cpus_per_trial, spec.final.cpus_per_trial),
        spec.gpus_per_trial,
        log,
    )


def _clean_nodes(spec: StudySpec, log: Log) -> None:
    """When a run ends, however it ends: the trials' leftover scratch folders (best effort)."""
    import ray

    if not ray.is_initialized():
        return
    try:
        nodes.clean_scratch(spec.name, spec.study_dir, log, timeout=30.0)
    except Exception as e:  # noqa: BLE001 - the next run cleans what is left
        log(f"scratch: not cleaned ({first_line(e, with_type=True)}); the next run does it")


def _check_joined_resources(spec: StudySpec, address: str | None, log: Log) -> None:
    """Resources of the Ray we run on; a cluster that may autoscale gets warnings instead."""
    import ray

    strict = address is None and not os.environ.get("RAY_ADDRESS")
    for w in preflight(spec, cluster=ray.cluster_resources(), strict=strict):
        log(f"warning: {w}")


def _trainable(
    spec: StudySpec,
    info: tracking.TrackingInfo,
    teacher: _Teacher,
    kind: str,
    fault: dict[str, Any] | None = None,
) -> Any:
    """The Tune trainable of one phase, with everything its trials share sent once."""
    from ray import tune

    if kind == names.KIND_KDAT:
        function, base = train_kdat_baseline, to_dict(spec.kdat_config(spec.kdat.seeds[0]))
    else:
        function, base = train_distill, to_dict(spec.base)
    if kind == names.KIND_FINAL:
        base["iterations"] = spec.final.iterations
    resources = spec.trial_resources(kind)
    ctx = TrialContext(
        kind=kind,
        base=base,
        tracking=info,
        teacher_state=teacher.state,
        teacher_meta=teacher.meta,
        mte=spec.mte(kind),
        image_grids=spec.evaluation.image_grids,
        threads=max(1, int(resources["cpu"])),
        metric=spec.scheduler_metric.metric,
        mode=spec.scheduler_metric.mode,
        objectives=search_objectives(spec, kind),
        fault=fault if kind == spec.trial_kind else None,
        ended=_ended(spec, info, kind),
        study_dir=spec.study_dir,
        cells={c["id"]: c for c in space.design_cells(spec)},
        watch=WatchSettings.of(spec, kind),
    )
    return tune.with_resources(tune.with_parameters(function, ctx=ctx), resources)


def _search_tuner(
    spec: StudySpec, study: Any, info: tracking.TrackingInfo, trainable: Any, log: Log
):
    """A new search experiment for the trials Optuna has not finished (None when none are left)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    counts = space.finished_counts(spec)
    done = sum(counts.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
    remaining = spec.num_trials - done
    if done:
        log(
            f"{spec.trial_kind}: no Tune state at {spec.experiment_dir}; {done} trials finished in Optuna, "
            f"{max(remaining, 0)} to go"
        )
    if remaining <= 0:
        return None
    if spec.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr=names.ITERATION,
            metric=spec.scheduler_metric.metric,
            mode=spec.scheduler_metric.mode,
            max_t=spec.base.iterations,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=space.StudySearcher(spec, study),
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=spec.resources.max_concurrent,
            reuse_actors=True,
        ),
        run_config=_run_config(spec, spec.trial_kind, info),
    )


def _run_search(
    spec: StudySpec,
    study: Any,
    info: tracking.TrackingInfo,
    teacher: _Teacher,
    fault: dict[str, Any] | None,
    log: Log,
) -> dict[str, int]:
    """The searched Tune experiment (restored when its state exists); Optuna trial counts."""
    from ray import tune

    path, kind = spec.experiment_dir, spec.trial_kind
    trainable = _trainable(spec, info, teacher, kind, fault)
    t_search = time.perf_counter()
    if tune.Tuner.can_restore(path):
        log(f"{kind}: resuming from {path}")
        tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True).fit()
    else:
        tuner = _search_tuner(spec, study, info, trainable, log)
        if tuner is not None:
            tuner.fit()
    ids = _trial_ids(path)
    unfinished = [t for t, s in ids.items() if s not in ("TERMINATED", "ERROR")]
    if unfinished:
        raise StudyInterrupted(
            f"{kind} of study {spec.name!r} was interrupted ({len(ids) - len(unfinished)}/{len(ids)} "
            "trials finished); its state is saved: run the same command (or `zskt study resume`) to continue"
        )
    space.fail_orphans(spec, set(ids))
    tracking.close_leftovers(info, set(ids) | _optuna_tune_ids(spec), kind)
    counts = space.finished_counts(spec)
    n_done = sum(counts.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
    if n_done < spec.num_trials:
        raise StudyInterrupted(
            f"{kind} of study {spec.name!r} stopped with {n_done}/{spec.num_trials} trials; run it again to continue"
        )
    log(
        f"{kind}: {n_done} trials ({counts.get('COMPLETE', 0)} completed, {counts.get('PRUNED', 0)} pruned, "
        f"{counts.get('FAIL', 0)} failed) in {time.perf_counter() - t_search:.0f} s"
    )
    return counts


def _run_final(
    spec: StudySpec, study: Any, info: tracking.TrackingInfo, teacher: _Teacher, log: Log
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded re-runs of the best configurations: ``(best, rows of the final runs)``."""
    from ray import tune

    best = _final_configs(spec, study)
    if not best:
        return best, []
    for b in best:
        log(f"{chosen_line(spec, b)} {b['params']} (trial {b['tune_trial_id']})")
    grid = [
        {"rank": b["rank"], "seed": s, "params": b["params"]}
        for b in best
        for s in spec.final.seeds
    ]
    trainable = _trainable(spec, info, teacher, names.KIND_FINAL)
    t_final = time.perf_counter()
    _run_grid(
        spec,
        trainable,
        {"run": tune.grid_search(grid)},
        names.KIND_FINAL,
        info,
        log,
        "final re-runs",
    )
    _check_finished(spec.final_dir, len(grid), "final re-runs", spec.name)
    labels = {trial_label(names.KIND_FINAL, g["rank"], g["seed"]) for g in grid}
    tracking.close_leftovers(info, labels, names.KIND_FINAL)
    rows = _rows(info, names.KIND_FINAL)
    log(f"final re-runs: {len(rows)} runs in {time.perf_counter() - t_final:.0f} s")
    return best, rows


def _run_kdat(
    spec: StudySpec, info: tracking.TrackingInfo, teacher: _Teacher, log: Log
) -> list[dict[str, Any]]:
    """The KD+AT baseline for the same pair, one run per seed (when the study enables it)."""
    from ray import tune

    if not spec.kdat.enabled:
        return []
    trainable = _trainable(spec, info, teacher, names.KIND_KDAT)
    _run_grid(
        spec,
        trainable,
        {"seed": tune.grid_search(list(spec.kdat.seeds))},
        names.KIND_KDAT,
        info,
        log,
        "KD+AT baseline",
    )
    _check_finished(spec.kdat_dir, len(spec.kdat.seeds), "KD+AT baseline", spec.name)
    labels = {trial_label(names.KIND_KDAT, seed=s) for s in spec.kdat.seeds}
    tracking.close_leftovers(info, labels, names.KIND_KDAT)
    return _rows(info, names.KIND_KDAT)


def _ended(spec: StudySpec, info: tracking.TrackingInfo, kind: str) -> dict[str, dict]:
    """Trials of a restored experiment that the study's records say have ended.

    Tune saves its experiment state periodically; a driver killed just after a trial completed,
    was pruned or failed restores that trial as still running and would train it again. Optuna
    and MLflow are written when the trial ends, so they win: a search trial finished in Optuna
    whose MLflow run is still open is closed with Optuna's verdict, and every ended trial reports
    its stored result again instead of training (see ``records.ended_result``).
    """
    from ray import tune

    if not tune.Tuner.can_restore(spec.tune_dir(kind)):
        return {}
    ended = tracking.ended_results(info, kind)
    if kind == spec.trial_kind:  # trials Optuna drives
        closed = False
        for tid, rec in space.finished_trials(spec).items():
            if tid in ended:
                continue
            run_id = rec["run_id"] or tracking.find_trial_run(info, tid)
            if run_id:
                tracking.finish_run(
                    info.tracking_uri, run_id, rec["status"], rec["reason"], info.max_outage_s
                )
                closed = True
            else:  # the trial never opened its run: Optuna's record is all there is
                metric, mode = spec.scheduler_metric
                ended[tid] = {
                    **rec["values"],
                    metric: rec["values"].get(metric, worst_value(mode)),
                    names.ITERATION: rec["iteration"],
                    names.BUDGET: spec.base.iterations,
                    names.STATUS: rec["status"],
                    names.REASON: rec["reason"],
                }
        if closed:
            ended = {**ended, **tracking.ended_results(info, kind)}
    return ended


def _optuna_tune_ids(spec: StudySpec) -> set[str]:
    study = space.open_study(spec, create=False)
    return {str(t.user_attrs.get(names.ATTR_TUNE_ID)) for t in study.get_trials(deepcopy=False)}


def _final_configs(spec: StudySpec, study) -> list[dict[str, Any]]:
    """Top-k configurations, chosen once and stored in the Optuna study (stable on resume)."""
    if spec.final.top_k == 0:
        return []
    stored = study.user_attrs.get(names.ATTR_FINAL_CONFIGS)
    if stored is not None:
        return stored
    best = space.best_configurations(spec, spec.final.top_k)
    if not best:
        raise StudyError(
            f"{spec.source}: no search trial completed, nothing to re-run (see the failed/pruned reasons in MLflow)"
        )
    study.set_user_attr(names.ATTR_FINAL_CONFIGS, best)
    return best


def _rows(info: tracking.TrackingInfo, kind: str) -> list[dict[str, Any]]:
    rows = []
    for run in tracking.study_trial_runs(info, kind):
        rows.append(
            {
                "trial_id": run.data.tags.get(names.TAG_TRIAL),
                "status": run.data.tags.get(names.TAG_STATUS),
                "config_id": run.data.tags.get(names.TAG_CONFIG_ID),
                "seed": run.data.params.get("seed"),
                **{k: v for k, v in run.data.metrics.items() if k in names.FINAL_METRICS},
            }
        )
    return sorted(rows, key=lambda r: str(r["trial_id"]))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _summary(counts, best, final_rows, kdat_rows, teacher_seconds, wall) -> dict[str, Any]:
    s: dict[str, Any] = {
        "trials_completed": counts.get("COMPLETE", 0),
        "trials_pruned": counts.get("PRUNED", 0),
        "trials_failed": counts.get("FAIL", 0),
        "teacher_seconds": teacher_seconds,
        "wall_time_s": wall,
    }
    if best:
        s["best_params"] = str(best[0]["params"])
        s["best_search_value"] = best[0]["value"]
        if "chosen" in best[0]:  # a multi-objective study: why its rank 0 was chosen
            s["best_chosen"] = best[0]["chosen"]
        top = [  # the best configuration's re-runs
            r
            for r in final_rows
            if final_rank(r["trial_id"]) == 0 and r["status"] == names.COMPLETED
        ]
        for key in ("test_acc", "val_acc", "mte"):
            m, sd = _mean_std([r[key] for r in top if key in r])
            s[f"final_{key}_mean"], s[f"final_{key}_std"] = m, sd
        s["final_runs"] = len(top)
    if kdat_rows:
        for key in ("test_acc", "mte"):
            m, sd = _mean_std([r[key] for r in kdat_rows if key in r])
            s[f"kdat_{key}_mean"], s[f"kdat_{key}_std"] = m, sd
    return s


def _summary_lines(spec: StudySpec, s: dict[str, Any]) -> list[str]:
    what = "search trials"
    if spec.design is not None:
        what = f"runs of {len(spec.design.cells)} cells x {len(spec.design.seeds)} seeds"
    lines = [
        f"study {spec.name}: {s['trials_completed']} completed, {s['trials_pruned']} pruned, "
        f"{s['trials_failed']} failed {what}; {s['wall_time_s']:.0f} s wall "
        f"(teacher {s['teacher_seconds']:.0f} s)"
    ]
    if spec.design is not None:
        lines.append(
            f"`zskt report {spec.source or spec.name}` gives each cell's interval over seeds and "
            "the paired comparisons"
        )
    if "final_test_acc_mean" in s:
        which = (
            f"front configuration #0 ({s['best_chosen']})"
            if "best_chosen" in s
            else "best configuration"
        )
        lines.append(
            f"{which} {s['best_params']}: test accuracy {s['final_test_acc_mean']:.2f} "
            f"+- {s['final_test_acc_std']:.2f}% over {s['final_runs']} seeds; MTE {s['final_mte_mean']:.4f} "
            f"(K={spec.mte_final.k}, xi={spec.mte_final.xi:g}, n_test<={spec.mte_final.n_test})"
        )
    if "kdat_test_acc_mean" in s:
        lines.append(
            f"KD+AT baseline: test accuracy {s['kdat_test_acc_mean']:.2f}%, MTE {s['kdat_mte_mean']:.4f}"
        )
    return lines
