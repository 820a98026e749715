"""Studies on a Ray cluster: no configuration may silently split a study's data across nodes.

On one machine every trial sees the driver's disk, so an SQLite MLflow store and a local Tune
storage path just work. On a cluster each trial runs on some node: an ``sqlite:`` tracking URI
would send that node's runs into a file on its own disk, and a local ``storage.path`` would leave
its checkpoints where no other node (nor the driver) can find them. :func:`check_cluster_safe`
refuses both, before Ray is started and before any trial, with one line naming the key and the fix.

"Shared" means: an ``http(s)://`` MLflow tracking server (``mlflow server`` on the head's private
address); Tune storage on a URI with a scheme (``s3://``, ``gs://``, ...), or a local path the study
file declares shared with ``storage.shared: true`` (NFS mounted at the same path on every node).

This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import os

from ..paths import url_scheme
from .errors import StudyError
from .spec import StudySpec

__all__ = [
    "FORWARDED_ENV",
    "SERVER_SCHEMES",
    "check_cluster_safe",
    "cluster_address",
    "forwarded_env",
    "joins_cluster",
]

# Tracking URIs every node can reach and that keep artifacts with the runs (``databricks`` is
# also MLflow's name for a Databricks workspace's server, written without ``://``).
SERVER_SCHEMES = ("http", "https", "databricks")
# Where the driver's storage is, passed on to every trial (pyarrow, hence Ray Tune, reads them):
# an S3-compatible endpoint (MinIO, Ceph, ...) and the region. Never credentials: nodes take
# those from their instance profile or their own environment.
FORWARDED_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")


def cluster_address(address: str | None) -> str | None:
    """The Ray address a study will join (``--address``, else ``$RAY_ADDRESS``), or None.

    ``local`` (Ray's name for "start a new local instance") is not a cluster.
    """
    value = address or os.environ.get("RAY_ADDRESS") or None
    if value is None or value.strip().lower() == "local":
        return None
    return value


def joins_cluster(address: str | None) -> bool:
    """True when the study joins an existing Ray cluster instead of starting a local Ray."""
    return cluster_address(address) is not None


def check_cluster_safe(spec: StudySpec, address: str | None) -> None:
    """Refuse, when joining a cluster, any store a worker node would write to its own disk.

    Raises :class:`StudyError` (one line naming the file, the key and the fix); does nothing for
    a study that starts its own local Ray.
    """
    where = cluster_address(address)
    if where is None:
        return
    label = spec.source or spec.name
    uri = spec.tracking_uri
    if (url_scheme(uri) or uri.strip().lower()) not in SERVER_SCHEMES:
        raise StudyError(
            f"{label}: mlflow.tracking_uri: {uri} is a file on one machine, but the study joins the "
            f"Ray cluster at {where} and trials on other nodes would log into their own disks; "
            "serve MLflow on the head (`mlflow server --backend-store-uri sqlite:////ABS/mlflow.db "
            "--host HEAD_PRIVATE_IP --port 5000`) and set mlflow.tracking_uri (or "
            "$MLFLOW_TRACKING_URI) to http://HEAD_PRIVATE_IP:5000"
        )
    path = spec.storage_path
    if url_scheme(path) in (None, "file") and not spec.storage_shared:
        raise StudyError(
            f"{label}: storage.path: {path} is a local directory, but the study joins the Ray "
            f"cluster at {where} and checkpoints written on other nodes would be lost; use "
            "s3://bucket/prefix or gs://bucket/prefix (storage.path or $ZSKT_STORAGE), or a path "
            "every node mounts (NFS) declared with storage.shared: true"
        )


def forwarded_env() -> dict[str, str]:
    """The driver's storage endpoint settings (:data:`FORWARDED_ENV`) that are set, for trials."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
