"""The declared schema of study files: pydantic models that mirror the YAML, key for key.

This is the one place a study key is declared: its type, its bounds and its default. Each section
of a study file is one model (``extra="forbid"``: an unknown or misspelled key is an error naming
it), every number has bounds (``Field``), every choice is a ``Literal``, and a searched parameter
is a union discriminated by its ``type``. Values are checked strictly: a string is never read as a
number or a boolean, NaN and infinities are refused, and a float is accepted for an integer only
when it is whole (``1.0e3``). A default of ``None`` means "derived from other keys or the
environment" (a teacher file from the data set and architecture, a grace period from the budget,
stores from ``$ZSKT_HOME``): :mod:`.resolve` fills it in, together with the rules that relate
several keys, and :class:`~.spec.StudySpec` is the same model with every value resolved.
:mod:`.errors` turns pydantic's errors into this project's one-line ``FILE: key: message`` form.

The loop section and the teacher's ``train`` section are generated from the method layer's frozen
dataclasses (:class:`~zskt_ray.config.DistillConfig`, :class:`~zskt_ray.config.TeacherConfig`), so a
new config field is a valid study key without touching this file; :data:`LOOP_BOUNDS` gives the
sane ranges that the dataclasses themselves do not state.

Adding a key: declare it in its section below (type, bounds, default, a comment saying what it
does; a rule on this section alone is a validator here); it is then checked, with errors worded by
:mod:`.errors`, dumped into ``study.yaml`` and readable as ``spec.<section>.<key>`` where it is
used. Only a default derived from other keys (``None`` here) needs a line in
:func:`.resolve.resolve`, and only a rule across sections a check there. A new section is a new
``Section`` model and one field of :class:`StudyFile`. Keys under ``dataset``, ``teacher``,
``student``, ``loop``, ``search`` and ``seed`` are part of the search's fingerprint
(:meth:`.spec.StudySpec.fingerprint`): a study stored before such a key existed is refused on
resume as "started from a different study file" unless the fingerprint leaves the key out.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from ..config import DistillConfig, KDATConfig, TeacherConfig
from ..health import HealthRule
from ..names import (
    DESIGNS,
    END_OBJECTIVES,
    FULL_FACTORIAL,
    OBJECTIVES,
    SEARCH_OBJECTIVES,
    TEST_METRICS,
)

# DistillConfig fields a study sets from its own top-level keys, never from loop/search.
MANAGED_FIELDS = (
    "dataset",
    "data_root",
    "download",
    "teacher_arch",
    "teacher_path",
    "student_arch",
    "device",
)
# Fields of TeacherConfig / KDATConfig the study sets itself.
TEACHER_MANAGED = ("dataset", "arch", "data_root", "download", "seed", "device")
KDAT_MANAGED = (*MANAGED_FIELDS, "seed")

# Sane ranges of loop settings (inclusive; the dataclasses check only the lower ends). A value
# outside them is a typo or a unit mistake (``iterations: 1.0e+30``), not an experiment.
LOOP_BOUNDS: dict[str, tuple[float, float]] = {
    "iterations": (1, 10_000_000),
    "n_g": (0, 1_000),
    "n_s": (1, 1_000),
    "batch_size": (1, 65_536),
    "z_dim": (1, 65_536),
    "lr_g": (0, 10),
    "lr_s": (0, 10),
    "grad_clip": (0, 1e6),
    "beta": (0, 1e7),
    "temperature": (0, 1e3),
    "prior_bn": (0, 1e6),
    "prior_onehot": (0, 1e6),
    "prior_entropy": (0, 1e6),
    "eval_every": (1, 10_000_000),
    "eval_batch_size": (1, 65_536),
}
MAX_SEED = 2**32 - 1  # NumPy and Optuna seeds are 32-bit
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
NAME_RULE = (
    "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(it names folders, MLflow filters and the Optuna study)"
)


def _whole_float_to_int(value: Any) -> Any:
    """``1.0e3`` is 1000; ``2.5`` stays a float and fails the integer check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int_to_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


Int = Annotated[int, BeforeValidator(_whole_float_to_int)]
Float = Annotated[float, BeforeValidator(_int_to_float)]
Scalar = bool | int | float | str | None


class Section(BaseModel):
    """A mapping of the study file: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Overrides(Section):
    """Settings of a method-layer config: a key left out (None) keeps the config's own default,
    and is left out of the dump too (``study.yaml`` shows what the study sets). ``managed``: the
    config's fields that the study sets from its other keys (an error names them as such)."""

    managed: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _set_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


