"""CLIP's ResNet (open_clip's ModifiedResNet) as the backbone of a region model.

The visual ModifiedResNet is divided as in RegionCLIP's C4 design: a *trunk* (stem → layer3, i.e. res4 at
stride 16) that runs once per image, a RoIAlign *pooler* on res4 (`regionclip.modeling.poolers`), and a *region
head* (layer4 = res5 → the attention pool, `regionclip.modeling.roi_heads.region_head`) that runs once per box.
Module names follow OpenAI's after ``visual.`` so weights map 1:1.
"""

from __future__ import annotations

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from ...config import TRUNK_STRIDE, ModelConfig
from ..layers import freeze_batchnorm
from ..poolers import RoIPooler
from ..roi_heads.region_head import Res5AttnPoolHead


def build_open_clip(config: ModelConfig) -> CLIP:
    """An open_clip CLIP (ModifiedResNet + text transformer, QuickGELU as OpenAI's) of the configured shape."""
    text = config.text
    if text is None:
        raise ValueError("build_open_clip needs a text config")
    vision_cfg = CLIPVisionCfg(
        layers=config.vision.layers,
        width=config.vision.width,
        image_size=config.vision.image_size,
        head_width=config.vision.head_width,
    )
    text_cfg = CLIPTextCfg(
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        width=text.width,
        heads=text.heads,
        layers=text.layers,
    )
    return CLIP(config.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)


def build_visual(config: ModelConfig) -> ModifiedResNet:
    """CLIP's ModifiedResNet alone (for checkpoints that carry no text tower)."""
    return ModifiedResNet(
        layers=list(config.vision.layers),
        output_dim=config.embed_dim,
        heads=config.vision.heads,
        image_size=config.vision.image_size,
        width=config.vision.width,
    )


class CLIPResNetTrunk(nn.Module):
    """Stem (three 3x3 convs + avgpool) and layer1..layer3 of CLIP's ModifiedResNet; returns res4 (stride 16)."""

    stride = TRUNK_STRIDE

    def __init__(self, visual: ModifiedResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool"):
            setattr(self, name, getattr(visual, name))
        self.layer1, self.layer2, self.layer3 = visual.layer1, visual.layer2, visual.layer3

    @property
    def out_channels(self) -> int:
        return self.layer3[-1].conv3.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.conv1.weight.dtype)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        return self.layer3(self.layer2(self.layer1(x)))


def split_visual(visual: ModifiedResNet, pooler_resolution: int) -> tuple[CLIPResNetTrunk, RoIPooler, Res5AttnPoolHead]:
    """Freeze the BatchNorms and cut the ModifiedResNet into trunk, pooler and region head."""
    freeze_batchnorm(visual)
    return CLIPResNetTrunk(visual), RoIPooler(pooler_resolution), Res5AttnPoolHead(visual)
