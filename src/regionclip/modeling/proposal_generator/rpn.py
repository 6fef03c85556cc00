"""detectron2's ``proposal_generator`` (``RPN``): head + anchors + box coder; proposal selection and losses are
applied by `regionclip.modeling.meta_arch.proposal_network.ProposalNetwork`, which adds the backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..anchor_generator import AnchorGenerator
from ..box_regression import BoxCoder
from .config import RPNConfig
from .rpn_head import StandardRPNHead


class RPN(nn.Module):
    """detectron2's ``proposal_generator``: head + anchors + box coder + selection + losses."""

    def __init__(self, config: RPNConfig) -> None:
        super().__init__()
        self.config = config
        self.anchor_generator = AnchorGenerator(
            config.level_anchor_sizes, config.level_anchor_aspect_ratios, config.feature_strides, config.anchor_offset
        )
        self.rpn_head = StandardRPNHead(config.rpn_in_channels, config.num_anchors_per_location, config.head_conv_dims)
        self.box_coder = BoxCoder(config.box_reg_weights, config.scale_clamp)

    def predict(
        self, features: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Run the head; returns anchors per level ``[Hi*Wi*A, 4]``, logits ``[N, Hi*Wi*A]`` and deltas
        ``[N, Hi*Wi*A, 4]``, flattened location-major then anchor (detectron2's order)."""
        anchors = self.anchor_generator(features)
        raw_logits, raw_deltas = self.rpn_head(features)
        # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in raw_logits]
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
        deltas = [
            x.view(x.shape[0], -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
            for x in raw_deltas
        ]
        return anchors, logits, deltas

    def decode(self, anchors: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decoded boxes per level ``[N, Hi*Wi*A, 4]``."""
        out = []
        for anchors_l, deltas_l in zip(anchors, deltas):
            n = deltas_l.shape[0]
            tiled = anchors_l.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4)
            boxes = self.box_coder.decode(deltas_l.reshape(-1, 4), tiled)
            out.append(boxes.view(n, -1, 4))
        return out
