"""A report as a list of blocks: headings, text, tables, figures, preformatted text.

The sections of a report only build blocks; :mod:`analysis.render` turns the same list into
Markdown and into HTML. ``tag`` names the template macro that draws a block in HTML
(``templates/blocks.html``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd


@dataclass
class Heading:
    text: str
    level: int = 2
    tag: ClassVar[str] = "heading"

    @property
    def anchor(self) -> str:
        """The heading's id in the HTML page (the table of contents links to it)."""
        return re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-")


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "note" | "warn"
    tag: ClassVar[str] = "para"


@dataclass
class Bullets:
    items: list[str]
    tag: ClassVar[str] = "bullets"


@dataclass
class TableBlock:
    df: pd.DataFrame
    caption: str = ""
    tag: ClassVar[str] = "table"


@dataclass
class Img:
    path: str  # relative to the output directory
    caption: str
    tag: ClassVar[str] = "image"


@dataclass
class ImgRow:
    images: list[Img]
    caption: str = ""
    tag: ClassVar[str] = "image_row"


@dataclass
class Pre:
    text: str
    summary: str = ""  # HTML: collapsed under this summary when given
    tag: ClassVar[str] = "pre"


Block = Heading | Para | Bullets | TableBlock | Img | ImgRow | Pre
