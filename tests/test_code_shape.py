"""Shape rules of the study layer and the analysis package (with its subpackages), counted from
the source.

A function longer than :data:`MAX_FUNCTION_LINES` (signature, docstring and body) does several
jobs; the modules named in :data:`MAX_MODULE_LINES` are held under a size at which one reader can
keep them in mind.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("zskt_ray/study", "analysis")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = {"zskt_ray/study/spec.py": 400, "analysis/report.py": 400}


def _long_functions() -> dict[tuple[str, str], int]:
    out = {}
    for folder in CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        out[(rel, node.name)] = lines
    return out


def test_no_long_functions():
    long = _long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("rel,limit", sorted(MAX_MODULE_LINES.items()))
def test_module_size(rel, limit):
    n = len((ROOT / rel).read_text().splitlines())
    assert n <= limit, f"{rel} has {n} lines (limit {limit})"
