"""IoU matching of reference boxes (anchors, proposals) to ground truth, detectron2 ``Matcher`` semantics.

Each reference box takes its best-IoU ground truth; the IoU is bucketed by ``thresholds`` into ``labels``
(``len(labels) == len(thresholds) + 1``; bucket i is ``[thresholds[i-1], thresholds[i])``). With
``allow_low_quality_matches`` every reference box that ties for the highest IoU of some ground truth gets the last
(foreground) label, even when that IoU is low - including 0 when a ground truth overlaps nothing. Without ground
truth every box gets the first label.

The RPN uses ``thresholds (0.3, 0.7)``, labels ``(0, -1, 1)`` and low-quality matches; the Fast R-CNN RoI head
``thresholds (0.5,)``, labels ``(0, 1)`` and none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def match_by_iou(
    iou: torch.Tensor,
    thresholds: Sequence[float],
    labels: Sequence[int],
    allow_low_quality_matches: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match the columns of an IoU matrix ``[num_gt, num_boxes]`` to its rows.

    Returns ``(matched_gt_index [B] int64, match_labels [B] int8)``; ``matched_gt_index`` is 0 when there is no
    ground truth.
    """
    if iou.dim() != 2:
        raise ValueError(f"iou must be [num_gt, num_boxes], got shape {tuple(iou.shape)}")
    if len(labels) != len(thresholds) + 1 or list(thresholds) != sorted(thresholds):
        raise ValueError(f"need increasing thresholds and one more label than thresholds, got {thresholds}, {labels}")
    num_boxes = iou.shape[1]
    if iou.numel() == 0:
        return (
            torch.zeros(num_boxes, dtype=torch.int64, device=iou.device),
            torch.full((num_boxes,), labels[0], dtype=torch.int8, device=iou.device),
        )
    best_iou, matched = iou.max(dim=0)
    match_labels = torch.full_like(matched, labels[-1], dtype=torch.int8)
    bounds = [float("-inf"), *thresholds, float("inf")]
    for label, low, high in zip(labels, bounds[:-1], bounds[1:]):
        match_labels[(best_iou >= low) & (best_iou < high)] = label
    if allow_low_quality_matches:
        best_per_gt, _ = iou.max(dim=1)
        box_index = torch.nonzero(iou == best_per_gt[:, None], as_tuple=True)[1]
        match_labels[box_index] = labels[-1]
    return matched, match_labels
