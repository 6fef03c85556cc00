"""Conv + optional norm + optional ReLU with detectron2's parameter names (``<conv>.weight``, ``<conv>.norm.*``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


def make_norm(norm: str, channels: int) -> nn.Module | None:
    """detectron2 ``get_norm``: "" -> None, FrozenBN, BN, SyncBN.

    SyncBN is built as ``nn.BatchNorm2d`` (same parameters and buffers, same eval-mode function);
    wrap the model with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-process training.
    """
    if norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=1e-5)
    if norm in ("BN", "SyncBN"):
        return nn.BatchNorm2d(channels, eps=1e-5)
    raise ValueError(f"unknown norm {norm!r}; expected '', 'FrozenBN', 'BN' or 'SyncBN'")


class ConvNorm(nn.Conv2d):
    """A ``nn.Conv2d`` whose norm lives at ``.norm`` so state-dict keys match detectron2's ``layers.Conv2d``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        norm: str = "",
        relu: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.norm = make_norm(norm, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.relu:
            x = F.relu(x)
        return x
