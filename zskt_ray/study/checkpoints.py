"""Tune's list of a trial's checkpoints, made true again when a killed experiment is restored.

Each phase keeps a trial's two newest checkpoints (``CheckpointConfig(num_to_keep=2)``): when a
trial registers a checkpoint, Tune deletes the oldest one from storage at once. Tune saves its
experiment state (which lists every trial's checkpoints) only from time to time: every few
seconds, and whenever a trial has checkpointed ``num_to_keep`` times since the last save. A driver
killed between a deletion and the next save leaves a saved state that still lists the deleted
checkpoint. ``Tuner.restore`` brings that list back; the restored trial's next checkpoint makes
Tune delete the listed one again, and Ray's ``_delete_fs_path`` raises ``FileNotFoundError`` for
a path that is gone (its existence check is outside its own ``try``): Tune logs the traceback
("Error handling checkpoint ...") although nothing is lost. The newest listed checkpoint, the
one a trial resumes from, is never deleted before a save that lists its successor, so it always
exists.

:class:`DropVanishedCheckpoints` removes, when a trial starts, the checkpoints its list names that
storage no longer holds. It reads and writes two attributes of Ray's private
``_CheckpointManager`` (``_checkpoint_results``, ``_latest_checkpoint_result``);
``tests/test_study_checkpoints.py`` fails, naming them, on a Ray without them.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.fs
from ray.tune import Callback

from .tracking import _test_kill_hook

log = logging.getLogger(__name__)


def _exists(checkpoint: Any) -> bool:
    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type != pyarrow.fs.FileType.NotFound


def drop_vanished_checkpoints(manager: Any) -> list[str]:
    """Remove from a trial's checkpoint manager the checkpoints storage no longer holds (never its
    latest one); the paths removed."""
    results = manager._checkpoint_results
    latest = manager._latest_checkpoint_result
    kept, gone = [], []
    for result in results:
        if result is latest or _exists(result.checkpoint):
            kept.append(result)
        else:
            gone.append(result.checkpoint.path)
    if gone:
        manager._checkpoint_results = kept
    return gone


class DropVanishedCheckpoints(Callback):
    """Driver-side: before a (restored) trial runs, forget the checkpoints it lists that a killed
    driver's experiment already deleted (module doc).

    ``experiment`` names the phase for the test hook ``ZSKT_TEST_KILL_DRIVER_AFTER=<experiment>:
    checkpoint<n>`` (:func:`.tracking._test_kill_hook`), which kills the driver when a trial's
    n-th checkpoint of this driver reaches it, before Tune registers it: with ``n = 4`` the third
    registration has deleted the first checkpoint and no forced save has listed that yet.
    """

    def __init__(self, experiment: str = "") -> None:
        self.experiment = experiment
        self._seen: dict[str, int] = {}

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._seen[trial.trial_id] = self._seen.get(trial.trial_id, 0) + 1
        _test_kill_hook(self.experiment, f"checkpoint{self._seen[trial.trial_id]}")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        manager = getattr(trial.run_metadata, "checkpoint_manager", None)
        if manager is None:
            return
        try:
            gone = drop_vanished_checkpoints(manager)
        except (AttributeError, OSError) as e:  # a Ray without these internals: Tune as it is
            log.warning("trial %s: could not check its checkpoint list: %s", trial.trial_id, e)
            return
        if gone:  # the driver's log, beside the runner's lines
            print(
                f"trial {trial.trial_id}: {len(gone)} older checkpoint(s) were deleted before the "
                "last run stopped; no longer listed (the trial resumes from its latest)",
                flush=True,
            )
