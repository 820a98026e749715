"""Typed, frozen run configurations, loaded from and written to YAML.

One dataclass per kind of run. Field names are the vocabulary used everywhere else: study files,
search spaces, MLflow params and analysis tables all say ``n_g``, ``n_s``, ``beta``, ``z_dim``.
Each field carries its documentation in ``metadata["doc"]`` so the CLI and the study validator can
show it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .losses import ADVERSARIAL_DISCREPANCIES, KL_REDUCTIONS, STUDENT_DISCREPANCIES
from .models import check_arch_input, has_attention, has_batch_norm, parse_arch

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
# Weights of the prior terms of the generator loss (0: the term is not computed).
PRIOR_FIELDS: tuple[str, ...] = ("prior_bn", "prior_onehot", "prior_entropy")
# The fields that make up the generator's and the student's objectives (what objective_name reads).
OBJECTIVE_FIELDS: tuple[str, ...] = (
    "adversarial_discrepancy",
    "student_discrepancy",
    *PRIOR_FIELDS,
)

T = TypeVar("T")


def _f(default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """One zero-shot distillation run. Defaults are the paper's CIFAR-10 settings."""

    dataset: str = _f(
        "cifar10",
        "Data set of the teacher: 'digits', 'cifar10', 'svhn' or 'toy2d' (only for evaluation; training is data-free).",
    )
    data_root: str = _f("data", "Directory holding the real data sets (CIFAR-10 / SVHN files).")
    download: bool = _f(False, "Download CIFAR-10 / SVHN into data_root when missing.")
    teacher_arch: str = _f(
        "wrn-40-2", "Teacher architecture, 'wrn-<depth>-<width>' ('mlp-<depth>x<width>' for toy2d)."
    )
    teacher_path: str | None = _f(
        None, "Teacher weights file; None uses the default location of the teacher store."
    )
    student_arch: str = _f(
        "wrn-16-1", "Student architecture, 'wrn-<depth>-<width>' ('mlp-<depth>x<width>' for toy2d)."
    )
    iterations: int = _f(80_000, "Outer iterations N (paper: 80k CIFAR-10, 50k SVHN).")
    n_g: int = _f(1, "Generator steps per iteration (paper: 1).")
    n_s: int = _f(
        10, "Student steps per iteration (paper: 10; the code's argparse default 7 was not used)."
    )
    batch_size: int = _f(128, "Pseudo images per batch (paper: 128).")
    z_dim: int = _f(100, "Noise dimension of the generator (paper: 100).")
    lr_g: float = _f(1e-3, "Adam learning rate of the generator (paper: 1e-3).")
    lr_s: float = _f(2e-3, "Adam learning rate of the student (paper: 2e-3).")
    grad_clip: float = _f(
        5.0, "Gradient-norm clip for generator and student (paper: 5); 0 disables."
    )
    beta: float = _f(
        250.0,
        "Attention-transfer weight per layer, summed over the 3 groups (paper: 250); must be 0 "
        "when a network is an MLP (no attention groups).",
    )
    kl_reduction: str = _f(
        "mean", "KL reduction: 'mean' (/(B*C), the paper's code), 'batchmean' (/B) or 'sum'."
    )
    temperature: float = _f(1.0, "Softmax temperature of the KL terms (paper: 1).")
    adversarial_discrepancy: str = _f(
        "kl",
        "What the generator maximises between teacher and student on its images: 'kl' "
        "(KL(T || S), the paper's), 'l1' (DFAD's mean absolute error of the logits) or 'none' "
        "(no adversarial term: the generator learns only from the prior terms, and with every "
        "prior weight 0 its steps are skipped).",
    )
    student_discrepancy: str = _f(
        "kl",
        "What the student minimises against the teacher, besides beta * attention: 'kl' "
        "(the paper's) or 'l1' (DFAD's mean absolute error of the logits).",
    )
    prior_bn: float = _f(
        0.0,
        "Weight of the batch-norm statistics prior in the generator loss (DeepInversion): per "
        "teacher batch-norm layer, distance of the pseudo batch's mean and variance from the "
        "running statistics; 0 (the paper's) leaves it out. Needs a teacher with batch norm (WRN).",
    )
    prior_onehot: float = _f(
        0.0,
        "Weight of DAFL's one-hot term in the generator loss (cross-entropy of the teacher against "
        "its own argmax); 0 (the paper's) leaves it out.",
    )
    prior_entropy: float = _f(
        0.0,
        "Weight of DAFL's information-entropy term in the generator loss (sum p log10 p of the "
        "teacher's batch-mean softmax: spreads pseudo images over the classes); 0 (the paper's) "
        "leaves it out.",
    )
    seed: int = _f(0, "Random seed of networks, noise and data splits (paper: 0, 1, 2).")
    eval_every: int = _f(
        1000, "Evaluate on the validation split every this many iterations (and at the end)."
    )
    eval_batch_size: int = _f(500, "Batch size for accuracy evaluation.")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    precision: str = _f(
        "fp32",
        "Arithmetic of the networks' forward passes: 'fp32' (the paper's; no TF32), 'tf32' (fp32 "
        "with TF32 matmuls/convolutions on CUDA; plain fp32 on the CPU), 'bf16' or 'fp16' "
        "(autocast; fp16 adds a gradient scaler). Loss terms are always computed in fp32.",
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_positive(
            self, ("iterations", "n_s", "batch_size", "z_dim", "eval_every", "eval_batch_size")
        )
        check_non_negative(self, ("n_g", "grad_clip", "beta"))
        check_positive(self, ("lr_g", "lr_s", "temperature"))
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(
                f"kl_reduction must be one of {KL_REDUCTIONS}, got {self.kl_reduction!r}"
            )
        check_networks(self, self.dataset, ("teacher_arch", "student_arch"))
        check_objectives(self)

    @property
    def generator_learns(self) -> bool:
        """Whether the generator has a loss: an adversarial term or a prior with weight > 0."""
        return self.adversarial_discrepancy != "none" or any(
            getattr(self, name) > 0 for name in PRIOR_FIELDS
        )


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Training a teacher with the paper's recipe (SGD, step schedule)."""

    dataset: str = _f("cifar10", "Data set: 'digits', 'cifar10', 'svhn' or 'toy2d'.")
    arch: str = _f(
        "wrn-40-2", "Architecture, 'wrn-<depth>-<width>' ('mlp-<depth>x<width>' for toy2d)."
    )
    data_root: str = _f("data", "Directory holding the real data sets.")
    download: bool = _f(False, "Download the data set into data_root when missing.")
    epochs: int = _f(200, "Training epochs (CIFAR-10 200, SVHN 100, digits 30, toy2d 20).")
    milestones: tuple[int, ...] = _f(
        (60, 120, 160), "Epochs at which the learning rate is multiplied by gamma."
    )
    gamma: float = _f(0.2, "Learning-rate decay factor at each milestone (paper: 0.2).")
    lr: float = _f(0.1, "SGD learning rate (paper: 0.1).")
    momentum: float = _f(0.9, "SGD momentum (paper: 0.9).")
    weight_decay: float = _f(5e-4, "SGD weight decay (paper: 5e-4).")
    batch_size: int = _f(128, "Batch size (paper: 128).")
    augment: bool = _f(
        True, "Random crop (pad 4) + horizontal flip; the paper uses it for CIFAR-10 only."
    )
    seed: int = _f(0, "Random seed.")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")

    def __post_init__(self) -> None:
        check_positive(self, ("epochs", "batch_size"))
        check_positive(self, ("lr",))
        check_networks(self, self.dataset, ("arch",))

    @classmethod
    def recipe(cls, dataset: str, arch: str, **overrides: Any) -> TeacherConfig:
        """The paper's recipe for ``dataset`` (digits, toy2d: a short schedule of the same shape)."""
        per_dataset: dict[str, dict[str, Any]] = {
            "cifar10": {"epochs": 200, "milestones": (60, 120, 160), "augment": True},
            "svhn": {"epochs": 100, "milestones": (30, 60, 80), "augment": False},
            "digits": {
                "epochs": 30,
                "milestones": (15, 22, 27),
                "augment": False,
                "batch_size": 64,
            },
            # 2,100 training points, 17 steps per epoch: about 2 s on one core.
            "toy2d": {"epochs": 20, "milestones": (10, 15, 18), "augment": False},
        }
        if dataset not in per_dataset:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(per_dataset)}")
        return cls(dataset=dataset, arch=arch, **{**per_dataset[dataset], **overrides})


