"""What each searched parameter does: marginal effects and importances, at equal budgets."""

from __future__ import annotations

import pandas as pd

from .. import plots, rungs, tables
from ..blocks import Para, TableBlock
from .page import Page
from .view import StudyView


def _searched_nothing(study: StudyView, page: Page, what: str) -> bool:
    """Say why there is no ``what`` when the study searched no parameters."""
    if study.searched:
        return False
    page.missing(what, "the study searched no parameters")
    return True


def effects(study: StudyView, page: Page) -> None:
    """One plot per searched parameter and a table of its marginal means per level."""
    d = study.data
    page.section("Effect of each searched parameter")
    if _searched_nothing(study, page, "parameter plots"):
        return
    if study.search.empty:
        page.missing("parameter plots", "no search trials were recorded")
        return
    at, full = study.rows(study.view), study.full_rows()
    label, full_label = study.view_label, study.full_label
    page.add(
        Para(
            f"One plot per searched parameter. Left: {d.objective} of every trial at the "
            f"{label} ({len(at)} trials), marked by what became of the trial later, with the "
            "mean ± population std per level (the marginal effect). Right: the trials that "
            "completed the full budget, at it. Final re-runs (another budget) are in the tables."
        )
    )
    effect_rows = []
    for p in study.searched:
        log = d.log_scale.get(p, False)
        eff = rungs.marginal_effects(at, p, log) if p in at else pd.DataFrame()
        effect_rows += [
            {
                "parameter": p,
                "level": r.level,
                "trials": r.n,
                f"{d.objective} mean ± std": tables.fmt_pm(r.mean, r.std, digits=3),
            }
            for r in eff.itertuples()
        ]
        fig = plots.param_effect(at, eff, full, p, d.objective, d.mode, label, full_label, log)
        if fig is None:
            page.missing(f"plot for {p}", "no run logged this parameter")
            continue
        caption = (
            f"{d.objective} against {p}: {label} ({len(at)} trials) and {full_label} "
            f"({len(full)} trials)."
        )
        page.figure(fig, f"effect_{p}", caption)
    if effect_rows:
        df = pd.DataFrame(effect_rows)
        page.add(
            TableBlock(
                df,
                f"Marginal effects at the {label}: mean ± population std of {d.objective} per "
                "level of each parameter (quantile bins for continuous ones), with the trials "
                "behind each.",
            )
        )
        page.table_file("effects", f"Marginal effects at the {label}.", df, df)


def importances(study: StudyView, page: Page) -> None:
    """Optuna's importances of the searched parameters at the default view and the full budget."""
    d = study.data
    page.section("Parameter importances")
    if _searched_nothing(study, page, "parameter importances"):
        return
    budgets = [study.view] if study.view is not None else []
    if study.full is not None and study.full != study.view:
        budgets.append(study.full)
    rows = []
    for b in budgets:
        imp = rungs.importances(
            study.rows(b), study.searched, study.space, d.mode, study.options.importance
        )
        if not imp.values:
            page.missing(f"parameter importances at the {b.label}", imp.note)
            continue
        rows += [
            {
                "budget": b.label,
                "parameter": k,
                "importance": round(v, 4),
                "trials": imp.n,
                "method": imp.method,
            }
            for k, v in imp.values.items()
        ]
        _importance_figure(study, page, b, imp)
    if rows:
        df = pd.DataFrame(rows)
        page.table_file("importances", "Parameter importances per budget.", df, df)
    elif not budgets:
        page.missing("parameter importances", "no search trial reported the objective")


def _importance_figure(
    study: StudyView, page: Page, b: rungs.Budget, imp: rungs.Importances
) -> None:
    objective = study.data.objective
    title = f"Parameter importances at the {b.label}: {imp.n} trials"
    fig = plots.importances(imp.values, objective, imp.method, title)
    rough = "; with so few trials they are a rough guide only" if imp.n < 10 else ""
    page.figure(
        fig,
        f"importances_{b.iteration}{'_full' if b.full else ''}",
        f"Importances of the searched parameters for {objective} at the {b.label}, "
        f"computed ({imp.method}, Optuna) from all {imp.n} trials with a value there{rough}.",
    )
    top = next(iter(imp.values))
    page.add(
        Para(
            f"At the {b.label}: {top} matters most ({imp.values[top]:.2f} of the "
            f"explained variance, {imp.method}, {imp.n} trials)."
        )
    )
