"""Layers shared by the backbones: detectron2-named conv + norm, frozen BatchNorm and its folding into convolutions."""

from .batch_norm import BatchNormFoldedConv2d, FrozenBatchNorm2d, fold_batchnorm, freeze_batchnorm
from .conv import ConvNorm, make_norm

__all__ = ["BatchNormFoldedConv2d", "ConvNorm", "FrozenBatchNorm2d", "fold_batchnorm", "freeze_batchnorm", "make_norm"]
