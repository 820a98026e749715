"""Resolution: a study file that passed its schema -> every value a run uses, computed once.

:func:`resolve` fills in what the file leaves to be derived (absolute paths, the teacher file, the
loop settings the search does not vary, the objectives' directions, the grace period, the final
re-runs' budget and resources, the stores: :mod:`.stores`) and checks the rules that relate several
keys, reporting every problem. What it returns is still a :class:`~.schema.StudyFile`, with no
value left to derive: :class:`~.spec.StudySpec` is built from it, and ``study.yaml`` is its dump.
:func:`smoke_version` makes the quick version of a resolved study. The method-layer configs of a
study (:func:`base_config`, :func:`kdat_config`, :func:`teacher_config`) are made here too, so
that the checks and the runs build them the same way.

This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from ..config import DistillConfig, KDATConfig, TeacherConfig, from_dict, to_dict
from ..data import DATASETS
from ..models import parse_arch
from ..names import SECTION_ABLATION
from ..paths import default_teacher_path
from . import objectives, stores
from .design import Design, DesignError, make_design
from .errors import Problems, describe
from .schema import (
    LOOP_FIELDS,
    MANAGED_FIELDS,
    AblationSection,
    LoopSection,
    SchedulerSection,
    StudyFile,
)

_LOOP_TYPES = {
    f.name: type(f.default) for f in dataclasses.fields(DistillConfig) if f.name in LOOP_FIELDS
}
# The quick version of a study (--smoke): these loop settings at most, two trials, one seed.
SMOKE_LOOP = {"iterations": 20, "eval_every": 10, "batch_size": 64}


def resolve(study: StudyFile, problems: Problems) -> StudyFile:
    """``study`` with every derived value filled in; all problems are raised together.

    Rules are checked in stages: without a valid data set, pair and loop, the rules that relate
    keys to the loop settings would only repeat the first mistake in other words.
    """
    _check_pair(study, problems)
    problems.raise_if_any()
    study = _with_paths(study)
    base = _loop_config(study, problems)
    problems.raise_if_any()
    search = _search(study, base, problems)
    varied = set(study.search.space) | set(study.ablation.factors if study.ablation else ())
    resolved = study.model_copy(
        update=dict(
            loop=LoopSection.model_validate(  # every setting the search or ablation does not vary
                {k: v for k, v in to_dict(base).items() if k in LOOP_FIELDS and k not in varied}
            ),
            search=search,
            final=study.final.model_copy(
                update=dict(
                    iterations=study.final.iterations or base.iterations,
                    max_concurrent=study.final.max_concurrent or study.resources.max_concurrent,
                    cpus_per_trial=study.final.cpus_per_trial or study.resources.cpus_per_trial,
                    table_objective=objectives.table_objective(study, search, problems),
                )
            ),
            **_stores(study, problems),
        )
    )
    if study.ablation is not None:
        resolved = _ablation(resolved, study, base, problems)
    _check_seeds(study, problems)
    problems.raise_if_any()
    _check_grid(resolved, problems)
    _check_kdat(resolved, problems)
    problems.raise_if_any()
    return resolved


# ------------------------------------------------------------------ the method-layer configs


def device(study: StudyFile) -> str:
    """Where trials run: a GPU share means CUDA (a node without one falls back, with a note)."""
    return "cuda" if study.resources.gpus_per_trial > 0 else "cpu"


def _managed(study: StudyFile) -> dict[str, Any]:
    """The config fields the study sets from its own top-level keys (:data:`MANAGED_FIELDS`)."""
    return dict(
        dataset=study.dataset,
        data_root=study.data_root,
        download=study.download,
        teacher_arch=study.teacher.arch,
        teacher_path=study.teacher.path,
        student_arch=study.student.arch,
        device=device(study),
    )


def base_config(study: StudyFile) -> DistillConfig:
    """The loop settings every trial shares (searched ones at their config default)."""
    return from_dict(
        DistillConfig, {**study.loop.model_dump(), **_managed(study), "seed": study.seed}
    )


def kdat_config(study: StudyFile, seed: int) -> KDATConfig:
    """The KD+AT baseline's config for one seed."""
    return from_dict(
        KDATConfig, {**_managed(study), "seed": seed, **study.kdat.config.model_dump()}
    )


