"""Networks of the paper: Wide ResNets (teacher and student) and the ZSKT generator.

Every WRN returns ``(logits, [g1, g2, g3])``: the logits and the raw outputs of its three groups
(before any BN/ReLU), which the attention-transfer term needs. The generator emits images in the
teacher's *normalised* input space (no tanh, no clamp), as in the official code.
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
    "build_model",
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


_WRN_RE = re.compile(r"^wrn-(\d+)-(\d+)$")

# Names the registry documents; any ``wrn-<6n+4>-<k>`` is accepted by ``build_model``.
MODEL_NAMES = ("wrn-16-1", "wrn-16-2", "wrn-40-1", "wrn-40-2")


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


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """Build a network from the registry by name (``wrn-d-k``)."""
    depth, width = parse_wrn(name)
    return WideResNet(depth, width, num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def logits_of(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> torch.Tensor:
    """Logits of a network that returns either logits or ``(logits, attentions)``."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]
