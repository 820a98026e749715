"""Study files: YAML -> a checked, typed :class:`StudySpec`.

A study file names a data set, a teacher, a student, the fixed loop settings, a search space over
any :class:`~zskt_ray.config.DistillConfig` field, the objective, trials and resources, the
scheduler, the final seeded re-runs, and where results and tracking live. Its schema is declared in
:mod:`.schema` (pydantic models mirroring the YAML); this module reads the file (UTF-8, duplicate
keys refused), checks the rules that relate several keys, resolves defaults, and reports every
mistake it finds as one line ``FILE: key: message`` (:class:`StudyError`), all of them at once.
:func:`preflight` then checks the study against what exists: teacher file, data files, resources.
Nothing here creates a file, a folder, a store or a Ray session.

This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pydantic
import yaml

from ..config import DistillConfig, KDATConfig, TeacherConfig, from_dict, to_dict
from ..data import DATASETS
from ..models import parse_arch
from ..names import MINIMISED, OPTUNA_DB, OPTUNA_JOURNAL
from ..paths import default_studies_dir, default_teacher_path, default_tracking_uri
from . import schema
from .schema import KDAT_MANAGED, LOOP_FIELDS, MANAGED_FIELDS, TEACHER_MANAGED, StudyFile

__all__ = [
    "MANAGED_FIELDS",
    "ParamSpec",
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
_LOOP_TYPES = {name: type(getattr(DistillConfig(), name)) for name in LOOP_FIELDS}
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")
JOURNAL_SCHEME = "journal://"  # storage.optuna: an Optuna journal file, e.g. on NFS


class StudyError(ValueError):
    """Problems with a study: one line each, naming the file and the key."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ------------------------------------------------------------------ the checked study


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: ``int`` / ``float`` (bounds, log, step) or ``categorical``."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def extremes(self) -> list[Any]:
        """The values that bound the parameter: each must give a valid loop config."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    arch: str
    path: str  # absolute
    train_if_missing: bool
    seed: int
    overrides: dict[str, Any]  # TeacherConfig overrides (e.g. epochs) for training when missing

    def teacher_config(
        self, dataset: str, data_root: str, download: bool, device: str
    ) -> TeacherConfig:
        return TeacherConfig.recipe(
            dataset,
            self.arch,
            data_root=data_root,
            download=download,
            seed=self.seed,
            device=device,
            **self.overrides,
        )


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    type: str  # "asha" | "none"
    grace_period: int = 0  # iterations of the loop
    reduction_factor: float = 3.0


@dataclasses.dataclass(frozen=True)
class MTESpec:
    k: int
    xi: float
    n_test: int
    enabled: bool = True


@dataclasses.dataclass(frozen=True)
class KDATSpec:
    enabled: bool
    seeds: tuple[int, ...]
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A checked study. ``base`` holds the loop settings shared by every trial."""

    name: str
    description: str
    source: str  # the file it came from ("" for dict specs)
    dataset: str
    data_root: str  # absolute
    download: bool
    teacher: TeacherSpec
    student_arch: str
    base: DistillConfig  # fixed loop settings, device decided by resources
    space: tuple[ParamSpec, ...]
    metric: str
    mode: str
    num_trials: int
    max_concurrent: int
    sampler: str  # "tpe" | "grid" | "random"
    sampler_seed: int
    n_startup_trials: int
    scheduler: SchedulerSpec
    max_failures: int
    cpus_per_trial: float
    gpus_per_trial: float
    final_top_k: int
    final_seeds: tuple[int, ...]
    final_iterations: int
    final_max_concurrent: int
    final_cpus_per_trial: float
    mte_search: MTESpec
    mte_final: MTESpec
    image_grids: int
    kdat: KDATSpec
    storage_path: str  # Tune results: absolute local dir or a URI such as s3://bucket/prefix
    storage_shared: bool  # the study file declares a local storage_path shared by all nodes
    optuna_storage: str  # an SQLAlchemy URL or journal:///abs/path
    tracking_uri: str
    experiment: str
    raw: dict[str, Any]  # the resolved study, as YAML-able dict (logged as study.yaml)

    # -------------------------------------------------------------- derived

    @property
    def experiment_dir(self) -> str:
        """Tune experiment of the search (under storage_path)."""
        return _join(self.storage_path, self.name, "search")

    @property
    def final_dir(self) -> str:
        return _join(self.storage_path, self.name, "final")

    @property
    def kdat_dir(self) -> str:
        return _join(self.storage_path, self.name, "kdat")

    @property
    def device(self) -> str:
        return self.base.device

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
        values = {
            "dataset": self.dataset,
            "data_root": self.data_root,
            "download": self.download,
            "teacher_arch": self.teacher.arch,
            "teacher_path": self.teacher.path,
            "student_arch": self.student_arch,
            "device": self.device,
            "seed": seed,
            **self.kdat.overrides,
        }
        return from_dict(KDATConfig, values)

    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def fingerprint(self) -> str:
        """Hash of everything that defines the search (a resumed study must match it)."""
        keys = ("dataset", "teacher", "student", "loop", "search", "seed")
        blob = {k: self.raw.get(k) for k in keys}
        blob["teacher"] = {
            k: v for k, v in (blob["teacher"] or {}).items() if k != "train_if_missing"
        }
        blob["search"] = {
            k: v
            for k, v in (blob["search"] or {}).items()
            if k not in ("num_trials", "max_failures")
        }
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
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


