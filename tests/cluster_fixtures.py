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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zskt_ray.study.auth import SERVER_SECRET_KEY_FILE

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


def _stop_all(procs: list[subprocess.Popen], grace: float = 15) -> None:
    """:func:`_stop` for several process groups at once: TERM to all, one grace period, KILL."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace
    for proc in live:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
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


def mlflow_server_command(
    workdir: Path, port: int, backend_store_uri: str | None = None
) -> list[str]:
    """``mlflow server`` on 127.0.0.1:``port`` with its stores in ``workdir`` (SQLite backend
    unless ``backend_store_uri`` names another; served artifacts); the same command again serves
    the same stores (a restarted server)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


@contextlib.contextmanager
def mlflow_server(
    workdir: Path,
    backend_store_uri: str | None = None,
    auth_config: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (served artifacts); yields its URI.

    The same command the README gives for a cluster's head, bound to 127.0.0.1 instead of the
    head's private address. The backend store is SQLite in ``workdir`` unless
    ``backend_store_uri`` names another (a PostgreSQL database). Authentication is stated by the
    caller: none by default, MLflow's basic-auth app with ``auth_config`` (an ``mlflow-auth.ini``
    from ``zskt auth init``, passed as ``MLFLOW_AUTH_CONFIG_PATH``, and the CSRF key beside it as
    ``MLFLOW_FLASK_SERVER_SECRET_KEY``: no secret on the command line).
    ``env`` adds to the server's environment (``PGPASSFILE`` for a database with a password).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = mlflow_server_command(workdir, port, backend_store_uri)
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    server_env.pop("MLFLOW_AUTH_CONFIG_PATH", None)
    if auth_config is not None:
        cmd += ["--app-name", "basic-auth"]
        server_env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
        # the app's CSRF key: MLflow reads it from the environment only
        key_file = auth_config.with_name(SERVER_SECRET_KEY_FILE)
        server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key_file.read_text().strip()
    uri = f"http://127.0.0.1:{port}"
    with server_process(cmd, f"{uri}/health", workdir / "mlflow-server.log", env=server_env):
        yield uri


# ------------------------------------------------------------------ PostgreSQL


def _postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (``/usr/lib/postgresql/<version>/bin``), newest first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    return found[-1].parent if found else None


def postgres_missing() -> str | None:
    """Why :func:`postgres_server` cannot run here (None when it can)."""
    if _postgres_bin() is None:
        return "Debian's postgresql is not installed (apt-get install postgresql; .ci/run does)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver: pip install -e '.[postgres]' (.ci/run does)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run the server as"
    return None


