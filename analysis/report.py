"""``zskt report``: a study's runs -> runs.parquet, tables, report.html (self-contained) and report.md.

The report is built once as a list of blocks (:mod:`analysis.blocks`) by the sections of
:mod:`analysis.sections` and rendered twice (:mod:`analysis.render`): to Markdown (figures as PNG
files beside it, in ``figures/``) and to HTML from Jinja2 templates (the same PNGs embedded as
base64, so the file opens offline on its own).

Output directory layout::

    runs.parquet               the runs table (analysis.schema, version in the file metadata)
    tables/<name>.{csv,md,tex} accuracy_per_config, table1, table2, search_trials, effects, ...
    figures/*.png              every figure of the report
    report.md                  Markdown, images from figures/
    report.html                self-contained HTML
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..names import COMPLETED
from . import fronts, rungs, schema, tables
from .blocks import Bullets, Heading, Img, ImgRow, Para, Pre, TableBlock
from .load import StudyData, StudyRef, load_studies
from .render import render_html, render_markdown
from .sections import Page, ReportOptions, study_page
from .sections.overview import combined_summary
from .sections.paper_tables import table_blocks


@dataclass
class ReportResult:
    study: str
    out_dir: Path
    html: Path
    markdown: Path
    parquet: Path
    tables: list[Path]
    figures: list[Path]  # every image of the report (plots and pseudo-image grids)
    n_runs: int
    n_excluded: int
    excluded: dict[str, int] = field(default_factory=dict)  # status -> count
    notes: list[str] = field(default_factory=list)


def make_report(
    refs: StudyRef | Sequence[StudyRef],
    out_dir: str | Path,
    top_n: int = 3,
    with_optuna: bool = True,
    min_trials: int = rungs.DEFAULT_MIN_TRIALS,
    rung: int | None = None,
    importance: str = "fanova",
    progress: bool | None = None,
) -> ReportResult:
    """Load one study or several and write their report into ``out_dir``."""
    refs = [refs] if isinstance(refs, StudyRef) else list(refs)
    datas = load_studies(refs, with_optuna=with_optuna, progress=progress)
    return build_report(
        datas, out_dir, top_n=top_n, min_trials=min_trials, rung=rung, importance=importance
    )


def build_report(
    data: StudyData | Sequence[StudyData],
    out_dir: str | Path,
    top_n: int = 3,
    min_trials: int = rungs.DEFAULT_MIN_TRIALS,
    rung: int | None = None,
    importance: str = "fanova",
) -> ReportResult:
    """Write runs.parquet, tables/, figures/, report.md and report.html for loaded studies.

    One study: its report. Several: one Table 1 and one Table 2 over all their pairs and data
    sets (the paper's order), one accuracy table, then each study's ablation sections.
    """
    datas = [data] if isinstance(data, StudyData) else list(data)
    if not datas:
        raise ValueError("no study to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    if figdir.exists():
        shutil.rmtree(figdir)
    figdir.mkdir()
    names = [d.ref.name or d.ref.experiment for d in datas]
    runs = (
        pd.concat([d.runs for d in datas], ignore_index=True) if len(datas) > 1 else datas[0].runs
    )
    objective, mode = datas[0].objective, datas[0].mode
    parquet = schema.write_parquet(runs, out / "runs.parquet", objective, mode, ",".join(names))
    options = ReportOptions(top_n, min_trials, rung, importance)
    if len(datas) == 1:
        page = study_page(datas[0], out, figdir, options)
        title = f"zskt study report: {names[0]}"
    else:
        page = _combined_page(datas, names, runs, out, figdir, options)
        title = f"zskt report: {', '.join(names)}"
    table_paths = [p for t in page.tables for p in t.write(out / "tables")]
    md = out / "report.md"
    md.write_text(render_markdown(page.blocks))
    html = out / "report.html"
    html.write_text(render_html(page.blocks, out, title=title))
    excluded = runs[runs["status"] != COMPLETED]
    return ReportResult(
        study=",".join(names),
        out_dir=out,
        html=html,
        markdown=md,
        parquet=parquet,
        tables=table_paths,
        figures=page.figures,
        n_runs=len(runs),
        n_excluded=len(excluded),
        excluded={str(k): int(v) for k, v in excluded["status"].value_counts().items()},
        notes=page.notes,
    )


def _combined_page(
    datas: Sequence[StudyData],
    names: Sequence[str],
    runs: pd.DataFrame,
    out: Path,
    figdir: Path,
    options: ReportOptions,
) -> Page:
    """Several studies: the paper's tables over all of them, then each study's sections."""
    page = Page(out, figdir, level=1)
    searched = list(dict.fromkeys(p for d in datas for p in d.searched))
    prefer, rule = fronts.tables_rule(datas)  # the multi-objective studies' declared rules
    page.tables = tables.build_tables(
        runs, searched, datas[0].objective, datas[0].mode, prefer, rule
    )
    page.add(*combined_summary(datas, names))
    if len({d.mode for d in datas}) > 1 or len({d.objective for d in datas}) > 1:
        page.notes.append(
            "the studies optimise different objectives; each pair's configuration is chosen on "
            "its own study's"
        )
    page.add(*table_blocks(page.tables, level=2))
    for i, (name, d) in enumerate(zip(names, datas, strict=True)):
        part = study_page(d, out, figdir, options, standalone=False, prefix=f"s{i}_")
        page.add(Heading(f"Study {name}", 2), *part.blocks)
        page.figures += part.figures
        page.notes += [f"{name}: {n}" for n in part.notes]
        page.tables += part.tables
    return page


# The block types and renderers, importable from here as before.
__all__ = [
    "Bullets",
    "Heading",
    "Img",
    "ImgRow",
    "Para",
    "Pre",
    "ReportResult",
    "TableBlock",
    "build_report",
    "make_report",
    "render_html",
    "render_markdown",
]
