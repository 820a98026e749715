"""The objectives of a search: one metric and its direction, or several (a multi-objective study).

A study file names either ``search.metric`` (and ``mode``), or ``search.objectives``: two or more
``{metric, mode}``. This module holds the rules that relate those keys to the rest of the file
(:func:`resolve_search`, :func:`table_objective`, called by :mod:`.resolve`), what a resolved
study's objectives are (:func:`of`), and what a trial's reports must carry for them
(:func:`with_placeholders`). The rules on one key alone (a known metric, never a test metric, at
least two objectives, none twice) are the schema's (:mod:`.schema`).

Rules across keys, each refused in one line before anything starts:

- ``search.objectives`` and ``search.metric``/``mode`` are not both given;
- an objective's mode, when given, is its metric's direction (``val_mte`` is minimised);
- ASHA judges trials on one metric: a multi-objective study names it in
  ``search.scheduler.metric``, one of its objectives that is reported at every evaluation
  (``val_mte`` and the cost are measured only at the end of a trial); a single-objective
  study's scheduler judges ``search.metric``, and ``type: none`` takes no metric;
- ``val_mte`` as an objective needs ``evaluation.mte_search.enabled``;
- ``final.table_objective`` is one of the objectives (multi-objective studies only).

No Ray, Optuna or MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..names import END_OBJECTIVES, KIND_SEARCH, MINIMISED, VAL_ACC, VAL_MTE
from .errors import Problems
from .schema import ObjectiveSection, SearchSection, StudyFile

if TYPE_CHECKING:
    from .spec import StudySpec


class Objective(NamedTuple):
    """One objective of a search: the metric a trial reports, and whether more or less is better."""

    metric: str
    mode: str  # "max" or "min"


def natural_mode(metric: str) -> str:
    """The direction in which ``metric`` is better."""
    return "min" if metric in MINIMISED else "max"


def of(search: SearchSection) -> tuple[Objective, ...]:
    """The objectives of a resolved search section, in the file's order (one for a
    single-objective study)."""
    if search.objectives:
        return tuple(
            Objective(o.metric, o.mode or natural_mode(o.metric)) for o in search.objectives
        )
    metric = search.metric or VAL_ACC
    return (Objective(metric, search.mode or natural_mode(metric)),)


def _mode_problem(key: str, metric: str, mode: str | None, problems: Problems) -> None:
    natural = natural_mode(metric)
    if mode is not None and mode != natural:
        problems.add(
            key,
            f"{metric} is {'minimised' if natural == 'min' else 'maximised'}: use mode: "
            f"{natural} (or leave mode out)",
        )


def resolve_search(study: StudyFile, problems: Problems) -> SearchSection:
    """The search section with its objectives' directions filled in, and the rules across keys
    checked (see the module doc)."""
    search = study.search
    if not search.objectives:
        metric = search.metric or VAL_ACC
        _mode_problem("search.mode", metric, search.mode, problems)
        _single_scheduler(search, metric, problems)
        return search.model_copy(update=dict(metric=metric, mode=natural_mode(metric)))
    given = [k for k in ("metric", "mode") if getattr(search, k) is not None]
    if given:
        problems.add(
            "search.objectives",
            f"give either search.objectives or search.{'/'.join(given)}, not both",
        )
    for i, o in enumerate(search.objectives):
        _mode_problem(f"search.objectives[{i}].mode", o.metric, o.mode, problems)
    objectives = [
        ObjectiveSection(metric=o.metric, mode=natural_mode(o.metric)) for o in search.objectives
    ]
    metrics = [o.metric for o in objectives]
    _multi_scheduler(search, metrics, problems)
    if VAL_MTE in metrics and not study.evaluation.mte_search.enabled:
        problems.add(
            "evaluation.mte_search.enabled",
            f"false, but {VAL_MTE} is an objective of the search (search.objectives)",
        )
    return search.model_copy(update=dict(metric=None, mode=None, objectives=objectives))


def _single_scheduler(search: SearchSection, metric: str, problems: Problems) -> None:
    chosen = search.scheduler.metric
    if chosen is None:
        return
    if search.scheduler.type == "none":
        problems.add(
            "search.scheduler.metric", "scheduler type none judges no metric; leave it out"
        )
    elif chosen != metric:
        problems.add(
            "search.scheduler.metric",
            f"ASHA judges the study's objective ({metric}) in a single-objective study; leave "
            "it out, or list both in search.objectives",
        )


def _multi_scheduler(search: SearchSection, metrics: Sequence[str], problems: Problems) -> None:
    chosen, kind = search.scheduler.metric, search.scheduler.type
    every = [m for m in metrics if m not in END_OBJECTIVES]
    if kind == "none":
        if chosen is not None:
            problems.add(
                "search.scheduler.metric", "scheduler type none judges no metric; leave it out"
            )
        return
    hint = (
        f"name one of {', '.join(every)}"
        if every
        else "no objective is reported at every evaluation: use scheduler type none"
    )
    if chosen is None:
        problems.add(
            "search.scheduler.metric",
            f"missing: ASHA stops trials on one metric and the search has {len(metrics)} "
            f"objectives; {hint}",
        )
    elif chosen not in metrics:
        problems.add(
            "search.scheduler.metric",
            f"{chosen!r} is not one of search.objectives ({', '.join(metrics)}); {hint}",
        )
    elif chosen in END_OBJECTIVES:
        problems.add(
            "search.scheduler.metric",
            f"{chosen} is measured only at the end of a trial, ASHA needs a metric reported at "
            f"every evaluation; {hint}",
        )


def table_objective(study: StudyFile, search: SearchSection, problems: Problems) -> str | None:
    """``final.table_objective`` resolved: the first objective when left out (multi-objective
    studies); None in a single-objective study, whose tables keep their own rule."""
    chosen = study.final.table_objective
    if not search.objectives:
        if chosen is not None:
            problems.add(
                "final.table_objective",
                "only for multi-objective studies (search.objectives); a single-objective "
                "study's tables take the configuration best in search.metric",
            )
        return None
    metrics = [o.metric for o in search.objectives]
    if chosen is None:
        return metrics[0]
    if chosen not in metrics:
        problems.add(
            "final.table_objective",
            f"{chosen!r} is not one of search.objectives ({', '.join(metrics)})",
        )
    return chosen


def with_placeholders(result: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """``result`` with NaN for each objective in ``metrics`` it does not hold.

    Ray Tune requires every report of a trial to hold every metric its searcher was given; a
    multi-objective study's end-of-trial objectives (``val_mte``, the cost) exist only in the last
    report. NaN says "not measured here": the searcher reads values only from a completed trial's
    last report, and the values logged to MLflow are the measured ones.
    """
    missing = [m for m in metrics if m not in result]
    return {**result, **dict.fromkeys(missing, math.nan)} if missing else dict(result)


def search_objectives(spec: StudySpec, kind: str) -> tuple[str, ...]:
    """The objectives every report of a trial of ``kind`` must hold (:func:`with_placeholders`):
    a multi-objective study's, for its search trials; none otherwise."""
    if kind != KIND_SEARCH or not spec.multi_objective:
        return ()
    return tuple(o.metric for o in spec.objectives)


def chosen_line(spec: StudySpec, chosen: Mapping[str, Any]) -> str:
    """How the runner names a configuration chosen for the final re-runs."""
    if "values" not in chosen:
        return f"best #{chosen['rank']}: {spec.metric}={chosen['value']:.2f}"
    values = ", ".join(f"{m}={v:.4g}" for m, v in chosen["values"].items())
    return f"front #{chosen['rank']} ({chosen['chosen']}): {values}"
