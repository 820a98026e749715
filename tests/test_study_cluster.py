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
