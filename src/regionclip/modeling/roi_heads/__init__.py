"""RoI heads: the region head (res5 + attention pool), the text-embedding box predictor, detection post-processing,
and the Fast R-CNN sampling and losses of the open-vocabulary detector."""

from .box_predictor import TextEmbeddingClassifier
from .fast_rcnn import (
    RoIHeadConfig,
    SampledRoIs,
    box_regression_loss,
    classification_loss,
    fast_rcnn_losses,
    label_and_sample_proposals,
)
from .postprocessing import DETECTION_PRESETS, DetectionConfig, fuse_scores, select_detections, soft_nms_gaussian
from .region_head import Res5AttnPoolHead, attention_pool_first_token

__all__ = [
    "DETECTION_PRESETS",
    "DetectionConfig",
    "Res5AttnPoolHead",
    "RoIHeadConfig",
    "SampledRoIs",
    "TextEmbeddingClassifier",
    "attention_pool_first_token",
    "box_regression_loss",
    "classification_loss",
    "fast_rcnn_losses",
    "fuse_scores",
    "label_and_sample_proposals",
    "select_detections",
    "soft_nms_gaussian",
]
