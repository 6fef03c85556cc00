"""regionclip: RegionCLIP (CVPR 2022) in plain PyTorch."""

from .api import RegionCLIP
from .config import ModelConfig
from .data.images import RangedImage
from .modeling.meta_arch.fast_rcnn import OpenVocabularyDetector
from .modeling.meta_arch.pretraining import RegionTextPretraining
from .results import RegionPredictions
from .text.vocabulary import Vocabulary

__all__ = ["ModelConfig", "OpenVocabularyDetector", "RangedImage", "RegionCLIP", "RegionPredictions", "RegionTextPretraining",
           "Vocabulary"]
__version__ = "0.1.0"
