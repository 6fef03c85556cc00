"""detectron2 StandardRPNHead: shared 3x3 conv(s) + ReLU, 1x1 objectness (A) and 1x1 anchor deltas (4A).

Key names: one conv -> ``conv.{weight,bias}``; several (``RPN.CONV_DIMS [-1, -1]``) ->
``conv.conv0``, ``conv.conv1``, ... (an ``nn.Sequential`` with named children), then
``objectness_logits`` and ``anchor_deltas``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers import ConvNorm


class StandardRPNHead(nn.Module):
    """Per level: ``objectness [N, A, H, W]`` and ``deltas [N, 4A, H, W]`` (channel = anchor * 4 + coord)."""

    def __init__(self, in_channels: int, num_anchors: int, conv_dims: Sequence[int] = (-1,), box_dim: int = 4) -> None:
        super().__init__()
        channels = in_channels
        if len(conv_dims) == 1:
            out = channels if conv_dims[0] == -1 else conv_dims[0]
            self.conv: nn.Module = ConvNorm(channels, out, 3, padding=1, bias=True, relu=True)
            channels = out
        else:
            self.conv = nn.Sequential()
            for k, dim in enumerate(conv_dims):
                out = channels if dim == -1 else dim
                if out <= 0:
                    raise ValueError(f"RPN head conv channels must be positive, got {out}")
                self.conv.add_module(f"conv{k}", ConvNorm(channels, out, 3, padding=1, bias=True, relu=True))
                channels = out
        self.objectness_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * box_dim, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas
