"""Study files: YAML -> a typed, validated :class:`StudySpec`.

A study file names a data set, a teacher, a student, the fixed loop settings, a search space over
any :class:`~zskt_ray.config.DistillConfig` field, the objective, trials and resources, the
scheduler, the final seeded re-runs, and where results and tracking live. Every mistake is
reported as one line naming the file and the key (``StudyError``) before any trial starts:
:func:`load_spec` checks the file on its own, :func:`preflight` checks it against the machine or
cluster (teacher file, resources, data files).

This module imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config import DistillConfig, KDATConfig, TeacherConfig, from_dict, to_dict
from ..data import DATASETS
from ..models import parse_arch
from ..paths import default_teacher_path, default_tracking_uri, zskt_home

__all__ = [
    "MANAGED_FIELDS",
    "ParamSpec",
    "StudyError",
    "StudySpec",
    "config_id",
    "load_spec",
    "parse_spec",
    "preflight",
]

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
# Fields that do not change what a run computes (left out of config_id together with the seed).
_NOT_IN_CONFIG_ID = ("seed", "data_root", "download", "teacher_path", "device", "eval_batch_size")
_DISTILL_FIELDS = {f.name: f for f in dataclasses.fields(DistillConfig)}
_DISTILL_TYPES = {name: type(getattr(DistillConfig(), name)) for name in _DISTILL_FIELDS}
OBJECTIVES = ("val_acc", "pseudo_agreement", "kl", "loss_s")


class StudyError(ValueError):
    """A one-line problem with a study file, naming the file and the key."""


# ------------------------------------------------------------------ typed pieces


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
    """A validated study. ``base`` holds the loop settings shared by every trial."""

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
    image_points: int
    kdat: KDATSpec
    storage_path: str  # Tune results: absolute local dir or a URI such as s3://bucket/prefix
    optuna_storage: str  # an SQLAlchemy URL
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
    for key, value in list(values.items()):
        if isinstance(value, float) and value.is_integer():
            values[key] = int(value)  # 250 and 250.0 are one configuration
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def _join(base: str, *parts: str) -> str:
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


# ------------------------------------------------------------------ parsing helpers


class _Reader:
    """Pops typed values out of a mapping; every error names ``where.key``."""

    def __init__(self, data: Any, where: str, fail):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            fail(f"{where or 'study'}: expected a mapping, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where
        self.fail = fail

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def get(self, k: str, kind: type | tuple[type, ...], default: Any = dataclasses.MISSING) -> Any:
        if k not in self.data:
            if default is dataclasses.MISSING:
                self.fail(f"missing key {self.key(k)}")
            return default
        value = self.data.pop(k)
        if value is None and default is None:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if int in kinds and isinstance(value, float) and value.is_integer() and float not in kinds:
            value = int(value)
        if isinstance(value, bool) and bool not in kinds:
            self.fail(f"{self.key(k)}: expected {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            self.fail(
                f"{self.key(k)}: expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}"
            )
        return value

    def sub(self, k: str) -> _Reader:
        value = self.data.pop(k, None)
        return _Reader(value, self.key(k), self.fail)

    def done(self, known: tuple[str, ...] = ()) -> None:
        if self.data:
            extra = sorted(self.data)[0]
            hint = f" (known: {', '.join(known)})" if known else ""
            self.fail(f"unknown key {self.key(extra)}{hint}")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_TOP_KEYS = (
    "name",
    "description",
    "dataset",
    "data_root",
    "download",
    "teacher",
    "student",
    "loop",
    "search",
    "resources",
    "evaluation",
    "final",
    "kdat",
    "storage",
    "mlflow",
    "seed",
)


def load_spec(path: str | Path, smoke: bool = False, num_trials: int | None = None) -> StudySpec:
    """Read and validate a study file; a :class:`StudyError` names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        raise StudyError(f"{path}: not valid YAML: {' '.join(s.strip() for s in first)}") from None
    return parse_spec(data, source=str(path.resolve()), smoke=smoke, num_trials=num_trials)