@dataclasses.dataclass(frozen=True)
class KDATConfig:
    """Few-shot KD+AT baseline with M images per class (M = -1: the full training split)."""

    dataset: str = _f("cifar10", "Data set: 'digits', 'cifar10', 'svhn' or 'toy2d'.")
    data_root: str = _f("data", "Directory holding the real data sets.")
    download: bool = _f(False, "Download the data set into data_root when missing.")
    teacher_arch: str = _f("wrn-40-2", "Teacher architecture.")
    teacher_path: str | None = _f(
        None, "Teacher weights; None uses the teacher store's default location."
    )
    student_arch: str = _f("wrn-16-1", "Student architecture.")
    m_per_class: int = _f(200, "Images per class M; -1 uses the whole training split.")
    base_epochs: int = _f(
        200, "Epochs of the full-data schedule; scaled by N_train/(C*M) for M images per class."
    )
    base_milestones: tuple[int, ...] = _f(
        (60, 120, 160), "Milestones of the full-data schedule (scaled like the epochs)."
    )
    gamma: float = _f(0.2, "Learning-rate decay factor at each milestone.")
    lr: float = _f(0.1, "SGD learning rate.")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(5e-4, "SGD weight decay.")
    batch_size: int = _f(128, "Batch size.")
    alpha: float = _f(0.9, "KD weight: loss = (1-alpha) CE + 2 alpha T^2 KL + beta AT.")
    temperature: float = _f(4.0, "KD temperature.")
    beta: float = _f(
        1000.0,
        "Attention weight of the baseline (Zagoruyko & Komodakis: 1000); 0 for MLPs (toy2d).",
    )
    augment: bool = _f(True, "Random crop + flip (CIFAR-10 only; ignored for other data sets).")
    max_epochs: int = _f(0, "Upper bound on the scaled epochs (0: no bound).")
    seed: int = _f(0, "Seed; also picks the M-per-class subset.")
    device: str = _f("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'.")

    @classmethod
    def recipe(cls, dataset: str, **overrides: Any) -> KDATConfig:
        """The baseline for ``dataset``: the base schedule is that data set's teacher schedule."""
        vector = dataset == "toy2d"  # MLPs, which have no attention groups
        teacher = TeacherConfig.recipe(dataset, "mlp-3x64" if vector else "wrn-16-1")
        base: dict[str, Any] = {
            "base_epochs": teacher.epochs,
            "base_milestones": teacher.milestones,
            "augment": teacher.augment,
            "batch_size": teacher.batch_size,
        }
        if vector:
            base.update(teacher_arch="mlp-3x64", student_arch="mlp-2x16", beta=0.0)
        return cls(dataset=dataset, **{**base, **overrides})

    def __post_init__(self) -> None:
        if self.m_per_class == 0 or self.m_per_class < -1:
            raise ValueError(f"m_per_class must be >= 1 or -1 (full data), got {self.m_per_class}")
        check_positive(self, ("base_epochs", "batch_size"))
        check_networks(self, self.dataset, ("teacher_arch", "student_arch"))


