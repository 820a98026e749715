"""The one module that builds Optuna objects.

- the search space of a :class:`StudySpec` as a define-by-run function (int / float with log or
  step / categorical, exactly as the study file says); for an ablation, the grid over its
  cells and seeds (:class:`DesignSpace`, :class:`DesignGrid`);
- a seeded TPE sampler (multivariate, constant liar: also for several objectives, where
  Optuna's multivariate default is off) and the persistent storage (``RDBStorage``; the study is
  named after the study, never Optuna's default ``"optuna"``);
- :class:`StudySearcher`, Ray's ``OptunaSearch`` with honest bookkeeping: a trial the scheduler
  stopped early is told as PRUNED (Ray tells it as COMPLETE with its truncated value), a failed or
  diverged trial as FAIL, intermediate values are keyed by loop iteration, and each Optuna trial
  carries the Tune trial id, the MLflow run id, its status and reason as user attributes;
- read-back helpers for the runner: the best completed configurations (of a multi-objective
  study: configurations spread along its Pareto front), trial counts, and clean-up of trials
  orphaned by a killed driver.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .. import names, pareto
from ..config import DistillConfig, from_dict, to_dict
from ..names import (
    ATTR_CONFIG_ID,
    ATTR_FINGERPRINT,
    ATTR_ITERATION,
    ATTR_REASON,
    ATTR_RUN_ID,
    ATTR_STATUS,
    ATTR_TUNE_ID,
)
from ..paths import journal_path, sqlite_path
from .errors import StudyError
from .lock import sqlite_lock
from .results import outcome
from .spec import StudySpec, config_id

log = logging.getLogger(__name__)


class SearchSpace:
    """The search space as an Optuna define-by-run callable. Tune pickles it with the searcher
    into the experiment's state, so it holds plain data (name, the parameter as the study file
    writes it), not the study's model: a later version of the schema still restores it."""

    def __init__(self, params: Iterable[Any]) -> None:
        self.params = tuple((p.name, p.model_dump()) for p in params)

    def __call__(self, trial: optuna.trial.BaseTrial) -> None:
        for name, p in self.params:
            log_scale, step = p.get("log", False), p.get("step")
            if p["type"] == "int":
                trial.suggest_int(
                    name, int(p["low"]), int(p["high"]), step=int(step or 1), log=log_scale
                )
            elif p["type"] == "float":
                trial.suggest_float(
                    name, float(p["low"]), float(p["high"]), step=step, log=log_scale
                )
            else:
                trial.suggest_categorical(name, list(p["choices"]))


class DesignSpace:
    """An ablation's trials as Optuna parameters: the cell (its id) and the seed. Plain data,
    like :class:`SearchSpace`."""

    def __init__(self, cells: Sequence[str], seeds: Sequence[int]) -> None:
        self.cells, self.seeds = list(cells), list(seeds)

    def __call__(self, trial: optuna.trial.BaseTrial) -> None:
        trial.suggest_categorical(names.PARAM_CELL, self.cells)
        trial.suggest_categorical(names.PARAM_SEED, self.seeds)


def define_by_run(spec: StudySpec) -> Callable[[optuna.trial.BaseTrial], None]:
    """The search space of ``spec`` (names = DistillConfig fields), or an ablation's grid."""
    design = spec.design
    if design is not None:
        return DesignSpace([c.id for c in design.cells], design.seeds)
    return SearchSpace(spec.space)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, told from outside an objective: an exhausted grid must not call
    ``study.stop()`` (which raises outside ``optimize`` and would leave the last trial RUNNING);
    Tune's ``num_samples`` equals the number of cells and ends the search."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


