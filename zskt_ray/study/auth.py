"""Secrets for a study on a network others share: Ray's token and the MLflow server's password.

A study on one machine needs none of this. On a cluster whose network other people reach (a
university's Slurm cluster), anyone who can connect to the Ray head can run code as the user, and
anyone who can reach ``mlflow server`` can read or delete the study's runs. Two mechanisms close
that, both the tools' own:

- **Ray token authentication** (Ray >= 2.52): every Ray process of the cluster (``ray start`` on
  each node, the driver, the trials) runs with ``RAY_AUTH_MODE=token`` and
  ``RAY_AUTH_TOKEN_PATH=<file>``; Ray reads the token from that file and rejects any connection,
  gRPC or HTTP, that does not carry it.
- **MLflow's basic-auth app** (``mlflow server --app-name basic-auth``): the server reads its
  admin user, password and user database from the file named by ``MLFLOW_AUTH_CONFIG_PATH`` and
  answers 401 to any request without valid credentials. The driver and the trials authenticate
  through :class:`CredentialsFileAuth`, an MLflow request-auth plugin that reads the user and
  password from a credentials file on every request: set ``MLFLOW_TRACKING_AUTH=zskt`` and
  ``ZSKT_MLFLOW_CREDENTIALS=<file>``. Only the file's *path* travels (in the environment, in Ray's
  runtime environment); the password itself is in no environment variable, command line or log.

:func:`init_secrets` (``zskt auth init DIR``) writes the three files, each readable by the user
alone (mode 0600 in a 0700 directory), and never prints a secret:

- ``DIR/ray-token``: Ray's token (256 random bits, as ``ray get-auth-token --generate`` makes);
- ``DIR/mlflow-credentials``: the client side, in the format of MLflow's own
  ``~/.mlflow/credentials`` (``[mlflow]`` with ``mlflow_tracking_username`` and
  ``mlflow_tracking_password``);
- ``SERVER_DIR/mlflow-auth.ini``: the server side, MLflow's basic-auth configuration (admin user,
  password, ``database_uri`` of the users database ``SERVER_DIR/mlflow-auth.db``, default
  permission ``NO_PERMISSIONS``). MLflow creates the admin user from it when the users database is
  new, so each new ``SERVER_DIR`` (one per Slurm job) gets its own password;
- ``SERVER_DIR/mlflow-flask-secret``: the key the basic-auth app signs its web forms' CSRF tokens
  with; MLflow takes it only from the server's environment (``MLFLOW_FLASK_SERVER_SECRET_KEY``),
  so the server's starter reads it from this file into that variable (``$(<FILE)`` in bash).

This module imports no MLflow (MLflow loads the plugin while it sends a request) and no Ray.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import secrets
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "AUTH_PLUGIN",
    "CREDENTIALS_ENV",
    "AuthError",
    "CredentialsFileAuth",
    "SecretFiles",
    "check_private",
    "forwarded_auth_env",
    "init_secrets",
    "read_credentials",
]

# MLFLOW_TRACKING_AUTH=zskt selects CredentialsFileAuth (entry point "mlflow.request_auth_provider"
# in pyproject.toml); ZSKT_MLFLOW_CREDENTIALS names the credentials file it reads.
AUTH_PLUGIN = "zskt"
CREDENTIALS_ENV = "ZSKT_MLFLOW_CREDENTIALS"
RAY_TOKEN_FILE = "ray-token"
CREDENTIALS_FILE = "mlflow-credentials"
SERVER_CONFIG_FILE = "mlflow-auth.ini"
SERVER_DB_FILE = "mlflow-auth.db"
SERVER_SECRET_KEY_FILE = "mlflow-flask-secret"
ADMIN_USER = "admin"
# MLflow's keys, the same as in its ~/.mlflow/credentials file
_USER_KEY = "mlflow_tracking_username"
_PASSWORD_KEY = "mlflow_tracking_password"


class AuthError(RuntimeError):
    """A secret file that is missing, unreadable, malformed or readable by others (one line)."""


@dataclasses.dataclass(frozen=True)
class SecretFiles:
    """The files :func:`init_secrets` wrote (paths only: nothing here is secret)."""

    ray_token: Path
    mlflow_credentials: Path
    mlflow_server_config: Path
    mlflow_server_db: Path
    mlflow_server_secret_key: Path


def _private_dir(path: Path) -> Path:
    """``path`` as a directory only the user can enter (created with mode 0700 if missing)."""
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly);
    refuse to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AuthError(f"{path}: already exists; remove it or use another directory") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


def init_secrets(
    directory: str | Path, server_dir: str | Path | None = None, user: str = ADMIN_USER
) -> SecretFiles:
    """Write a new Ray token, MLflow credentials and the server's basic-auth configuration.

    ``directory`` holds what every node reads (the Ray token, the MLflow credentials): on a
    cluster, a directory on the shared file system. ``server_dir`` (default ``directory``) holds
    the MLflow server's configuration and users database, which only the server's node reads (a
    node-local directory keeps the SQLite users database off NFS). Existing files are never
    overwritten: each set of secrets is new.
    """
    shared = _private_dir(Path(directory))
    server = _private_dir(Path(server_dir)) if server_dir is not None else shared
    files = SecretFiles(
        shared / RAY_TOKEN_FILE,
        shared / CREDENTIALS_FILE,
        server / SERVER_CONFIG_FILE,
        server / SERVER_DB_FILE,
        server / SERVER_SECRET_KEY_FILE,
    )
    existing = [str(p) for p in dataclasses.astuple(files) if p.exists()]
    if existing:
        raise AuthError(f"{existing[0]}: already exists; remove it or use another directory")
    password = secrets.token_hex(24)  # hex: nothing configparser would interpolate
    _write_private(files.ray_token, secrets.token_hex(32))
    _write_private(
        files.mlflow_credentials,
        f"[mlflow]\n{_USER_KEY} = {user}\n{_PASSWORD_KEY} = {password}\n",
    )
    _write_private(
        files.mlflow_server_config,
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{files.mlflow_server_db}\n"
        f"admin_username = {user}\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    _write_private(files.mlflow_server_secret_key, secrets.token_hex(32))
    return files


def check_private(path: str | Path) -> Path:
    """``path`` if it is a regular file that only its owner can read; else :class:`AuthError`."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise AuthError(f"{p}: cannot read the secret file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AuthError(f"{p}: not a regular file")
    if st.st_mode & 0o077:
        raise AuthError(
            f"{p}: readable by others (mode {stat.filemode(st.st_mode)}); `chmod 600 {p}` first"
        )
    return p


