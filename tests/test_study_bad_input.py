"""Malformed study files, each through ``zskt study validate`` and ``zskt study run``.

Every one must exit 2 with one ``error:`` line per mistake that names the file and the key, print
no traceback, and create nothing: no Ray session, no MLflow or Optuna store, no folder.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from test_study_spec import BASE as SPEC_BASE

from zskt_ray.checkpoint import save_model
from zskt_ray.models import build_model
from zskt_ray.study.cli import main as study_main

# The valid study of tests/test_study_spec.py, with the KD+AT baseline on (its seeds and config
# are checked too).
BASE = {**copy.deepcopy(SPEC_BASE), "name": "bad", "kdat": {"enabled": True, "seeds": [0]}}


def changed(**changes):
    """BASE with ``a__b`` paths set (``...`` deletes)."""
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return d


def multi(objectives=None, scheduler="val_acc", **search):
    """BASE as a multi-objective study (val_acc and val_mte; ASHA judging ``scheduler``), with
    further ``search`` keys; ``scheduler=...`` leaves the scheduler's metric out."""
    d = changed(
        search__objectives=objectives or [{"metric": "val_acc"}, {"metric": "val_mte"}],
        **{f"search__{k}": v for k, v in search.items()},
    )
    if scheduler is not ...:
        d["search"]["scheduler"]["metric"] = scheduler
    return d


# The same study as a designed ablation (no search section): a 2 x 2 factorial, 2 seeds, and
# the control "generator not trained".
ABLATION = {
    **{k: v for k, v in copy.deepcopy(BASE).items() if k != "search"},
    "ablation": {
        "factors": {"beta": [0, 250], "n_s": [1, 2]},
        "seeds": [0, 1],
        "controls": {"frozen": {"adversarial_discrepancy": "none"}},
    },
}


def ablated(**changes):
    """ABLATION with ``a__b`` paths set (``...`` deletes)."""
    d = copy.deepcopy(ABLATION)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return d


def renamed(old: str, new: str):
    d = copy.deepcopy(BASE)
    d[new] = d.pop(old)
    return d


def text(d) -> str:
    return yaml.safe_dump(d, sort_keys=False)


BASE_TEXT = text(BASE)

# (id, file contents: dict | str | bytes, fragment naming the key and the mistake)
# The toy problem's MLPs, which have no batch norm (and no attention groups: beta 0, not searched).
TOY_MLP = {
    "dataset": "toy2d",
    "teacher__arch": "mlp-3x64",
    "student__arch": "mlp-2x16",
    "loop__beta": 0,
}
TOY = {**TOY_MLP, "search__space__beta": ...}

