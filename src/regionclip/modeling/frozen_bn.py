"""Frozen BatchNorm with the exact arithmetic of ``nn.BatchNorm2d`` in eval mode.

torchvision's ``FrozenBatchNorm2d`` folds the statistics into a scale and a shift, which differs from
``nn.BatchNorm2d.eval()`` in the last bits. We keep its state-dict handling (no ``num_batches_tracked``,
as in detectron2 checkpoints) but compute with ``F.batch_norm`` so a region of the whole image reproduces
CLIP's image embedding exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBN


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, eps=bn.eps)
        frozen.weight.copy_(bn.weight.detach())
        frozen.bias.copy_(bn.bias.detach())
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
        return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a ``FrozenBatchNorm2d``."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return module
