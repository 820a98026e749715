"""Model files: weights plus the metadata needed to rebuild and trust them.

Written with ``torch.save`` of plain tensors and primitives, read with ``weights_only=True``:
loading a model file never runs code from it. Teachers, zero-shot students and KD+AT students all
use this one format (``meta`` names ``arch``, ``dataset``, ``num_classes``, ``in_channels``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import to_dict
from .models import build_model
from .names import TEST_ACC, VAL_ACC

MODEL_FORMAT = 1
REQUIRED_META = ("arch", "dataset", "num_classes", "in_channels")


def save_model(model: nn.Module, meta: dict[str, Any], path: str | Path) -> Path:
    """Write weights and metadata atomically (a crash mid-write leaves no broken file)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"model metadata lacks {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": MODEL_FORMAT, "meta": dict(meta), "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path


def student_meta(cfg: Any, info: Any, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Metadata of a student model file (zero-shot or KD+AT), the same for the CLI and studies:
    what rebuilds the network, the config it was trained with, and its final accuracies."""
    return {
        "arch": cfg.student_arch,
        "dataset": cfg.dataset,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        **{k: float(v) for k, v in metrics.items() if k in (VAL_ACC, TEST_ACC)},
        "config": to_dict(cfg),
        **extra,
    }


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The raw contents of a model file, checked for format; a clear error when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or a corrupt file
        raise ValueError(f"{path} is not a readable zskt-ray model file: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a zskt-ray model file")
    return blob


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    expect: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a model file in eval mode; ``expect`` checks metadata (e.g. dataset)."""
    blob = read_model_file(path)
    meta = blob["meta"]
    for key, want in (expect or {}).items():
        if want is not None and meta.get(key) != want:
            raise ValueError(f"{path} was made with {key}={meta.get(key)!r}, expected {want!r}")
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), meta
