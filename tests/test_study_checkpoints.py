"""Tune's checkpoint list after a kill, repaired before a restored trial is scheduled
(zskt_ray/study/checkpoints.py).

Ray's own ``_CheckpointManager`` and ``StorageContext`` with real folders: the premises (Ray fails
on a listed checkpoint that storage no longer holds: at the next registration, and at restore
when it is the newest one) and the repair. The driver-level cases, studies killed between a
deletion and Tune's next save, are in tests/test_study_resume.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray.train import Checkpoint, CheckpointConfig  # noqa: E402
from ray.train._internal.checkpoint_manager import _CheckpointManager  # noqa: E402
from ray.train._internal.session import _TrainingResult  # noqa: E402
from ray.train._internal.storage import StorageContext  # noqa: E402
from ray.tune.trainable.trainable import _exists_at_fs_path  # noqa: E402

from zskt_ray.study.checkpoints import repair_restored  # noqa: E402


def _storage(tmp_path: Path, index: int) -> StorageContext:
    """A trial's storage as Tune restores it; ``index``: its newest checkpoint's (Ray adds 1 before
    it writes the next one)."""
    return StorageContext(
        str(tmp_path), "search", trial_dir_name="trial", current_checkpoint_index=index
    )


def _folder(tmp_path: Path, i: int) -> Path:
    d = tmp_path / "search" / "trial" / f"checkpoint_{i:06d}"
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(b"x")
    return d


def _result(tmp_path: Path, i: int) -> _TrainingResult:
    d = _folder(tmp_path, i)
    return _TrainingResult(checkpoint=Checkpoint.from_directory(str(d)), metrics={"i": i})


def _restored(tmp_path: Path, killed_after: int) -> _CheckpointManager:
    """A manager as Tune restores it from a state saved after checkpoints 0 and 1; the killed run
    went on to register checkpoints 2..``killed_after`` (each deleting the oldest), then died."""
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    manager.register_checkpoint(_result(tmp_path, 0))
    manager.register_checkpoint(_result(tmp_path, 1))
    for i in range(2, killed_after + 1):
        _folder(tmp_path, i)
        shutil.rmtree(tmp_path / "search" / "trial" / f"checkpoint_{i - 2:06d}")
    return manager


def _listed(manager: _CheckpointManager) -> list[str]:
    return [Path(r.checkpoint.path).name for r in manager._checkpoint_results]


def _folders(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "search" / "trial").glob("checkpoint_*"))


def test_the_private_attributes_the_repair_uses_exist(tmp_path):
    manager = _restored(tmp_path, 1)
    assert isinstance(manager._checkpoint_results, list), "Ray renamed _checkpoint_results"
    assert manager._latest_checkpoint_result is not None, "Ray renamed _latest_checkpoint_result"
    storage = _storage(tmp_path, 1)
    assert storage.trial_fs_path == str(tmp_path / "search" / "trial")
    assert storage.storage_filesystem is not None and storage.current_checkpoint_index == 1


def test_a_vanished_checkpoint_makes_ray_raise_on_the_next_registration(tmp_path):
    """Premise: without the repair, Tune's next registration fails in Ray's deletion of the
    listed checkpoint (if this stops failing, Ray fixed it and this part of the repair may go)."""
    manager = _restored(tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="checkpoint_000000"):
        manager.register_checkpoint(_result(tmp_path, 3))


def test_a_vanished_latest_checkpoint_cannot_be_restored(tmp_path):
    """Premise: Ray's Trainable.restore checks this before it raises 'Could not recover from
    checkpoint as it does not exist on storage anymore'."""
    manager = _restored(tmp_path, 3)
    latest = manager._latest_checkpoint_result.checkpoint
    assert not _exists_at_fs_path(latest.filesystem, latest.path)


def test_the_repair_drops_only_what_is_gone_and_removes_unlisted_newer_folders(tmp_path):
    manager = _restored(tmp_path, 2)  # on storage: 1, 2; listed: 0 (gone), 1 (latest)
    storage = _storage(tmp_path, 1)
    repair = repair_restored(manager, storage)
    assert [Path(p).name for p in repair.dropped] == ["checkpoint_000000"]
    assert repair.resumed_from is None
    assert [Path(p).name for p in repair.removed] == ["checkpoint_000002"]
    assert _listed(manager) == ["checkpoint_000001"] and _folders(tmp_path) == ["checkpoint_000001"]
    assert storage.current_checkpoint_index == 1  # the next one is 2, in a fresh folder
    manager.register_checkpoint(_result(tmp_path, 2))  # no error
    manager.register_checkpoint(_result(tmp_path, 3))  # deletes checkpoint 1, which exists
    assert _listed(manager) == ["checkpoint_000002", "checkpoint_000003"]
    assert _folders(tmp_path) == _listed(manager)
    assert not repair_restored(manager, _storage(tmp_path, 3))  # nothing left to repair


def test_a_trial_whose_latest_checkpoint_is_gone_resumes_from_the_oldest_later_one(tmp_path):
    """Killed after registering 2 and 3 (deleting 0 and 1, all that the saved state lists) while
    4 was being written: the trial resumes from 2, which was registered; 3 and 4 are removed."""
    manager = _restored(tmp_path, 3)
    _folder(tmp_path, 4)
    assert _folders(tmp_path) == ["checkpoint_000002", "checkpoint_000003", "checkpoint_000004"]
    storage = _storage(tmp_path, 1)
    repair = repair_restored(manager, storage)
    assert sorted(Path(p).name for p in repair.dropped) == [
        "checkpoint_000000",
        "checkpoint_000001",
    ]
    assert Path(repair.resumed_from).name == "checkpoint_000002"
    latest = manager._latest_checkpoint_result
    assert latest.checkpoint.path == repair.resumed_from and latest.metrics == {"i": 1}
    assert _exists_at_fs_path(latest.checkpoint.filesystem, latest.checkpoint.path)
    assert _listed(manager) == ["checkpoint_000002"] and _folders(tmp_path) == _listed(manager)
    assert storage.current_checkpoint_index == 2
    for i in (3, 4):  # the resumed trial's checkpoints, each deleting the oldest: no error
        manager.register_checkpoint(_result(tmp_path, i))
    assert _folders(tmp_path) == _listed(manager) == ["checkpoint_000003", "checkpoint_000004"]


def test_a_trial_with_nothing_left_to_resume_from_starts_again(tmp_path):
    manager = _restored(tmp_path, 1)
    shutil.rmtree(tmp_path / "search" / "trial")
    storage = _storage(tmp_path, 1)
    repair = repair_restored(manager, storage)
    assert repair.resumed_from is None and len(repair.dropped) == 2
    assert manager._latest_checkpoint_result is None and manager._checkpoint_results == []
    assert storage.current_checkpoint_index == -1
