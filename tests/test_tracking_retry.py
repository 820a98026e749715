"""One retry policy for every MLflow call: a locked SQLite store is waited for, other errors are
not retried, and a tracking server that does not answer is waited for up to the study's limit
(mlflow.max_outage_s), with MLflow's own HTTP retries kept short inside."""

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


def _unreachable_error() -> MlflowException:
    """What MLflow raises when its HTTP retries could not reach the server."""
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except requests.exceptions.ConnectionError as e:
            raise MlflowException(f"API request failed with {e}")  # noqa: B904 - as MLflow does
    except MlflowException as wrapped:
        return wrapped


def test_a_tracking_server_is_waited_for_while_it_does_not_answer(monkeypatch):
    calls = _flaky(monkeypatch, _unreachable_error(), failures=3)
    c = tracking.client("http://127.0.0.1:5000")
    monkeypatch.setattr(c.policy, "wait", tenacity.wait_none())
    assert c.get_run("r1") == "r1" and len(calls) == 4  # tried again until it answered
    busy = MlflowException("unavailable", error_code=TEMPORARILY_UNAVAILABLE)
    calls = _flaky(monkeypatch, busy, failures=1)
    with pytest.raises(MlflowException, match="unavailable"):
        c.get_run("r1")
    assert len(calls) == 1  # an answer (even 503 after MLflow's retries) is not an outage


def test_past_the_limit_a_call_fails_with_one_line(monkeypatch):
    """A port nobody listens on, a 3 s limit: the call gives up after about the limit, with one
    line naming the server, the limit and the study key."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailable) as e:
        tracking.client(uri, max_outage_s=3).get_run("0" * 32)
    assert 3 <= time.perf_counter() - t0 < 60
    message = str(e.value)
    assert "\n" not in message and uri in message and "mlflow.max_outage_s=3" in message


def test_a_run_lost_in_an_outage_is_created_once(tmp_path, monkeypatch):
    """The server created the run and died before answering: the try after the failed one finds
    the run instead of creating a second one."""
    monkeypatch.setattr(tracking, "_SERVER_SCHEMES", ("http", "https", "sqlite"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    info = tracking.setup_study(uri, "lost", "lost", {"name": "lost"}, max_outage_s=30)
    real = MlflowClient.create_run
    answers: list[str] = []

    def create_run(self, *args, **kwargs):
        run = real(self, *args, **kwargs)
        answers.append(run.info.run_id)
        if len(answers) == 1:
            raise _unreachable_error()  # created, but the answer never came
        return run

    monkeypatch.setattr(MlflowClient, "create_run", create_run)
    run = tracking.TrialRun.open(info, "search", "t1", {"n_s": 2}, "cfg", "cpu")
    assert answers == [run.run_id]
    assert len(tracking.study_trial_runs(info)) == 1


def test_trials_get_the_drivers_http_retry_settings_or_the_studys(monkeypatch):
    for key in tracking.HTTP_RETRY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    env = tracking.runtime_env_vars("http://127.0.0.1:5000")
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the driver's setting goes to the trials
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"  # unset: the study's short retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    assert tracking.runtime_env_vars("http://h:5000")["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    local = tracking.runtime_env_vars("sqlite:////tmp/x.db")
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in local  # no server, no HTTP settings