def parse_spec(
    data: Any, source: str = "", smoke: bool = False, num_trials: int | None = None
) -> StudySpec:
    """Validate a study mapping (``source`` names the file in errors)."""
    label = source or "study"

    def fail(msg: str) -> None:
        raise StudyError(f"{label}: {msg}")

    if smoke:
        data = smoke_version(data)
    r = _Reader(data, "", fail)
    raw: dict[str, Any] = copy.deepcopy(r.data)

    name = r.get("name", str)
    if not name or any(c in name for c in "/\\ \t") or name.startswith("."):
        fail(f"name: {name!r} must be a non-empty identifier without spaces or slashes")
    description = r.get("description", str, "")
    dataset = r.get("dataset", str)
    if dataset not in DATASETS:
        fail(f"dataset: unknown data set {dataset!r} (known: {', '.join(DATASETS)})")
    data_root = str(Path(r.get("data_root", str, "data")).expanduser().resolve())
    download = r.get("download", bool, False)
    study_seed = r.get("seed", int, 0)

    # ---- teacher / student
    t = r.sub("teacher")
    t_arch = _arch(t.get("arch", str), t.key("arch"), fail)
    t_seed = t.get("seed", int, 0)
    t_path_raw = t.get("path", str, None)
    t_path = (
        Path(t_path_raw).expanduser().resolve()
        if t_path_raw
        else default_teacher_path(dataset, t_arch, t_seed)
    )
    train_if_missing = t.get("train_if_missing", bool, False)
    t_over = t.get("train", dict, None) or {}
    if t_over:
        for bad in ("dataset", "arch", "data_root", "download", "seed", "device"):
            if bad in t_over:
                fail(f"teacher.train.{bad}: set by the study, not here")
        try:
            TeacherConfig.recipe(
                dataset,
                t_arch,
                **{k: tuple(v) if isinstance(v, list) else v for k, v in t_over.items()},
            )
            from_dict(
                TeacherConfig, {"dataset": dataset, "arch": t_arch, **t_over}, where="teacher.train"
            )
        except (KeyError, TypeError, ValueError) as e:
            fail(e.args[0] if isinstance(e, KeyError) else str(e))
    t.done(("arch", "path", "train_if_missing", "seed", "train"))
    teacher = TeacherSpec(
        t_arch,
        str(t_path),
        train_if_missing,
        t_seed,
        {k: tuple(v) if isinstance(v, list) else v for k, v in t_over.items()},
    )
    s = r.sub("student")
    student_arch = _arch(s.get("arch", str), s.key("arch"), fail)
    s.done(("arch",))

    # ---- resources (decide the device before building the base config)
    res = r.sub("resources")
    cpus = res.get("cpus_per_trial", (int, float), 1.0)
    gpus = res.get("gpus_per_trial", (int, float), 0.0)
    if not cpus > 0:
        fail(f"resources.cpus_per_trial: must be > 0, got {cpus}")
    if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        fail(
            f"resources.gpus_per_trial: must be 0, a fraction in (0, 1] or a whole number of GPUs, got {gpus}"
        )
    max_concurrent = res.get("max_concurrent", int, 1)
    if max_concurrent < 1:
        fail(f"resources.max_concurrent: must be >= 1, got {max_concurrent}")
    res.done(("cpus_per_trial", "gpus_per_trial", "max_concurrent"))
    device = "cuda" if gpus > 0 else "cpu"

    # ---- loop settings (fixed)
    loop = r.get("loop", dict, None) or {}
    for k in loop:
        if k in MANAGED_FIELDS:
            fail(
                f"loop.{k}: set by the study's top-level keys (dataset, teacher, student, resources), not in loop"
            )
        if k == "seed":
            fail("loop.seed: use the study's top-level seed (search) and final.seeds (re-runs)")
    base_values = {
        **loop,
        "dataset": dataset,
        "data_root": data_root,
        "download": download,
        "teacher_arch": t_arch,
        "teacher_path": str(t_path),
        "student_arch": student_arch,
        "device": device,
        "seed": study_seed,
    }
    base = _distill(base_values, "loop", fail)

    # ---- search
    srch = r.sub("search")
    space_raw = srch.get("space", dict, None) or {}
    space = tuple(_param(k, v, loop, fail) for k, v in space_raw.items())
    for p in space:  # every bound must give a valid loop config on its own
        for value in _extremes(p):
            _distill({**to_dict(base), p.name: value}, f"search.space.{p.name}", fail)
    metric = srch.get("metric", str, "val_acc")
    if metric == "test_acc":
        fail(
            "search.metric: test_acc would leak the test set into the search; use val_acc (method notes, section 7)"
        )
    if metric not in OBJECTIVES:
        fail(f"search.metric: unknown objective {metric!r} (known: {', '.join(OBJECTIVES)})")
    mode = srch.get("mode", str, "min" if metric in ("kl", "loss_s") else "max")
    if mode not in ("min", "max"):
        fail(f"search.mode: must be 'min' or 'max', got {mode!r}")
    n_trials = srch.get("num_trials", int, 8)
    if num_trials is not None:
        n_trials = num_trials
    if n_trials < 1:
        fail(f"search.num_trials: must be >= 1, got {n_trials}")
    if not space and n_trials > 1:
        fail("search.space: empty; give at least one parameter (or num_trials: 1)")
    sampler = srch.get("sampler", str, "tpe")
    if sampler not in ("tpe", "grid", "random"):
        fail(f"search.sampler: must be 'tpe', 'grid' or 'random', got {sampler!r}")
    if sampler == "grid":
        cells = 1
        for p in space:
            if p.type != "categorical":
                fail(f"search.space.{p.name}: the grid sampler needs categorical choices")
            cells *= len(p.choices)
        if n_trials != cells:
            fail(f"search.num_trials: the grid has {cells} cells, num_trials is {n_trials}")
    sampler_seed = srch.get("sampler_seed", int, 0)
    n_startup = srch.get("n_startup_trials", int, 4)
    if n_startup < 0:
        fail(f"search.n_startup_trials: must be >= 0, got {n_startup}")
    max_failures = srch.get("max_failures", int, 1)
    if max_failures < 0:
        fail(f"search.max_failures: must be >= 0, got {max_failures}")
    sch = srch.sub("scheduler")
    sch_type = sch.get("type", str, "asha")
    if sch_type not in ("asha", "none"):
        fail(f"search.scheduler.type: must be 'asha' or 'none', got {sch_type!r}")
    grace = sch.get("grace_period", int, max(base.eval_every, base.iterations // 4))
    rf = sch.get("reduction_factor", (int, float), 3.0)
    sch.done(("type", "grace_period", "reduction_factor"))
    if sch_type == "asha":
        if grace < 1 or grace > base.iterations:
            fail(
                f"search.scheduler.grace_period: must be in [1, loop.iterations={base.iterations}], got {grace}"
            )
        if grace < base.eval_every:
            fail(
                f"search.scheduler.grace_period: {grace} is shorter than loop.eval_every={base.eval_every}, no result would exist to decide on"
            )
        if not rf > 1:
            fail(f"search.scheduler.reduction_factor: must be > 1, got {rf}")
    scheduler = SchedulerSpec(sch_type, grace, float(rf))
    srch.done(
        (
            "space",
            "metric",
            "mode",
            "num_trials",
            "sampler",
            "sampler_seed",
            "n_startup_trials",
            "max_failures",
            "scheduler",
        )
    )

    # ---- evaluation
    ev = r.sub("evaluation")
    mte_search = _mte(ev.sub("mte_search"), MTESpec(10, 1.0, 100), fail)
    mte_final = _mte(ev.sub("mte_final"), MTESpec(100, 1.0, 1000), fail)
    image_points = ev.get("image_grids", int, 3)
    if image_points < 0:
        fail(f"evaluation.image_grids: must be >= 0, got {image_points}")
    ev.done(("mte_search", "mte_final", "image_grids"))

    # ---- final re-runs
    fin = r.sub("final")
    top_k = fin.get("top_k", int, 1)
    if top_k < 0:
        fail(f"final.top_k: must be >= 0, got {top_k}")
    seeds = fin.get("seeds", list, [0, 1, 2])
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds) or len(
        set(seeds)
    ) != len(seeds):
        fail(f"final.seeds: expected a list of distinct integers, got {seeds!r}")
    if top_k > 0 and not seeds:
        fail("final.seeds: empty while final.top_k > 0")
    final_iters = fin.get("iterations", int, base.iterations)
    if final_iters < 1:
        fail(f"final.iterations: must be >= 1, got {final_iters}")
    final_conc = fin.get("max_concurrent", int, max_concurrent)
    if final_conc < 1:
        fail(f"final.max_concurrent: must be >= 1, got {final_conc}")
    final_cpus = fin.get("cpus_per_trial", (int, float), cpus)
    if not final_cpus > 0:
        fail(f"final.cpus_per_trial: must be > 0, got {final_cpus}")
    fin.done(("top_k", "seeds", "iterations", "max_concurrent", "cpus_per_trial"))

    # ---- KD+AT baseline
    kd = r.sub("kdat")
    kd_enabled = kd.get("enabled", bool, False)
    kd_seeds = kd.get("seeds", list, [0])
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in kd_seeds) or (
        kd_enabled and not kd_seeds
    ):
        fail(f"kdat.seeds: expected a non-empty list of integers, got {kd_seeds!r}")
    kd_over = kd.get("config", dict, None) or {}
    kd.done(("enabled", "seeds", "config"))
    for k in kd_over:
        if k in (*MANAGED_FIELDS, "seed"):
            fail(f"kdat.config.{k}: set by the study, not here")
    kd_over = {k: tuple(v) if isinstance(v, list) else v for k, v in kd_over.items()}
    kdat = KDATSpec(kd_enabled, tuple(kd_seeds), kd_over)

    # ---- storage and tracking
    st = r.sub("storage")
    storage_path = (
        st.get("path", str, None) or os.environ.get("ZSKT_STORAGE") or str(zskt_home() / "studies")
    )
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    optuna_url = st.get("optuna", str, None)
    if optuna_url is None:
        local = storage_path if "://" not in storage_path else str(zskt_home() / "studies")
        optuna_url = f"sqlite:///{Path(local, name, 'optuna.db')}"
    elif "://" not in optuna_url:
        fail(
            f"storage.optuna: expected a database URL such as sqlite:////abs/optuna.db, got {optuna_url!r}"
        )
    st.done(("path", "optuna"))
    ml = r.sub("mlflow")
    tracking_uri = ml.get("tracking_uri", str, None) or default_tracking_uri()
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        rel = tracking_uri[len("sqlite:///") :]
        tracking_uri = f"sqlite:///{Path(rel).expanduser().resolve()}"
    elif "://" not in tracking_uri:
        fail(
            f"mlflow.tracking_uri: expected a URI (sqlite:////abs/mlflow.db, http://host:5000), got {tracking_uri!r}"
        )
    experiment = ml.get("experiment", str, None) or name
    ml.done(("tracking_uri", "experiment"))
    r.done(_TOP_KEYS)

    # a kdat config must build too
    spec = StudySpec(
        name=name,
        description=description,
        source=source,
        dataset=dataset,
        data_root=data_root,
        download=download,
        teacher=teacher,
        student_arch=student_arch,
        base=base,
        space=space,
        metric=metric,
        mode=mode,
        num_trials=n_trials,
        max_concurrent=max_concurrent,
        sampler=sampler,
        sampler_seed=sampler_seed,
        n_startup_trials=n_startup,
        scheduler=scheduler,
        max_failures=max_failures,
        cpus_per_trial=float(cpus),
        gpus_per_trial=float(gpus),
        final_top_k=top_k,
        final_seeds=tuple(seeds),
        final_iterations=final_iters,
        final_max_concurrent=final_conc,
        final_cpus_per_trial=float(final_cpus),
        mte_search=mte_search,
        mte_final=mte_final,
        image_points=image_points,
        kdat=kdat,
        storage_path=storage_path,
        optuna_storage=optuna_url,
        tracking_uri=tracking_uri,
        experiment=experiment,
        raw={},
    )
    if kd_enabled:
        try:
            spec.kdat_config(kd_seeds[0])
        except (KeyError, TypeError, ValueError) as e:
            fail(f"kdat.config: {e.args[0] if isinstance(e, KeyError) else e}")
    resolved = _resolved_dict(spec, raw)
    return dataclasses.replace(spec, raw=resolved)