class DesignGrid(_GridSampler):
    """The grid of an ablation's (cell, seed) runs, taken in the design's order, seed by seed
    (Optuna's grid sampler shuffles its points): the n-th trial runs the n-th run, so a study
    cut short holds whole seeds, and a resumed one goes on where it stopped."""

    def __init__(self, cells: Sequence[str], seeds: Sequence[int]) -> None:
        super().__init__({names.PARAM_CELL: list(cells), names.PARAM_SEED: list(seeds)}, seed=0)
        # Optuna's points are tuples of values in the order of the sorted parameter names
        points = [{names.PARAM_CELL: c, names.PARAM_SEED: s} for s in seeds for c in cells]
        self._all_grids = [tuple(p[k] for k in self._param_names) for p in points]


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """Seeded TPE (multivariate, constant liar for parallel trials), or a grid / random sampler;
    an ablation's runs in order (:class:`DesignGrid`)."""
    design = spec.design
    if design is not None:
        return DesignGrid([c.id for c in design.cells], design.seeds)
    search = spec.search
    if search.sampler == "grid":
        return _GridSampler({p.name: list(p.choices) for p in spec.space}, seed=search.sampler_seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.sampler_seed)
    return optuna.samplers.TPESampler(
        seed=search.sampler_seed,
        n_startup_trials=search.n_startup_trials,
        multivariate=True,
        constant_liar=True,
    )


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The persistent Optuna storage (sqlite: the folder is created; waits on a locked file).

    ``journal:///abs/optuna.journal`` is a :class:`~optuna.storages.JournalStorage` on a file
    (``JournalFileBackend``, with its file lock): the storage for a shared file system (NFS),
    where SQLite's locking is unreliable and a database server would be one more service.
    """
    journal = journal_path(url)
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
    kwargs: dict[str, Any] = {}
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
    with sqlite_lock(url):  # studies sharing one fresh database race on its schema otherwise
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def directions(spec: StudySpec) -> list[str]:
    """One Optuna direction per objective, in the study file's order."""
    return ["maximize" if o.mode == "max" else "minimize" for o in spec.objectives]


