"""Authenticated Ray and MLflow for clusters whose network others share.

Fast: ``zskt auth init`` writes private files and prints no secret; the MLflow request-auth
plugin ``zskt`` reads the credentials file; trials get the file's path, never the password.
Slow: a ``ray start`` cluster with token authentication and a basic-auth ``mlflow server``
(127.0.0.1, free ports, private temp dirs; no ``~/.ray`` is read or written): clients without the
token cannot join, unauthenticated requests get 401, a study's trials log normally through the
credentials file, and the password is in no log, command line, process environment or Ray
runtime environment.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from zskt_ray.study import auth
from zskt_ray.study.auth import (
    AUTH_PLUGIN,
    CREDENTIALS_ENV,
    AuthError,
    CredentialsFileAuth,
    init_secrets,
    read_credentials,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the secret files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_files_only_the_user_can_read(tmp_path):
    files = init_secrets(tmp_path / "shared", tmp_path / "server")
    for path in (files.ray_token, files.mlflow_credentials, files.mlflow_server_config):
        assert _mode(path) == 0o600, path
    assert _mode(files.mlflow_server_secret_key) == 0o600
    assert _mode(tmp_path / "shared") == _mode(tmp_path / "server") == 0o700
    assert files.ray_token.parent == files.mlflow_credentials.parent == tmp_path / "shared"
    assert files.mlflow_server_config.parent == tmp_path / "server"
    assert len(files.ray_token.read_text()) == 64  # 256 bits, hex, as Ray's own generator
    user, password = read_credentials(files.mlflow_credentials)
    assert user == "admin" and len(password) >= 12  # MLflow's minimum
    server = files.mlflow_server_config.read_text()
    assert f"admin_password = {password}\n" in server
    assert f"database_uri = sqlite:///{files.mlflow_server_db}\n" in server
    assert "default_permission = NO_PERMISSIONS" in server
    # each call makes new secrets, and never over old ones
    other = init_secrets(tmp_path / "other")
    assert read_credentials(other.mlflow_credentials)[1] != password
    assert other.ray_token.read_text() != files.ray_token.read_text()
    with pytest.raises(AuthError, match="already exists"):
        init_secrets(tmp_path / "shared", tmp_path / "server")


def test_cli_prints_paths_never_secrets(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "zskt_ray.cli", "auth", "init", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    _, password = read_credentials(tmp_path / "s" / "mlflow-credentials")
    token = (tmp_path / "s" / "ray-token").read_text()
    assert f"ray_token: {tmp_path / 's' / 'ray-token'}" in r.stdout
    assert password not in r.stdout + r.stderr and token not in r.stdout + r.stderr
    again = subprocess.run(
        [sys.executable, "-m", "zskt_ray.cli", "auth", "init", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    assert again.stderr.count("\n") == 1


def test_credentials_readable_by_others_are_refused(tmp_path):
    files = init_secrets(tmp_path / "s")
    files.mlflow_credentials.chmod(0o644)
    with pytest.raises(AuthError, match="readable by others"):
        read_credentials(files.mlflow_credentials)
    with pytest.raises(AuthError, match="cannot read"):
        read_credentials(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("[mlflow]\nmlflow_tracking_username = admin\n")
    bad.chmod(0o600)
    with pytest.raises(AuthError, match="mlflow_tracking_password"):
        read_credentials(bad)


def test_plugin_sends_basic_auth_from_the_file(tmp_path, monkeypatch):
    files = init_secrets(tmp_path / "s")
    user, password = read_credentials(files.mlflow_credentials)
    monkeypatch.setenv(CREDENTIALS_ENV, str(files.mlflow_credentials))
    plugin = CredentialsFileAuth()
    assert plugin.get_name() == AUTH_PLUGIN
    import requests

    request = requests.Request("GET", "http://127.0.0.1:1/x", auth=plugin.get_auth()).prepare()
    expected = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    monkeypatch.delenv(CREDENTIALS_ENV)
    with pytest.raises(AuthError, match=CREDENTIALS_ENV):
        plugin.get_auth()


def test_plugin_is_registered_with_mlflow():
    """The entry point MLflow looks up for MLFLOW_TRACKING_AUTH=zskt (pyproject.toml)."""
    (ep,) = [e for e in entry_points(group="mlflow.request_auth_provider") if e.name == "zskt"]
    assert ep.load() is CredentialsFileAuth
    from mlflow.tracking.request_auth.registry import fetch_auth  # noqa: F401 - loads plugins


def test_trials_get_the_credentials_path_never_the_password(tmp_path, monkeypatch):
    from zskt_ray.study.tracking import HTTP_RETRY_DEFAULTS, HTTP_RETRY_ENV, runtime_env_vars

    uri = "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    for key in HTTP_RETRY_ENV:
        monkeypatch.delenv(key, raising=False)
    base = {"MLFLOW_TRACKING_URI": uri, **HTTP_RETRY_DEFAULTS}  # the server's outage policy
    assert runtime_env_vars(uri) == base  # one machine: nothing about authentication
    files = init_secrets(tmp_path / "s")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", AUTH_PLUGIN)
    monkeypatch.setenv(CREDENTIALS_ENV, str(files.mlflow_credentials))
    env = runtime_env_vars(uri)
    assert env == {
        **base,
        "MLFLOW_TRACKING_AUTH": AUTH_PLUGIN,
        CREDENTIALS_ENV: str(files.mlflow_credentials),
    }
    _, password = read_credentials(files.mlflow_credentials)
    assert password not in repr(env)
    assert auth.forwarded_auth_env() == {
        k: env[k] for k in ("MLFLOW_TRACKING_AUTH", CREDENTIALS_ENV)
    }


# ------------------------------------------------------------------ servers with authentication


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_leak_watch_finds_a_secret_in_a_command_line_or_environment(tmp_path):
    """The check the slow tests rely on can fail: a child holding the secret is caught."""
    from cluster_fixtures import ProcessWatch

    secret = "s3cr3t-" + os.urandom(8).hex()
    for argv, env in (
        ([sys.executable, "-c", "import time; time.sleep(30)", secret], {}),
        ([sys.executable, "-c", "import time; time.sleep(30)"], {"LEAKED": secret}),
    ):
        watch = ProcessWatch([secret])
        proc = subprocess.Popen(argv, env={**os.environ, **env})
        try:
            with watch.watching():
                time.sleep(1.5)
        finally:
            proc.kill()
            proc.wait()
        assert watch.leaks and proc.pid in watch.seen


def _files_containing(folder: Path, secrets: list[str]) -> list[str]:
    hits = []
    needles = [s.encode() for s in secrets]
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                hits += [f"{path}" for n in needles if n in data]
    return hits


def _start_node_without_token(address: str, env: dict[str, str], work: Path) -> tuple[int, str]:
    """``ray start --address`` (a new node) without the token: its exit status and output. Its
    processes, in their own session, are killed by process group afterwards."""
    import signal
    import tempfile

    from cluster_fixtures import free_port

    work.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="zr", dir="/tmp")
    ports = [f"--{name}={free_port()}" for name in ("node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port")]  # fmt: skip
    cmd = [str(Path(sys.executable).with_name("ray")), "start", f"--address={address}",
           "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
           "--disable-usage-stats", *ports]  # fmt: skip
    log = work / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        rc = proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
    return rc, log.read_text()[-3000:]


JOB_RUNTIME_ENVS = """
import ray
from ray.core.generated import gcs_pb2
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
accessor = ray._private.state.state._connect_and_get_accessor()
for raw in accessor.get_job_table(
    skip_submission_job_info_field=True, skip_is_running_tasks_field=True
):
    entry = gcs_pb2.JobTableData.FromString(raw)
    print("RUNTIME_ENV", entry.config.runtime_env_info.serialized_runtime_env)
