"""One retry policy for every MLflow call: a locked SQLite store is waited for, other errors are
not retried, and a tracking server is left to MLflow's own HTTP retries."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy.exc
import tenacity
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from zskt_ray.study import tracking

LOCKED_FOR = 23.0  # seconds: longer than MLflow's SQLite busy timeout (PRAGMA busy_timeout 20 s)


@pytest.mark.slow
def test_a_locked_sqlite_store_is_waited_for(tmp_path):
    """Another process holds the SQLite file's write lock longer than the busy timeout MLflow sets
    (20 s): a read fails with "database is locked" and is tried again until the lock is gone."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    info = tracking.setup_study(uri, "locked", "locked", {"name": "locked"})
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(LOCKED_FOR, holder.rollback)
    release.start()
    t0 = time.perf_counter()
    try:
        run = tracking.client(uri).get_run(info.parent_run_id)
    finally:
        release.join()
        holder.close()
    assert run.info.run_id == info.parent_run_id
    assert time.perf_counter() - t0 >= LOCKED_FOR  # it waited for the lock, through a retry


def _flaky(monkeypatch, error: Exception, failures: int) -> list[int]:
    """MlflowClient.get_run raising ``error`` ``failures`` times, then answering; the calls made."""
    calls: list[int] = []

    def get_run(self, run_id):
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return run_id

    monkeypatch.setattr(MlflowClient, "get_run", get_run)
    monkeypatch.setattr(tracking.STORE_RETRY, "wait", tenacity.wait_none())
    return calls


def test_transient_errors_are_retried_and_others_are_not(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    busy = MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
    calls = _flaky(monkeypatch, busy, failures=2)
    assert tracking.client(uri).get_run("r1") == "r1" and len(calls) == 3
    calls = _flaky(monkeypatch, busy, failures=10)
    with pytest.raises(MlflowException, match="database is locked"):
        tracking.client(uri).get_run("r1")
    assert len(calls) == 5  # the policy's five tries, then the error itself
    pool = MlflowException("QueuePool limit reached, connection timed out")
    pool.__cause__ = sqlalchemy.exc.TimeoutError("QueuePool limit reached")
    calls = _flaky(monkeypatch, pool, failures=1)
    assert tracking.client(uri).get_run("r1") == "r1" and len(calls) == 2
    calls = _flaky(monkeypatch, MlflowException("no such run"), failures=1)
    with pytest.raises(MlflowException, match="no such run"):
        tracking.client(uri).get_run("r1")
    assert len(calls) == 1


def test_a_tracking_server_uses_mlflows_http_retries(monkeypatch):
    busy = MlflowException("unavailable", error_code=TEMPORARILY_UNAVAILABLE)
    calls = _flaky(monkeypatch, busy, failures=1)
    with pytest.raises(MlflowException):
        tracking.client("http://127.0.0.1:5000").get_run("r1")
    assert len(calls) == 1  # not retried again on top of MLflow's own retries
    for key in tracking.HTTP_RETRY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    env = tracking.runtime_env_vars("http://127.0.0.1:5000")
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the driver's setting goes to the trials
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in env  # unset: MLflow's default, there too