def check_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """Raise a ValueError naming the first field that is not > 0."""
    for name in names:
        value = getattr(cfg, name)
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def check_networks(cfg: Any, dataset: str, fields: tuple[str, ...]) -> None:
    """Known architectures that take ``dataset``'s inputs; ``beta`` must be 0 with an MLP.

    MLPs have no attention groups, so an attention weight would silently do nothing: it is
    refused with a line naming ``beta`` rather than ignored. Unknown data sets are left to the
    data layer (it names them when loading).
    """
    from .data import DATASETS, dataset_info

    for name in fields:
        try:
            parse_arch(getattr(cfg, name))
            if dataset in DATASETS:
                check_arch_input(getattr(cfg, name), not dataset_info(dataset).is_image, dataset)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    beta = getattr(cfg, "beta", 0.0)
    mlps = [getattr(cfg, n) for n in fields if not has_attention(getattr(cfg, n))]
    if beta > 0 and mlps:
        raise ValueError(
            f"beta must be 0 for {mlps[0]}: MLPs have no attention groups (got beta={beta:g}; "
            "set it to 0 and do not search it)"
        )


def check_objectives(cfg: DistillConfig) -> None:
    """The generator's and the student's objectives: known names, usable prior weights.

    Settings that would silently do nothing are refused, like ``beta`` for MLPs: a batch-norm
    prior on a teacher without batch norm, a prior with no generator steps (``n_g = 0``), and a
    non-default temperature or KL reduction when neither discrepancy is a KL.
    """
    for name, allowed in (
        ("adversarial_discrepancy", ADVERSARIAL_DISCREPANCIES),
        ("student_discrepancy", STUDENT_DISCREPANCIES),
    ):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    for name in PRIOR_FIELDS:
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if cfg.prior_bn > 0 and not has_batch_norm(cfg.teacher_arch):
        raise ValueError(
            f"prior_bn must be 0 for teacher {cfg.teacher_arch}: it has no batch-norm layers "
            f"(got prior_bn={cfg.prior_bn:g})"
        )
    on = [name for name in PRIOR_FIELDS if getattr(cfg, name) > 0]
    if on and cfg.n_g == 0:
        raise ValueError(
            f"{on[0]} needs generator steps, but n_g is 0 (got {on[0]}={getattr(cfg, on[0]):g})"
        )
    if "kl" not in (cfg.adversarial_discrepancy, cfg.student_discrepancy):
        for name, default in (("temperature", 1.0), ("kl_reduction", "mean")):
            if getattr(cfg, name) != default:
                raise ValueError(
                    f"{name} applies to KL terms only, and adversarial_discrepancy="
                    f"{cfg.adversarial_discrepancy!r} with student_discrepancy="
                    f"{cfg.student_discrepancy!r} has none (got {name}={getattr(cfg, name)!r})"
                )


