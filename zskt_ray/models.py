"""Networks of the paper: Wide ResNets (teacher and student) and the ZSKT generator; MLPs and a
point generator for the 2-D toy problem.

Every network returns ``(logits, groups)``. A WRN's groups are the raw outputs of its three groups
(before any BN/ReLU), which the attention-transfer term needs; an MLP has none (``[]``), so the
attention term does not apply to it (configs refuse ``beta > 0`` for MLPs). The generators emit
inputs in the teacher's *normalised* input space (no tanh, no clamp), as in the official code.

The registry is :func:`build_model` (``wrn-<depth>-<width>`` and ``mlp-<depth>x<width>``) with
:func:`parse_arch` to validate a name, and :func:`build_generator` to pick the generator a data
set needs (images or points).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "WideResNet",
    "Generator",
    "MLP",
    "PointGenerator",
    "build_generator",
    "build_model",
    "has_attention",
    "has_batch_norm",
    "parse_arch",
    "parse_mlp",
    "parse_wrn",
    "count_parameters",
    "MODEL_NAMES",
]


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 shortcut where widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.shortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        # The official WRN feeds the *pre-activated* input to the 1x1 shortcut.
        residual = x if self.shortcut is None else self.shortcut(act)
        return residual + out


class WideResNet(nn.Module):
    """WRN-depth-width for ``in_channels``-channel images and ``num_classes`` classes."""

    def __init__(self, depth: int, width: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1, got {width}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width = depth, width
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1)
        self.block2 = self._group(widths[1], widths[2], n, 2)
        self.block3 = self._group(widths[2], widths[3], n, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    @staticmethod
    def _group(in_planes: int, out_planes: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            *[
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.conv1(x)
        g1 = self.block1(out)
        g2 = self.block2(g1)
        g3 = self.block3(g2)
        out = F.relu(self.bn(g3))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out), [g1, g2, g3]


class Generator(nn.Module):
    """The paper's generator: z -> image of ``channels`` x ``image_size`` x ``image_size``.

    The starting grid is ``image_size // 4`` (8x8 for 32x32, 2x2 for the native 8x8 digits).
    """

    def __init__(self, z_dim: int = 100, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        if image_size % 4 != 0 or image_size < 4:
            raise ValueError(
                f"generator image_size must be a positive multiple of 4, got {image_size}"
            )
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.z_dim, self.image_size, self.channels = z_dim, image_size, channels
        self.init_size = image_size // 4
        self.linear = nn.Linear(z_dim, 128 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 128, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(128)
        self.conv2 = nn.Conv2d(128, 64, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, channels, 3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(channels, affine=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.linear(z).view(z.shape[0], 128, self.init_size, self.init_size)
        out = self.bn0(out)  # no activation after the first BN, as in the official code
        out = F.interpolate(out, scale_factor=2, mode="nearest")
        out = F.leaky_relu(self.bn1(self.conv1(out)), 0.2)
        out = F.interpolate(out, scale_factor=2, mode="nearest")
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.2)
        return self.bn3(self.conv3(out))


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` ReLU units on vector inputs (the toy problem's networks).

    No batch norm: the student's BN statistics would come from pseudo points (section 2 of the
    method), which in the plane would move its evaluation-time function away from the one trained.
    """

    def __init__(self, depth: int, width: int, num_classes: int = 3, in_features: int = 2) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"MLP depth and width must be >= 1, got {depth} and {width}")
        self.depth, self.width = depth, width
        self.num_classes, self.in_features = num_classes, in_features
        layers: list[nn.Module] = []
        size = in_features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(size, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.fc(self.hidden(x.flatten(1))), []


class PointGenerator(nn.Module):
    """The generator for vector data: z -> a point of ``dim`` coordinates.

    The paper's generator with linear layers in place of convolutions: Linear -> BN ->
    LeakyReLU(0.2), twice, then Linear -> BN(dim, affine=True), so pseudo points live in the
    teacher's normalised input space, as pseudo images do.
    """

    def __init__(self, z_dim: int = 100, dim: int = 2, hidden: int = 64) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.z_dim, self.dim = z_dim, dim
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, dim),
            nn.BatchNorm1d(dim, affine=True),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