# ------------------------------------------------------------------ sections from dataclasses


def _field_type(annotation: Any) -> Any:
    """A dataclass field's annotation as a strict pydantic type (ints from whole floats)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is tuple:
        return list[Int]
    if args and origin is not None and len(args) < len(typing.get_args(annotation)):
        return _field_type(args[0]) | None
    return {int: Int, float: Float}.get(annotation, annotation)


def _section_from(
    cls: type,
    skip: tuple[str, ...],
    name: str,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> type[Section]:
    """A section whose keys are ``cls``'s fields (minus ``skip``), each optional and typed, within
    ``bounds`` (default: :data:`LOOP_BOUNDS` for DistillConfig, none for the others)."""
    hints = typing.get_type_hints(cls)
    if bounds is None:
        bounds = LOOP_BOUNDS if cls is DistillConfig else {}
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _field_type(hints[f.name])
        low, high = bounds.get(f.name, (None, None))
        if low is not None:
            kind = Annotated[kind, Field(ge=low, le=high)]
        fields[f.name] = (kind | None, Field(default=None, description=f.metadata.get("doc")))
    model = create_model(name, __base__=Overrides, **fields)
    model.managed = skip
    return model


# Loop settings: every DistillConfig field except those the study manages (and the seed, which is
# the study's top-level ``seed`` for the search and ``final.seeds`` for the re-runs).
LoopSection = _section_from(DistillConfig, (*MANAGED_FIELDS, "seed"), "LoopSection")
TeacherTrainSection = _section_from(TeacherConfig, TEACHER_MANAGED, "TeacherTrainSection")
KDATConfigSection = _section_from(KDATConfig, KDAT_MANAGED, "KDATConfigSection")
LOOP_FIELDS = tuple(LoopSection.model_fields)


# ------------------------------------------------------------------ search parameters


def _check_range(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise ValueError(f"empty or inverted range: low={low} must be < high={high}")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got low={low}")


def _check_step(step: float | None, info: ValidationInfo) -> float | None:
    """``step`` is checked on its own key (``search.space.X.step``) once low/high/log are read."""
    low, high, log = (info.data.get(k) for k in ("low", "high", "log"))
    if step is None or low is None or high is None:
        return step
    if log:
        raise ValueError("step and log cannot be combined")
    if low < high and step > high - low:
        raise ValueError(f"{step} is larger than the range {low}..{high}")
    return step


class _Param(Section):
    """A searched parameter. It knows its name (its key in ``search.space``), and dumps as a study
    file writes it: ``log`` only when true, ``step`` only when given."""

    _name: str = PrivateAttr("")

    @property
    def name(self) -> str:
        return self._name

    def extremes(self) -> list[Any]:
        """The values that bound the parameter: each must give a valid loop config."""
        raise NotImplementedError

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if not out.get("log", True):
            del out["log"]
        if "step" in out and out["step"] is None:
            del out["step"]
        return out


class IntParam(_Param):
    """An integer loop setting: ``low``..``high`` (inclusive), optionally on a log scale or a step."""

    type: Literal["int"]
    low: Int
    high: Int
    log: bool = False
    step: Int | None = Field(default=None, gt=0)

    _step = field_validator("step")(_check_step)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        return self


class FloatParam(_Param):
    """A real loop setting: ``low``..``high``, optionally on a log scale or a step."""

    type: Literal["float"]
    low: Float
    high: Float
    log: bool = False
    step: Float | None = Field(default=None, gt=0)

    _step = field_validator("step")(_check_step)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        return self


class CategoricalParam(_Param):
    """One of the listed values (``param: [a, b]`` is short for this)."""

    type: Literal["categorical"]
    choices: list[Scalar]

    def extremes(self) -> list[Any]:
        return list(self.choices)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        if not choices:
            raise ValueError("empty")
        seen = [repr((type(c).__name__ if c is not None else "", c)) for c in choices]
        if len(set(seen)) != len(seen):
            raise ValueError(f"duplicate values in {choices!r}")
        return choices


def _shorthand(value: Any) -> Any:
    """``[a, b]`` -> ``{type: categorical, choices: [a, b]}``."""
    return {"type": "categorical", "choices": value} if isinstance(value, list) else value


Param = Annotated[IntParam | FloatParam | CategoricalParam, Field(discriminator="type")]


# ------------------------------------------------------------------ sections


class TeacherResourcesSection(Section):
    """What a missing teacher's training task reserves when the study joins a Ray cluster (a
    local study trains it in the driver): None derives the value when the study runs."""

    cpus: Float | None = Field(default=None, gt=0, le=1_024)  # None: resources.cpus_per_trial
    # None: 1 when the cluster has a GPU or the trials ask for a GPU share, else 0
    gpus: Float | None = Field(default=None, ge=0, le=64)


class TeacherSection(Section):
    arch: str
    path: str | None = None
    train_if_missing: bool = False
    seed: Int = Field(default=0, ge=0, le=MAX_SEED)
    train: TeacherTrainSection = Field(default_factory=TeacherTrainSection)  # type: ignore[valid-type]
    resources: TeacherResourcesSection = Field(default_factory=TeacherResourcesSection)


class StudentSection(Section):
    arch: str


def _leaks_test(metric: str) -> str:
    return (
        f"{metric} would leak the test set into the search; use "
        f"{'val_acc' if metric == 'test_acc' else 'val_mte'} (the search selects on held-out "
        "validation data, the final re-runs report test)"
    )


def _drop_none(
    keys: tuple[str, ...],
) -> Any:
    """A serializer that leaves ``keys`` out of the dump while they are None: a key added to a
    section leaves the dump (and the search's fingerprint) of a study that does not use it as it
    was before the key existed."""

    def serialize(self: Any, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if not (k in keys and v is None)}

    return model_serializer(mode="wrap")(serialize)


class SchedulerSection(Section):
    type: Literal["asha", "none"] = "asha"
    grace_period: Int | None = Field(default=None, ge=1, le=10_000_000)
    reduction_factor: Float = Field(default=3.0, gt=1, le=1_000)
    # The one metric ASHA judges trials on in a multi-objective study (one of search.objectives,
    # reported at every evaluation); a single-objective study's scheduler judges search.metric.
    metric: str | None = None

    _dump = _drop_none(("metric",))


class ObjectiveSection(Section):
    """One objective of a multi-objective search: a metric and its direction (derived when left
    out; a wrong one is refused)."""

    metric: str
    mode: Literal["min", "max"] | None = None

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        if metric in TEST_METRICS:
            raise ValueError(_leaks_test(metric))
        if metric not in SEARCH_OBJECTIVES:
            raise ValueError(
                f"unknown objective {metric!r} (known: {', '.join(SEARCH_OBJECTIVES)})"
            )
        return metric


class SearchSection(Section):
    space: dict[str, Param] = Field(default_factory=dict)
    metric: str | None = None  # None: val_acc, or the study has search.objectives
    mode: Literal["min", "max"] | None = None
    # Several objectives (a multi-objective search: Optuna keeps every trial's values, the final
    # re-runs take configurations from the Pareto front); instead of metric and mode.
    objectives: list[ObjectiveSection] | None = None
    num_trials: Int = Field(default=8, ge=1, le=100_000)
    sampler: Literal["tpe", "grid", "random"] = "tpe"
    sampler_seed: Int = Field(default=0, ge=0, le=MAX_SEED)
    n_startup_trials: Int = Field(default=4, ge=0, le=100_000)
    max_failures: Int = Field(default=1, ge=0, le=1_000)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)

    _dump = _drop_none(("metric", "mode", "objectives"))

    @field_validator("space", mode="before")
    @classmethod
    def _shorthands(cls, space: Any) -> Any:
        if isinstance(space, dict):
            return {name: _shorthand(value) for name, value in space.items()}
        return space

    @model_validator(mode="after")
    def _name_params(self) -> SearchSection:
        for name, param in self.space.items():
            param._name = name
        return self

    @field_validator("metric")
    @classmethod
    def _objective(cls, metric: str | None) -> str | None:
        if metric is None:
            return metric
        if metric in TEST_METRICS:
            raise ValueError(_leaks_test(metric))
        if metric in END_OBJECTIVES:
            raise ValueError(
                f"{metric} is measured only at the end of a trial; it is an objective of "
                "search.objectives (beside a metric reported at every evaluation), not search.metric"
            )
        if metric not in OBJECTIVES:
            raise ValueError(f"unknown objective {metric!r} (known: {', '.join(OBJECTIVES)})")
        return metric

    @field_validator("objectives")
    @classmethod
    def _several(cls, objectives: list[ObjectiveSection] | None) -> Any:
        if objectives is None:
            return objectives
        if len(objectives) < 2:
            raise ValueError(
                f"{len(objectives)} objective given; a multi-objective search needs at least 2 "
                "(a single objective is search.metric)"
            )
        metrics = [o.metric for o in objectives]
        repeated = sorted({m for m in metrics if metrics.count(m) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} given more than once")
        return objectives


class ResourcesSection(Section):
    cpus_per_trial: Float = Field(default=1.0, gt=0, le=1_024)
    gpus_per_trial: Float = Field(default=0.0, ge=0, le=64)
    max_concurrent: Int = Field(default=1, ge=1, le=10_000)

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpu_share(cls, gpus: float) -> float:
        if gpus > 1 and not gpus.is_integer():
            raise ValueError(
                f"must be 0, a fraction in (0, 1] or a whole number of GPUs, got {gpus}"
            )
        return gpus


MTEK = Annotated[Int, Field(ge=1, le=100_000)]  # transition steps K
MTEXi = Annotated[Float, Field(gt=0, le=1e6)]  # step size xi of the adversarial steps
MTETests = Annotated[Int, Field(ge=1, le=10_000_000)]  # test images, at most


class MTESection(Section):
    """MTE of the search trials: few images and steps, so that it is cheap."""

    k: MTEK = 10
    xi: MTEXi = 1.0
    n_test: MTETests = 100
    enabled: bool = True


class FinalMTESection(MTESection):
    """MTE of the final re-runs and baselines: the paper's K=100 on up to 1,000 test images."""

    k: MTEK = 100
    n_test: MTETests = 1000


class EvaluationSection(Section):
    mte_search: MTESection = Field(default_factory=MTESection)
    mte_final: FinalMTESection = Field(default_factory=FinalMTESection)
    image_grids: Int = Field(default=3, ge=0, le=1_000)


class FinalSection(Section):
    top_k: Int = Field(default=1, ge=0, le=1_000)
    seeds: list[Annotated[Int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0, 1, 2])
    iterations: Int | None = Field(default=None, ge=1, le=10_000_000)
    max_concurrent: Int | None = Field(default=None, ge=1, le=10_000)
    cpus_per_trial: Float | None = Field(default=None, gt=0, le=1_024)
    # Multi-objective studies: the objective whose best re-run configuration stands for the study
    # in Table 1 and Table 2 (the front configuration best in it). None: the first objective.
    table_objective: str | None = None

    _dump = _drop_none(("table_objective",))

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        return _distinct_seeds(seeds)


class KDATSection(Section):
    enabled: bool = False
    seeds: list[Annotated[Int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0])
    config: KDATConfigSection = Field(default_factory=KDATConfigSection)  # type: ignore[valid-type]

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        return _distinct_seeds(seeds)


def _distinct_seeds(seeds: list[int]) -> list[int]:
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"expected distinct seeds, {', '.join(map(str, repeated))} repeated")
    return seeds


