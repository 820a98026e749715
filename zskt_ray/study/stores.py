"""Where a study's state lives: Tune storage, the Optuna storage and the MLflow store.

Each value comes from the study file, else the environment (``$ZSKT_STORAGE``,
``$ZSKT_STORAGE_SHARED``, ``$MLFLOW_TRACKING_URI``), else ``$ZSKT_HOME``; URLs are parsed by
SQLAlchemy's ``make_url`` (databases) and :func:`urllib.parse.urlsplit` (the rest), local paths
made absolute. The same functions serve a run (:mod:`.resolve`, which reports each problem) and
:func:`locations` (which finds the stores of a file that may not pass today's checks, so that its
stored runs can still be read).

This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..names import OPTUNA_DB, OPTUNA_JOURNAL
from ..paths import (
    JOURNAL_SCHEME,
    default_studies_dir,
    default_tracking_uri,
    journal_path,
    journal_url,
    sqlite_url,
    url_scheme,
)
from ..utils import first_line
from .errors import Problems

TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")
SMOKE_SUFFIX = "-smoke"  # the quick version of a study (``--smoke``) is named <name>-smoke


def smoke_name(name: str) -> str:
    return f"{name}{SMOKE_SUFFIX}"


def storage_path(declared: str | None, problems: Problems) -> str:
    """Tune's storage: ``storage.path``, else ``$ZSKT_STORAGE``, else ``$ZSKT_HOME/studies``; an
    absolute local folder or a URL with a known scheme (``s3://bucket/prefix``)."""
    from_env = not declared and os.environ.get("ZSKT_STORAGE")
    key = "$ZSKT_STORAGE" if from_env else "storage.path"
    path = declared or os.environ.get("ZSKT_STORAGE") or str(default_studies_dir())
    scheme = url_scheme(path)
    if scheme is None:
        path = str(Path(path).expanduser().resolve())
        if Path(path).exists() and not Path(path).is_dir():
            problems.add(key, f"{path} exists and is not a folder")
    elif scheme not in STORAGE_SCHEMES:
        problems.add(
            key,
            f"unknown storage scheme {scheme!r} in {path!r} (a local folder, or one of "
            f"{', '.join(s + '://' for s in STORAGE_SCHEMES)})",
        )
    elif scheme != "file" and not urlsplit(path).netloc:
        problems.add(key, f"{path!r} names no bucket (expected {scheme}://bucket/prefix)")
    return path


def storage_shared(declared: bool | None) -> bool:
    """``storage.shared``, else ``$ZSKT_STORAGE_SHARED`` (cluster/slurm.sbatch: ``$ZSKT_STORAGE``
    is on the file system every node mounts)."""
    if declared is not None:
        return declared
    return os.environ.get("ZSKT_STORAGE_SHARED", "").lower() in ("1", "true", "yes")


def optuna_url(declared: str | None, name: str, path: str, shared: bool, problems: Problems) -> str:
    """The Optuna storage: ``storage.optuna`` (a database URL or a journal file), else a journal
    file beside a shared local ``path`` (Optuna's storage for NFS: no database server), else
    ``optuna.db`` in the study's folder (under ``$ZSKT_HOME/studies`` when ``path`` is a URL)."""
    if declared:
        return _declared_optuna(declared, problems)
    local = url_scheme(path) is None
    if shared and local:
        return journal_url(Path(path, name, OPTUNA_JOURNAL))
    folder = path if local else str(default_studies_dir())
    return sqlite_url(Path(folder, name, OPTUNA_DB))


def _declared_optuna(url: str, problems: Problems) -> str:
    """An SQLAlchemy database URL or ``journal:///abs/path`` (a journal file, e.g. on NFS)."""
    scheme = url_scheme(url)
    if scheme is None:
        problems.add(
            "storage.optuna",
            f"expected a database URL such as sqlite:////abs/optuna.db or a journal file "
            f"journal:////abs/optuna.journal, got {url!r}",
        )
        return url
    if scheme == JOURNAL_SCHEME:
        path = journal_path(url)
        if path is None:
            problems.add(
                "storage.optuna",
                f"a journal file needs an absolute path (journal:////abs/file), got {url!r}",
            )
            return url
        return journal_url(path)
    return database_url(url, "storage.optuna", problems)


def database_url(url: str, key: str, problems: Problems) -> str:
    """Parse with SQLAlchemy's own parser; sqlite paths made absolute (not cwd-relative)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        problems.add(
            key,
            f"not a usable database URL ({url_scheme(url) or url!r}: {first_line(e)[:120]}); "
            f"known kinds: {', '.join(DATABASE_SCHEMES)}",
        )
        return url
    if parsed.get_backend_name() == "sqlite":
        if parsed.host:
            problems.add(key, f"sqlite URLs have no host: use sqlite:////abs/path.db, got {url!r}")
            return url
        if not parsed.database or parsed.database == ":memory:":
            problems.add(
                key, f"an in-memory sqlite database keeps nothing: give a file, got {url!r}"
            )
            return url
        return sqlite_url(Path(parsed.database).expanduser().resolve())
    return url


def tracking_uri(declared: str | None, problems: Problems) -> str:
    """The MLflow store: ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///$ZSKT_HOME/mlflow.db``; a database URL or a tracking server's address."""
    key = "mlflow.tracking_uri" if declared else "$MLFLOW_TRACKING_URI"
    uri = declared or default_tracking_uri()
    scheme = url_scheme(uri)
    if scheme is None:
        problems.add(
            key,
            f"expected a URI (sqlite:////abs/mlflow.db, http://host:5000), got {uri!r}",
        )
        return uri
    backend = scheme.split("+", 1)[0]
    if backend not in TRACKING_SCHEMES:
        close = difflib.get_close_matches(backend, TRACKING_SCHEMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.add(
            key,
            f"unknown scheme {scheme!r}{hint}; MLflow tracks to {', '.join(TRACKING_SCHEMES)}",
        )
        return uri
    if backend in ("http", "https"):
        if not urlsplit(uri).hostname:
            problems.add(key, f"{uri!r} names no host")
        return uri
    if backend in DATABASE_SCHEMES:
        return database_url(uri, key, problems)
    return uri


def experiment(declared: str | None, name: str, problems: Problems) -> str:
    """The MLflow experiment: ``mlflow.experiment``, else the study's name."""
    value = declared or name
    if not value or len(value) > 200 or any(not c.isprintable() for c in value):
        problems.add("mlflow.experiment", f"{value[:60]!r} must be 1 to 200 printable characters")
    return value


def locations(data: Any, smoke: bool = False) -> dict[str, str | None]:
    """Name, tracking URI, experiment and Optuna storage of a study mapping, resolved as a run
    resolves them, for a file that may not pass today's checks (its runs can still be read).

    Values of the wrong type are ignored (the default applies); problems are not reported.
    """
    data = data if isinstance(data, Mapping) else {}
    ml, st = _mapping(data.get("mlflow")), _mapping(data.get("storage"))
    name = _text(data.get("name"))
    declared_experiment = _text(ml.get("experiment"))
    if smoke:
        name = smoke_name(name) if name else name
        declared_experiment = smoke_name(declared_experiment) if declared_experiment else None
    ignored = Problems("")
    optuna = None
    if name:
        path = storage_path(_text(st.get("path")), ignored)
        shared = storage_shared(st.get("shared") if isinstance(st.get("shared"), bool) else None)
        optuna = optuna_url(_text(st.get("optuna")), name, path, shared, ignored)
    return {
        "name": name,
        "tracking_uri": tracking_uri(_text(ml.get("tracking_uri")), ignored),
        "experiment": declared_experiment or name,
        "optuna_storage": optuna,
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
