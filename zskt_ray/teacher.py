"""Teachers: training with the paper's recipe, and a store that reuses what exists.

A teacher file (``zskt_ray.checkpoint`` format) holds the weights *and* what is needed to trust
them: architecture, data set, normalisation, test and validation accuracy, the training config, and
where it was trained (``trained_on``, when the trainer says so). Loading it never runs code from
the file (``weights_only=True``).

The store trains a missing teacher once, however many processes ask for it at once:
:func:`ensure_teacher` holds a file lock beside the teacher file (``<file>.lock``, ``filelock``:
``flock``, dropped by the operating system when its holder dies) while it looks for the file and
trains it, so a second study that needs the same teacher waits and then reuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import load_model, read_model_file, save_model
from .config import TeacherConfig, to_dict
from .data import DataSplits, dataset_info, load_dataset, make_loader, prepare_dataset
from .models import build_model
from .paths import default_teacher_path
from .utils import accuracy, acquire_lock, resolve_device, seed_everything, small_net_threads


def train_supervised(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    milestones: tuple[int, ...],
    gamma: float,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """SGD with a multi-step schedule (the recipe shared by teachers and the KD+AT baseline)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    model.train()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * y.numel()
            n += y.numel()
        sched.step()
        if not total == total:  # NaN
            raise RuntimeError(f"training loss became NaN in epoch {epoch + 1}")
        if on_epoch is not None:
            on_epoch(epoch + 1, total / max(n, 1))


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)
    return F.cross_entropy(logits, y, reduction="mean")


def train_teacher(
    cfg: TeacherConfig,
    path: str | Path | None = None,
    splits: DataSplits | None = None,
    log: Callable[[str], None] | None = print,
    trained_on: Mapping[str, Any] | None = None,
) -> Path:
    """Train a teacher with ``cfg`` and write it (with its accuracies) to ``path``.

    The data set is prepared first (:func:`~zskt_ray.data.prepare_dataset`: one download per
    data root however many processes train at once), then read with ``download=False``.
    ``trained_on`` (where it ran: node, host, device) is recorded in the file's metadata.
    """
    device = resolve_device(cfg.device)
    path = Path(path) if path is not None else default_teacher_path(cfg.dataset, cfg.arch, cfg.seed)
    if splits is None:
        prepare_dataset(cfg.dataset, cfg.data_root, download=cfg.download, log=log)
        splits = load_dataset(cfg.dataset, cfg.data_root, download=False, augment=cfg.augment)
    info = splits.info
    seed_everything(cfg.seed)
    model = build_model(cfg.arch, info.num_classes, info.in_channels).to(device)
    loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    start = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> None:
        if log is not None and (epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs):
            log(f"teacher {cfg.arch} on {cfg.dataset}: epoch {epoch}/{cfg.epochs} loss {loss:.4f}")

    with small_net_threads(cfg.arch):
        train_supervised(
            model,
            loader,
            _cross_entropy,
            cfg.epochs,
            cfg.milestones,
            cfg.gamma,
            cfg.lr,
            cfg.momentum,
            cfg.weight_decay,
            device,
            on_epoch,
        )
        val_acc = accuracy(model, make_loader(splits.val, 500, shuffle=False), device)
        test_acc = accuracy(model, make_loader(splits.test, 500, shuffle=False), device)
    meta = {
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "train_seconds": time.perf_counter() - start,
        "config": to_dict(cfg),
    }
    if trained_on:
        meta["trained_on"] = dict(trained_on)
    save_model(model, meta, path)
    if log is not None:
        log(f"teacher saved to {path}: test {test_acc:.2f}%  val {val_acc:.2f}%")
    return path


def _check_image_size(path: str | Path, meta: dict[str, Any]) -> None:
    """Refuse a teacher trained at another input size than its data set has now.

    The networks are fully convolutional, so such a teacher would load and silently score badly
    (this happens to digits teachers made before digits moved from upsampled 16x16 to native 8x8).
    """
    size = meta.get("image_size")
    try:
        want = dataset_info(meta["dataset"]).image_size
    except ValueError:
        return
    if size is not None and size != want:
        raise ValueError(
            f"teacher {path} was trained on {size}x{size} {meta['dataset']} images, but this "
            f"version feeds {want}x{want}: move the file away, or overwrite it with "
            "`zskt teacher train --force` (same data set, architecture and --out)"
        )


def read_teacher_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a teacher file (architecture, data set, accuracies, ...)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"teacher file not found: {path} (train one with `zskt teacher train`)"
        )
    meta = read_model_file(path)["meta"]
    _check_image_size(path, meta)
    return meta


def load_teacher(
    path: str | Path,
    device: torch.device | str = "cpu",
    expect_dataset: str | None = None,
    expect_arch: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a teacher (eval mode, frozen) and its metadata; check data set and architecture."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"teacher file not found: {path} (train one with `zskt teacher train`)"
        )
    model, meta = load_model(path, device, expect={"dataset": expect_dataset, "arch": expect_arch})
    _check_image_size(path, meta)
    model.requires_grad_(False)
    return model, meta


# How a missing teacher gets trained: ``train_teacher`` here, a Ray task on a GPU node in a study
# (zskt_ray.study.nodes): called as ``train(cfg, path, log)``, it writes the file at ``path``.
Trainer = Callable[[TeacherConfig, Path, Any], Path]


@contextmanager
def teacher_lock(path: str | Path, log: Callable[[str], None] | None = None) -> Iterator[float]:
    """Hold the store's lock of one teacher file (``<file>.lock``); yields the seconds waited.

    Another process that trains the same teacher holds it for as long as the training takes: the
    wait is unlimited, and said once in the log.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    waiting = f"teacher {path}: another process is training it; waiting for it"
    waited = acquire_lock(lock, f"teacher {path}", None, log, waiting)
    try:
        yield waited
    finally:
        lock.release()


def ensure_teacher(
    cfg: TeacherConfig,
    path: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    train: Trainer | None = None,
) -> Path:
    """Return the teacher at ``path`` (default store location), training it only when missing.

    The look and the training happen under the store's lock (:func:`teacher_lock`): of several
    processes that need the same missing teacher, one trains it (with ``train``, default
    :func:`train_teacher` here) and the others wait, then reuse the file.
    """
    path = Path(path) if path is not None else default_teacher_path(cfg.dataset, cfg.arch, cfg.seed)
    if path.is_file():
        return _reuse(cfg, path, log)
    with teacher_lock(path, log):
        if path.is_file():  # trained by the process we waited for
            return _reuse(cfg, path, log)
        if train is None:
            return train_teacher(cfg, path, log=log)
        return train(cfg, path, log)


def _reuse(cfg: TeacherConfig, path: Path, log: Callable[[str], None] | None) -> Path:
    meta = read_teacher_meta(path)
    if meta["dataset"] != cfg.dataset or meta["arch"] != cfg.arch:
        raise ValueError(
            f"teacher {path} holds {meta['arch']} on {meta['dataset']}, not {cfg.arch} on {cfg.dataset}"
        )
    if log is not None:
        log(f"reusing teacher {path} (test {meta['test_acc']:.2f}%)")
    return path
