"""Multi-objective studies (``search.objectives``): the resolved objectives, the searcher's record
of every outcome, a toy2d study end to end through real Ray, Optuna and MLflow with its report,
and (slow) the shipped toy2d study and a killed and resumed multi-objective search.

The malformed study files (unknown or test metrics, wrong modes, ASHA without its one metric) are
cases of tests/test_study_bad_input.py, refused through the CLI before anything starts.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("ray")

import optuna  # noqa: E402
from cluster_fixtures import fit_synthetic_asha  # noqa: E402

from zskt_ray import names  # noqa: E402
from zskt_ray.study.objectives import Objective, with_placeholders  # noqa: E402
from zskt_ray.study.schema import SearchSection  # noqa: E402
from zskt_ray.study.spec import load_spec, parse_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY_FILE = ROOT / "studies" / "toy2d_pareto.yaml"
DIGITS_FILE = ROOT / "studies" / "digits_pareto.yaml"
COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState[s] for s in ("COMPLETE", "PRUNED", "FAIL"))


def brute_force_front(values: np.ndarray, modes: list[str]) -> set[int]:
    """Rows no other row dominates (at least as good in every objective, better in one)."""
    signed = values * np.array([1.0 if m == "max" else -1.0 for m in modes])
    out = set()
    for i, a in enumerate(signed):
        if not any(np.all(b >= a) and np.any(b > a) for j, b in enumerate(signed) if j != i):
            out.add(i)
    return out


# ------------------------------------------------------------------ the resolved objectives


def test_shipped_multi_objective_studies_resolve():
    for path in (TOY_FILE, DIGITS_FILE):
        spec = load_spec(path)
        assert spec.objectives == (Objective("val_acc", "max"), Objective("val_mte", "min"))
        assert spec.multi_objective and spec.metric == "val_acc" and spec.mode == "max"
        assert spec.final.table_objective == "val_acc"
        assert spec.search.metric is None and spec.search.mode is None  # not both
        assert spec.final.top_k == 3 and len(spec.final.seeds) == 3
    assert load_spec(DIGITS_FILE).scheduler_metric == Objective("val_acc", "max")
    smoke = load_spec(DIGITS_FILE, smoke=True)  # the quick version resolves again from its dump
    assert smoke.objectives == load_spec(DIGITS_FILE).objectives
    assert smoke.scheduler.metric == "val_acc"


def test_modes_are_derived_and_single_objective_dumps_are_unchanged():
    data = yaml.safe_load(TOY_FILE.read_text())
    data["search"]["objectives"] = [{"metric": "val_mte"}, {"metric": "cost_device_s"}]
    data["search"]["scheduler"] = {"type": "none"}
    data["final"].pop("table_objective")
    spec = parse_spec(data)
    assert spec.objectives == (Objective("val_mte", "min"), Objective("cost_device_s", "min"))
    assert spec.final.table_objective == "val_mte"  # the first objective when left out
    single = load_spec(ROOT / "studies" / "toy2d.yaml")
    assert single.objectives == (Objective("val_acc", "max"),) and not single.multi_objective
    assert "objectives" not in single.raw["search"]
    assert "metric" not in single.raw["search"]["scheduler"]
    assert "table_objective" not in single.raw["final"]


def test_placeholders_fill_only_what_is_missing():
    result = {"val_acc": 90.0, names.ITERATION: 10}
    out = with_placeholders(result, ("val_acc", "val_mte"))
    assert (
        out["val_acc"] == 90.0
        and math.isnan(out["val_mte"])
        and result
        == {
            "val_acc": 90.0,
            names.ITERATION: 10,
        }
    )
    assert with_placeholders(result, ()) == result


# ------------------------------------------------------------------ the searcher, with Ray


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _synthetic(config):
    """Reports like the real trainable: val_acc every evaluation, val_mte (and the NaN
    placeholders before it) at the end; trial quality is config['q']."""
    from ray import tune

    objectives = ("val_acc", "val_mte")
    for it in (2, 4, 6):
        result = {"val_acc": config["q"] * it, names.ITERATION: it, names.BUDGET: 6}
        result[names.STATUS] = names.COMPLETED if it == 6 else names.RUNNING
        if it == 6:
            result["val_mte"] = float("nan") if config["q"] == 2.0 else 1.0 / config["q"]
        if config["q"] < 0:
            result.update({names.STATUS: names.FAILED, names.REASON: "diverged: loss_s nan"})
            tune.report(with_placeholders(result, objectives))
            return
        tune.report(with_placeholders(result, objectives))
        time.sleep(0.2)


def test_multi_objective_searcher_records_every_outcome(ray_local, tmp_path):
    """Completed trials are told COMPLETE with both values, ASHA's stopped ones PRUNED (Ray's
    OptunaSearch would tell them COMPLETE with their truncated values), failed ones FAIL, and a
    completed trial without a finite value FAIL with the reason."""
    from zskt_ray.study import space

    data = yaml.safe_load(TOY_FILE.read_text())
    data["storage"] = {"optuna": f"sqlite:///{tmp_path / 'optuna.db'}"}
    spec = parse_spec(data)
    q_space = SearchSection.model_validate({"space": {"q": [9.0, 1.0, 0.5, -1.0, 2.0]}}).space
    spec = spec.model_copy(
        update=dict(
            search=spec.search.model_copy(update=dict(space=q_space, num_trials=5, sampler="grid"))
        )
    )
    study = space.open_study(spec)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    fit_synthetic_asha(spec, study, _synthetic, 5, tmp_path / "tune")
    trials = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    by_q = {t.params["q"]: t for t in trials}
    assert set(by_q) == {9.0, 1.0, 0.5, -1.0, 2.0}
    assert by_q[9.0].state == COMPLETE and by_q[9.0].values == [54.0, pytest.approx(1 / 9)]
    assert by_q[9.0].user_attrs[names.ATTR_ITERATION] == 6
    assert by_q[-1.0].state == FAIL and by_q[-1.0].values is None
    assert by_q[-1.0].user_attrs[names.ATTR_REASON].startswith("diverged")
    pruned = [t for t in trials if t.state == PRUNED]
    assert pruned, [(t.params, t.state) for t in trials]
    for t in pruned:
        assert t.values is None and t.user_attrs[names.ATTR_STATUS] == names.PRUNED
        assert t.user_attrs[names.ATTR_ITERATION] < 6
    nan_trial = by_q[2.0]  # ASHA may stop it first; if it completed, NaN val_mte made it FAIL
    if nan_trial.state != PRUNED:
        assert nan_trial.state == FAIL and nan_trial.values is None
        assert nan_trial.user_attrs[names.ATTR_REASON] == (
            "completed without a finite value of val_mte"
        )
    assert all(t.state.is_finished() for t in trials)


# ------------------------------------------------------------------ a toy2d study end to end


def quick_toy(home: Path, name: str) -> dict:
    """studies/toy2d_pareto.yaml cut down: 6 trials of 20 iterations under ASHA judging val_acc
    (so the placeholders and the scheduler's metric are exercised), 3 re-run configurations of
    20 iterations, one seed."""
    data = yaml.safe_load(TOY_FILE.read_text())
    data.update(name=name, mlflow={"experiment": name})
    data["loop"].update(iterations=20, eval_every=10)
    data["search"].update(
        num_trials=6,
        n_startup_trials=3,
        scheduler={"type": "asha", "metric": "val_acc", "grace_period": 10, "reduction_factor": 2},
    )
    data["evaluation"].update(mte_search={"k": 5, "xi": 0.1, "n_test": 40})
    data["evaluation"].update(mte_final={"k": 5, "xi": 0.1, "n_test": 40}, image_grids=2)
    data["final"].update(iterations=20, seeds=[0], top_k=3)
    data["storage"] = {"path": str(home / "studies")}
    return data


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, ray_local):
    from zskt_ray.study.runner import run_study

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("ZSKT_HOME")
    os.environ["ZSKT_HOME"] = str(home)
    try:
        spec = parse_spec(quick_toy(home, "toy-multi"))
        t0 = time.perf_counter()
        outcome = run_study(spec, log=lambda _: None)
        yield spec, outcome, time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("ZSKT_HOME", None)
        else:
            os.environ["ZSKT_HOME"] = old


def _check_front_study(spec, min_reruns: int = 1) -> list[dict]:
    """Two directions; every completed trial has both values; the chosen configurations are
    non-dominated (brute force) and spread: the best in each objective comes first."""
    study = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state == COMPLETE]
    assert done and all(len(t.values) == 2 and all(map(math.isfinite, t.values)) for t in done)
    assert all(t.values is None for t in study.trials if t.state != COMPLETE)
    values = np.array([t.values for t in done])
    front = {done[i].number for i in brute_force_front(values, ["max", "min"])}
    chosen = study.user_attrs[names.ATTR_FINAL_CONFIGS]
    assert min_reruns <= len(chosen) <= min(spec.final.top_k, len(front))
    assert {c["number"] for c in chosen} <= front
    assert chosen[0]["values"]["val_acc"] == values[:, 0].max()
    if len(chosen) > 1 and values[:, 1].min() < chosen[0]["values"]["val_mte"]:
        assert chosen[1]["values"]["val_mte"] == values[:, 1].min()
    assert len({c["config_id"] for c in chosen}) == len(chosen)
    return chosen


def test_toy_multi_objective_study_end_to_end(toy_run):
    from mlflow.tracking import MlflowClient

    spec, outcome, _ = toy_run
    chosen = _check_front_study(spec)
    assert outcome.best == chosen
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    search = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH]
    assert len(search) == spec.num_trials
    for r in search:  # val_mte only where the trial completed; never a NaN placeholder
        done = r.data.tags[names.TAG_STATUS] == names.COMPLETED
        assert (names.VAL_MTE in r.data.metrics) == done
        assert all(math.isfinite(v) for v in r.data.metrics.values())
    final = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_FINAL]
    assert sorted(r.data.tags[names.TAG_TRIAL] for r in final) == [
        f"final-{c['rank']}-seed0" for c in chosen
    ]
    for r in final:
        assert {"test_acc", "mte"} <= set(r.data.metrics)
        rank = int(r.data.tags[names.TAG_TRIAL].split("-")[1])
        params = chosen[rank]["params"]
        assert {k: r.data.params[k] for k in params} == {k: str(v) for k, v in params.items()}


def test_toy_multi_objective_report(toy_run, tmp_path):
    from zskt_ray.analysis.load import StudyRef
    from zskt_ray.analysis.report import make_report

    spec, outcome, _ = toy_run
    ref = StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage)
    report = make_report(ref, tmp_path / "report")
    md = report.markdown.read_text()
    for title in (
        "Pareto front of the search",
        "Configurations re-run from the front",
        "Hypervolume over trials",
        "Parameter importances per objective",
    ):
        assert f"## {title}" in md
    assert "Search objectives: val_acc (max), val_mte (min)" in md
    if len(outcome.best) > 1:  # the seed statistics call rank 0 nothing better than "rank 0"
        assert "chosen from the Pareto front" in md and "best-ranked" not in md
    assert {"pareto_front.png", "pareto_hypervolume.png"} <= {p.name for p in report.figures}
    tables = report.out_dir / "tables"
    reruns = pd.read_csv(tables / "pareto_reruns.csv")
    assert reruns["rank"].tolist() == [c["rank"] for c in outcome.best]
    assert reruns["test_acc_mean"].notna().all() and reruns["mte_mean"].notna().all()
    assert reruns["search val_mte"].tolist() == [c["values"]["val_mte"] for c in outcome.best]
    trials = pd.read_csv(tables / "pareto_trials.csv")
    assert len(trials) == spec.num_trials
    assert set(trials.loc[trials["on_front"], "number"]) >= {c["number"] for c in outcome.best}
    # Table 1 shows the re-run configuration best in search val_acc (final.table_objective)
    best = max(outcome.best, key=lambda c: (c["values"]["val_acc"], -c["rank"]))
    per_config = pd.read_csv(tables / "accuracy_per_config.csv")
    expected = per_config.loc[per_config["rank"] == best["rank"], "config_id"].tolist()
    assert pd.read_csv(tables / "table1.csv")["zero_shot_config_id"].tolist() == expected
    assert "best in search val_acc (final.table_objective)" in (tables / "table1.md").read_text()


def _tables_study(table_objective: str):
    """Two re-run configurations: "a" (rank 0) best in validation accuracy over its final seeds,
    "b" (rank 1) best in the search's val_mte."""
    from zskt_ray.analysis import schema
    from zskt_ray.analysis.load import StudyData, StudyRef

    rows = [
        dict(kind=names.KIND_FINAL, status=names.COMPLETED, config_id=c, final_rank=r, seed=s,
             dataset="digits", teacher_arch="wrn-16-2", student_arch="wrn-16-1", val_acc=v,
             test_acc=v, mte=0.1, objective=v, run_id=f"{c}{s}")
        for c, r, v in (("a", 0, 95.0), ("b", 1, 90.0))
        for s in (0, 1)
    ]  # fmt: skip
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(
        names.ATTR_FINAL_CONFIGS,
        [
            {"rank": 0, "values": {"val_acc": 99.0, "val_mte": 0.5}},
            {"rank": 1, "values": {"val_acc": 98.0, "val_mte": 0.1}},
        ],
    )
    return StudyData(
        ref=StudyRef("s", "sqlite:///unused.db", "s"),
        runs=schema.conform(pd.DataFrame(rows)),
        spec={"final": {"table_objective": table_objective}},
        parent_run_id=None,
        objective="val_acc",
        mode="max",
        searched=[],
        log_scale={},
        optuna_study=study,
        objectives=[("val_acc", "max"), ("val_mte", "min")],
    )


@pytest.mark.parametrize("table_objective,expected", [("val_mte", "b"), ("val_acc", "a")])
def test_tables_take_the_declared_rule(table_objective, expected):
    from zskt_ray.analysis import fronts, tables

    data = _tables_study(table_objective)
    choice = fronts.table_choice(data)
    assert choice.config_ids == {expected} and not choice.note
    prefer, rule = fronts.tables_rule([data])
    t1 = tables.build_tables(data.runs, [], "val_acc", "max", prefer, rule)[1]
    assert t1.numeric["zero_shot_config_id"].tolist() == [expected]
    assert f"best in search {table_objective}" in t1.caption
    # without the rule, the single-objective rule (best mean val_acc over final seeds) picks "a"
    plain = tables.build_tables(data.runs, [], "val_acc", "max")[1]
    assert plain.numeric["zero_shot_config_id"].tolist() == ["a"]


# ------------------------------------------------------------------ slow: as shipped, and resumed


@pytest.mark.slow
def test_shipped_toy_multi_objective_study(ray_local):
    """studies/toy2d_pareto.yaml as it ships (its time is in the README, not checked here)."""
    from zskt_ray.study.runner import run_study

    spec = load_spec(TOY_FILE)
    outcome = run_study(spec, log=lambda _: None)
    chosen = _check_front_study(spec)
    assert outcome.summary["final_runs"] == 3 and len(outcome.final) == 3 * len(chosen)


def _driver(study_file: Path, log: Path, env: dict, command: str = "run") -> int:
    cmd = [sys.executable, "-m", "zskt_ray.study.cli", "study", command, str(study_file)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        return proc.wait(timeout=600)
    finally:
        try:  # the local Ray a killed driver started lives in its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_killed_multi_objective_search_resumes(tmp_path, monkeypatch):
    """The driver is killed right after a search trial completed (Tune's saved state lags behind
    Optuna's and MLflow's); the resumed study restores the multi-objective searcher with
    ``Tuner.restore``, keeps that trial's values, trains nothing twice and ends on the front."""
    from mlflow.tracking import MlflowClient

    from zskt_ray.study.tracking import KILL_HOOK_ENV

    monkeypatch.setenv("ZSKT_HOME", str(tmp_path))  # the drivers' home: the same stores
    data = quick_toy(tmp_path, "toy-multi-kill")
    data["search"]["scheduler"] = {"type": "none"}
    data["resources"]["max_concurrent"] = 1
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(data))
    spec = parse_spec(copy.deepcopy(data))
    env = {k: v for k, v in os.environ.items() if k != KILL_HOOK_ENV}
    env.update(ZSKT_HOME=str(tmp_path), ZSKT_TUNE_VERBOSE="0", TUNE_GLOBAL_CHECKPOINT_S="1")
    rc = _driver(study_file, tmp_path / "driver1.log", {**env, KILL_HOOK_ENV: "search:completed"})
    assert rc == -signal.SIGKILL, (tmp_path / "driver1.log").read_text()[-3000:]
    before = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    (first,) = [t for t in before if t.state == COMPLETE]
    assert spec.experiment_dir and Path(spec.experiment_dir, "tuner.pkl").is_file()
    rc = _driver(study_file, tmp_path / "driver2.log", env, "resume")
    assert rc == 0, (tmp_path / "driver2.log").read_text()[-3000:]
    assert "search: resuming from" in (tmp_path / "driver2.log").read_text()
    after = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    assert len(after) == spec.num_trials and all(t.state.is_finished() for t in after)
    kept = next(t for t in after if t.number == first.number)
    assert kept.values == first.values and kept.datetime_complete == first.datetime_complete
    _check_front_study(spec)
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    search = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH]
    assert sorted(r.data.tags[names.TAG_TRIAL] for r in search) == sorted(
        t.user_attrs[names.ATTR_TUNE_ID] for t in after
    )
    assert not [r for r in runs if r.info.status == "RUNNING"]
