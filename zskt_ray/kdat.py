"""Few-shot KD+AT baseline (section 4 of the method doc): M real images per class.

Loss = 0.1 CE + 2*0.9*4^2 KL_mean(T/4) + 1000 sum_l AT_l, SGD with the teacher's schedule whose
epochs and milestones are scaled by N_train / (C*M), so every M gets about the same number of
iterations. The subset depends on the seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from .config import KDATConfig
from .data import DataSplits, load_dataset, make_loader, train_labels
from .losses import kd_at_terms
from .models import build_model
from .teacher import train_supervised
from .utils import accuracy, resolve_device, seed_everything


def few_shot_indices(
    labels: np.ndarray, m_per_class: int, num_classes: int, seed: int
) -> np.ndarray:
    """M indices per class drawn with ``seed`` (all indices for M = -1), sorted."""
    if m_per_class == -1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < m_per_class:
            raise ValueError(
                f"class {c} has only {len(idx)} training images, fewer than M={m_per_class}"
            )
        picked.append(rng.choice(idx, size=m_per_class, replace=False))
    return np.sort(np.concatenate(picked))


def scaled_schedule(cfg: KDATConfig, n_train: int, num_classes: int) -> tuple[int, tuple[int, ...]]:
    """Epochs and milestones scaled by N_train/(C*M) (unchanged for M = -1)."""
    if cfg.m_per_class == -1:
        return cfg.base_epochs, cfg.base_milestones
    scale = n_train / (num_classes * cfg.m_per_class)
    epochs = max(1, math.ceil(cfg.base_epochs * scale))
    milestones = tuple(max(1, round(m * scale)) for m in cfg.base_milestones)
    if cfg.max_epochs > 0 and epochs > cfg.max_epochs:
        ratio = cfg.max_epochs / epochs
        epochs = cfg.max_epochs
        milestones = tuple(max(1, round(m * ratio)) for m in milestones)
    return epochs, milestones


def train_kdat(
    cfg: KDATConfig,
    teacher: nn.Module,
    splits: DataSplits | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a KD+AT student; returns it with its final metrics (val/test accuracy, schedule)."""
    device = resolve_device(cfg.device)
    augment = cfg.augment and cfg.dataset == "cifar10"
    splits = splits or load_dataset(
        cfg.dataset, cfg.data_root, download=cfg.download, augment=augment
    )
    info = splits.info
    labels = train_labels(splits.train)
    idx = few_shot_indices(labels, cfg.m_per_class, info.num_classes, cfg.seed)
    subset = Subset(splits.train, idx.tolist())
    epochs, milestones = scaled_schedule(cfg, len(labels), info.num_classes)
    seed_everything(cfg.seed)
    student = build_model(cfg.student_arch, info.num_classes, info.in_channels).to(device)
    teacher = teacher.to(device).eval().requires_grad_(False)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits, t_feats = teacher(x)
        s_logits, s_feats = model(x)
        terms = kd_at_terms(
            s_logits, t_logits, y, s_feats, t_feats, cfg.alpha, cfg.temperature, cfg.beta
        )
        return terms["loss"]

    def on_epoch(epoch: int, loss: float) -> None:
        if log is not None and (epoch % max(1, epochs // 10) == 0 or epoch == epochs):
            log(f"kd+at M={cfg.m_per_class}: epoch {epoch}/{epochs} loss {loss:.4f}")

    start = time.perf_counter()
    loader = make_loader(subset, cfg.batch_size, shuffle=True, seed=cfg.seed)
    train_supervised(
        student,
        loader,
        loss_fn,
        epochs,
        milestones,
        cfg.gamma,
        cfg.lr,
        cfg.momentum,
        cfg.weight_decay,
        device,
        on_epoch,
    )
    metrics = {
        "val_acc": accuracy(student, make_loader(splits.val, 500, shuffle=False), device),
        "test_acc": accuracy(student, make_loader(splits.test, 500, shuffle=False), device),
        "epochs": epochs,
        "n_images": len(idx),
        "train_seconds": time.perf_counter() - start,
    }
    return student, metrics
