"""Assembled models: the open-vocabulary detector (Fast R-CNN C4 on CLIP's parts)."""

from .fast_rcnn import OpenVocabularyDetector, transfer_detection_config

__all__ = ["OpenVocabularyDetector", "transfer_detection_config"]
