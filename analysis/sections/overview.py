"""The top of a report: what the study is, where its runs are, which runs count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from urllib.parse import urlsplit

import pandas as pd

from ...names import COMPLETED, PRUNED, TRIAL_KINDS
from ...paths import runs_page
from ..blocks import Block, Bullets, Heading, Para, TableBlock
from ..load import StudyData
from ..paper import METHOD_DOC
from .page import Page
from .view import StudyView

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


def generated() -> str:
    return f"Generated: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by zskt report"


def mlflow_link(d: StudyData) -> str:
    """The experiment's runs page (after ``mlflow ui`` for a local store)."""
    ids = d.runs["experiment_id"].dropna()
    exp_id = str(ids.iloc[0]) if len(ids) else "?"
    uri = d.ref.tracking_uri
    if urlsplit(uri).scheme in ("http", "https"):
        return runs_page(uri, exp_id)
    return f"`mlflow ui --backend-store-uri {uri}`, then {runs_page(LOCAL_UI, exp_id)}"


def identity(study: StudyView) -> list[str | None]:
    """What every study's summary starts with: its description, file, MLflow experiment and
    parent run (None for what the study lacks)."""
    d = study.data
    return [
        f"Description: {d.spec['description']}" if d.spec.get("description") else None,
        f"Study file: {d.ref.source}" if d.ref.source else None,
        f"MLflow experiment: {d.ref.experiment} (tracking URI {d.ref.tracking_uri})",
        f"Browse its runs in MLflow: {mlflow_link(d)}" if len(study.runs) else None,
        f"Parent run: {d.parent_run_id or 'none found'}",
    ]


def summary(study: StudyView, page: Page) -> None:
    """The title (of a study's own report) and what the study is."""
    d = study.data
    if page.standalone:
        page.add(Heading(f"Study report: {d.ref.name}", 1))
    rungs = ", ".join(str(r) for r in d.rungs) or "none"
    info = [
        *identity(study),
        (
            f"Search objectives: {', '.join(f'{m} ({mode})' for m, mode in d.objectives)}"
            if len(d.objectives) > 1
            else f"Search objective: {d.objective} ({d.mode})"
        ),
        f"Searched parameters: {', '.join(study.searched) or 'none'}",
        f"Search budget: {d.budget if d.budget is not None else '?'} iterations; "
        f"ASHA rungs: {rungs}",
        f"Method and published values: {METHOD_DOC}",
        generated(),
    ]
    page.add(Bullets([i for i in info if i is not None]))


def runs_and_exclusions(study: StudyView, page: Page) -> None:
    """Runs per kind and status; which runs no statistic uses, and why."""
    runs = study.runs
    page.section("Runs and exclusions")
    if runs.empty:
        page.add(Para("This study has no trial runs in MLflow yet.", "warn"))
        return
    counts = pd.crosstab(runs["kind"].astype(object), runs["status"].astype(object))
    counts = counts.reindex(index=[k for k in TRIAL_KINDS if k in counts.index])
    counts.insert(0, "kind", counts.index)
    counts["total"] = counts.drop(columns="kind").sum(axis=1)
    page.add(TableBlock(counts.reset_index(drop=True), "Runs per kind and status."))
    excluded = runs[runs["status"] != COMPLETED]
    page.add(_exclusions_text(len(runs), excluded))
    if len(excluded):
        reasons = (
            excluded.assign(reason=excluded["status_reason"].fillna("(no reason recorded)"))
            .groupby(["kind", "status", "reason"], sort=True)
            .size()
            .reset_index(name="runs")
        )
        items = [f"{r.runs} × {r.kind} {r.status}: {r.reason}" for r in reasons.itertuples()]
        page.add(Para("Why they were excluded:"), Bullets(items))


def _exclusions_text(n_runs: int, excluded: pd.DataFrame) -> Para:
    by_status = excluded["status"].value_counts()
    parts = [f"{int(n)} {s}" for s, n in by_status.items()]
    text = (
        f"{n_runs} runs in total; {len(excluded)} excluded from the accuracy and MTE "
        "tables and the final statistics" + (f" ({', '.join(parts)})." if parts else ".")
    )
    if by_status.get(PRUNED, 0):
        text += (
            " Pruned trials were stopped early by ASHA: the search plots and tables compare "
            "every trial at the same iteration (an ASHA rung, or the full budget), so the "
            "values of pruned trials count at the rungs they reached."
        )
    text += (
        " Test accuracy comes only from completed final seeded re-runs and ablation runs, never "
        "from search trials."
    )
    return Para(text, "warn" if len(excluded) else "")


def combined_summary(datas: Sequence[StudyData], names: Sequence[str]) -> list[Block]:
    """The title and the studies of a report over several studies."""
    items = [
        f"{n}: MLflow experiment {d.ref.experiment} at {d.ref.tracking_uri}; "
        f"{len(d.runs)} runs; searched {', '.join(d.searched) or 'nothing'}"
        for n, d in zip(names, datas, strict=True)
    ]
    items += [generated(), f"Method and published values: {METHOD_DOC}"]
    return [
        Heading(f"Study report: {len(datas)} studies ({', '.join(names)})", 1),
        Bullets(items),
    ]
