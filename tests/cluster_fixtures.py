"""Real multi-node test infrastructure on one machine, reusable by any test module.

- :func:`ray_cluster`: a Ray cluster of a head and worker nodes (``ray.cluster_utils.Cluster``,
  each node its own raylet with its own node id and resources);
- :func:`mlflow_server`: a real ``mlflow server`` on 127.0.0.1 (SQLite backend in a temp dir,
  artifacts served by the server);
- :func:`s3_server`: moto's S3-compatible server on 127.0.0.1, reached through
  ``AWS_ENDPOINT_URL_S3`` (which pyarrow, hence Ray Tune, honours).

Each is a context manager that stops what it started by process id in ``finally``, whatever
happens in the test. Import them from a test module (``from cluster_fixtures import ...``; pytest
puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# moto accepts any credentials; these never leave the machine
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{url}: server exited ({proc.returncode}): {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer after {timeout:.0f} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session: its process group, by id (TERM, then KILL)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def server_process(
    cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None, timeout=300
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group until the block ends; wait until ``ready_url`` answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait_http(ready_url, proc, log, timeout)
        yield proc
    finally:
        _stop(proc)


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, served artifacts); yields its URI.

    The same command the README gives for a cluster's head, bound to 127.0.0.1 instead of the
    head's private address.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    with server_process(cmd, f"{uri}/health", workdir / "mlflow-server.log"):
        yield uri


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with ``bucket`` created; yields the environment that points
    pyarrow / Ray Tune at it (``AWS_ENDPOINT_URL_S3`` plus test credentials)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server_process(cmd, f"{endpoint}/moto-api/", workdir / "moto.log"):
        env = {**S3_TEST_CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint}
        import pyarrow.fs

        fs = pyarrow.fs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=endpoint,
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir(bucket)
        yield env


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (Ray nodes started inside inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _node_pids(node: Any) -> list[int]:
    pids = []
    for infos in getattr(node, "all_processes", {}).values():
        for info in infos:
            proc = getattr(info, "process", None)
            if proc is not None and getattr(proc, "pid", None):
                pids.append(proc.pid)
    return pids


def _put_back(address_file: Path, previous: str | None) -> None:
    """Restore ``/tmp/ray/ray_current_cluster`` as it was before the test cluster."""
    if previous is None:
        address_file.unlink(missing_ok=True)
    else:
        address_file.write_text(previous)


@contextlib.contextmanager
def ray_cluster(head: dict[str, Any], workers: list[dict[str, Any]]) -> Iterator[Any]:
    """A Ray cluster on this machine: a head node and one node per entry of ``workers``.

    ``head`` / ``workers`` are ``Cluster.add_node`` arguments (``num_cpus``, ``num_gpus``,
    ``resources``). Yields the ``Cluster`` (``.address`` to join it, ``.worker_nodes`` to kill
    one with ``remove_node(node, allow_graceful=False)``). Every node's processes are stopped at
    the end, and any that survive ``shutdown()`` are killed by process id.
    """
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    # Cluster() writes its address into /tmp/ray/ray_current_cluster, where every plain
    # ray.init() on this machine (other tests, other users) would find it and join the test
    # cluster: put back what was there as soon as the head is up, and again at the end.
    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.is_file() else None
    cluster = None
    pids: list[int] = []
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "gcs_server_port": free_port(),
                "include_dashboard": False,
                "object_store_memory": 100 * 1024 * 1024,
                **head,
            },
        )
        _put_back(address_file, previous)
        pids += _node_pids(cluster.head_node)
        for args in workers:
            node = cluster.add_node(object_store_memory=100 * 1024 * 1024, **args)
            pids += _node_pids(node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _put_back(address_file, previous)


def run_cli(args: list[str], env: dict[str, str], log: Path, timeout: float = 600) -> int:
    """``zskt ARGS`` in its own process group (killed by id if it outlives ``timeout``)."""
    cmd = [sys.executable, "-m", "zskt_ray.cli", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def cli_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``zskt ARGS`` running in the background for the block; killed by process group at the end."""
    cmd = [sys.executable, "-m", "zskt_ray.cli", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
