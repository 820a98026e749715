"""Tune's list of a trial's checkpoints, made true again when a killed experiment is restored.

Each phase keeps a trial's two newest checkpoints (``CheckpointConfig(num_to_keep=2)``): when a
trial registers a checkpoint, Tune deletes the oldest one from storage at once. Tune saves its
experiment state (which lists every trial's checkpoints and the index of its next one) only from
time to time: every few seconds, and at the first step after a trial has checkpointed
``num_to_keep`` times since the last save. That step comes after the registration that deleted
the checkpoint the last save named as the newest; a driver killed in between (or between any
deletion and the next save) leaves a saved state that names deleted checkpoints. After
``Tuner.restore``:

- a restored trial's next registration makes Tune delete a listed checkpoint that is gone, and
  Ray's ``_delete_fs_path`` raises ``FileNotFoundError`` (its existence check is outside its own
  ``try``): Tune logs the traceback ("Error handling checkpoint ...");
- a trial whose newest listed checkpoint is gone cannot be restored at all: Ray's
  ``Trainable.restore`` raises "Could not recover from checkpoint as it does not exist on storage
  anymore" and the trial fails.

:class:`RepairRestoredCheckpoints` repairs each restored trial before its actor is scheduled (the
first step of the restored experiment): it forgets the listed checkpoints that storage no longer
holds; when the newest listed one is gone, the trial resumes from the oldest checkpoint on storage
after it (deletions go oldest first, so that one was registered, hence complete; a newer one may
be half written by the killed run); checkpoint folders after the one the trial resumes from
(written by the killed run, listed nowhere) are removed, and the trial's checkpoint index is set
to its resume point's (Ray counts on from it), so a new checkpoint never lands in an old folder.
It reads and writes two attributes of Ray's private ``_CheckpointManager``
(``_checkpoint_results``, ``_latest_checkpoint_result``) and the trial's ``StorageContext``
(``storage_filesystem``, ``trial_fs_path``, ``current_checkpoint_index``);
``tests/test_study_checkpoints.py`` fails, naming them, on a Ray without them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import pyarrow.fs
from ray.train import Checkpoint
from ray.train._internal.session import _TrainingResult
from ray.tune import Callback

from .tracking import _test_kill_hook

log = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def _exists(checkpoint: Any) -> bool:
    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type != pyarrow.fs.FileType.NotFound


def _index(path: str) -> int:
    found = _CHECKPOINT_DIR.search(path.rstrip("/"))
    return int(found.group(1)) if found else -1


def _on_storage(fs: pyarrow.fs.FileSystem, trial_dir: str) -> dict[int, str]:
    """The trial's checkpoint folders on storage: index -> path."""
    selector = pyarrow.fs.FileSelector(trial_dir, allow_not_found=True)
    return {
        _index(info.path): info.path
        for info in fs.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.Directory and _CHECKPOINT_DIR.search(info.path)
    }


@dataclasses.dataclass(frozen=True)
class Repair:
    """What :func:`repair_restored` changed for one trial."""

    dropped: list[str]  # listed checkpoints storage no longer holds, no longer listed
    resumed_from: str | None  # a checkpoint on storage the trial now resumes from (its newest
    # listed one was gone); None when that one exists, or nothing was listed
    removed: list[str]  # checkpoint folders after the resume point, removed

    def __bool__(self) -> bool:
        return bool(self.dropped or self.resumed_from or self.removed)


def repair_restored(manager: Any, storage: Any) -> Repair:
    """Make a restored trial's checkpoint list (``manager``) and next checkpoint index
    (``storage``) agree with its checkpoint folders on storage (module doc)."""
    latest = manager._latest_checkpoint_result
    fs, trial_dir = storage.storage_filesystem, storage.trial_fs_path
    found = _on_storage(fs, trial_dir)
    dropped = [r.checkpoint.path for r in manager._checkpoint_results if not _exists(r.checkpoint)]
    kept = [r for r in manager._checkpoint_results if _exists(r.checkpoint)]
    resumed_from = None
    if latest is None:
        resume = -1
    elif _exists(latest.checkpoint):
        resume = _index(latest.checkpoint.path)
    else:
        if latest.checkpoint.path not in dropped:
            dropped.append(latest.checkpoint.path)
        later = sorted(i for i in found if i > _index(latest.checkpoint.path))
        if later:
            resume = later[0]
            resumed_from = found[resume]
            # the metrics of the checkpoint named last; Tune reads its training_iteration only
            latest = _TrainingResult(Checkpoint(resumed_from, filesystem=fs), dict(latest.metrics))
            kept = [latest]
        else:  # nothing to resume from: the trial starts again
            resume, latest, kept = -1, None, []
        manager._latest_checkpoint_result = latest
    manager._checkpoint_results = kept
    removed = [found[i] for i in sorted(found) if i > resume]
    for path in removed:
        fs.delete_dir(path)
    storage.current_checkpoint_index = resume  # Ray adds 1 before it writes the next one
    return Repair(dropped, resumed_from, removed)


class RepairRestoredCheckpoints(Callback):
    """Driver-side: before the trials of a restored experiment are scheduled, repair their
    checkpoint lists and indices (module doc), and say so in the driver's log.

    ``experiment`` names the phase for the test hook ``ZSKT_TEST_KILL_DRIVER_AFTER=<experiment>:
    checkpoint<n>`` (:func:`.tracking._test_kill_hook`), which kills the driver when a trial's
    n-th checkpoint of this driver reaches it, before Tune registers it: with ``n = 4`` the third
    registration has deleted the first checkpoint and no forced save has listed that yet.
    """

    _repaired = False  # set once the first step's trials were repaired

    def __init__(self, experiment: str = "") -> None:
        self.experiment = experiment
        self._seen: dict[str, int] = {}

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._seen[trial.trial_id] = self._seen.get(trial.trial_id, 0) + 1
        _test_kill_hook(self.experiment, f"checkpoint{self._seen[trial.trial_id]}")

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._repaired:  # the restored trials are all there at the first step
            return
        self._repaired = True
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                continue
            _repair_trial(trial)


def _repair_trial(trial: Any) -> None:
    manager = getattr(trial.run_metadata, "checkpoint_manager", None)
    if manager is None or trial.storage is None or trial.storage.trial_dir_name is None:
        return
    try:
        repair = repair_restored(manager, trial.storage)
    except (AttributeError, RuntimeError, OSError) as e:  # a Ray without these internals
        log.warning("trial %s: could not check its checkpoints: %s", trial.trial_id, e)
        return
    if not repair:
        return
    what = []  # the driver's log, beside the runner's lines
    if repair.dropped:
        what.append(
            f"{len(repair.dropped)} listed checkpoint(s) were deleted before the last run stopped"
        )
    if repair.resumed_from:
        what.append(f"it resumes from {repair.resumed_from.rsplit('/', 1)[-1]}")
    elif repair.dropped:
        what.append("no longer listed (the trial resumes from its latest)")
    if repair.removed:
        what.append(f"{len(repair.removed)} newer unlisted checkpoint folder(s) removed")
    print(f"trial {trial.trial_id}: " + "; ".join(what), flush=True)
