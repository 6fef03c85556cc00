"""Frozen BatchNorm with the exact arithmetic of ``nn.BatchNorm2d`` in eval mode.

torchvision's ``FrozenBatchNorm2d`` folds the statistics into a scale and a shift, which differs from
``nn.BatchNorm2d.eval()`` in the last bits. We keep its state-dict handling (no ``num_batches_tracked``,
as in detectron2 checkpoints) but compute with ``F.batch_norm`` so a region of the whole image reproduces
CLIP's image embedding exactly.

For inference, `fold_batchnorm` folds each frozen BatchNorm into the convolution before it (one convolution
instead of a convolution and a separate normalisation pass); outputs change only by float rounding, and the
state dict keeps its original keys and values.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBN


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers."""

    folded = False  # set by `fold_batchnorm`: the preceding BatchNormFoldedConv2d applies this normalisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.folded else self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
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


class BatchNormFoldedConv2d(nn.Conv2d):
    """A convolution with the frozen BatchNorm after it folded in, for inference.

    In eval mode it is one convolution with weight ``w·γ/√(σ²+ε)`` and bias ``β + (b − μ)·γ/√(σ²+ε)`` (computed
    in float64, rounded once to the weight's dtype). In training mode it runs the convolution and then the
    BatchNorm arithmetic unfolded, so gradients reach the original weight. The original weight and bias stay the
    module's parameters (same objects, same state-dict keys and values); the folded pair are non-persistent buffers,
    at the cost of a second copy of the convolution weights. They are recomputed by `refold`, which runs on every
    switch to eval mode and after ``load_state_dict`` on the module given to `fold_batchnorm`.
    """

    def __init__(self, conv: nn.Conv2d, batchnorm: FrozenBatchNorm2d) -> None:
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.__dict__["batchnorm"] = batchnorm  # a reference, not a submodule: its keys stay where they were
        self.register_buffer("folded_weight", torch.empty(0), persistent=False)
        self.register_buffer("folded_bias", torch.empty(0), persistent=False)
        self.train(conv.training)
        self.refold()

    @torch.no_grad()
    def refold(self) -> None:
        bn = self.batchnorm
        scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
        shift = bn.bias.double() - bn.running_mean.double() * scale
        if self.bias is not None:
            shift = shift + self.bias.double() * scale
        self.folded_weight = (self.weight.double() * scale.view(-1, 1, 1, 1)).to(self.weight.dtype)
        self.folded_bias = shift.to(self.weight.dtype)

    def train(self, mode: bool = True) -> BatchNormFoldedConv2d:
        super().train(mode)
        if not mode and self.folded_weight.numel():
            self.refold()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.batchnorm.normalize(self._conv_forward(x, self.weight, self.bias))
        return self._conv_forward(x, self.folded_weight, self.folded_bias)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every `FrozenBatchNorm2d` inside ``module`` into the convolution whose output it reads (in place).

    Pairs are ``convK`` → ``bnK`` siblings and a convolution followed by a BatchNorm inside an ``nn.Sequential``:
    the layout of CLIP's ModifiedResNet (stem, bottlenecks, downsample branches), where each such BatchNorm
    normalises its convolution's output directly. Other BatchNorms are left as they are. Inference only in effect
    (see `BatchNormFoldedConv2d`); the state dict is unchanged. Returns ``module``.
    """
    folded_any = False
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            if not isinstance(child, FrozenBatchNorm2d) or child.folded:
                continue
            if isinstance(parent, nn.Sequential):
                conv_name = children[index - 1][0] if index > 0 else None
            else:
                conv_name = "conv" + name[2:] if name.startswith("bn") else None
            conv = getattr(parent, conv_name, None) if conv_name is not None else None
            if type(conv) is not nn.Conv2d:
                continue
            setattr(parent, conv_name, BatchNormFoldedConv2d(conv, child))
            child.folded = True
            folded_any = True
    if folded_any:
        module.register_load_state_dict_post_hook(_refold_after_load)
    return module


def _refold_after_load(module: nn.Module, incompatible_keys: object) -> None:
    for child in module.modules():
        if isinstance(child, BatchNormFoldedConv2d):
            child.refold()