def _resolved_dict(spec: StudySpec, raw: dict[str, Any]) -> dict[str, Any]:
    """The study with every default filled in (what ``study.yaml`` in MLflow shows)."""
    loop = {k: v for k, v in to_dict(spec.base).items() if k not in MANAGED_FIELDS and k != "seed"}
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
            "image_grids": spec.image_points,
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
        "storage": {"path": spec.storage_path, "optuna": spec.optuna_storage},
        "mlflow": {"tracking_uri": spec.tracking_uri, "experiment": spec.experiment},
    }


def _arch(value: str, key: str, fail) -> str:
    try:
        parse_arch(value)
    except ValueError as e:
        fail(f"{key}: {e}")
    return value.strip().lower()


def _distill(values: dict[str, Any], where: str, fail) -> DistillConfig:
    try:
        return from_dict(DistillConfig, values, where=where)
    except KeyError as e:
        fail(str(e.args[0]))
    except TypeError as e:
        fail(str(e))
    except ValueError as e:
        msg = str(e).removeprefix(f"{where}.")
        fail(f"{where}: {msg}")
    raise AssertionError  # pragma: no cover


def _param(name: str, value: Any, loop: Mapping[str, Any], fail) -> ParamSpec:
    key = f"search.space.{name}"
    if name not in _DISTILL_FIELDS:
        fail(
            f"{key}: unknown loop setting (searchable: {', '.join(k for k in _DISTILL_FIELDS if k not in MANAGED_FIELDS and k != 'seed')})"
        )
    if name in MANAGED_FIELDS or name == "seed":
        fail(f"{key}: {name} cannot be searched")
    if name in loop:
        fail(f"{key}: also fixed in loop.{name}; keep one of them")
    want = _DISTILL_TYPES[name]
    if isinstance(value, list):  # shorthand: a list is a categorical
        value = {"type": "categorical", "choices": value}
    r = _Reader(value, key, fail)
    kind = r.get("type", str)
    if kind == "categorical":
        choices = r.get("choices", list)
        r.done(("type", "choices"))
        if not choices:
            fail(f"{key}.choices: empty")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            fail(f"{key}.choices: duplicate values in {choices!r}")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                fail(f"{key}.choices: {c!r} is not a scalar")
        return ParamSpec(name, "categorical", choices=tuple(choices))
    if kind not in ("int", "float"):
        fail(f"{key}.type: must be 'int', 'float' or 'categorical', got {kind!r}")
    if kind == "int" and want is not int:
        fail(
            f"{key}.type: {name} is a {want.__name__} setting; use type: {'float' if want is float else 'categorical'}"
        )
    if kind == "float" and want is not float:
        fail(
            f"{key}.type: {name} is a {want.__name__} setting; use type: {'int' if want is int else 'categorical'}"
        )
    num = int if kind == "int" else float
    low = r.get("low", num)
    high = r.get("high", num)
    log = r.get("log", bool, False)
    step = r.get("step", num, None)
    r.done(("type", "low", "high", "log", "step"))
    if not (math.isfinite(low) and math.isfinite(high)):
        fail(f"{key}: bounds must be finite, got low={low} high={high}")
    if low >= high:
        fail(f"{key}: empty or inverted range: low={low} must be < high={high}")
    if log and low <= 0:
        fail(f"{key}: log scale needs low > 0, got low={low}")
    if step is not None:
        if step <= 0:
            fail(f"{key}.step: must be > 0, got {step}")
        if log:
            fail(f"{key}: step and log cannot be combined")
        if step > high - low:
            fail(f"{key}.step: {step} is larger than the range {low}..{high}")
    return ParamSpec(name, kind, low, high, log, step)


