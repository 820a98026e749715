"""Where zskt-ray keeps local state. Imports nothing heavy (no torch, no MLflow).

``$ZSKT_HOME`` (default ``~/.zskt``) holds the teacher store (``teachers/``), the default MLflow
database (``mlflow.db``, artifacts in ``mlartifacts/``) and per-study state (``studies/<name>/``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .names import MLFLOW_DB

SQLITE_PREFIX = "sqlite:///"
# storage.optuna: an Optuna journal file (``journal:///abs/optuna.journal``), e.g. on NFS
JOURNAL_SCHEME = "journal"


def zskt_home() -> Path:
    """Root of zskt-ray's local state: ``$ZSKT_HOME`` or ``~/.zskt`` (absolute)."""
    return Path(os.environ.get("ZSKT_HOME", "~/.zskt")).expanduser().resolve()


def default_teacher_path(dataset: str, arch: str, seed: int = 0) -> Path:
    """Where the teacher store keeps ``arch`` trained on ``dataset`` with ``seed``."""
    return zskt_home() / "teachers" / f"{dataset}_{arch}_seed{seed}.pt"


def scratch_root() -> Path:
    """This node's folder for the trials' temporary files: ``$ZSKT_SCRATCH``, else
    ``<temp dir>/zskt-<uid>`` (``$TMPDIR``, usually ``/tmp``; per user)."""
    declared = os.environ.get("ZSKT_SCRATCH")
    if declared:
        return Path(declared).expanduser().resolve()
    return Path(tempfile.gettempdir(), f"zskt-{os.getuid()}")


def study_scratch_dir(name: str, study_dir: str) -> Path:
    """The scratch folder of one study on this node: ``<scratch_root>/<name>-<hash>``.

    The hash of the study's storage folder (``study_dir``) keeps apart two studies of one name
    kept in different places, so that cleaning one never touches the other's files.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    return scratch_root() / f"{safe}-{hashlib.sha1(study_dir.encode()).hexdigest()[:8]}"


def local_tracking_uri() -> str:
    """The embedded MLflow store: ``sqlite:///<ZSKT_HOME>/mlflow.db`` (absolute)."""
    return sqlite_url(zskt_home() / MLFLOW_DB)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set (e.g. a cluster's MLflow server), else the local store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def default_studies_dir() -> Path:
    """Default root of per-study state (Tune experiments, the Optuna database)."""
    return zskt_home() / "studies"


def sqlite_url(path: str | Path) -> str:
    """``sqlite:///<path>`` (``sqlite:////abs/file.db`` for an absolute path)."""
    return f"{SQLITE_PREFIX}{path}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (MLflow or Optuna), else None.

    Parsed by SQLAlchemy's URL parser (``make_url``), the same one MLflow and Optuna use, so a
    driver prefix (``sqlite+pysqlite:///``) and query strings are understood; an in-memory
    database (``sqlite://``) has no file. SQLAlchemy is imported here only when a URL is parsed.
    """
    if not uri.lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def url_scheme(text: str) -> str | None:
    """The scheme of a URL written ``scheme://...`` (lower case), or None for a plain path.

    Parsed by :func:`urllib.parse.urlsplit`: ``s3://b/p`` -> ``s3``, ``sqlite+pysqlite:///x`` ->
    ``sqlite+pysqlite``, ``/abs/dir``, ``rel/dir`` and ``c:dir`` -> None (no ``//`` after the
    colon: a path with a colon, not a URL).
    """
    scheme = urlsplit(text).scheme
    return scheme.lower() if scheme and text[len(scheme) :].startswith("://") else None


def journal_url(path: str | Path) -> str:
    """``journal:///abs/file`` for an Optuna journal file (absolute, ``~`` expanded)."""
    return f"{JOURNAL_SCHEME}://{Path(path).expanduser().resolve()}"


def journal_path(url: str) -> Path | None:
    """The file of an Optuna journal URL ``journal:///abs/file``, else None.

    None too for a journal URL without an absolute file (``journal://rel.log`` names a host
    ``rel.log``; ``journal:///`` names no file).
    """
    if url_scheme(url) != JOURNAL_SCHEME:
        return None
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or not parts.path.strip("/"):
        return None
    return Path(parts.path)


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI (its nested trial runs under the study run)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