def teacher_config(study: StudyFile) -> TeacherConfig:
    """The paper's teacher recipe for the study's data set, with ``teacher.train`` applied."""
    return TeacherConfig.recipe(
        study.dataset,
        study.teacher.arch,
        data_root=study.data_root,
        download=study.download,
        seed=study.teacher.seed,
        device=device(study),
        **_tuples(study.teacher.train.model_dump()),
    )


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


# ------------------------------------------------------------------ resolution and rules


def _check_pair(study: StudyFile, problems: Problems) -> None:
    """The data set, both architectures and the teacher's training overrides."""
    if study.dataset not in DATASETS:
        problems.add(
            "dataset", f"unknown data set {study.dataset!r} (known: {', '.join(DATASETS)})"
        )
    for key, arch in (("teacher.arch", study.teacher.arch), ("student.arch", study.student.arch)):
        try:
            parse_arch(arch)
        except ValueError as e:
            problems.add(key, str(e))
    overrides = _tuples(study.teacher.train.model_dump())
    if overrides and study.dataset in DATASETS:
        try:
            TeacherConfig.recipe(study.dataset, _arch(study.teacher.arch), **overrides)
        except (TypeError, ValueError) as e:
            problems.add("teacher.train", str(e))


def _arch(value: str) -> str:
    return value.strip().lower()


def _with_paths(study: StudyFile) -> StudyFile:
    """Architectures as the model registry names them; data folder and teacher file absolute
    (the teacher store's default file when the study names none)."""
    teacher = study.teacher
    arch = _arch(teacher.arch)
    path = (
        Path(teacher.path).expanduser().resolve()
        if teacher.path
        else default_teacher_path(study.dataset, arch, teacher.seed)
    )
    return study.model_copy(
        update=dict(
            data_root=str(Path(study.data_root).expanduser().resolve()),
            teacher=teacher.model_copy(update=dict(arch=arch, path=str(path))),
            student=study.student.model_copy(update=dict(arch=_arch(study.student.arch))),
        )
    )


def _loop_config(study: StudyFile, problems: Problems) -> DistillConfig:
    """The base loop config; its own checks name the field. Defaults on failure."""
    try:
        return base_config(study)
    except (KeyError, TypeError, ValueError) as e:
        problems.add("loop", e.args[0] if isinstance(e, KeyError) else str(e))
    return DistillConfig()


def _search(study: StudyFile, base: DistillConfig, problems: Problems) -> Any:
    """The search section with its direction and scheduler resolved; searched parameters checked."""
    search = study.search
    fixed = study.loop.model_dump()
    for name, param in search.space.items():
        _check_param(name, param, fixed, base, problems)
    if not search.space and search.num_trials > 1 and study.ablation is None:
        problems.add("search.space", "empty; give at least one parameter (or num_trials: 1)")
    if study.ablation is not None and search.objectives:
        # An ablation has no objectives to search: the one line is _check_not_a_search's.
        study = study.model_copy(
            update=dict(search=search.model_copy(update=dict(objectives=None)))
        )
    search = objectives.resolve_search(study, problems)  # the direction(s), the scheduler's metric
    return search.model_copy(update=dict(scheduler=_scheduler(search.scheduler, base, problems)))


