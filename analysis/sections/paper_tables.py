"""The paper's tables: accuracy per configuration, Table 1 and Table 2."""

from __future__ import annotations

from collections.abc import Sequence

from .. import tables
from ..blocks import Block, Heading, Para, TableBlock
from .page import Page
from .view import StudyView

TITLES = {
    "accuracy_per_config": "Accuracy per configuration (final re-runs)",
    "table1": "Table 1: teacher, zero-shot and KD+AT accuracy",
    "table2": "Table 2: Mean Transition Error",
}
EMPTY = {
    "accuracy_per_config": "No completed final re-runs: test accuracy is reported only from "
    "final seeded re-runs.",
    "table1": "No completed final or KD+AT runs.",
    "table2": "No completed final or KD+AT runs.",
}


def table_blocks(table_list: Sequence[tables.Table], level: int) -> list[Block]:
    """The section "Tables": one subsection per paper table, or why it has no rows."""
    out: list[Block] = [Heading("Tables", level)]
    for t in table_list:
        if t.name not in TITLES:
            continue
        out.append(Heading(TITLES[t.name], level + 1))
        if t.display.empty:
            out.append(Para(EMPTY.get(t.name, "No rows."), "note"))
        else:
            out.append(TableBlock(t.display, t.caption))
    return out


def paper_tables(study: StudyView, page: Page) -> None:
    """A study's own report shows its tables; a combined one shows them once over all studies."""
    if not page.standalone:
        return
    page.add(*table_blocks(study.paper_tables, page.level))
    page.tables.extend(study.paper_tables)
