"""Shared fixtures: tiny networks on digits-shaped data, a private ZSKT_HOME."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(autouse=True)
def _private_zskt_home(tmp_path_factory, monkeypatch):
    """Nothing a test does touches ~/.zskt."""
    monkeypatch.setenv("ZSKT_HOME", str(tmp_path_factory.mktemp("zskt_home")))
