"""Designed ablations as a study kind: the study file -> design -> Optuna trials -> Tune trials ->
MLflow runs, and (with real local Ray, Optuna and an MLflow SQLite store) a small toy2d ablation
end to end with its report; the shipped ablations run as slow tests.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml

from zskt_ray import names
from zskt_ray.config import DistillConfig, from_dict, to_dict
from zskt_ray.study import space
from zskt_ray.study.spec import config_id, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
TOY_ABLATION = ROOT / "studies" / "toy2d_ablation.yaml"
DIGITS_ABLATION = ROOT / "studies" / "ablation_beta_ns_digits.yaml"

# A toy2d ablation small enough for the default suite: 2 x 2 cells and a control, 3 seeds.
TINY = {
    "name": "tinyablation",
    "dataset": "toy2d",
    "teacher": {"arch": "mlp-3x64", "train_if_missing": True},
    "student": {"arch": "mlp-2x16"},
    "loop": {"iterations": 20, "batch_size": 64, "eval_every": 10, "beta": 0},
    "ablation": {
        "factors": {"n_s": [1, 2], "z_dim": [2, 8]},
        "seeds": [0, 1, 2],
        "controls": {"generator not trained": {"adversarial_discrepancy": "none"}},
    },
    "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    "evaluation": {"mte_final": {"k": 3, "xi": 0.1, "n_test": 20}, "image_grids": 0},
}


def tiny(**changes) -> dict:
    d = copy.deepcopy(TINY)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return d


# ------------------------------------------------------------------ the resolved study


def test_an_ablation_resolves_to_a_grid_over_cells_and_seeds():
    spec = parse_spec(tiny())
    design = spec.design
    assert spec.trial_kind == names.KIND_ABLATION
    assert spec.experiment_dir.endswith(f"{spec.name}/{names.KIND_ABLATION}")
    assert [c.label for c in design.cells] == [
        "n_s=1, z_dim=2",
        "n_s=1, z_dim=8",
        "n_s=2, z_dim=2",
        "n_s=2, z_dim=8",
        "generator not trained (adversarial_discrepancy=none)",
    ]
    # every cell with every seed, as trials of a grid: no scheduler, no final re-runs
    assert spec.num_trials == len(design.runs) == 15
    assert (spec.search.sampler, spec.scheduler.type) == ("grid", "none")
    assert spec.final.top_k == 0 and spec.final.seeds == []
    # the reference levels are written down (the first levels: neither is the loop's value)
    assert spec.ablation.references == {"n_s": 1, "z_dim": 2}
    # factors are not fixed settings of the loop section; the control's base is the reference
    assert "n_s" not in spec.loop.model_dump() and "z_dim" not in spec.loop.model_dump()
    control = design.cells[-1]
    assert dict(control.settings) == {"n_s": 1, "z_dim": 2, "adversarial_discrepancy": "none"}
    # MTE of a measurement run: the final settings; resources: the search's own
    assert spec.mte(spec.trial_kind) == spec.evaluation.mte_final
    assert spec.trial_resources(spec.trial_kind)["cpu"] == spec.resources.cpus_per_trial


def test_study_yaml_of_an_ablation_reads_back_as_the_same_study():
    spec = parse_spec(tiny())
    again = parse_spec(spec.raw)
    assert again.raw == spec.raw and again.fingerprint() == spec.fingerprint()
    assert (
        names.SECTION_ABLATION
        not in parse_spec(
            {k: v for k, v in TINY.items() if k != names.SECTION_ABLATION}
            | {"loop": {"beta": 0}, "search": {"space": {"n_s": [1, 2]}, "num_trials": 2}}
        ).raw
    )  # a search study's study.yaml has no ablation key


def test_the_fingerprint_follows_the_design():
    a = parse_spec(tiny())
    assert a.fingerprint() == parse_spec(tiny(search={"max_failures": 3})).fingerprint()
    for changed in (
        tiny(ablation__seeds=[0, 1]),
        tiny(ablation__factors={"n_s": [1, 3], "z_dim": [2, 8]}),
        tiny(ablation__references={"n_s": 2}),
        tiny(ablation__controls={"frozen": {"n_g": 0}}),
        tiny(ablation__design="one_at_a_time"),
    ):
        assert parse_spec(changed).fingerprint() != a.fingerprint()


def test_smoke_version_of_an_ablation_keeps_its_cells_with_one_seed():
    spec = parse_spec(tiny(), smoke=True)
    assert spec.name == "tinyablation-smoke" and spec.ablation.seeds == [0]
    assert spec.num_trials == 5 and spec.base.iterations <= 20


def test_validate_names_cells_seeds_and_runs(tmp_path, capsys):
    from zskt_ray.study.cli import main as study_main

    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert study_main(["study", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok: ablation 'tinyablation': 5 cells (full_factorial; controls: generator not" in out
    assert "x seeds [0, 1, 2] = 15 runs of 20 iterations" in out
    # --inject-nan must name a value some cell has
    assert study_main(["study", "validate", str(path), "--inject-nan", "n_s=3@5"]) == 2
    err = capsys.readouterr().err
    assert "--inject-nan: no cell of the ablation has n_s=3 (its cells have 1, 2)" in err
    assert study_main(["study", "validate", str(path), "--inject-nan", "z_dim=8@5"]) == 0


# ------------------------------------------------------------------ design -> trials


def _asked(spec, n: int) -> list[dict]:
    """The first ``n`` trials the study's sampler and space ask for, in memory."""
    study = optuna.create_study(sampler=space.make_sampler(spec), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        space.define_by_run(spec)(trial)
        out.append(dict(trial.params))
        study.tell(trial, 1.0)
    return out


def test_optuna_asks_for_every_run_once_in_the_design_order():
    spec = parse_spec(tiny())
    asked = _asked(spec, spec.num_trials)
    want = [{names.PARAM_CELL: r.cell.id, names.PARAM_SEED: r.seed} for r in spec.design.runs]
    assert asked == want  # seed by seed: a study cut short holds whole seeds
    assert len({tuple(a.values()) for a in asked}) == spec.num_trials


def test_the_searcher_records_each_trial_s_configuration(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path))
    spec = parse_spec(tiny())
    searcher = space.StudySearcher(spec)
    design = spec.design
    for i, run in enumerate(design.runs[:6]):
        config = searcher.suggest(f"trial_{i}")
        assert config == {names.PARAM_CELL: run.cell.id, names.PARAM_SEED: run.seed}
        attrs = searcher._ot_trials[f"trial_{i}"].user_attrs
        assert attrs[names.ATTR_CONFIG_ID] == config_id(design.config(run))
    stored = space.open_study(spec, create=False).user_attrs[names.ATTR_DESIGN]
    assert [c["id"] for c in stored] == [c.id for c in design.cells]
    assert stored[-1]["control"] == "generator not trained"


