"""Model parts: CLIP trunk, RoIAlign pooler, res5 + attention-pool head, text encoder, classifier, RPNs."""

from .classifier import TextEmbeddingClassifier
from .clip_parts import CLIPResNetTrunk, CLIPTextEncoder, Res5AttnPoolHead, RoIPooler, build_open_clip
from .frozen_bn import FrozenBatchNorm2d, freeze_batchnorm

__all__ = [
    "CLIPResNetTrunk",
    "CLIPTextEncoder",
    "FrozenBatchNorm2d",
    "Res5AttnPoolHead",
    "RoIPooler",
    "TextEmbeddingClassifier",
    "build_open_clip",
    "freeze_batchnorm",
]
