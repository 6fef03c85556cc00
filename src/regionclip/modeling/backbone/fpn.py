"""detectron2's FPN over ResNet res2..res5 with the LastLevelMaxPool P6.

Parameter names follow detectron2 (``bottom_up.*``, ``fpn_lateral{2..5}``, ``fpn_output{2..5}``), which
torchvision's ``FeaturePyramidNetwork`` (``inner_blocks.i.0`` / ``layer_blocks.i.0``) does not; the module
is small, so it is written here rather than remapped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..proposal_generator.config import RPNConfig
from ..layers import ConvNorm
from .resnet import ResNet


class FPN(nn.Module):
    """Top-down pathway: lateral 1x1, nearest x2 upsampling + sum, output 3x3; P6 = max_pool(P5, k=1, s=2)."""

    def __init__(self, config: RPNConfig) -> None:
        super().__init__()
        self.bottom_up = ResNet(config)
        use_bias = config.fpn_norm == ""
        out = config.fpn_out_channels
        self.in_features = list(self.bottom_up.stage_names)  # res2..res5
        self.levels = [int(name[3:]) for name in self.in_features]  # 2..5 (log2 of the stride)
        for name, level in zip(self.in_features, self.levels):
            in_channels = self.bottom_up.out_channels[name]
            lateral = ConvNorm(in_channels, out, 1, bias=use_bias, norm=config.fpn_norm)
            output = ConvNorm(out, out, 3, padding=1, bias=use_bias, norm=config.fpn_norm)
            for conv in (lateral, output):
                # detectron2 c2_xavier_fill
                nn.init.kaiming_uniform_(conv.weight, a=1)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        results: list[torch.Tensor] = []
        prev: torch.Tensor | None = None
        for name, level in zip(reversed(self.in_features), reversed(self.levels)):
            lateral = getattr(self, f"fpn_lateral{level}")(bottom_up[name])
            if prev is not None:
                # detectron2 uses scale_factor=2; with inputs padded to a multiple of 32 the sizes match
                # exactly and nearest upsampling to the lateral's size is identical.
                lateral = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        outputs = {f"p{level}": feat for level, feat in zip(self.levels, results)}
        last = self.levels[-1]
        outputs[f"p{last + 1}"] = F.max_pool2d(outputs[f"p{last}"], kernel_size=1, stride=2, padding=0)
        return outputs
