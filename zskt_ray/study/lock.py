"""One run of a study at a time, and one creator of a shared SQLite database at a time.

A study lock is a file lock (``filelock``: ``flock`` on POSIX) in ``$ZSKT_HOME/locks/``: the
operating system drops it when its process ends, however it ends, so a killed driver never leaves
a stale lock behind. Beside it, a small holder file names the process (pid, host, command, start
time) so that a second ``zskt study run`` of the same study can say who holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..paths import sqlite_path, zskt_home
from .errors import StudyError


class StudyLocked(StudyError):
    """Another process runs the same study (a one-line user error, exit status 2)."""


def locks_dir() -> Path:
    return zskt_home() / "locks"


def _file_name(name: str) -> str:
    """A file name for any study name (other characters replaced; a hash keeps names apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    if safe != name:
        safe += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return safe


def study_lock_path(name: str) -> Path:
    return locks_dir() / f"{_file_name(name)}.lock"


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def _describe_holder(lock_path: Path) -> str:
    try:
        h = json.loads(_holder_path(lock_path).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["since"]))
        return f"process {h['pid']} on {h['host']} (`{h['command']}`, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # it has just taken the lock and not yet written its name


_HELD: dict[Path, int] = {}  # locks this process holds (re-entering one is free)


@contextlib.contextmanager
def study_lock(name: str, source: str = "") -> Iterator[Path]:
    """Hold the lock of study ``name`` or raise :class:`StudyLocked` at once (no waiting).

    Re-entrant within a process: the CLI takes it right after validation (before the slow imports
    of Ray), and :func:`~.runner.run_study` takes it again for library callers.
    """
    path = study_lock_path(name)
    if _HELD.get(path):
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        label = f"{source}: " if source else ""
        raise StudyLocked(
            f"{label}study {name!r} is already running in {_describe_holder(path)}; "
            f"wait for it to end or stop it (lock: {path})"
        ) from None
    holder = _holder_path(path)
    _HELD[path] = 1
    try:
        holder.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300],
                    "since": time.time(),
                }
            )
        )
        yield path
    finally:
        _HELD.pop(path, None)
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


@contextlib.contextmanager
def sqlite_lock(url: str, timeout: float = 120.0) -> Iterator[None]:
    """Serialise work on a SQLite database (schema creation, get-or-create) across processes.

    Two studies that create the same fresh database at once race on the schema; a lock beside the
    file makes the second wait for the first. Other URLs (a server) need no lock.
    """
    db = sqlite_path(url)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db.with_name(db.name + ".lock")), timeout=timeout):
        yield
