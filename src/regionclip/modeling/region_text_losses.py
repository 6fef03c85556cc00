"""Region–text pretraining: teacher pseudo-labels and the three RegionCLIP losses, as functions on feature tensors.

Formulas, temperatures and thresholds as the official pretraining (docs/pretraining.md). With ``f`` the student's
region features, ``v`` the teacher's region features of the same boxes, ``E`` the concept-pool embeddings, all
L2-normalised, and τ = 0.01:

* pseudo-labels: ``q = softmax(v Eᵀ / τ_t)``; a region is kept when ``max_k q_k > threshold`` (0.1), and when no
  region of the batch passes, all are kept; its target is ``argmax_k q_k``;
* ``region_distill`` = ``KL(q ‖ p)`` with ``p = softmax(f Eᵀ / τ)``, summed over concepts, averaged over kept regions;
* ``concept_contrastive``: the columns are the target concepts of all kept regions of the local batch (duplicates
  included), ``z_ij = f_i · E_{t_j} / τ``, and ``loss = mean_i −log Σ_{j: t_j = t_i} softmax_j(z_i)``;
* ``image_text``: global-box features against caption embeddings, both gathered over all ranks with gradients,
  ``S = g tᵀ / τ`` over the global batch, ``loss = (CE(S) + CE(Sᵀ)) / 2`` (open_clip's ``ClipLoss``).

Every region tensor is the flat ``[R, D]`` of all regions of the local batch (images concatenated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import distributed as dist

from ..config.base import ConfigBase

LOSS_NAMES = ("region_distill", "concept_contrastive", "image_text")


@dataclass
class RegionTextLossConfig(ConfigBase):
    """Temperatures, the pseudo-label threshold and the loss weights (official values: 0.01, 0.01, 0.1, 1, 1, 1)."""

    config_label = "region-text loss config"

    temperature: float = 0.01
    teacher_temperature: float = 0.01
    concept_threshold: float = 0.1
    region_distill_weight: float = 1.0
    concept_contrastive_weight: float = 1.0
    image_text_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0 or self.teacher_temperature <= 0:
            raise ValueError("temperatures must be positive")
        if not 0 <= self.concept_threshold < 1:
            raise ValueError(f"concept_threshold must be in [0, 1), got {self.concept_threshold}")

    def weight(self, loss_name: str) -> float:
        return getattr(self, f"{loss_name}_weight")


@dataclass
class PseudoLabels:
    """The teacher's verdict on every region: concept probabilities ``[R, K]``, top-1 concept ``[R]`` and whether the
    region takes part in the region losses ``[R]``."""

    probs: torch.Tensor
    targets: torch.Tensor
    keep: torch.Tensor


def concept_logits(region_features: torch.Tensor, concept_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """``cos(region, concept) / temperature``, ``[R, K]``; neither input needs to be normalised."""
    return F.normalize(region_features, dim=-1) @ F.normalize(concept_embeddings, dim=-1).T / temperature


@torch.no_grad()
def teacher_pseudo_labels(
    teacher_region_features: torch.Tensor,
    concept_embeddings: torch.Tensor,
    temperature: float = 0.01,
    threshold: float = 0.1,
) -> PseudoLabels:
    """Soft and hard pseudo-labels from the frozen teacher's region features (no gradient)."""
    dtype = torch.promote_types(teacher_region_features.dtype, torch.float32)  # half-precision teachers → fp32
    probs = concept_logits(teacher_region_features.to(dtype), concept_embeddings.to(dtype), temperature).softmax(-1)
    if probs.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=probs.device)
        return PseudoLabels(probs=probs, targets=empty, keep=empty.bool())
    top_prob, targets = probs.max(dim=-1)
    keep = top_prob > threshold
    if not keep.any():  # the official fallback: with no confident region, every region counts
        keep = torch.ones_like(keep)
    return PseudoLabels(probs=probs, targets=targets, keep=keep)


def _zero_loss(features: torch.Tensor) -> torch.Tensor:
    """A zero that stays in the graph, for a batch without regions."""
    return features.sum() * 0.0


