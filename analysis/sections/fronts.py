"""Multi-objective studies: the Pareto front of the search, the configurations re-run from it,
the hypervolume over trials and each objective's parameter importances.

Every section here shows nothing for a single-objective study. Trials are compared at the full
search budget, the one budget at which a multi-objective trial has values of every objective
(``val_mte`` and the cost are measured at the end of a trial): pruned and failed trials are
counted, never placed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ... import pareto
from ...names import COMPLETED, FAILED, PRUNED
from .. import fronts, plots, rungs, tables
from ..blocks import Para, TableBlock
from .page import Page
from .view import StudyView

RERUN_RULE = (
    "Up to final.top_k configurations of the front are re-run over the final seeds, spread "
    "along it (zskt_ray.pareto.choose_reruns): first the trial best in each objective, in the "
    "study file's order, then, one at a time, the front trial that adds the most hypervolume to "
    "those already chosen (it favours knees of the front, and does not depend on the objectives' "
    "units). Identical configurations count once."
)


def _front(study: StudyView) -> fronts.Front | None:
    """The study's front (computed once per report), None for a single-objective study."""
    d = study.data
    if not fronts.is_multi(d):
        return None
    if "front" not in d._cache:
        d._cache["front"] = fronts.front_of(d)
    return d._cache["front"]


def _fmt(value: float, metric: str) -> str:
    return tables.fmt_pm(value, None, digits=2 if metric == "val_acc" else 4)


def pareto_front(study: StudyView, page: Page) -> None:
    """Every trial with its objective values, the non-dominated ones highlighted."""
    front = _front(study)
    if front is None:
        return
    page.section("Pareto front of the search")
    budget = study.full_label
    status = front.trials["status"].value_counts()
    page.add(
        Para(
            f"Objectives: {', '.join(f'{m} ({mode})' for m, mode in zip(front.metrics, front.modes, strict=True))}. "
            f"{len(front.trials)} search trials, {front.with_values} of them with the values of "
            f"every objective at the {budget}, the budget all trials are compared at here; "
            f"{int(status.get(PRUNED, 0))} pruned by ASHA before it and "
            f"{int(status.get(FAILED, 0))} failed have none, and are not placed. "
            f"Non-dominated: {len(front.front)} (no other trial is at least as good in every "
            "objective and better in one)."
        )
    )
    fig = fronts.front_figure(front, budget)
    if fig is None:
        page.missing("Pareto front", "no search trial has values of every objective")
        return
    page.figure(
        fig,
        "pareto_front",
        f"Search trials at the {budget}: dominated (grey) and non-dominated (red, joined); "
        "#r marks the configuration re-run as rank r.",
    )
    reruns = front.rerun_numbers()
    numeric = front.trials.assign(
        on_front=np.isin(np.arange(len(front.trials)), front.front),
        rerun_rank=front.trials["number"].map(reruns).astype("Int64"),
    )
    page.table_file("pareto_trials", "Every search trial's objective values.", numeric, numeric)
    shown = numeric[numeric["on_front"]]
    display = pd.DataFrame(
        {
            "trial": shown["number"],
            **{m: [_fmt(v, m) for v in shown[m]] for m in front.metrics},
            **{p: shown[p] for p in study.searched if p in shown},
            "re-run as": [f"#{r}" if pd.notna(r) else "" for r in shown["rerun_rank"]],
        }
    )
    page.add(TableBlock(display, f"The non-dominated trials at the {budget}."))


