"""Study files: YAML -> a checked, resolved :class:`StudySpec`.

A study file names a data set, a teacher, a student, the fixed loop settings, a search space over
any :class:`~zskt_ray.config.DistillConfig` field, the objective, trials and resources, the
scheduler, the final seeded re-runs, and where results and tracking live. Reading it is four jobs,
one module each:

- :mod:`.reading`: the file as YAML (UTF-8, every key once, not empty);
- :mod:`.schema` and :mod:`.errors`: the declared keys, types, bounds and defaults, and every
  mistake as one line ``FILE: key: message`` (:class:`StudyError`), all of them at once;
- :mod:`.resolve` (with :mod:`.stores`): what the file leaves to be derived, and the rules that
  relate several keys;
- :mod:`.preflight`: the study against what exists (teacher file, data files, resources).

:class:`StudySpec` is the schema's own model with every value resolved; ``study.yaml`` (logged on
the study's MLflow run) is its dump. Nothing here creates a file, a folder, a store or a Ray
session. This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from operator import attrgetter
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from ..config import DistillConfig, KDATConfig, TeacherConfig, from_dict, to_dict
from ..names import KIND_ABLATION, KIND_FINAL, KIND_KDAT, KIND_SEARCH, SECTION_ABLATION
from ..paths import url_scheme
from . import resolve
from .design import Design
from .errors import Problems, StudyError, validate
from .objectives import Objective
from .objectives import of as objectives_of
from .preflight import preflight
from .reading import read_study_file
from .schema import MANAGED_FIELDS, MTESection, StudyFile
from .stores import locations

__all__ = [
    "MANAGED_FIELDS",
    "StudyError",
    "StudySpec",
    "config_id",
    "load_spec",
    "locations",
    "parse_spec",
    "preflight",
    "read_study_file",
]

# Fields that do not change what a run computes (left out of config_id together with the seed).
_NOT_IN_CONFIG_ID = ("seed", "data_root", "download", "teacher_path", "device", "eval_batch_size")
# Fields added after configuration ids were first stored: left out of config_id at their default,
# so that the id of a configuration that does not use them is the one written before they existed.
_ADDED_FIELDS = (
    "precision",
    "adversarial_discrepancy",
    "student_discrepancy",
    "prior_bn",
    "prior_onehot",
    "prior_entropy",
)
_ADDED_DEFAULTS = {name: getattr(DistillConfig(), name) for name in _ADDED_FIELDS}
# Loop settings added after search fingerprints were first stored: left out of the fingerprint at
# their default, so that a study stored before they existed still resumes (a new DistillConfig
# field is a key of every study's loop section, and study.yaml shows it).
_ADDED_AFTER_FINGERPRINTS = _ADDED_FIELDS[1:]


class StudySpec(StudyFile):
    """A checked study: the study file's model with every default and derived value filled in.

    Read any key as ``spec.<section>.<key>``. The properties below derive what the runner needs
    (loop configs, Tune folders, resources per phase); a few name often-read keys directly.
    """

    _source: str = PrivateAttr("")

    @classmethod
    def of(cls, resolved: StudyFile, source: str = "") -> StudySpec:
        """The spec of a resolved study (:func:`.resolve.resolve`); ``source`` names its file."""
        spec = cls.model_validate(resolved.model_dump())
        spec._source = source
        return spec

    # -------------------------------------------------------------- often-read keys

    tracking_uri = property(attrgetter("mlflow.tracking_uri"))
    experiment = property(attrgetter("mlflow.experiment"))
    optuna_storage = property(attrgetter("storage.optuna"))
    storage_path = property(attrgetter("storage.path"))
    storage_shared = property(attrgetter("storage.shared"))
    num_trials = property(attrgetter("search.num_trials"))
    scheduler = property(attrgetter("search.scheduler"))
    gpus_per_trial = property(attrgetter("resources.gpus_per_trial"))
    student_arch = property(attrgetter("student.arch"))
    mte_search = property(attrgetter("evaluation.mte_search"))
    mte_final = property(attrgetter("evaluation.mte_final"))

    @property
    def final_seeds(self) -> tuple[int, ...]:
        return tuple(self.final.seeds)

    # -------------------------------------------------------------- objectives

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """The search's objectives in the file's order: ``search.metric`` alone, or
        ``search.objectives`` (a multi-objective study)."""
        return objectives_of(self.search)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metric(self) -> str:
        """The primary objective: ``search.metric``, or the first of ``search.objectives``."""
        return self.objectives[0].metric

    @property
    def mode(self) -> str:
        return self.objectives[0].mode

    @property
    def scheduler_metric(self) -> Objective:
        """The metric (and its mode) the scheduler judges trials on."""
        chosen = self.scheduler.metric or self.metric
        return next(o for o in self.objectives if o.metric == chosen)

    # -------------------------------------------------------------- derived

    @property
    def source(self) -> str:
        """The file the study came from ("" for a study given as a mapping)."""
        return self._source

    @property
    def raw(self) -> dict[str, Any]:
        """The resolved study as plain YAML-able data (logged as ``study.yaml``); a search study
        has no ablation key."""
        return self.model_dump(exclude={SECTION_ABLATION} if self.ablation is None else None)

    @property
    def device(self) -> str:
        return resolve.device(self)

    @property
    def base(self) -> DistillConfig:
        """Loop settings shared by every trial (searched ones at their default)."""
        return resolve.base_config(self)

    @property
    def space(self) -> tuple[Any, ...]:
        """The searched parameters, in file order; each knows its ``name``."""
        return tuple(self.search.space.values())

    @property
    def trial_kind(self) -> str:
        """The kind of the study's Optuna-driven trials: search trials, or the runs of an
        ablation (a grid over cells and seeds, measured on test)."""
        return KIND_SEARCH if self.ablation is None else KIND_ABLATION

    @property
    def design(self) -> Design | None:
        """The ablation's cells, runs and comparisons (None for a search study)."""
        return resolve.ablation_design(self) if self.ablation is not None else None

    @property
    def study_dir(self) -> str:
        """The study's folder under the storage (a local path or a URL): its Tune experiments."""
        return _join(self.storage.path, self.name)

    def tune_dir(self, kind: str) -> str:
        """The Tune experiment of one phase (``search`` or ``ablation``, ``final``, ``kdat``)."""
        return _join(self.study_dir, kind)

    @property
    def experiment_dir(self) -> str:
        """The Tune experiment of the search, or of the ablation's runs."""
        return self.tune_dir(self.trial_kind)

    @property
    def final_dir(self) -> str:
        return self.tune_dir(KIND_FINAL)

    @property
    def kdat_dir(self) -> str:
        return self.tune_dir(KIND_KDAT)

    def trial_resources(self, kind: str) -> dict[str, float]:
        """Ray resources of one trial of a phase: the search's (or ablation's) CPUs, or the final
        re-runs' (which the KD+AT baseline shares); the GPU share is the same for all."""
        own = kind in (KIND_SEARCH, KIND_ABLATION)
        cpus = self.resources.cpus_per_trial if own else self.final.cpus_per_trial
        return {"cpu": cpus, "gpu": self.resources.gpus_per_trial}

    def mte(self, kind: str) -> MTESection:
        """The MTE settings of a phase: cheap for search trials, the paper's for the rest (an
        ablation's runs are measurements: they get the final MTE)."""
        return self.evaluation.mte_search if kind == KIND_SEARCH else self.evaluation.mte_final

    def trial_config(
        self, params: Mapping[str, Any], seed: int | None = None, iterations: int | None = None
    ) -> DistillConfig:
        """The loop config of a trial: base settings with searched ``params`` (and a seed)."""
        values = to_dict(self.base)
        values.update(params)
        if seed is not None:
            values["seed"] = seed
        if iterations is not None:
            values["iterations"] = iterations
        return from_dict(DistillConfig, values)

    def kdat_config(self, seed: int) -> KDATConfig:
        return resolve.kdat_config(self, seed)

    def teacher_config(self) -> TeacherConfig:
        return resolve.teacher_config(self)

    def fingerprint(self) -> str:
        """Hash of everything that defines the search or the ablation (a resumed study must
        match it; a search study's hash is the one written before ablations existed)."""
        keys = {"dataset", "teacher", "student", "loop", "search", "seed"}
        blob = self.model_dump(
            include=keys if self.ablation is None else {*keys, SECTION_ABLATION},
            exclude={
                "teacher": {"train_if_missing", "resources"},
                "search": {"num_trials", "max_failures"},
            },
        )
        for key in _ADDED_AFTER_FINGERPRINTS:
            if key in blob["loop"] and blob["loop"][key] == _ADDED_DEFAULTS[key]:
                del blob["loop"][key]
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def config_id(cfg: DistillConfig | Mapping[str, Any]) -> str:
    """Short stable hash of a loop config without its seed: seed re-runs share it."""
    values = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    for key in _NOT_IN_CONFIG_ID:
        values.pop(key, None)
    for key, default in _ADDED_DEFAULTS.items():
        if key in values and values[key] == default:
            values.pop(key)  # ids written before the field existed stay valid
    for key, value in list(values.items()):
        if isinstance(value, float) and value.is_integer():
            values[key] = int(value)  # 250 and 250.0 are one configuration
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def _join(base: str, *parts: str) -> str:
    if url_scheme(base) is not None:
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


