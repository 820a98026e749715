"""The toy problem's picture: the teacher's and the student's decision regions in the plane, with
the generator's pseudo points over them, at chosen iterations of a zero-shot run.

As in the authors' talk: at t = 0 the student's regions have nothing to do with the teacher's;
the generator puts its points where the two disagree, the student matches the teacher there, and
the student's regions come to match the teacher's. One PNG strip (teacher above, student below,
one column per iteration) and an animated GIF (one frame per iteration).

The frames come from :attr:`ZeroShotDistiller.snapshots <zskt_ray.loop.ZeroShotDistiller>`
(student weights and pseudo points recorded during the run, saved with its checkpoint); a
student file alone gives one frame without points. Only matplotlib and Pillow are used here.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import DatasetInfo
from .models import build_model, logits_of

__all__ = [
    "DEFAULT_FRAMES",
    "decision_regions",
    "draw_regions",
    "frame_iterations",
    "plane_bounds",
    "run_snapshots",
]

DEFAULT_FRAMES = 6  # the start, four points on the way, the end
RESOLUTION = 160  # grid cells per side of a region map
# Light class colours of the regions, and dark ones for the real points drawn faintly over the
# teacher's regions (the pseudo points are black).
_REGION_COLOURS = ("#a6cee3", "#fdbf6f", "#b2df8a", "#fb9a99", "#cab2d6", "#ffff99")
_POINT_COLOURS = ("#1f78b4", "#ff7f00", "#33a02c", "#e31a1c", "#6a3d9a", "#b15928")
REAL_POINTS_EVERY = 5  # every 5th point of the data set is drawn (600 of 3,000)


def frame_iterations(iterations: int, n: int = DEFAULT_FRAMES) -> list[int]:
    """``n`` iterations to picture: 0, the end, and geometric steps between them.

    The student changes fastest at the start, so the steps in between are spaced geometrically
    from ``iterations / 20`` to the end (200 iterations, 6 frames: 0, 10, 21, 44, 95, 200).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if n < 2:
        raise ValueError(f"a picture needs at least 2 frames (the start and the end), got {n}")
    first = max(1.0, iterations / 20)
    middle = np.geomspace(first, iterations, n - 1) if n > 2 else np.array([iterations])
    return sorted({0, iterations, *(int(round(v)) for v in middle)})


def _require_plane(info: DatasetInfo) -> None:
    if info.input_shape != (2,):
        raise ValueError(
            f"the decision-region picture needs points in the plane; {info.name} has inputs of "
            f"shape {info.input_shape}"
        )


def _to_raw(points: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Normalised network inputs -> the data set's own coordinates."""
    return points * np.asarray(info.std) + np.asarray(info.mean)


def plane_bounds(
    info: DatasetInfo, points: Sequence[np.ndarray] = (), margin: float = 0.5
) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) in data coordinates: the real data with a margin, widened to show the
    bulk (2nd-98th percentile) of the pseudo points, at most by the data's own span."""
    from .data import toy2d_points

    if info.name != "toy2d":
        raise ValueError(f"no plane bounds are known for {info.name}")
    data, _ = toy2d_points()
    lo, hi = data.min(0) - margin, data.max(0) + margin
    span = hi - lo
    if len(points):
        allp = np.concatenate([np.asarray(p) for p in points])
        plo, phi = np.percentile(allp, 2, axis=0), np.percentile(allp, 98, axis=0)
        lo = np.maximum(np.minimum(lo, plo - 0.1 * span), lo - span / 2)
        hi = np.minimum(np.maximum(hi, phi + 0.1 * span), hi + span / 2)
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


@torch.no_grad()
def decision_regions(
    model: nn.Module,
    info: DatasetInfo,
    bounds: tuple[float, float, float, float],
    resolution: int = RESOLUTION,
) -> np.ndarray:
    """(resolution, resolution) class indices of ``model`` on a grid over ``bounds`` (row 0 at y0)."""
    x0, x1, y0, y1 = bounds
    xs, ys = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    mean = torch.tensor(info.mean, dtype=torch.float32)
    std = torch.tensor(info.std, dtype=torch.float32)
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = ((torch.from_numpy(grid) - mean) / std).to(device)
        pred = logits_of(model, x).argmax(1).cpu().numpy()
    finally:
        model.train(was)
    return pred.reshape(resolution, resolution)


def _student(arch: str, info: DatasetInfo, state: Mapping[str, torch.Tensor]) -> nn.Module:
    model = build_model(arch, info.num_classes, info.in_channels)
    model.load_state_dict(state)
    return model.eval()


