"""Transition curves and the Mean Transition Error (MTE) of Micaelli & Storkey (2019).

Network A (the student) is stepped on with raw input gradients towards each other class; network
B (the teacher) is the reference. The MTE is the mean absolute gap between A's and B's probability
of the target class along A's trajectory: a student that matches the teacher's decision boundaries
near real data has a small MTE, not merely a high accuracy.

The official code steps one image and one target at a time (:func:`transition_curves_per_image`
keeps that form as a reference). With both networks in eval mode every sample's input gradient is
independent of the rest of the batch, so :func:`transition_curves` steps all (image, target) pairs
together; the gradient of the *sum* of per-sample losses is each sample's own gradient, whereas a
'mean' reduction would silently divide the step size by the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import logits_of

__all__ = [
    "MTEResult",
    "mean_transition_error",
    "mte_from_curves",
    "select_agreeing",
    "target_classes",
    "transition_curves",
    "transition_curves_per_image",
    "validation_mte",
]

Network = Callable[[torch.Tensor], Any]
DeviceLike = str | torch.device | None


@dataclass(frozen=True, eq=False)
class MTEResult:
    """An MTE with the curves it came from; K and xi travel with it, as the paper asks.

    ``eq=False``: the fields hold arrays, so dataclass equality/hash would be ill-defined.
    """

    mte: float
    k: int
    xi: float
    n_test: int
    n_requested: int
    curves_a: np.ndarray  # (n_test, C-1, K): p_A(target) before each step; step 0 is clean
    curves_b: np.ndarray  # (n_test, C-1, K): p_B(target) at the same inputs
    targets: np.ndarray  # (n_test, C-1)
    labels: np.ndarray  # (n_test,)

    @property
    def num_classes(self) -> int:
        """C, read back from the number of targets per image."""
        return int(self.targets.shape[1]) + 1

    def mean_curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Transition curves of A and B averaged over images and targets, shape (K,) each."""
        return self.curves_a.mean(axis=(0, 1)), self.curves_b.mean(axis=(0, 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no per-image curves): what a run log or tracker should store."""
        mean_a, mean_b = self.mean_curves()
        return {
            "mte": float(self.mte),
            "k": int(self.k),
            "xi": float(self.xi),
            "n_test": int(self.n_test),
            "n_requested": int(self.n_requested),
            "num_classes": self.num_classes,
            "mean_curve_a": [float(v) for v in mean_a],
            "mean_curve_b": [float(v) for v in mean_b],
        }


# ----------------------------------------------------------------------------- helpers


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_xi(xi: float) -> None:
    if isinstance(xi, bool) or not isinstance(xi, (int, float, np.floating, np.integer)):
        raise ValueError(f"xi must be a positive number, got {xi!r}")
    if not (float(xi) > 0.0 and np.isfinite(float(xi))):
        raise ValueError(f"xi must be a positive finite number, got {xi!r}")


def _resolve_device(device: DeviceLike, net: Network) -> torch.device:
    """An explicit device wins; otherwise the device of ``net``'s parameters (CPU if it has none)."""
    if device is not None:
        return torch.device(device)
    if isinstance(net, nn.Module):
        for p in net.parameters():
            return p.device
    return torch.device("cpu")


def _check_on_device(nets: Sequence[Network], device: torch.device) -> None:
    """Networks are not moved (that would be a side effect on the caller's models); say so clearly."""
    for name, net in zip(("net_a", "net_b"), nets, strict=True):
        if not isinstance(net, nn.Module):
            continue
        for p in net.parameters():
            if p.device.type != device.type or (
                device.index is not None and p.device.index != device.index
            ):
                raise ValueError(
                    f"{name} has parameters on {p.device} but device={str(device)!r}: "
                    f"move the network with .to({str(device)!r}) first"
                )
            break


@contextmanager
def _eval_frozen(*nets: Network) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; every module's flags restored after.

    Modes are saved per submodule (a plain ``net.train(was)`` would lose mixed modes) and
    requires_grad per parameter; ``net_a is net_b`` is handled (each is saved once).
    """
    modes: dict[int, tuple[nn.Module, bool]] = {}
    flags: dict[int, tuple[torch.Tensor, bool]] = {}
    for net in nets:
        if not isinstance(net, nn.Module):
            continue
        for m in net.modules():
            modes.setdefault(id(m), (m, m.training))
        for p in net.parameters():
            flags.setdefault(id(p), (p, p.requires_grad))
    try:
        for m, _ in modes.values():
            m.training = False
        for p, _ in flags.values():
            p.requires_grad_(False)
        yield
    finally:
        for m, was in modes.values():
            m.training = was
        for p, was in flags.values():
            p.requires_grad_(was)


def target_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C-1) targets: row i is [(y_i + 1) % C, ..., (y_i + C - 1) % C], the paper's order."""
    offsets = torch.arange(1, num_classes, device=labels.device, dtype=torch.long)
    return (labels.long().view(-1, 1) + offsets.view(1, -1)) % num_classes


def _prepare(
    net_a: Network,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    k: int,
    xi: float,
    num_classes: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Validate arguments; infer C from A's logits when not given."""
    _check_positive_int("k", k)
    _check_xi(xi)
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError("images must be a tensor of shape (N, ...) with N >= 1")
    labels_t = torch.as_tensor(labels).long().view(-1).cpu()
    if images.shape[0] == 0:
        raise ValueError("images is empty: need at least one image")
    if labels_t.numel() != images.shape[0]:
        raise ValueError(
            f"labels has {labels_t.numel()} entries but images has {images.shape[0]} images"
        )
    with torch.no_grad():
        width = int(logits_of(net_a, images[:1].to(device)).shape[1])
    if num_classes is None:
        num_classes = width
    _check_positive_int("num_classes", num_classes, minimum=2)
    if num_classes != width:
        raise ValueError(f"num_classes={num_classes} but net_a returns {width} logits")
    if int(labels_t.min()) < 0 or int(labels_t.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels_t.tolist()}")
    return images.detach().cpu(), labels_t, num_classes


def _step_batch(
    net_a: Network, net_b: Network, x: torch.Tensor, j: torch.Tensor, k: int, xi: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """K records of p_A[j], p_B[j] along A's raw-gradient descent on CE(A(x), j); returns (B, K) each.

    The record at step s is taken before the s-th update (step 0 is the clean input); the last
    update is never used, so it is not computed.
    """
    rows = torch.arange(x.shape[0], device=x.device)
    # Records stay on the device until the end: one copy to the host per batch, not two per step.
    pa = torch.empty(x.shape[0], k, dtype=torch.float64, device=x.device)
    pb = torch.empty(x.shape[0], k, dtype=torch.float64, device=x.device)
    x = x.detach()
    for s in range(k):
        last = s == k - 1
        with torch.enable_grad():
            x_in = x if last else x.detach().requires_grad_(True)
            logits_a = logits_of(net_a, x_in)
            if not last:
                # Sum, not mean: each sample's gradient is then its own per-sample gradient.
                loss = F.cross_entropy(logits_a, j, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_in)
        with torch.no_grad():
            pa[:, s] = F.softmax(logits_a.detach(), dim=1)[rows, j].double()
            pb[:, s] = F.softmax(logits_of(net_b, x), dim=1)[rows, j].double()
            if not last:
                x = x - xi * grad  # raw gradient: no sign, no clamp
    return pa.cpu(), pb.cpu()


# ----------------------------------------------------------------------------- public API


def select_agreeing(
    net_a: Network,
    net_b: Network,
    dataset: Any,
    n_test: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    device: DeviceLike = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_test`` images of the seeded shuffle on which A and B predict the same class.

    Comparing only where both agree keeps the MTE about boundary shape, not about accuracy. The
    result may hold fewer than ``n_test`` images if the dataset runs out; a ValueError if none agree.
    Returns CPU tensors (images, true labels).
    """
    _check_positive_int("n_test", n_test)
    _check_positive_int("batch_size", batch_size)
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset is empty")
    dev = _resolve_device(device, net_a)
    _check_on_device((net_a, net_b), dev)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    kept_x: list[torch.Tensor] = []
    kept_y: list[torch.Tensor] = []
    n_kept = 0
    with _eval_frozen(net_a, net_b), torch.no_grad():
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in order[start : start + batch_size]]
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
            xd = x.to(dev)
            agree = (logits_of(net_a, xd).argmax(1) == logits_of(net_b, xd).argmax(1)).cpu()
            x, y = x[agree][: n_test - n_kept], y[agree][: n_test - n_kept]
            kept_x.append(x)
            kept_y.append(y)
            n_kept += int(y.numel())
            if n_kept >= n_test:
                break
    if n_kept == 0:
        raise ValueError(
            f"no image of the {n} in the dataset agrees (same argmax under net_a and net_b): "
            "the MTE is undefined"
        )
    return torch.cat(kept_x), torch.cat(kept_y)


def transition_curves(
    net_a: Network,
    net_b: Network,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    k: int = 100,
    xi: float = 1.0,
    num_classes: int | None = None,
    batch_size: int = 256,
    device: DeviceLike = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched transition curves: all (image, target) pairs stepped together, ``batch_size`` at a time.

    Returns ``curves_a``, ``curves_b`` of shape (N, C-1, K) (float64) and ``targets`` (N, C-1).
    Equal to :func:`transition_curves_per_image` up to float rounding, and much faster.
    """
    _check_positive_int("batch_size", batch_size)
    dev = _resolve_device(device, net_a)
    _check_on_device((net_a, net_b), dev)
    with _eval_frozen(net_a, net_b):
        images, labels_t, c = _prepare(net_a, images, labels, k, xi, num_classes, dev)
        targets = target_classes(labels_t, c)  # (N, C-1)
        n = images.shape[0]
        img_idx = torch.arange(n).repeat_interleave(c - 1)  # pair p -> image p // (C-1)
        tgt_flat = targets.reshape(-1)
        pa = torch.empty(n * (c - 1), k, dtype=torch.float64)
        pb = torch.empty(n * (c - 1), k, dtype=torch.float64)
        for start in range(0, n * (c - 1), batch_size):
            sl = slice(start, start + batch_size)
            x = images[img_idx[sl]].to(dev)
            j = tgt_flat[sl].to(dev)
            pa[sl], pb[sl] = _step_batch(net_a, net_b, x, j, k, float(xi))
    shape = (n, c - 1, k)
    return pa.view(shape).numpy(), pb.view(shape).numpy(), targets.numpy()


def transition_curves_per_image(
    net_a: Network,
    net_b: Network,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    k: int = 100,
    xi: float = 1.0,
    num_classes: int | None = None,
    device: DeviceLike = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference form, one image and one target at a time as in the official code; same outputs."""
    dev = _resolve_device(device, net_a)
    _check_on_device((net_a, net_b), dev)
    with _eval_frozen(net_a, net_b):
        images, labels_t, c = _prepare(net_a, images, labels, k, xi, num_classes, dev)
        targets = target_classes(labels_t, c)
        n = images.shape[0]
        curves_a = np.empty((n, c - 1, k), dtype=np.float64)
        curves_b = np.empty((n, c - 1, k), dtype=np.float64)
        for i in range(n):
            for t in range(c - 1):
                x = images[i : i + 1].to(dev)
                j = targets[i, t : t + 1].to(dev)
                pa, pb = _step_batch(net_a, net_b, x, j, k, float(xi))
                curves_a[i, t] = pa[0].numpy()
                curves_b[i, t] = pb[0].numpy()
    return curves_a, curves_b, targets.numpy()


def mte_from_curves(curves_a: np.ndarray, curves_b: np.ndarray) -> float:
    """Mean over images, targets and steps of |p_A - p_B|."""
    if curves_a.shape != curves_b.shape or curves_a.size == 0:
        raise ValueError(
            f"curves must be non-empty and of equal shape, got {curves_a.shape} and {curves_b.shape}"
        )
    return float(np.abs(curves_a - curves_b).mean())


def mean_transition_error(
    net_a: Network,
    net_b: Network,
    dataset: Any,
    n_test: int = 1000,
    k: int = 100,
    xi: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    device: DeviceLike = None,
) -> MTEResult:
    """MTE of A (stepped on, the student) against B (the teacher) on ``dataset`` (paper: K=100, xi=1).

    ``device=None`` uses the device of ``net_a``'s parameters; networks are never moved.
    """
    _check_positive_int("n_test", n_test)
    _check_positive_int("k", k)
    _check_xi(xi)
    _check_positive_int("batch_size", batch_size)
    images, labels = select_agreeing(net_a, net_b, dataset, n_test, seed, batch_size, device)
    curves_a, curves_b, targets = transition_curves(
        net_a, net_b, images, labels, k=k, xi=xi, batch_size=batch_size, device=device
    )
    return MTEResult(
        mte=mte_from_curves(curves_a, curves_b),
        k=int(k),
        xi=float(xi),
        n_test=int(labels.numel()),
        n_requested=int(n_test),
        curves_a=curves_a,
        curves_b=curves_b,
        targets=targets,
        labels=labels.numpy(),
    )


def validation_mte(
    student: Network,
    teacher: Network,
    splits: Any,
    n_val: int = 100,
    k: int = 10,
    xi: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    device: DeviceLike = None,
) -> MTEResult:
    """MTE of the student against the teacher on *validation* images: a search objective.

    ``splits`` is a :class:`~zskt_ray.data.DataSplits`; only ``splits.val`` is read, so a search
    trial that optimises this value never sees a test image (the test MTE of the final re-runs
    stays the reported one). The images are those :func:`mean_transition_error` takes: the first
    ``n_val`` of the validation split, shuffled with ``seed``, on which student and teacher agree;
    a fixed ``seed`` gives every trial the same order, and the same value for the same networks.
    K and xi travel in the result, as for any MTE.
    """
    return mean_transition_error(
        student,
        teacher,
        splits.val,
        n_test=n_val,
        k=k,
        xi=xi,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
