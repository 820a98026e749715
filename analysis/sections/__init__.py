"""The sections of a study's report, in page order.

A section is a function ``section(study: StudyView, page: Page) -> None``: it reads the loaded
study (:class:`StudyView`: runs by kind, configurations, the budgets trials are compared at) and
adds blocks to the page (:class:`Page`: headings, text, tables, figures; table files for
``tables/``; notes for the console). It knows nothing of HTML or Markdown.

Adding a section: write its function (in the module of its subject, or a new module here), then
name it in :data:`STUDY_SECTIONS` (and :data:`ABLATION_SECTIONS`, the sections of a designed
ablation's report) where it belongs on the page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..load import StudyData
from . import (
    ablation,
    configuration,
    cost,
    fronts,
    health,
    overview,
    paper_tables,
    parameters,
    search,
    training,
)
from .page import Page
from .view import ReportOptions, StudyView

Section = Callable[[StudyView, Page], None]

STUDY_SECTIONS: tuple[Section, ...] = (
    overview.summary,
    overview.runs_and_exclusions,
    health.health,
    paper_tables.paper_tables,
    fronts.pareto_front,  # multi-objective studies only (the next three too)
    fronts.reruns,
    fronts.hypervolume,
    fronts.objective_importances,
    ablation.final_seed_statistics,
    search.equal_budgets,
    parameters.effects,
    parameters.importances,
    search.optimisation_history,
    cost.cost,
    training.learning_curves,
    training.transition_curves,
    training.pseudo_images,
    configuration.run_configuration,
)
# A designed ablation's report: no search, no final re-runs; its cells and comparisons instead.
ABLATION_SECTIONS: tuple[Section, ...] = (
    ablation.summary,
    overview.runs_and_exclusions,
    health.health,
    ablation.statistics,
    cost.cost,
    configuration.run_configuration,
)


def study_page(
    data: StudyData,
    out: Path,
    figdir: Path,
    options: ReportOptions,
    standalone: bool = True,
    prefix: str = "",
) -> Page:
    """Every section of one study: its own report (``standalone``), or its part of a combined
    report (headings a level lower, file names with ``prefix`` and the study's name)."""
    page = Page(
        out,
        figdir,
        level=2 if standalone else 3,
        prefix=prefix,
        standalone=standalone,
        study_name=str(data.ref.name),
    )
    study = StudyView(data, options)
    if study.budget_note:
        page.notes.append(study.budget_note)
    for section in ABLATION_SECTIONS if ablation.is_ablation(study) else STUDY_SECTIONS:
        section(study, page)
    return page


__all__ = [
    "ABLATION_SECTIONS",
    "STUDY_SECTIONS",
    "Page",
    "ReportOptions",
    "Section",
    "StudyView",
    "study_page",
]