# ------------------------------------------------------------------ reading the file


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:
            continue  # an unhashable key: the constructor reports it
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first}, again on line "
                f"{key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def read_study_file(path: str | Path) -> Any:
    """The YAML of a study file; a :class:`StudyError` for a missing, non-UTF-8 or broken file."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(
            f"study file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StudyError(
            f"{path.resolve()}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save the study file as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise StudyError(f"{path.resolve()}: not valid YAML: {problem}{where}") from None


def load_spec(path: str | Path, smoke: bool = False, num_trials: int | None = None) -> StudySpec:
    """Read and check a study file; a :class:`StudyError` names the file and each key."""
    data = read_study_file(path)
    return parse_spec(data, source=str(Path(path).resolve()), smoke=smoke, num_trials=num_trials)


# ------------------------------------------------------------------ checking


class _Problems:
    """Collects one-line problems ``LABEL: key: message``; raises them all at the end."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.lines.append(f"{self.label}: {key}: {message}" if key else f"{self.label}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise StudyError(list(dict.fromkeys(self.lines)))


def parse_spec(
    data: Any, source: str = "", smoke: bool = False, num_trials: int | None = None
) -> StudySpec:
    """Check a study mapping (``source`` names the file in errors) and resolve its defaults.

    ``smoke`` makes the quick version of the study (:func:`smoke_version`) after the file itself
    passed its checks, so that a mistake in the file is reported against the file.
    """
    problems = _Problems(source or "study")
    study = _validate(data, problems)
    spec = _build(study, source, problems)
    if smoke:
        quick = smoke_version(spec.raw)
        if study.storage.optuna:  # a declared Optuna storage holds the smoke study too
            quick["storage"]["optuna"] = spec.optuna_storage
        return parse_spec(quick, source=source, num_trials=num_trials)
    if num_trials is not None:
        if num_trials < 1:
            problems.add("--num-trials", f"must be >= 1, got {num_trials}")
            problems.raise_if_any()
        spec = dataclasses.replace(spec, num_trials=num_trials)
        _check_grid(spec, problems)
        problems.raise_if_any()
        spec = dataclasses.replace(spec, raw=_resolved_dict(spec))
    return spec


def _validate(data: Any, problems: _Problems) -> StudyFile:
    """The file against the declared schema; every schema error is reported."""
    if not isinstance(data, Mapping):
        problems.add("", f"expected a mapping of study keys, got {type(data).__name__}")
        problems.raise_if_any()
    data = {
        **{k: {} for k in schema.SECTIONS if data.get(k) is None},
        **{k: v for k, v in data.items() if v is not None or k not in schema.SECTIONS},
    }
    try:
        return StudyFile.model_validate(data)
    except pydantic.ValidationError as e:
        for error in e.errors():
            problems.add(*_describe(error))
    problems.raise_if_any()
    raise AssertionError("unreachable")  # pragma: no cover


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUND_WORDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}
_PARAM_TAGS = ("int", "float", "categorical")


