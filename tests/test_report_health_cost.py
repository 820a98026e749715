"""The report's health and cost sections and their runs-table columns, against hand-computed values.

A small study is written into a temporary MLflow store the way trials write it (tags
``zskt.health*``, ``zskt.audit``, ``zskt.cost_device``; ``cost_*`` metrics with step = iteration),
without Ray: five search trials (healthy, collapsed and pruned, stalled and stopped, a failed
audit) and two final re-runs. Every figure the sections compute is worked out by hand below.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib import image as mpimg
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from zskt_ray.analysis import schema
from zskt_ray.analysis.load import StudyRef, load_study
from zskt_ray.analysis.report import build_report
from zskt_ray.analysis.sections import cost, health

from zskt_ray import names
from zskt_ray.config import DistillConfig, to_dict

STUDY, ITERS = "hc", 40
AUDIT = "NetworkAuditError: the teacher was passed as the student: KL(T || S) would be 0"
# trial id, n_s, beta, status, health (tag, iteration), val_acc and cost_device_s by iteration
SEARCH = [
    ("s0", 1, 0.0, "completed", ("healthy", None), {10: 50, 20: 60, 40: 70}, {10: 10, 20: 20, 40: 45}),
    ("s1", 1, 250.0, "pruned", ("collapsed", 10), {10: 40}, {10: 12}),
    ("s2", 2, 0.0, "failed", ("stalled", 20), {10: 55, 20: 56}, {10: 8, 20: 16}),
    ("s3", 2, 250.0, "completed", ("healthy", None), {10: 45, 20: 65, 40: 80}, {10: 15, 20: 30, 40: 70}),
    ("s4", 3, 0.0, "failed", (None, None), {}, {0: 0.0}),
]  # fmt: skip
FINAL = [("final-0-seed0", 0, 60.0, 81.0), ("final-0-seed1", 1, 62.0, 83.0)]  # id, seed, s, test
TOTAL, PRUNED = 45 + 12 + 16 + 70 + 0 + 60 + 62, 12


def _params(n_s: int, beta: float, seed: int = 0) -> dict:
    cfg = DistillConfig(
        dataset="digits",
        teacher_arch="wrn-16-2",
        student_arch="wrn-16-1",
        iterations=ITERS,
        eval_every=10,
        n_s=n_s,
        beta=beta,
        seed=seed,
        device="cpu",
    )
    return to_dict(cfg)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hc")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(STUDY, artifact_location=(tmp / "artifacts").as_uri())
    spec = {
        "name": STUDY,
        "loop": {"iterations": ITERS},
        "search": {
            "space": {
                "n_s": {"type": "int", "low": 1, "high": 3},
                "beta": {"type": "categorical", "choices": [0.0, 250.0]},
            },
            "metric": "val_acc",
            "mode": "max",
            "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2},
        },
        "health": {"patience": 3, "min_classes": 2, "stop": True},
    }
    parent = c.create_run(exp, run_name=STUDY, tags={names.TAG_STUDY: STUDY, "zskt.kind": "study"})
    (tmp / "study.yaml").write_text(yaml.safe_dump(spec))
    c.log_artifact(parent.info.run_id, str(tmp / "study.yaml"))
    grid = tmp / "pseudo_iter000010.png"
    mpimg.imsave(grid, np.random.default_rng(0).random((8, 8, 3)))
    t0 = int(time.time() * 1000)

    def child(tid, kind, status, params, cid, tags, curves, final=None, artifact=None):
        run = c.create_run(
            exp,
            run_name=tid,
            tags={
                names.TAG_PARENT: parent.info.run_id,
                names.TAG_STUDY: STUDY,
                names.TAG_KIND: kind,
                names.TAG_TRIAL: tid,
                names.TAG_STATUS: status,
                names.TAG_CONFIG_ID: cid,
                names.TAG_COST_DEVICE: "cpu",
                **tags,
            },
        )
        rid = run.info.run_id
        metrics = [
            Metric(k, float(v), t0, step) for k, pts in curves.items() for step, v in pts.items()
        ]
        last = max((s for pts in curves.values() for s in pts), default=0)
        metrics += [Metric(k, float(v), t0, last) for k, v in (final or {}).items()]
        c.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        if artifact is not None:
            c.log_artifact(rid, str(artifact), names.IMAGES_ARTIFACT_DIR)
        c.set_terminated(rid, {"completed": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED"))

    for tid, n_s, beta, status, (verdict, it), val, spent in SEARCH:
        tags = {}
        if verdict is not None:
            tags[names.TAG_HEALTH] = verdict
        if it is not None:
            tags[names.TAG_HEALTH_REASON] = f"{verdict}: made up (for 3 evaluations)"
            tags[names.TAG_HEALTH_ITERATION] = str(it)
        if tid == "s4":
            tags[names.TAG_AUDIT] = tags[names.TAG_REASON] = AUDIT
        counters = {
            names.COST_WALL_S: {s: v for s, v in spent.items()},
            names.COST_PSEUDO_IMAGES: {s: 100 * s for s in spent},
            names.COST_PEAK_MEM_MIB: {s: 500.0 for s in spent},
            **{p: {s: s for s in spent} for p in names.COST_PASSES},
        }
        curves = {names.VAL_ACC: val, names.COST_DEVICE_S: spent, **counters}
        artifact = grid if tid == "s1" else None
        child(tid, "search", status, _params(n_s, beta), f"cfg-{tid}", tags, curves, None, artifact)
    for tid, seed, spent, test in FINAL:
        curves = {names.VAL_ACC: {ITERS: 80.0}, names.COST_DEVICE_S: {ITERS: spent}}
        curves[names.COST_WALL_S] = {ITERS: spent}
        final = {names.TEST_ACC: test, "iterations_done": ITERS}
        tags = {names.TAG_HEALTH: "healthy"}
        child(tid, "final", "completed", _params(2, 250.0, seed), "cfg-s3", tags, curves, final)
    return load_study(StudyRef(STUDY, uri, STUDY), with_optuna=False)


def test_runs_table_has_the_verdict_and_the_cost_counters(data, tmp_path):
    runs = data.runs.set_index("trial_id")
    assert runs.loc["s1", "health"] == "collapsed" and runs.loc["s1", "health_iteration"] == 10
    assert runs.loc["s2", "health_reason"] == "stalled: made up (for 3 evaluations)"
    assert pd.isna(runs.loc["s0", "health_iteration"]) and runs.loc["s0", "health"] == "healthy"
    assert runs.loc["s4", "audit"] == AUDIT and pd.isna(runs.loc["s4", "health"])
    assert runs.loc["s3", names.COST_DEVICE_S] == 70.0 and runs.loc["s3", "cost_device"] == "cpu"
    assert runs.loc["s3", names.COST_PSEUDO_IMAGES] == 4000
    assert runs.loc["s3", names.COST_STUDENT_BWD] == 40
    for col in (names.COST_PSEUDO_IMAGES, *names.COST_PASSES, "health_iteration"):
        assert str(data.runs[col].dtype) == "Int64", col
    path = schema.write_parquet(data.runs, tmp_path / "runs.parquet", "val_acc", "max", STUDY)
    back = schema.read_parquet(path)
    pd.testing.assert_frame_equal(back, data.runs)  # exact, nulls and dtypes included
    assert schema.read_metadata(path)["schema_version"] == schema.SCHEMA_VERSION == "3"


def test_flagged_runs_and_rates_per_configuration_and_level(data):
    table = health.verdict_table(health.flagged_runs(data.runs))
    assert table["run"].tolist() == ["search s1", "search s2", "search s4"]
    assert table["verdict"].tolist() == ["collapsed", "stalled", "audit failed"]
    assert table["reason"].iloc[2] == AUDIT
    per_config = health.rate_per_config(data.runs, ["n_s", "beta"]).set_index("config_id")
    assert per_config.loc["cfg-s1", ["runs", "collapsed", "stalled", "rate"]].tolist() == [
        1,
        1,
        0,
        1.0,
    ]
    assert per_config.loc["cfg-s3", ["runs", "rate"]].tolist() == [3, 0.0]  # s3 and its re-runs
    assert "cfg-s4" not in per_config.index  # no verdict: it failed its audit
    levels = health.rate_per_level(data.runs, ["n_s", "beta"], {}, {"beta"})
    got = {(r.parameter, r.level): (r.trials, r[4], r[5]) for r in levels.itertuples()}
    assert got == {
        ("n_s", "1"): (2, 50.0, 0.0),  # s0 healthy, s1 collapsed
        ("n_s", "2"): (2, 0.0, 50.0),  # s2 stalled, s3 healthy
        ("beta", "0"): (2, 0.0, 50.0),  # s0, s2
        ("beta", "250"): (2, 50.0, 0.0),  # s1, s3
    }


def test_cost_totals_front_and_rungs(data):
    t = cost.totals(data.runs)
    assert t["all"] == TOTAL and t[names.PRUNED] == PRUNED
    assert t[names.KIND_SEARCH] == 143 and t[names.KIND_FINAL] == 122
    from zskt_ray.analysis.sections.view import ReportOptions, StudyView

    study = StudyView(data, ReportOptions())
    points = cost.trajectories(study)
    assert len(points) == 3 + 1 + 2 + 3  # s4 logged no val_acc
    best = cost.front(points, "max")
    assert list(zip(best["x"], best["y"], strict=True)) == [
        (8, 55), (16, 56), (20, 60), (30, 65), (45, 70), (70, 80)
    ]  # fmt: skip
    rungs = points[points["rung"].notna()]
    assert sorted(zip(rungs["rung"], rungs["step"], strict=True)) == [(10, 10)] * 4 + [(20, 20)] * 3
    assert cost.front(points, "min").iloc[0].tolist()[:2] == [8, 55]


def test_report_sections_say_what_was_flagged_and_what_it_cost(data, tmp_path):
    res = build_report(data, tmp_path / "rep")
    md = res.markdown.read_text()
    section = md[md.index("## Run health") : md.index("\n## ", md.index("## Run health") + 5)]
    assert "watched 6 runs" in section and "1 collapsed" in section and "1 stalled" in section
    assert "1 run(s) failed a wiring audit" in section and AUDIT.replace("||", "\\|\\|") in section
    assert section.count("![") == 1  # s1's grid at its flag; s2 logged none
    assert "No flagged run logged" not in section
    spent = md[md.index("## Cost") :]
    assert (
        f"This study used {TOTAL / 3600:.3g} CPU-hours in its trials ({TOTAL} CPU-seconds" in spent
    )
    assert f"{PRUNED / 3600:.3g} of them ({100 * PRUNED / TOTAL:.0f} %) in pruned trials" in spent
    assert "final-0-seed1" in spent and "83.00" in spent
    assert any(p.name == "cost_accuracy.png" for p in res.figures)
    assert {Path(p).name for p in res.tables} >= {"health_flags.csv", "cost.csv", "final_costs.csv"}


def test_an_ablation_s_rates_name_its_cells_and_every_run_s_cost_is_listed(data):
    """A designed ablation: a cell's seeds share a configuration id, so the rate per configuration
    is the rate per cell (with the cell's label); the cost table lists every ablation run."""
    runs = data.runs[data.runs["kind"] == names.KIND_SEARCH].assign(kind=names.KIND_ABLATION)
    cells = {"s0": ("c0", "n_s=1"), "s1": ("c0", "n_s=1"), "s2": ("c1", "n_s=2")}
    runs = runs[runs["trial_id"].isin(cells)].assign(
        cell=[cells[t][0] for t in runs["trial_id"] if t in cells],
        cell_label=[cells[t][1] for t in runs["trial_id"] if t in cells],
        config_id=[f"cfg-{cells[t][0]}" for t in runs["trial_id"] if t in cells],
        seed=[{"s0": 1, "s1": 0, "s2": 0}[t] for t in runs["trial_id"] if t in cells],
    )
    rates = health.rate_per_config(runs, []).set_index("cell_label")
    assert rates.loc["n_s=1", ["runs", "collapsed", "stalled", "rate"]].tolist() == [2, 1, 0, 0.5]
    assert rates.loc["n_s=2", ["runs", "stalled", "rate"]].tolist() == [1, 1, 1.0]
    spent = cost.measured_costs(runs, names.KIND_ABLATION)
    assert spent["trial_id"].tolist() == ["s1", "s0", "s2"]  # by cell, then seed
    assert spent[names.COST_DEVICE_S].tolist() == [12, 45, 16]
    assert cost.measured_costs(runs, names.KIND_FINAL).empty
