"""Model parts, one concept per module (detectron2's layout).

``backbone/`` CLIP ResNet trunk and detectron2 ResNet / FPN · ``layers/`` conv + norm, frozen BatchNorm ·
``poolers`` RoIAlign · ``text_encoder`` CLIP's text tower · ``anchor_generator``, ``box_regression``, ``matcher``,
``sampling`` · ``proposal_generator/`` the RPN · ``roi_heads/`` region head, text classifier, post-processing,
Fast R-CNN losses · ``meta_arch/`` the assembled models.
"""

from .backbone import CLIPResNetTrunk, build_open_clip
from .layers import FrozenBatchNorm2d, freeze_batchnorm
from .poolers import RoIPooler
from .roi_heads import Res5AttnPoolHead, TextEmbeddingClassifier
from .text_encoder import CLIPTextEncoder

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
