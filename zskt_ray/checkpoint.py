"""Model files: weights plus the metadata needed to rebuild and trust them.

Written with ``torch.save`` of plain tensors and primitives, read with ``weights_only=True``:
loading a model file never runs code from it. Teachers, zero-shot students and KD+AT students all
use this one format (``meta`` names ``arch``, ``dataset``, ``num_classes``, ``in_channels``).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import to_dict
from .models import build_model
from .names import TEST_ACC, VAL_ACC
from .utils import first_line

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


def _why_unreadable(path: Path, e: BaseException) -> str:
    """A short reason for a failed ``torch.load`` (never torch's advice to load unsafely)."""
    if isinstance(e, IsADirectoryError):
        return "it is a folder"
    if isinstance(e, (PermissionError, FileNotFoundError)):
        return e.strerror or type(e).__name__
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return err.strerror or type(err).__name__
    if head.startswith(b"PK"):  # torch.save's zip archive
        if isinstance(e, pickle.UnpicklingError):
            return "it holds Python objects besides weights; zskt-ray loads weights only"
        return "the file is truncated or corrupt"
    if head.startswith(b"\x80"):
        return "a plain pickle, not a torch.save file; zskt-ray loads weights only"
    return "not a PyTorch file"


def load_file(path: str | Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``; any failure is one line naming the file.

    ``what`` ("model", "checkpoint") goes into the message: "PATH: not a zskt-ray model file
    (the file is truncated or corrupt)". Torch's warnings about pickle protocols are silenced.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused, a corrupt or foreign file
        raise ValueError(
            f"{path}: not a zskt-ray {what} file ({_why_unreadable(path, e)})"
        ) from None


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The raw contents of a model file, checked for format; a clear error when missing."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"{path}: not a zskt-ray model file (it is a folder)")
        raise FileNotFoundError(f"model file not found: {path}")
    blob = load_file(path, "model")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a zskt-ray model file (no zskt-ray format marker)")
    if not isinstance(blob.get("meta"), dict) or "state_dict" not in blob:
        hint = "a training checkpoint" if "student" in blob and "config" in blob else "incomplete"
        raise ValueError(f"{path}: not a zskt-ray model file ({hint}, no weights and metadata)")
    missing = [k for k in REQUIRED_META if k not in blob["meta"]]
    if missing:
        raise ValueError(
            f"{path}: not a zskt-ray model file (its metadata lacks {', '.join(missing)})"
        )
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
    try:
        model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        first = first_line(e)
        raise ValueError(
            f"{path}: its weights do not match its metadata ({meta.get('arch')}, "
            f"{meta.get('num_classes')} classes, {meta.get('in_channels')} channels): {first[:200]}"
        ) from None
    return model.to(device).eval(), meta
