"""The study system end to end with real local Ray (2 CPUs), real Optuna and a real MLflow SQLite
store in a temp directory: a tiny study (tiny teacher and student, a few iterations), pruned-trial
bookkeeping, a diverging trial, and (slow) resume after the driver is killed.
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
import torch  # noqa: E402
from cluster_fixtures import fit_synthetic_asha, local_study_ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from zskt_ray import names  # noqa: E402
from zskt_ray.checkpoint import load_model  # noqa: E402
from zskt_ray.config import TeacherConfig  # noqa: E402
from zskt_ray.study.schema import SearchSection  # noqa: E402
from zskt_ray.study.space import open_storage  # noqa: E402
from zskt_ray.study.spec import parse_spec  # noqa: E402

NUM_TRIALS = 3


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """ZSKT_HOME in a temp dir, a quickly trained tiny teacher, and one local Ray per module."""
    from zskt_ray.teacher import ensure_teacher

    home = tmp_path_factory.mktemp("zskt_home")
    # ZSKT_SCRATCH: the trials' temporary folders (checked)
    with local_study_ray(home, ZSKT_SCRATCH=str(home / "scratch")):
        cfg = TeacherConfig.recipe(
            "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
        )
        ensure_teacher(cfg, home / "teacher.pt", log=None)
        yield home


def tiny_study(home: Path, name: str, **over) -> dict:
    d = {
        "name": name,
        "dataset": "digits",
        "teacher": {"arch": "wrn-10-1", "path": str(home / "teacher.pt")},
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 6, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        "search": {
            "space": {"n_s": {"type": "int", "low": 1, "high": 2}, "beta": [0.0, 250.0]},
            "num_trials": NUM_TRIALS,
            "n_startup_trials": NUM_TRIALS,
            "sampler_seed": 3,
            "max_failures": 0,
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "evaluation": {
            "mte_search": {"k": 2, "n_test": 8},
            "mte_final": {"k": 3, "n_test": 16},
            "image_grids": 2,
        },
        "final": {"top_k": 1, "seeds": [5]},
        "kdat": {
            "enabled": True,
            "seeds": [0],
            "config": {"m_per_class": 5, "base_epochs": 1, "max_epochs": 2, "batch_size": 32},
        },
    }
    d.update(over)
    return d


# ------------------------------------------------------------------ pruned bookkeeping, fast


def _synthetic(config):
    """Reports like the real trainable; trial quality is config['q']."""
    from ray import tune

    for it in (2, 4, 6):
        result = {
            "val_acc": config["q"] * it,
            names.ITERATION: it,
            names.BUDGET: 6,
            names.STATUS: "running",
        }
        if it == 6:
            result[names.STATUS] = names.COMPLETED
        if config["q"] < 0:
            result.update(
                {
                    names.STATUS: names.FAILED,
                    names.REASON: "diverged: loss_s became nan at iteration 2",
                }
            )
            tune.report(result)
            return
        tune.report(result)
        time.sleep(0.2)


def test_scheduler_stopped_trials_are_pruned_in_optuna(home, tmp_path):
    from zskt_ray.study import space

    spec = parse_spec(tiny_study(home, "synthetic"))
    # A parameter q of the synthetic trainable (not a loop setting, so not one a study file takes).
    q_space = SearchSection.model_validate({"space": {"q": [9.0, 1.0, 0.5, -1.0]}}).space
    spec = spec.model_copy(
        update=dict(
            search=spec.search.model_copy(update=dict(space=q_space, num_trials=4, sampler="grid")),
            storage=spec.storage.model_copy(
                update=dict(optuna=f"sqlite:///{tmp_path / 'optuna.db'}")
            ),
        )
    )
    fit_synthetic_asha(spec, space.open_study(spec), _synthetic, 4, tmp_path / "tune")
    trials = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    by_q = {t.params["q"]: t for t in trials}
    assert set(by_q) == {9.0, 1.0, 0.5, -1.0}
    assert by_q[9.0].state == optuna.trial.TrialState.COMPLETE and by_q[9.0].value == 54.0
    assert by_q[9.0].intermediate_values == {2: 18.0, 4: 36.0, 6: 54.0}  # keyed by loop iteration
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.params, t.state) for t in trials]
    for t in pruned:  # Ray's OptunaSearch would have told these COMPLETE with a truncated value
        assert t.user_attrs[space.ATTR_STATUS] == "pruned"
        assert "stopped by the scheduler at iteration" in t.user_attrs[space.ATTR_REASON]
        assert max(t.intermediate_values) < 6
    assert by_q[-1.0].state == optuna.trial.TrialState.FAIL
    assert by_q[-1.0].user_attrs[space.ATTR_REASON].startswith("diverged")
    assert all(t.user_attrs.get(space.ATTR_TUNE_ID) for t in trials)


# ------------------------------------------------------------------ a tiny study end to end


@pytest.fixture(scope="module")
def tiny(home):
    """Run a tiny study once: 3 search trials (one poisoned with NaN), ASHA, 1 final re-run."""
    from zskt_ray.study.runner import run_study

    spec = parse_spec(tiny_study(home, "tiny"), source="tiny.yaml")
    lines: list[str] = []
    t0 = time.perf_counter()
    # every trial with n_s == 1 has its weights poisoned at iteration 3: the loop's own check fires
    outcome = run_study(spec, log=lines.append, fault={"param": "n_s", "value": 1, "iteration": 3})
    return spec, outcome, lines, time.perf_counter() - t0


def _runs(spec):
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    return client, exp, client.search_runs([exp.experiment_id], max_results=1000)


def test_tiny_study_optuna_layout(tiny, home):
    spec, outcome, lines, _ = tiny
    study = optuna.load_study(study_name="tiny", storage=spec.optuna_storage)
    assert spec.optuna_storage == f"sqlite:///{home / 'studies' / 'tiny' / 'optuna.db'}"
    trials = study.trials
    assert len(trials) == NUM_TRIALS
    assert all(t.state.is_finished() for t in trials)
    for t in trials:
        attrs = t.user_attrs
        assert (
            attrs["tune_trial_id"]
            and attrs["mlflow_run_id"]
            and attrs["zskt_status"] in ("completed", "pruned", "failed")
        )
        if t.state == optuna.trial.TrialState.FAIL:
            assert t.params["n_s"] == 1 and attrs["zskt_status_reason"].startswith("diverged:")
            assert "nan" in attrs["zskt_status_reason"]
        if t.params["n_s"] == 1:
            assert t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sum(outcome.search_counts.values()) == NUM_TRIALS
    assert outcome.best[0]["params"]["n_s"] == 2


def test_tiny_study_mlflow_layout(tiny, home):
    spec, outcome, lines, _ = tiny
    client, exp, runs = _runs(spec)
    assert spec.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    parents = [r for r in runs if r.data.tags.get("zskt.kind") == "study"]
    assert (
        len(parents) == 1
        and parents[0].info.run_name == "tiny"
        and parents[0].info.status == "FINISHED"
    )
    assert parents[0].data.tags["zskt.study"] == "tiny"
    assert "study.yaml" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    children = [r for r in runs if r.data.tags.get("zskt.kind") != "study"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    search = [r for r in children if r.data.tags["zskt.kind"] == "search"]
    final = [r for r in children if r.data.tags["zskt.kind"] == "final"]
    kdat = [r for r in children if r.data.tags["zskt.kind"] == "kdat"]
    assert len(search) == NUM_TRIALS and len(final) == 1 and len(kdat) == 1
    assert kdat[0].data.tags["zskt.trial_id"] == "kdat-seed0" and kdat[0].info.status == "FINISHED"
    assert kdat[0].data.params["m_per_class"] == "5" and "mte" in kdat[0].data.metrics
    assert "student/student.pt" in _artifacts(client, kdat[0].info.run_id)
    assert len({r.data.tags["zskt.trial_id"] for r in search}) == NUM_TRIALS
    assert not [r for r in runs if r.info.status == "RUNNING"]
    expect = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
    study = optuna.load_study(study_name="tiny", storage=spec.optuna_storage)
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.trials}
    for r in children:
        tags = r.data.tags
        assert r.info.status == expect[tags["zskt.status"]], (tags, r.info.status)
        for key in (
            "zskt.study",
            "zskt.trial_id",
            "zskt.config_id",
            "zskt.device",
            "zskt.hostname",
            "zskt.gpu_name",
            "zskt.torch_version",
        ):
            assert tags.get(key), key
        assert tags["zskt.gpu_name"] == "none" and tags["zskt.device"] == "cpu"
        if tags["zskt.status"] != "completed":
            assert tags["zskt.status_reason"]
        assert r.data.params["student_arch"] == "wrn-10-1" and "seed" in r.data.params
        assert "n_s" in r.data.params or tags["zskt.kind"] == "kdat"
        if tags["zskt.kind"] == "search":
            t = by_run[r.info.run_id]
            assert t.user_attrs["tune_trial_id"] == tags["zskt.trial_id"]
            assert {"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}[
                tags["zskt.status"]
            ] == t.state.name
            # search trials select configurations: validation MTE, never a test metric
            assert not {names.TEST_ACC, names.MTE, "mte_n_test"} & set(r.data.metrics)
            if tags["zskt.status"] == "completed":
                m = r.data.metrics
                assert 0 <= m[names.VAL_MTE] <= 1 and m["val_mte_k"] == 2, m
    (fin,) = final
    assert fin.data.tags["zskt.trial_id"] == "final-0-seed5" and fin.data.params["seed"] == "5"
    best_trial = next(
        r for r in search if r.data.tags["zskt.trial_id"] == outcome.best[0]["tune_trial_id"]
    )
    assert (
        fin.data.tags["zskt.config_id"] == best_trial.data.tags["zskt.config_id"]
    )  # seeds group together
    m = fin.data.metrics
    for key in names.FINAL_METRICS:
        assert key in m, key
    assert (
        m["mte_k"] == 3
        and m["mte_xi"] == 1.0
        and 0 < m["mte_n_test"] <= 16
        and m["iterations_done"] == 6
    )
    assert 0 <= m["test_acc"] <= 100 and m["teacher_test_acc"] > 0
    hist = client.get_metric_history(fin.info.run_id, "loss_s")
    assert [h.step for h in hist] == [2, 4, 6]
    arts = _artifacts(client, fin.info.run_id)
    assert {"config.yaml", "mte/transition_curves.json", "student/student.pt"} <= arts
    assert {"images/pseudo_iter000002.png", "images/pseudo_iter000006.png"} <= arts
    from PIL import Image

    grid = Image.open(client.download_artifacts(fin.info.run_id, "images/pseudo_iter000006.png"))
    assert grid.size == (8 * (8 * 4 + 2) + 2,) * 2  # 8x8 grid of 8x8 digits, enlarged 4x, padding 2
    local = client.download_artifacts(fin.info.run_id, "student/student.pt")
    student, meta = load_model(local)  # a zskt-ray model file: `zskt mte` can use it
    assert meta["arch"] == "wrn-10-1" and meta["dataset"] == "digits"
    assert meta["test_acc"] == pytest.approx(m["test_acc"])
    assert torch.load(local, weights_only=True)["format"] == 1
    cfg = yaml.safe_load(
        Path(client.download_artifacts(fin.info.run_id, "config.yaml")).read_text()
    )
    assert cfg["seed"] == 5 and cfg["iterations"] == 6
    # the study ends by saying where the store is and how to open it
    assert any("mlflow ui --backend-store-uri " + spec.tracking_uri in line for line in lines)


def _artifacts(client, run_id, path=None):
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_tiny_study_rerun_is_a_no_op_resume(tiny, home):
    """Running a finished study again re-runs nothing and adds no MLflow run; it removes the
    temporary folders a killed worker would have left in the study's scratch folder."""
    from zskt_ray.paths import study_scratch_dir
    from zskt_ray.study.runner import run_study

    spec, outcome, _, _ = tiny
    scratch = study_scratch_dir(spec.name, spec.study_dir)
    assert scratch.parent == home / "scratch" and scratch.is_dir()  # the trials wrote there
    assert not list(scratch.iterdir())  # and the run left nothing behind
    left = [scratch / "zskt-ckpt-killed", scratch / "zskt-state-killed.pt"]
    left[0].mkdir()
    (left[0] / "state.pt").write_bytes(b"x")
    left[1].write_bytes(b"x")
    other = study_scratch_dir(spec.name, spec.study_dir + "-elsewhere") / "zskt-ckpt-other"
    other.mkdir(parents=True)  # another study of the same name, kept elsewhere: not touched
    _, _, before = _runs(spec)
    t0 = time.perf_counter()
    lines: list[str] = []
    again = run_study(spec, log=lines.append)
    assert not any(p.exists() for p in left) and other.is_dir()
    assert any("scratch: removed 2 leftover folder(s)" in line for line in lines), lines
    assert time.perf_counter() - t0 < 60
    _, _, after = _runs(spec)
    assert sorted(r.info.run_id for r in before) == sorted(r.info.run_id for r in after)
    assert again.best == outcome.best
    assert (
        len(optuna.load_study(study_name="tiny", storage=spec.optuna_storage).trials) == NUM_TRIALS
    )