_WRN_RE = re.compile(r"^wrn-(\d+)-(\d+)$")
_MLP_RE = re.compile(r"^mlp-(\d+)x(\d+)$")

# Names the registry documents; any ``wrn-<6n+4>-<k>`` and ``mlp-<d>x<w>`` is accepted by
# ``build_model``.
MODEL_NAMES = ("wrn-16-1", "wrn-16-2", "wrn-40-1", "wrn-40-2", "mlp-3x64", "mlp-2x16")


def parse_wrn(name: str) -> tuple[int, int]:
    """``'wrn-40-2'`` -> ``(40, 2)``; a ValueError naming the architecture otherwise."""
    m = _WRN_RE.match(name.strip().lower())
    if not m:
        raise ValueError(
            f"unknown architecture {name!r}: expected 'wrn-<depth>-<width>', e.g. 'wrn-40-2'"
        )
    depth, width = int(m.group(1)), int(m.group(2))
    if depth < 10 or (depth - 4) % 6 != 0 or width < 1:
        raise ValueError(
            f"invalid architecture {name!r}: depth must be 6n+4 (10, 16, 22, 28, 40, ...), width >= 1"
        )
    return depth, width


def parse_mlp(name: str) -> tuple[int, int]:
    """``'mlp-3x64'`` -> ``(3, 64)``: hidden layers and their width."""
    m = _MLP_RE.match(name.strip().lower())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(
            f"invalid architecture {name!r}: expected 'mlp-<depth>x<width>' with both >= 1, "
            "e.g. 'mlp-3x64'"
        )
    return int(m.group(1)), int(m.group(2))


def parse_arch(name: str) -> str:
    """Validate a registry name (``wrn-<d>-<k>`` or ``mlp-<d>x<w>``); returns it normalised."""
    key = name.strip().lower()
    if key.startswith("mlp-"):
        parse_mlp(key)
        return key
    if key.startswith("wrn-"):
        parse_wrn(key)
        return key
    raise ValueError(
        f"unknown architecture {name!r}: expected 'wrn-<depth>-<width>' (e.g. 'wrn-40-2') or "
        "'mlp-<depth>x<width>' (e.g. 'mlp-3x64')"
    )


def is_mlp(name: str) -> bool:
    """True for ``mlp-*`` names (vector inputs, no attention groups)."""
    return name.strip().lower().startswith("mlp-")


def has_attention(name: str) -> bool:
    """True when the architecture returns groups the attention-transfer term can compare."""
    return not is_mlp(name)


def has_batch_norm(name: str) -> bool:
    """True when the architecture has ``BatchNorm2d`` layers (WRNs); the toy MLPs have none."""
    return not is_mlp(name)


def check_arch_input(name: str, vector_input: bool, dataset: str) -> None:
    """A ValueError when ``name`` cannot take the inputs of ``dataset`` (images vs vectors)."""
    if vector_input and not is_mlp(name):
        raise ValueError(
            f"{name} takes images but {dataset} has vector inputs: use an 'mlp-<depth>x<width>'"
        )
    if not vector_input and is_mlp(name):
        raise ValueError(f"{name} takes vectors but {dataset} has images: use a 'wrn-<d>-<k>'")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a network from the registry by name (``wrn-d-k``; ``mlp-dxw``, whose input size is
    ``in_channels`` numbers)."""
    if is_mlp(name):
        depth, width = parse_mlp(name)
        return MLP(depth, width, num_classes=num_classes, in_features=in_channels)
    depth, width = parse_wrn(name)
    return WideResNet(depth, width, num_classes=num_classes, in_channels=in_channels)


def build_generator(z_dim: int, image_size: int, in_channels: int) -> nn.Module:
    """The generator a data set needs: images (``image_size > 0``) or points of ``in_channels``."""
    if image_size > 0:
        return Generator(z_dim, image_size, in_channels)
    return PointGenerator(z_dim, in_channels)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def logits_of(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> torch.Tensor:
    """Logits of a network that returns either logits or ``(logits, attentions)``."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]
