"""What the sections of one study write: blocks, figure files, notes, table files."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tables
from ..blocks import Block, Heading, Img, Para


@dataclass
class Page:
    """One study's part of a report.

    ``standalone``: the study's own report (title, paper tables); else one study of a combined
    report, whose sections start at ``level`` and whose files get ``prefix`` (several studies share
    ``figures/`` and ``tables/``).
    """

    out: Path  # the report's output directory (image paths are relative to it)
    figdir: Path
    level: int = 2
    prefix: str = ""
    standalone: bool = True
    study_name: str = ""
    blocks: list[Block] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # every image file of the page
    notes: list[str] = field(default_factory=list)  # printed by `zskt report`
    tables: list[tables.Table] = field(default_factory=list)  # written into tables/

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def section(self, title: str) -> None:
        """A section heading."""
        self.add(Heading(title, self.level))

    def subsection(self, title: str) -> None:
        self.add(Heading(title, self.level + 1))

    def figure(self, fig: Any, name: str, caption: str) -> None:
        """Save a matplotlib figure into figures/ and show it."""
        path = self.figdir / f"{self.prefix}{name}.png"
        fig.savefig(path, dpi=100)
        self.figures.append(path)
        self.add(Img(str(path.relative_to(self.out)), caption))

    def image(self, src: Path, name: str, caption: str) -> Img:
        """Copy an image file (an artifact) into figures/; the caller places the block."""
        path = self.figdir / f"{self.prefix}{name}.png"
        shutil.copyfile(src, path)
        self.figures.append(path)
        return Img(str(path.relative_to(self.out)), caption)

    def missing(self, what: str, why: str) -> None:
        """Say in the page, and on the console, why something is not shown."""
        self.notes.append(f"{what}: {why}")
        self.add(Para(f"No {what}: {why}.", "note"))

    def table_file(self, name: str, caption: str, numeric: Any, display: Any) -> None:
        """A table written into tables/ (named after the study in a combined report)."""
        full = name if self.standalone else f"{name}_{self.study_name}"
        self.tables.append(tables.Table(full, caption, numeric, display))
