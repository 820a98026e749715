"""Blocks -> Markdown (figures as files beside it) and self-contained HTML (Jinja2 templates).

The HTML page is ``templates/report.html``: one macro per kind of block in
``templates/blocks.html``, the stylesheet ``templates/report.css`` and every image embedded as a
base64 data URI, so the file opens offline on its own. Autoescaping is on: every text of a block
is escaped where the template puts it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from . import tables
from .blocks import Block, Bullets, Heading, Img, ImgRow, Para, Pre, TableBlock


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader(__package__, "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = tables.fmt_value
    env.globals["rows"] = _rows
    return env


def _rows(df: pd.DataFrame) -> Iterator[tuple]:
    return df.itertuples(index=False, name=None)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: Sequence[Block], base: Path, title: str) -> str:
    """The page: images (paths relative to ``base``) embedded, a table of contents under the title."""
    contents = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    return (
        _environment()
        .get_template("report.html")
        .render(
            blocks=blocks,
            title=title,
            contents=contents,
            embed=lambda rel: _data_uri(base / rel),
        )
    )


def _md_escape(text: str) -> str:
    return text.replace("<", "&lt;")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            prefix = {"note": "> **Note.** ", "warn": "> **Excluded runs.** "}.get(b.kind, "")
            out.append(prefix + _md_escape(b.text) + "\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {_md_escape(i)}" for i in b.items) + "\n")
        elif isinstance(b, TableBlock):
            if b.caption:
                out.append(f"*{_md_escape(b.caption)}*\n")
            out.append(tables.to_markdown(b.df))
        elif isinstance(b, Img):
            out.append(f"![{b.caption}]({b.path})\n\n*{_md_escape(b.caption)}*\n")
        elif isinstance(b, ImgRow):
            out.append(" ".join(f"![{i.caption}]({i.path})" for i in b.images) + "\n")
            out.append(
                f"*{_md_escape(b.caption)} " + "; ".join(i.caption for i in b.images) + ".*\n"
            )
        elif isinstance(b, Pre):
            out.append(f"```yaml\n{b.text.rstrip()}\n```\n")
    return "\n".join(out)
