"""zskt_ray/study/design.py: the cells, runs and comparisons of a designed ablation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zskt_ray.config import DistillConfig, objective_name
from zskt_ray.names import FULL_FACTORIAL, ONE_AT_A_TIME
from zskt_ray.study.design import DesignError, cell_id, make_design

TOY = {"dataset": "toy2d", "teacher_arch": "mlp-3x64", "student_arch": "mlp-2x16", "beta": 0.0}
NOT_TRAINED = {"generator not trained": {"n_g": 0}}


def test_full_factorial_crosses_every_level_and_runs_every_cell_with_every_seed():
    base = DistillConfig(beta=250.0, n_s=10)
    d = make_design(base, {"beta": [0, 250], "n_s": [5, 10]}, FULL_FACTORIAL, [0, 1, 2])
    assert [c.label for c in d.cells] == [
        "beta=0, n_s=5",
        "beta=0, n_s=10",
        "beta=250, n_s=5",
        "beta=250, n_s=10",
    ]
    assert len({c.id for c in d.cells}) == 4
    # the reference levels are the base's values; levels are typed as the fields
    assert [(f.name, f.levels, f.reference) for f in d.factors] == [
        ("beta", (0.0, 250.0), 250.0),
        ("n_s", (5, 10), 10),
    ]
    assert d.reference_cell.label == "beta=250, n_s=10"
    runs = d.runs
    assert len(runs) == 12 and [r.seed for r in runs[:4]] == [0, 0, 0, 0]  # seed by seed
    assert len({r.trial_id for r in runs}) == 12
    assert runs[0].trial_id == f"{d.cells[0].id}-seed0"
    cfg = d.config(runs[5])
    assert (cfg.beta, cfg.n_s, cfg.seed) == (0.0, 10, 1)


def test_cell_ids_depend_on_the_settings_only():
    a = make_design({}, {"beta": [0, 250], "n_s": [5, 10]}, seeds=[0])
    b = make_design({"lr_s": 0.01}, {"n_s": [10, 5], "beta": [250.0, 0.0]}, seeds=[3, 4])
    assert {c.id for c in a.cells} == {c.id for c in b.cells}
    assert cell_id({"beta": 250, "n_s": 5}) == cell_id({"n_s": 5, "beta": 250.0})
    assert cell_id({"beta": 250, "n_s": 5}) != cell_id({"beta": 250, "n_s": 6})


def test_full_factorial_contrasts_average_over_the_other_factors_with_matching_cells():
    d = make_design({}, {"beta": [0, 250], "n_s": [5, 10]}, FULL_FACTORIAL, [0, 1, 2])
    by_label = {c.id: c.label for c in d.cells}
    contrasts = d.contrasts()
    assert [c.label for c in contrasts] == [
        "beta=0 vs beta=250, averaged over n_s",
        "n_s=5 vs n_s=10, averaged over beta",
    ]
    beta = contrasts[0]
    assert (beta.factor, beta.level, beta.reference_level) == ("beta", 0.0, 250.0)
    # position i of each side differs only in beta
    assert [by_label[c] for c in beta.treatment] == ["beta=0, n_s=5", "beta=0, n_s=10"]
    assert [by_label[c] for c in beta.reference] == ["beta=250, n_s=5", "beta=250, n_s=10"]


def test_one_at_a_time_moves_each_factor_from_the_reference_cell():
    d = make_design(
        TOY, {"n_s": [2, 5, 10], "z_dim": [2, 8]}, ONE_AT_A_TIME, [0, 1], controls=NOT_TRAINED
    )
    assert [c.label for c in d.cells] == [
        "n_s=10, z_dim=2",
        "n_s=2, z_dim=2",
        "n_s=5, z_dim=2",
        "n_s=10, z_dim=8",
        "generator not trained (n_g=0)",
    ]
    ref = d.reference_cell
    assert ref.label == "n_s=10, z_dim=2" and ref.is_reference  # base n_s 10; z_dim's first
    contrasts = d.contrasts()
    assert [c.label for c in contrasts] == [
        "n_s=2 vs n_s=10",
        "n_s=5 vs n_s=10",
        "z_dim=8 vs z_dim=2",
        "generator not trained (n_g=0) vs n_s=10, z_dim=2",
    ]
    assert all(c.reference == (ref.id,) and len(c.treatment) == 1 for c in contrasts)
    control = d.cells[-1]
    assert control.control == "generator not trained" and dict(control.settings) == {
        "n_s": 10,
        "z_dim": 2,
        "n_g": 0,
    }
    assert d.config(d.runs[-1]).n_g == 0 and len(d.runs) == 10
    assert d.cell_table()[-1] == {
        "cell": control.id,
        "cell_label": control.label,
        "control": "generator not trained",
        "n_s": 10,
        "z_dim": 2,
    }


def test_references_choose_the_level_others_are_compared_to():
    d = make_design({}, {"beta": [0, 250, 1000]}, references={"beta": 0}, seeds=[0])
    assert d.reference_cell.label == "beta=0"
    assert [c.label for c in d.contrasts()] == ["beta=250 vs beta=0", "beta=1000 vs beta=0"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(factors={"nz": [1, 2]}), "factor nz: not a loop setting"),
        (dict(factors={"n_sx": [1, 2]}), "factor n_sx: not a loop setting (did you mean n_s?)"),
        (dict(factors={"seed": [0, 1]}), "factor seed: cannot be a factor (seeds are the design's"),
        (dict(factors={"device": ["cpu", "cuda"]}), "factor device: cannot be a factor"),
        (dict(factors={"beta": [250]}), "factor beta: needs a list of at least 2 levels"),
        (dict(factors={"beta": "0, 250"}), "factor beta: needs a list of at least 2 levels"),
        (dict(factors={"beta": [250, 250.0]}), "factor beta: level 250 is given twice"),
        (dict(factors={"beta": [0, -1]}), "factor beta, level -1: beta must be >= 0"),
        (dict(factors={"n_s": [5, "ten"]}), "factor n_s, level 'ten': n_s: expected an integer"),
        (dict(factors={"beta": [0, 250]}, base=TOY), "factor beta, level 250: beta must be 0"),
        (dict(design="latin_square"), "design 'latin_square' is not one of full_factorial"),
        (dict(seeds=[0, 1, 0]), "seeds: seed 0 is given twice"),
        (dict(seeds=[]), "seeds: needs a non-empty list of integers"),
        (dict(seeds=[0, 1.5]), "seeds: 1.5 is not an integer"),
        (dict(references={"beta": 100}), "references.beta: 100 is not one of its levels [0, 250]"),
        (dict(references={"z_dim": 2}), "references.z_dim: not a factor of this design"),
        (dict(controls={"frozen": {"n_g": -1}}), "control 'frozen': n_g must be >= 0"),
        (dict(controls={"frozen": {}}), "control 'frozen': needs a mapping of settings"),
        (dict(controls={"frozen": {"seed": 3}}), "control 'frozen': seed cannot be set"),
        (dict(controls={"twin": {"beta": 0}}), "control 'twin': the same configuration as cell"),
        (  # a setting the reference cell already has: the reference cell run again
            dict(controls={"kl": {"adversarial_discrepancy": "kl"}}),
            "control 'kl': the same configuration as cell 'beta=250'",
        ),
        (
            dict(controls={"a": {"n_s": 3}, "b": {"n_s": 3, "z_dim": 100}}),
            "control 'b': the same configuration as cell 'a (n_s=3)'",
        ),
        (dict(factors={}, controls=None), "an ablation needs at least one factor or control"),
        (dict(base={"iterations": 0}), "base: iterations must be > 0"),
    ],
)
def test_bad_designs_are_refused_with_one_line_naming_the_problem(kwargs, message):
    args = dict(base={}, factors={"beta": [0, 250]}, seeds=[0, 1])
    args.update(kwargs)
    with pytest.raises(DesignError) as err:
        make_design(**args)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_controls_alone_compare_with_the_base():
    d = make_design(TOY, {}, seeds=[0, 1], controls=NOT_TRAINED)
    assert [c.label for c in d.cells] == ["base", "generator not trained (n_g=0)"]
    assert [c.label for c in d.contrasts()] == ["generator not trained (n_g=0) vs base"]


def test_the_design_module_imports_no_orchestration():
    """Its own imports, in a fresh interpreter (the ``zskt_ray.study`` package's __init__,
    which reads study files with pydantic, is stood in for by an empty package)."""
    code = (
        "import json, sys, types, zskt_ray; "
        "pkg = types.ModuleType('zskt_ray.study'); "
        "pkg.__path__ = [str(__import__('pathlib').Path(zskt_ray.__file__).parent / 'study')]; "
        "sys.modules['zskt_ray.study'] = pkg; "
        "import zskt_ray.study.design; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "zskt_ray" in loaded and not loaded & {"ray", "optuna", "mlflow", "pydantic"}, loaded


@pytest.mark.parametrize(
    "settings,name",
    [
        ({}, "ZSKT (adversarial KL)"),
        ({"adversarial_discrepancy": "l1"}, "DFAD-style (adversarial L1)"),
        ({"adversarial_discrepancy": "none"}, "untrained generator"),
        ({"prior_bn": 0.005}, "ZSKT (adversarial KL) + BN prior 0.005"),
        (
            {"adversarial_discrepancy": "l1", "student_discrepancy": "l1"},
            "DFAD-style (adversarial L1), student L1",
        ),
        (
            {"adversarial_discrepancy": "none", "prior_onehot": 1, "prior_entropy": 5},
            "DAFL-style (one-hot 1 + entropy 5)",
        ),
        ({"adversarial_discrepancy": "none", "prior_bn": 2}, "no adversarial term + BN prior 2"),
    ],
)
def test_objective_name_names_the_method_the_settings_make(settings, name):
    assert objective_name(DistillConfig(**settings)) == name


def test_objective_factors_name_their_cells_and_comparisons_by_method():
    base = DistillConfig(dataset="digits", teacher_arch="wrn-16-2", student_arch="wrn-16-1")
    factors = {"adversarial_discrepancy": ["kl", "l1", "none"], "prior_bn": [0, 0.005]}
    d = make_design(base, factors, ONE_AT_A_TIME, [0, 1])
    assert [c.label for c in d.cells] == [
        "ZSKT (adversarial KL)",
        "DFAD-style (adversarial L1)",
        "untrained generator",
        "ZSKT (adversarial KL) + BN prior 0.005",
    ]
    assert [c.label for c in d.contrasts()] == [
        "DFAD-style (adversarial L1) vs ZSKT (adversarial KL)",
        "untrained generator vs ZSKT (adversarial KL)",
        "ZSKT (adversarial KL) + BN prior 0.005 vs ZSKT (adversarial KL)",
    ]
    # other settings keep their name=value; a control names its method after its own name
    d = make_design(
        DistillConfig(**TOY),
        {"adversarial_discrepancy": ["kl", "none"], "n_s": [2, 10]},
        FULL_FACTORIAL,
        [0],
        {"DAFL": {"adversarial_discrepancy": "none", "prior_onehot": 1, "prior_entropy": 5}},
    )
    assert d.cells[1].label == "ZSKT (adversarial KL), n_s=10"
    assert d.cells[-1].label == "DAFL: DAFL-style (one-hot 1 + entropy 5)"  # its overrides
    assert d.contrasts()[0].label == (
        "untrained generator vs ZSKT (adversarial KL), averaged over n_s"
    )
    # designs without an objective factor keep name=value labels, controls included
    d = make_design(DistillConfig(**TOY), {"n_s": [2, 10]}, FULL_FACTORIAL, [0], NOT_TRAINED)
    assert [c.label for c in d.cells] == ["n_s=2", "n_s=10", "generator not trained (n_g=0)"]