def test_a_trial_runs_its_cell_with_its_seed():
    from zskt_ray.study.trainable import TrialContext, _trial_config

    spec = parse_spec(tiny())
    design = spec.design
    ctx = TrialContext(
        kind=names.KIND_ABLATION,
        base=to_dict(spec.base),
        tracking=None,
        teacher_state={},
        teacher_meta={},
        mte=spec.mte_final,
        image_grids=0,
        threads=1,
        metric=spec.metric,
        mode=spec.mode,
        cells={c["id"]: c for c in space.design_cells(spec)},
    )
    for run in design.runs:
        _, cfg = _trial_config({names.PARAM_CELL: run.cell.id, names.PARAM_SEED: run.seed}, ctx)
        assert cfg == design.config(run)
        assert cfg.seed == run.seed and cfg.iterations == 20  # the full budget in every cell


def test_seed_s_starts_every_cell_from_the_same_student_and_noise():
    """The loop seeds the student's initialisation and the noise stream from the run's seed
    alone: two cells with seed s start from the same student, draw the same z, and (with the
    same z_dim) the same generator."""
    from zskt_ray.data import dataset_info
    from zskt_ray.loop import ZeroShotDistiller
    from zskt_ray.models import build_model

    design = parse_spec(tiny()).design
    info = dataset_info("toy2d")
    teacher = build_model("mlp-3x64", info.num_classes, info.in_channels)
    cells = {c.label: c for c in design.cells}

    def start(label: str, seed: int) -> ZeroShotDistiller:
        run = next(r for r in design.runs if r.cell is cells[label] and r.seed == seed)
        cfg = from_dict(DistillConfig, {**to_dict(design.config(run)), "device": "cpu"})
        return ZeroShotDistiller(cfg, teacher, info)

    a = start("n_s=1, z_dim=2", 1)
    b = start("n_s=2, z_dim=2", 1)  # another n_s
    c = start("n_s=2, z_dim=8", 1)  # another z_dim
    d = start("generator not trained (adversarial_discrepancy=none)", 1)
    other_seed = start("n_s=1, z_dim=2", 2)
    for x in (b, c, d):
        assert _same(a.student, x.student)
    assert _same(a.generator, b.generator) and _same(a.generator, d.generator)
    assert not _same(a.student, other_seed.student)
    draws = [torch.randn(4, generator=x.noise) for x in (a, b, c, d)]
    assert all(torch.equal(draws[0], z) for z in draws[1:])
    assert not torch.equal(draws[0], torch.randn(4, generator=other_seed.noise))


