"""Shared state on a real database server: PostgreSQL (Debian's ``postgresql``, started by the
test on 127.0.0.1 as a non-root user, stopped by pid) holds both the Optuna study and the
backend store of a real ``mlflow server``. A study on a 2-node Ray cluster is killed with its
driver and resumed by a second driver (another ``$ZSKT_HOME``), with no trial repeated.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from cluster_fixtures import (  # noqa: E402
    cli_process,
    mlflow_server,
    patched_environ,
    postgres_missing,
    postgres_server,
    ray_cluster,
    run_cli,
)

from zskt_ray import names  # noqa: E402
from zskt_ray.config import TeacherConfig  # noqa: E402
from zskt_ray.study.tracking import KILL_HOOK_ENV  # noqa: E402

pytestmark = pytest.mark.slow

NUM_TRIALS = 4


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    """PostgreSQL with an ``optuna`` and an ``mlflow`` database, and an ``mlflow server`` on the
    latter (no authentication: this module is about the stores). ``PGPASSFILE`` is exported for
    the module so that the drivers (Optuna) and the server find the password."""
    why = postgres_missing()
    if why:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("pg")
    with postgres_server(work / "postgres", ("optuna", "mlflow")) as server:
        env = {"PGPASSFILE": server["PGPASSFILE"]}
        with (
            patched_environ(env),
            mlflow_server(work / "mlflow", backend_store_uri=f"{server['url']}/mlflow") as uri,
        ):
            yield {"url": server["url"], "mlflow": uri, "work": work, **env}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from zskt_ray.teacher import ensure_teacher

    cfg = TeacherConfig.recipe(
        "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
    )
    return ensure_teacher(cfg, tmp_path_factory.mktemp("teacher") / "teacher.pt", log=None)


def _study(name: str, teacher: Path, pg: dict, shared: Path) -> dict:
    return {
        "name": name,
        "dataset": "digits",
        "teacher": {"arch": "wrn-10-1", "path": str(teacher)},
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 12, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        "search": {
            "space": {"n_s": [1, 2], "beta": [0.0, 250.0]},
            "num_trials": NUM_TRIALS,
            "sampler": "random",
            "max_failures": 2,
            "scheduler": {"type": "none"},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "evaluation": {
            "mte_search": {"k": 2, "n_test": 8},
            "mte_final": {"k": 2, "n_test": 8},
            "image_grids": 1,
        },
        "final": {"top_k": 0},
        "kdat": {"enabled": False},
        # Tune state on the shared file system; Optuna and MLflow on the database server
        "storage": {"path": str(shared), "shared": True, "optuna": f"{pg['url']}/optuna"},
        "mlflow": {"tracking_uri": pg["mlflow"]},
    }


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KILL_HOOK_ENV, "RAY_ADDRESS")}
    return {**env, "ZSKT_HOME": str(home), "ZSKT_TUNE_VERBOSE": "0", **extra}


def test_study_on_postgres_resumed_by_a_second_driver(pg, teacher, tmp_path):
    import optuna
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    name = "pgresume"
    data = _study(name, teacher, pg, tmp_path / "shared")
    study_file = tmp_path / f"{name}.yaml"
    study_file.write_text(yaml.safe_dump(data))
    storage = data["storage"]["optuna"]
    t0 = time.monotonic()
    with ray_cluster(
        head={"num_cpus": 1, "resources": {"head_node": 1}},
        workers=[{"num_cpus": 1, "resources": {"worker_node": 1}}],
    ) as cluster:
        nodes = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
        args = ["study", "run", str(study_file), "--address", cluster.address]
        # the first driver SIGKILLs itself right after Optuna and MLflow recorded a finished trial
        env1 = _env(tmp_path / "home1", **{KILL_HOOK_ENV: "search:completed"})
        log1 = tmp_path / "driver1.log"
        with cli_process(args, env1, log1) as proc:
            rc1 = proc.wait(timeout=600)
        text1 = log1.read_text()
        assert rc1 == -9, text1[-4000:]  # killed by the hook, not finished
        first = optuna.load_study(study_name=name, storage=storage)
        done_before = [t for t in first.trials if t.state.is_finished()]
        assert 1 <= len(done_before) < NUM_TRIALS, [t.state for t in first.trials]
        # a second driver, another home: it sees only the shared storage and the two servers
        resume = ["study", "resume", str(study_file), "--address", cluster.address]
        rc2 = run_cli(resume, _env(tmp_path / "home2"), tmp_path / "driver2.log")
        text2 = (tmp_path / "driver2.log").read_text()
        assert rc2 == 0, text2[-4000:]
    print(f"PostgreSQL study, killed and resumed: {time.monotonic() - t0:.0f} s")

    # Optuna (PostgreSQL): every trial once, all finished, the first driver's kept as they were
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == NUM_TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    tune_ids = [t.user_attrs[names.ATTR_TUNE_ID] for t in study.trials]
    assert len(set(tune_ids)) == NUM_TRIALS
    by_number = {t.number: t for t in study.trials}
    for t in done_before:
        assert by_number[t.number].value == t.value  # not trained again
    # MLflow (server on PostgreSQL): one run per trial, none RUNNING, trials on both nodes
    client = MlflowClient(pg["mlflow"])
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    search = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH]
    assert sorted(r.data.tags[names.TAG_TRIAL] for r in search) == sorted(tune_ids)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    ran_on = {r.data.tags[names.TAG_NODE_ID] for r in search}
    assert ran_on <= nodes and len(ran_on) == 2
    # both stores are the database server's: the rows are there, and no SQLite file was made
    engine = sqlalchemy.create_engine(f"{pg['url']}/mlflow")
    try:
        with engine.connect() as c:
            stored = c.execute(
                sqlalchemy.text("SELECT count(*) FROM runs WHERE experiment_id = :e"),
                {"e": int(exp.experiment_id)},
            ).scalar()
    finally:
        engine.dispose()
    assert stored == len(runs)
    assert not list(tmp_path.glob("**/*.db"))
