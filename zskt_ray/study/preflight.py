"""Preflight: a checked study against what exists (teacher file, data files, resources).

Nothing here creates a file, a folder, a store or a Ray session. This module imports no Ray,
Optuna or MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import first_line
from .errors import Problems

if TYPE_CHECKING:
    from .spec import StudySpec


def preflight(
    spec: StudySpec, cluster: Mapping[str, float] | None = None, strict: bool = True
) -> list[str]:
    """Check a spec against what exists: teacher file, data files, resources.

    ``cluster`` maps ``"CPU"``/``"GPU"`` to totals (``ray.cluster_resources()``; default: this
    machine). With ``strict=False`` (a cluster that may autoscale) missing resources are returned
    as warnings instead of raised. Every problem is reported; returns warnings.
    """
    problems = Problems(spec.source or spec.name)
    warnings: list[str] = []
    if cluster is None:
        cluster = {"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus())}
    for key, need, what in (
        ("CPU", max(spec.resources.cpus_per_trial, spec.final.cpus_per_trial), "cpus_per_trial"),
        ("GPU", spec.resources.gpus_per_trial, "gpus_per_trial"),
    ):
        have = float(cluster.get(key, 0.0))
        if need > have:
            msg = f"a trial needs {need:g} {key}s but the cluster has {have:g}"
            if strict:
                problems.add(f"resources.{what}", msg)
            else:
                warnings.append(f"resources.{what}: {msg} (waiting for the autoscaler)")
    _check_teacher_file(spec, problems)
    _check_data(spec, problems)
    problems.raise_if_any()
    if spec.design is not None and len(spec.design.seeds) < 2:
        warnings.append(
            "ablation.seeds: one seed gives each cell's value but no interval and no paired "
            "test, so the report cannot tell an effect from seed noise (give 2 seeds or more)"
        )
    return warnings


def _check_data(spec: StudySpec, problems: Problems) -> None:
    """The data set's files are there (digits ships with scikit-learn; ``download`` fetches)."""
    if spec.dataset == "digits" or spec.download:
        return
    from ..data import load_dataset

    try:
        load_dataset(spec.dataset, spec.data_root, download=False)
    except FileNotFoundError as e:
        problems.add("data_root", first_line(e))


def _check_teacher_file(spec: StudySpec, problems: Problems) -> None:
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
        problems.add("teacher.path", f"{path}: {first_line(e)}")


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover
        return 0
