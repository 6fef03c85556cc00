"""detectron2's ResNet (BasicStem + BottleneckBlock stages), with detectron2 module names.

Layout (state-dict keys): ``stem.conv1``, ``res{2..5}.{i}.{conv1,conv2,conv3,shortcut}`` each with ``.norm``.
The stride of a stage's first block sits in its 1x1 ``conv1`` when ``stride_in_1x1`` (MSRA/caffe weights),
otherwise in the 3x3 ``conv2`` (torchvision-style weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..proposal_generator.config import RESNET_STAGE_STRIDES, RPNConfig
from ..layers import ConvNorm


class BasicStem(nn.Module):
    """7x7/2 conv + norm + ReLU, then 3x3/2 max-pool (padding 1): total stride 4."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels, 7, stride=2, padding=3, norm=norm, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; projection shortcut when the channel count changes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        *,
        stride: int,
        norm: str,
        stride_in_1x1: bool,
    ) -> None:
        super().__init__()
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm) if in_channels != out_channels else None
        )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, norm=norm, relu=True)
        self.conv2 = ConvNorm(
            bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=1, norm=norm, relu=True
        )
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """Bottom-up ResNet returning ``{"res2": ..., ...}`` for the first ``config.num_resnet_stages`` stages."""

    def __init__(self, config: RPNConfig) -> None:
        super().__init__()
        self.stem = BasicStem(3, config.stem_out_channels, config.norm)
        in_channels = config.stem_out_channels
        out_channels = config.res2_out_channels
        bottleneck = config.bottleneck_channels
        self.stage_names: list[str] = []
        for idx in range(config.num_resnet_stages):
            name = f"res{idx + 2}"
            blocks = []
            for b in range(config.blocks_per_stage[idx]):
                first_stride = 1 if idx == 0 else 2
                blocks.append(
                    BottleneckBlock(
                        in_channels if b == 0 else out_channels,
                        out_channels,
                        bottleneck,
                        stride=first_stride if b == 0 else 1,
                        norm=config.norm,
                        stride_in_1x1=config.stride_in_1x1,
                    )
                )
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            in_channels = out_channels
            out_channels *= 2
            bottleneck *= 2
        self.out_channels = {name: config.res2_out_channels * 2**i for i, name in enumerate(self.stage_names)}
        self.out_strides = {name: RESNET_STAGE_STRIDES[name] for name in self.stage_names}
        self._init_weights()

    def _init_weights(self) -> None:
        # detectron2 c2_msra_fill: He-normal (fan_out) for every ResNet conv.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs: dict[str, torch.Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs
