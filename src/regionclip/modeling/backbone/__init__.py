"""Backbones: CLIP's ResNet trunk (the recognition branch) and detectron2's ResNet / FPN (the offline RPN's)."""

from .clip_resnet import CLIPResNetTrunk, build_open_clip, build_visual, split_visual
from .fpn import FPN
from .resnet import ResNet

__all__ = ["CLIPResNetTrunk", "FPN", "ResNet", "build_open_clip", "build_visual", "split_visual"]
