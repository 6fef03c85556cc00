"""Training the embedded world's class-agnostic RPN (a small ResNet-FPN with detectron2 RPN semantics).

The network is `ProposalNetwork` with a custom spec: one bottleneck block per stage, trainable BatchNorm (it is
trained from scratch, so there are no ImageNet statistics to freeze) and one anchor size per FPN level, spaced
geometrically over the world's object sizes. Targets are the det_train split's boxes, all of base categories;
novel objects appear in those images unlabelled, i.e. as background - the OV-COCO / LVIS-base setting of the paper.
Losses are `ProposalNetwork.losses` (detectron2 anchor matching/sampling, BCE + L1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checkpoints.detectron2_rpn import load_detectron2_rpn, save_detectron2_rpn
from ..config import ConfigBase
from ..engine.caching import CachedRun, cached_training
from ..engine.loop import TrainingRun, batch_indices, run_training
from ..engine.optim import build_optimizer
from ..engine.schedules import WarmupCosine
from ..evaluation.proposal_recall import proposal_hits
from ..modeling.meta_arch.proposal_network import ProposalNetwork
from ..modeling.proposal_generator import RPNConfig
from ..synthetic import World, WorldConfig
from .data import SplitData, load_split

TRAINER_VERSION = "1"
WEIGHTS_FILE = "rpn.pth"  # detectron2 layout {"model": state_dict}


def world_anchor_sizes(world: WorldConfig, levels: int = 5) -> tuple[tuple[float, ...], ...]:
    """One anchor size per FPN level (P2..P6), geometric from 0.8x the smallest object side (occlusion makes
    visible boxes smaller than drawn objects) to the largest object side, rounded to whole pixels."""
    low = 0.8 * world.min_object_size * world.image_size
    high = world.max_object_size * world.image_size
    ratio = (high / low) ** (1 / (levels - 1))
    return tuple((float(round(low * ratio**i)),) for i in range(levels))


@dataclass(frozen=True)
class RPNTrainConfig(ConfigBase):
    """Everything that determines a trained RPN (with the world's hash it forms the cache key)."""

    config_label = "RPN training"

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    width: int = 16  # res2 bottleneck channels; stem = width, res2 = FPN = 4 * width
    blocks_per_stage: tuple[int, int, int, int] = (1, 1, 1, 1)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.width < 1:
            raise ValueError(f"need steps, batch_size, width >= 1, got {self.steps}, {self.batch_size}, {self.width}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        object.__setattr__(self, "blocks_per_stage", tuple(int(b) for b in self.blocks_per_stage))
        object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in self.aspect_ratios))

    def rpn_config(self, world: WorldConfig) -> RPNConfig:
        """The network spec for images of ``world``."""
        return dataclasses.replace(
            RPNConfig.tiny("fpn"),
            name=f"world-R{sum(self.blocks_per_stage) * 3 + 2}-FPN-w{self.width}",
            blocks_per_stage=self.blocks_per_stage,
            stem_out_channels=self.width,
            bottleneck_channels=self.width,
            res2_out_channels=4 * self.width,
            fpn_out_channels=4 * self.width,
            norm="BN",
            anchor_sizes=world_anchor_sizes(world),
            anchor_aspect_ratios=(self.aspect_ratios,),
            pre_nms_topk_test=1000,
            post_nms_topk_test=1000,
            nms_thresh=0.7,
        )

    def schedule(self) -> WarmupCosine:
        return WarmupCosine(self.lr, self.steps, self.warmup_steps, self.min_lr_ratio)

    def cache_key(self, world: WorldConfig) -> str:
        """16 hex digits over this config, the network spec, the world and the trainer version."""
        training = {k: v for k, v in self.to_dict().items() if k != "checkpoint_every"}
        payload = {
            "trainer": TRAINER_VERSION,
            "training": training,
            "network": self.rpn_config(world).to_dict(),
            "world": world.hash(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_rpn(config: RPNTrainConfig, world: WorldConfig) -> ProposalNetwork:
    """A freshly initialised (seeded) trainable proposal network for ``world``'s images."""
    torch.manual_seed(config.seed)
    return ProposalNetwork(config.rpn_config(world)).to(memory_format=torch.channels_last)


def base_boxes(data: SplitData) -> list[torch.Tensor]:
    """Boxes of base categories per image (det_train has no others; filtered again to be safe)."""
    base = data.category_ids_of("base")
    keep = [torch.tensor([int(c) in base for c in labels], dtype=torch.bool) for labels in data.labels]
    return [boxes[k] for boxes, k in zip(data.boxes, keep)]


def train_rpn(
    data: SplitData,
    config: RPNTrainConfig,
    world: WorldConfig,
    checkpoint_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainingRun:
    """Train the RPN on ``data``'s base boxes, resuming from the newest checkpoint in ``checkpoint_dir``
    (`run_training`); the returned run's ``module`` is the `ProposalNetwork`."""
    if data.images is None:
        raise ValueError("the RPN needs decoded images (load_split(..., with_images=True))")
    if len(data) < config.batch_size:
        raise ValueError(f"{len(data)} images cannot fill a batch of {config.batch_size}")
    gt_boxes = base_boxes(data)
    rpn = build_rpn(config, world)
    width = data.images.shape[-1]

    def step_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        chosen = batch_indices(len(data), config.batch_size, config.seed, step).tolist()
        flips = (torch.rand(len(chosen), generator=generator) < 0.5).tolist() if config.flip else [False] * len(chosen)
        images, targets = [], []
        for index, flip in zip(chosen, flips):
            image, boxes = data.images[index].float(), gt_boxes[index]
            if flip:
                image = image.flip(-1)
                boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
            images.append(image)
            targets.append(boxes)
        parts = rpn.losses(images, targets, generator=generator)
        return parts["loss_rpn_cls"] + parts["loss_rpn_loc"], {k: round(float(v.item()), 6) for k, v in parts.items()}

    def postfix(record: dict[str, float]) -> dict[str, str]:
        return {"cls": f"{record['loss_rpn_cls']:.3f}", "loc": f"{record['loss_rpn_loc']:.3f}"}

    optimizer = build_optimizer(rpn, "adamw", config.lr, config.weight_decay)
    return run_training(
        rpn, optimizer, config, step_fn, checkpoint_dir, "rpn", schedule=config.schedule(), progress=progress,
        stop_after=stop_after, postfix=postfix,
    )


@torch.inference_mode()
def propose(
    rpn: ProposalNetwork, images: torch.Tensor, top_n: int, nms_thresh: float | None = None, batch_size: int = 32
) -> list[torch.Tensor]:
    """Boxes of the ``top_n`` best proposals per image (best first), in input pixels."""
    rpn.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = [im.float() for im in images[start : start + batch_size]]
        out.extend(p.boxes.cpu() for p in rpn(batch, nms_thresh=nms_thresh, post_nms_topk=top_n))
    return out


def evaluate_rpn(
    rpn: ProposalNetwork,
    data: SplitData,
    top_ns: Sequence[int] = (100, 300),
    iou_threshold: float = 0.5,
    nms_thresh: float | None = None,
) -> dict[str, Any]:
    """Proposal recall at each ``top_n`` (IoU ≥ ``iou_threshold``) for base, novel and all ground-truth boxes.

    Returns ``{"recall": {"base": {100: r, ...}, "novel": {...}, "all": {...}}, "num_boxes": {...},
    "mean_proposals": n}`` with the RPN's own NMS threshold unless ``nms_thresh`` is given."""
    if data.images is None:
        raise ValueError("evaluation needs decoded images")
    proposals = propose(rpn, data.images, max(top_ns), nms_thresh)
    novel = data.category_ids_of("novel")
    is_novel = [torch.tensor([int(c) in novel for c in labels], dtype=torch.bool) for labels in data.labels]
    recall: dict[str, dict[int, float]] = {"base": {}, "novel": {}, "all": {}}
    for top_n in top_ns:
        hits = proposal_hits(proposals, data.boxes, top_n, iou_threshold)
        flat, novel_mask = torch.cat(hits), torch.cat(is_novel)
        for group, mask in (("base", ~novel_mask), ("novel", novel_mask), ("all", torch.ones_like(novel_mask))):
            recall[group][int(top_n)] = flat[mask].float().mean().item() if mask.any() else float("nan")
    novel_mask = torch.cat(is_novel)
    return {
        "recall": recall,
        "num_boxes": {"base": int((~novel_mask).sum()), "novel": int(novel_mask.sum()), "all": len(novel_mask)},
        "mean_proposals": sum(len(p) for p in proposals) / max(1, len(proposals)),
        "iou_threshold": iou_threshold,
        "nms_thresh": rpn.config.nms_thresh if nms_thresh is None else nms_thresh,
    }


@dataclass
class TrainedRPN(CachedRun):
    """A finished, cached RPN: ``weights`` is a detectron2-layout ``.pth`` (``load_detectron2_rpn``)."""

    config: RPNTrainConfig
    rpn_config: RPNConfig  # the network spec for the world it was trained on

    def load(self) -> ProposalNetwork:
        """The frozen network, read back through the detectron2 checkpoint loader."""
        rpn, report = load_detectron2_rpn(self.weights, self.rpn_config, strict=True)
        return rpn


def rpn_run_dir(cache_root: str | Path, world: World, config: RPNTrainConfig) -> Path:
    return Path(cache_root).expanduser() / f"rpn-{config.cache_key(world.config)}"


def get_or_train_rpn(
    world: World,
    config: RPNTrainConfig,
    cache_root: str | Path,
    progress: bool = True,
    data: SplitData | None = None,
) -> TrainedRPN:
    """The RPN of (config, world) from the cache, training (or resuming) it first if needed."""
    run_dir = rpn_run_dir(cache_root, world, config)
    weights = run_dir / WEIGHTS_FILE
    rpn_config = config.rpn_config(world.config)

    def train(checkpoint_dir: Path) -> TrainingRun:
        split = data if data is not None else load_split(world, "det_train", progress=progress)
        return train_rpn(split, config, world.config, checkpoint_dir, progress=progress)

    def save(run: TrainingRun) -> dict[str, Any]:
        save_detectron2_rpn(run.module.freeze(), weights)
        return {}

    description = {"training": config.to_dict(), "network": rpn_config.to_dict(), "world": world.config.hash()}
    return cached_training(run_dir, weights, description, train, save, TrainedRPN, config=config, rpn_config=rpn_config)


def rpn_loss_total(losses: Sequence[dict[str, float]]) -> list[float]:
    """Per-step total RPN loss (classification + localisation)."""
    return [entry["loss_rpn_cls"] + entry["loss_rpn_loc"] for entry in losses]