@contextlib.contextmanager
def postgres_server(workdir: Path, databases: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """A real PostgreSQL server (Debian's ``postgresql``) on 127.0.0.1 and a free port.

    ``initdb`` and ``pg_ctl`` run as a non-root user (``postgres`` when the test runs as root,
    which PostgreSQL refuses to run as) with the cluster in a temp dir; the role ``zskt`` has a
    random password that only a password file (``PGPASSFILE``, mode 0600) holds, so no URL and no
    command line carries it. Yields ``{"url": "postgresql+psycopg://zskt@127.0.0.1:PORT", "PGPASSFILE":
    ...}`` (SQLAlchemy's ``postgresql+psycopg://`` driver, the ``postgres`` extra); each of
    ``databases`` exists. The server is stopped by its pid (``pg_ctl stop``, then
    SIGKILL) in ``finally``.
    """
    import secrets

    bindir = _postgres_bin()
    assert bindir is not None, postgres_missing()
    # a private directory outside the test's (root-only) tmp path, owned by the server's user
    root = Path(tempfile.mkdtemp(prefix="zskt-pg-"))
    data, sock = root / "data", root / "sock"
    password = secrets.token_hex(16)
    pwfile = root / "initdb.pw"
    pwfile.write_text(password + "\n")
    port = free_port()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for path in (root, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
        run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    root.chmod(0o700)
    pwfile.chmod(0o600)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    log = workdir / "postgres.log"
    workdir.mkdir(parents=True, exist_ok=True)
    pid = None
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "zskt", "--auth=scram-sha-256",
             f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8"],
            env=env, check=True, capture_output=True, cwd=root, **run_as,
        )  # fmt: skip
        pwfile.unlink()
        sock.mkdir()
        if run_as:
            os.chown(sock, run_as["user"], run_as["group"])
        options = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200"
        server_log = root / "server.log"
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(server_log), "-o", options,
             "-w", "-t", "120", "start"],
            env=env, check=True, capture_output=True, cwd=root, **run_as,
        )  # fmt: skip
        pid = int((data / "postmaster.pid").read_text().split()[0])
        passfile = workdir / "pgpass"
        passfile.write_text(f"127.0.0.1:{port}:*:zskt:{password}\n")
        passfile.chmod(0o600)
        client_env = {**env, "PGPASSFILE": str(passfile)}
        for db in databases:
            subprocess.run(
                [str(bindir / "psql"),
                 "-h", "127.0.0.1", "-p", str(port), "-U", "zskt", "-d", "postgres",
                 "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {db}"],
                env=client_env, check=True, capture_output=True,
            )  # fmt: skip
        yield {"url": f"postgresql+psycopg://zskt@127.0.0.1:{port}", "PGPASSFILE": str(passfile)}
    finally:
        if pid is not None:
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                env=env, capture_output=True, cwd=root, **run_as,
            )  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # pg_ctl stop did not stop it: by pid
        with contextlib.suppress(OSError):
            server_log = root / "server.log"
            if server_log.exists():
                log.write_text(server_log.read_text(errors="replace"))
        shutil.rmtree(root, ignore_errors=True)


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
def patched_environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set environment variables for the block, ``None`` unsetting one (Ray nodes started inside
    inherit them); every one is put back afterwards."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def local_study_ray(home: Path, **env: str) -> Iterator[Path]:
    """One local Ray (2 CPUs, no dashboard) for a module's studies, with ``ZSKT_HOME=home``, the
    default storage and tracking (no ``ZSKT_STORAGE`` or ``MLFLOW_TRACKING_URI``), Ray's
    authentication off and ``env`` set; the environment is put back and Ray shut down after."""
    import ray

    values: dict[str, str | None] = {
        "ZSKT_HOME": str(home),
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": None,
        "ZSKT_STORAGE": None,
        **env,
    }
    with patched_environ(values):
        ray.init(
            address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False
        )
        try:
            yield home
        finally:
            ray.shutdown()


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

    Token authentication is off (``RAY_AUTH_MODE=disabled``, stated for the cluster's life): its
    nodes run from this test process, whose Ray configuration is the suite's. A cluster with
    authentication is :func:`ray_start_cluster`.
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
    auth = patched_environ({"RAY_AUTH_MODE": "disabled"})
    auth.__enter__()
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
        auth.__exit__(None, None, None)


def fit_synthetic_asha(
    spec: Any, study: Any, trainable: Any, num_samples: int, storage: Path
) -> None:
    """Run ``trainable`` (a test's stand-in for the real one, reporting at iterations 2, 4 and 6)
    under the study's searcher and ASHA judging val_acc (rungs at 2 and 4), one trial at a time.
    The trainable's module is pickled by value: ``tests/`` is not importable on Ray's workers."""
    from ray import cloudpickle, tune
    from ray.tune.schedulers import ASHAScheduler

    from zskt_ray import names
    from zskt_ray.study import space

    cloudpickle.register_pickle_by_value(sys.modules[trainable.__module__])
    tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=space.StudySearcher(spec, study),
            scheduler=ASHAScheduler(
                time_attr=names.ITERATION,
                metric="val_acc",
                mode="max",
                max_t=6,
                grace_period=2,
                reduction_factor=2,
            ),
            num_samples=num_samples,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name="synthetic", verbose=0),
    ).fit()


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


# ------------------------------------------------------------------ `ray start` clusters


def ray_auth_env(mode: str, token_file: Path | None = None) -> dict[str, str]:
    """The environment that states a Ray process's authentication: ``RAY_AUTH_MODE`` and, for
    ``token``, ``RAY_AUTH_TOKEN_PATH`` (a private file; never ``~/.ray/auth_token``)."""
    env = {"RAY_AUTH_MODE": mode}
    if mode == "token":
        assert token_file is not None, "token mode needs a private token file"
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    return env


def _clean_ray_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any Ray address or auth setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(extra)
    return env


def _node_ports() -> list[str]:
    """Free ports for the listening services of a node (no default port: another Ray on the
    machine may hold it)."""
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    return [f"--{name}={free_port()}" for name in names]


