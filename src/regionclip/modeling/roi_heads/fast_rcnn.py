"""Fast R-CNN training targets and losses of RegionCLIP's open-vocabulary detector (docs/transfer.md, "Losses").

* RoI sampling (detectron2 ``ROI_HEADS`` defaults): the ground-truth boxes are appended to each image's
  proposals; every box takes its best-IoU ground truth and is foreground at IoU >= 0.5 (no low-quality matches);
  512 boxes per image are sampled with at most 25 % foreground; a background box gets label ``K`` (the number of
  training classes).
* Classification over ``[cos/τ, 0]`` logits with the class weights ``w = [1]*K + [background_weight]``:
  focal scaling (COCO recipe) ``mean_i w_{y_i} · CE_i · (1 - p_{t,i})^γ`` (no α, plain mean over RoIs), or without it
  (LVIS recipe) the weighted mean ``Σ w_{y_i} CE_i / Σ w_{y_i}``.
* Box regression, class-agnostic: ``Σ_fg |Δ_pred - Δ_target|`` (smooth-L1 with β = 0) over the foreground RoIs,
  divided by the number of sampled RoIs of the batch; deltas encoded with weights (10, 10, 5, 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.nn import functional as F
from torchvision.ops import box_iou

from ...config.base import ConfigBase
from ..box_regression import BoxCoder, smooth_l1
from ..matcher import match_by_iou
from ..sampling import sample_foreground_background

# (1 - p_t) is floored here before the power: at p_t == 1 the power's derivative is infinite and 0 · inf is NaN
FOCAL_FLOOR = 1e-12


@dataclass
class RoIHeadConfig(ConfigBase):
    """Sampling and loss settings of the Fast R-CNN head; the defaults are RegionCLIP's COCO transfer recipe."""

    config_label = "roi_heads"

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    foreground_iou: float = 0.5
    background_weight: float = 0.2
    focal_gamma: float | None = 0.5  # None: the weighted-mean cross-entropy of the LVIS recipe
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 0.0

    def __post_init__(self) -> None:
        self.box_reg_weights = tuple(float(w) for w in self.box_reg_weights)  # type: ignore[assignment]
        if self.batch_size_per_image < 1 or not 0 < self.positive_fraction <= 1:
            raise ValueError("need batch_size_per_image >= 1 and 0 < positive_fraction <= 1")
        if not 0 < self.foreground_iou <= 1 or self.background_weight < 0:
            raise ValueError("need 0 < foreground_iou <= 1 and background_weight >= 0")
        if self.focal_gamma is not None and self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0 or None, got {self.focal_gamma}")
        if len(self.box_reg_weights) != 4 or self.smooth_l1_beta < 0:
            raise ValueError("need four box_reg_weights and smooth_l1_beta >= 0")

    @classmethod
    def coco(cls, **overrides: Any) -> RoIHeadConfig:
        """The official OV-COCO recipe: background weight 0.2, focal scaling γ = 0.5."""
        return cls(**overrides)

    @classmethod
    def lvis(cls, **overrides: Any) -> RoIHeadConfig:
        """The official LVIS recipe: background weight 0.8, weighted-mean cross-entropy (no focal scaling)."""
        return cls(**{"background_weight": 0.8, "focal_gamma": None, **overrides})


@dataclass
class SampledRoIs:
    """The sampled RoIs of one image: ``boxes [R, 4]`` (xyxy, the frame of the proposals), ``labels [R]`` (class
    index, ``K`` = background) and the matched ground-truth boxes ``[R, 4]`` (meaningful for foreground only)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    matched_boxes: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def label_and_sample_proposals(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    num_classes: int,
    config: RoIHeadConfig,
    generator: torch.Generator | None = None,
) -> SampledRoIs:
    """Append the ground truth to one image's proposals, label every box and sample the RoIs (foreground first)."""
    gt_boxes = gt_boxes.to(proposals).reshape(-1, 4)
    gt_labels = gt_labels.to(device=proposals.device, dtype=torch.int64).reshape(-1)
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"{len(gt_boxes)} ground-truth boxes but {len(gt_labels)} labels")
    if len(gt_labels) and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= num_classes):
        raise ValueError(f"ground-truth labels must lie in [0, {num_classes}), got {gt_labels.tolist()}")
    boxes = torch.cat([proposals.reshape(-1, 4), gt_boxes])
    matched, match_labels = match_by_iou(box_iou(gt_boxes, boxes), (config.foreground_iou,), (0, 1))
    labels = torch.full((len(boxes),), num_classes, dtype=torch.int64, device=boxes.device)
    if len(gt_labels):
        labels[match_labels == 1] = gt_labels[matched[match_labels == 1]]
    foreground, background = sample_foreground_background(
        labels < num_classes, labels == num_classes, config.batch_size_per_image, config.positive_fraction, generator
    )
    keep = torch.cat([foreground, background])
    matched_boxes = gt_boxes[matched[keep]] if len(gt_boxes) else torch.zeros_like(boxes[keep])
    return SampledRoIs(boxes[keep], labels[keep], matched_boxes)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: RoIHeadConfig) -> torch.Tensor:
    """The class loss over ``logits [R, K+1]`` (background last) and ``labels [R]`` (``K`` = background)."""
    num_classes = logits.shape[1] - 1
    weights = logits.new_ones(num_classes + 1)
    weights[num_classes] = config.background_weight
    if config.focal_gamma is None:
        return F.cross_entropy(logits, labels, weight=weights)
    cross_entropy = F.cross_entropy(logits, labels, reduction="none")
    one_minus_pt = (-torch.expm1(-cross_entropy)).clamp(min=FOCAL_FLOOR)  # 1 - p_t, accurate when p_t ≈ 1
    return (weights[labels] * cross_entropy * one_minus_pt**config.focal_gamma).mean()


def box_regression_loss(
    deltas: torch.Tensor, rois: Sequence[SampledRoIs], num_classes: int, box_coder: BoxCoder, config: RoIHeadConfig
) -> torch.Tensor:
    """Class-agnostic smooth-L1 of ``deltas [R, 4]`` (the RoIs of all images, in order) on the foreground RoIs
    (label < ``num_classes``), summed and divided by the number of RoIs."""
    boxes = torch.cat([r.boxes for r in rois])
    labels = torch.cat([r.labels for r in rois])
    matched = torch.cat([r.matched_boxes for r in rois])
    foreground = labels < num_classes
    if not bool(foreground.any()):
        return deltas.sum() * 0.0  # zero, still connected to the graph (every rank's DDP sees the same parameters)
    targets = box_coder.encode(boxes[foreground], matched[foreground])
    return smooth_l1(deltas[foreground], targets, config.smooth_l1_beta) / len(labels)


def fast_rcnn_losses(
    logits: torch.Tensor, deltas: torch.Tensor, rois: Sequence[SampledRoIs], box_coder: BoxCoder, config: RoIHeadConfig
) -> dict[str, torch.Tensor]:
    """``{"loss_cls", "loss_box_reg"}`` of the sampled RoIs of a batch: ``logits [R, K+1]``, ``deltas [R, 4]``."""
    labels = torch.cat([r.labels for r in rois])
    if logits.shape[0] != len(labels) or deltas.shape != (len(labels), 4):
        raise ValueError(f"{len(labels)} RoIs but logits {tuple(logits.shape)} and deltas {tuple(deltas.shape)}")
    return {
        "loss_cls": classification_loss(logits, labels, config),
        "loss_box_reg": box_regression_loss(deltas, rois, logits.shape[1] - 1, box_coder, config),
    }