def _check_param(
    name: str, param: Any, fixed: Mapping[str, Any], base: DistillConfig, problems: Problems
) -> None:
    """A searched parameter names a loop setting that is not fixed, of its type, and each of its
    extremes gives a valid loop config."""
    key = f"search.space.{name}"
    if name in MANAGED_FIELDS or name == "seed":
        problems.add(key, f"{name} cannot be searched")
    elif name not in LOOP_FIELDS:
        close = difflib.get_close_matches(name, LOOP_FIELDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.add(key, f"unknown loop setting ({hint}searchable: {', '.join(LOOP_FIELDS)})")
    elif name in fixed:
        problems.add(key, f"also fixed in loop.{name}; keep one of them")
    want = _LOOP_TYPES.get(name)
    if want is None or name in fixed:
        return
    if param.type in ("int", "float") and want.__name__ != param.type:
        alternative = {"int": "int", "float": "float"}.get(want.__name__, "categorical")
        problems.add(f"{key}.type", f"{name} is a {want.__name__} setting; use type: {alternative}")
        return
    # Every bound must give a valid loop config on its own; the first that does not is the
    # parameter's one error (a range refused at both ends, as a BN prior on an MLP, is one mistake).
    for value in param.extremes():
        try:
            from_dict(DistillConfig, {**to_dict(base), name: value})
            LoopSection.model_validate({name: value})
        except (TypeError, ValueError) as e:
            errors = e.errors() if isinstance(e, pydantic.ValidationError) else None
            problems.add(key, f"{name} {describe(errors[0])[1]}" if errors else str(e))
            break


def _scheduler(
    section: SchedulerSection, base: DistillConfig, problems: Problems
) -> SchedulerSection:
    """The grace period: as given, else a quarter of the budget (at least one evaluation)."""
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
    return section.model_copy(update=dict(grace_period=grace))


def _stores(study: StudyFile, problems: Problems) -> dict[str, Any]:
    """The storage and mlflow sections, resolved (:mod:`.stores`)."""
    path = stores.storage_path(study.storage.path, problems)
    shared = stores.storage_shared(study.storage.shared)
    optuna = stores.optuna_url(study.storage.optuna, study.name, path, shared, problems)
    uri = stores.tracking_uri(study.mlflow.tracking_uri, problems)
    experiment = stores.experiment(study.mlflow.experiment, study.name, problems)
    return dict(
        data_shared=shared if study.data_shared is None else study.data_shared,
        storage=study.storage.model_copy(update=dict(path=path, shared=shared, optuna=optuna)),
        mlflow=study.mlflow.model_copy(update=dict(tracking_uri=uri, experiment=experiment)),
    )


def _check_seeds(study: StudyFile, problems: Problems) -> None:
    if study.final.top_k > 0 and not study.final.seeds:
        problems.add("final.seeds", "empty while final.top_k > 0")
    if study.kdat.enabled and not study.kdat.seeds:
        problems.add("kdat.seeds", "empty while kdat.enabled is true")


def _check_grid(study: StudyFile, problems: Problems) -> None:
    """The grid sampler takes categorical choices only, one trial per cell."""
    search = study.search
    if search.sampler != "grid" or study.ablation is not None:
        return
    ranges = [name for name, p in search.space.items() if p.type != "categorical"]
    for name in ranges:
        problems.add(f"search.space.{name}", "the grid sampler needs categorical choices")
    if ranges:
        return
    cells = math.prod(len(p.choices) for p in search.space.values())
    if search.num_trials != cells:
        problems.add(
            "search.num_trials", f"the grid has {cells} cells, num_trials is {search.num_trials}"
        )


def _check_kdat(study: StudyFile, problems: Problems) -> None:
    if study.kdat.enabled:
        try:
            kdat_config(study, study.kdat.seeds[0])
        except (KeyError, TypeError, ValueError) as e:
            problems.add("kdat.config", e.args[0] if isinstance(e, KeyError) else str(e))


# ------------------------------------------------------------------ designed ablations

# The search keys an ablation study may set: Tune's retries of a trial that raised.
ABLATION_SEARCH_KEYS = frozenset({"max_failures"})
# The final re-runs' keys an ablation refuses (it has no re-runs); their resources
# (max_concurrent, cpus_per_trial) stay those of the KD+AT baseline.
ABLATION_FINAL_KEYS = ("top_k", "seeds", "iterations")


def ablation_design(study: StudyFile) -> Design:
    """The cells, runs and comparisons of an ablation study (:mod:`.design`)."""
    ab = study.ablation
    if ab is None:
        raise ValueError(f"study {study.name!r} is not an ablation")
    return make_design(
        base_config(study), ab.factors, ab.design, ab.seeds, ab.controls, ab.references
    )


def _ablation(
    resolved: StudyFile, study: StudyFile, base: DistillConfig, problems: Problems
) -> StudyFile:
    """An ablation study: its section checked against the loop, its design built, each factor's
    reference level filled in; the search section becomes the grid over (cell, seed) that runs
    it (no scheduler: every run reaches the full budget), and there are no final re-runs."""
    ab = study.ablation
    assert ab is not None
    before = len(problems.lines)
    _check_ablation_settings(ab, study.loop.model_dump(), base, problems)
    design = None
    if len(problems.lines) == before:
        try:
            design = ablation_design(resolved.model_copy(update=dict(ablation=ab)))
        except DesignError as e:
            problems.add(*_design_problem(str(e)))
    runs = len(design.runs) if design is not None else resolved.search.num_trials
    scheduler = _scheduler(SchedulerSection(type="none"), base, problems)
    search = resolved.search.model_copy(
        update=dict(space={}, num_trials=runs, sampler="grid", scheduler=scheduler)
    )
    final = resolved.final.model_copy(update=dict(top_k=0, seeds=[], iterations=None))
    _check_not_a_search(study, search, final, problems)
    if design is None:
        return resolved
    references = {f.name: f.reference for f in design.factors}
    return resolved.model_copy(
        update=dict(
            ablation=ab.model_copy(update=dict(references=references)),
            search=search,
            final=final,
        )
    )


def _check_not_a_search(study: StudyFile, search: Any, final: Any, problems: Problems) -> None:
    """Search and final re-run keys the file gives that contradict what the ablation runs (a
    study.yaml's resolved values agree with it, and read again as they are)."""
    given, runs = study.search.model_dump(), search.model_dump()
    for key in sorted(study.search.model_fields_set - ABLATION_SEARCH_KEYS):
        if given.get(key) != runs.get(key):  # keys unset in one of them are left out
            problems.add(
                f"search.{key}",
                "a study is a search or an ablation, not both: an ablation runs every cell with "
                f"every seed (remove search.{key}, or the ablation section)",
            )
    given, runs = study.final.model_dump(), final.model_dump()
    for key in ABLATION_FINAL_KEYS:
        if key in study.final.model_fields_set and given[key] != runs[key]:
            problems.add(
                f"final.{key}",
                "an ablation has no final re-runs: every cell runs with every seed of "
                "ablation.seeds at the full budget (remove it)",
            )


def _check_ablation_settings(
    ab: AblationSection, fixed: Mapping[str, Any], base: DistillConfig, problems: Problems
) -> None:
    """Factors, their levels, controls and references, each on its own: a loop setting the study
    does not fix in ``loop``, of its type and bounds, that gives a valid loop config."""
    if not ab.factors and not ab.controls:
        problems.add("ablation.factors", "empty: give at least one factor with its levels")
    for name, levels in ab.factors.items():
        key = f"ablation.factors.{name}"
        if not _ablation_setting(name, key, "a factor", problems):
            continue
        if name in fixed:
            problems.add(
                key,
                f"also fixed in loop.{name}; keep one of them (ablation.references.{name} names "
                "the level the others are compared to)",
            )
        if len(levels) < 2:
            problems.add(key, f"needs at least 2 levels, got {levels!r}")
        for level in levels:
            _check_setting(name, level, key, base, problems, f"level {level!r}: ")
    for control, overrides in ab.controls.items():
        key = f"ablation.controls.{control}"
        if not control.strip():
            problems.add("ablation.controls", "a control needs a name")
        if not overrides:
            problems.add(key, "empty: a control overrides at least one loop setting")
        for name, value in overrides.items():
            if _ablation_setting(name, f"{key}.{name}", "set by a control", problems):
                _check_setting(name, value, f"{key}.{name}", base, problems)
    for name, value in ab.references.items():
        key = f"ablation.references.{name}"
        if name not in ab.factors:
            problems.add(key, f"{name} is not a factor of this ablation")
        elif value not in ab.factors[name]:
            shown = ", ".join(map(repr, ab.factors[name]))
            problems.add(key, f"{value!r} is not one of its levels [{shown}]")


def _ablation_setting(name: str, key: str, role: str, problems: Problems) -> bool:
    """``name`` is a loop setting an ablation may vary (not the seed, not a managed field)."""
    if name == "seed":
        problems.add(key, f"seed cannot be {role}: the seeds are ablation.seeds")
    elif name in MANAGED_FIELDS:
        problems.add(key, f"{name} cannot be {role}: the study sets it from its own keys")
    elif name not in LOOP_FIELDS:
        close = difflib.get_close_matches(name, LOOP_FIELDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.add(key, f"unknown loop setting{hint}")
    else:
        return True
    return False


def _check_setting(
    name: str,
    value: Any,
    key: str,
    base: DistillConfig,
    problems: Problems,
    prefix: str = "",
) -> None:
    """One value of a loop setting: the loop section's type and bounds, then the config's own
    checks with the study's other settings (a level the loop refuses)."""
    try:
        LoopSection.model_validate({name: value})
        from_dict(DistillConfig, {**to_dict(base), name: value})
    except (TypeError, ValueError) as e:
        errors = e.errors() if isinstance(e, pydantic.ValidationError) else None
        problems.add(key, prefix + (describe(errors[0])[1] if errors else str(e)))


_DESIGN_KEYS = (
    (re.compile(r"factor (?P<name>[^,:]+)(?P<rest>(, level [^:]+)?: .*)"), "factors"),
    (re.compile(r"control '(?P<name>.+?)'(?P<rest>: .*)"), "controls"),
    (re.compile(r"references\.(?P<name>[^:]+)(?P<rest>: .*)"), "references"),
)


def _design_problem(message: str) -> tuple[str, str]:
    """A :class:`~.design.DesignError` line as ``(key, message)`` under ``ablation``."""
    for pattern, section in _DESIGN_KEYS:
        m = pattern.fullmatch(message)
        if m:
            return f"ablation.{section}.{m['name']}", m["rest"].lstrip(", :")
    if message.startswith("seeds: "):
        return "ablation.seeds", message.removeprefix("seeds: ")
    return SECTION_ABLATION, message


# ------------------------------------------------------------------ smoke version


def smoke_version(study: StudyFile, keep_optuna: bool = False) -> dict[str, Any]:
    """A quick version of a resolved study: 2 trials of a few iterations, 1 seed, tiny MTE, its
    own name (``<name>-smoke``, experiment likewise) and its own Optuna study (in the declared
    Optuna storage when ``keep_optuna``)."""
    loop = study.loop.model_copy(
        update={
            k: min(getattr(study.loop, k), cap)
            for k, cap in SMOKE_LOOP.items()
            if getattr(study.loop, k) is not None
        }
    )
    search, evaluation = study.search, study.evaluation
    scheduler = search.scheduler
    if scheduler.type == "asha":
        scheduler = scheduler.model_copy(update=dict(grace_period=loop.eval_every))
    sampler = "random" if search.sampler == "grid" else search.sampler
    quick = study.model_copy(
        update=dict(
            name=stores.smoke_name(study.name),
            loop=loop,
            search=search.model_copy(
                update=dict(num_trials=2, n_startup_trials=2, sampler=sampler, scheduler=scheduler)
            ),
            evaluation=evaluation.model_copy(
                update=dict(
                    mte_search=evaluation.mte_search.model_copy(update=dict(k=3, n_test=20)),
                    mte_final=evaluation.mte_final.model_copy(update=dict(k=5, n_test=50)),
                )
            ),
            final=study.final.model_copy(
                update=dict(
                    iterations=None, top_k=min(study.final.top_k, 1), seeds=study.final.seeds[:1]
                )
            ),
            kdat=study.kdat.model_copy(update=dict(enabled=False)),
            storage=study.storage.model_copy(
                update=dict(optuna=study.storage.optuna if keep_optuna else None)
            ),
            mlflow=study.mlflow.model_copy(
                update=dict(experiment=stores.smoke_name(study.mlflow.experiment))
            ),
        )
    )
    out = quick.model_dump(exclude={SECTION_ABLATION} if study.ablation is None else None)
    if study.ablation is not None:  # its first seed; no search keys, no final re-runs
        out.update(
            search=study.search.model_dump(include=set(ABLATION_SEARCH_KEYS)),
            final=quick.final.model_dump(exclude=set(ABLATION_FINAL_KEYS)),
            ablation={**study.ablation.model_dump(), "seeds": study.ablation.seeds[:1]},
        )
    return out