_CACHE: dict[tuple[str, int, int], tuple[str, str]] = {}


def read_credentials(path: str | Path) -> tuple[str, str]:
    """``(user, password)`` from an MLflow credentials file that only the user can read."""
    p = check_private(path)
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(p.read_text())
    except (OSError, configparser.Error) as e:
        raise AuthError(f"{p}: not an MLflow credentials file ({type(e).__name__})") from None
    section = parser["mlflow"] if parser.has_section("mlflow") else {}
    user, password = section.get(_USER_KEY), section.get(_PASSWORD_KEY)
    if not user or not password:
        raise AuthError(f"{p}: needs [mlflow] {_USER_KEY} and {_PASSWORD_KEY}")
    _CACHE.clear()
    _CACHE[key] = (user, password)
    return user, password


class CredentialsFileAuth:
    """MLflow request-auth plugin ``zskt``: HTTP basic auth from ``$ZSKT_MLFLOW_CREDENTIALS``.

    MLflow calls :meth:`get_auth` for every request when ``MLFLOW_TRACKING_AUTH=zskt`` (driver,
    trials, ``zskt report``, MLflow's artifact uploads to a served store alike). The file is read
    again when it changes. It has the interface of MLflow's ``RequestAuthProvider``
    (``get_name``, ``get_auth``) without importing MLflow, which loads it while importing itself.
    """

    def get_name(self) -> str:
        return AUTH_PLUGIN

    def get_auth(self) -> Any:
        from requests.auth import HTTPBasicAuth

        path = os.environ.get(CREDENTIALS_ENV)
        if not path:
            raise AuthError(
                f"MLFLOW_TRACKING_AUTH={AUTH_PLUGIN} but ${CREDENTIALS_ENV} is not set: "
                "point it at the MLflow credentials file"
            )
        return HTTPBasicAuth(*read_credentials(path))


def forwarded_auth_env() -> dict[str, str]:
    """The authentication settings a trial needs, as set on the driver: the plugin's name and the
    credentials file's path (never a password). Empty when the driver uses no such file."""
    if os.environ.get("MLFLOW_TRACKING_AUTH") != AUTH_PLUGIN or not os.environ.get(CREDENTIALS_ENV):
        return {}
    return {"MLFLOW_TRACKING_AUTH": AUTH_PLUGIN, CREDENTIALS_ENV: os.environ[CREDENTIALS_ENV]}
