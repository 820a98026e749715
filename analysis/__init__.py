"""Analysis of stored studies: runs table (Parquet), paper-style tables, ablation reports.

``load`` reads a study's MLflow runs (and Optuna study) into one tidy table (``schema``),
``rungs`` compares search trials at equal budgets (ASHA rungs: values, importances, effects),
``tables`` aggregates final seeded re-runs into the paper's Table 1 / Table 2 layouts,
``sections`` writes a report's sections as blocks (``blocks``), ``render`` turns them into
self-contained HTML (Jinja2 templates in ``templates/``) and Markdown, and ``report`` writes a
report's files. It reads stored runs only: nothing here trains or talks to Ray.
"""

from importlib import import_module
from typing import Any

# Imported lazily (PEP 562): the ``zskt`` CLI builds its parser from ``analysis.cli`` and should
# not pay for MLflow and pandas until ``zskt report`` actually runs.
_EXPORTS = {
    "AnalysisError": "load",
    "StudyData": "load",
    "StudyRef": "load",
    "load_runs": "load",
    "load_study": "load",
    "load_studies": "load",
    "bulk_histories": "load",
    "resolve_study": "load",
    "SCHEMA": "schema",
    "SCHEMA_VERSION": "schema",
    "read_parquet": "schema",
    "write_parquet": "schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