def _dotted(loc: tuple[Any, ...]) -> str:
    """``('search', 'space', 'n_s', 'int', 'low')`` -> ``search.space.n_s.low``."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i == 3 and loc[1] == "space" and part in _PARAM_TAGS:
            continue  # the discriminated union's branch, not a key of the file
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed where an unknown key sits (for a suggestion)."""
    model: Any = StudyFile
    for part in loc[:-1]:
        if model is None:
            return []
        if part in _PARAM_TAGS and model is dict:
            model = {"int": schema.IntParam, "float": schema.FloatParam}.get(
                part, schema.CategoricalParam
            )
            continue
        if model is dict:
            continue  # a searched parameter's name
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
            else dict
        )
    return list(model.model_fields) if isinstance(model, type) and model is not dict else []


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, message)`` of a pydantic error, worded like the rest of the project."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _dotted(loc)
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        section, name = (loc[0] if len(loc) > 1 else ""), loc[-1]
        if section == "loop" and name in MANAGED_FIELDS:
            return key, (
                "set by the study's top-level keys (dataset, data_root, download, teacher, "
                "student, resources), not in loop"
            )
        if section == "loop" and name == "seed":
            return key, "use the study's top-level seed (search) and final.seeds (re-runs)"
        if loc[:2] == ("teacher", "train") and name in TEACHER_MANAGED:
            return key, "set by the study, not here"
        if loc[:2] == ("kdat", "config") and name in KDAT_MANAGED:
            return key, "set by the study, not here"
        known = _known_keys(loc)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if known:
            hint += f" (known: {', '.join(known)})" if not close else ""
        return "", f"unknown key {key}{hint}"
    if kind == "missing":
        return "", f"missing key {key}"
    if kind in _TYPE_WORDS:
        return key, f"expected {_TYPE_WORDS[kind]}, got {_show(value)}"
    if kind == "finite_number":
        return key, f"must be a finite number, got {_show(value)}"
    if kind in _BOUND_WORDS:
        name, sign = _BOUND_WORDS[kind]
        return key, f"must be {sign} {ctx.get(name)}, got {_show(value)}"
    if kind == "literal_error":
        return key, f"must be {ctx.get('expected')}, got {_show(value)}"
    if kind == "union_tag_invalid":
        return f"{key}.type", f"must be 'int', 'float' or 'categorical', got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        return f"{key}.type", "missing: 'int', 'float' or 'categorical'"
    message = str(error.get("msg", ""))
    return key, message.removeprefix("Value error, ")


def _show(value: Any) -> str:
    text = repr(value)
    if isinstance(value, Mapping | list):
        return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
    if isinstance(value, str):
        return text[:80] + ("..." if len(text) > 80 else "")
    return text


