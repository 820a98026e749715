"""Health and cost through a whole study: each failure provoked for real in a search trial.

One toy2d study (an MLP teacher trained in about a second), real local Ray, Optuna and MLflow,
five search trials told apart by their generator learning rate (grid sampler):

- ``lr_g`` 1e-3: healthy; it is re-run as the final configuration;
- ``lr_g`` 1e-9: a frozen generator (a rate of 0 is refused by the config): *stalled*;
- ``lr_g`` 1.1e-3, fault ``constant_generator``: every pseudo point the same: *collapsed*;
- ``lr_g`` 1.2e-3, fault ``teacher_as_student``: the network audit refuses it before any step;
- ``lr_g`` 1.3e-3, fault ``read_test``: its final evaluation reads the (guarded) test split.

With ``health.stop: true`` the flagged trials end failed with the flag as reason, and Optuna
records them FAIL (not pruned). The report's health section lists each of them, and the trials'
device-seconds add up to the study's total in the summary, on the study run and in the report.
Trials that stop early or train on (``stop: false``) are checked in process, without Ray.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import pytest

pytest.importorskip("ray")

import optuna  # noqa: E402
from cluster_fixtures import local_study_ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from zskt_ray import names  # noqa: E402
from zskt_ray.config import DistillConfig, TeacherConfig, to_dict  # noqa: E402
from zskt_ray.data import load_dataset  # noqa: E402
from zskt_ray.study.spec import parse_spec  # noqa: E402

HEALTHY, FROZEN, CONSTANT, TEACHER_AS_STUDENT, READS_TEST = 1e-3, 1e-9, 1.1e-3, 1.2e-3, 1.3e-3
FAULTS = [
    {"kind": "constant_generator", "param": "lr_g", "value": CONSTANT},
    {"kind": "teacher_as_student", "param": "lr_g", "value": TEACHER_AS_STUDENT},
    {"kind": "read_test", "param": "lr_g", "value": READS_TEST},
]
ITERATIONS, EVAL_EVERY = 20, 5  # patience 3: a flag at the third report, iteration 15


def _toy_teacher(path: Path) -> Path:
    from zskt_ray.teacher import train_teacher

    cfg = TeacherConfig.recipe("toy2d", "mlp-3x64", epochs=8, milestones=(6,), device="cpu")
    train_teacher(cfg, path, splits=load_dataset("toy2d"), log=None)
    return path


@pytest.fixture(scope="module")
def teacher_home(tmp_path_factory):
    """A folder with a toy2d teacher (about a second to train)."""
    home = tmp_path_factory.mktemp("zskt_home")
    _toy_teacher(home / "teacher.pt")
    return home


@pytest.fixture(scope="module")
def home(teacher_home):
    """ZSKT_HOME with the teacher, one local Ray; MLflow's system metrics sampled every second
    (the workers inherit the variable)."""
    with local_study_ray(teacher_home, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1") as home:
        yield home


def toy_study(home: Path, name: str, **over) -> dict:
    d = {
        "name": name,
        "dataset": "toy2d",
        "teacher": {"arch": "mlp-3x64", "path": str(home / "teacher.pt")},
        "student": {"arch": "mlp-2x16"},
        "loop": {
            "iterations": ITERATIONS,
            "batch_size": 64,
            "z_dim": 8,
            "n_s": 3,
            "beta": 0,
            "eval_every": EVAL_EVERY,
            "eval_batch_size": 1000,
        },
        "search": {
            "space": {"lr_g": [HEALTHY, FROZEN, CONSTANT, TEACHER_AS_STUDENT, READS_TEST]},
            "num_trials": 5,
            "sampler": "grid",
            "max_failures": 0,
            "scheduler": {"type": "none"},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        "evaluation": {
            "mte_search": {"k": 2, "xi": 0.1, "n_test": 8},
            "mte_final": {"k": 2, "xi": 0.1, "n_test": 8},
            "image_grids": 2,
        },
        "final": {"top_k": 1, "seeds": [0]},
        "health": {"stop": True},
        "mlflow": {"system_metrics": True},
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def provoked(home):
    from zskt_ray.study.runner import run_study

    spec = parse_spec(toy_study(home, "provoked"), source="provoked.yaml")
    lines: list[str] = []
    t0 = time.perf_counter()
    outcome = run_study(spec, log=lines.append, fault=FAULTS)
    print(f"provoked study: {time.perf_counter() - t0:.1f} s")
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return spec, outcome, lines, runs


def _by_lr(runs) -> dict[float, object]:
    search = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_SEARCH]
    return {float(r.data.params["lr_g"]): r for r in search}


def test_each_provoked_failure_ends_its_trial_with_its_tag_or_one_line_error(provoked):
    spec, outcome, _, runs = provoked
    by_lr = _by_lr(runs)
    assert set(by_lr) == {HEALTHY, FROZEN, CONSTANT, TEACHER_AS_STUDENT, READS_TEST}
    healthy = by_lr[HEALTHY].data.tags
    assert healthy[names.TAG_STATUS] == names.COMPLETED and healthy[names.TAG_HEALTH] == "healthy"
    for lr, status in ((FROZEN, names.STALLED), (CONSTANT, names.COLLAPSED)):
        tags = by_lr[lr].data.tags
        assert tags[names.TAG_HEALTH] == status and tags[names.TAG_HEALTH_ITERATION] == "15"
        assert tags[names.TAG_HEALTH_REASON].startswith(f"{status}: ")
        assert tags[names.TAG_STATUS] == names.FAILED and by_lr[lr].info.status == "FAILED"
        assert tags[names.TAG_REASON] == f"unhealthy: {tags[names.TAG_HEALTH_REASON]}"
        # stopped at the flag: no report after iteration 15
        steps = [m.step for m in MlflowClient(spec.tracking_uri).get_metric_history(
            by_lr[lr].info.run_id, names.HEALTH_FLAG
        )]  # fmt: skip
        assert max(steps) == 15
    assert "the generator moved" in by_lr[FROZEN].data.tags[names.TAG_HEALTH_REASON]
    assert "predicts 1 of 3 classes" in by_lr[CONSTANT].data.tags[names.TAG_HEALTH_REASON]
    audit = by_lr[TEACHER_AS_STUDENT].data.tags
    assert audit[names.TAG_STATUS] == names.FAILED and names.TAG_HEALTH not in audit
    assert (
        audit[names.TAG_REASON]
        == audit[names.TAG_AUDIT]
        == (
            "NetworkAuditError: the teacher was passed as the student: KL(T || S) would be "
            "KL(T || T) = 0 and the generator would learn nothing"
        )
    )
    guard = by_lr[READS_TEST].data.tags
    assert guard[names.TAG_STATUS] == names.FAILED
    assert guard[names.TAG_REASON] == guard[names.TAG_AUDIT]
    assert guard[names.TAG_REASON].startswith("SplitReadError: test split read refused: search ")
    for tags in (audit, guard):
        assert "\n" not in tags[names.TAG_REASON]
    # Optuna: failed (not pruned), with the same reasons
    study = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage)
    states = {t.params["lr_g"]: t for t in study.trials}
    assert states[HEALTHY].state == optuna.trial.TrialState.COMPLETE
    for lr in (FROZEN, CONSTANT, TEACHER_AS_STUDENT, READS_TEST):
        t = states[lr]
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs[names.ATTR_REASON] == by_lr[lr].data.tags[names.TAG_REASON]
    assert outcome.search_counts == {"COMPLETE": 1, "FAIL": 4}
    assert outcome.best[0]["params"] == {"lr_g": HEALTHY}


def test_flagged_trials_logged_their_pseudo_points_at_the_flag(provoked):
    spec, _, _, runs = provoked
    client = MlflowClient(spec.tracking_uri)
    for lr in (FROZEN, CONSTANT):
        arts = [a.path for a in client.list_artifacts(_by_lr(runs)[lr].info.run_id, "images")]
        assert "images/pseudo_iter000015.png" in arts


def test_trial_costs_add_up_to_the_study_total(provoked):
    spec, outcome, lines, runs = provoked
    trials = [r for r in runs if r.data.tags.get(names.TAG_KIND) in names.TRIAL_KINDS]
    assert len(trials) == 6  # 5 search trials, 1 final re-run
    for r in trials:
        m, tags = r.data.metrics, r.data.tags
        assert tags[names.TAG_COST_DEVICE] == "cpu"
        assert m[names.COST_DEVICE_S] == pytest.approx(m[names.COST_WALL_S] * 1.0)  # 1 CPU each
        for key in names.COST_METRICS:
            assert key in m, (key, tags[names.TAG_TRIAL])
    total = sum(r.data.metrics[names.COST_DEVICE_S] for r in trials)
    summary = outcome.summary
    assert summary["device_s"] == pytest.approx(total, rel=1e-12)
    assert summary["device_hours"] == pytest.approx(total / 3600, rel=1e-12)
    assert summary["device_s_pruned"] == 0.0  # no scheduler here: nothing was pruned
    final = next(r for r in trials if r.data.tags[names.TAG_KIND] == names.KIND_FINAL)
    assert summary["device_s_final"] == pytest.approx(final.data.metrics[names.COST_DEVICE_S])
    # the final cost includes the final evaluation: more than the last report's training time
    hist = MlflowClient(spec.tracking_uri).get_metric_history(final.info.run_id, "iters_per_s")
    assert max(h.step for h in hist) == ITERATIONS
    assert any(line.startswith("this study used ") for line in lines)
    parent = next(r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_STUDY)
    assert parent.data.metrics["device_s"] == pytest.approx(total, rel=1e-12)
    assert parent.data.tags[names.TAG_SUMMARY_PREFIX + "cost"].startswith("this study used")
    # MLflow's own system metrics, opt-in: on a trial that ran for more than a second
    healthy = _by_lr(runs)[HEALTHY]
    assert any(k.startswith("system/cpu_utilization") for k in healthy.data.metrics), sorted(
        healthy.data.metrics
    )


def test_report_health_and_cost_sections_list_each_failure(provoked, tmp_path):
    from zskt_ray.analysis.load import StudyRef, load_study
    from zskt_ray.analysis.report import build_report
    from zskt_ray.analysis.schema import read_parquet, write_parquet

    spec, outcome, _, _ = provoked
    data = load_study(StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage))
    runs = data.runs
    by_lr = {float(r["lr_g"]): r for _, r in runs[runs["kind"] == "search"].iterrows()}
    assert by_lr[FROZEN]["health"] == "stalled" and by_lr[FROZEN]["health_iteration"] == 15
    assert by_lr[CONSTANT]["health"] == "collapsed"
    assert by_lr[TEACHER_AS_STUDENT]["audit"].startswith("NetworkAuditError: ")
    assert by_lr[READS_TEST]["audit"].startswith("SplitReadError: ")
    assert runs["cost_device_s"].sum() == pytest.approx(outcome.summary["device_s"], rel=1e-12)
    back = read_parquet(write_parquet(runs, tmp_path / "runs.parquet"))
    assert back.equals(runs)
    report = build_report([data], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    health = md[md.index("## Run health") : md.index("\n## ", md.index("## Run health") + 5)]
    for text in (
        "1 collapsed",
        "1 stalled",
        "2 run(s) failed a wiring audit",
        "NetworkAuditError: the teacher was passed as the student",
        "SplitReadError: test split read refused",
        "stalled: the generator moved",
        "collapsed: the teacher predicts 1 of 3 classes",
    ):
        assert text in health, text
    assert health.count("![") == 2  # the two flagged trials' pseudo points at the flag
    cost = md[md.index("## Cost") :]
    hours = outcome.summary["device_hours"]
    assert f"This study used {hours:.3g} CPU-hours in its trials" in cost
    assert "### Cost per final re-run" in cost and "final-0-seed0" in cost
    assert report is not None


def _ctx(home: Path, info, stop: bool):
    """A search trial's context, run in this process (no Ray)."""
    from zskt_ray.health import HealthRule
    from zskt_ray.study.schema import MTESection
    from zskt_ray.study.trainable import TrialContext
    from zskt_ray.study.watch import WatchSettings
    from zskt_ray.teacher import load_teacher

    teacher, meta = load_teacher(home / "teacher.pt")
    loop = toy_study(home, "x")["loop"]
    pair = dict(dataset="toy2d", teacher_arch="mlp-3x64", student_arch="mlp-2x16")
    base = to_dict(DistillConfig(**loop, **pair, device="cpu"))
    return TrialContext(
        kind=names.KIND_SEARCH,
        base=base,
        tracking=info,
        teacher_state=teacher.state_dict(),
        teacher_meta=meta,
        mte=MTESection(k=2, n_test=8, xi=0.1),
        image_grids=0,
        threads=1,
        metric="val_acc",
        mode="max",
        watch=WatchSettings(HealthRule(), stop, cpus=0.5),
    )


