"""Study files: validation (one-line errors naming the key or file), smoke versions, shipped studies.

No Ray here: every check runs before a trial could start.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from zskt_ray.config import OBJECTIVE_FIELDS, DistillConfig
from zskt_ray.health import HealthRule
from zskt_ray.study.cli import main as study_main
from zskt_ray.study.spec import (
    StudyError,
    config_id,
    load_spec,
    locations,
    parse_spec,
    preflight,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "studies").glob("*.yaml"))

BASE = {
    "name": "t",
    "dataset": "digits",
    "teacher": {"arch": "wrn-10-1", "train_if_missing": True},
    "student": {"arch": "wrn-10-1"},
    "loop": {"iterations": 40, "eval_every": 10, "batch_size": 16},
    "search": {
        "space": {
            "n_s": {"type": "int", "low": 1, "high": 4},
            "beta": {"type": "categorical", "choices": [0, 250]},
            "lr_s": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
        "num_trials": 3,
        "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2},
    },
    "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
}


@pytest.fixture(autouse=True)
def _zskt_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path / "home"))


def study(**changes):
    """BASE with dotted-path changes; a value of ``...`` deletes the key."""
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        keys = path.split("__")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is ...:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return d


def write(tmp_path, data, name="study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return p


def test_base_study_is_valid(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert spec.name == "t" and spec.num_trials == 3 and spec.device == "cpu"
    assert [p.name for p in spec.space] == ["n_s", "beta", "lr_s"]
    assert spec.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert spec.optuna_storage.endswith("/studies/t/optuna.db") and spec.optuna_storage.startswith(
        "sqlite:////"
    )
    assert spec.experiment == "t" and spec.metric == "val_acc" and spec.mode == "max"
    cfg = spec.trial_config({"n_s": 3, "beta": 250, "lr_s": 1e-3}, seed=2)
    assert isinstance(cfg, DistillConfig) and cfg.n_s == 3 and cfg.beta == 250.0 and cfg.seed == 2
    # seed re-runs of one configuration share a config id; another configuration does not
    assert config_id(cfg) == config_id(
        spec.trial_config({"n_s": 3, "beta": 250.0, "lr_s": 1e-3}, seed=0)
    )
    assert config_id(cfg) != config_id(spec.trial_config({"n_s": 2, "beta": 250, "lr_s": 1e-3}))
    assert spec.raw["search"]["space"]["lr_s"] == {
        "type": "float",
        "low": 1e-4,
        "high": 1e-2,
        "log": True,
    }


BAD = [
    # (changes, fragment expected in the one-line message)
    ({"colour": "red"}, "unknown key colour"),
    ({"loop__n_z": 3}, "unknown key loop.n_z"),
    ({"search__scheduler__patience": 3}, "unknown key search.scheduler.patience"),
    ({"search__space__n_s__lo": 1}, "unknown key search.space.n_s.lo"),
    (
        {"search__space__n_x": {"type": "int", "low": 1, "high": 2}},
        "search.space.n_x: unknown loop setting",
    ),
    ({"loop__iterations": "many"}, "iterations"),
    ({"search__num_trials": 2.5}, "search.num_trials: expected an integer"),
    ({"download": "yes"}, "download: expected true/false"),
    ({"search__space__n_s__low": 4}, "search.space.n_s: empty or inverted range"),
    ({"search__space__n_s__low": 6}, "search.space.n_s: empty or inverted range: low=6"),
    ({"search__space__lr_s__low": 0.0}, "search.space.lr_s: log scale needs low > 0"),
    ({"search__space__beta__choices": []}, "search.space.beta.choices: empty"),
    (
        {"search__space__n_s__type": "float", "search__space__n_s__low": 1.0},
        "search.space.n_s.type: n_s is a int",
    ),
    ({"search__space__n_s__low": 0}, "search.space.n_s: n_s must be > 0"),
    ({"search__space__n_s__step": 10}, "search.space.n_s.step"),
    ({"loop__n_s": 3}, "search.space.n_s: also fixed in loop.n_s"),
    ({"loop__device": "cuda"}, "loop.device: set by the study"),
    ({"search__space__seed": [0, 1]}, "search.space.seed: seed cannot be searched"),
    ({"search__metric": "test_acc"}, "search.metric: test_acc would leak the test set"),
    ({"search__mode": "up"}, "search.mode"),
    (
        {"search__scheduler__grace_period": 100},
        "search.scheduler.grace_period: must be in [1, loop.iterations=40]",
    ),
    ({"search__scheduler__reduction_factor": 1}, "search.scheduler.reduction_factor: must be > 1"),
    ({"resources__gpus_per_trial": 1.5}, "resources.gpus_per_trial"),
    ({"resources__gpus_per_trial": -0.25}, "resources.gpus_per_trial"),
    ({"resources__cpus_per_trial": 0}, "resources.cpus_per_trial: must be > 0"),
    ({"resources__max_concurrent": 0}, "resources.max_concurrent"),
    ({"teacher__arch": "resnet-18"}, "teacher.arch"),
    ({"student": ...}, "missing key student.arch"),
    ({"dataset": "mnist"}, "dataset: unknown data set 'mnist'"),
    ({"final__seeds": [0, 0]}, "final.seeds"),
    ({"evaluation__mte_final__k": 0}, "evaluation.mte_final.k: must be >= 1"),
    ({"evaluation__mte_search__xi": -1}, "evaluation.mte_search.xi"),
    ({"mlflow__tracking_uri": "just/a/path"}, "mlflow.tracking_uri"),
    ({"name": "two words"}, "name:"),
    ({"kdat__config__m_per_class": 0}, "kdat.config"),
    ({"mlflow__run_tags": {"zskt.kind": "x"}}, "mlflow.run_tags: zskt.kind: zskt.* and mlflow.*"),
    ({"mlflow__run_tags": {"project": 3}}, "mlflow.run_tags.project: expected a string, got 3"),
]


@pytest.mark.parametrize("changes,fragment", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_study_is_one_line_naming_file_and_key(tmp_path, changes, fragment):
    data = study(**changes)
    if "kdat__config__m_per_class" in changes:
        data["kdat"]["enabled"] = True
    path = write(tmp_path, data)
    with pytest.raises(StudyError) as e:
        load_spec(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path.resolve()}: "), msg
    assert fragment in msg, msg


def test_unreadable_files(tmp_path):
    with pytest.raises(StudyError, match="study file not found: .*nope.yaml"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(StudyError, match="expected a mapping"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_impossible_resources_and_missing_teacher(tmp_path):
    spec = parse_spec(study(resources__cpus_per_trial=4), source="s.yaml")
    with pytest.raises(
        StudyError,
        match=r"^s.yaml: resources.cpus_per_trial: a trial needs 4 CPUs but the cluster has 2$",
    ):
        preflight(spec, cluster={"CPU": 2, "GPU": 0})
    assert preflight(
        spec, cluster={"CPU": 2, "GPU": 0}, strict=False
    )  # a cluster may autoscale: warning
    spec = parse_spec(study(resources__gpus_per_trial=0.25), source="s.yaml")
    assert spec.device == "cuda"
    with pytest.raises(
        StudyError, match="resources.gpus_per_trial: a trial needs 0.25 GPUs but the cluster has 0"
    ):
        preflight(spec, cluster={"CPU": 8, "GPU": 0})
    missing = tmp_path / "no-teacher.pt"
    spec = parse_spec(study(teacher={"arch": "wrn-10-1", "path": str(missing)}), source="s.yaml")
    with pytest.raises(StudyError) as e:
        preflight(spec, cluster={"CPU": 2})
    assert f"teacher file not found: {missing}" in str(e.value) and "\n" not in str(e.value)


def test_cli_prints_error_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, study(search__space__n_s__low=9))
    for command in ("validate", "run", "resume"):
        assert study_main(["study", command, str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "search.space.n_s: empty or inverted range" in err
        assert len(err.splitlines()) == 1
    missing = tmp_path / "t.pt"
    path = write(tmp_path, study(teacher={"arch": "wrn-10-1", "path": str(missing)}), "s2.yaml")
    assert study_main(["study", "run", str(path)]) == 2
    assert f"teacher file not found: {missing}" in capsys.readouterr().err
    assert (
        study_main(
            ["study", "validate", str(write(tmp_path, BASE, "ok.yaml")), "--num-trials", "5"]
        )
        == 0
    )
    assert "5 trials" in capsys.readouterr().out
    assert (
        study_main(
            ["study", "validate", str(write(tmp_path, BASE, "ok.yaml")), "--num-trials", "0"]
        )
        == 2
    )


def test_smoke_version_is_small_and_separate(tmp_path):
    spec = load_spec(write(tmp_path, BASE), smoke=True)
    assert spec.name == "t-smoke" and spec.num_trials == 2 and spec.base.iterations <= 20
    assert (
        spec.final_seeds == (0,)
        and spec.mte_final.k <= 5
        and spec.scheduler.grace_period <= spec.base.iterations
    )
    assert load_spec(write(tmp_path, BASE), num_trials=7).num_trials == 7


def test_fingerprint_tracks_the_search_not_the_bookkeeping(tmp_path):
    a = parse_spec(study())
    assert (
        a.fingerprint() == parse_spec(study(search__num_trials=9, final__seeds=[4])).fingerprint()
    )
    assert a.fingerprint() != parse_spec(study(loop__iterations=50)).fingerprint()
    assert a.fingerprint() != parse_spec(study(search__space__n_s__high=5)).fingerprint()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_studies_are_valid(path):
    spec = load_spec(path)
    assert spec.metric == "val_acc"
    factors = spec.design.factors if spec.design else ()
    names = {p.name for p in spec.space} | {f.name for f in factors}
    assert names & {"n_g", "n_s", "beta", "z_dim", *OBJECTIVE_FIELDS}  # the method's settings
    assert load_spec(path, smoke=True).name.endswith("-smoke")


def test_shipped_studies_cover_the_issue():
    names = {p.name for p in SHIPPED}
    assert {"digits.yaml", "cifar10_wrn40-2_wrn16-1.yaml", "svhn_wrn40-2_wrn16-1.yaml"} <= names
    assert any(n.startswith("ablation") for n in names)
    digits = load_spec(ROOT / "studies" / "digits.yaml")
    assert (
        digits.num_trials >= 8 and digits.scheduler.type == "asha" and len(digits.final_seeds) == 3
    )
    assert digits.teacher.train_if_missing and digits.device == "cpu"
    for gpu in ("cifar10_wrn40-2_wrn16-1.yaml", "svhn_wrn40-2_wrn16-1.yaml"):
        spec = load_spec(ROOT / "studies" / gpu)
        assert (
            0 < spec.gpus_per_trial <= 1
            and spec.teacher.arch == "wrn-40-2"
            and spec.student_arch == "wrn-16-1"
        )


# ------------------------------------------------------------------ the resolved study


def test_study_yaml_is_the_resolved_study(tmp_path):
    """study.yaml (``spec.raw``) is the resolved model's dump: every default and derived value
    filled in, paths absolute; resolving it again changes nothing."""
    home = tmp_path / "home"
    spec = parse_spec(study(evaluation={"mte_final": {"k": 50}}, final={"seeds": [3]}))
    assert spec.raw == {
        "name": "t",
        "description": "",
        "dataset": "digits",
        "data_root": str(Path("data").resolve()),
        "download": False,
        "data_shared": False,  # storage.shared
        "seed": 0,
        "teacher": {
            "arch": "wrn-10-1",
            "path": str(home / "teachers" / "digits_wrn-10-1_seed0.pt"),
            "train_if_missing": True,
            "seed": 0,
            "train": {},
            "resources": {"cpus": None, "gpus": None},  # derived when the study runs
        },
        "student": {"arch": "wrn-10-1"},
        # every loop setting but the searched ones, at the study's value or DistillConfig's
        "loop": {
            "iterations": 40,
            "n_g": 1,
            "batch_size": 16,
            "z_dim": 100,
            "lr_g": 1e-3,
            "grad_clip": 5.0,
            "kl_reduction": "mean",
            "temperature": 1.0,
            "adversarial_discrepancy": "kl",
            "student_discrepancy": "kl",
            "prior_bn": 0.0,
            "prior_onehot": 0.0,
            "prior_entropy": 0.0,
            "eval_every": 10,
            "eval_batch_size": 500,
            "precision": "fp32",
        },
        "search": {
            "space": BASE["search"]["space"],
            "metric": "val_acc",
            "mode": "max",
            "num_trials": 3,
            "sampler": "tpe",
            "sampler_seed": 0,
            "n_startup_trials": 4,
            "max_failures": 1,
            "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2.0},
        },
        "resources": {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0, "max_concurrent": 2},
        "evaluation": {
            "mte_search": {"k": 10, "xi": 1.0, "n_test": 100, "enabled": True},
            "mte_final": {"k": 50, "xi": 1.0, "n_test": 1000, "enabled": True},
            "image_grids": 3,
        },
        "final": {
            "top_k": 1,
            "seeds": [3],
            "iterations": 40,
            "max_concurrent": 2,
            "cpus_per_trial": 1.0,
        },
        "kdat": {"enabled": False, "seeds": [0], "config": {}},
        "storage": {
            "path": str(home / "studies"),
            "optuna": f"sqlite:///{home / 'studies' / 't' / 'optuna.db'}",
            "shared": False,
        },
        "mlflow": {
            "tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
            "experiment": "t",
            "max_outage_s": 600.0,
            "run_tags": {},
            "system_metrics": False,
        },
        # the whole health rule in force (HealthRule's defaults), and what a flag does
        "health": {**dataclasses.asdict(HealthRule()), "stop": False},
    }
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.raw)))
    assert again.raw == spec.raw and again.fingerprint() == spec.fingerprint()
    smoke = parse_spec(study(), smoke=True)
    assert parse_spec(smoke.raw).raw == smoke.raw


def test_locations_resolve_stores_as_a_run_does(tmp_path, monkeypatch):
    """locations() (for files today's checks may refuse) and a run share the resolution code:
    a shared storage's journal file, a declared storage made absolute, the smoke names."""
    monkeypatch.chdir(tmp_path)
    cases = [
        study(),
        study(storage={"path": str(tmp_path / "nfs"), "shared": True}),
        study(storage={"optuna": "sqlite:///rel/optuna.db"}, mlflow={"experiment": "e"}),
        study(storage={"optuna": "journal:////abs/o.journal"}),
        study(mlflow={"tracking_uri": "sqlite:///rel/mlflow.db"}),
    ]
    for data in cases:
        for smoke in (False, True):
            spec = parse_spec(copy.deepcopy(data), smoke=smoke)
            assert locations(copy.deepcopy(data), smoke=smoke) == {
                "name": spec.name,
                "tracking_uri": spec.tracking_uri,
                "experiment": spec.experiment,
                "optuna_storage": spec.optuna_storage,
            }
    monkeypatch.setenv("ZSKT_STORAGE", str(tmp_path / "shared-store"))
    monkeypatch.setenv("ZSKT_STORAGE_SHARED", "1")
    refused = study(colour="red", loop={"iterations": "many"})  # not a valid study file
    found = locations(refused)
    assert (
        found["optuna_storage"] == f"journal://{tmp_path / 'shared-store' / 't' / 'optuna.journal'}"
    )
    with pytest.raises(StudyError):
        parse_spec(refused)


def test_trial_resources_per_phase():
    spec = parse_spec(
        study(resources={"cpus_per_trial": 2, "gpus_per_trial": 0.5}, final={"cpus_per_trial": 1})
    )
    assert spec.trial_resources("search") == {"cpu": 2.0, "gpu": 0.5}
    assert spec.trial_resources("final") == spec.trial_resources("kdat") == {"cpu": 1.0, "gpu": 0.5}
    assert spec.mte("search").k == 10 and spec.mte("final").k == 100


def test_fingerprint_of_a_study_stored_before_new_loop_settings(monkeypatch):
    """A loop setting added to DistillConfig later is a key of every study (study.yaml shows it),
    but at its default it leaves the search's fingerprint as it was: a study stored before the
    setting existed still resumes. The values are those of the code before the generator and
    student objective settings existed."""
    monkeypatch.setenv("ZSKT_HOME", "/nonexistent/zskt-home")
    data = study(data_root="/data")
    spec = parse_spec(data)
    assert "adversarial_discrepancy" in spec.raw["loop"]
    assert spec.fingerprint() == "8b2d70af10ff"
    assert parse_spec(study(data_root="/data", loop__precision="bf16")).fingerprint() == (
        "7c6ad985ad2d"
    )
    assert parse_spec(study(data_root="/data", loop__prior_bn=1.0)).fingerprint() not in (
        "8b2d70af10ff",
        "7c6ad985ad2d",
    )


def test_health_section_is_the_health_rule():
    """``health:`` takes every HealthRule field (left out: the rule's default) and ``stop``; it is
    not part of the search's fingerprint (it decides what happens to a flagged trial)."""
    spec = parse_spec(study(health={"patience": 2, "min_adv_kl": 0, "stop": True}))
    assert spec.health.rule() == HealthRule(patience=2, min_adv_kl=0.0) and spec.health.stop
    default = parse_spec(study())
    assert default.health.rule() == HealthRule() and not default.health.stop
    assert set(spec.raw["health"]) == {f.name for f in dataclasses.fields(HealthRule)} | {"stop"}
    assert spec.fingerprint() == default.fingerprint()
    for bad, message in [
        ({"patience": 0}, "health.patience: must be >= 1, got 0"),
        ({"batch_size": 1}, "health: batch_size must be 0 or >= 2, got 1"),
        ({"pateince": 3}, "unknown key health.pateince (did you mean patience?)"),
        ({"stop": "yes"}, "health.stop: expected true/false, got 'yes'"),
        ({"min_input_diversity": 3}, "health.min_input_diversity: must be <= 2, got 3"),
    ]:
        with pytest.raises(StudyError) as e:
            parse_spec(study(health=bad), source="s.yaml")
        assert str(e.value) == f"s.yaml: {message}"
