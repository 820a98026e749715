"""Analysis of stored studies: runs table (Parquet), paper-style tables, ablation reports.

``load`` reads a study's MLflow runs (and Optuna study) into one tidy table (``schema``),
``tables`` aggregates final seeded re-runs into the paper's Table 1 / Table 2 layouts,
``report`` renders everything as self-contained HTML and Markdown. It reads stored runs only:
nothing here trains or talks to Ray.
"""

from .load import AnalysisError, StudyData, StudyRef, load_runs, load_study, resolve_study
from .schema import SCHEMA, SCHEMA_VERSION, read_parquet, write_parquet

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "AnalysisError",
    "StudyData",
    "StudyRef",
    "load_runs",
    "load_study",
    "read_parquet",
    "resolve_study",
    "write_parquet",
]