def _same(m1: torch.nn.Module, m2: torch.nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


# ------------------------------------------------------------------ end to end (real Ray)


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """One local Ray for the module's studies, and a ZSKT_HOME of its own."""
    from cluster_fixtures import local_study_ray

    with local_study_ray(tmp_path_factory.mktemp("zskt_home")) as home:
        yield home


def _ablation_runs(spec) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.experiment)
    return client.search_runs(
        [exp.experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_ABLATION}'", max_results=1000
    )


def check_one_run_per_cell_and_seed(spec) -> None:
    """Optuna, MLflow and the runs table agree: every cell x seed exactly once, completed."""
    from zskt_ray.analysis.load import StudyRef, load_runs

    design = spec.design
    want = {(r.cell.id, r.seed) for r in design.runs}
    trials = optuna.load_study(study_name=spec.name, storage=spec.optuna_storage).trials
    assert len(trials) == len(want)
    assert {(t.params[names.PARAM_CELL], t.params[names.PARAM_SEED]) for t in trials} == want
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    runs = _ablation_runs(spec)
    got = [(r.data.tags[names.TAG_CELL], int(r.data.params["seed"])) for r in runs]
    assert sorted(got) == sorted(want)
    labels = {c.id: c.label for c in design.cells}
    for r in runs:
        tags = r.data.tags
        assert r.info.status == "FINISHED" and tags[names.TAG_STATUS] == names.COMPLETED
        assert tags[names.TAG_CELL_LABEL] == labels[tags[names.TAG_CELL]]
        assert r.info.run_name.endswith(
            f"{labels[tags[names.TAG_CELL]]}, seed {r.data.params['seed']}"
        )
        # a measurement: test accuracy and test MTE with its K and xi, at the full budget
        assert {"test_acc", "mte", "mte_k", "mte_xi", "val_acc"} <= set(r.data.metrics)
        assert r.data.metrics["iterations_done"] == spec.base.iterations
        assert r.data.metrics["mte_k"] == spec.mte_final.k
    table = load_runs(StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage))
    rows = table[table["kind"] == names.KIND_ABLATION]
    assert sorted(zip(rows["cell"], rows["seed"].astype(int))) == sorted(want)
    assert set(rows["optuna_state"]) == {"COMPLETE"}


def test_toy2d_ablation_end_to_end_with_its_report(ray_home, tmp_path):
    """15 runs through Ray Tune, Optuna and MLflow; every run of the cell n_s=1, z_dim=8 is made
    to diverge (--inject-nan), and the report counts those failures in its cell."""
    from zskt_ray.analysis.load import StudyRef
    from zskt_ray.analysis.report import make_report

    from zskt_ray.study.runner import run_study

    spec = parse_spec(tiny(ablation__factors={"n_s": [1, 2], "z_dim": [2, 8]}))
    fault = {"param": "z_dim", "value": 8, "iteration": 10}
    outcome = run_study(spec, log=lambda _: None, fault=fault)
    assert outcome.final == [] and outcome.best == []  # no final re-runs after an ablation
    assert outcome.search_counts == {"COMPLETE": 9, "FAIL": 6}
    design = spec.design
    failing = {c.id for c in design.cells if c.settings.get("z_dim") == 8}
    runs = _ablation_runs(spec)
    assert len(runs) == 15 and all(r.info.status != "RUNNING" for r in runs)
    for r in runs:
        failed = r.data.tags[names.TAG_CELL] in failing
        assert r.data.tags[names.TAG_STATUS] == (names.FAILED if failed else names.COMPLETED)

    ref = StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage)
    report = make_report(ref, tmp_path / "report")
    md = report.markdown.read_text()
    assert "# Ablation report: tinyablation" in md
    assert "Learning curves" not in md and "Search trials at equal budgets" not in md
    cells = _md_table(md, "test accuracy (%) per cell, over seeds.")
    by_cell = {r["cell"]: r for r in cells}
    assert by_cell["n_s=2, z_dim=2"]["n / seeds run"] == "3 / 3"
    assert by_cell["n_s=1, z_dim=2 (reference)"]["failures"] == "0"
    assert by_cell["n_s=1, z_dim=8"]["n / seeds run"] == "0 / 3"
    assert by_cell["n_s=1, z_dim=8"]["failures"] == "3 (3 diverged)"
    assert by_cell["n_s=1, z_dim=8"]["failure rate"] == "100 %"
    comparisons = _md_table(md, "Paired comparisons, treatment − reference.")
    control = [r for r in comparisons if r["comparison"].startswith("generator not trained")]
    assert [r["n"] for r in control] == ["3", "3"]  # test accuracy and test MTE
    assert all(
        r["verdict"] in ("better", "worse", "not distinguishable with 3 seeds") for r in control
    )
    # z_dim is compared nowhere: every seed of its other level failed
    z_dim = [r for r in comparisons if r["comparison"].startswith("z_dim=8")]
    assert z_dim and all(r["n"] == "0" for r in z_dim)
    parquet = __import__("pandas").read_parquet(report.parquet)
    assert parquet["cell"].notna().sum() == 15 and parquet["seed"].notna().all()
    # health and cost: every run's cost listed, the total the sum of the runs' device-seconds
    assert "## Run health" in md and "## Cost" in md
    spent = _md_table(
        md,
        "What each ablation run cost: wall and device seconds, pseudo images, "
        "forward and backward passes of teacher, student and generator (evaluation "
        "passes included), peak memory (CUDA max allocated, else the worker's peak "
        "RSS).",
    )
    assert len(spent) == 15
    total = parquet["cost_device_s"].sum()
    assert total > 0 and f"({total:.0f} CPU-seconds" in md