def _extremes(p: ParamSpec) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices)
    return [p.low, p.high]


def _mte(r: _Reader, default: MTESpec, fail) -> MTESpec:
    enabled = r.get("enabled", bool, default.enabled)
    k = r.get("k", int, default.k)
    xi = r.get("xi", float, default.xi)
    n_test = r.get("n_test", int, default.n_test)
    r.done(("enabled", "k", "xi", "n_test"))
    if k < 1:
        fail(f"{r.key('k')}: must be >= 1, got {k}")
    if not (xi > 0 and math.isfinite(xi)):
        fail(f"{r.key('xi')}: must be a positive number, got {xi}")
    if n_test < 1:
        fail(f"{r.key('n_test')}: must be >= 1, got {n_test}")
    return MTESpec(k, xi, n_test, enabled)


# ------------------------------------------------------------------ smoke version


def smoke_version(data: Any) -> Any:
    """A quick version of any study: 2 trials of a few iterations, 1 seed, tiny MTE, own name."""
    if not isinstance(data, Mapping):
        return data
    d = copy.deepcopy(dict(data))
    d["name"] = f"{d.get('name', 'study')}-smoke"
    if isinstance(d.get("mlflow"), Mapping) and d["mlflow"].get("experiment"):
        d["mlflow"] = {**d["mlflow"], "experiment": f"{d['mlflow']['experiment']}-smoke"}
    loop = dict(d.get("loop") or {})
    loop["iterations"] = min(int(loop.get("iterations", 20)), 20)
    loop["eval_every"] = min(int(loop.get("eval_every", 10)), 10)
    loop["batch_size"] = min(int(loop.get("batch_size", 128)), 64)
    d["loop"] = loop
    search = dict(d.get("search") or {})
    search["num_trials"] = 2
    if search.get("sampler") == "grid":
        search["sampler"] = "random"
    search["n_startup_trials"] = 2
    sched = dict(search.get("scheduler") or {})
    if sched.get("type", "asha") == "asha":
        sched["grace_period"] = loop["eval_every"]
    search["scheduler"] = sched
    d["search"] = search
    d["evaluation"] = {
        **(d.get("evaluation") or {}),
        "mte_search": {"k": 3, "n_test": 20},
        "mte_final": {"k": 5, "n_test": 50},
    }
    final = dict(d.get("final") or {})
    final.pop("iterations", None)
    final["top_k"] = min(int(final.get("top_k", 1)), 1)
    final["seeds"] = list(final.get("seeds", [0]))[:1]
    d["final"] = final
    if isinstance(d.get("kdat"), Mapping):
        d["kdat"] = {**d["kdat"], "enabled": False}
    return d