@pytest.mark.parametrize("stop", [False, True])
def test_health_stop_decides_whether_a_flagged_trial_trains_on(teacher_home, stop, monkeypatch):
    """stop false: the flag is a tag and the trial completes; stop true: it fails at the flag."""
    from zskt_ray.study import tracking, trainable

    home = teacher_home
    uri = f"sqlite:///{home / f'inproc-{stop}.db'}"
    info = tracking.setup_study(uri, f"inproc-{stop}", f"inproc-{stop}", {}, ["lr_g"])
    context = types.SimpleNamespace(get_trial_id=lambda: "frozen")
    monkeypatch.setattr(trainable.tune, "get_context", lambda: context)
    trainable.train_distill({"lr_g": FROZEN}, _ctx(home, info, stop))
    (run,) = tracking.study_trial_runs(info)
    tags, m = run.data.tags, run.data.metrics
    assert tags[names.TAG_HEALTH] == names.STALLED and tags[names.TAG_HEALTH_ITERATION] == "15"
    assert tags[names.TAG_STATUS] == (names.FAILED if stop else names.COMPLETED)
    assert m["iterations_done" if not stop else names.HEALTH_FLAG] == (
        ITERATIONS if not stop else 2
    )
    assert m[names.COST_DEVICE_S] == pytest.approx(0.5 * m[names.COST_WALL_S])  # half a CPU
    hist = MlflowClient(uri).get_metric_history(run.info.run_id, names.COST_DEVICE_S)
    assert max(h.step for h in hist) == (ITERATIONS if not stop else 15)


def test_trials_get_the_studys_rule_allocation_and_stop_for_search_only(teacher_home):
    from zskt_ray.health import HealthRule
    from zskt_ray.study.watch import WatchSettings

    study = toy_study(teacher_home, "settings")
    study["health"] = {"patience": 2, "stop": True}
    study["resources"] = {"cpus_per_trial": 2, "gpus_per_trial": 0.25}
    study["final"] = {"cpus_per_trial": 1}
    spec = parse_spec(study)
    search = WatchSettings.of(spec, names.KIND_SEARCH)
    final = WatchSettings.of(spec, names.KIND_FINAL)
    assert search == WatchSettings(HealthRule(patience=2), True, 2.0, 0.25, True)
    assert final == WatchSettings(HealthRule(patience=2), False, 1.0, 0.25, True)
    ablation = WatchSettings.of(
        spec, names.KIND_ABLATION
    )  # full-budget measurements: never stopped
    assert ablation == WatchSettings(HealthRule(patience=2), False, 2.0, 0.25, True)
