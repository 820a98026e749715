"""cluster/slurm.sbatch: its argument checks, and a smoke study run to the end under a real Slurm
on this one machine (Debian's slurm-wlm and munge, started by the test in a temp dir, two slurmd
nodes so that the job has a head and a worker; every daemon stopped by process id)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import ProcessWatch

from zskt_ray.names import (
    KIND_FINAL,
    KIND_SEARCH,
    KIND_STUDY,
    MLFLOW_DB,
    TAG_KIND,
    TAG_STUDY,
    TEST_ACC,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "slurm.sbatch"
SLURM_TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
JOB_TIMEOUT_S = 1800  # a hang guard
# two slurmd on this host: the job's head and one worker, so every part of the script runs
NODES = 2


def _script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


def test_script_is_valid_bash_with_sbatch_defaults():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    directives = re.findall(r"^#SBATCH (--[a-z-]+)", text, flags=re.M)
    assert {"--nodes", "--ntasks-per-node", "--cpus-per-task", "--time"} <= set(directives)
    assert "##SBATCH --gpus-per-task" in text  # offered, commented out
    assert "0.0.0.0" not in text.replace("never 0.0.0.0", "")  # MLflow bound to the head only
    assert "ray stop" not in text.replace("`ray stop` is never called", "")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "usage: sbatch cluster/slurm.sbatch STUDY.yaml"),
        (["studies/no_such.yaml"], {}, "studies/no_such.yaml: no such study file"),
        (["studies/digits.yaml"], {}, "not inside a Slurm job"),
        (
            ["studies/digits.yaml"],
            {"SLURM_JOB_ID": "1", "ZSKT_VENV": "/nonexistent"},
            "ZSKT_VENV=/nonexistent: no bin/activate",
        ),
    ],
)
def test_script_refuses_bad_use_with_one_line(args, env, message):
    r = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=_script_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert message in r.stderr


# ------------------------------------------------------------------ a private one-node Slurm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _node_names(nodes: int) -> list[str]:
    return [f"n{i}" for i in range(1, nodes + 1)]


def _cpus_per_node(nodes: int) -> int:
    return max(1, (os.cpu_count() or 1) // nodes)


def _slurm_conf(root: Path, munge_socket: Path, nodes: int) -> str:
    """One slurmd per node, all on this host (own port, spool, pid and log file per node)."""
    cpus = _cpus_per_node(nodes)
    node_lines = "".join(
        f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
        f"CPUs={cpus} RealMemory=1000 State=UNKNOWN\n"
        for name in _node_names(nodes)
    )
    return f"""\
ClusterName=zskttest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
{node_lines}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _logs(root: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((root / "log").glob("*"))
    )