def open_study(spec: StudySpec, create: bool = True) -> optuna.Study:
    """The study's Optuna study (created if missing); a different study file is refused."""
    storage = open_storage(spec.optuna_storage)
    if not create:
        return optuna.load_study(study_name=spec.name, storage=storage)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions(spec),
        load_if_exists=True,
        sampler=make_sampler(spec),
    )
    stored_directions = [d.name.lower() for d in study.directions]
    if stored_directions != directions(spec):
        key = "search.objectives" if spec.multi_objective else "search.mode"
        raise StudyError(
            f"{spec.source}: {key}: the stored Optuna study {spec.name!r} ({spec.optuna_storage}) "
            f"was created with direction(s) {', '.join(stored_directions)}"
        )
    stored = study.user_attrs.get(ATTR_FINGERPRINT)
    if stored is None:
        study.set_user_attr(ATTR_FINGERPRINT, spec.fingerprint())
        study.set_user_attr("search_space", {p.name: p.model_dump() for p in spec.space})
        study.set_user_attr("metric", spec.metric)
        if spec.multi_objective:
            study.set_user_attr("objectives", [list(o) for o in spec.objectives])
        study.set_user_attr("num_trials", spec.num_trials)
        if spec.design is not None:
            study.set_user_attr(names.ATTR_DESIGN, design_cells(spec))
    elif stored != spec.fingerprint():
        raise StudyError(
            f"{spec.source}: the study {spec.name!r} stored in {spec.optuna_storage} was started from a "
            "different study file (search space, loop or teacher changed); give the study a new name"
        )
    elif study.user_attrs.get("num_trials", spec.num_trials) != spec.num_trials:
        raise StudyError(
            f"{spec.source}: search.num_trials: study {spec.name!r} was started with "
            f"{study.user_attrs['num_trials']} trials, not {spec.num_trials}; resume it with the same number "
            "or give the study a new name"
        )
    return study


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` that records pruned and failed trials truthfully (see module doc).

    A multi-objective study's searcher is given every objective (``metric`` and ``mode`` are
    lists): a completed trial is told COMPLETE with all its values; its trials hold no
    intermediate values (Optuna reports are single-objective), the iteration a trial reached is
    the user attribute ``zskt_iteration``.
    """

    def __init__(self, spec: StudySpec, study: optuna.Study | None = None):
        study = study or open_study(spec)
        metrics = [o.metric for o in spec.objectives]
        modes = [o.mode for o in spec.objectives]
        super().__init__(
            space=define_by_run(spec),
            metric=metrics if spec.multi_objective else spec.metric,
            mode=modes if spec.multi_objective else spec.mode,
            sampler=make_sampler(spec),
            study_name=spec.name,
            storage=study._storage,
        )
        # Plain data only (Tune pickles the searcher): the budget, and the loop settings every
        # trial shares, for the config id of a suggested configuration (an ablation's cell ->
        # its settings).
        self._num_trials = spec.num_trials
        self._base = to_dict(spec.base)
        self._cells = {c["id"]: c["settings"] for c in design_cells(spec)}
        self._orphans: list[int] | None = None  # computed once per driver session

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._orphans = None  # recomputed against the storage in this driver session

    def _adopt_orphan(self, trial_id: str) -> None:
        """Reuse an Optuna trial that a killed driver asked for but never saved in Tune's state."""
        if self._orphans is None:
            known = {t.number for t in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            self._orphans = [t._trial_id for t in running if t.number not in known]
        if self._orphans and trial_id not in self._ot_trials:
            storage_id = self._orphans.pop(0)
            trial = optuna.trial.Trial(self._ot_study, storage_id)
            old = trial.user_attrs.get(ATTR_TUNE_ID)
            if old:
                trial.set_user_attr("previous_tune_trial_id", old)
            self._ot_trials[trial_id] = trial

    def _known(self, trial_id: str) -> bool:
        """Whether the searcher holds ``trial_id``'s Optuna trial, looking it up in the storage
        when it does not: a killed driver can leave Tune's saved state with a trial that the
        searcher's saved state predates, and that trial's outcome must still reach Optuna."""
        if trial_id in self._ot_trials:
            return True
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in running:
            if t.user_attrs.get(ATTR_TUNE_ID) == trial_id:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, t._trial_id)
                if self._orphans and t._trial_id in self._orphans:
                    self._orphans.remove(t._trial_id)
                return True
        return False

    def _budget_spent(self) -> bool:
        """The study's trials are all asked for. A driver killed after Optuna recorded a trial
        but before Tune saved it restores an experiment that does not know that trial; without
        this check it would ask for one trial more than the study has."""
        total = len(self._ot_study.get_trials(deepcopy=False))
        return total >= self._num_trials

    def suggest(self, trial_id: str) -> dict | None:
        self._adopt_orphan(trial_id)
        if trial_id not in self._ot_trials and self._budget_spent():
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(ATTR_TUNE_ID, trial_id)
        try:
            cfg = from_dict(DistillConfig, {**self._base, **self._settings(config or {})})
            ot_trial.set_user_attr(ATTR_CONFIG_ID, config_id(cfg))
        except Exception:  # noqa: BLE001 - bookkeeping only
            pass
        return config

    def _settings(self, config: dict) -> dict:
        """The loop settings of a suggested trial (an ablation's: its cell's, and its seed)."""
        if names.PARAM_CELL not in config:
            return config
        cells = getattr(self, "_cells", {})  # a searcher pickled before ablations existed
        return {**cells[config[names.PARAM_CELL]], "seed": config[names.PARAM_SEED]}

    def _finished_in_storage(self, trial_id: str) -> bool:
        """A trial told before a killed driver saved Tune's state is resumed by Tune: its Optuna
        trial is already finished and keeps its outcome (the resumed run reports it again)."""
        ot_trial = self._ot_trials[trial_id]
        return ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or not self._known(trial_id):
            return
        try:
            if self._finished_in_storage(trial_id):
                return
            ot_trial = self._ot_trials[trial_id]
            if (
                result.get(names.RUN_ID)
                and ot_trial.user_attrs.get(ATTR_RUN_ID) != result[names.RUN_ID]
            ):
                ot_trial.set_user_attr(ATTR_RUN_ID, result[names.RUN_ID])
            if isinstance(self.metric, list):
                return  # a multi-objective trial takes values only when it completes
            value = result.get(self.metric)
            step = result.get(names.ITERATION, result.get("training_iteration"))
            if value is not None and value == value and result.get(names.STATUS) != names.FAILED:
                ot_trial.report(float(value), int(step))
        except Exception as exc:  # noqa: BLE001 - never take the experiment down for bookkeeping
            log.warning("optuna: could not record a result of trial %s: %s", trial_id, exc)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or not self._known(trial_id):
            return
        try:
            if not self._finished_in_storage(trial_id):
                self._tell(trial_id, result, error)
        except Exception as exc:  # noqa: BLE001 - never take the experiment down for bookkeeping
            log.warning("optuna: could not tell trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        ot_trial = self._ot_trials[trial_id]
        status, reason = outcome(result, error)
        if result and result.get(names.RUN_ID):
            ot_trial.set_user_attr(ATTR_RUN_ID, result[names.RUN_ID])
        if isinstance(self.metric, list):
            self._tell_values(ot_trial, status, reason, result or {})
            return
        ot_trial.set_user_attr(ATTR_STATUS, status)
        if reason:
            ot_trial.set_user_attr(ATTR_REASON, reason)
        value = (result or {}).get(self.metric)
        step = (result or {}).get(names.ITERATION)
        if status != names.FAILED and value is not None and value == value and step is not None:
            # the result that made the scheduler stop a trial reaches only on_trial_complete
            if int(step) not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(value), int(step))
        if status == names.COMPLETED and value is not None and value == value:
            state, values = TrialState.COMPLETE, float(value)
        elif status == names.PRUNED:
            state, values = TrialState.PRUNED, None
        else:
            state, values = TrialState.FAIL, None
        self._ot_study.tell(ot_trial, values, state=state, skip_if_finished=True)

    def _tell_values(self, ot_trial: optuna.Trial, status: str, reason: str, result: dict) -> None:
        """A multi-objective trial: COMPLETE with every objective's value, PRUNED, or FAIL (a
        completed trial without a finite value of one objective cannot be placed on a front)."""
        step = result.get(names.ITERATION)
        if step is not None:
            ot_trial.set_user_attr(ATTR_ITERATION, int(step))
        values = [result.get(m) for m in self.metric]
        missing = [m for m, v in zip(self.metric, values, strict=True) if not _finite(v)]
        if status == names.COMPLETED and missing:
            status = names.FAILED
            reason = f"completed without a finite value of {', '.join(missing)}"
        ot_trial.set_user_attr(ATTR_STATUS, status)
        if reason:
            ot_trial.set_user_attr(ATTR_REASON, reason)
        if status == names.COMPLETED:
            state, told = TrialState.COMPLETE, [float(v) for v in values]
        else:
            state, told = (TrialState.PRUNED if status == names.PRUNED else TrialState.FAIL), None
        self._ot_study.tell(ot_trial, told, state=state, skip_if_finished=True)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ read-back for the runner


def design_cells(spec: StudySpec) -> list[dict[str, Any]]:
    """An ablation's cells as plain data (``id``, ``label``, ``control``, ``settings``), in the
    design's order; none for a search study."""
    design = spec.design
    if design is None:
        return []
    return [
        {"id": c.id, "label": c.label, "control": c.control, "settings": dict(c.settings)}
        for c in design.cells
    ]


def finished_counts(spec: StudySpec) -> dict[str, int]:
    """Number of Optuna trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, ...)."""
    try:
        study = open_study(spec, create=False)
    except KeyError:
        return {}
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_configurations(spec: StudySpec, k: int) -> list[dict[str, Any]]:
    """The ``k`` best COMPLETE trials: ``[{rank, params, value, number, tune_trial_id}]``; for a
    multi-objective study, ``k`` configurations of the Pareto front (:func:`pareto_configurations`)."""
    if spec.multi_objective:
        return pareto_configurations(spec, k)
    study = open_study(spec, create=False)
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    done.sort(key=lambda t: (-t.value if spec.mode == "max" else t.value, t.number))
    return _distinct(spec, done, k, lambda t: {"value": float(t.value)})


def _distinct(
    spec: StudySpec,
    trials: Sequence[optuna.trial.FrozenTrial],
    k: int,
    fields: Callable[[optuna.trial.FrozenTrial], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The first ``k`` trials of ``trials`` with distinct configurations (identical ones count
    once, the first kept), as ``{rank, params, number, tune_trial_id, config_id}`` plus
    ``fields(trial)``."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for t in trials:
        cid = config_id(spec.trial_config(t.params))
        if cid in seen:
            continue
        seen.add(cid)
        out.append(
            {
                "rank": len(out),
                "params": dict(t.params),
                **fields(t),
                "number": t.number,
                "tune_trial_id": t.user_attrs.get(ATTR_TUNE_ID),
                "config_id": cid,
            }
        )
        if len(out) == k:
            break
    return out


def pareto_configurations(spec: StudySpec, k: int) -> list[dict[str, Any]]:
    """Up to ``k`` configurations of the search's Pareto front, spread along it.

    The COMPLETE trials' values, in trial order, go to :func:`zskt_ray.pareto.choose_reruns`:
    first the trial best in each objective (in the study file's order), then, one at a time, the
    front trial that adds the most hypervolume to those chosen. Identical configurations count
    once (the first chosen). Each entry is ``{rank, params, value (the first objective's),
    values (objective -> value), chosen (why), number, tune_trial_id, config_id}``.
    """
    study = open_study(spec, create=False)
    done = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values),
        key=lambda t: t.number,
    )
    if not done:
        return []
    metrics, modes = [o.metric for o in spec.objectives], [o.mode for o in spec.objectives]
    table = pareto.as_values([t.values for t in done], len(metrics))
    best = [table[:, j].max() if m == "max" else table[:, j].min() for j, m in enumerate(modes)]
    index = {t.number: i for i, t in enumerate(done)}

    def fields(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        i = index[t.number]
        extreme = [m for j, m in enumerate(metrics) if table[i, j] == best[j]]
        return {
            "value": float(t.values[0]),
            "values": dict(zip(metrics, map(float, t.values), strict=True)),
            "chosen": f"best {', '.join(extreme)}" if extreme else "hypervolume",
        }

    order = [done[i] for i in pareto.choose_reruns(table, modes, len(done))]
    return _distinct(spec, order, k, fields)


def fail_orphans(spec: StudySpec, live_tune_ids: set[str]) -> list[str]:
    """After a search: Optuna trials still RUNNING belong to no Tune trial; mark them FAIL."""
    study = open_study(spec, create=False)
    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(ATTR_TUNE_ID) in live_tune_ids:
            continue
        study._storage.set_trial_user_attr(t._trial_id, ATTR_STATUS, names.FAILED)
        study._storage.set_trial_user_attr(
            t._trial_id, ATTR_REASON, "orphaned: the driver stopped before the trial was saved"
        )
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        orphans.append(str(t.user_attrs.get(ATTR_TUNE_ID)))
    return orphans


def finished_trials(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Tune trial id -> ``{status, reason, values, iteration, run_id}`` of each finished trial
    (``values``: objective -> value, empty for a trial without values).

    The runner reconciles a restored Tune experiment against these (Optuna's record wins over a
    Tune state saved before the trial ended).
    """
    try:
        study = open_study(spec, create=False)
    except KeyError:
        return {}
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    default = {
        TrialState.COMPLETE: names.COMPLETED,
        TrialState.PRUNED: names.PRUNED,
        TrialState.FAIL: names.FAILED,
    }
    metrics = [o.metric for o in spec.objectives]
    out: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=states):
        tune_id = t.user_attrs.get(ATTR_TUNE_ID)
        if not tune_id:
            continue
        values = dict(zip(metrics, t.values, strict=True)) if t.values else {}
        out[str(tune_id)] = {
            "status": t.user_attrs.get(ATTR_STATUS) or default[t.state],
            "reason": t.user_attrs.get(ATTR_REASON, ""),
            "values": values,
            "iteration": max(t.intermediate_values, default=t.user_attrs.get(ATTR_ITERATION, 0)),
            "run_id": t.user_attrs.get(ATTR_RUN_ID),
        }
    return out
