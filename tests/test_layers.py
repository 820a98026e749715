"""The layering the README promises, checked on the installed package.

``lint-imports`` (run by CI, contracts in pyproject.toml) checks the ``zskt_ray`` tree statically.
The analysis package is mapped from the repository's top-level ``analysis/`` folder, which
import-linter's graph does not see, so these tests check it in fresh interpreters, and check that
every method-layer module is named in the method-layer contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("ray", "optuna", "mlflow", "pydantic")


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
