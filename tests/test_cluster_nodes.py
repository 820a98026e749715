"""Work a study sends to the nodes of a real multi-node Ray cluster (``ray.cluster_utils``, a real
``mlflow server``, all on 127.0.0.1 and stopped by process id): the missing teacher trained on the
node that has the GPU, and the data set prepared once before the trials.

The head declares no GPU, the worker declares one (``num_gpus=1``); torch sees no CUDA here, so
the teacher's task runs on the worker's CPU and says so (the device note). The data set is a fake
CIFAR-10 whose "download" (tests/fake_download.py, through data.py's ``ZSKT_TEST_DOWNLOADER``
hook, which every node inherits from this process) writes slowly and counts itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from cluster_fixtures import mlflow_server, patched_environ, ray_cluster, run_cli  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from zskt_ray import names  # noqa: E402
from zskt_ray.data import DOWNLOADER_HOOK_ENV  # noqa: E402
from zskt_ray.teacher import read_teacher_meta  # noqa: E402

HERE = Path(__file__).resolve().parent


def _study(tmp_path: Path, uri: str) -> dict:
    """Four search trials on a fake CIFAR-10 with download on, a missing teacher."""
    return {
        "name": "nodes",
        "dataset": "cifar10",
        "data_root": str(tmp_path / "data"),
        "download": True,
        "data_shared": False,  # prepared per node (both nodes share this machine's disk)
        "teacher": {
            "arch": "wrn-10-1",
            "path": str(tmp_path / "teachers" / "cifar10_wrn-10-1.pt"),
            "train_if_missing": True,
            "train": {"epochs": 1, "milestones": [1], "batch_size": 32},
        },
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 4, "batch_size": 16, "eval_every": 4, "eval_batch_size": 1000},
        "search": {
            "space": {"n_s": [1, 2]},
            "num_trials": 4,
            "sampler": "random",
            "max_failures": 0,
            "scheduler": {"type": "none"},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent": 4},
        "evaluation": {
            "mte_search": {"k": 2, "n_test": 8},
            "mte_final": {"k": 2, "n_test": 8},
            "image_grids": 1,
        },
        "final": {"top_k": 0},
        "kdat": {"enabled": False},
        "storage": {"path": str(tmp_path / "shared"), "shared": True},
        "mlflow": {"tracking_uri": uri},
    }


@pytest.mark.slow
def test_teacher_on_the_gpu_node_and_data_prepared_once(tmp_path):
    """A study with a missing teacher and ``download: true`` on a CPU head + GPU worker: the
    teacher is trained by a task on the worker (its node in the file's metadata and the log) and
    the trials use it; the data set is downloaded once for the root both nodes share and no trial
    downloads; ``zskt teacher train --address`` trains on the worker too."""
    downloads = tmp_path / "downloads.log"
    downloads.touch()
    hook = {
        DOWNLOADER_HOOK_ENV: f"{HERE / 'fake_download.py'}:slow_cifar10",
        "ZSKT_TEST_DOWNLOADS_LOG": str(downloads),
        "ZSKT_SCRATCH": str(tmp_path / "scratch"),
    }
    home = tmp_path / "home"
    env = {**os.environ, **hook, "ZSKT_HOME": str(home), "ZSKT_TUNE_VERBOSE": "0"}
    env.pop("RAY_ADDRESS", None)
    with (
        mlflow_server(tmp_path / "mlflow") as uri,
        patched_environ(hook),
        ray_cluster(head={"num_cpus": 2}, workers=[{"num_cpus": 2, "num_gpus": 1}]) as cluster,
    ):
        data = _study(tmp_path, uri)
        study_file = tmp_path / "nodes.yaml"
        study_file.write_text(yaml.safe_dump(data))
        (gpu_node,) = cluster.worker_nodes
        head_id = cluster.head_node.node_id
        args = ["study", "run", str(study_file), "--address", cluster.address]
        rc = run_cli(args, env, tmp_path / "driver.log")
        log = (tmp_path / "driver.log").read_text()
        assert rc == 0, log[-4000:]
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("nodes")
        runs = [
            r
            for r in client.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH
        ]
        hand = tmp_path / "hand.pt"
        args = ["teacher", "train", "--address", cluster.address, "--dataset", "digits",
                "--arch", "wrn-10-1", "--epochs", "1", "--milestones", "1", "--out", str(hand)]  # fmt: skip
        rc = run_cli(args, env, tmp_path / "teacher.log")
        by_hand = (tmp_path / "teacher.log").read_text()
        assert rc == 0, by_hand[-3000:]

    # the teacher: trained by a task on the GPU node, written into the driver's store
    meta = read_teacher_meta(data["teacher"]["path"])
    where = meta[names.TEACHER_TRAINED_ON]
    assert where["node_id"] == gpu_node.node_id != head_id
    assert where["device"] == "cpu" and "no CUDA" in where["device_note"]  # no CUDA here
    assert f"teacher: training on node {gpu_node.node_id}" in log
    assert "teacher wrn-10-1 on cifar10: training it as a Ray task (1 CPU, 1 GPU)" in log
    # its trials used it, on both nodes
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags[names.TAG_NODE_ID] for r in runs} == {head_id, gpu_node.node_id}
    for r in runs:
        assert r.data.metrics["teacher_test_acc"] == pytest.approx(meta["test_acc"])
    # the data set: one download for the shared root, before any trial; the other node waited
    assert len(downloads.read_text().splitlines()) == 1, downloads.read_text()
    assert log.count("data: cifar10 under") == 2 and log.count(" downloaded on node ") == 1
    assert "data: cifar10 prepared before the trials (2 node(s); data_shared: false)" in log
    assert (tmp_path / "data" / ".zskt-cifar10.ready").is_file()
    assert not list((tmp_path / "scratch").glob("*/zskt-*"))  # no temporary folder left
    # by hand: `zskt teacher train --address` trains on the GPU node too
    out = json.loads(by_hand.strip().splitlines()[-1])
    assert out["path"] == str(hand) and out["trained_on"]["node_id"] == gpu_node.node_id
    assert f"teacher: training on node {gpu_node.node_id}" in by_hand
