"""detectron2 DefaultAnchorGenerator: cell anchors tiled over each feature map.

Cell anchors for sizes S and aspect ratios R (h/w) are ordered size-major (``for s in S: for r in R``),
each ``w = sqrt(s^2 / r)``, ``h = r * w``, centred at 0 and not rounded. They are computed in float64
and stored as float32, as detectron2 does. Grid anchors are location-major (row by row, then column),
then cell anchors, which is the order the RPN head's outputs are flattened in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Return ``[len(sizes) * len(aspect_ratios), 4]`` xyxy anchors centred at the origin (float32)."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float64).float()


def grid_anchors(base: torch.Tensor, grid_size: tuple[int, int], stride: int, offset: float) -> torch.Tensor:
    """Tile ``base`` [A, 4] over an ``H x W`` grid: returns ``[H * W * A, 4]`` (location-major)."""
    height, width = int(grid_size[0]), int(grid_size[1])
    shifts_x = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32, device=base.device)
    shifts_y = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32, device=base.device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for each feature level; cell anchors are non-persistent buffers (absent from checkpoints)."""

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError("sizes, aspect_ratios and strides need one entry per feature level")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        for i, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            self.register_buffer(f"cell_anchors_{i}", cell_anchors(s, r), persistent=False)
        self.num_anchors = [len(s) * len(r) for s, r in zip(sizes, aspect_ratios)]

    def cell_anchors(self, level: int) -> torch.Tensor:
        return getattr(self, f"cell_anchors_{level}")

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors ``[Hi * Wi * A, 4]`` per level for feature maps ``[N, C, Hi, Wi]``."""
        if len(features) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps, got {len(features)}")
        return [
            grid_anchors(self.cell_anchors(i), tuple(f.shape[-2:]), self.strides[i], self.offset)
            for i, f in enumerate(features)
        ]
