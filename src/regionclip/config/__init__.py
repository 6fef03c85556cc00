"""Typed configuration: the model config and the (de)serialisation mixin every dataclass config shares.

`ConfigBase` (`config.base`) gives any ``@dataclass`` config ``to_dict``/``from_dict``, ``to_yaml``/``from_yaml`` and
``to_json``/``from_json``; `ModelConfig` (`config.model`) describes a RegionCLIP recognition model.
"""

from .base import ConfigBase
from .model import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, RES5_STRIDE, TRUNK_STRIDE, InputConfig, ModelConfig, TextConfig, VisionConfig

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "RES5_STRIDE",
    "TRUNK_STRIDE",
    "ConfigBase",
    "InputConfig",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
]
