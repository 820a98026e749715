"""URLs and paths are told apart and read by urllib / SQLAlchemy, never by slicing strings."""

from __future__ import annotations

from pathlib import Path

from zskt_ray.paths import journal_path, journal_url, sqlite_path, url_scheme


def test_url_scheme_tells_urls_from_paths():
    assert url_scheme("s3://bucket/prefix") == "s3"
    assert url_scheme("HTTP://host:5000") == "http"
    assert url_scheme("sqlite+pysqlite:////abs/m.db") == "sqlite+pysqlite"
    assert url_scheme("file:///abs/dir") == "file"
    for path in ("/abs/dir", "rel/dir", "c:dir", "optuna.db", ""):
        assert url_scheme(path) is None, path


def test_sqlite_and_journal_files():
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_path("sqlite+pysqlite:///rel/m.db?timeout=5") == Path("rel/m.db")
    assert sqlite_path("sqlite://") is None and sqlite_path("postgresql://u@h/db") is None
    assert journal_path("journal:///abs/o.journal") == Path("/abs/o.journal")
    assert journal_path(journal_url("/abs/o.journal")) == Path("/abs/o.journal")
    for bad in ("journal://rel.log", "journal:///", "sqlite:////abs/o.db", "/abs/o.journal"):
        assert journal_path(bad) is None, bad
