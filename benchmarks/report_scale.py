"""How long `zskt report` takes on a big experiment (issue: reports at cluster scale).

Builds, through MLflow's client API, one study experiment like a cluster sweep leaves it: a parent
run with its study.yaml, N search trial runs (params, zskt tags, R reports of M metrics each with
step = iteration; most stopped by ASHA at a rung), and a matching Optuna study; then times the
`zskt report` command on it, in a fresh process, against the SQLite store directly and/or through
a local `mlflow server` (started on 127.0.0.1 and stopped by its process id).

    python benchmarks/report_scale.py                      # 2,000 runs x 16 reports x 10 metrics
    python benchmarks/report_scale.py --runs 40 --reports 4 --store sqlite   # quick check

The store is built once per --workdir and reused (delete the folder to rebuild).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

METRICS = (
    "val_acc",
    "loss_g",
    "loss_s",
    "kl",
    "at",
    "teacher_conf",
    "student_conf",
    "pseudo_agreement",
    "lr_s",
    "iters_per_s",
)
EVAL_EVERY = 100
STUDY = "scale"


def _spec(runs: int, reports: int, uri: str, optuna_url: str) -> dict:
    iterations = reports * EVAL_EVERY
    return {
        "name": STUDY,
        "dataset": "cifar10",
        "teacher": {"arch": "wrn-40-2"},
        "student": {"arch": "wrn-16-1"},
        "loop": {"iterations": iterations, "eval_every": EVAL_EVERY, "batch_size": 128},
        "search": {
            "space": {
                "n_s": {"type": "int", "low": 1, "high": 10},
                "beta": {"type": "float", "low": 1.0, "high": 1000.0, "log": True},
                "z_dim": {"type": "categorical", "choices": [32, 64, 100]},
            },
            "metric": "val_acc",
            "mode": "max",
            "num_trials": runs,
            "scheduler": {"type": "asha", "grace_period": EVAL_EVERY, "reduction_factor": 2},
        },
        "storage": {"optuna": optuna_url},
        "mlflow": {"tracking_uri": uri, "experiment": STUDY},
    }


def _trial(i: int, reports: int, rng: random.Random) -> dict:
    n_s, beta, z_dim = rng.randint(1, 10), 10 ** rng.uniform(0, 3), rng.choice([32, 64, 100])
    # ASHA with reduction factor 2: half the trials stop at each rung
    stop = reports
    for k in range(int(math.log2(reports)) + 1):
        if rng.random() < 0.5 and 2**k < reports:
            stop = 2**k
            break
    quality = 60 + 3 * math.log10(beta) + n_s - abs(z_dim - 64) / 32 + rng.gauss(0, 1)
    return dict(n_s=n_s, beta=beta, z_dim=z_dim, stop=stop, quality=quality)


def build(
    uri: str, optuna_url: str, runs: int, reports: int, workers: int, artifacts: Path
) -> float:
    """The experiment (MLflow client API only) and the Optuna study; returns seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from zskt_ray.config import DistillConfig, to_dict

    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(
        STUDY,
        artifact_location=artifacts.as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    parent = client.create_run(
        exp, run_name=STUDY, tags={"zskt.study": STUDY, "zskt.kind": "study"}
    )
    pid = parent.info.run_id
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "study.yaml")
        p.write_text(yaml.safe_dump(_spec(runs, reports, uri, optuna_url), sort_keys=False))
        client.log_artifact(pid, str(p))
    rng = random.Random(0)
    trials = [_trial(i, reports, rng) for i in range(runs)]
    now = int(time.time() * 1000)

    def one(i: int) -> str:
        t = trials[i]
        status = "completed" if t["stop"] == reports else "pruned"
        cfg = to_dict(
            DistillConfig(
                dataset="cifar10",
                teacher_arch="wrn-40-2",
                student_arch="wrn-16-1",
                iterations=reports * EVAL_EVERY,
                eval_every=EVAL_EVERY,
                n_s=t["n_s"],
                beta=t["beta"],
                z_dim=t["z_dim"],
            )
        )
        run = client.create_run(
            exp,
            run_name=f"search {i}",
            start_time=now + i,
            tags={
                "mlflow.parentRunId": pid,
                "zskt.study": STUDY,
                "zskt.kind": "search",
                "zskt.trial_id": f"bench_{i:05d}",
            },
        )
        rid = run.info.run_id
        metrics = []
        for r in range(1, t["stop"] + 1):
            step = r * EVAL_EVERY
            for k, m in enumerate(METRICS):
                value = t["quality"] * (1 - 0.5 ** (r / 2)) if m == "val_acc" else k + 1 / r
                metrics.append(Metric(m, float(value), now + step, step))
        tags = [
            RunTag("zskt.status", status),
            RunTag("zskt.config_id", f"cfg{i}"),
            RunTag("zskt.device", "cuda"),
        ]
        if status == "pruned":
            tags.append(
                RunTag(
                    "zskt.status_reason",
                    f"stopped by the scheduler at iteration {t['stop'] * EVAL_EVERY}",
                )
            )
        params = [
            Param(k, str(v) if not isinstance(v, list | tuple) else str(list(v)))
            for k, v in cfg.items()
        ]
        for j in range(0, max(len(metrics), len(params)), 1000):
            client.log_batch(
                rid,
                metrics=metrics[j : j + 1000],
                params=params[j : j + 100] if j == 0 else [],
                tags=tags if j == 0 else [],
            )
        if len(params) > 100:
            for j in range(100, len(params), 100):
                client.log_batch(rid, params=params[j : j + 100])
        client.set_terminated(rid, "FINISHED" if status == "completed" else "KILLED")
        return rid

    with ThreadPoolExecutor(workers) as pool:
        run_ids = list(pool.map(one, range(runs)))
    client.set_terminated(pid, "FINISHED")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=optuna_url, direction="maximize")
    dists = {
        "n_s": optuna.distributions.IntDistribution(1, 10),
        "beta": optuna.distributions.FloatDistribution(1.0, 1000.0, log=True),
        "z_dim": optuna.distributions.CategoricalDistribution([32, 64, 100]),
    }
    frozen = []
    for i, (t, rid) in enumerate(zip(trials, run_ids, strict=True)):
        done = t["stop"] == reports
        frozen.append(
            optuna.trial.create_trial(
                params={k: t[k] for k in dists},
                distributions=dists,
                state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED,
                value=t["quality"] * (1 - 0.5 ** (reports / 2)) if done else None,
                user_attrs={"mlflow_run_id": rid, "tune_trial_id": f"bench_{i:05d}"},
            )
        )
    study.add_trials(frozen)
    return time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, artifacts: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited at start")
    stop_server(proc)
    raise RuntimeError("mlflow server did not answer within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (gunicorn/uvicorn)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def time_report(uri: str, optuna_url: str, out: Path) -> tuple[float, str]:
    # the CLI of the interpreter running this script, not whichever `zskt` PATH finds first
    cmd = [
        sys.executable, "-m", "zskt_ray.cli", "report", "--experiment", STUDY,
        "--tracking-uri", uri, "--optuna-storage", optuna_url, "--out", str(out), "--no-progress",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"zskt report failed: {proc.stderr.strip().splitlines()[-1:]}")
    return dt, proc.stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--reports", type=int, default=16, help="reports (eval intervals) per trial")
    ap.add_argument("--store", choices=("sqlite", "server", "both"), default="both")
    ap.add_argument("--workdir", help="where the store lives (default: a temporary folder)")
    ap.add_argument("--workers", type=int, default=1, help="threads building runs")
    ns = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="zskt-report-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db, optuna_db, artifacts = work / "mlflow.db", work / "optuna.db", work / "artifacts"
    uri, optuna_url = f"sqlite:///{db}", f"sqlite:///{optuna_db}"
    print(f"store {work}: {ns.runs} runs x {ns.reports} reports x {len(METRICS)} metrics")
    if not db.is_file():
        secs = build(uri, optuna_url, ns.runs, ns.reports, ns.workers, artifacts)
        print(f"built in {secs:.1f} s (MLflow client API, {ns.workers} threads)")
    if ns.store in ("sqlite", "both"):
        secs, line = time_report(uri, optuna_url, work / "report-sqlite")
        print(f"zskt report, SQLite store {uri}: {secs:.1f} s  ({line})")
    if ns.store in ("server", "both"):
        proc, url = start_server(db, artifacts)
        try:
            secs, line = time_report(url, optuna_url, work / "report-server")
        finally:
            stop_server(proc)
        print(f"zskt report, mlflow server {url}: {secs:.1f} s  ({line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
