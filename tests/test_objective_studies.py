"""The shipped comparisons of generator objectives (studies/objectives_*.yaml): their designs,
and a reduced digits comparison end to end (slow) whose report names each objective by its method
with its paired difference against ZSKT."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ablation import _md_table, ray_home, run_reduced_digits  # noqa: F401

from zskt_ray.study.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "studies" / "objectives_digits.yaml"
TOY = ROOT / "studies" / "objectives_toy2d.yaml"
METHODS = [
    "ZSKT (adversarial KL)",
    "DFAD-style (adversarial L1)",
    "untrained generator",
]


def test_shipped_objective_comparisons_are_paired_designs_against_zskt():
    digits = load_spec(DIGITS).design
    assert [c.label for c in digits.cells] == [*METHODS, "ZSKT (adversarial KL) + BN prior 0.005"]
    assert digits.reference_cell.label == "ZSKT (adversarial KL)"
    assert digits.seeds == (0, 1, 2, 3, 4) and digits.base.iterations == 300
    # every comparison is a method against ZSKT, seed by seed
    ref = digits.reference_cell.id
    assert all(c.reference == (ref,) for c in digits.contrasts())
    toy = load_spec(TOY).design
    assert [c.label for c in toy.cells] == [
        *METHODS,
        "DAFL terms: DAFL-style (one-hot 1 + entropy 5)",
    ]
    assert all(c.reference == (toy.reference_cell.id,) for c in toy.contrasts())


def test_objectives_and_prior_weights_are_searchable_study_keys():
    """A search over the objective and the BN prior's weight: Optuna asks for both, and each
    trial's loop configuration runs with the values it drew."""
    import optuna

    from zskt_ray.study import space

    spec = parse_spec(
        {
            "name": "objsearch",
            "dataset": "digits",
            "teacher": {"arch": "wrn-10-1", "train_if_missing": True},
            "student": {"arch": "wrn-10-1"},
            "loop": {"iterations": 8, "eval_every": 4, "batch_size": 16},
            "search": {
                "space": {
                    "adversarial_discrepancy": ["kl", "l1", "none"],
                    "prior_bn": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
                },
                "num_trials": 6,
            },
        }
    )
    study = optuna.create_study(sampler=space.make_sampler(spec), direction="maximize")
    drawn = set()
    for _ in range(6):
        trial = study.ask()
        space.define_by_run(spec)(trial)
        cfg = spec.trial_config(trial.params)
        assert cfg.adversarial_discrepancy == trial.params["adversarial_discrepancy"]
        assert cfg.prior_bn == trial.params["prior_bn"] and 1e-3 <= cfg.prior_bn <= 1.0
        drawn.add(cfg.adversarial_discrepancy)
        study.tell(trial, 1.0)
    assert len(drawn) > 1


@pytest.mark.slow
@pytest.mark.usefixtures("ray_home")  # test_ablation's: one local Ray, a ZSKT_HOME of its own
def test_reduced_digits_objective_comparison(tmp_path):
    """studies/objectives_digits.yaml with a 4-iteration budget, 2 seeds and a tiny teacher: the
    four objectives through the same machinery as the full study, and the report's Table 1 layout
    with a row per method and its paired difference against ZSKT."""
    _, md = run_reduced_digits(DIGITS, "objectivesdigits", tmp_path)
    rows = _md_table(md, "Methods for the pair: test values and paired differences.")
    assert [r["method"] for r in rows] == [
        "ZSKT (adversarial KL) (reference)",
        *METHODS[1:],
        "ZSKT (adversarial KL) + BN prior 0.005",
    ]
    diff = "test accuracy (%): difference against the reference"
    assert rows[0][diff] == "reference"
    for r in rows[1:]:  # a signed difference, its interval over the 2 shared seeds
        assert r[diff].endswith("(n=2)") and r[diff].count("[") == 1, r[diff]
        assert r["teacher → student"] == "WRN-10-1 → WRN-10-1" and r["teacher"] != "—"
    comparisons = _md_table(md, "Paired comparisons, treatment − reference.")
    assert [r["comparison"] for r in comparisons[:3]] == [
        f"{m} vs ZSKT (adversarial KL)"
        for m in (*METHODS[1:], "ZSKT (adversarial KL) + BN prior 0.005")
    ]
    assert {r["n"] for r in comparisons} == {"2"}