@contextlib.contextmanager
def local_slurm(root: Path, nodes: int = 1) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and a slurmd per node (all on this host, the CPUs split between
    them); yield the environment for Slurm clients.

    Everything lives under ``root`` (its own slurm.conf through SLURM_CONF, its own munge key and
    socket, free ports); jobs left running are cancelled and each daemon is stopped by its pid.
    """
    for sub in ("munge", "state", "log"):
        (root / sub).mkdir(parents=True)
    (root / "munge").chmod(0o700)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_socket, nodes))
    (root / "plugstack.conf").write_text("")
    env = _script_env(SLURM_CONF=str(conf))
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={root / 'munge' / 'munge.key'}"], check=True
        )
        # --force: munged refuses a socket under a world-writable /tmp otherwise
        munge_args = ["munged", "--foreground", "--force", f"--socket={munge_socket}"]
        for opt, name in (
            ("key-file", "munge.key"),
            ("pid-file", "munged.pid"),
            ("seed-file", "seed"),
        ):
            munge_args.append(f"--{opt}={root / 'munge' / name}")
        munge_args.append(f"--log-file={root / 'log' / 'munged.log'}")
        daemons = [
            ("munged", munge_args),
            ("slurmctld", ["slurmctld", "-D"]),
            *((f"slurmd-{name}", ["slurmd", "-D", "-N", name]) for name in _node_names(nodes)),
        ]
        for label, args in daemons:
            with open(root / "log" / f"{label}.out", "w") as out:
                procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT))
            if label == "munged":
                deadline = time.monotonic() + 20
                while not munge_socket.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
        deadline = time.monotonic() + 90
        states: list[str] = []
        while time.monotonic() < deadline:
            r = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
            )
            states = r.stdout.split()
            if states == ["idle"] * nodes:
                break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(1)
        if states != ["idle"] * nodes:
            raise RuntimeError(f"local Slurm did not start (node states {states}):\n{_logs(root)}")
        yield env
    finally:
        if len(procs) > 1 and procs[1].poll() is None:  # slurmctld is up: cancel what is left
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                r = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(1)
        for proc in reversed(procs):
            _stop(proc)


def _files_with(folder: Path, needles: list[str]) -> list[str]:
    out = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                out += [str(path) for n in needles if n and n.encode() in data]
    return out


def _while_the_job_runs(
    job: subprocess.Popen, home: Path, port: int, secrets: dict[str, str], watch: ProcessWatch
) -> None:
    """Read the job's secrets once it wrote them (as root, the test may), hand them to the
    process watch, and ask the job's MLflow server for runs without credentials."""
    from zskt_ray.study.auth import read_credentials

    while job.poll() is None and "unauthenticated" not in secrets:
        time.sleep(0.5)
        jobs = sorted((home / "secrets").glob("job-*")) if (home / "secrets").is_dir() else []
        if not jobs:
            continue
        creds, token_file = jobs[0] / "mlflow-credentials", jobs[0] / "ray-token"
        if "password" not in secrets and creds.is_file() and token_file.is_file():
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                secrets["password"] = read_credentials(creds)[1]
                secrets["token"] = token_file.read_text().strip()
                modes = (stat.S_IMODE(p.stat().st_mode) for p in (creds, token_file))
                secrets["modes"] = " ".join(oct(m) for m in modes)
                watch.add(secrets["password"])
                watch.add(secrets["token"])
        if "password" in secrets and _port_open(port):
            url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    secrets["unauthenticated"] = str(r.status)
            except urllib.error.HTTPError as e:
                secrets["unauthenticated"] = str(e.code)
            except OSError:
                continue  # listening, not answering yet


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_runs_a_smoke_study_to_the_end(tmp_path):
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"Slurm/munge not installed (no {', '.join(missing)}): "
            "apt-get install slurm-wlm munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as root here (SlurmUser=root): run as root, as CI does")
    home = tmp_path / "shared"  # the job's shared directory ($ZSKT_HOME)
    ray_port, mlflow_port = _free_port(), _free_port()
    head_args = f"--dashboard-port={_free_port()} --dashboard-agent-listen-port={_free_port()}"
    ray_tmp = tempfile.mkdtemp(prefix="zr", dir="/tmp")  # Ray's socket paths must stay short
    output = tmp_path / "job.out"
    job_env = {
        "ZSKT_HOME": str(home),
        "ZSKT_HEAD_IP": "127.0.0.1",
        "ZSKT_RAY_PORT": str(ray_port),
        "ZSKT_MLFLOW_PORT": str(mlflow_port),
        "ZSKT_RAY_TMPDIR": ray_tmp,
        "ZSKT_RAY_HEAD_ARGS": head_args,
        "ZSKT_MLFLOW_WORKERS": "1",
        # the driver trains the teacher with 1 thread (trials set their own): on a busy 2-core CI
        # machine two OpenMP threads fighting for the cores slowed it down many times
        "OMP_NUM_THREADS": "1",
        # the script's default authentication (ZSKT_AUTH=on) states the Ray and MLflow modes
    }
    if sys.prefix != sys.base_prefix:
        job_env["ZSKT_VENV"] = sys.prefix  # the script activates the test's venv
    # the job's processes, wherever Slurm parented them: those whose environment names this
    # test's Slurm (sbatch passes the submitter's environment on to every job step)
    watch = ProcessWatch([], env_marker=f"SLURM_CONF={tmp_path / 'slurm' / 'slurm.conf'}")
    secrets: dict[str, str] = {}
    try:
        with local_slurm(tmp_path / "slurm", nodes=NODES) as env:
            env.update(job_env)
            for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "ZSKT_AUTH",
                        "MLFLOW_TRACKING_AUTH", "ZSKT_MLFLOW_CREDENTIALS"):  # fmt: skip
                env.pop(key, None)  # the suite's settings: the job states its own
            t0 = time.monotonic()
            with watch.watching():
                job = subprocess.Popen(
                    ["sbatch", "--wait", f"--nodes={NODES}",
                     f"--cpus-per-task={_cpus_per_node(NODES)}", "--time=40", f"--output={output}",
                     f"--chdir={ROOT}", str(SCRIPT), "studies/digits.yaml", "--smoke"],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                try:
                    _while_the_job_runs(job, home, mlflow_port, secrets, watch)
                    stdout, stderr = job.communicate(timeout=JOB_TIMEOUT_S)
                finally:
                    if job.poll() is None:
                        job.kill()
                        job.wait()
            wall = time.monotonic() - t0
            text = output.read_text() if output.exists() else ""
            assert job.returncode == 0, (
                f"{stdout}{stderr}\n{text[-6000:]}\n{_logs(tmp_path / 'slurm')}"
            )
            ray_logs = _files_with(
                Path(ray_tmp), [secrets.get("password", ""), secrets.get("token", "")]
            )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"sbatch --wait: {wall:.0f} s")

    # authentication was on by default: MLflow refused a request without the password, the
    # secrets were read from files only the user could read, and they leaked nowhere: no command
    # line or environment of the job's processes, no log; the job removed them at its end
    assert "authentication on: Ray token auth" in text
    assert {"password", "token"} <= set(secrets), "the job's secrets were never seen"
    assert secrets["unauthenticated"] == "401"
    assert secrets["modes"] == "0o600 0o600"
    assert len(watch.seen) >= 10 and not watch.leaks, watch.leaks
    assert any(v.endswith("/mlflow-credentials") for v in watch.env_values)
    assert not ray_logs, ray_logs
    for path in [output, *(home / "logs").glob("*")]:
        content = path.read_text(errors="replace")
        assert secrets["password"] not in content and secrets["token"] not in content, path
    assert not any((home / "secrets").iterdir()), "the job left its secrets behind"
    assert stat.S_IMODE((home / MLFLOW_DB).stat().st_mode) == 0o600  # umask 077

    # the job: Ray's Slurm pattern (head on n1, a worker on each other node), the study to its
    # end (the Ray cluster line comes once every node joined), everything stopped
    names = _node_names(NODES)
    assert f"{NODES} node(s) ({' '.join(names)}), head {names[0]} (127.0.0.1)" in text
    assert (
        f"Ray cluster at 127.0.0.1:{ray_port}; MLflow server at http://127.0.0.1:{mlflow_port}"
        in text
    )
    assert f"joined Ray cluster at 127.0.0.1:{ray_port}" in text
    summary = re.search(r"study digits-smoke: (\d+) completed, (\d+) pruned, (\d+) failed", text)
    assert summary, text[-4000:]
    assert int(summary[1]) >= 1 and int(summary[3]) == 0
    assert "best configuration" in text and "test accuracy" in text
    assert f"MLflow tracking server: http://127.0.0.1:{mlflow_port}" in text
    assert "stopped the MLflow server and Ray (exit status 0)" in text
    assert not _port_open(mlflow_port) and not _port_open(ray_port)

    # the shared directory holds every piece of state, readable after the job without a server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / MLFLOW_DB}")
    experiment = client.get_experiment_by_name("digits-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_STUDY}` = 'digits-smoke'")
    kinds = sorted(run.data.tags.get(TAG_KIND, "") for run in runs)
    assert kinds == sorted([KIND_STUDY, KIND_SEARCH, KIND_SEARCH, KIND_FINAL])
    assert all(run.info.status != "RUNNING" for run in runs)
    final = next(run for run in runs if run.data.tags.get(TAG_KIND) == KIND_FINAL)
    assert 0 <= final.data.metrics[TEST_ACC] <= 100
    artifacts = [p for p in (home / "mlartifacts").rglob("*") if p.is_file()]
    assert artifacts, "trials wrote no artifacts into the shared mlartifacts/"
    assert (home / "studies" / "digits-smoke" / "search").is_dir()
    assert (home / "teachers").is_dir()

    # after the job, with no server: the report reads runs and artifacts from the shared directory
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ZSKT_STORAGE")}
    env["ZSKT_HOME"] = str(home)
    out = tmp_path / "report"
    r = subprocess.run(
        [sys.executable, "-m", "zskt_ray.cli", "report", "studies/digits.yaml", "--smoke",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = (out / "report.md").read_text()
    assert "No pseudo-image grids" not in report