def check_non_negative(cfg: Any, names: tuple[str, ...]) -> None:
    """Raise a ValueError naming the first field that is < 0."""
    for name in names:
        value = getattr(cfg, name)
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


# ---------------------------------------------------------------- dict / YAML round trip


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> documentation string."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a (simple) field annotation; allow int for float, list for tuple."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError(f"{name}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build ``cls`` from a mapping: unknown keys and wrong types raise, naming the key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"unknown key {prefix}{unknown[0]!s} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in data.items():
        try:
            kwargs[key] = _coerce(key, value, hints[key])
        except TypeError as e:
            raise TypeError(f"{prefix}{e}") from None
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{prefix}{e}" if prefix else str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-python dict of a config (tuples become lists, so YAML stays readable)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def save_yaml(cfg: Any, path: str | Path) -> Path:
    """Write a config as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a config of type ``cls`` from YAML (an error names the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    try:
        return from_dict(cls, data)
    except (KeyError, TypeError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        raise type(e)(f"{path}: {msg}") from None


# What each adversarial discrepancy is called in reports: the method it comes from.
_ADVERSARIAL_NAMES = {
    "kl": "ZSKT (adversarial KL)",
    "l1": "DFAD-style (adversarial L1)",
    "none": "untrained generator",
}
_PRIOR_NAMES = {"prior_bn": "BN prior", "prior_onehot": "one-hot", "prior_entropy": "entropy"}


def objective_name(cfg: DistillConfig) -> str:
    """The objectives of ``cfg`` named by the method they come from, for reports: "ZSKT
    (adversarial KL)", "DFAD-style (adversarial L1)", "untrained generator" (no adversarial term
    and no prior: the generator takes no step), then each prior with its weight ("+ BN prior
    0.005"); DAFL's two terms without an adversarial term are "DAFL-style (one-hot 1 + entropy
    5)", and any other generator without an adversarial term is "no adversarial term + ...". A
    student minimising L1 adds ", student L1". The one place these names are made."""
    weights = {name: getattr(cfg, name) for name in PRIOR_FIELDS}
    priors = [f"{_PRIOR_NAMES[name]} {w:g}" for name, w in weights.items() if w > 0]
    if cfg.adversarial_discrepancy != "none" or not priors:
        text = " + ".join([_ADVERSARIAL_NAMES[cfg.adversarial_discrepancy], *priors])
    elif weights["prior_bn"] == 0 and weights["prior_onehot"] > 0 and weights["prior_entropy"] > 0:
        text = f"DAFL-style ({' + '.join(priors)})"
    else:
        text = " + ".join(["no adversarial term", *priors])
    return text + (", student L1" if cfg.student_discrepancy == "l1" else "")
