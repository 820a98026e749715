"""cluster.yaml: Ray's own cluster-launcher validation (no cloud calls), plus what the study needs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(_load())
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # CPU head
    gpu_types = [
        t for t in config["available_node_types"].values() if t["resources"].get("GPU", 0) > 0
    ]
    assert gpu_types and all(t["min_workers"] < t["max_workers"] for t in gpu_types)  # autoscaling


def test_cluster_yaml_sets_up_the_study_stack():
    config = _load()
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ." in setup  # the project on every node
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # dashboard not public
    assert "mlflow server" in head_start and "--host 0.0.0.0" not in head_start
    assert "hostname -I" in head_start  # bound to the private IP, reachable by workers
    assert "ZSKT_STORAGE=s3://" in head_start and "MLFLOW_TRACKING_URI=http://" in head_start
    assert "~/zskt-ray" in config["file_mounts"]


def test_cluster_yaml_turns_on_ray_token_authentication():
    """Every node starts Ray with RAY_AUTH_MODE=token, every command run there (the driver) gets
    it too, and the token reaches each node at Ray's default path, readable by the user alone."""
    config = _load()
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = config["setup_commands"]
    assert "chmod 600 ~/.ray/auth_token" in setup
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in setup)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert "RAY_AUTH_MODE=disabled" not in (ROOT / "cluster.yaml").read_text()


def test_broken_cluster_yaml_is_rejected():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(_load())
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(_load())
    bad["available_node_types"]["gpu_worker"]["resourcez"] = {"GPU": 1}
    with pytest.raises(Exception, match="resourcez"):
        validate_config(prepare_config(bad))


# ------------------------------------------------------------------ no store only one node sees


def _digits_smoke(**storage):
    from zskt_ray.study.spec import load_spec, parse_spec

    if not storage:
        return load_spec(ROOT / "studies" / "digits.yaml", smoke=True)
    data = yaml.safe_load((ROOT / "studies" / "digits.yaml").read_text())
    data.update(storage)
    return parse_spec(data, source="digits.yaml", smoke=True)


def test_cluster_check_refuses_file_stores_only_on_a_cluster(monkeypatch, tmp_path):
    from zskt_ray.study.cluster import check_cluster_safe, joins_cluster
    from zskt_ray.study.spec import StudyError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ZSKT_STORAGE", raising=False)
    spec = _digits_smoke()  # defaults: sqlite under $ZSKT_HOME, local storage
    check_cluster_safe(spec, None)  # one machine: fine
    check_cluster_safe(spec, "local")  # Ray's "start a local instance" is not a cluster
    assert not joins_cluster("local") and joins_cluster("auto")
    with pytest.raises(StudyError, match=r"mlflow\.tracking_uri: sqlite:.*http://HEAD_PRIVATE_IP"):
        check_cluster_safe(spec, "auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # the environment variable counts too
    with pytest.raises(StudyError, match=r"mlflow\.tracking_uri"):
        check_cluster_safe(spec, None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    spec = _digits_smoke()
    with pytest.raises(StudyError, match=r"storage\.path: .* s3://.*storage\.shared: true"):
        check_cluster_safe(spec, None)
    for storage in (
        {"path": "s3://bucket/prefix"},
        {"path": "gs://bucket/prefix"},
        {"path": str(tmp_path / "nfs"), "shared": True},
    ):
        check_cluster_safe(_digits_smoke(storage=storage), None)
    with pytest.raises(StudyError, match=r"storage\.path"):
        check_cluster_safe(_digits_smoke(storage={"path": f"file://{tmp_path}"}), None)


def test_shared_storage_keys(tmp_path):
    from zskt_ray.study.spec import StudyError

    shared = _digits_smoke(storage={"path": str(tmp_path / "nfs"), "shared": True})
    assert shared.storage_shared
    # Optuna's default on a shared path: a journal file beside the Tune state (no database server)
    assert (
        shared.optuna_storage == f"journal://{tmp_path / 'nfs' / 'digits-smoke' / 'optuna.journal'}"
    )
    assert shared.raw["storage"]["shared"] is True
    journal = _digits_smoke(storage={"optuna": f"journal://{tmp_path / 'o.journal'}"})
    assert journal.optuna_storage == f"journal://{tmp_path / 'o.journal'}"
    assert not journal.storage_shared
    with pytest.raises(StudyError, match=r"storage\.optuna: a journal file needs an absolute path"):
        _digits_smoke(storage={"optuna": "journal://rel/o.journal"})
    with pytest.raises(StudyError, match=r"storage\.shared: expected true/false"):
        _digits_smoke(storage={"shared": "yes"})


def test_journal_storage_is_shared_by_two_openers_and_picklable(tmp_path):
    """What a second driver on another machine sees: the same trials, from the file alone."""
    import pickle

    import optuna

    from zskt_ray.study.space import open_storage

    url = f"journal://{tmp_path / 'shared' / 'optuna.journal'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    trial = study.ask()
    trial.suggest_int("n_s", 1, 10)
    study.tell(trial, 1.5)
    again = optuna.load_study(study_name="s", storage=pickle.loads(pickle.dumps(open_storage(url))))
    assert [(t.params, t.value) for t in again.trials] == [({"n_s": trial.params["n_s"]}, 1.5)]
    from zskt_ray.analysis.load import load_optuna_study

    read, note = load_optuna_study(url, "s")  # what `zskt report` reads
    assert note == "" and [t.value for t in read.trials] == [1.5]
    missing, note = load_optuna_study(f"journal://{tmp_path / 'none.journal'}", "s")
    assert missing is None and "no Optuna journal" in note


def test_cli_refuses_a_split_store_before_joining_the_cluster(monkeypatch, capsys):
    """The exact command of a cluster run with the defaults: exit 2, one error line, no trial.

    The address is one where nothing listens: the refusal comes before Ray is contacted.
    """
    from zskt_ray.cli import main
    from zskt_ray.paths import zskt_home

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ZSKT_STORAGE", raising=False)
    args = ["study", "run", str(ROOT / "studies" / "digits.yaml"), "--smoke"]
    for env, key, fix in (
        ({}, "mlflow.tracking_uri", "mlflow server"),
        ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "storage.path", "storage.shared: true"),
    ):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert main([*args, "--address", "127.0.0.1:9"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f": {key}: " in err[0], err
        assert fix in err[0]
    assert not (zskt_home() / "mlflow.db").exists() and not (zskt_home() / "studies").exists()
    assert not (zskt_home() / "teachers").exists()  # not even the teacher was trained
    import ray

    assert not ray.is_initialized()


def test_trials_get_the_drivers_storage_endpoint_but_no_credentials(monkeypatch):
    from zskt_ray.study.cluster import forwarded_env

    for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://10.0.0.5:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert forwarded_env() == {"AWS_ENDPOINT_URL_S3": "http://10.0.0.5:9000"}


def test_node_history_and_device_note():
    import torch

    from zskt_ray.study.records import device_note as _device_note
    from zskt_ray.study.tracking import _node_history

    assert _node_history(None, "a") == "a" and _node_history("a", "a") == "a"
    assert _node_history("a", "b") == "a,b" and _node_history("a,b", None) == "a,b"
    assert _device_note("cpu", torch.device("cpu")) == ""
    assert _device_note("cuda", torch.device("cuda")) == ""
    assert "no CUDA device on this node: running on the CPU" in _device_note(
        "cuda", torch.device("cpu")
    )
