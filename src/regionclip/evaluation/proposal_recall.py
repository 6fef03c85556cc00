"""Proposal recall: the fraction of ground-truth boxes that some of the top-n proposals overlaps."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_iou


def proposal_hits(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    top_n: int,
    iou_threshold: float = 0.5,
) -> list[torch.Tensor]:
    """Per image, a boolean per ground-truth box: some of the first ``top_n`` proposals (given best first)
    overlaps it with IoU ≥ ``iou_threshold``."""
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal sets for {len(gt_boxes)} images")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    hits = []
    for props, gts in zip(proposals, gt_boxes):
        gts = torch.as_tensor(gts, dtype=torch.float32).reshape(-1, 4)
        props = torch.as_tensor(props, dtype=torch.float32).reshape(-1, 4)[:top_n]
        if len(gts) == 0 or len(props) == 0:
            hits.append(torch.zeros(len(gts), dtype=torch.bool))
            continue
        hits.append(box_iou(gts, props).max(dim=1).values >= iou_threshold)
    return hits


def proposal_recall(
    proposals: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    top_n: int,
    iou_threshold: float = 0.5,
    keep: Sequence[torch.Tensor] | None = None,
) -> float:
    """Fraction of ground-truth boxes recalled by the top ``top_n`` proposals of their image (see
    `proposal_hits`); ``keep`` (a boolean mask per image) restricts it to some boxes, e.g. novel categories.
    Returns NaN when no box is counted."""
    hits = proposal_hits(proposals, gt_boxes, top_n, iou_threshold)
    if keep is not None:
        if len(keep) != len(hits):
            raise ValueError("keep needs one mask per image")
        hits = [h[torch.as_tensor(k, dtype=torch.bool)] for h, k in zip(hits, keep)]
    flat = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    return flat.float().mean().item() if len(flat) else float("nan")