# Ranges of the health rule's thresholds (HealthRule checks the lower ends, not the upper).
HEALTH_BOUNDS: dict[str, tuple[float, float]] = {
    "patience": (1, 100_000),
    "min_classes": (0, 100_000),
    "min_class_entropy": (0, 1),
    "min_input_diversity": (0, 2),  # diversity is at most sqrt 2
    "min_feature_diversity": (0, 2),
    "min_generator_move": (0, 2),  # a relative change of outputs is at most 2
    "min_adv_kl": (0, 1e6),
    "trend_window": (1, 100_000),
    "batch_size": (0, 65_536),
}


class HealthSection(_section_from(HealthRule, (), "HealthRuleSection", HEALTH_BOUNDS)):  # type: ignore[misc]
    """``health``: the rule that flags a trial collapsed or stalled (every field of
    :class:`~zskt_ray.health.HealthRule`; a key left out keeps the rule's default, and a run whose
    generator does not learn by design gets no stall conditions), and what a flagged trial does."""

    # true: a search trial the rule flags ends at once as failed, with the flag as its reason (not
    # pruned: Optuna records it FAIL); false: it is tagged and trains on to its end. Final re-runs
    # and a designed ablation's runs are only tagged: they are full-budget measurements, and
    # dropping a collapsed seed would flatter the mean.
    stop: bool = False

    @model_validator(mode="after")
    def _valid_rule(self) -> HealthSection:
        self.rule()  # HealthRule's own checks (batch_size 1 is refused, for one)
        return self

    def rule(self) -> HealthRule:
        """The study's health rule."""
        values = {k: getattr(self, k) for k in HealthRule.__dataclass_fields__}
        return HealthRule(**{k: v for k, v in values.items() if v is not None})

    @model_serializer(mode="wrap")
    def _whole_rule(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Every threshold in force, defaults included: ``study.yaml`` shows the rule that ran."""
        return {**dataclasses.asdict(self.rule()), "stop": self.stop}


class AblationSection(Section):
    """A designed ablation, instead of a search (:mod:`.design`): every cell runs with every seed
    at the full budget, seed s being the same seed in every cell. Which loop settings may be
    factors, and the rules that relate this section to ``loop``, ``search`` and ``final``, are
    checked by :func:`.resolve.resolve`, which also fills in each factor's reference level."""

    # loop setting -> its levels (at least 2), e.g. {beta: [0, 250], n_s: [5, 10]}
    factors: dict[str, list[Scalar]] = Field(default_factory=dict)
    # every combination of the levels, or one factor at a time away from the reference cell
    design: Literal[DESIGNS] = FULL_FACTORIAL  # type: ignore[valid-type]
    seeds: list[Annotated[Int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0, 1, 2])
    # named cells: the reference cell with a few settings overridden,
    # e.g. {"generator not trained": {adversarial_discrepancy: none}}
    controls: dict[str, dict[str, Scalar]] = Field(default_factory=dict)
    # factor -> the level the others are compared to (default: the loop's value when it is a
    # level, else the first level)
    references: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("empty: give at least one seed (2 or more for an interval)")
        return _distinct_seeds(seeds)


class StorageSection(Section):
    path: str | None = None  # None: $ZSKT_STORAGE, else $ZSKT_HOME/studies
    optuna: str | None = None  # None: a journal beside a shared path, else <path>/<name>/optuna.db
    shared: bool | None = None  # None: $ZSKT_STORAGE_SHARED


class MLflowSection(Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else $ZSKT_HOME/mlflow.db
    experiment: str | None = None  # None: the study's name
    # How long a tracking server may stay unreachable: calls wait for it (with backoff) this many
    # seconds, then the trial fails and Tune restarts it from its checkpoint (tracking.py).
    max_outage_s: Float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    # Extra tags on the study's runs (its study run and every trial run), e.g. {project: zskt}.
    run_tags: dict[str, str] = Field(default_factory=dict)
    # MLflow's own system metrics on every trial run (system/cpu_utilization_percentage, memory,
    # disk, network; GPU ones with the nvidia-ml-py package), sampled every 10 s
    # (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL): a thread per trial and extra writes to the store.
    system_metrics: bool = False

    @field_validator("run_tags")
    @classmethod
    def _own_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in tags if k.startswith(("zskt.", "mlflow.")))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)}: zskt.* and mlflow.* tags are set by the study"
            )
        return tags


