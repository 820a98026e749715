"""Resume tells one truth, and one run of a study at a time (slow: real drivers, local Ray).

Each driver is ``zskt study run`` in its own process group. The driver-side test hook
``ZSKT_TEST_KILL_DRIVER_AFTER=<experiment>:<status>`` SIGKILLs the driver right after Optuna and
MLflow recorded such a trial, so Tune's periodically saved experiment state lags behind the
study's records: the restored experiment believes that trial is still running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

import optuna  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from zskt_ray import names  # noqa: E402
from zskt_ray.config import TeacherConfig  # noqa: E402
from zskt_ray.study.spec import parse_spec  # noqa: E402
from zskt_ray.study.tracking import KILL_HOOK_ENV  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A quickly trained tiny digits teacher (trials then differ, so ASHA prunes some)."""
    from zskt_ray.teacher import ensure_teacher

    cfg = TeacherConfig.recipe(
        "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
    )
    return ensure_teacher(cfg, tmp_path_factory.mktemp("teacher") / "teacher.pt", log=None)


def study(teacher: Path, name: str, **over) -> dict:
    d = {
        "name": name,
        "dataset": "digits",
        "teacher": {"arch": "wrn-10-1", "path": str(teacher)},
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 8, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        "search": {
            "space": {
                "lr_s": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                "n_s": [1, 2],
            },
            "num_trials": 5,
            "n_startup_trials": 5,
            "sampler_seed": 1,
            "max_failures": 0,
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "evaluation": {"mte_search": {"k": 2, "n_test": 8}, "mte_final": {"k": 2, "n_test": 8}},
        "final": {"top_k": 1, "seeds": [5]},
        "kdat": {"enabled": False},
    }
    d.update(over)
    return d


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != KILL_HOOK_ENV}
    return {**env, "ZSKT_TUNE_VERBOSE": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1", **extra}


def _scratch_env(tmp_path: Path) -> dict[str, str]:
    """A private scratch root for the drivers and the local Ray they start (checked below)."""
    return {"ZSKT_SCRATCH": str(tmp_path / "scratch")}


def _assert_clean_resume(log_path: Path, tmp_path: Path) -> None:
    """The resumed run printed no traceback, and left no temporary folder in the scratch root."""
    text = log_path.read_text()
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:5000]
    left = [p.name for p in (tmp_path / "scratch").glob("*/zskt-*")]
    assert not left, left


def _start(study_file: Path, env: dict, log_path: Path, command: str = "run") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "zskt_ray.study.cli", "study", command, str(study_file)]
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait(proc: subprocess.Popen, log_path: Path, timeout: float = 500) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(log_path.read_text()[-3000:]) from None
    finally:
        _reap_group(proc.pid)


