"""Tune's checkpoint list after a kill: a checkpoint the list names but storage no longer holds is
dropped before the restored trial registers its next one (zskt_ray/study/checkpoints.py).

Ray's own ``_CheckpointManager`` with real folders: the premise (registering after a listed
checkpoint vanished raises Ray's FileNotFoundError) and the repair. The driver-level case, a study
killed between a deletion and Tune's next save, is in tests/test_study_resume.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray.train import Checkpoint, CheckpointConfig  # noqa: E402
from ray.train._internal.checkpoint_manager import _CheckpointManager  # noqa: E402
from ray.train._internal.session import _TrainingResult  # noqa: E402

from zskt_ray.study.checkpoints import drop_vanished_checkpoints  # noqa: E402


def _result(tmp_path: Path, i: int) -> _TrainingResult:
    d = tmp_path / f"checkpoint_{i:06d}"
    d.mkdir()
    (d / "state.pt").write_bytes(b"x")
    return _TrainingResult(checkpoint=Checkpoint.from_directory(str(d)), metrics={"i": i})


def _restored(tmp_path: Path) -> _CheckpointManager:
    """A manager as Tune restores it from a state saved after checkpoints 0 and 1, whose
    checkpoint 0 was deleted (when checkpoint 2 was registered) before the driver died."""
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    manager.register_checkpoint(_result(tmp_path, 0))
    manager.register_checkpoint(_result(tmp_path, 1))
    shutil.rmtree(tmp_path / "checkpoint_000000")
    return manager


def test_the_private_attributes_the_repair_uses_exist(tmp_path):
    manager = _restored(tmp_path)
    assert isinstance(manager._checkpoint_results, list), "Ray renamed _checkpoint_results"
    assert manager._latest_checkpoint_result is not None, "Ray renamed _latest_checkpoint_result"


def test_a_vanished_checkpoint_makes_ray_raise_on_the_next_registration(tmp_path):
    """The premise: without the repair, Tune's next registration fails in Ray's deletion of the
    listed checkpoint (if this stops failing, Ray fixed it and the repair may go)."""
    manager = _restored(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint_000000"):
        manager.register_checkpoint(_result(tmp_path, 2))


def test_the_repair_drops_only_what_is_gone(tmp_path):
    manager = _restored(tmp_path)
    gone = drop_vanished_checkpoints(manager)
    assert gone == [str(tmp_path / "checkpoint_000000")]
    assert [r.metrics["i"] for r in manager._checkpoint_results] == [1]
    manager.register_checkpoint(_result(tmp_path, 2))  # no error
    manager.register_checkpoint(_result(tmp_path, 3))  # deletes checkpoint 1, which exists
    assert not (tmp_path / "checkpoint_000001").exists()
    assert [r.metrics["i"] for r in manager._checkpoint_results] == [2, 3]
    assert drop_vanished_checkpoints(manager) == []


def test_the_latest_checkpoint_is_never_dropped(tmp_path):
    manager = _restored(tmp_path)
    shutil.rmtree(tmp_path / "checkpoint_000001")  # even when it is gone: Tune restores from it
    drop_vanished_checkpoints(manager)
    assert manager._checkpoint_results == [manager._latest_checkpoint_result]
