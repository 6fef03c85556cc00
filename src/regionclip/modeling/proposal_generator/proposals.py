"""Test/train-time proposal selection with detectron2's ``find_top_rpn_proposals`` semantics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, clip_boxes_to_image


@dataclass
class Proposals:
    """Proposals of one image: ``boxes`` [N, 4] xyxy in input-image pixels, ``objectness_logits`` [N] (raw,
    no sigmoid), sorted by logit descending; ``image_size`` is the unpadded (height, width)."""

    boxes: torch.Tensor
    objectness_logits: torch.Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Proposals:
        return Proposals(self.boxes.to(device, dtype), self.objectness_logits.to(device, dtype), self.image_size)


def select_top_proposals(
    proposals: Sequence[torch.Tensor],
    logits: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_size: float,
    training: bool,
) -> list[Proposals]:
    """detectron2 proposal selection.

    Args:
        proposals: per level ``[N, Hi*Wi*A, 4]`` decoded boxes.
        logits: per level ``[N, Hi*Wi*A]`` objectness logits.
        image_sizes: unpadded (h, w) per image.

    Steps: per level keep the ``pre_nms_topk`` highest logits; concatenate levels; per image drop
    non-finite rows (an error in training), clip to the image, drop boxes with a side <= ``min_size``,
    NMS per level (batched over level ids), keep the first ``post_nms_topk`` (sorted by logit).
    """
    if len(proposals) != len(logits) or not proposals:
        raise ValueError("need the same, non-zero number of proposal and logit levels")
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)
    top_boxes, top_scores, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, logits)):
        k = min(int(logits_l.shape[1]), int(pre_nms_topk))
        scores_sorted, idx = logits_l.sort(descending=True, dim=1)
        top_scores.append(scores_sorted[:, :k])
        top_boxes.append(boxes_l[batch_idx[:, None], idx[:, :k]])
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    all_scores = torch.cat(top_scores, dim=1)
    all_boxes = torch.cat(top_boxes, dim=1)
    all_levels = torch.cat(level_ids, dim=0)

    results: list[Proposals] = []
    for n, image_size in enumerate(image_sizes):
        boxes, scores, lvl = all_boxes[n], all_scores[n], all_levels
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(valid.all()):
            if training:
                raise FloatingPointError("predicted proposal boxes or logits contain Inf/NaN: training has diverged")
            boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
        boxes = clip_boxes_to_image(boxes, image_size)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (widths > min_size) & (heights > min_size)
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes.float(), scores, lvl, nms_thresh)[:post_nms_topk]
        results.append(Proposals(boxes[keep], scores[keep], (int(image_size[0]), int(image_size[1]))))
    return results
