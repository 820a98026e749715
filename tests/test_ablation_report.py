"""The report's seed statistics on synthetic stored studies whose truth is known.

An ablation (beta x n_s on digits, 5 seeds, and the control "generator not trained") and a
search study with two re-run configurations are written into a temporary MLflow store the way
the study system writes them (parent run with study.yaml, one nested run per trial with zskt.*
tags, config fields as params). Planted: beta = 0 loses 2 points of test accuracy against
beta = 250 and raises MTE by 0.05; n_s and the control change nothing; every seed shares an
offset across cells; one run diverged and one never ran. The noise is drawn from a fixed seed;
how often a null effect is flagged over many draws is tests/test_stats.py's subject.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from statsmodels.stats.multitest import multipletests
from zskt_ray.analysis.load import StudyRef, load_study
from zskt_ray.analysis.report import build_report
from zskt_ray.analysis.sections import ablation as section

from zskt_ray import names
from zskt_ray.study.design import make_design

SEEDS = [0, 1, 2, 3, 4]
PAIR = {"dataset": "digits", "teacher": {"arch": "wrn-16-2"}, "student": {"arch": "wrn-16-1"}}
ABLATION = {
    "factors": {"beta": [0.0, 250.0], "n_s": [5, 10]},
    "design": "full_factorial",
    "seeds": SEEDS,
    "controls": {"generator not trained": {"adversarial_discrepancy": "none"}},
    "references": {"beta": 250.0, "n_s": 10},
}
LOOP = {"iterations": 300, "batch_size": 128, "eval_every": 50}
DIVERGED = ("beta=0, n_s=5", 3)  # (cell, seed) whose run diverged
NOT_RUN = ("beta=250, n_s=5", 4)  # never started (no MLflow run at all)


class Store:
    """A study in a fresh MLflow SQLite store, written like the study system writes one."""

    def __init__(self, tmp: Path, name: str, spec: dict):
        self.uri = f"sqlite:///{tmp / 'mlflow.db'}"
        self.c = MlflowClient(self.uri)
        self.exp = self.c.create_experiment(name, artifact_location=(tmp / "mlartifacts").as_uri())
        self.name = name
        run = self.c.create_run(
            self.exp, tags={names.TAG_STUDY: name, names.TAG_KIND: names.KIND_STUDY}
        )
        self.parent = run.info.run_id
        path = tmp / names.STUDY_FILE_ARTIFACT
        path.write_text(yaml.safe_dump({"name": name, **spec}, sort_keys=False))
        self.c.log_artifact(self.parent, str(path))
        self.t = int(time.time() * 1000)

    def run(self, kind: str, trial: str, params: dict, metrics: dict, status: str, **tags) -> None:
        reason = tags.pop("reason", "")
        run = self.c.create_run(
            self.exp,
            start_time=self.t,
            tags={
                names.TAG_PARENT: self.parent,
                names.TAG_STUDY: self.name,
                names.TAG_KIND: kind,
                names.TAG_TRIAL: trial,
                names.TAG_STATUS: status,
                **({names.TAG_REASON: reason} if reason else {}),
                **tags,
            },
        )
        rid = run.info.run_id
        for k, v in params.items():
            self.c.log_param(rid, k, str(v))
        for k, v in metrics.items():
            self.c.log_metric(rid, k, float(v), step=300)
        self.c.set_terminated(rid, "FINISHED" if status == names.COMPLETED else "FAILED")

    def ref(self) -> StudyRef:
        return StudyRef(self.name, self.uri, self.name)


def _planted(cell, seed: int, rng) -> tuple[float, float]:
    """(test accuracy, MTE) of a cell and seed: seed offset + planted effects + noise."""
    offset = [1.5, -2.0, 0.5, -1.0, 2.5][seed]
    beta0 = cell.settings["beta"] == 0.0
    acc = 94.0 + offset - 2.0 * beta0 + rng.normal(0, 0.3)
    mte = 0.10 - 0.01 * offset + 0.05 * beta0 + rng.normal(0, 0.003)
    return acc, mte


@pytest.fixture(scope="module")
def ablation_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    spec = {**PAIR, "loop": LOOP, names.SECTION_ABLATION: ABLATION}
    store = Store(tmp, "synthetic_ablation", spec)
    design = make_design(
        {**LOOP, "dataset": "digits", "teacher_arch": "wrn-16-2", "student_arch": "wrn-16-1"},
        ABLATION["factors"],
        seeds=SEEDS,
        controls=ABLATION["controls"],
        references=ABLATION["references"],
    )
    rng = np.random.default_rng(7)
    for i, run in enumerate(design.runs):
        if (run.cell.label, run.seed) == NOT_RUN:
            continue
        cfg = design.config(run)
        params = {k: getattr(cfg, k) for k in ("beta", "n_s", "adversarial_discrepancy", "seed")}
        acc, mte = _planted(run.cell, run.seed, rng)
        tags = {names.TAG_CELL: run.cell.id, names.TAG_CELL_LABEL: run.cell.label}
        if (run.cell.label, run.seed) == DIVERGED:
            reason = "diverged: loss_s became nan at iteration 51"
            store.run(names.KIND_ABLATION, f"t{i}", params, {}, names.FAILED, reason=reason, **tags)
        else:
            metrics = {names.TEST_ACC: acc, names.MTE: mte, names.VAL_ACC: acc + 1}
            store.run(names.KIND_ABLATION, f"t{i}", params, metrics, names.COMPLETED, **tags)
    data = load_study(store.ref(), with_optuna=False)
    result = build_report(data, tmp / "report")
    return design, data, result


def _md_table(md: str, caption: str) -> list[dict[str, str]]:
    lines = md.split(f"*{caption}*", 1)[1].strip().splitlines()
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    return [
        dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        for line in itertools.takewhile(lambda s: s.startswith("|"), lines[2:])
    ]


def test_runs_table_carries_cell_and_seed_of_every_run(ablation_report):
    design, data, result = ablation_report
    runs = pd.read_parquet(result.parquet)
    assert len(runs) == len(design.runs) - 1  # one never ran
    assert runs["cell"].notna().all() and runs["seed"].notna().all()
    labels = {c.id: c.label for c in design.cells}
    assert (runs["cell_label"] == runs["cell"].map(labels)).all()


def test_cells_show_n_failures_and_intervals(ablation_report):
    design, data, result = ablation_report
    md = result.markdown.read_text()
    cells = {r["cell"]: r for r in _md_table(md, "test accuracy (%) per cell, over seeds.")}
    assert list(cells) == [
        "beta=0, n_s=5",
        "beta=0, n_s=10",
        "beta=250, n_s=5",
        "beta=250, n_s=10 (reference)",
        "generator not trained (adversarial_discrepancy=none)",
    ]
    diverged = cells["beta=0, n_s=5"]
    assert diverged["n / seeds run"] == "4 / 5" and diverged["failures"] == "1 (1 diverged)"
    assert diverged["failure rate"] == "20 %"
    assert cells["beta=250, n_s=5"]["n / seeds run"] == "4 / 4"
    assert "1 not run" in cells["beta=250, n_s=5"]["note"]
    ref = cells["beta=250, n_s=10 (reference)"]
    assert ref["n / seeds run"] == "5 / 5" and ref["failures"] == "0"
    # the interval is the t-interval of the 5 seeds' values
    runs = data.runs[data.runs["cell"] == design.reference_cell.id]["test_acc"].to_numpy()
    from scipy import stats as sps

    low, high = sps.t.interval(0.95, 4, loc=runs.mean(), scale=sps.sem(runs))
    assert ref["95 % interval"] == f"[{low:.2f}, {high:.2f}]"
    assert ref["mean"] == f"{runs.mean():.2f}" and ref["std"] == f"{runs.std(ddof=1):.2f}"


def test_planted_effect_is_found_and_null_effects_are_not(ablation_report):
    design, data, result = ablation_report
    md = result.markdown.read_text()
    rows = {
        (r["metric"], r["comparison"]): r
        for r in _md_table(md, "Paired comparisons, treatment − reference.")
    }
    beta = rows[("test accuracy (%)", "beta=0 vs beta=250, averaged over n_s")]
    assert beta["verdict"] == "worse" and beta["n"] == "3"  # seeds 3 (diverged), 4 (not run)
    low, high = (float(x) for x in beta["95 % interval"].split(" (")[0].strip("[]").split(", "))
    assert low < -2.0 < high and high < 0 and beta["95 % interval"].endswith("(t)")
    assert "seeds 3, 4 dropped" in beta["note"]
    mte = rows[("test MTE", "beta=0 vs beta=250, averaged over n_s")]
    assert mte["verdict"] == "worse" and float(mte["difference"]) > 0  # higher MTE is worse
    for metric in ("test accuracy (%)", "test MTE"):
        n_s = rows[(metric, "n_s=5 vs n_s=10, averaged over beta")]
        control = rows[
            (metric, "generator not trained (adversarial_discrepancy=none) vs beta=250, n_s=10")
        ]
        for row in (n_s, control):
            assert row["verdict"].startswith("not distinguishable with")
            assert float(row["smallest detectable"]) > 0  # "not distinguishable" with a number
    assert control["n"] == "5"
    # the verdicts in words, the control first
    words = md.split("In words:", 1)[1]
    assert words.strip().startswith("- test accuracy (%), generator not trained")
    assert "smallest detectable difference" in words


def test_holm_corrects_across_every_comparison_of_the_report(ablation_report):
    design, data, result = ablation_report
    table = pd.read_csv(result.out_dir / "tables" / "ablation_comparisons.csv")
    assert len(table) == 6 and set(table["metric"]) == {"test accuracy (%)", "test MTE"}
    want = multipletests(table["p_t"], method="holm")[1]
    assert np.allclose(table["p_holm"], want)
    # and not per metric: correcting the three test-accuracy rows alone gives other values
    acc = table[table["metric"] == "test accuracy (%)"]
    alone = multipletests(acc["p_t"], method="holm")[1]
    assert not np.allclose(acc["p_holm"], alone)


def test_full_factorial_gets_anova_and_an_interaction_plot(ablation_report):
    design, data, result = ablation_report
    md = result.markdown.read_text()
    # 4 design cells x 5 seeds = 20, minus the diverged and the missing run
    assert "*ANOVA of test accuracy (%) (18 runs)" in md
    terms = [
        r["term"]
        for r in _md_table(
            md, "ANOVA of test accuracy (%) (18 runs); 1 run(s) without a value left out."
        )
    ]
    assert terms == ["seed (block)", "beta", "n_s", "beta × n_s", "residual"]
    figures = {p.name for p in result.figures}
    assert {"interaction_test_acc_beta_n_s.png", "interaction_mte_beta_n_s.png"} <= figures
    assert {"cells_test_acc.png", "cells_mte.png"} <= figures
    html = result.html.read_text()
    assert "worse" in html and "not distinguishable with 5 seeds" in html


def test_a_design_that_cannot_be_rebuilt_still_gets_per_cell_statistics():
    spec = {**PAIR, "loop": {**LOOP, "no_such_setting": 1}, names.SECTION_ABLATION: ABLATION}
    design, why = section.design_of(spec)
    assert design is None and "could not be rebuilt" in why and "no_such_setting" in why


# ------------------------------------------------------------------ a search's final re-runs


@pytest.fixture(scope="module")
def search_report(tmp_path_factory):
    """A search study whose best and runner-up configurations were re-run over 4 seeds: the
    runner-up is 3 points better on test accuracy (validation chose the other), and has the
    very same MTE, seed by seed."""
    tmp = tmp_path_factory.mktemp("search")
    spec = {
        **PAIR,
        "loop": LOOP,
        "search": {"space": {"n_s": [5, 10]}, "metric": "val_acc"},
        "final": {"top_k": 2, "seeds": [0, 1, 2, 3]},
    }
    store = Store(tmp, "synthetic_search", spec)
    rng = np.random.default_rng(6)
    for rank, n_s, shift in ((0, 5, 0.0), (1, 10, 3.0)):
        for seed in range(4):
            acc = 90.0 + seed + shift + rng.normal(0, 0.3)
            store.run(
                names.KIND_FINAL,
                f"final-{rank}-seed{seed}",
                {"n_s": n_s, "seed": seed},
                {names.TEST_ACC: acc, names.MTE: 0.1 + 0.01 * seed},  # the same in both
                names.COMPLETED,
                **{names.TAG_CONFIG_ID: f"cfg{rank}"},
            )
    return build_report(load_study(store.ref(), with_optuna=False), tmp / "report")


def test_search_final_reruns_get_intervals_and_the_runner_up_comparison(search_report):
    md = search_report.markdown.read_text()
    assert "## Final re-runs: intervals over seeds" in md
    rows = _md_table(md, "Final re-runs per configuration.")
    assert [(r["metric"], r["rank"], r["n / seeds run"]) for r in rows] == [
        ("test accuracy (%)", "0", "4 / 4"),
        ("test accuracy (%)", "1", "4 / 4"),
        ("test MTE", "0", "4 / 4"),
        ("test MTE", "1", "4 / 4"),
    ]
    assert all(r["95 % interval"].startswith("[") for r in rows)
    said = md.split("on test accuracy (%) the best configuration is ", 1)[1]
    assert said.startswith("distinguishable from the runner-up (worse: -")
    low, high = (float(x) for x in said.split("[", 1)[1].split("]", 1)[0].split(", "))
    assert low < -3.0 < high < 0
    assert "on test MTE the best configuration is not distinguishable from the runner-up" in md