def _md_table(md: str, caption: str) -> list[dict[str, str]]:
    """The rows of the Markdown table under ``*caption*``."""
    lines = md.split(f"*{caption}*", 1)[1].strip().splitlines()
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = []
    for line in itertools.takewhile(lambda s: s.startswith("|"), lines[2:]):
        rows.append(dict(zip(head, (c.strip() for c in line.strip("|").split("|")))))
    return rows


@pytest.mark.slow
def test_shipped_toy2d_ablation_from_an_empty_home(ray_home, tmp_path, monkeypatch):
    """studies/toy2d_ablation.yaml as it ships, from an empty $ZSKT_HOME (the teacher is trained
    first): every cell x seed once, and the report's statistics over 3 seeds per cell."""
    from zskt_ray.analysis.load import resolve_study
    from zskt_ray.analysis.report import make_report

    from zskt_ray.study.runner import run_study

    monkeypatch.setenv("ZSKT_HOME", str(tmp_path / "home"))
    spec = load_spec(TOY_ABLATION)
    run_study(spec, log=lambda _: None)
    check_one_run_per_cell_and_seed(spec)
    md = make_report(resolve_study(TOY_ABLATION), tmp_path / "report").markdown.read_text()
    cells = _md_table(md, "test accuracy (%) per cell, over seeds.")
    assert len(cells) == 5 and {r["n / seeds run"] for r in cells} == {"3 / 3"}
    assert "ANOVA of test accuracy (%) (12 runs)" in md and "interaction_test_acc" in md


def run_reduced_digits(study_file: Path, name: str, tmp_path: Path, **over) -> tuple[Any, str]:
    """A shipped digits ablation with a tiny teacher, 4 iterations and seeds 0 and 1 (``over``:
    further top-level keys), run through the study machinery: its spec and its report's
    Markdown, once every cell x seed is checked to have run exactly once."""
    from zskt_ray.analysis.load import StudyRef
    from zskt_ray.analysis.report import make_report

    from zskt_ray.config import TeacherConfig
    from zskt_ray.study.runner import run_study
    from zskt_ray.teacher import ensure_teacher

    teacher = ensure_teacher(
        TeacherConfig.recipe(
            "digits", "wrn-10-1", epochs=1, milestones=(1,), batch_size=128, device="cpu"
        ),
        tmp_path / "teacher.pt",
        log=None,
    )
    data = yaml.safe_load(study_file.read_text())
    data.update(
        name=name,
        teacher={"arch": "wrn-10-1", "path": str(teacher)},
        student={"arch": "wrn-10-1"},
        loop={"iterations": 4, "batch_size": 16, "eval_every": 2, "eval_batch_size": 400},
        evaluation={"mte_final": {"k": 2, "n_test": 8}, "image_grids": 0},
        mlflow={},
        **over,
    )
    data["ablation"]["seeds"] = [0, 1]
    spec = parse_spec(data)
    run_study(spec, log=lambda _: None)
    check_one_run_per_cell_and_seed(spec)
    ref = StudyRef(spec.name, spec.tracking_uri, spec.experiment, spec.optuna_storage)
    return spec, make_report(ref, tmp_path / "report").markdown.read_text()


@pytest.mark.slow
def test_reduced_digits_ablation(ray_home, tmp_path, monkeypatch):
    """studies/ablation_beta_ns_digits.yaml with a short budget and a tiny teacher: beta x n_s
    and the control on digits, through the same machinery as the full study."""
    spec, md = run_reduced_digits(
        DIGITS_ABLATION, "digitsablation", tmp_path, kdat={"enabled": False}
    )
    assert [f.name for f in spec.design.factors] == ["beta", "n_s"]
    assert spec.design.reference_cell.label == "beta=250, n_s=10"  # the paper's defaults
    comparisons = _md_table(md, "Paired comparisons, treatment − reference.")
    assert [r["comparison"] for r in comparisons[:3]] == [
        "beta=0 vs beta=250, averaged over n_s",
        "n_s=5 vs n_s=10, averaged over beta",
        "generator not trained (adversarial_discrepancy=none) vs beta=250, n_s=10",
    ]
    assert {r["n"] for r in comparisons} == {"2"}
