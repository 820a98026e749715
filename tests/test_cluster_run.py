"""Studies on a real multi-node Ray cluster (head + workers on this machine, each its own raylet),
against a real ``mlflow server`` and a real S3-compatible server (moto), all on 127.0.0.1 and
stopped by process id: trials spread over nodes, a worker node killed mid-trial, GPU shares, and a
study resumed by a second driver that sees only the shared storage and the tracking server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("moto")

import optuna  # noqa: E402
import torch  # noqa: E402
from cluster_fixtures import (  # noqa: E402
    cli_process,
    mlflow_server,
    patched_environ,
    ray_cluster,
    run_cli,
    s3_server,
)
from mlflow.tracking import MlflowClient  # noqa: E402

from zskt_ray import names  # noqa: E402
from zskt_ray.config import TeacherConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "zskt-test"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One mlflow server and one S3 server for the module; the S3 environment is exported so
    that Ray nodes started by the tests (and their trials) reach the same endpoint."""
    work = tmp_path_factory.mktemp("servers")
    with mlflow_server(work / "mlflow") as uri, s3_server(work / "s3", BUCKET) as s3_env:
        with patched_environ({**s3_env, "RAY_AUTH_MODE": "disabled"}):
            yield {"mlflow": uri, "s3": s3_env, "work": work}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny teacher on a path every node sees (a teacher is sent to trials by Ray anyway)."""
    from zskt_ray.teacher import ensure_teacher

    path = tmp_path_factory.mktemp("shared") / "teacher.pt"
    cfg = TeacherConfig.recipe(
        "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
    )
    ensure_teacher(cfg, path, log=None)
    return path


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ZSKT_HOME": str(home), "ZSKT_TUNE_VERBOSE": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _study(name: str, teacher: Path, uri: str, storage: dict, **over) -> dict:
    """A tiny study: every search trial the same configuration unless the space says otherwise."""
    d = {
        "name": name,
        "dataset": "digits",
        "teacher": {"arch": "wrn-10-1", "path": str(teacher)},
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 8, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        "search": {
            "space": {"n_s": [2]},
            "num_trials": 2,
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
        "storage": storage,
        "mlflow": {"tracking_uri": uri},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _runs(uri: str, experiment: str, kind: str | None = None) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if kind is None or r.data.tags.get(names.TAG_KIND) == kind]


def _artifacts(client, run_id, path=None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def _node_ids(cluster) -> dict[str, object]:
    return {n.node_id: n for n in [cluster.head_node, *cluster.worker_nodes]}


# ------------------------------------------------------------------ the README's study on 2 nodes


@pytest.mark.slow
def test_digits_smoke_on_a_two_node_cluster(servers, tmp_path):
    """`zskt study run studies/digits.yaml --smoke --address ...` against a real mlflow server,
    Tune state on S3: trials on both nodes, every run and artifact in the server, a report."""
    from zskt_ray.teacher import ensure_teacher

    home = tmp_path / "home"
    uri = servers["mlflow"]
    # a 1-epoch wrn-16-2 teacher where the study looks for it (the study's recipe takes 30 epochs)
    ensure_teacher(
        TeacherConfig.recipe("digits", "wrn-16-2", epochs=1, milestones=(1,), device="cpu"),
        home / "teachers" / "digits_wrn-16-2_seed0.pt",
        log=None,
    )
    env = _env(home, MLFLOW_TRACKING_URI=uri, ZSKT_STORAGE=f"s3://{BUCKET}/digits")
    with ray_cluster(
        head={"num_cpus": 1, "resources": {"head_node": 1}},
        workers=[{"num_cpus": 1, "resources": {"worker_node": 1}}],
    ) as cluster:
        nodes, address = _node_ids(cluster), cluster.address
        args = ["study", "run", "studies/digits.yaml", "--smoke", "--address", address]
        rc = run_cli(args, env, tmp_path / "driver.log")
    log = (tmp_path / "driver.log").read_text()
    assert rc == 0, log[-4000:]
    assert f"joined Ray cluster at {address}" in log
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("digits-smoke")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # served, not a node's disk
    runs = _runs(uri, "digits-smoke")
    trials = [r for r in runs if r.data.tags.get(names.TAG_KIND) != names.KIND_STUDY]
    assert len([r for r in trials if r.data.tags[names.TAG_KIND] == "search"]) == 2
    assert len([r for r in trials if r.data.tags[names.TAG_KIND] == "final"]) == 1
    assert not [r for r in runs if r.info.status == "RUNNING"]
    search_nodes = {
        r.data.tags[names.TAG_NODE_ID] for r in trials if r.data.tags[names.TAG_KIND] == "search"
    }
    assert len(search_nodes) == 2 and search_nodes <= set(nodes)  # both nodes ran a trial
    for r in trials:
        tags = r.data.tags
        assert tags[names.TAG_NODE_IP] and tags[names.TAG_DEVICE] == "cpu"
        assert names.TAG_CUDA_VISIBLE in tags
        arts = _artifacts(client, r.info.run_id)
        assert any(a.startswith("images/") for a in arts), arts
        if tags[names.TAG_STATUS] == names.COMPLETED:
            assert {"student/student.pt", "config.yaml"} <= arts
            test_metric = names.TEST_ACC if tags[names.TAG_KIND] == "final" else names.VAL_MTE
            assert r.data.metrics[test_metric] >= 0
    # Tune's state went to the S3 server
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}/digits/digits-smoke/search")
    listed = [i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))]
    assert any(p.endswith("tuner.pkl") for p in listed), listed[:10]
    assert any("checkpoint_" in p for p in listed)
    # the report, from the server alone
    out = tmp_path / "report"
    args = ["report", "studies/digits.yaml", "--smoke", "--tracking-uri", uri, "--out", str(out)]
    rc = run_cli(args, env, tmp_path / "report.log")
    assert rc == 0, (tmp_path / "report.log").read_text()[-3000:]
    assert (out / "report.html").is_file() and (out / "runs.parquet").is_file()


# ------------------------------------------------------------------ node loss


def _wait_checkpointed_run(uri: str, experiment: str, iterations: int, proc, log: Path):
    """A search run whose first checkpoint Tune's driver has registered, far from done.

    A trial logs to MLflow before each report and its next report waits until the driver asked
    for it, which the driver does only after processing the previous one: once a run has logged
    its third evaluation, the driver holds the checkpoint of the first.
    """
    client = MlflowClient(uri)
    deadline = time.time() + 400
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        for r in _runs(uri, experiment, "search"):
            if r.info.status != "RUNNING" or names.TAG_NODE_ID not in r.data.tags:
                continue
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss_s")]
            if steps and 6 <= max(steps) <= iterations // 2:
                return r
        time.sleep(0.3)
    raise AssertionError("no trial reached a checkpoint: " + log.read_text()[-4000:])


@pytest.mark.slow
def test_worker_node_lost_mid_trial(servers, teacher, tmp_path):
    """Two search trials of the same configuration and seed, one per worker node; the node of one
    is killed without grace mid-trial. Tune retries it on the other node from its checkpoint, its
    MLflow run is continued (one run, FINISHED) and it ends with exactly the weights and metrics
    of the uninterrupted twin (same device type, layout and thread count)."""
    uri = servers["mlflow"]
    iterations = 40
    data = _study(
        "nodeloss",
        teacher,
        uri,
        {"path": str(tmp_path / "shared"), "shared": True},
        loop={"iterations": iterations},
    )
    env = _env(tmp_path / "home")
    log = tmp_path / "driver.log"
    with ray_cluster(
        head={"num_cpus": 0},  # the driver's node runs no trial
        workers=[
            {"num_cpus": 1, "resources": {"node_a": 1}},
            {"num_cpus": 1, "resources": {"node_b": 1}},
        ],
    ) as cluster:
        nodes = _node_ids(cluster)
        args = ["study", "run", str(_write(tmp_path, data)), "--address", cluster.address]
        with cli_process(args, env, log) as proc:
            victim = _wait_checkpointed_run(uri, "nodeloss", iterations, proc, log)
            killed_node = victim.data.tags[names.TAG_NODE_ID]
            cluster.remove_node(nodes[killed_node], allow_graceful=False)
            rc = proc.wait(timeout=600)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    study = optuna.load_study(study_name="nodeloss", storage=_optuna_storage(data))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    runs = _runs(uri, "nodeloss", "search")
    trial_id = victim.data.tags[names.TAG_TRIAL]
    mine = [r for r in runs if r.data.tags[names.TAG_TRIAL] == trial_id]
    assert len(runs) == 2 and len(mine) == 1  # continued, not duplicated
    (killed,) = mine
    (twin,) = [r for r in runs if r.data.tags[names.TAG_TRIAL] != trial_id]
    assert killed.info.status == "FINISHED" and twin.info.status == "FINISHED"
    assert killed.data.tags[names.TAG_STATUS] == names.COMPLETED
    history = killed.data.tags[names.TAG_NODES].split(",")
    assert history[0] == killed_node and history[-1] != killed_node and len(history) == 2
    assert int(killed.data.tags[names.TAG_RESUMED_AT]) >= 2  # from its checkpoint, not scratch
    assert names.TAG_RESUMED_AT not in twin.data.tags
    assert killed.data.tags[names.TAG_CONFIG_ID] == twin.data.tags[names.TAG_CONFIG_ID]
    for key in ("val_acc", "val_mte", "loss_s", "kl", "pseudo_agreement"):
        assert killed.data.metrics[key] == twin.data.metrics[key], key
    client = MlflowClient(uri)
    weights = [
        torch.load(
            client.download_artifacts(r.info.run_id, "student/student.pt", str(tmp_path / n)),
            weights_only=True,
        )["state_dict"]
        for n, r in (("a", killed), ("b", twin))
    ]
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def _optuna_storage(data: dict) -> object:
    from zskt_ray.study.space import open_storage
    from zskt_ray.study.spec import parse_spec

    return open_storage(parse_spec(data).optuna_storage)


# ------------------------------------------------------------------ GPU shares


@pytest.mark.slow
def test_quarter_gpu_trials_share_the_gpu_node(servers, teacher, tmp_path):
    """gpus_per_trial 0.25 on a node declaring 1 GPU: four trials at once on it, none on the
    CPU-only head (which has CPUs to spare), each told its GPU by Ray and falling back to the CPU
    (this machine has no CUDA) with a note."""
    uri = servers["mlflow"]
    data = _study(
        "gpushare",
        teacher,
        uri,
        {"path": str(tmp_path / "shared"), "shared": True},
        loop={"iterations": 30},
        search={"num_trials": 4},
        resources={"cpus_per_trial": 0.5, "gpus_per_trial": 0.25, "max_concurrent": 4},
    )
    env = _env(tmp_path / "home")
    with ray_cluster(head={"num_cpus": 4}, workers=[{"num_cpus": 2, "num_gpus": 1}]) as cluster:
        (gpu_node,) = cluster.worker_nodes
        args = ["study", "run", str(_write(tmp_path, data)), "--address", cluster.address]
        rc = run_cli(args, env, tmp_path / "driver.log")
    assert rc == 0, (tmp_path / "driver.log").read_text()[-4000:]
    runs = _runs(uri, "gpushare", "search")
    assert len(runs) == 4
    for r in runs:
        tags = r.data.tags
        assert tags[names.TAG_NODE_ID] == gpu_node.node_id  # never on the head
        assert tags[names.TAG_CUDA_VISIBLE] == "0"  # the GPU Ray assigned to the trial
        if not torch.cuda.is_available():
            assert tags[names.TAG_DEVICE] == "cpu"
            assert "no CUDA" in tags[names.TAG_DEVICE_NOTE]
        assert r.info.status == "FINISHED"
    # all four ran at the same time: some instant lies inside every run
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)


# ------------------------------------------------------------------ S3 + journal, second driver


@pytest.mark.slow
def test_s3_and_journal_resume_from_a_second_driver(servers, teacher, tmp_path):
    """Tune state on S3, Optuna in a journal file on shared storage, MLflow on the server. The
    first driver is killed (SIGKILL, with the Ray it started) once a trial has finished; a second
    driver with an empty $ZSKT_HOME resumes from S3 and finishes with no trial repeated."""
    uri = servers["mlflow"]
    shared = tmp_path / "shared"
    storage = {"path": f"s3://{BUCKET}/resume", "optuna": f"journal://{shared / 'optuna.journal'}"}
    data = _study(
        "s3resume",
        teacher,
        uri,
        storage,
        loop={"iterations": 12},
        search={"num_trials": 4, "space": {"n_s": [1, 2], "beta": [0.0, 250.0]}},
    )
    study_file = _write(tmp_path, data)
    log = tmp_path / "driver1.log"
    storage_obj = _optuna_storage(data)

    def finished() -> int:
        try:
            study = optuna.load_study(study_name="s3resume", storage=storage_obj)
        except KeyError:
            return 0
        return sum(t.state.is_finished() for t in study.trials)

    env1 = _env(tmp_path / "home1", TUNE_GLOBAL_CHECKPOINT_S="1")
    with cli_process(["study", "run", str(study_file)], env1, log) as proc:
        deadline = time.time() + 400
        while finished() < 1 and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-4000:]
            time.sleep(0.5)
        assert finished() >= 1, log.read_text()[-4000:]
    assert finished() < 4, "the first driver finished the study before it was killed"
    env2 = _env(tmp_path / "home2")  # another machine's view: only shared storage and the server
    rc = run_cli(["study", "resume", str(study_file)], env2, tmp_path / "driver2.log")
    text = (tmp_path / "driver2.log").read_text()
    assert rc == 0, text[-4000:]
    assert f"search: resuming from s3://{BUCKET}/resume/s3resume/search" in text
    study = optuna.load_study(study_name="s3resume", storage=storage_obj)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    tune_ids = [t.user_attrs[names.ATTR_TUNE_ID] for t in study.trials]
    assert len(set(tune_ids)) == 4
    runs = _runs(uri, "s3resume", "search")
    assert sorted(r.data.tags[names.TAG_TRIAL] for r in runs) == sorted(tune_ids)
    assert not [r for r in _runs(uri, "s3resume") if r.info.status == "RUNNING"]
    assert not list((tmp_path / "home2").glob("**/*.db"))  # nothing local on the second driver
