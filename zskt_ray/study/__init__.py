"""Hyperparameter studies of ZSKT: Ray Tune trials, Optuna search, MLflow tracking.

- :mod:`.spec` study files -> a validated :class:`~.spec.StudySpec` (no outside systems)
- :mod:`.space` the only module building Optuna objects (space, TPE, storage, pruned bookkeeping)
- :mod:`.trainable` the thin Ray Tune adapter over :class:`~zskt_ray.loop.ZeroShotDistiller`
- :mod:`.tracking` the only module talking to MLflow
- :mod:`.runner` Tuner build / run / restore, final seeded re-runs, KD+AT baseline
- :mod:`.cli` the ``zskt study`` command group
"""

from .spec import StudyError, StudySpec, load_spec, parse_spec

__all__ = ["StudyError", "StudySpec", "load_spec", "parse_spec"]
