"""Shared fixtures: tiny networks on digits-shaped data, a private ZSKT_HOME, a stated Ray
authentication mode."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _ray_auth_mode():
    """The suite's own Ray runs without token authentication, stated here for every test.

    Every local Ray a test starts (in this process, or in a driver subprocess that inherits this
    environment) and every ``ray.cluster_utils`` cluster gets ``RAY_AUTH_MODE=disabled``. Left
    unset, Ray 2.60 would turn token authentication on for each new local instance and write a
    token into ``~/.ray/auth_token``, a shared home the suite must not touch. Tests of
    authentication state their own mode and a private token file (tests/test_auth.py,
    tests/test_slurm.py: ``cluster_fixtures.ray_auth_env``); a test of a study's default mode
    removes the variable in its subprocess and gives it a private ``HOME``.
    """
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old


@pytest.fixture(autouse=True)
def _private_zskt_home(tmp_path_factory, monkeypatch):
    """Nothing a test does touches ~/.zskt."""
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path_factory.mktemp("zskt_home")))