def region_distillation_loss(
    student_region_features: torch.Tensor,
    concept_embeddings: torch.Tensor,
    teacher_probs: torch.Tensor,
    temperature: float = 0.01,
) -> torch.Tensor:
    """``(1/R) Σ_r Σ_k q_rk (log q_rk − log p_rk)`` over the R regions given (pass the kept ones), with
    ``p = softmax(cos(f, E) / τ)`` the student's and ``q`` the teacher's concept probabilities."""
    if student_region_features.shape[0] == 0:
        return _zero_loss(student_region_features)
    log_p = concept_logits(student_region_features, concept_embeddings, temperature).log_softmax(dim=-1)
    return F.kl_div(log_p, teacher_probs.to(log_p.dtype), reduction="batchmean")


def concept_contrastive_loss(
    student_region_features: torch.Tensor,
    concept_embeddings: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 0.01,
) -> torch.Tensor:
    """Multiple-positive region–concept contrast within the local batch (not gathered across ranks).

    Region i is scored against the target concept of every region j given (its own included, duplicates kept);
    every column whose target equals t_i is a positive: ``mean_i −log Σ_{j: t_j = t_i} softmax_j(z_i)``.
    When all regions share one concept the loss is exactly zero (nothing to contrast)."""
    if student_region_features.shape[0] == 0:
        return _zero_loss(student_region_features)
    logits = concept_logits(student_region_features, concept_embeddings[targets], temperature)
    log_probs = logits.log_softmax(dim=-1)
    positives = targets[:, None] == targets[None, :]
    return -torch.logsumexp(log_probs.masked_fill(~positives, float("-inf")), dim=-1).mean()


def _distributed_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def image_text_contrastive_loss(
    global_features: torch.Tensor,
    caption_features: torch.Tensor,
    temperature: float = 0.01,
    rank: int | None = None,
    world_size: int | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between whole-image (global-box) features and caption embeddings over the global batch.

    Both sides are normalised, all-gathered across ranks with gradients (every rank first truncated to the smallest
    per-rank batch) and scored as the full ``B × B`` matrix ``S = g tᵀ / τ`` on every rank, so each rank's value is
    the loss of the whole global batch, ``(CE(S, arange) + CE(Sᵀ, arange)) / 2``. ``rank`` / ``world_size`` default
    to the initialised process group (else a single process)."""
    if global_features.shape != caption_features.shape:
        raise ValueError(f"global features {tuple(global_features.shape)} and caption features "
                         f"{tuple(caption_features.shape)} must pair up")
    default_rank, default_size = _distributed_rank_and_size()
    rank = default_rank if rank is None else rank
    world_size = default_size if world_size is None else world_size
    if world_size > 1:
        smallest = torch.tensor([global_features.shape[0]], device=global_features.device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        global_features, caption_features = global_features[: int(smallest)], caption_features[: int(smallest)]
    clip_loss = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)
    return clip_loss(F.normalize(global_features, dim=-1), F.normalize(caption_features, dim=-1), 1.0 / temperature)


def region_text_losses(
    student_region_features: torch.Tensor,
    teacher_region_features: torch.Tensor,
    concept_embeddings: torch.Tensor,
    global_features: torch.Tensor,
    caption_features: torch.Tensor,
    config: RegionTextLossConfig | None = None,
    teacher_concept_embeddings: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The three weighted losses of one batch, keyed by `LOSS_NAMES` (the training objective is their sum).

    ``student_region_features`` / ``teacher_region_features``: ``[R, D]`` features of the same boxes;
    ``concept_embeddings``: ``[K, D]`` pool used by the student (and by the teacher unless
    ``teacher_concept_embeddings`` is given); ``global_features`` / ``caption_features``: ``[B, D]`` per image."""
    config = config or RegionTextLossConfig()
    if student_region_features.shape[0] != teacher_region_features.shape[0]:
        raise ValueError("student and teacher region features must describe the same boxes")
    teacher_pool = concept_embeddings if teacher_concept_embeddings is None else teacher_concept_embeddings
    if teacher_pool.shape[0] != concept_embeddings.shape[0]:
        raise ValueError("the teacher's concept pool must list the same concepts as the student's")
    labels = teacher_pseudo_labels(
        teacher_region_features, teacher_pool, config.teacher_temperature, config.concept_threshold
    )
    kept_features = student_region_features[labels.keep]
    losses = {
        "region_distill": region_distillation_loss(
            kept_features, concept_embeddings, labels.probs[labels.keep], config.temperature
        ),
        "concept_contrastive": concept_contrastive_loss(
            kept_features, concept_embeddings, labels.targets[labels.keep], config.temperature
        ),
        "image_text": image_text_contrastive_loss(global_features, caption_features, config.temperature),
    }
    return {name: config.weight(name) * loss for name, loss in losses.items()}
