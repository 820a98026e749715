"""One vocabulary: run kinds, trial statuses and MLflow tags are written in zskt_ray/names.py only.

The test reads the source of ``zskt_ray/`` and ``analysis/`` (``ast``) and fails on a string
constant, other than a docstring, that equals one of those names (``"search"``, ``"completed"``,
``"zskt.status"``, ...) or starts with the summary tags' prefix: such a literal silently breaks when
the name changes in names.py. :data:`ALLOWED` lists the few places where the same word means
something else, with how often it occurs there; the counts must match exactly, so that an entry
goes once its literal is gone.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from zskt_ray import names

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("zskt_ray", "analysis")
STATUSES = ("COMPLETED", "PRUNED", "FAILED", "INTERRUPTED", "RUNNING")
VOCABULARY = {
    value: key
    for key, value in vars(names).items()
    if isinstance(value, str) and (key.startswith(("KIND_", "TAG_")) or key in STATUSES)
}

# (file, word) -> (occurrences, why the word is not the name of names.py there)
ALLOWED: dict[tuple[str, str], tuple[int, str]] = {
    ("zskt_ray/cli.py", "kdat"): (2, "the `zskt kdat` command and its default output folder"),
    ("zskt_ray/study/cli.py", "study"): (1, "the `zskt study` command group"),
    ("zskt_ray/study/spec.py", "study"): (1, "the error label of a study given as a mapping"),
    ("zskt_ray/study/spec.py", "search"): (2, "the study file's search section (fingerprint)"),
    ("analysis/cli.py", "study"): (1, "the `zskt report STUDY` argument"),
    ("analysis/load.py", "study"): (1, "the runs table's column naming the study"),
    ("analysis/load.py", "search"): (2, "study.yaml's search section"),
    ("analysis/sections/view.py", "search"): (1, "study.yaml's search section"),
    ("analysis/fronts.py", "final"): (1, "study.yaml's final section (table_objective)"),
    ("analysis/schema.py", "study"): (1, "the runs table's column naming the study"),
    ("analysis/paper.py", "kdat"): (2, "the paper's KD+AT column in its published table"),
    ("analysis/tables.py", "kdat"): (1, "the paper's KD+AT column in its published table"),
}


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _is_vocabulary(text: str) -> bool:
    return text in VOCABULARY or text.startswith(names.TAG_SUMMARY_PREFIX)


def vocabulary_literals(root: Path = ROOT) -> Counter:
    """(file, literal) -> occurrences, over every checked module but names.py."""
    found: Counter = Counter()
    for folder in CHECKED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel == "zskt_ray/names.py":
                continue
            tree = ast.parse(path.read_text())
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docs
                    and _is_vocabulary(node.value)
                ):
                    found[(rel, node.value)] += 1
    return found


def test_vocabulary_is_written_in_names_only():
    found = vocabulary_literals()
    expected = Counter({k: n for k, (n, _) in ALLOWED.items()})
    extra = {k: n for k, n in found.items() if n > expected.get(k, 0)}
    assert not extra, f"use zskt_ray.names instead of these literals (file, word): {extra}"
    stale = {k: n for k, n in expected.items() if found.get(k, 0) < n}
    assert not stale, f"fewer occurrences than listed: update ALLOWED: {stale}"


def test_the_check_finds_literals(tmp_path):
    """The test can fail: a kind, a status and tags written as literals are found; docstrings,
    names.py and other words are not."""
    (tmp_path / "zskt_ray").mkdir()
    (tmp_path / "zskt_ray" / "probe.py").write_text(
        '"""Docstring: search final kdat."""\n'
        'KIND = "search"\nSTATUS = "completed"\nTAG = "zskt.status"\nSUMMARY = "zskt.summary.x"\n'
        'OTHER = ["searching", "zskt.summary.", f"final-{1}"]\n'
    )
    (tmp_path / "zskt_ray" / "names.py").write_text('KIND_SEARCH = "search"\n')
    found = vocabulary_literals(tmp_path)
    assert found == Counter(
        {
            ("zskt_ray/probe.py", "search"): 1,
            ("zskt_ray/probe.py", "completed"): 1,
            ("zskt_ray/probe.py", "zskt.status"): 1,
            ("zskt_ray/probe.py", "zskt.summary.x"): 1,
            ("zskt_ray/probe.py", "zskt.summary."): 1,
        }
    )