CASES = [
    (
        "tracking-scheme-typo",
        changed(mlflow={"tracking_uri": "sqllite:////tmp/m.db"}),
        "mlflow.tracking_uri: unknown scheme 'sqllite' (did you mean sqlite?)",
    ),
    (
        "tracking-sqlite-host",
        changed(mlflow={"tracking_uri": "sqlite://rel.db"}),
        "mlflow.tracking_uri: sqlite URLs have no host",
    ),
    (
        "tracking-plain-path",
        changed(mlflow={"tracking_uri": "runs/mlflow.db"}),
        "mlflow.tracking_uri: expected a URI",
    ),
    (
        "tracking-http-no-host",
        changed(mlflow={"tracking_uri": "http://"}),
        "mlflow.tracking_uri: 'http://' names no host",
    ),
    (
        "storage-scheme-typo",
        changed(storage={"path": "s4://bucket/prefix"}),
        "storage.path: unknown storage scheme 's4'",
    ),
    (
        "storage-no-bucket",
        changed(storage={"path": "s3:///prefix"}),
        "storage.path: 's3:///prefix' names no bucket",
    ),
    (
        "optuna-scheme-typo",
        changed(storage={"optuna": "postgress://u@h/db"}),
        "storage.optuna: not a usable database URL ('postgress'",
    ),
    (
        "optuna-not-url",
        changed(storage={"optuna": "optuna.db"}),
        "storage.optuna: expected a database URL",
    ),
    (
        "optuna-relative-journal",
        changed(storage={"optuna": "journal://rel.log"}),
        "storage.optuna: a journal file needs an absolute path",
    ),
    ("name-quote", changed(name="it's"), 'name: "it\'s" must be 1 to 100 letters'),
    ("name-long", changed(name="x" * 300), "name: 'xxxx"),
    ("name-space", changed(name="two words"), "name: 'two words' must be"),
    ("experiment-control-char", changed(mlflow={"experiment": "a\tb"}), "mlflow.experiment:"),
    (
        "nan-lr",
        BASE_TEXT.replace("batch_size: 16", "batch_size: 16\n  lr_s: .nan"),
        "loop.lr_s: must be a finite number, got nan",
    ),
    (
        "nan-resource",
        BASE_TEXT.replace("cpus_per_trial: 1", "cpus_per_trial: .nan"),
        "resources.cpus_per_trial: must be a finite number, got nan",
    ),
    (
        "inf-beta",
        BASE_TEXT.replace("batch_size: 16", "batch_size: 16\n  beta: .inf"),
        "loop.beta: must be a finite number, got inf",
    ),
    (
        "negative-sampler-seed",
        changed(search__sampler_seed=-1),
        "search.sampler_seed: must be >= 0, got -1",
    ),
    ("final-seeds-scalar", changed(final={"seeds": 3}), "final.seeds: expected a list, got 3"),
    ("final-seeds-negative", changed(final={"seeds": [0, -2]}), "final.seeds[1]: must be >= 0"),
    (
        "final-seeds-duplicate",
        changed(final={"seeds": [1, 1]}),
        "final.seeds: expected distinct seeds, 1 repeated",
    ),
    (
        "duplicate-yaml-key",
        BASE_TEXT.replace("batch_size: 16", "batch_size: 16\n  batch_size: 32"),
        "duplicate key 'batch_size' (first on line",
    ),
    (
        "absurd-iterations",
        changed(loop__iterations=1.0e30),
        "loop.iterations: must be <= 10000000, got 1e+30",
    ),
    ("absurd-batch", changed(loop__batch_size=10**9), "loop.batch_size: must be <= 65536"),
    (
        "absurd-searched-n_s",
        changed(search__space__n_s__high=5000),
        "search.space.n_s: n_s must be <= 1000",
    ),
    (
        "kdat-duplicate-seeds",
        changed(kdat__seeds=[0, 0]),
        "kdat.seeds: expected distinct seeds, 0 repeated",
    ),
    (
        "max-metric-mode-min",
        changed(search__mode="min"),
        "search.mode: val_acc is maximised: use mode: max",
    ),
    (
        "min-metric-mode-max",
        changed(search__metric="kl", search__mode="max"),
        "search.mode: kl is minimised",
    ),
    ("section-serach", renamed("search", "serach"), "unknown key serach (did you mean search?)"),
    ("section-loops", renamed("loop", "loops"), "unknown key loops (did you mean loop?)"),
    (
        "teacher-train-unknown",
        changed(teacher__train={"epoch": 3}),
        "unknown key teacher.train.epoch (did you mean epochs?)",
    ),
    (
        "teacher-train-mistyped",
        changed(teacher__train={"epochs": "ten"}),
        "teacher.train.epochs: expected an integer, got 'ten'",
    ),
    (
        "teacher-train-managed",
        changed(teacher__train={"seed": 3}),
        "teacher.train.seed: set by the study",
    ),
    (
        "latin-1",
        BASE_TEXT.replace("bad", "caf\u00e9").encode("latin-1"),
        "not UTF-8 text (byte 0xe9",
    ),
    ("yaml-syntax", "name: [unclosed\n", "not valid YAML"),
    ("top-level-list", "- a\n- b\n", "expected a mapping of study keys, got list"),
    ("empty-file", "", "the study file is empty; a study names at least name, dataset"),
    ("comments-only", "# nothing yet\n", "the study file is empty"),
    ("unknown-top-key", changed(colour="red"), "unknown key colour"),
    (
        "param-type-unknown",
        changed(search__space__n_s__type="integer"),
        "search.space.n_s.type: must be 'int', 'float' or 'categorical', got 'integer'",
    ),
    (
        "param-type-missing",
        changed(search__space__n_s={"low": 1, "high": 3}),
        "search.space.n_s.type: missing",
    ),
    (
        "param-wrong-kind",
        changed(search__space__lr_s={"type": "int", "low": 1, "high": 3}),
        "search.space.lr_s.type: lr_s is a float setting",
    ),
    (
        "param-unknown-setting",
        changed(search__space__n_z=[1, 2]),
        "search.space.n_z: unknown loop setting (did you mean n_s?",
    ),
    (
        "param-duplicate-choices",
        changed(search__space__beta__choices=[0, 0]),
        "search.space.beta.choices: duplicate values",
    ),
    (
        "param-log-nonpositive",
        changed(search__space__lr_s__low=0.0),
        "search.space.lr_s: log scale needs low > 0",
    ),
    ("param-also-fixed", changed(loop__n_s=3), "search.space.n_s: also fixed in loop.n_s"),
    (
        "grace-beyond-budget",
        changed(search__scheduler__grace_period=100),
        "search.scheduler.grace_period: must be in [1, loop.iterations=40]",
    ),
    (
        "grid-with-range",
        changed(search__sampler="grid", search__space__lr_s=[0.001, 0.01]),
        "search.space.n_s: the grid sampler needs categorical",
    ),
    (
        "metric-test-acc",
        changed(search__metric="test_acc"),
        "search.metric: test_acc would leak the test set",
    ),
    (
        "metric-unknown",
        changed(search__metric="accuracy"),
        "search.metric: unknown objective 'accuracy'",
    ),
    # multi-objective studies (search.objectives)
    (
        "objectives-unknown-metric",
        changed(
            search__objectives=[{"metric": "accuracy"}, {"metric": "val_mte"}],
            search__scheduler__metric="val_mte",
        ),
        "search.objectives[0].metric: unknown objective 'accuracy' (known: val_acc,",
    ),
    (
        "objectives-test-acc",
        multi(objectives=[{"metric": "test_acc"}, {"metric": "val_mte"}]),
        "search.objectives[0].metric: test_acc would leak the test set into the search; use val_acc",
    ),
    (
        "objectives-test-mte",
        multi(objectives=[{"metric": "val_acc"}, {"metric": "mte"}]),
        "search.objectives[1].metric: mte would leak the test set into the search; use val_mte",
    ),
    (
        "objectives-wrong-mode",
        multi(objectives=[{"metric": "val_acc"}, {"metric": "val_mte", "mode": "max"}]),
        "search.objectives[1].mode: val_mte is minimised: use mode: min",
    ),
    (
        "objectives-asha-without-primary",
        multi(scheduler=...),
        "search.scheduler.metric: missing: ASHA stops trials on one metric and the search has 2 "
        "objectives; name one of val_acc",
    ),
    (
        "objectives-asha-on-end-metric",
        multi(scheduler="val_mte"),
        "search.scheduler.metric: val_mte is measured only at the end of a trial",
    ),
    (
        "objectives-asha-on-the-cost",
        multi(
            objectives=[{"metric": "val_acc"}, {"metric": "cost_device_s"}],
            scheduler="cost_device_s",
        ),
        "search.scheduler.metric: cost_device_s is a trial's total, known only at its end",
    ),
    (
        "objectives-asha-on-another-metric",
        multi(scheduler="kl"),
        "search.scheduler.metric: 'kl' is not one of search.objectives (val_acc, val_mte)",
    ),
    (
        "objectives-and-metric",
        multi(metric="val_acc"),
        "search.objectives: give either search.objectives or search.metric, not both",
    ),
    (
        "objectives-and-mode",
        multi(mode="max"),
        "search.objectives: give either search.objectives or search.mode, not both",
    ),
    (
        "objectives-one",
        multi(objectives=[{"metric": "val_acc"}]),
        "search.objectives: 1 objective given; a multi-objective search needs at least 2",
    ),
    (
        "objectives-repeated",
        multi(objectives=[{"metric": "val_acc"}, {"metric": "val_acc", "mode": "max"}]),
        "search.objectives: val_acc given more than once",
    ),
    (
        "objectives-val-mte-off",
        {**multi(), "evaluation": {"mte_search": {"enabled": False}}},
        "evaluation.mte_search.enabled: false, but val_mte is an objective",
    ),
    (
        "objectives-table-objective",
        {**multi(), "final": {"table_objective": "kl"}},
        "final.table_objective: 'kl' is not one of search.objectives",
    ),
    (
        "single-table-objective",
        changed(final={"table_objective": "val_acc"}),
        "final.table_objective: only for multi-objective studies",
    ),
    (
        "single-metric-at-the-end",
        changed(search__metric="val_mte"),
        "search.metric: val_mte is measured only at the end of a trial",
    ),
    (
        "single-scheduler-metric",
        changed(search__scheduler__metric="kl"),
        "search.scheduler.metric: ASHA judges the study's objective (val_acc)",
    ),
    (
        "gpu-share",
        changed(resources__gpus_per_trial=1.5),
        "resources.gpus_per_trial: must be 0, a fraction",
    ),
    (
        "concurrency-zero",
        changed(resources__max_concurrent=0),
        "resources.max_concurrent: must be >= 1, got 0",
    ),
    (
        "mte-k-zero",
        changed(evaluation={"mte_final": {"k": 0}}),
        "evaluation.mte_final.k: must be >= 1, got 0",
    ),
    ("lr-string", changed(loop__lr_s="fast"), "loop.lr_s: expected a number, got 'fast'"),
    ("bool-string", changed(download="yes"), "download: expected true/false, got 'yes'"),
    ("dataset-unknown", changed(dataset="mnist"), "dataset: unknown data set 'mnist'"),
    (
        "student-arch",
        changed(student__arch="resnet-18"),
        "student.arch: unknown architecture 'resnet-18'",
    ),
    ("student-missing", changed(student=...), "missing key student.arch"),
    ("loop-device", changed(loop__device="cuda"), "loop.device: set by the study"),
    (
        "kdat-config-unknown",
        changed(kdat__config={"m_per_klass": 5}),
        "unknown key kdat.config.m_per_klass (did you mean m_per_class?)",
    ),
    (
        "kdat-config-value",
        changed(kdat__config={"m_per_class": 0}),
        "kdat.config: m_per_class must be >= 1 or -1",
    ),
    (
        "too-many-cpus",
        changed(resources__cpus_per_trial=1000),
        "resources.cpus_per_trial: a trial needs 1000 CPUs but the cluster has",
    ),
    # designed ablations
    (
        "ablation-unknown-factor",
        ablated(ablation__factors={"n_sx": [1, 2]}),
        "ablation.factors.n_sx: unknown loop setting (did you mean n_s?)",
    ),
    (
        "ablation-seed-factor",
        ablated(ablation__factors={"seed": [1, 2]}),
        "ablation.factors.seed: seed cannot be a factor: the seeds are ablation.seeds",
    ),
    (
        "ablation-managed-factor",
        ablated(ablation__factors={"student_arch": ["wrn-10-1", "wrn-16-1"]}),
        "ablation.factors.student_arch: student_arch cannot be a factor: the study sets it",
    ),
    (
        "ablation-level-refused",
        ablated(ablation__factors__adversarial_discrepancy=["kl", "hinge"]),
        "ablation.factors.adversarial_discrepancy: level 'hinge': adversarial_discrepancy must",
    ),
    (
        "ablation-level-mistyped",
        ablated(ablation__factors__n_s=[1, "two"]),
        "ablation.factors.n_s: level 'two': expected an integer, got 'two'",
    ),
    (
        "ablation-level-out-of-bounds",
        ablated(ablation__factors__n_s=[1, 5000]),
        "ablation.factors.n_s: level 5000: must be <= 1000, got 5000",
    ),
    (
        "ablation-level-twice",
        ablated(ablation__factors__beta=[250, 250.0]),
        "ablation.factors.beta: level 250 is given twice",
    ),
    (
        "ablation-one-level",
        ablated(ablation__factors__beta=[250]),
        "ablation.factors.beta: needs at least 2 levels, got [250]",
    ),
    (
        "ablation-levels-not-a-list",
        ablated(ablation__factors__beta=250),
        "ablation.factors.beta: expected a list, got 250",
    ),
    (
        "ablation-factor-also-fixed",
        ablated(loop__n_s=3),
        "ablation.factors.n_s: also fixed in loop.n_s; keep one of them",
    ),
    (
        "ablation-and-search",
        {**ABLATION, "search": {"space": copy.deepcopy(BASE["search"]["space"])}},
        "search.space: a study is a search or an ablation, not both",
    ),
    (
        "ablation-and-objectives",
        {**ABLATION, "search": {"objectives": [{"metric": "val_acc"}, {"metric": "val_mte"}]}},
        "search.objectives: a study is a search or an ablation, not both",
    ),
    (
        "ablation-and-table-objective",
        ablated(final={"table_objective": "val_mte"}),
        "final.table_objective: only for multi-objective studies",
    ),
    (
        "ablation-empty-factors",
        ablated(ablation__factors={}, ablation__controls={}),
        "ablation.factors: empty: give at least one factor with its levels",
    ),
    ("ablation-empty-section", ablated(ablation=None), "ablation.factors: empty"),
    (
        "ablation-duplicate-seeds",
        ablated(ablation__seeds=[0, 1, 0]),
        "ablation.seeds: expected distinct seeds, 0 repeated",
    ),
    ("ablation-no-seeds", ablated(ablation__seeds=[]), "ablation.seeds: empty: give at least"),
    (
        "ablation-design-unknown",
        ablated(ablation__design="latin_square"),
        "ablation.design: must be 'full_factorial' or 'one_at_a_time', got 'latin_square'",
    ),
    (
        "ablation-reference-not-a-level",
        ablated(ablation__references={"n_s": 3}),
        "ablation.references.n_s: 3 is not one of its levels [1, 2]",
    ),
    (
        "ablation-reference-not-a-factor",
        ablated(ablation__references={"z_dim": 3}),
        "ablation.references.z_dim: z_dim is not a factor of this ablation",
    ),
    (
        "ablation-control-refused",
        ablated(ablation__controls={"frozen": {"n_g": -1}}),
        "ablation.controls.frozen.n_g: must be >= 0, got -1",
    ),
    (
        "ablation-control-unknown-key",
        ablated(ablation__controls={"frozen": {"lr_gen": 0.0}}),
        "ablation.controls.frozen.lr_gen: unknown loop setting (did you mean lr_g?)",
    ),
    (
        "ablation-control-is-a-cell",
        ablated(ablation__controls={"twin": {"beta": 0}}),
        "ablation.controls.twin: the same configuration as cell 'beta=0, n_s=1'",
    ),
    (
        "ablation-control-is-the-reference",
        ablated(ablation__controls={"default": {"adversarial_discrepancy": "kl"}}),
        "ablation.controls.default: the same configuration as cell 'beta=250, n_s=1'",
    ),
    (
        "ablation-control-empty",
        ablated(ablation__controls={"frozen": {}}),
        "ablation.controls.frozen: empty: a control overrides at least one loop setting",
    ),
    (
        "ablation-final-reruns",
        ablated(final={"top_k": 2}),
        "final.top_k: an ablation has no final re-runs",
    ),
    (
        "ablation-unknown-key",
        ablated(ablation__factor={"n_s": [1, 2]}),
        "unknown key ablation.factor (did you mean factors?)",
    ),
    # The generator's objective and the prior weights, in every place a loop setting can be given:
    # fixed in loop, searched, an ablation factor, a control.
    (
        "objective-unknown",
        changed(loop__adversarial_discrepancy="hinge"),
        "loop: adversarial_discrepancy must be one of ('kl', 'l1', 'none'), got 'hinge'",
    ),
    (
        "objective-unknown-student",
        changed(loop__student_discrepancy="l2"),
        "loop: student_discrepancy must be one of ('kl', 'l1'), got 'l2'",
    ),
    ("prior-negative", changed(loop__prior_bn=-1), "loop.prior_bn: must be >= 0, got -1"),
    (
        "prior-not-finite",
        changed(loop__prior_entropy=float("nan")),
        "loop.prior_entropy: must be a finite number, got nan",
    ),
    (
        "prior-bn-on-mlp",
        changed(**TOY, loop__prior_bn=0.01),
        "loop: prior_bn must be 0 for teacher mlp-3x64: it has no batch-norm layers",
    ),
    (
        "objective-unknown-searched",
        changed(search__space__adversarial_discrepancy=["kl", "hinge"]),
        "search.space.adversarial_discrepancy: adversarial_discrepancy must be one of",
    ),
    (
        "prior-negative-searched",
        changed(search__space__prior_onehot={"type": "float", "low": -1.0, "high": 1.0}),
        "search.space.prior_onehot: prior_onehot must be a finite number >= 0, got -1.0",
    ),
    (
        "prior-bn-on-mlp-searched",  # refused at both bounds: still one mistake, one line
        changed(**TOY, search__space__prior_bn={"type": "float", "low": 1e-3, "high": 1.0}),
        "search.space.prior_bn: prior_bn must be 0 for teacher mlp-3x64",
    ),
    (
        "prior-negative-factor",
        ablated(ablation__factors__prior_bn=[0, -1]),
        "ablation.factors.prior_bn: level -1: must be >= 0, got -1",
    ),
    (
        "prior-bn-on-mlp-factor",
        ablated(**TOY_MLP, ablation__factors={"prior_bn": [0, 0.01]}),
        "ablation.factors.prior_bn: level 0.01: prior_bn must be 0 for teacher mlp-3x64",
    ),
    (
        "prior-bn-on-mlp-control",
        ablated(
            **TOY_MLP, ablation__factors={"n_s": [1, 2]}, ablation__controls={"bn": {"prior_bn": 1}}
        ),
        "ablation.controls.bn.prior_bn: prior_bn must be 0 for teacher mlp-3x64",
    ),
    (
        "objective-unknown-control",
        ablated(ablation__controls={"js": {"adversarial_discrepancy": "js"}}),
        "ablation.controls.js.adversarial_discrepancy: adversarial_discrepancy must be one of",
    ),
]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty ZSKT_HOME and working directory; the test checks both stay empty."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("ZSKT_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ZSKT_STORAGE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(work)
    return tmp_path