"""


@pytest.mark.slow
def test_study_on_an_authenticated_cluster(tmp_path):
    """Token-authenticated Ray (2 nodes) and a basic-auth MLflow server: intruders are refused,
    the study's trials log as usual, and the password leaks nowhere."""
    from cluster_fixtures import (
        ProcessWatch,
        mlflow_server,
        ray_auth_env,
        ray_join,
        ray_start_cluster,
        run_cli,
    )
    from mlflow.tracking import MlflowClient

    from zskt_ray import names
    from zskt_ray.config import TeacherConfig
    from zskt_ray.teacher import ensure_teacher

    files = init_secrets(tmp_path / "secrets", tmp_path / "server")
    user, password = read_credentials(files.mlflow_credentials)
    token = files.ray_token.read_text().strip()
    teacher = ensure_teacher(
        TeacherConfig.recipe(
            "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
        ),
        tmp_path / "teacher.pt",
        log=None,
    )
    token_env = ray_auth_env("token", files.ray_token)
    nodes = [{"num_cpus": 1, "resources": {"head_node": 1}}, {"num_cpus": 1}]
    with (
        mlflow_server(tmp_path / "mlflow", auth_config=files.mlflow_server_config) as uri,
        ray_start_cluster(tmp_path / "ray", nodes, token_env) as cluster,
    ):
        address = cluster["address"]
        # --- Ray: no token, token mode off, a wrong token, a node without the token: refused
        intruder_home = tmp_path / "intruder"  # an empty home: no ~/.ray/auth_token to find
        intruder_home.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        base["HOME"] = str(intruder_home)
        wrong = tmp_path / "wrong-token"
        wrong.write_text("0" * 64)
        wrong.chmod(0o600)
        intruders = {
            "no token": base,
            "auth disabled": {**base, "RAY_AUTH_MODE": "disabled"},
            "wrong token": {**base, **ray_auth_env("token", wrong)},
        }
        results: dict[str, subprocess.CompletedProcess] = {}
        threads = [
            threading.Thread(
                target=lambda k=k, e=e: results.__setitem__(k, ray_join(address, e, timeout=180))
            )
            for k, e in intruders.items()
        ]
        for t in threads:
            t.start()
        intruder_node = _start_node_without_token(address, base, tmp_path / "intruder-node")
        for t in threads:
            t.join()
        for label, r in results.items():
            assert r.returncode != 0 and "ALIVE" not in r.stdout, (label, r.stdout)
            assert "InvalidAuthToken" in r.stderr or "Authentication" in r.stderr, (
                label,
                r.stderr[-2000:],
            )
        assert intruder_node[0] != 0, intruder_node[1]
        member = ray_join(address, {**base, **token_env})
        assert member.returncode == 0 and "ALIVE 2" in member.stdout, member.stderr[-2000:]

        # --- MLflow: no credentials, a wrong password: 401; the health check stays open
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _status(search) == 401
        assert _status(search, user, "x" * 48) == 401
        assert _status(search, user, password) == 200
        assert _status(f"{uri}/health") == 200

        # --- a study through the credentials file, watched for leaks while it runs
        study = {
            "name": "authed",
            "dataset": "digits",
            "teacher": {"arch": "wrn-10-1", "path": str(teacher)},
            "student": {"arch": "wrn-10-1"},
            "loop": {"iterations": 6, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
            "search": {
                "space": {"n_s": [1, 2]},
                "num_trials": 2,
                "sampler": "random",
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
            "storage": {"path": str(tmp_path / "shared"), "shared": True},
            "mlflow": {"tracking_uri": uri},
        }
        study_file = tmp_path / "authed.yaml"
        study_file.write_text(yaml.safe_dump(study))
        env = {
            **base,
            **token_env,
            "HOME": os.environ.get("HOME", str(intruder_home)),
            "ZSKT_HOME": str(tmp_path / "home"),
            "ZSKT_TUNE_VERBOSE": "0",
            "MLFLOW_TRACKING_AUTH": AUTH_PLUGIN,
            CREDENTIALS_ENV: str(files.mlflow_credentials),
        }
        env.pop("RAY_ADDRESS", None)
        watch = ProcessWatch([password, token])
        log = tmp_path / "driver.log"
        t0 = time.monotonic()
        with watch.watching():
            rc = run_cli(["study", "run", str(study_file), "--address", address], env, log)
        print(f"authenticated study: {time.monotonic() - t0:.0f} s")
        text = log.read_text()
        assert rc == 0, text[-4000:]
        assert f"joined Ray cluster at {address}" in text
        jobs = subprocess.run(
            [sys.executable, "-c", JOB_RUNTIME_ENVS.format(address=address)],
            env={**base, **token_env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert jobs.returncode == 0, jobs.stderr[-2000:]
        ray_logs = _files_containing(Path(cluster["temp_dir"]), [password, token])
        assert any(Path(cluster["temp_dir"]).rglob("*.log"))  # it did look at Ray's logs

    # the trials logged as usual, on both nodes (the server is gone: its database, directly)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("authed")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    search_runs = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH]
    assert len(search_runs) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics.get(names.VAL_ACC) is not None for r in search_runs)
    assert len({r.data.tags[names.TAG_NODE_ID] for r in search_runs}) == 2  # both nodes

    # the credentials file's path travelled (trial processes and the job's runtime env) ...
    assert str(files.mlflow_credentials) in watch.env_values
    runtime_envs = [line for line in jobs.stdout.splitlines() if line.startswith("RUNTIME_ENV")]
    assert any(str(files.mlflow_credentials) in line for line in runtime_envs), jobs.stdout
    # ... the password and the token did not: no command line, no environment, no runtime env,
    # no log (the driver's, the MLflow server's, Ray's session logs on every node)
    assert len(watch.seen) >= 10, watch.seen  # Ray's processes, the driver, the trials
    assert not watch.leaks, watch.leaks
    assert not any(password in line or token in line for line in runtime_envs)
    assert not ray_logs, ray_logs
    for path in (tmp_path / "driver.log", tmp_path / "mlflow" / "mlflow-server.log"):
        text = path.read_text()
        assert password not in text and token not in text, path


@pytest.mark.slow
def test_local_study_runs_with_rays_default_authentication(tmp_path):
    """A study on one machine sets no Ray authentication of its own: with RAY_AUTH_MODE unset,
    its local Ray gets Ray's default for a new local instance (2.60: token authentication, with
    a token Ray makes in ~/.ray/auth_token; here a private HOME), and the study runs as before."""
    from cluster_fixtures import run_cli

    from zskt_ray.config import TeacherConfig
    from zskt_ray.teacher import ensure_teacher

    teacher = ensure_teacher(
        TeacherConfig.recipe(
            "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
        ),
        tmp_path / "teacher.pt",
        log=None,
    )
    study = {
        "name": "local-default",
        "dataset": "digits",
        "teacher": {"arch": "wrn-10-1", "path": str(teacher)},
        "student": {"arch": "wrn-10-1"},
        "loop": {"iterations": 4, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        "search": {"space": {"n_s": [1]}, "num_trials": 1, "scheduler": {"type": "none"}},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
        "evaluation": {"mte_search": {"k": 2, "n_test": 8}, "mte_final": {"k": 2, "n_test": 8}},
        "final": {"top_k": 0},
        "kdat": {"enabled": False},
    }
    study_file = tmp_path / "local.yaml"
    study_file.write_text(yaml.safe_dump(study))
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "MLFLOW_TRACKING", CREDENTIALS_ENV))
    }
    env.update(HOME=str(home), ZSKT_HOME=str(tmp_path / "zskt"), ZSKT_TUNE_VERBOSE="0")
    rc = run_cli(["study", "run", str(study_file)], env, tmp_path / "driver.log")
    text = (tmp_path / "driver.log").read_text()
    assert rc == 0, text[-4000:]
    assert "started local Ray" in text
    assert "study local-default: 1 completed" in text
    assert (home / ".ray" / "auth_token").is_file()  # Ray's default was in force
