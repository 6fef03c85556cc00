"""Zero-shot detection post-processing: score fusion with RPN objectness, per-class (soft-)NMS, top-k.

Official semantics (docs/official-semantics.md, "Zero-shot scores and post-processing"): class probabilities
``p = softmax([cos/τ, 0])`` without the background column; with RPN boxes the score is ``sqrt(p × o)`` with ``o``
the **raw** objectness logit, so proposals with a negative logit give NaN and are dropped; then
``score > threshold``, per-class NMS (0.5) or Gaussian soft-NMS (σ 0.5), and the top detections per image
(100 COCO / 300 LVIS). ``score_fusion="sigmoid"`` is a
better-behaved alternative (``sqrt(p × sigmoid(o))``: a probability, nothing dropped); ``"none"`` keeps ``p``
(ground-truth-box mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, box_iou

from ...config.base import ConfigBase
from ...precision import check_precision

SCORE_FUSIONS = ("official", "sigmoid", "none")


@dataclass
class DetectionConfig(ConfigBase):
    """Zero-shot detection settings; defaults are the official COCO zero-shot inference config."""

    config_label = "detection config"

    score_fusion: str = "official"
    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5
    soft_nms_prune: float = 0.001
    max_detections: int = 100
    rpn_nms_threshold: float = 0.9
    num_proposals: int = 1000
    # speed knobs (`preset` "fast"); the defaults are the official, exact computation
    roi_sampling_ratio: int = 0  # RoIAlign samples per bin side; 0 = adaptive ceil(bin side), as officially
    precision: str | None = None  # "fp32" / "bf16" / "fp16" for this detection; None = the model's own
    batch_regions_across_images: bool = False  # region-head batches mix the regions of differently sized images

    def __post_init__(self) -> None:
        if self.roi_sampling_ratio < 0:
            raise ValueError(f"roi_sampling_ratio must be 0 (adaptive) or positive, got {self.roi_sampling_ratio}")
        if self.precision is not None:
            check_precision(self.precision)
        if self.score_fusion not in SCORE_FUSIONS:
            raise ValueError(f"score_fusion must be one of {SCORE_FUSIONS}, got {self.score_fusion!r}")
        if not 0 <= self.nms_threshold <= 1 or not 0 <= self.rpn_nms_threshold <= 1:
            raise ValueError("NMS thresholds must lie in [0, 1]")
        if self.max_detections < 1 or self.num_proposals < 1:
            raise ValueError("max_detections and num_proposals must be positive")

    @classmethod
    def lvis(cls, **overrides) -> DetectionConfig:
        """The official LVIS zero-shot config: 300 detections per image, score threshold 0.02."""
        return cls(**{"score_threshold": 0.02, "max_detections": 300, **overrides})

    @classmethod
    def preset(cls, name: str, lvis: bool = False, **overrides) -> DetectionConfig:
        """``"exact"``: the official computation (the defaults). ``"fast"``: 300 proposals instead of 1000,
        RoIAlign with 2 samples per bin side instead of adaptive (a fixed 4 samples per bin for any box size),
        bf16 autocast, and region-head batches across images. ``lvis`` starts from the LVIS settings."""
        if name not in DETECTION_PRESETS:
            raise ValueError(f"detection preset must be one of {tuple(DETECTION_PRESETS)}, got {name!r}")
        chosen = {**DETECTION_PRESETS[name], **overrides}
        return cls.lvis(**chosen) if lvis else cls(**chosen)


DETECTION_PRESETS: dict[str, dict] = {
    "exact": {},
    "fast": {"num_proposals": 300, "roi_sampling_ratio": 2, "precision": "bf16", "batch_regions_across_images": True},
}


def fuse_scores(probabilities: torch.Tensor, objectness_logits: torch.Tensor | None, mode: str) -> torch.Tensor:
    """``[R, K]`` detection scores; rows that the official fusion makes NaN are left NaN for the caller to drop."""
    if mode == "none" or objectness_logits is None:
        return probabilities
    objectness = objectness_logits[:, None]
    if mode == "official":
        return torch.sqrt(probabilities * objectness)  # NaN where the raw logit is negative, as officially
    if mode == "sigmoid":
        return torch.sqrt(probabilities * objectness.sigmoid())
    raise ValueError(f"unknown score fusion {mode!r}")


def soft_nms_gaussian(boxes: torch.Tensor, scores: torch.Tensor, sigma: float, prune: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS of one class: returns kept indices and their decayed scores, by decreasing score."""
    scores = scores.clone()
    remaining = torch.arange(len(scores), device=scores.device)
    keep, kept_scores = [], []
    while remaining.numel():
        best = int(scores[remaining].argmax())
        index = remaining[best]
        keep.append(index)
        kept_scores.append(scores[index])
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
        if not remaining.numel():
            break
        overlap = box_iou(boxes[index][None], boxes[remaining])[0]
        scores[remaining] *= torch.exp(-(overlap * overlap) / sigma)
        remaining = remaining[scores[remaining] >= prune]
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores.new_zeros(0)
    kept = torch.stack(kept_scores)
    order = kept.argsort(descending=True)
    return torch.stack(keep)[order], kept[order]


def select_detections(
    boxes: torch.Tensor, scores: torch.Tensor, config: DetectionConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From ``boxes [R, 4]`` (shared by all classes: no per-class box deltas) and ``scores [R, K]``, the final detections:
    ``(box_indices [M], class_indices [M], scores [M])`` sorted by score. A box may appear under several classes."""
    finite_rows = torch.isfinite(scores).all(dim=1)
    candidates = (scores > config.score_threshold) & finite_rows[:, None]
    box_index, class_index = candidates.nonzero(as_tuple=True)
    candidate_scores = scores[box_index, class_index]
    candidate_boxes = boxes[box_index]
    if config.soft_nms:
        keep_parts, score_parts = [], []
        for cls in class_index.unique():
            members = (class_index == cls).nonzero(as_tuple=True)[0]
            kept, decayed = soft_nms_gaussian(
                candidate_boxes[members], candidate_scores[members], config.soft_nms_sigma, config.soft_nms_prune
            )
            keep_parts.append(members[kept])
            score_parts.append(decayed)
        keep = torch.cat(keep_parts) if keep_parts else box_index.new_zeros(0)
        final_scores = torch.cat(score_parts) if score_parts else candidate_scores.new_zeros(0)
        order = final_scores.argsort(descending=True)
        keep, final_scores = keep[order], final_scores[order]
    else:
        keep = batched_nms(candidate_boxes, candidate_scores, class_index, config.nms_threshold)
        final_scores = candidate_scores[keep]
    keep, final_scores = keep[: config.max_detections], final_scores[: config.max_detections]
    return box_index[keep], class_index[keep], final_scores
