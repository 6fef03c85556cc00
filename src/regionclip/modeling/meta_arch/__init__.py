"""Assembled models: the open-vocabulary detector (Fast R-CNN C4 on CLIP's parts) and the region–text pretraining
model."""

from .fast_rcnn import OpenVocabularyDetector, transfer_detection_config
from .pretraining import ProposalSampling, RegionPseudoLabels, RegionTextPretraining

__all__ = [
    "OpenVocabularyDetector",
    "ProposalSampling",
    "RegionPseudoLabels",
    "RegionTextPretraining",
    "transfer_detection_config",
]