class StudyFile(Section):
    """A whole study file."""

    name: str
    description: str = ""
    dataset: str
    data_root: str = "data"
    download: bool = False
    # The data root is one folder every node sees (NFS): prepared once, not once per node.
    # None: storage.shared.
    data_shared: bool | None = None
    seed: Int = Field(default=0, ge=0, le=MAX_SEED)
    teacher: TeacherSection
    student: StudentSection
    loop: LoopSection = Field(default_factory=LoopSection)  # type: ignore[valid-type]
    search: SearchSection = Field(default_factory=SearchSection)
    ablation: AblationSection | None = None  # a designed ablation instead of a search
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    final: FinalSection = Field(default_factory=FinalSection)
    kdat: KDATSection = Field(default_factory=KDATSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    mlflow: MLflowSection = Field(default_factory=MLflowSection)
    health: HealthSection = Field(default_factory=HealthSection)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.match(NAME_PATTERN, name):
            raise ValueError(f"{name[:60]!r}{'...' if len(name) > 60 else ''} must be {NAME_RULE}")
        return name


# Keys whose value is a mapping: a missing one reads as empty, so that a missing required key inside
# it is named (``missing key student.arch``) rather than the whole section.
SECTIONS = tuple(
    name
    for name, field in StudyFile.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
)
