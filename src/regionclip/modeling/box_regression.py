"""R-CNN box parameterisation (detectron2 Box2BoxTransform semantics) and the smooth-L1 box loss.

Shared by the RPN (anchors → proposals, weights (1, 1, 1, 1)) and the Fast R-CNN box head (proposals → boxes,
weights (10, 10, 5, 5)).

For a source box with width w, height h and centre (cx, cy), and weights (wx, wy, ww, wh):
``dx = wx (cx' - cx) / w``, ``dy = wy (cy' - cy) / h``, ``dw = ww log(w' / w)``, ``dh = wh log(h' / h)``.
Decoding divides by the weights and clamps dw, dh at ``scale_clamp`` (default log(1000/16)) before exp.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
from torch.nn import functional as F

# dw, dh are clamped at log(1000/16) before exp, so a box grows at most 1000/16 times per decoding
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode/decode xyxy boxes relative to reference boxes (anchors or proposals)."""

    def __init__(
        self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"need four weights (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Deltas ``[N, 4]`` that turn ``src_boxes`` [N, 4] into ``target_boxes`` [N, 4]."""
        src_w = src_boxes[:, 2] - src_boxes[:, 0]
        src_h = src_boxes[:, 3] - src_boxes[:, 1]
        if src_boxes.numel() and not bool((src_w > 0).all() and (src_h > 0).all()):
            raise ValueError("source boxes must have positive width and height")
        src_cx = src_boxes[:, 0] + 0.5 * src_w
        src_cy = src_boxes[:, 1] + 0.5 * src_h
        tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
        tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
        tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
        tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h
        wx, wy, ww, wh = self.weights
        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Apply ``deltas`` [N, 4k] to ``boxes`` [N, 4]; returns [N, 4k] xyxy (float32 at least)."""
        if deltas.shape[0] != boxes.shape[0] or deltas.shape[-1] % 4:
            raise ValueError(f"deltas {tuple(deltas.shape)} do not match boxes {tuple(boxes.shape)}")
        deltas = deltas.float() if deltas.dtype in (torch.float16, torch.bfloat16) else deltas
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def smooth_l1(input: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed smooth-L1 (``0.5 d²/β`` below ``β``, ``|d| - 0.5 β`` above); ``beta < 1e-5`` is plain L1
    (detectron2/fvcore convention)."""
    if beta < 1e-5:
        return F.l1_loss(input, target, reduction="sum")
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")