def _reap_group(pgid: int) -> None:
    """The local Ray a killed driver started lives in its process group: end what is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _write(tmp_path: Path, data: dict) -> tuple[Path, object]:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, parse_spec(data)


def _runs(spec) -> list:
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _steps(spec, run_id: str, key: str = "loss_s") -> list[int]:
    hist = MlflowClient(spec.tracking_uri).get_metric_history(run_id, key)
    return sorted(m.step for m in hist)


def _tune_status(path: str) -> dict[str, str]:
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: t.status for t in ExperimentAnalysis(path).trials}


def _report_rows(spec):
    from zskt_ray.analysis.load import StudyRef, load_runs

    ref = StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage)
    return load_runs(ref).set_index("trial_id")


def _agree(spec) -> None:
    """Optuna, MLflow and the report agree trial by trial on status, budget reached and value."""
    state = {"COMPLETE": names.COMPLETED, "PRUNED": names.PRUNED, "FAIL": names.FAILED}
    trials = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    runs = {
        r.data.tags[names.TAG_TRIAL]: r
        for r in _runs(spec)
        if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH
    }
    rows = _report_rows(spec)
    for t in trials:
        tid = t.user_attrs[names.ATTR_TUNE_ID]
        run = runs[tid]
        status = state[t.state.name]
        assert run.data.tags[names.TAG_STATUS] == status == rows.loc[tid, "status"], tid
        reached = max(t.intermediate_values)
        steps = _steps(spec, run.info.run_id, names.VAL_ACC)
        assert steps == sorted(set(steps)) and max(steps) == reached, (tid, steps, reached)
        assert rows.loc[tid, "iterations_reached"] == reached
        if status == names.COMPLETED:
            assert run.data.metrics[names.VAL_ACC] == pytest.approx(t.value)
            assert rows.loc[tid, "objective"] == pytest.approx(t.value)


# ------------------------------------------------------------------ killed right after a prune


def test_trial_pruned_just_before_the_driver_died_is_not_trained_again(teacher, tmp_path):
    """Tune saves its state only when a trial has checkpointed twice since the last save (not
    every 600 s here). The first rung is at iteration 8: the pruned trial checkpointed at
    iterations 2 and 4 (checkpoints 0 and 1: a save lists the trial RUNNING with them), 6 and 8
    (checkpoints 2 and 3, whose registrations deleted 0 and 1); the hook kills the driver in the
    step that registered checkpoint 3 and pruned the trial, before the save it forced. Ray cannot
    restore the trial from checkpoint 1 ("Could not recover from checkpoint as it does not exist
    on storage anymore"): the resumed run restores it from checkpoint 2, and reports it pruned
    again without training."""
    data = study(teacher, "prunekill")
    data["loop"]["iterations"] = 12
    data["search"]["scheduler"]["grace_period"] = 8
    study_file, spec = _write(tmp_path, data)
    log1 = tmp_path / "driver1.log"
    env = {**_scratch_env(tmp_path), "TUNE_GLOBAL_CHECKPOINT_S": "600"}
    rc = _wait(_start(study_file, _env(**env, **{KILL_HOOK_ENV: "search:pruned"}), log1), log1)
    assert rc == -signal.SIGKILL, log1.read_text()[-3000:]  # the hook fired: a trial was pruned
    pruned = [
        t
        for t in optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
        if t.state == optuna.trial.TrialState.PRUNED
    ]
    assert len(pruned) == 1
    tid = pruned[0].user_attrs[names.ATTR_TUNE_ID]
    # Tune's saved state lags: it still holds the pruned trial as unfinished
    assert _tune_status(spec.experiment_dir)[tid] in ("RUNNING", "PENDING", "PAUSED")
    (run,) = [r for r in _runs(spec) if r.data.tags.get(names.TAG_TRIAL) == tid]
    assert run.info.status == "KILLED" and run.data.tags[names.TAG_STATUS] == names.PRUNED
    steps_before = _steps(spec, run.info.run_id)

    log2 = tmp_path / "driver2.log"
    rc = _wait(_start(study_file, _env(**env), log2, "resume"), log2)
    assert rc == 0, log2.read_text()[-3000:]
    assert f"trial {tid}: 2 listed checkpoint(s) were deleted" in log2.read_text()
    assert "it resumes from checkpoint_000002" in log2.read_text()
    _assert_clean_resume(log2, tmp_path)
    study_after = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage)
    (again,) = [t for t in study_after.trials if t.user_attrs[names.ATTR_TUNE_ID] == tid]
    assert again.state == optuna.trial.TrialState.PRUNED
    assert again.intermediate_values == pruned[0].intermediate_values
    after = MlflowClient(spec.tracking_uri).get_run(run.info.run_id)
    assert after.info.status == "KILLED" and after.info.end_time == run.info.end_time
    assert after.data.tags[names.TAG_REASON] == run.data.tags[names.TAG_REASON]
    assert _steps(spec, run.info.run_id) == steps_before  # not trained again, nothing logged
    assert _tune_status(spec.experiment_dir)[tid] == "TERMINATED"
    assert len(study_after.trials) == 5 and all(t.state.is_finished() for t in study_after.trials)
    assert not [r for r in _runs(spec) if r.info.status == "RUNNING"]
    _agree(spec)


# ------------------------------------------------------------------ killed during the final re-runs


def test_killed_during_final_reruns_keeps_the_finished_rerun(teacher, tmp_path):
    data = study(teacher, "finalkill", final={"top_k": 1, "seeds": [5, 6], "max_concurrent": 1})
    data["search"].update({"num_trials": 2, "n_startup_trials": 2, "scheduler": {"type": "none"}})
    study_file, spec = _write(tmp_path, data)
    log1 = tmp_path / "driver1.log"
    env = _scratch_env(tmp_path)
    rc = _wait(_start(study_file, _env(**env, **{KILL_HOOK_ENV: "final:completed"}), log1), log1)
    assert rc == -signal.SIGKILL, log1.read_text()[-3000:]
    final = [r for r in _runs(spec) if r.data.tags.get(names.TAG_KIND) == names.KIND_FINAL]
    done = [r for r in final if r.info.status == "FINISHED"]
    assert len(done) == 1
    first = done[0]
    assert {s for s in _tune_status(spec.final_dir).values()} != {"TERMINATED"}

    log2 = tmp_path / "driver2.log"
    rc = _wait(_start(study_file, _env(**env), log2, "resume"), log2)
    assert rc == 0, log2.read_text()[-3000:]
    _assert_clean_resume(log2, tmp_path)
    runs = _runs(spec)
    final = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_FINAL]
    assert sorted(r.data.tags[names.TAG_TRIAL] for r in final) == ["final-0-seed5", "final-0-seed6"]
    assert all(r.info.status == "FINISHED" for r in final)
    kept = next(r for r in final if r.info.run_id == first.info.run_id)
    assert kept.info.end_time == first.info.end_time  # the finished re-run was not redone
    assert kept.data.metrics == first.data.metrics
    for r in final:
        assert _steps(spec, r.info.run_id) == [2, 4, 6, 8]
    (parent,) = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_STUDY]
    assert parent.info.status == "FINISHED" and parent.data.metrics["final_runs"] == 2
    assert not [r for r in runs if r.info.status == "RUNNING"]
    _agree(spec)


# ------------------------------------------------------------------ killed after a checkpoint was deleted


def test_killed_after_a_checkpoint_was_deleted_resumes_without_a_traceback(teacher, tmp_path):
    """Tune keeps two checkpoints per trial and saves its state only every 600 s here (and when a
    trial has checkpointed twice since the last save). The hook kills the driver when a trial's
    fourth checkpoint reaches it: the third registration deleted the first checkpoint, which the
    saved state still lists. The resumed run drops it from the list (and says so) instead of
    printing Ray's FileNotFoundError traceback, and the trial's curve holds each step once."""
    data = study(teacher, "ckptkill", final={"top_k": 0})
    data["loop"]["iterations"] = 12
    data["search"].update({"num_trials": 1, "n_startup_trials": 1, "scheduler": {"type": "none"}})
    study_file, spec = _write(tmp_path, data)
    env = {**_scratch_env(tmp_path), "TUNE_GLOBAL_CHECKPOINT_S": "600"}
    log1 = tmp_path / "driver1.log"
    rc = _wait(_start(study_file, _env(**env, **{KILL_HOOK_ENV: "search:checkpoint4"}), log1), log1)
    assert rc == -signal.SIGKILL, log1.read_text()[-3000:]
    log2 = tmp_path / "driver2.log"
    rc = _wait(_start(study_file, _env(**env), log2, "resume"), log2)
    assert rc == 0, log2.read_text()[-3000:]
    assert "listed checkpoint(s) were deleted before the last run stopped" in log2.read_text()
    _assert_clean_resume(log2, tmp_path)
    (run,) = [r for r in _runs(spec) if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH]
    assert run.info.status == "FINISHED" and int(run.data.tags[names.TAG_RESUMED_AT]) >= 2
    assert _steps(spec, run.info.run_id) == [2, 4, 6, 8, 10, 12]
    _agree(spec)


# ------------------------------------------------------------------ one run of a study at a time


def test_two_runs_of_one_study_at_once_and_another_study_beside_them(teacher, tmp_path):
    """Both studies start at once on a fresh MLflow store (its schema made under a lock); a
    second run of the first study exits 2 at once naming the lock's holder."""
    small = {"num_trials": 2, "n_startup_trials": 2, "scheduler": {"type": "none"}}
    a = study(teacher, "alpha", final={"top_k": 0})
    b = study(teacher, "beta", final={"top_k": 0})
    for d in (a, b):
        d["search"].update(small)
        d["loop"]["iterations"] = 4
    a["loop"]["iterations"] = 16  # alpha outlives the refused second run
    file_a, spec_a = _write(tmp_path, a)
    file_b, spec_b = _write(tmp_path, b)
    assert not Path(spec_a.tracking_uri[len("sqlite:///") :]).exists()
    logs = [tmp_path / n for n in ("a.log", "b.log", "a2.log")]
    first = _start(file_a, _env(), logs[0])
    other = _start(file_b, _env(), logs[1])
    try:
        holder = Path(os.environ["ZSKT_HOME"], "locks", "alpha.lock.holder")
        deadline = time.time() + 120
        while not holder.exists() and time.time() < deadline:
            assert first.poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.5)
        second = subprocess.run(
            [sys.executable, "-m", "zskt_ray.study.cli", "study", "run", str(file_a)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"process {first.pid} " in err and "alpha.lock" in err, err
        assert first.poll() is None  # refused while the first still runs, not after it
        assert _wait(other, logs[1]) == 0, logs[1].read_text()[-3000:]
        assert _wait(first, logs[0]) == 0, logs[0].read_text()[-3000:]
    finally:
        for proc in (first, other):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    sessions = [_ray_session(log) for log in logs[:2]]
    assert sessions[0] != sessions[1]  # each driver its own local Ray, not the other's
    for spec in (spec_a, spec_b):
        trials = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
        assert len(trials) == 2 and all(t.state.is_finished() for t in trials)
        assert not [r for r in _runs(spec) if r.info.status == "RUNNING"]


def _ray_session(log_path: Path) -> str:
    import re

    found = re.search(r"/tmp/ray/(session_[0-9_-]+)", log_path.read_text())
    assert found, log_path.read_text()[-2000:]
    return found.group(1)


# ------------------------------------------------------------------ killed mid-ablation


def test_killed_mid_ablation_resumes_every_cell_and_seed_exactly_once(tmp_path):
    """A toy2d ablation (2 x 2 cells and a control, 2 seeds) whose driver is killed right after
    its first run completed, then resumed: Optuna, MLflow and the report hold each cell x seed
    once, and the report's statistics count 2 seeds in every cell."""
    from test_ablation import TINY, _md_table, check_one_run_per_cell_and_seed
    from zskt_ray.analysis.load import StudyRef
    from zskt_ray.analysis.report import make_report

    data = {**TINY, "name": "ablationkill"}
    data["ablation"] = {**TINY["ablation"], "seeds": [0, 1]}
    data["loop"] = {**TINY["loop"], "iterations": 40}
    study_file, spec = _write(tmp_path, data)
    log1 = tmp_path / "driver1.log"
    env = _scratch_env(tmp_path)
    rc = _wait(_start(study_file, _env(**env, **{KILL_HOOK_ENV: "ablation:completed"}), log1), log1)
    assert rc == -signal.SIGKILL, log1.read_text()[-3000:]
    trials = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and len(trials) < spec.num_trials  # killed early, with work left
    first = [r for r in _runs(spec) if r.data.tags.get(names.TAG_KIND) == names.KIND_ABLATION]
    finished = {r.info.run_id: r.info.end_time for r in first if r.info.status == "FINISHED"}

    log2 = tmp_path / "driver2.log"
    rc = _wait(_start(study_file, _env(**env), log2, "resume"), log2)
    assert rc == 0, log2.read_text()[-3000:]
    _assert_clean_resume(log2, tmp_path)
    check_one_run_per_cell_and_seed(spec)
    after = {r.info.run_id: r for r in _runs(spec)}
    for run_id, end in finished.items():  # the run that had finished was not run again
        assert after[run_id].info.end_time == end
    assert not [r for r in after.values() if r.info.status == "RUNNING"]
    ref = StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage)
    md = make_report(ref, tmp_path / "report").markdown.read_text()
    cells = _md_table(md, "test accuracy (%) per cell, over seeds.")
    assert len(cells) == 5 and {r["n / seeds run"] for r in cells} == {"2 / 2"}