def _build(study: StudyFile, source: str, problems: _Problems) -> StudySpec:
    """The checked file -> a :class:`StudySpec`; cross-key rules, all problems collected."""
    dataset = study.dataset
    if dataset not in DATASETS:
        problems.add("dataset", f"unknown data set {dataset!r} (known: {', '.join(DATASETS)})")
    teacher_arch = _arch(study.teacher.arch, "teacher.arch", problems)
    student_arch = _arch(study.student.arch, "student.arch", problems)
    data_root = str(Path(study.data_root).expanduser().resolve())
    teacher = _teacher(study, dataset, teacher_arch, problems)
    res = study.resources
    device = "cuda" if res.gpus_per_trial > 0 else "cpu"
    loop = study.loop.model_dump(exclude_none=True)
    # Rules below relate keys to the loop settings: without a valid data set, pair and loop they
    # would only repeat the first mistake in other words.
    problems.raise_if_any()
    base = _distill(
        {
            **loop,
            "dataset": dataset,
            "data_root": data_root,
            "download": study.download,
            "teacher_arch": teacher_arch,
            "teacher_path": teacher.path,
            "student_arch": student_arch,
            "device": device,
            "seed": study.seed,
        },
        "loop",
        problems,
    )
    problems.raise_if_any()
    space = tuple(
        _param(name, param, loop, base, problems) for name, param in study.search.space.items()
    )
    search = study.search
    metric = search.metric
    mode = search.mode or ("min" if metric in MINIMISED else "max")
    natural = "min" if metric in MINIMISED else "max"
    if mode != natural:
        problems.add(
            "search.mode",
            f"{metric} is {'minimised' if natural == 'min' else 'maximised'}: use mode: {natural} "
            "(or leave mode out)",
        )
    if not space and search.num_trials > 1:
        problems.add("search.space", "empty; give at least one parameter (or num_trials: 1)")
    scheduler = _scheduler(search.scheduler, base, problems)
    storage_path, storage_shared, optuna_url = _storage(study, problems)
    tracking_uri = _tracking_uri(study.mlflow.tracking_uri, problems)
    experiment = study.mlflow.experiment or study.name
    _check_experiment(experiment, problems)
    final = study.final
    if final.top_k > 0 and not final.seeds:
        problems.add("final.seeds", "empty while final.top_k > 0")
    mte = study.evaluation
    kd = study.kdat
    if kd.enabled and not kd.seeds:
        problems.add("kdat.seeds", "empty while kdat.enabled is true")
    problems.raise_if_any()

    spec = StudySpec(
        name=study.name,
        description=study.description,
        source=source,
        dataset=dataset,
        data_root=data_root,
        download=study.download,
        teacher=teacher,
        student_arch=student_arch,
        base=base,
        space=space,
        metric=metric,
        mode=mode,
        num_trials=search.num_trials,
        max_concurrent=res.max_concurrent,
        sampler=search.sampler,
        sampler_seed=search.sampler_seed,
        n_startup_trials=search.n_startup_trials,
        scheduler=scheduler,
        max_failures=search.max_failures,
        cpus_per_trial=res.cpus_per_trial,
        gpus_per_trial=res.gpus_per_trial,
        final_top_k=final.top_k,
        final_seeds=tuple(final.seeds),
        final_iterations=final.iterations or base.iterations,
        final_max_concurrent=final.max_concurrent or res.max_concurrent,
        final_cpus_per_trial=final.cpus_per_trial or res.cpus_per_trial,
        mte_search=_mte(mte.mte_search, MTESpec(10, 1.0, 100)),
        mte_final=_mte(mte.mte_final, MTESpec(100, 1.0, 1000)),
        image_grids=mte.image_grids,
        kdat=KDATSpec(
            kd.enabled, tuple(kd.seeds), _tuples(kd.config.model_dump(exclude_none=True))
        ),
        storage_path=storage_path,
        storage_shared=storage_shared,
        optuna_storage=optuna_url,
        tracking_uri=tracking_uri,
        experiment=experiment,
        raw={},
    )
    _check_grid(spec, problems)
    if kd.enabled:
        try:
            spec.kdat_config(kd.seeds[0])
        except (KeyError, TypeError, ValueError) as e:
            problems.add("kdat.config", e.args[0] if isinstance(e, KeyError) else str(e))
    problems.raise_if_any()
    return dataclasses.replace(spec, raw=_resolved_dict(spec))


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _arch(value: str, key: str, problems: _Problems) -> str:
    try:
        parse_arch(value)
    except ValueError as e:
        problems.add(key, str(e))
    return value.strip().lower()


def _teacher(study: StudyFile, dataset: str, arch: str, problems: _Problems) -> TeacherSpec:
    section = study.teacher
    path = (
        Path(section.path).expanduser().resolve()
        if section.path
        else default_teacher_path(dataset, arch, section.seed)
    )
    overrides = _tuples(section.train.model_dump(exclude_none=True))
    if overrides and dataset in DATASETS:
        try:
            TeacherConfig.recipe(dataset, arch, **overrides)
        except (TypeError, ValueError) as e:
            problems.add("teacher.train", str(e))
    return TeacherSpec(arch, str(path), section.train_if_missing, section.seed, overrides)


def _distill(values: dict[str, Any], where: str, problems: _Problems) -> DistillConfig:
    """A DistillConfig from ``values``; its own checks name the field. Defaults on failure."""
    try:
        return from_dict(DistillConfig, values)
    except (KeyError, TypeError, ValueError) as e:
        problems.add(where, e.args[0] if isinstance(e, KeyError) else str(e))
    return DistillConfig()


