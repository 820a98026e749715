"""The layering the README promises, checked on the installed package.

``lint-imports`` (run by CI, contracts in pyproject.toml) checks the ``zskt_ray`` tree statically.
The analysis package is mapped from the repository's top-level ``analysis/`` folder, which
import-linter's graph does not see, so these tests check it: statically (every import statement of
analysis/, also inside functions, followed through grimp's graph of ``zskt_ray``, the graph
import-linter builds) and in fresh interpreters. They also check that every method-layer module is
named in the method-layer contract.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("ray", "optuna", "mlflow", "pydantic")
# What analysis never imports, directly or through other modules: the Ray Tune adapter and
# anything that imports Ray (the report reads stored runs; it trains nothing).
ANALYSIS_FORBIDDEN = ("ray", "zskt_ray.study.trainable")


def _imported_after(code: str, cwd: Path | None = None) -> set[str]:
    """Module names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_method_module_is_under_the_method_contract():
    method = next(c for c in _contracts() if c["name"].startswith("The method layer"))
    modules = {
        f"zskt_ray.{p.stem}"
        for p in (ROOT / "zskt_ray").glob("*.py")
        if p.stem not in ("__init__", "cli")
    }
    assert modules == set(method["source_modules"]), modules ^ set(method["source_modules"])
    assert set(ORCHESTRATION) <= set(method["forbidden_modules"])


def test_every_study_module_is_under_the_study_contracts():
    """A new study module is named in the contract that keeps MLflow in tracking.py and Optuna in
    space.py (and, when it reads study files, in the one that keeps them free of Ray)."""
    one = next(c for c in _contracts() if c["name"].startswith("One module of the study layer"))
    files = next(c for c in _contracts() if c["name"].startswith("Study files are checked"))
    modules = {
        f"zskt_ray.study.{p.stem}"
        for p in (ROOT / "zskt_ray" / "study").glob("*.py")
        if p.stem != "__init__"
    }
    assert modules - set(one["source_modules"]) == {
        "zskt_ray.study.space",
        "zskt_ray.study.tracking",
    }
    assert set(files["source_modules"]) <= set(one["source_modules"])
    assert {"ray", "optuna", "mlflow"} <= set(files["forbidden_modules"])


def test_method_layer_imports_no_orchestration():
    modules = ", ".join(
        f"zskt_ray.{p.stem}" for p in (ROOT / "zskt_ray").glob("*.py") if p.stem != "cli"
    )
    loaded = _imported_after(f"import {modules}")
    top = {name.split(".")[0] for name in loaded}
    assert not top & set(ORCHESTRATION), top & set(ORCHESTRATION)
    assert not any(name.startswith(("zskt_ray.study", "zskt_ray.analysis")) for name in loaded)


def test_analysis_reads_without_the_ray_adapter():
    modules = ", ".join(
        f"zskt_ray.analysis.{p.stem}"
        for p in (ROOT / "analysis").glob("*.py")
        if p.stem != "__main__"
    )
    loaded = _imported_after(f"import {modules}")
    assert "ray" not in {name.split(".")[0] for name in loaded}
    adapter = ("zskt_ray.study.trainable", "zskt_ray.study.runner", "zskt_ray.study.tracking")
    assert not set(adapter) & loaded


def test_no_generic_top_level_analysis_package(tmp_path):
    """Installed, the report layer is zskt_ray.analysis; a folder named analysis/ in a user's
    project cannot shadow it, and no package named `analysis` is installed."""
    missing = subprocess.run(
        [sys.executable, "-c", "import analysis"], capture_output=True, text=True, cwd=tmp_path
    )
    assert missing.returncode != 0 and "No module named 'analysis'" in missing.stderr
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("raise ImportError('shadow')\n")
    assert "zskt_ray.analysis.cli" in _imported_after("import zskt_ray.cli", cwd=tmp_path)


# ------------------------------------------------------------------ analysis, statically


@cache
def _zskt_graph() -> grimp.ImportGraph:
    return grimp.build_graph("zskt_ray", include_external_packages=True, cache_dir=None)


def _module_name(path: Path, folder: Path, package: str) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imports(path: Path, module: str) -> set[str]:
    """Every module an analysis file imports, absolute, also in functions (``from X import y``:
    X, and X.y where that is a module)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_package else 0)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _forbidden_imports(folder: Path, package: str = "zskt_ray.analysis") -> list[str]:
    """Each import chain from an analysis module to a module of ANALYSIS_FORBIDDEN."""
    graph = _zskt_graph()
    known = graph.modules
    found = []
    for path in sorted(folder.rglob("*.py")):
        module = _module_name(path, folder, package)
        for imported in sorted(_imports(path, module)):
            if imported.startswith(package):
                continue  # the other analysis modules are checked themselves
            top = imported.split(".")[0]
            if top != "zskt_ray":
                if top in ANALYSIS_FORBIDDEN:
                    found.append(f"{module} -> {imported}")
                continue
            if imported not in known:
                continue  # a name imported from a module, not a module
            for bad in ANALYSIS_FORBIDDEN:
                if imported == bad:
                    found.append(f"{module} -> {imported}")
                elif bad in known and graph.chain_exists(imported, bad):
                    chain = graph.find_shortest_chain(imported, bad)
                    found.append(f"{module} -> {' -> '.join(chain)}")
    return found


def test_analysis_imports_neither_ray_nor_the_trainable():
    """Static, so an import inside a function (run only by some command) counts too."""
    found = _forbidden_imports(ROOT / "analysis")
    assert not found, "analysis imports the Ray adapter or Ray:\n" + "\n".join(found)


def test_the_static_check_sees_imports_inside_functions(tmp_path):
    """The check above fails on a copy of analysis/ that imports the trainable (inside a
    function), or a module that imports Ray, or Ray itself."""
    copy = tmp_path / "analysis"
    shutil.copytree(ROOT / "analysis", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "sections" / "extra.py").write_text(
        "def f():\n    from ...study import trainable\n    from ...study.runner import run_study\n"
    )
    (copy / "extra.py").write_text("def g():\n    import ray.tune\n")
    found = _forbidden_imports(copy)
    assert "zskt_ray.analysis.sections.extra -> zskt_ray.study.trainable" in found, found
    assert any(
        f.startswith("zskt_ray.analysis.sections.extra -> zskt_ray.study.runner")
        and f.endswith("-> ray")
        for f in found
    ), found
    assert "zskt_ray.analysis.extra -> ray.tune" in found, found
    assert len(found) >= 3


def test_installed_package_holds_every_analysis_module_and_template():
    """A built (non-editable) package holds every subpackage of analysis/ and the report's
    templates and stylesheet, which it reads at run time."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {
        _module_name(p, ROOT / "analysis", "zskt_ray.analysis")
        for p in (ROOT / "analysis").rglob("__init__.py")
    }
    assert subpackages <= set(tool["packages"]), subpackages - set(tool["packages"])
    globs = tool["package-data"]["zskt_ray.analysis"]
    templates = [p.relative_to(ROOT / "analysis") for p in (ROOT / "analysis/templates").iterdir()]
    assert templates, "analysis/templates is empty"
    unshipped = [str(t) for t in templates if not any(t.match(g) for g in globs)]
    assert not unshipped, f"not package data in pyproject.toml: {unshipped}"
