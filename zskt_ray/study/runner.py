"""Running a study: teacher, tracking, the searched Tune experiment, final re-runs, baseline.

``run_study`` is idempotent: running the same study again resumes it. Each phase is its own Tune
experiment under ``<storage>/<study>/`` (``search``, ``final``, ``kdat``) and is restored with
``Tuner.restore`` when its state exists (finished trials are kept, unfinished ones continue from
their checkpoints). When a search's ``tuner.pkl`` is missing (a driver killed in its first
seconds), the search is re-created from the persistent Optuna study: finished trials count, and
trials left RUNNING are adopted by the searcher.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import names
from ..config import to_dict
from ..teacher import ensure_teacher, load_teacher
from . import space, tracking
from .cluster import check_cluster_safe, forwarded_env
from .results import trial_label
from .spec import StudyError, StudySpec, preflight
from .trainable import TrialContext, train_distill, train_kdat_baseline

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
    runtime_env = {"env_vars": env_vars}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(
            address=address or os.environ["RAY_ADDRESS"],
            runtime_env=runtime_env,
            log_to_driver=True,
        )
        log(f"joined Ray cluster at {address or os.environ['RAY_ADDRESS']}")
    else:
        # "local": a new local Ray even where `ray start` left an address in
        # /tmp/ray/ray_current_cluster (a plain ray.init() would join that cluster unchecked)
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


def _resources(spec: StudySpec, cpus: float | None = None) -> dict[str, float]:
    return {"cpu": spec.cpus_per_trial if cpus is None else cpus, "gpu": spec.gpus_per_trial}


def _run_config(spec: StudySpec, name: str, info: tracking.TrackingInfo, max_failures: int):
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(Path(spec.storage_path, spec.name))
        if "://" not in spec.storage_path
        else f"{spec.storage_path.rstrip('/')}/{spec.name}",
        callbacks=[tracking.CloseTrialRuns(info)],
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=int(os.environ.get("ZSKT_TUNE_VERBOSE", "1")),
    )


def _run_grid(
    spec: StudySpec,
    trainable: Any,
    param_space: dict[str, Any],
    name: str,
    path: str,
    info: tracking.TrackingInfo,
    log: Log,
    what: str,
) -> None:
    """A grid experiment (final re-runs, KD+AT baseline), restored when its state exists."""
    from ray import tune

    if tune.Tuner.can_restore(path):
        log(f"{what}: resuming from {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=1,
                max_concurrent_trials=spec.final_max_concurrent,
                reuse_actors=True,
            ),
            run_config=_run_config(spec, name, info, spec.max_failures),
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
    """Run (or resume) a study end to end and return what it found."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t_start = time.perf_counter()
    check_cluster_safe(spec, address)  # on a cluster: no store only one node can see
    preflight(spec, cluster={"CPU": math.inf, "GPU": math.inf})  # teacher and data, before anything
    tracking.experiment_env_cleanup()

    # ---- teacher (trained on the driver, before Ray takes the cores)
    t0 = time.perf_counter()
    tcfg = spec.teacher.teacher_config(spec.dataset, spec.data_root, spec.download, spec.device)
    teacher_path = ensure_teacher(tcfg, spec.teacher.path, log=log)
    teacher, meta = load_teacher(
        teacher_path, "cpu", expect_dataset=spec.dataset, expect_arch=spec.teacher.arch
    )
    teacher_seconds = time.perf_counter() - t0
    teacher_state = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    log(
        f"teacher {spec.teacher.arch} on {spec.dataset}: test {meta['test_acc']:.2f}% ({teacher_seconds:.1f} s)"
    )

    # ---- tracking and Optuna state exist before any trial
    info = tracking.setup_study(spec.tracking_uri, spec.experiment, spec.name, spec.raw)
    study = space.open_study(spec)
    log(
        f"study {spec.name!r}: Optuna storage {spec.optuna_storage}; results under {spec.storage_path}/{spec.name}"
    )

    env_vars = {**tracking.runtime_env_vars(spec.tracking_uri), **forwarded_env()}
    started = _ensure_ray(address, env_vars, log)
    try:
        import ray

        for w in preflight(
            spec,
            cluster=ray.cluster_resources(),
            strict=address is None and not os.environ.get("RAY_ADDRESS"),
        ):
            log(f"warning: {w}")

        def context(kind: str, base: dict[str, Any], mte, cpus: float) -> TrialContext:
            return TrialContext(
                kind=kind,
                base=base,
                tracking=info,
                teacher_state=teacher_state,
                teacher_meta=meta,
                mte=mte,
                image_points=spec.image_points,
                threads=max(1, int(cpus)),
                metric=spec.metric,
                mode=spec.mode,
                fault=fault if kind == "search" else None,
            )

        # ---- search
        search_trainable = tune.with_resources(
            tune.with_parameters(
                train_distill,
                ctx=context("search", to_dict(spec.base), spec.mte_search, spec.cpus_per_trial),
            ),
            _resources(spec),
        )
        search_path = spec.experiment_dir

        def build_search():
            counts = space.finished_counts(spec)
            done = sum(counts.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
            remaining = spec.num_trials - done
            if done:
                log(
                    f"search: no Tune state at {search_path}; {done} trials finished in Optuna, {max(remaining, 0)} to go"
                )
            if remaining <= 0:
                return None
            if spec.scheduler.type == "asha":
                scheduler = ASHAScheduler(
                    time_attr=names.ITERATION,
                    metric=spec.metric,
                    mode=spec.mode,
                    max_t=spec.base.iterations,
                    grace_period=spec.scheduler.grace_period,
                    reduction_factor=spec.scheduler.reduction_factor,
                )
            else:
                scheduler = FIFOScheduler()
            return tune.Tuner(
                search_trainable,
                tune_config=tune.TuneConfig(
                    search_alg=space.StudySearcher(spec, study),
                    scheduler=scheduler,
                    num_samples=remaining,
                    max_concurrent_trials=spec.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=_run_config(spec, "search", info, spec.max_failures),
            )

        def restore_search():
            return tune.Tuner.restore(
                search_path, trainable=search_trainable, resume_unfinished=True
            )

        t_search = time.perf_counter()
        if tune.Tuner.can_restore(search_path):
            log(f"search: resuming from {search_path}")
            restore_search().fit()
        else:
            tuner = build_search()
            if tuner is not None:
                tuner.fit()
        ids = _trial_ids(search_path)
        unfinished = [t for t, s in ids.items() if s not in ("TERMINATED", "ERROR")]
        if unfinished:
            raise StudyInterrupted(
                f"search of study {spec.name!r} was interrupted ({len(ids) - len(unfinished)}/{len(ids)} "
                "trials finished); its state is saved: run the same command (or `zskt study resume`) to continue"
            )
        space.fail_orphans(spec, set(ids))
        tracking.close_leftovers(info, set(ids) | _optuna_tune_ids(spec), "search")
        counts = space.finished_counts(spec)
        n_done = sum(counts.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
        if n_done < spec.num_trials:
            raise StudyInterrupted(
                f"search of study {spec.name!r} stopped with {n_done}/{spec.num_trials} trials; run it again to continue"
            )
        log(
            f"search: {n_done} trials ({counts.get('COMPLETE', 0)} completed, {counts.get('PRUNED', 0)} pruned, "
            f"{counts.get('FAIL', 0)} failed) in {time.perf_counter() - t_search:.0f} s"
        )

        # ---- final seeded re-runs of the best configurations
        best = _final_configs(spec, study)
        final_rows: list[dict[str, Any]] = []
        if best:
            for b in best:
                log(
                    f"best #{b['rank']}: {spec.metric}={b['value']:.2f} {b['params']} (trial {b['tune_trial_id']})"
                )
            grid = [
                {"rank": b["rank"], "seed": s, "params": b["params"]}
                for b in best
                for s in spec.final_seeds
            ]
            base = {**to_dict(spec.base), "iterations": spec.final_iterations}
            final_trainable = tune.with_resources(
                tune.with_parameters(
                    train_distill,
                    ctx=context("final", base, spec.mte_final, spec.final_cpus_per_trial),
                ),
                _resources(spec, spec.final_cpus_per_trial),
            )
            t_final = time.perf_counter()
            _run_grid(
                spec,
                final_trainable,
                {"run": tune.grid_search(grid)},
                "final",
                spec.final_dir,
                info,
                log,
                "final re-runs",
            )
            _check_finished(spec.final_dir, len(grid), "final re-runs", spec.name)
            labels = {trial_label("final", g["rank"], g["seed"]) for g in grid}
            tracking.close_leftovers(info, labels, "final")
            final_rows = _rows(info, "final")
            log(f"final re-runs: {len(final_rows)} runs in {time.perf_counter() - t_final:.0f} s")

        # ---- KD+AT baseline
        kdat_rows: list[dict[str, Any]] = []
        if spec.kdat.enabled:
            kd_base = to_dict(spec.kdat_config(spec.kdat.seeds[0]))
            kd_trainable = tune.with_resources(
                tune.with_parameters(
                    train_kdat_baseline,
                    ctx=context("kdat", kd_base, spec.mte_final, spec.final_cpus_per_trial),
                ),
                _resources(spec, spec.final_cpus_per_trial),
            )
            _run_grid(
                spec,
                kd_trainable,
                {"seed": tune.grid_search(list(spec.kdat.seeds))},
                "kdat",
                spec.kdat_dir,
                info,
                log,
                "KD+AT baseline",
            )
            _check_finished(spec.kdat_dir, len(spec.kdat.seeds), "KD+AT baseline", spec.name)
            tracking.close_leftovers(
                info, {trial_label("kdat", seed=s) for s in spec.kdat.seeds}, "kdat"
            )
            kdat_rows = _rows(info, "kdat")

        summary = _summary(
            spec,
            counts,
            best,
            final_rows,
            kdat_rows,
            teacher_seconds,
            time.perf_counter() - t_start,
        )
        tracking.finish_study(info, summary)
        for line in _summary_lines(spec, summary):
            log(line)
        log(tracking.how_to_open(spec.tracking_uri))
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
            teacher_seconds,
            time.perf_counter() - t_start,
        )
    except (StudyInterrupted, KeyboardInterrupt):
        closed = tracking.close_interrupted(info)
        if closed:
            log(
                f"interrupted: {len(closed)} trial runs in flight were marked interrupted in MLflow"
            )
        tracking.finish_study(info, {"interrupted": "yes"}, status="KILLED")
        raise
    finally:
        if started:
            import ray

            ray.shutdown()


def _optuna_tune_ids(spec: StudySpec) -> set[str]:
    study = space.open_study(spec, create=False)
    return {str(t.user_attrs.get(names.ATTR_TUNE_ID)) for t in study.get_trials(deepcopy=False)}


def _final_configs(spec: StudySpec, study) -> list[dict[str, Any]]:
    """Top-k configurations, chosen once and stored in the Optuna study (stable on resume)."""
    if spec.final_top_k == 0:
        return []
    stored = study.user_attrs.get("final_configs")
    if stored is not None:
        return stored
    best = space.best_configurations(spec, spec.final_top_k)
    if not best:
        raise StudyError(
            f"{spec.source}: no search trial completed, nothing to re-run (see the failed/pruned reasons in MLflow)"
        )
    study.set_user_attr("final_configs", best)
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


def _summary(spec, counts, best, final_rows, kdat_rows, teacher_seconds, wall) -> dict[str, Any]:
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
        top = [
            r
            for r in final_rows
            if str(r["trial_id"]).startswith("final-0-") and r["status"] == names.COMPLETED
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
    lines = [
        f"study {spec.name}: {s['trials_completed']} completed, {s['trials_pruned']} pruned, "
        f"{s['trials_failed']} failed search trials; {s['wall_time_s']:.0f} s wall "
        f"(teacher {s['teacher_seconds']:.0f} s)"
    ]
    if "final_test_acc_mean" in s:
        lines.append(
            f"best configuration {s['best_params']}: test accuracy {s['final_test_acc_mean']:.2f} "
            f"+- {s['final_test_acc_std']:.2f}% over {s['final_runs']} seeds; MTE {s['final_mte_mean']:.4f} "
            f"(K={spec.mte_final.k}, xi={spec.mte_final.xi:g}, n_test<={spec.mte_final.n_test})"
        )
    if "kdat_test_acc_mean" in s:
        lines.append(
            f"KD+AT baseline: test accuracy {s['kdat_test_acc_mean']:.2f}%, MTE {s['kdat_mte_mean']:.4f}"
        )
    return lines
