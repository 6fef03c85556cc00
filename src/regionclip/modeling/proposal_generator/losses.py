"""RPN training targets and losses with detectron2's semantics.

* Matching (``Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)``): each anchor takes its
  best-IoU ground truth; IoU < 0.3 -> background (0), [0.3, 0.7) -> ignored (-1), >= 0.7 -> foreground (1);
  then every anchor that ties for the highest IoU of some ground truth becomes foreground (even when that
  IoU is low - including 0 if a box overlaps no anchor, as in detectron2).
* Sampling: at most ``batch_size * positive_fraction`` random positives, negatives fill the rest of
  ``batch_size``; everything else is ignored.
* Losses: ``BCE-with-logits`` over sampled anchors and smooth-L1 (beta 0 = L1) of the deltas over
  positives, both summed and divided by ``batch_size_per_image * num_images``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ..box_regression import BoxCoder, smooth_l1
from ..matcher import match_by_iou
from ..sampling import sample_foreground_background

BACKGROUND, IGNORE, FOREGROUND = 0, -1, 1


def match_anchors(
    iou: torch.Tensor, thresholds: tuple[float, float] = (0.3, 0.7), allow_low_quality_matches: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label anchors from an IoU matrix ``[num_gt, num_anchors]`` (`match_by_iou` with the RPN's labels).

    Returns ``(matched_gt_index [A] int64, labels [A] int8 in {-1, 0, 1})``. With no ground truth every
    anchor is background.
    """
    return match_by_iou(iou, thresholds, (BACKGROUND, IGNORE, FOREGROUND), allow_low_quality_matches)


def subsample_labels(
    labels: torch.Tensor,
    batch_size: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Keep ``min(#pos, int(batch_size * positive_fraction))`` random positives and fill up to
    ``batch_size`` with random negatives; all other anchors become -1. Returns a new label tensor."""
    pos_pick, neg_pick = sample_foreground_background(
        labels == FOREGROUND, labels == BACKGROUND, batch_size, positive_fraction, generator
    )
    out = torch.full_like(labels, IGNORE)
    out[pos_pick] = FOREGROUND
    out[neg_pick] = BACKGROUND
    return out


def label_and_sample_anchors(
    anchors: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    *,
    iou_thresholds: tuple[float, float] = (0.3, 0.7),
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for all anchors ``[R, 4]`` (levels concatenated) of every image.

    Returns ``labels [N, R]`` (int8, -1/0/1 after sampling) and ``matched_gt_boxes [N, R, 4]``
    (meaningful only where the label is 1).
    """
    all_labels, all_matched = [], []
    for boxes in gt_boxes:
        boxes = boxes.to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4)
        matched, labels = match_anchors(box_iou(boxes, anchors), iou_thresholds)
        labels = subsample_labels(labels, batch_size_per_image, positive_fraction, generator)
        all_labels.append(labels)
        all_matched.append(boxes[matched] if len(boxes) else torch.zeros_like(anchors))
    return torch.stack(all_labels), torch.stack(all_matched)


def rpn_losses(
    anchors: torch.Tensor,
    pred_logits: torch.Tensor,
    pred_deltas: torch.Tensor,
    gt_labels: torch.Tensor,
    matched_gt_boxes: torch.Tensor,
    box_coder: BoxCoder,
    *,
    batch_size_per_image: int = 256,
    smooth_l1_beta: float = 0.0,
    loss_weight: float = 1.0,
    bbox_reg_loss_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``{"loss_rpn_cls", "loss_rpn_loc"}`` from predictions ``[N, R]`` / ``[N, R, 4]`` and targets.

    Both losses are sums normalised by ``batch_size_per_image * N`` (not by the number of sampled anchors).
    """
    num_images = gt_labels.shape[0]
    fg = gt_labels == FOREGROUND
    valid = gt_labels >= 0
    target_deltas = box_coder.encode(anchors.expand(num_images, -1, -1)[fg], matched_gt_boxes[fg])
    loc = smooth_l1(pred_deltas[fg], target_deltas, smooth_l1_beta)
    cls = F.binary_cross_entropy_with_logits(pred_logits[valid], gt_labels[valid].float(), reduction="sum")
    normalizer = batch_size_per_image * num_images
    return {
        "loss_rpn_cls": cls / normalizer * loss_weight,
        "loss_rpn_loc": loc / normalizer * loss_weight * bbox_reg_loss_weight,
    }
