"""RoI heads: Fast R-CNN sampling and losses of the open-vocabulary detector."""

from .fast_rcnn import (
    RoIHeadConfig,
    SampledRoIs,
    box_regression_loss,
    classification_loss,
    fast_rcnn_losses,
    label_and_sample_proposals,
)

__all__ = [
    "RoIHeadConfig",
    "SampledRoIs",
    "box_regression_loss",
    "classification_loss",
    "fast_rcnn_losses",
    "label_and_sample_proposals",
]