def _panel(
    ax: Any,
    regions: np.ndarray,
    bounds: tuple,
    num_classes: int,
    points: Any,
    real: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(list(_REGION_COLOURS[:num_classes]))
    ax.imshow(
        regions,
        origin="lower",
        extent=bounds,
        cmap=cmap,
        vmin=-0.5,
        vmax=num_classes - 0.5,
        interpolation="nearest",
        aspect="equal",
    )
    if real is not None:
        colours = np.asarray(_POINT_COLOURS[:num_classes])[real[1]]
        ax.scatter(real[0][:, 0], real[0][:, 1], s=2, c=colours, alpha=0.45, linewidths=0)
    if points is not None and len(points):
        ax.scatter(points[:, 0], points[:, 1], s=7, c="black", edgecolors="white", linewidths=0.3)
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_xticks([])
    ax.set_yticks([])


def _frames(
    teacher: nn.Module, student_arch: str, info: DatasetInfo, snapshots: Sequence[Mapping[str, Any]]
) -> tuple[tuple[float, float, float, float], np.ndarray, list[dict[str, Any]]]:
    """Bounds, teacher regions and per snapshot: iteration, student regions, points, agreement."""
    points = [
        _to_raw(np.asarray(s["points"], dtype=np.float64), info)
        for s in snapshots
        if s.get("points") is not None
    ]
    bounds = plane_bounds(info, points)
    t_regions = decision_regions(teacher, info, bounds)
    out = []
    for s in sorted(snapshots, key=lambda s: int(s["iteration"])):
        s_regions = decision_regions(_student(student_arch, info, s["student"]), info, bounds)
        pts = s.get("points")
        out.append(
            {
                "iteration": int(s["iteration"]),
                "label": s.get("label") or f"t = {int(s['iteration'])}",
                "regions": s_regions,
                "points": None if pts is None else _to_raw(np.asarray(pts, np.float64), info),
                "agreement": float((s_regions == t_regions).mean()),
            }
        )
    return bounds, t_regions, out


def draw_regions(
    teacher: nn.Module,
    student_arch: str,
    info: DatasetInfo,
    snapshots: Sequence[Mapping[str, Any]],
    png: str | Path,
    gif: str | Path | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Write the PNG strip (and the GIF when ``gif`` is given) for ``snapshots``.

    Each snapshot is ``{"iteration", "student" (state dict), "points" (normalised, or None)}``
    and may have a ``"label"`` for its column (default ``"t = <iteration>"``).
    Returns the paths, the iterations drawn and the fraction of the pictured plane on which the
    student's class equals the teacher's at each of them ("agreement").
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    _require_plane(info)
    if not snapshots:
        raise ValueError("no snapshots to draw: the run recorded none")
    from .data import toy2d_points

    bounds, t_regions, frames = _frames(teacher, student_arch, info, snapshots)
    data, labels = toy2d_points()
    real = (data[::REAL_POINTS_EVERY], labels[::REAL_POINTS_EVERY])
    c = info.num_classes
    n = len(frames)
    ratio = (bounds[3] - bounds[2]) / (bounds[1] - bounds[0])
    fig, axes = plt.subplots(
        2, n, figsize=(max(2.2 * n + 0.4, 4.4), 2 * 2.2 * ratio + 1.1), squeeze=False
    )
    for j, f in enumerate(frames):
        _panel(axes[0, j], t_regions, bounds, c, f["points"], real)
        _panel(axes[1, j], f["regions"], bounds, c, f["points"])
        axes[0, j].set_title(f["label"], fontsize=10)
        axes[1, j].set_xlabel(f"agrees on {100 * f['agreement']:.0f}%", fontsize=9)
    axes[0, 0].set_ylabel("Teacher", fontsize=11)
    axes[1, 0].set_ylabel("Student", fontsize=11)
    fig.suptitle(
        title
        or "Decision regions of teacher and student; black: the generator's pseudo points; "
        "faint: real data (never seen by the student)",
        fontsize=10,
    )
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    result: dict[str, Any] = {
        "png": png,
        "iterations": [f["iteration"] for f in frames],
        "agreement": [f["agreement"] for f in frames],
    }
    if gif is not None:
        images = []
        for f in frames:
            fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2 * ratio + 0.8), squeeze=False)
            _panel(axes[0, 0], t_regions, bounds, c, f["points"], real)
            _panel(axes[0, 1], f["regions"], bounds, c, f["points"])
            axes[0, 0].set_title("Teacher", fontsize=10)
            axes[0, 1].set_title(f"Student (agrees on {100 * f['agreement']:.0f}%)", fontsize=10)
            fig.suptitle(f["label"], fontsize=11)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            buf.seek(0)
            images.append(Image.open(buf).convert("RGB"))
        gif = Path(gif)
        gif.parent.mkdir(parents=True, exist_ok=True)
        # The last frame stays longer, so the match can be looked at before the loop restarts.
        durations = [700] * (len(images) - 1) + [2000]
        images[0].save(
            gif, save_all=True, append_images=images[1:], duration=durations, loop=0, disposal=2
        )
        result["gif"] = gif
    return result


def run_snapshots(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The snapshots a run saved with its checkpoint (``weights_only``: loading runs no code)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    snapshots = state.get("snapshots") if isinstance(state, dict) else None
    if not snapshots:
        raise ValueError(
            f"{path} holds no snapshots: the run recorded no frames (only `zskt distill` runs on a "
            "2-D data set such as toy2d do); draw its student with --student instead"
        )
    return list(snapshots)