def _write(folder: Path, contents) -> Path:
    path = folder / "study.yaml"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        path.write_text(contents if isinstance(contents, str) else text(contents))
    return path


def _refused(path: Path, command: str, capsys, *extra: str) -> list[str]:
    assert study_main(["study", command, str(path), *extra]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert lines and all(line.startswith(f"error: {path.resolve()}: ") for line in lines), lines
    return lines


def _nothing_created(root: Path) -> None:
    import ray

    assert not ray.is_initialized()
    made = [p for p in root.rglob("*") if p.name != "study.yaml" and not p.is_dir()]
    made += [p for p in (root / "home").iterdir()]
    assert not made, made


assert len(CASES) >= 60


@pytest.mark.parametrize("case_id,contents,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_study_is_refused_before_anything_starts(
    home, capsys, case_id, contents, fragment
):
    path = _write(home, contents)
    for command in ("validate", "run"):
        lines = _refused(path, command, capsys)
        assert len(lines) == 1, lines
        assert fragment in lines[0], lines[0]
    _nothing_created(home)


def test_a_one_seed_ablation_is_valid_but_warned_of(home, capsys):
    """One seed runs (a pilot), but the researcher hears before any compute that the report will
    have no interval and no paired test; two seeds give no such warning."""
    for seeds, warned in (([3], True), ([0, 1], False)):
        path = _write(home, ablated(ablation__seeds=seeds))
        assert study_main(["study", "validate", str(path)]) == 0
        out = capsys.readouterr().out
        assert ("warning: ablation.seeds: one seed gives" in out) is warned, out
        assert f"x seeds {seeds} = " in out, out


def test_three_mistakes_are_reported_together(home, capsys):
    data = changed(loop__lr_s="fast", resources__max_concurrent=0, colour="red")
    path = _write(home, data)
    for command in ("validate", "run", "resume"):
        lines = _refused(path, command, capsys)
        assert len(lines) == 3, lines
        joined = "\n".join(lines)
        for fragment in (
            "loop.lr_s: expected a number",
            "resources.max_concurrent: must be >= 1",
            "unknown key colour",
        ):
            assert fragment in joined
    _nothing_created(home)


def test_teacher_files_that_are_not_what_they_claim(home, capsys):
    folder = home / "teachers"
    folder.mkdir()
    # a folder where the teacher file should be
    path = _write(home, changed(teacher={"arch": "wrn-10-1", "path": str(folder)}))
    assert "teacher.path: " in _refused(path, "run", capsys)[0]
    assert "is a folder" in _refused(path, "validate", capsys)[0]
    # metadata says wrn-10-1 on digits, the weights are a wrn-16-1's
    liar = folder / "liar.pt"
    meta = {
        "arch": "wrn-10-1",
        "dataset": "digits",
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 8,
        "test_acc": 99.0,
        "val_acc": 99.0,
    }
    save_model(build_model("wrn-16-1", 10, 1), meta, liar)
    path = _write(home, changed(teacher={"arch": "wrn-10-1", "path": str(liar)}))
    for command in ("validate", "run"):
        line = _refused(path, command, capsys)[0]
        assert "teacher.path: " in line and str(liar) in line, line
    # not a model file at all: a text file, and a pickle
    text_file = folder / "notes.pt"
    text_file.write_text("hello")
    pickled = folder / "pickled.pt"
    torch.save({"format": 1, "meta": meta, "state_dict": {}, "callable": os.getcwd}, pickled)
    for bad in (text_file, pickled):
        path = _write(home, changed(teacher={"arch": "wrn-10-1", "path": str(bad)}))
        line = _refused(path, "validate", capsys)[0]
        assert "not a" in line and "zskt-ray model file" in line, line
        assert "weights_only" not in line and "\x1b[" not in line, line


def test_inject_nan_must_hit_a_trial(home, capsys):
    path = _write(home, BASE)
    line = _refused_cli(path, capsys, "--inject-nan", "beta=100@5")
    assert "--inject-nan: beta=100 is not in the search space (choices: 0, 250)" in line
    line = _refused_cli(path, capsys, "--inject-nan", "n_s=9@5")
    assert "--inject-nan: n_s=9 is not in the search space (int from 1 to 4)" in line
    line = _refused_cli(path, capsys, "--inject-nan", "z_dim=7@5")
    assert "z_dim is not searched and every trial has z_dim=100" in line
    _nothing_created(home)


def _refused_cli(path: Path, capsys, *extra: str) -> str:
    assert study_main(["study", "validate", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err