def reruns(study: StudyView, page: Page) -> None:
    """The configurations re-run from the front, with test accuracy and test MTE over seeds."""
    front = _front(study)
    if front is None:
        return
    page.section("Configurations re-run from the front")
    choice = fronts.table_choice(study.data)
    text = RERUN_RULE
    if choice is not None:
        text += f" Table 1 and Table 2 take {choice.rule}."
    page.add(Para(text))
    if choice is not None and choice.note:
        page.notes.append(f"tables: {choice.note}")
        page.add(Para(f"Tables: {choice.note}.", "warn"))
    df = fronts.rerun_table(study.data, front)
    if df.empty:
        page.missing("re-run configurations", "the study has no final re-runs")
        return
    page.table_file("pareto_reruns", "Configurations re-run from the front.", df, df)
    k, xi = _mte_settings(study)
    display = pd.DataFrame(
        {
            "rank": df["rank"],
            "chosen as": df["chosen"],
            "trial": df["trial"].astype("Int64"),
            **{c: [_fmt(v, c.split()[-1]) for v in df[c]] for c in df if c.startswith("search ")},
            **{p: df[p] for p in study.searched if p in df},
            "test accuracy (%)": [
                tables.fmt_pm(m, s, n)
                for m, s, n in zip(
                    df["test_acc_mean"], df["test_acc_std"], df["seeds"], strict=True
                )
            ],
            f"test MTE (K={k}, ξ={xi})": [
                tables.fmt_pm(m, s, n, digits=4)
                for m, s, n in zip(df["mte_mean"], df["mte_std"], df["mte_n"], strict=True)
            ],
        }
    )
    page.add(
        TableBlock(
            display,
            "Each re-run configuration: why it was chosen, its search values (validation, at the "
            "search budget), and its test accuracy and test MTE, mean ± population std over its "
            "completed final re-runs (n seeds).",
        )
    )


def _mte_settings(study: StudyView) -> tuple[str, str]:
    final = study.runs[(study.runs["final_rank"].notna()) & (study.runs["status"] == COMPLETED)]
    k, xi = final["mte_k"].dropna().unique(), final["mte_xi"].dropna().unique()
    return (str(int(k[0])) if len(k) == 1 else "?"), (f"{xi[0]:g}" if len(xi) == 1 else "?")


def hypervolume(study: StudyView, page: Page) -> None:
    """The hypervolume of the trials so far: has the search stopped finding better trade-offs?"""
    front = _front(study)
    if front is None:
        return
    page.section("Hypervolume over trials")
    values = front.values
    if not front.with_values:
        page.missing("hypervolume", "no search trial has values of every objective")
        return
    ref = pareto.reference_point(values, front.modes)
    history = pareto.hypervolume_history(values, front.modes, ref)
    numbers = front.trials["number"].to_numpy()
    grew = np.flatnonzero(np.diff(np.concatenate([[0.0], history])) > 0)
    last = int(numbers[grew[-1]]) if len(grew) else int(numbers[0])
    after = int((numbers > last).sum())
    point = ", ".join(f"{m} {v:.4g}" for m, v in zip(front.metrics, ref, strict=True))
    page.figure(
        fronts.hypervolume_figure(numbers, history, len(front.front)),
        "pareto_hypervolume",
        f"Hypervolume dominated by the trials up to each trial number, against the reference "
        f"point ({point}): the front's worst value in each objective, moved away by 10 % of the "
        "front's range, fixed for the whole curve (so it never decreases).",
    )
    page.add(
        Para(
            f"The hypervolume last grew at trial {last}; the {after} trials after it added none. "
            + (
                "A curve still rising at the last trial says the search had not converged: more "
                "trials would likely improve the front."
                if after == 0
                else "A flat tail says the last trials found no better trade-off."
            )
        )
    )


def objective_importances(study: StudyView, page: Page) -> None:
    """Parameter importances for each objective, from the trials with values at the full budget."""
    front = _front(study)
    if front is None:
        return
    page.section("Parameter importances per objective")
    if not study.searched:
        page.missing("importances per objective", "the study searched no parameters")
        return
    rows = []
    for metric, mode in zip(front.metrics, front.modes, strict=True):
        trials = front.trials[np.isfinite(front.trials[metric].to_numpy(dtype=float))]
        imp = rungs.importances(
            trials.assign(value=trials[metric]),
            study.searched,
            study.space,
            mode,
            study.options.importance,
        )
        if not imp.values:
            page.missing(f"importances for {metric}", imp.note)
            continue
        rows += [
            {
                "objective": metric,
                "parameter": k,
                "importance": round(v, 4),
                "trials": imp.n,
                "method": imp.method,
            }
            for k, v in imp.values.items()
        ]
        title = f"Importances for {metric} ({mode}) at the {study.full_label}: {imp.n} trials"
        page.figure(
            plots.importances(imp.values, metric, imp.method, title),
            f"importances_objective_{metric}",
            f"Importances of the searched parameters for {metric}, computed ({imp.method}, "
            f"Optuna, on a study of the {imp.n} trials' {metric} values in its own direction) "
            "from every trial with values at the full budget.",
        )
    if rows:
        df = pd.DataFrame(rows)
        page.table_file("importances_per_objective", "Parameter importances per objective.", df, df)