# ------------------------------------------------------------------ checks against the machine


def preflight(
    spec: StudySpec, cluster: Mapping[str, float] | None = None, strict: bool = True
) -> list[str]:
    """Check a spec against what exists: teacher file, data files, resources.

    ``cluster`` maps ``"CPU"``/``"GPU"`` to totals (``ray.cluster_resources()``; default: this
    machine). With ``strict=False`` (a cluster that may autoscale) missing resources are returned
    as warnings instead of raised. Returns warnings; raises :class:`StudyError`.
    """
    label = spec.source or spec.name
    warnings: list[str] = []

    def fail(msg: str) -> None:
        raise StudyError(f"{label}: {msg}")

    if cluster is None:
        cluster = {"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus())}
    for key, need, what in (
        ("CPU", max(spec.cpus_per_trial, spec.final_cpus_per_trial), "cpus_per_trial"),
        ("GPU", spec.gpus_per_trial, "gpus_per_trial"),
    ):
        have = float(cluster.get(key, 0.0))
        if need > have:
            msg = f"resources.{what}: a trial needs {need:g} {key}s but the cluster has {have:g}"
            if strict:
                fail(msg)
            warnings.append(msg + " (waiting for the autoscaler)")
    if spec.device == "cuda" and strict and float(cluster.get("GPU", 0.0)) == 0.0:
        fail("resources.gpus_per_trial: > 0 but no GPU is available")
    if not Path(spec.teacher.path).is_file() and not spec.teacher.train_if_missing:
        fail(
            f"teacher file not found: {spec.teacher.path} (teacher.path; set teacher.train_if_missing: true "
            "or train it with `zskt teacher train`)"
        )
    if Path(spec.teacher.path).is_file():
        from ..teacher import read_teacher_meta

        try:
            meta = read_teacher_meta(spec.teacher.path)
        except Exception as e:  # noqa: BLE001 - a broken file is a one-line error
            fail(f"teacher.path: {spec.teacher.path}: {str(e).splitlines()[0]}")
        if meta.get("dataset") != spec.dataset or meta.get("arch") != spec.teacher.arch:
            fail(
                f"teacher.path: {spec.teacher.path} holds {meta.get('arch')} on {meta.get('dataset')}, "
                f"not {spec.teacher.arch} on {spec.dataset}"
            )
    if spec.dataset != "digits" and not spec.download:
        from ..data import load_dataset

        try:
            load_dataset(spec.dataset, spec.data_root, download=False)
        except FileNotFoundError as e:
            fail(f"data_root: {str(e).splitlines()[0]}")
    return warnings


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover
        return 0
