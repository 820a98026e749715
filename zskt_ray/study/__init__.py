"""Hyperparameter studies of ZSKT: Ray Tune trials, Optuna search, MLflow tracking.

- :mod:`.spec` study files -> a validated, resolved :class:`~.spec.StudySpec` (no outside
  systems), built from :mod:`.reading`, :mod:`.schema`, :mod:`.errors`, :mod:`.resolve`,
  :mod:`.stores` and checked against the machine by :mod:`.preflight`
- :mod:`.space` the only module building Optuna objects (space, TPE, storage, pruned bookkeeping)
- :mod:`.trainable` the Ray Tune function trainable over :class:`~zskt_ray.loop.ZeroShotDistiller`
- :mod:`.tracking` the only module talking to MLflow; :mod:`.records` what a trial logs there;
  :mod:`.watch` its health tags, device-seconds and the health stop; :mod:`.costs` a study's
  device-seconds summed from its trial runs; :mod:`.faults` failures provoked on purpose (tests)
- :mod:`.results` what a trial reports, its outcome, and the labels of final and baseline runs
- :mod:`.runner` Tuner build / run / restore, final seeded re-runs, KD+AT baseline
- :mod:`.nodes` work sent to chosen nodes: the teacher where the GPUs are, the data set on every
  node, leftover scratch folders; :mod:`.checkpoints` Tune's checkpoint list after a kill
- :mod:`.cli` the ``zskt study`` command group

The names below are imported on first use, so that a light module (``results``, ``names``) can be
imported without the study file machinery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StudyError", "StudySpec", "load_spec", "parse_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
