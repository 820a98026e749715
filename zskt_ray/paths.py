"""Where zskt-ray keeps local state. Imports nothing heavy (no torch, no MLflow).

``$ZSKT_HOME`` (default ``~/.zskt``) holds the teacher store (``teachers/``), the default MLflow
database (``mlflow.db``, artifacts in ``mlartifacts/``) and per-study state (``studies/<name>/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .names import MLFLOW_DB


def zskt_home() -> Path:
    """Root of zskt-ray's local state: ``$ZSKT_HOME`` or ``~/.zskt`` (absolute)."""
    return Path(os.environ.get("ZSKT_HOME", "~/.zskt")).expanduser().resolve()


def default_teacher_path(dataset: str, arch: str, seed: int = 0) -> Path:
    """Where the teacher store keeps ``arch`` trained on ``dataset`` with ``seed``."""
    return zskt_home() / "teachers" / f"{dataset}_{arch}_seed{seed}.pt"


def local_tracking_uri() -> str:
    """The embedded MLflow store: ``sqlite:///<ZSKT_HOME>/mlflow.db`` (absolute)."""
    return f"sqlite:///{zskt_home() / MLFLOW_DB}"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set (e.g. a cluster's MLflow server), else the local store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def default_studies_dir() -> Path:
    """Default root of per-study state (Tune experiments, the Optuna database)."""
    return zskt_home() / "studies"
