"""Small shared helpers: device resolution, seeding, evaluation of accuracy."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn
from torch.utils.data import DataLoader

from .models import is_mlp, logits_of

log = logging.getLogger(__name__)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(e: BaseException, with_type: bool = False) -> str:
    """An exception as one line of text: its message's first line, colour codes removed.

    ``with_type`` prefixes the exception's class name (``ValueError: ...``), for reasons recorded
    where the class says what went wrong; a message-less exception is its class name alone.
    """
    lines = _ANSI.sub("", str(e)).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type:
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text or type(e).__name__


def resolve_device(name: str = "auto") -> torch.device:
    """The device a run uses. One policy everywhere (CLI runs and Ray trials alike):

    'auto' picks CUDA when present, else the CPU. Asking for CUDA where there is none (a laptop, a
    Ray node that declares GPUs it does not have) falls back to the CPU *and says so* with a
    warning, so a study mixing GPU and CPU nodes still runs and the run's device tag tells where it
    ran; a CUDA index the machine does not have, or a name torch does not know, is an error.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available here: running on the CPU", name)
        return torch.device("cpu")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy in percent of ``model`` (put in eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    try:  # a loader that refuses to be read (audit.GuardedLoader) leaves the mode as it was
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            pred = logits_of(model, x).argmax(dim=1)
            correct += int((pred == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy: the evaluation loader is empty")
    return 100.0 * correct / total


@contextmanager
def small_net_threads(*archs: str) -> Iterator[None]:
    """One torch thread while only MLPs (the toy problem's networks) are trained; restored after.

    Their operations are too small to split between threads: on the 2-core machine under load,
    training the toy2d teacher took 132.7 s with 2 threads and 10.6 s with 1.
    """
    if not archs or not all(is_mlp(a) for a in archs):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def acquire_lock(
    lock: FileLock,
    holder: str,
    timeout: float | None,
    log: Callable[[str], None] | None,
    waiting: str | None = None,
) -> float:
    """Take ``lock`` (``timeout`` None: as long as it takes), saying once in ``log`` when another
    process holds it (``waiting``, default "waiting for <holder>"); the seconds waited. Past
    ``timeout``, a TimeoutError naming ``holder`` and the lock file."""
    t0 = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            log(waiting or f"waiting for {holder}")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise TimeoutError(
                f"{holder} held its lock ({lock.lock_file}) for over {timeout:.0f} s"
            ) from None
    return time.monotonic() - t0