# ------------------------------------------------------------------ resume after a killed driver


def _driver_study(home: Path, tmp_path: Path, name: str, iterations: int, **over):
    """A 4-trial study without a scheduler for the CLI driver tests: (study file, spec, env)."""
    data = tiny_study(home, name, **over)
    data["search"]["num_trials"] = 4
    data["search"]["n_startup_trials"] = 4
    data["loop"]["iterations"] = iterations
    data["search"]["scheduler"] = {"type": "none"}
    study_file = tmp_path / f"{name}.yaml"
    study_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "ZSKT_TUNE_VERBOSE": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    return study_file, parse_spec(data), env


def _interrupt_driver(
    study_file: Path, env: dict, log_path: Path, ready, sig: int, group: bool = True
) -> int:
    """Run ``zskt study run`` in its own process group and send ``sig`` to the group (or, with
    ``group=False``, to the driver alone, as ``kill PID`` does) once ``ready()``; return the
    driver's exit status (the group is SIGKILLed if it outlives 180 s)."""
    cmd = [sys.executable, "-m", "zskt_ray.study.cli", "study", "run", str(study_file)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + 400
            while time.time() < deadline:
                time.sleep(0.5)
                if ready():
                    break
                assert proc.poll() is None, log_path.read_text()[-3000:]
            assert ready(), log_path.read_text()[-3000:]
            if group:
                os.killpg(proc.pid, sig)  # the driver and the local Ray it started
            else:
                os.kill(proc.pid, sig)
            return proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _resume(study_file: Path, env: dict) -> str:
    """``zskt study resume``: it succeeds and prints no traceback; its output."""
    out = subprocess.run(
        [sys.executable, "-m", "zskt_ray.study.cli", "study", "resume", str(study_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:5000]
    return text


@pytest.mark.slow
def test_killed_driver_resumes_with_one_run_per_trial(home, tmp_path):
    study_file, spec, env = _driver_study(home, tmp_path, "killed", iterations=12)
    _interrupt_driver(  # once a first trial has finished
        study_file,
        env,
        tmp_path / "driver1.log",
        lambda: _finished_optuna(spec) >= 1,
        signal.SIGKILL,
    )
    finished_before = _finished_optuna(spec)
    assert finished_before < 4 + 1
    _resume(study_file, env)
    study = optuna.load_study(study_name="killed", storage=spec.optuna_storage)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    _, _, runs = _runs(spec)
    search = [r for r in runs if r.data.tags.get("zskt.kind") == "search"]
    assert len(search) == 4 and len({r.data.tags["zskt.trial_id"] for r in search}) == 4
    assert {r.data.tags["zskt.trial_id"] for r in search} == {
        t.user_attrs["tune_trial_id"] for t in study.trials
    }
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len([r for r in runs if r.data.tags.get("zskt.kind") == "study"]) == 1
    assert len([r for r in runs if r.data.tags.get("zskt.kind") == "final"]) == 1
    # every run holds its whole curve once: a trial resumed from a checkpoint older than its last
    # logged step computes those steps again, but does not log them twice
    client = MlflowClient(spec.tracking_uri)
    for r in search:
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss_s"))
        assert steps == [2, 4, 6, 8, 10, 12], steps


def _finished_optuna(spec) -> int:
    """Finished trials, read as the driver writes them: through the study's storage opener, whose
    lock keeps this poll from racing the driver on a fresh database's schema."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.optuna_storage))
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return sum(t.state.is_finished() for t in study.trials)


def test_nothing_is_written_to_the_working_directory(tiny, home):
    """MLflow's cwd-relative defaults (./mlruns, ./mlflow.db) are never used."""
    spec = tiny[0]
    assert not (Path.cwd() / "mlruns").exists() and not (Path.cwd() / "mlflow.db").exists()
    exp = MlflowClient(spec.tracking_uri).get_experiment_by_name(spec.experiment)
    assert exp.artifact_location == (home / "mlartifacts" / "tiny").as_uri()


# ------------------------------------------------------------------ Ctrl-C and fault injection


def test_interrupted_runs_are_closed_then_reopened_by_their_trial(home, tmp_path):
    """Runs in flight at Ctrl-C end KILLED/interrupted; a resumed trial continues the same run."""
    from zskt_ray.study import tracking

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    info = tracking.setup_study(uri, "intr", "intr", {"name": "intr"})
    first = tracking.TrialRun.open(info, "search", "t1", {"n_s": 3}, "cfg1", "cpu")
    done = tracking.TrialRun.open(info, "search", "t2", {"n_s": 4}, "cfg2", "cpu")
    done.finish(names.COMPLETED)
    assert tracking.close_interrupted(info) == ["t1"]
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "KILLED" and run.data.tags["zskt.status"] == names.INTERRUPTED
    assert "zskt study resume" in run.data.tags["zskt.status_reason"]
    assert client.get_run(done.run_id).info.status == "FINISHED"
    again = tracking.TrialRun.open(info, "search", "t1", {"n_s": 3}, "cfg1", "cpu")
    assert again.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    assert len(tracking.study_trial_runs(info)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("beta=0", "PARAM=VALUE@ITERATION"),
        ("beta@3", "PARAM=VALUE@ITERATION"),
        ("nope=1@3", "'nope' is not a loop setting"),
        ("beta=0@x", "iteration must be an integer"),
        ("beta=0@0", "iteration must be >= 1"),
    ],
)
def test_inject_nan_flag_errors_name_the_problem(text, message):
    from zskt_ray.study.cli import parse_fault
    from zskt_ray.study.spec import StudyError

    with pytest.raises(StudyError, match=message):
        parse_fault(text)


def test_inject_nan_flag_parses_typed_values():
    from zskt_ray.study.cli import parse_fault

    assert parse_fault("beta=0@10") == {"param": "beta", "value": 0, "iteration": 10}
    assert parse_fault("n_s=3@2") == {"param": "n_s", "value": 3, "iteration": 2}
    assert parse_fault("lr_s=1e-3@2")["value"] == 0.001
    assert parse_fault("student_arch=wrn-16-1@2")["value"] == "wrn-16-1"
    assert parse_fault(None) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "group", "status"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_leaves_no_run_running_and_resume_finishes(home, tmp_path, sig, group, status):
    """SIGINT to the driver's process group (what Ctrl-C does), or SIGTERM to the driver (what
    `kill PID`, `timeout`, Slurm and Kubernetes send first), then resume from the CLI. SIGTERM
    ends the run as Ctrl-C does, with the conventional status 128 + 15."""
    name = {signal.SIGINT: "ctrlc", signal.SIGTERM: "sigterm"}[sig]
    study_file, spec, env = _driver_study(
        home, tmp_path, name, iterations=400, kdat={"enabled": False}
    )  # trials of ~10 s or more: a fast machine once finished 40-iteration ones between polls
    log_path = tmp_path / "driver.log"
    rc = _interrupt_driver(  # once trials are running and logging
        study_file, env, log_path, lambda: _running_search_runs(spec) >= 1, sig, group
    )
    text = log_path.read_text()
    assert rc == status, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    _, _, runs = _runs(spec)
    assert not [r for r in runs if r.info.status == "RUNNING"], text[-3000:]
    assert [r for r in runs if r.data.tags.get("zskt.status") == names.INTERRUPTED]
    _resume(study_file, env)
    _, _, runs = _runs(spec)
    search = [r for r in runs if r.data.tags.get("zskt.kind") == "search"]
    assert len({r.data.tags["zskt.trial_id"] for r in search}) == len(search) == 4
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert not [r for r in runs if r.data.tags.get("zskt.status") == names.INTERRUPTED]


def _running_search_runs(spec) -> int:
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "tags.`zskt.kind` = 'search'")
    return sum(r.info.status == "RUNNING" and bool(r.data.metrics) for r in runs)
