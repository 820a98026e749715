"""The MLflow internals that analysis/load.py reads metric histories in bulk through.

MlflowClient has no public call that reads the histories of many runs at once, so
``bulk_histories`` uses a database store's ``get_metric_history_bulk`` (through the client's
private ``_tracking_client.store``) and a tracking server's ``get-history-bulk`` endpoint (the
one MLflow's UI calls). Should a newer MLflow drop one of them, the report still reads the same
values, run by run, far slower at scale (2,000 runs: thousands of calls instead of a few); these
tests fail first and say what is gone. The ``mlflow`` pin in pyproject.toml names this file.
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from zskt_ray.analysis.load import (
    _BULK_RUNS_REST,
    HISTORY_BULK_ENDPOINT,
    bulk_histories,
    history_reader,
)

FIX = "adapt analysis/load.py (bulk_histories), or keep the mlflow pin in pyproject.toml"
SLOWER = f"reports would read every run's metric history in its own call (same values, far slower); {FIX}"
BROKEN = f"reports through a tracking server would fail reading metric histories; {FIX}"


def _version() -> str:
    return f"MLflow {mlflow.__version__}"


def test_database_store_reads_histories_in_bulk(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    assert store is not None, f"{_version()}: MlflowClient._tracking_client.store is gone; {SLOWER}"
    assert hasattr(store, "get_metric_history_bulk"), (
        f"{_version()}: {type(store).__name__}.get_metric_history_bulk is gone; {SLOWER}"
    )
    assert history_reader(client) == "database", f"{_version()}: {SLOWER}"
    exp = client.create_experiment("e")
    run = client.create_run(exp).info.run_id
    for step in (10, 20):
        client.log_metric(run, "val_acc", step / 2, step=step)
    got = bulk_histories(client, [run], ["val_acc"])
    assert got[["step", "value"]].values.tolist() == [[10, 5.0], [20, 10.0]]


def test_tracking_server_answers_history_requests_in_bulk():
    """Checked without a server: the client's REST store, the request helpers, and the route in
    the server application of the installed MLflow (tests/test_report_scale.py reads through a
    running server)."""
    client = MlflowClient(tracking_uri="http://127.0.0.1:9")  # never contacted
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    assert hasattr(store, "get_host_creds"), (
        f"{_version()}: the REST store has no get_host_creds; {SLOWER}"
    )
    assert history_reader(client) == "server", f"{_version()}: {SLOWER}"
    try:
        from mlflow.utils.rest_utils import http_request, verify_rest_response  # noqa: F401
    except ImportError as e:
        raise AssertionError(
            f"{_version()}: mlflow.utils.rest_utils changed ({e}); {BROKEN}"
        ) from e
    from mlflow.server import app, handlers

    rules = {r.rule for r in app.url_map.iter_rules()}
    assert HISTORY_BULK_ENDPOINT in rules, (
        f"{_version()}: the tracking server has no route {HISTORY_BULK_ENDPOINT}; {BROKEN}"
    )
    cap = getattr(handlers, "MAX_RUNS_GET_METRIC_HISTORY_BULK", None)
    assert cap is not None and cap >= _BULK_RUNS_REST, (
        f"{_version()}: the server's runs per get-history-bulk request are {cap}, "
        f"analysis/load.py sends {_BULK_RUNS_REST}; {BROKEN}"
    )