def _param(
    name: str, param: Any, loop: Mapping[str, Any], base: DistillConfig, problems: _Problems
) -> ParamSpec:
    key = f"search.space.{name}"
    if name in MANAGED_FIELDS or name == "seed":
        problems.add(key, f"{name} cannot be searched")
    elif name not in LOOP_FIELDS:
        close = difflib.get_close_matches(name, LOOP_FIELDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.add(key, f"unknown loop setting ({hint}searchable: {', '.join(LOOP_FIELDS)})")
    elif name in loop:
        problems.add(key, f"also fixed in loop.{name}; keep one of them")
    if param.type == "categorical":
        spec = ParamSpec(name, "categorical", choices=tuple(param.choices))
    else:
        spec = ParamSpec(name, param.type, param.low, param.high, param.log, param.step)
    want = _LOOP_TYPES.get(name)
    if want is None or name in loop:
        return spec
    if param.type in ("int", "float") and want.__name__ != param.type:
        alternative = {"int": "int", "float": "float"}.get(want.__name__, "categorical")
        problems.add(f"{key}.type", f"{name} is a {want.__name__} setting; use type: {alternative}")
        return spec
    for value in spec.extremes():  # every bound must give a valid loop config on its own
        try:
            from_dict(DistillConfig, {**to_dict(base), name: value})
            schema.LoopSection.model_validate({name: value})
        except (TypeError, ValueError) as e:
            errors = e.errors() if isinstance(e, pydantic.ValidationError) else None
            problems.add(key, f"{name} {_describe(errors[0])[1]}" if errors else str(e))
    return spec


def _scheduler(
    section: schema.SchedulerSection, base: DistillConfig, problems: _Problems
) -> SchedulerSpec:
    grace = section.grace_period or max(base.eval_every, base.iterations // 4)
    if section.type == "asha":
        if grace > base.iterations:
            problems.add(
                "search.scheduler.grace_period",
                f"must be in [1, loop.iterations={base.iterations}], got {grace}",
            )
        elif grace < base.eval_every:
            problems.add(
                "search.scheduler.grace_period",
                f"{grace} is shorter than loop.eval_every={base.eval_every}, no result would "
                "exist to decide on",
            )
    return SchedulerSpec(section.type, grace, section.reduction_factor)


def _check_grid(spec: StudySpec, problems: _Problems) -> None:
    if spec.sampler != "grid":
        return
    ranges = [p.name for p in spec.space if p.type != "categorical"]
    for name in ranges:
        problems.add(f"search.space.{name}", "the grid sampler needs categorical choices")
    cells = math.prod(len(p.choices) for p in spec.space)
    if not ranges and spec.num_trials != cells:
        problems.add(
            "search.num_trials", f"the grid has {cells} cells, num_trials is {spec.num_trials}"
        )


def _mte(section: schema.MTESection, default: MTESpec) -> MTESpec:
    return MTESpec(
        section.k if section.k is not None else default.k,
        section.xi if section.xi is not None else default.xi,
        section.n_test if section.n_test is not None else default.n_test,
        section.enabled if section.enabled is not None else default.enabled,
    )


# ------------------------------------------------------------------ where things live


def _storage(study: StudyFile, problems: _Problems) -> tuple[str, bool, str]:
    """``(storage_path, shared, optuna_url)``: resolved, schemes checked."""
    from_env = not study.storage.path and os.environ.get("ZSKT_STORAGE")
    key = "$ZSKT_STORAGE" if from_env else "storage.path"
    path = study.storage.path or os.environ.get("ZSKT_STORAGE") or str(default_studies_dir())
    if "://" in path:
        scheme = path.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            problems.add(
                key,
                f"unknown storage scheme {scheme!r} in {path!r} (a local folder, or one of "
                f"{', '.join(s + '://' for s in STORAGE_SCHEMES)})",
            )
        elif scheme != "file" and not urlparse(path).netloc:
            problems.add(key, f"{path!r} names no bucket (expected {scheme}://bucket/prefix)")
    else:
        path = str(Path(path).expanduser().resolve())
        if Path(path).exists() and not Path(path).is_dir():
            problems.add(key, f"{path} exists and is not a folder")
    # storage.shared, else $ZSKT_STORAGE_SHARED (cluster/slurm.sbatch: $ZSKT_STORAGE is on the
    # file system every node mounts)
    shared = (
        study.storage.shared
        if "shared" in study.storage.model_fields_set
        else os.environ.get("ZSKT_STORAGE_SHARED", "").lower() in ("1", "true", "yes")
    )
    if study.storage.optuna:
        optuna = _optuna_url(study.storage.optuna, problems)
    elif shared and "://" not in path:
        # a journal file is Optuna's storage for shared file systems (NFS): no database server
        optuna = f"{JOURNAL_SCHEME}{Path(path, study.name, OPTUNA_JOURNAL)}"
    else:
        local = path if "://" not in path else str(default_studies_dir())
        optuna = f"sqlite:///{Path(local, study.name, OPTUNA_DB)}"
    return path, shared, optuna


def _optuna_url(url: str, problems: _Problems) -> str:
    """An SQLAlchemy database URL or ``journal:///abs/path`` (a journal file, e.g. on NFS)."""
    if "://" not in url:
        problems.add(
            "storage.optuna",
            f"expected a database URL such as sqlite:////abs/optuna.db or a journal file "
            f"journal:////abs/optuna.journal, got {url!r}",
        )
        return url
    if url.lower().startswith(JOURNAL_SCHEME):
        path = url.split("://", 1)[1]
        if not path.startswith("/") or path == "/":
            problems.add(
                "storage.optuna",
                f"a journal file needs an absolute path (journal:////abs/file), got {url!r}",
            )
            return url
        return f"{JOURNAL_SCHEME}{Path(path).expanduser().resolve()}"
    return _database_url(url, "storage.optuna", problems)


def _database_url(url: str, key: str, problems: _Problems) -> str:
    """Parse with SQLAlchemy's own parser; sqlite paths made absolute (not cwd-relative)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        scheme = url.split("://", 1)[0]
        problems.add(
            key,
            f"not a usable database URL ({scheme!r}: {str(e).splitlines()[0][:120]}); "
            f"known kinds: {', '.join(DATABASE_SCHEMES)}",
        )
        return url
    if parsed.get_backend_name() == "sqlite":
        if parsed.host:
            problems.add(key, f"sqlite URLs have no host: use sqlite:////abs/path.db, got {url!r}")
            return url
        if not parsed.database or parsed.database == ":memory:":
            problems.add(
                key, f"an in-memory sqlite database keeps nothing: give a file, got {url!r}"
            )
            return url
        return f"sqlite:///{Path(parsed.database).expanduser().resolve()}"
    return url


def _tracking_uri(uri: str | None, problems: _Problems) -> str:
    key = "mlflow.tracking_uri" if uri else "$MLFLOW_TRACKING_URI"
    uri = uri or default_tracking_uri()
    if "://" not in uri:
        problems.add(
            key,
            f"expected a URI (sqlite:////abs/mlflow.db, http://host:5000), got {uri!r}",
        )
        return uri
    scheme = uri.split("://", 1)[0].lower()
    backend = scheme.split("+", 1)[0]
    if backend not in TRACKING_SCHEMES:
        close = difflib.get_close_matches(backend, TRACKING_SCHEMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.add(
            key,
            f"unknown scheme {scheme!r}{hint}; MLflow tracks to {', '.join(TRACKING_SCHEMES)}",
        )
        return uri
    if backend in ("http", "https"):
        if not urlparse(uri).hostname:
            problems.add(key, f"{uri!r} names no host")
        return uri
    if backend in DATABASE_SCHEMES:
        return _database_url(uri, key, problems)
    return uri


def _check_experiment(name: str, problems: _Problems) -> None:
    if not name or len(name) > 200 or any(not c.isprintable() for c in name):
        problems.add(
            "mlflow.experiment",
            f"{name[:60]!r} must be 1 to 200 printable characters",
        )


def locations(data: Any, smoke: bool = False) -> dict[str, str | None]:
    """Name, tracking URI, experiment and Optuna storage of a study mapping, resolved as a run
    resolves them, for a file that may not pass today's checks (its runs can still be read)."""
    data = data if isinstance(data, Mapping) else {}
    name = data.get("name") if isinstance(data.get("name"), str) else None
    ml = data.get("mlflow") if isinstance(data.get("mlflow"), Mapping) else {}
    st = data.get("storage") if isinstance(data.get("storage"), Mapping) else {}
    suffix = "-smoke" if smoke else ""
    if name:
        name += suffix
    experiment = ml.get("experiment")
    experiment = f"{experiment}{suffix}" if isinstance(experiment, str) and experiment else name
    path = st.get("path") or os.environ.get("ZSKT_STORAGE") or str(default_studies_dir())
    local = str(default_studies_dir()) if "://" in str(path) else path
    optuna = st.get("optuna") or (
        f"sqlite:///{Path(str(local)).expanduser().resolve() / str(name) / OPTUNA_DB}"
        if name
        else None
    )
    return {
        "name": name,
        "tracking_uri": ml.get("tracking_uri") or default_tracking_uri(),
        "experiment": experiment,
        "optuna_storage": optuna,
    }


def _resolved_dict(spec: StudySpec) -> dict[str, Any]:
    """The study with every default filled in (what ``study.yaml`` in MLflow shows)."""
    searched = {p.name for p in spec.space}
    loop = {k: v for k, v in to_dict(spec.base).items() if k in LOOP_FIELDS and k not in searched}
    return {
        "name": spec.name,
        "description": spec.description,
        "dataset": spec.dataset,
        "data_root": spec.data_root,
        "download": spec.download,
        "seed": spec.base.seed,
        "teacher": {
            "arch": spec.teacher.arch,
            "path": spec.teacher.path,
            "train_if_missing": spec.teacher.train_if_missing,
            "seed": spec.teacher.seed,
            "train": {
                k: list(v) if isinstance(v, tuple) else v for k, v in spec.teacher.overrides.items()
            },
        },
        "student": {"arch": spec.student_arch},
        "loop": loop,
        "search": {
            "space": {p.name: p.to_dict() for p in spec.space},
            "metric": spec.metric,
            "mode": spec.mode,
            "num_trials": spec.num_trials,
            "sampler": spec.sampler,
            "sampler_seed": spec.sampler_seed,
            "n_startup_trials": spec.n_startup_trials,
            "max_failures": spec.max_failures,
            "scheduler": dataclasses.asdict(spec.scheduler),
        },
        "resources": {
            "cpus_per_trial": spec.cpus_per_trial,
            "gpus_per_trial": spec.gpus_per_trial,
            "max_concurrent": spec.max_concurrent,
        },
        "evaluation": {
            "mte_search": dataclasses.asdict(spec.mte_search),
            "mte_final": dataclasses.asdict(spec.mte_final),
            "image_grids": spec.image_grids,
        },
        "final": {
            "top_k": spec.final_top_k,
            "seeds": list(spec.final_seeds),
            "iterations": spec.final_iterations,
            "max_concurrent": spec.final_max_concurrent,
            "cpus_per_trial": spec.final_cpus_per_trial,
        },
        "kdat": {
            "enabled": spec.kdat.enabled,
            "seeds": list(spec.kdat.seeds),
            "config": {
                k: list(v) if isinstance(v, tuple) else v for k, v in spec.kdat.overrides.items()
            },
        },
        "storage": {
            "path": spec.storage_path,
            "optuna": spec.optuna_storage,
            "shared": spec.storage_shared,
        },
        "mlflow": {"tracking_uri": spec.tracking_uri, "experiment": spec.experiment},
    }


# ------------------------------------------------------------------ smoke version


def smoke_version(data: Mapping[str, Any]) -> dict[str, Any]:
    """A quick version of a checked study: 2 trials of a few iterations, 1 seed, tiny MTE, its own
    name (``<name>-smoke``, experiment likewise)."""
    d = copy.deepcopy(dict(data))
    d["name"] = f"{d['name']}-smoke"
    d["mlflow"] = {**d["mlflow"], "experiment": f"{d['mlflow']['experiment']}-smoke"}
    d["storage"] = {k: v for k, v in d["storage"].items() if k != "optuna"}  # the default: own file
    loop = dict(d["loop"])
    loop["iterations"] = min(int(loop["iterations"]), 20)
    loop["eval_every"] = min(int(loop["eval_every"]), 10)
    loop["batch_size"] = min(int(loop["batch_size"]), 64)
    d["loop"] = loop
    search = dict(d["search"])
    search["num_trials"] = 2
    if search["sampler"] == "grid":
        search["sampler"] = "random"
    search["n_startup_trials"] = 2
    sched = dict(search["scheduler"])
    if sched["type"] == "asha":
        sched["grace_period"] = loop["eval_every"]
    search["scheduler"] = sched
    d["search"] = search
    d["evaluation"] = {
        **d["evaluation"],
        "mte_search": {**d["evaluation"]["mte_search"], "k": 3, "n_test": 20},
        "mte_final": {**d["evaluation"]["mte_final"], "k": 5, "n_test": 50},
    }
    final = dict(d["final"])
    final.pop("iterations", None)
    final["top_k"] = min(int(final["top_k"]), 1)
    final["seeds"] = list(final["seeds"])[:1]
    d["final"] = final
    d["kdat"] = {**d["kdat"], "enabled": False}
    return d


# ------------------------------------------------------------------ checks against the machine


def preflight(
    spec: StudySpec, cluster: Mapping[str, float] | None = None, strict: bool = True
) -> list[str]:
    """Check a spec against what exists: teacher file, data files, resources.

    ``cluster`` maps ``"CPU"``/``"GPU"`` to totals (``ray.cluster_resources()``; default: this
    machine). With ``strict=False`` (a cluster that may autoscale) missing resources are returned
    as warnings instead of raised. Every problem is reported; returns warnings.
    """
    problems = _Problems(spec.source or spec.name)
    warnings: list[str] = []
    if cluster is None:
        cluster = {"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus())}
    for key, need, what in (
        ("CPU", max(spec.cpus_per_trial, spec.final_cpus_per_trial), "cpus_per_trial"),
        ("GPU", spec.gpus_per_trial, "gpus_per_trial"),
    ):
        have = float(cluster.get(key, 0.0))
        if need > have:
            msg = f"a trial needs {need:g} {key}s but the cluster has {have:g}"
            if strict:
                problems.add(f"resources.{what}", msg)
            else:
                warnings.append(f"resources.{what}: {msg} (waiting for the autoscaler)")
    _check_teacher_file(spec, problems)
    if spec.dataset != "digits" and not spec.download:
        from ..data import load_dataset

        try:
            load_dataset(spec.dataset, spec.data_root, download=False)
        except FileNotFoundError as e:
            problems.add("data_root", str(e).splitlines()[0])
    problems.raise_if_any()
    return warnings


def _check_teacher_file(spec: StudySpec, problems: _Problems) -> None:
    """The teacher file exists (or will be trained), is a zskt-ray model file, is the declared
    architecture on the declared data set, and its weights load into that architecture."""
    path = Path(spec.teacher.path)
    if path.is_dir():
        problems.add("teacher.path", f"{path} is a folder, not a teacher file")
        return
    if not path.exists():
        if not spec.teacher.train_if_missing:
            problems.add(
                "teacher.path",
                f"teacher file not found: {path} (set teacher.train_if_missing: true or train it "
                "with `zskt teacher train`)",
            )
        return
    from ..checkpoint import load_model
    from ..teacher import read_teacher_meta

    try:
        meta = read_teacher_meta(path)
        if meta.get("dataset") != spec.dataset or meta.get("arch") != spec.teacher.arch:
            problems.add(
                "teacher.path",
                f"{path} holds {meta.get('arch')} on {meta.get('dataset')}, not "
                f"{spec.teacher.arch} on {spec.dataset}",
            )
            return
        load_model(path)
    except Exception as e:  # noqa: BLE001 - a broken file is a one-line error
        problems.add("teacher.path", f"{path}: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return text[0] if text else type(e).__name__


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover
        return 0
