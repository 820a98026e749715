"""Every document the README, the docs, the code and the study files refer to is in the repository.

A user's clone has nothing outside it: a reference to ``../shared/...`` or to a file that does not
exist (``docs/method.md``, ``benchmarks/x.py``, ``SOMETHING.md``) is a dangling reference.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["README.md", "cluster.yaml", "pyproject.toml", ".ci/run"]
TREES = [
    ("docs", "*.md"),
    ("zskt_ray", "*.py"),
    ("analysis", "*.py"),
    ("studies", "*.yaml"),
    ("benchmarks", "*"),
]
# paths inside the repository, e.g. docs/method.md, benchmarks/report_scale.py, studies/digits.yaml
REPO_PATH = re.compile(
    r"(?<![\w/.$~-])((?:docs|benchmarks|studies|analysis|zskt_ray|tests|\.ci)/[\w.*/-]*[\w*])"
)
MD_FILE = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")  # a bare document name, e.g. DEVELOPERS.md
GENERATED = {"report.md"}  # written by `zskt report`, not a document of the repository
OUTSIDE = re.compile(r"\.\./shared|/work/shared")


def _files() -> list[Path]:
    out = [ROOT / s for s in SOURCES if (ROOT / s).is_file()]
    for top, pattern in TREES:
        out += sorted(p for p in (ROOT / top).rglob(pattern) if p.is_file() and p.suffix != ".png")
    return out


def _exists(ref: str) -> bool:
    if "*" in ref:
        return any(ROOT.glob(ref))
    return (ROOT / ref).exists()


def dangling(files: list[Path]) -> list[str]:
    """``file: reference`` for each reference to a repository file that does not exist."""
    md_names = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    bad = []
    for f in files:
        text = f.read_text(errors="replace")
        rel = f.relative_to(ROOT)
        for m in OUTSIDE.finditer(text):
            bad.append(f"{rel}: {m.group(0)} (outside the repository)")
        for m in REPO_PATH.finditer(text):
            ref = m.group(1).rstrip(".")
            if re.search(r"/[A-Z][A-Z_]+(\.|/|$)|<|\{", ref):  # a placeholder: studies/NAME.yaml
                continue
            if not _exists(ref):
                bad.append(f"{rel}: {ref}")
        for m in MD_FILE.finditer(text):
            if m.group(1) not in md_names | GENERATED:
                bad.append(f"{rel}: {m.group(1)}")
    return bad


def test_no_reference_dangles():
    files = _files()
    assert len(files) > 20
    assert dangling(files) == []


def test_the_check_catches_a_dangling_reference(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "See docs/nowhere.md, ../shared/docs/zskt-method.md and NOTES.md; docs/method.md is fine."
    )
    moved = ROOT / "docs" / "_probe_reference_test.md"
    moved.write_text(doc.read_text())
    try:
        bad = dangling([moved])
    finally:
        moved.unlink()
    assert any("docs/nowhere.md" in b for b in bad)
    assert any("../shared" in b for b in bad)
    assert any(b.endswith(": NOTES.md") for b in bad)
    assert not any("docs/method.md" in b for b in bad)