# ------------------------------------------------------------------ reading


def load_spec(path: str | Path, smoke: bool = False, num_trials: int | None = None) -> StudySpec:
    """Read and check a study file; a :class:`StudyError` names the file and each key."""
    data = read_study_file(path)
    return parse_spec(data, source=str(Path(path).resolve()), smoke=smoke, num_trials=num_trials)


def parse_spec(
    data: Any, source: str = "", smoke: bool = False, num_trials: int | None = None
) -> StudySpec:
    """Check a study mapping (``source`` names the file in errors) and resolve its defaults.

    ``smoke`` makes the quick version of the study (:func:`.resolve.smoke_version`) after the file
    itself passed its checks, so that a mistake in the file is reported against the file.
    ``num_trials`` replaces ``search.num_trials`` (``--num-trials``).
    """
    problems = Problems(source or "study")
    study = validate(data, problems)
    if smoke:
        full = resolve.resolve(study, problems)
        quick = resolve.smoke_version(full, keep_optuna=study.storage.optuna is not None)
        return parse_spec(quick, source=source, num_trials=num_trials)
    if num_trials is not None:
        if num_trials < 1:
            problems.add("--num-trials", f"must be >= 1, got {num_trials}")
            problems.raise_if_any()
        search = study.search.model_copy(update=dict(num_trials=num_trials))
        study = study.model_copy(update=dict(search=search))
    return StudySpec.of(resolve.resolve(study, problems), source)