class ProcessWatch:
    """Reads the command line and environment of every descendant of this test process (or, with
    ``env_marker``, of every process whose environment holds that ``KEY=VALUE``), once a second
    while a block runs, looking for secrets (``add`` more while it runs); counts the processes it
    read and collects the values of ``env_key`` it found."""

    def __init__(
        self,
        secrets: list[str],
        env_key: str = "ZSKT_MLFLOW_CREDENTIALS",
        env_marker: str | None = None,
    ):
        self.secrets = [s.encode() for s in secrets]
        self.env_key = env_key
        self.env_marker = env_marker.encode() + b"\0" if env_marker else None
        self.leaks: list[str] = []
        self.seen: set[int] = set()
        self.env_values: set[str] = set()  # the values of env_key seen in environments
        self._stop = threading.Event()

    def add(self, secret: str) -> None:
        self.secrets.append(secret.encode())

    def _pids(self) -> list[int]:
        import psutil

        if self.env_marker is None:
            return [p.pid for p in psutil.Process(os.getpid()).children(recursive=True)]
        mine = []
        for pid in psutil.pids():
            with contextlib.suppress(OSError):
                if self.env_marker in Path(f"/proc/{pid}/environ").read_bytes():
                    mine.append(pid)
        return mine

    def _scan(self) -> None:
        for pid in self._pids():
            for what in ("cmdline", "environ"):
                try:
                    raw = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                self.seen.add(pid)
                for secret in self.secrets:
                    if secret in raw:
                        self.leaks.append(f"{what} of {pid}: {raw[:200]!r}")
                key = f"{self.env_key}=".encode()
                if what == "environ" and key in raw:
                    self.env_values.add(raw.split(key)[1].split(b"\0")[0].decode())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scan()
            self._stop.wait(1.0)

    @contextlib.contextmanager
    def watching(self):
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)
            self._scan()


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def ray_join(
    address: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """A fresh Python process that joins ``address`` as a Ray driver and prints the number of
    alive nodes; its environment is exactly ``env`` (plus PATH/HOME-like basics from the caller's
    ``env``)."""
    code = (
        "import ray\n"
        f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
        "print('ALIVE', sum(n['Alive'] for n in ray.nodes()))\n"
        "ray.shutdown()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def ray_start_cluster(
    workdir: Path, nodes: list[dict[str, Any]], auth: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """A Ray cluster of ``ray start`` processes on 127.0.0.1, as a cluster's nodes start it.

    ``nodes[0]`` is the head; each entry has ``num_cpus`` and optionally ``resources``. ``auth``
    is the environment every node runs with (:func:`ray_auth_env`: the mode is always stated).
    Each node is ``ray start --block`` in its own process group, with free ports and a private
    temp dir (short: Ray's socket paths must stay short); all are stopped by process group and
    pid in ``finally``. Yields ``{"address": "127.0.0.1:PORT", "temp_dir": ..., "pids": [...],
    "env": the nodes' environment}``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix="zr", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = _clean_ray_env(auth)
    procs: list[subprocess.Popen] = []
    pids: list[int] = []
    try:
        for i, node in enumerate(nodes):
            head = i == 0
            cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                   "--node-ip-address=127.0.0.1", f"--num-cpus={node['num_cpus']}",
                   "--object-store-memory=100000000", *_node_ports()]  # fmt: skip
            if node.get("resources"):
                import json

                cmd.append(f"--resources={json.dumps(node['resources'])}")
            if head:
                cmd += ["--head", f"--port={port}", "--include-dashboard=false"]
            else:
                cmd.append(f"--address={address}")
            with open(workdir / f"ray-node-{i}.log", "w") as out:
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            if head:
                deadline = time.time() + 120
                while time.time() < deadline:
                    assert procs[0].poll() is None, (workdir / "ray-node-0.log").read_text()
                    with (
                        contextlib.suppress(OSError),
                        socket.create_connection(("127.0.0.1", port), 1),
                    ):
                        break
                    time.sleep(0.5)
        deadline = time.time() + 180
        while True:
            r = ray_join(address, env)
            if f"ALIVE {len(nodes)}" in r.stdout:
                break
            if time.time() > deadline:
                logs = "\n".join(p.read_text()[-1500:] for p in workdir.glob("ray-node-*.log"))
                raise RuntimeError(f"Ray cluster not up: {r.stdout}{r.stderr[-2000:]}\n{logs}")
            time.sleep(1)
        for proc in procs:
            pids += [proc.pid, *_descendants(proc.pid)]
        yield {"address": address, "temp_dir": temp_dir, "pids": pids, "env": env}
    finally:
        for proc in procs:
            pids += [proc.pid, *_descendants(proc.pid)]
        _stop_all(procs)
        for pid in set(pids):  # what left the process groups (Ray's own sessions)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
