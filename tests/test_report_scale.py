"""Loading at scale: metric histories in bulk (database store and tracking server) equal the
run-by-run histories; the benchmark script builds and reports a small experiment."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from zskt_ray.analysis.load import StudyRef, bulk_histories, load_study

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "report_scale", ROOT / "benchmarks" / "report_scale.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _one_by_one(client: MlflowClient, run_ids: list[str], key: str) -> pd.DataFrame:
    rows = [
        (rid, key, m.step, m.value) for rid in run_ids for m in client.get_metric_history(rid, key)
    ]
    df = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    return df.sort_values(["run_id", "key", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    bench = _bench()
    uri, optuna_url = f"sqlite:///{tmp / 'mlflow.db'}", f"sqlite:///{tmp / 'optuna.db'}"
    bench.build(uri, optuna_url, runs=8, reports=4, workers=1, artifacts=tmp / "artifacts")
    return bench, tmp, uri, optuna_url


def test_bulk_histories_equal_run_by_run(small):
    bench, tmp, uri, optuna_url = small
    data = load_study(StudyRef(None, uri, bench.STUDY, optuna_url), progress=False)
    assert len(data.runs) == 8 and data.budget == 400 and data.rungs == [100, 200]
    ids = sorted(data.runs["run_id"])
    want = _one_by_one(MlflowClient(tracking_uri=uri), ids, "val_acc")
    got = data.histories[data.histories["key"] == "val_acc"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert len(want) > 8  # several reports per run
    # iterations reached by each trial = its last report
    last = want.groupby("run_id")["step"].max()
    assert (
        dict(zip(data.runs["run_id"], data.runs["iterations_reached"], strict=True))
        == last.to_dict()
    )


@pytest.mark.slow
def test_bulk_histories_through_a_tracking_server_and_the_benchmark(small, tmp_path):
    bench, tmp, uri, optuna_url = small
    proc, url = bench.start_server(tmp / "mlflow.db", tmp / "artifacts")
    try:
        sql_client, http_client = MlflowClient(tracking_uri=uri), MlflowClient(tracking_uri=url)
        ids = [r.info.run_id for r in sql_client.search_runs(["1"], "tags.`zskt.kind` = 'search'")]
        for key in ("val_acc", "kl"):
            want = bulk_histories(sql_client, ids, [key])
            got = bulk_histories(http_client, ids, [key])
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
            pd.testing.assert_frame_equal(
                want, _one_by_one(sql_client, ids, key), check_dtype=False
            )
        secs, line = bench.time_report(url, optuna_url, tmp_path / "rep")
        assert "8 runs" in line and secs > 0
        assert (tmp_path / "rep" / "report.html").is_file()
    finally:
        bench.stop_server(proc)
    assert proc.poll() is not None
