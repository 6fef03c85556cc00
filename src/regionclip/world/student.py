"""Region–text pretraining of the embedded world's student (`regionclip.pretrain` on the world, cached).

The student starts from a trained CLIP teacher and learns from the world's ``pretrain`` captions with the
world's RPN for regions and the world's category names as the concept pool (``concepts: world``), on images at
their own size (no 800-px resize). The run is cached like the teacher and the RPN (`cached_training`), keyed by
this config, the teacher's and the RPN's run keys and the world's hash. `pseudo_label_accuracy` measures how
often a model's top-1 concept on a proposal names the object under it (docs/embedded-world.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torchvision.ops import box_iou

from ..api import RegionCLIP
from ..engine.caching import CachedRun, cached_training
from ..engine.loop import TrainingRun
from ..config import ConfigBase
from ..pretrain import STUDENT_FILE, PretrainConfig, pretrain
from ..synthetic import World
from ..text.vocabulary import Vocabulary
from .data import SplitData
from .rpn import TrainedRPN, propose
from .teacher import TrainedTeacher

PRETRAINER_VERSION = "1"  # bump when the recipe changes what a given config produces (part of the cache key)


@dataclass(frozen=True)
class StudentPretrainConfig(ConfigBase):
    """The demo's pretraining run (the `PretrainConfig` fields it sets; the rest keep their defaults)."""

    config_label = "student pretraining"

    steps: int = 200
    batch_size: int = 16
    lr: float = 0.002
    warmup_steps: int = 20
    milestones: tuple[int, ...] = ()
    regions_per_image: int = 32
    rpn_top_k: int = 300
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        self.pretrain_config("init", {}, "out")  # validates the values through PretrainConfig

    def pretrain_config(
        self, weights: str, world: dict[str, Any], output_dir: str, cache_dir: str | None = None
    ) -> PretrainConfig:
        """The full `PretrainConfig`: world-sized images, the world's ``pretrain`` split and category names."""
        return PretrainConfig(
            weights=weights, concepts="world", output_dir=output_dir, world=world, world_split="pretrain",
            cache_dir=cache_dir, min_size=None, regions_per_image=self.regions_per_image, rpn_top_k=self.rpn_top_k,
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, milestones=list(self.milestones),
            warmup_steps=min(self.warmup_steps, self.steps), seed=self.seed, checkpoint_every=self.checkpoint_every,
        )

    def cache_key(self, teacher_run: str, rpn_run: str, world_hash: str) -> str:
        """16 hex digits over this config (``checkpoint_every`` aside), the teacher and RPN runs and the world."""
        training = {k: v for k, v in self.to_dict().items() if k != "checkpoint_every"}
        payload = {"pretrainer": PRETRAINER_VERSION, "training": training, "teacher": teacher_run, "rpn": rpn_run,
                   "world": world_hash}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainedStudent(CachedRun):
    """A finished, cached student: ``weights`` (with the RPN) loads with ``RegionCLIP.from_pretrained``."""

    config: StudentPretrainConfig

    def load(self, device: str | None = "cpu") -> RegionCLIP:
        return RegionCLIP.from_pretrained(self.weights, device=device)


def student_run_dir(cache_root: str | Path, world: World, config: StudentPretrainConfig, teacher: TrainedTeacher,
                    rpn: TrainedRPN) -> Path:
    """``<cache_root>/student-<key>``: one directory per (pretraining config, teacher run, RPN run, world)."""
    key = config.cache_key(teacher.run_dir.name, rpn.run_dir.name, world.config.hash())
    return Path(cache_root).expanduser() / f"student-{key}"


def get_or_pretrain_student(
    world: World,
    config: StudentPretrainConfig,
    teacher: TrainedTeacher,
    rpn: TrainedRPN,
    cache_root: str | Path,
    progress: bool = True,
) -> TrainedStudent:
    """The student of (config, teacher, RPN, world) from the cache, pretraining (or resuming) it first if needed."""
    run_dir = student_run_dir(cache_root, world, config, teacher, rpn)
    output = run_dir / "pretrain"
    weights = output / STUDENT_FILE
    # the worlds folder beside the models cache, where `run_demo` generated this world
    pretrain_config = config.pretrain_config(
        str(run_dir / "init"), world.config.to_dict(), str(output), str(world.root.parent.parent)
    )

    def train(checkpoint_dir: Path) -> TrainingRun:
        initial = teacher.load()  # the teacher with the world's RPN: the student's (and frozen teacher's) start
        initial.rpn = rpn.load()
        initial.save_pretrained(run_dir / "init")
        return pretrain(pretrain_config, progress=progress)

    def save(run: TrainingRun) -> dict[str, Any]:
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # `pretrain` wrote the weights already
        return {}

    description = {"training": config.to_dict(), "teacher": teacher.run_dir.name, "rpn": rpn.run_dir.name,
                   "world": world.config.hash()}
    return cached_training(run_dir, weights, description, train, save, TrainedStudent, config=config)


def pseudo_label_accuracy(
    proposals: Sequence[torch.Tensor],
    predicted: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    iou_threshold: float = 0.5,
) -> dict[str, float | int]:
    """How often the predicted concept of a proposal is the category of the ground-truth object it overlaps most.

    Per image: ``proposals [P, 4]`` (xyxy), ``predicted [P]`` (a category id per proposal), ``gt_boxes [G, 4]``,
    ``gt_labels [G]`` (category ids). A proposal counts when its best IoU with a ground-truth box is at least
    ``iou_threshold``; ``accuracy`` is the fraction of counted proposals whose prediction equals that box's label
    (NaN when none counts). Returns ``accuracy``, ``matched`` (counted proposals) and ``proposals`` (all)."""
    hits = matched = total = 0
    for boxes, labels, gts, gt_classes in zip(proposals, predicted, gt_boxes, gt_labels, strict=True):
        total += len(boxes)
        if not len(boxes) or not len(gts):
            continue
        best_iou, best_gt = box_iou(boxes.float(), gts.float()).max(dim=1)
        counted = best_iou >= iou_threshold
        matched += int(counted.sum())
        hits += int((labels[counted] == gt_classes[best_gt[counted]]).sum())
    return {"accuracy": hits / matched if matched else float("nan"), "matched": matched, "proposals": total}


@torch.inference_mode()
def proposal_pseudo_label_accuracy(
    model: RegionCLIP,
    data: SplitData,
    rpn_model: RegionCLIP | None = None,
    templates: str = "ensemble",
    num_proposals: int = 100,
    iou_threshold: float = 0.5,
) -> dict[str, float | int]:
    """`pseudo_label_accuracy` of ``model``'s top-1 category name (the pool pretraining uses: the split's category
    names) on the top ``num_proposals`` RPN proposals of each image; the RPN is ``rpn_model``'s (default
    ``model``'s)."""
    if data.images is None:
        raise ValueError("evaluation needs decoded images")
    rpn = (rpn_model or model).rpn
    if rpn is None:
        raise ValueError("pseudo-label accuracy needs a model with an RPN")
    proposals = propose(rpn, data.images, num_proposals)
    vocabulary = Vocabulary.from_coco_categories(data.categories, source="synthetic-world")
    embeddings = model.embed_vocabulary(vocabulary, templates, use_cache=False)
    with_proposals = [i for i, p in enumerate(proposals) if len(p)]
    predictions = model.classify_regions(
        [data.images[i] for i in with_proposals], [proposals[i] for i in with_proposals], vocabulary, top_k=1,
        class_embeddings=embeddings, batch_size=16,
    )
    category_ids = torch.tensor([int(c["id"]) for c in data.categories])
    predicted = [torch.zeros(0, dtype=torch.long) for _ in proposals]
    for i, prediction in zip(with_proposals, predictions):
        predicted[i] = category_ids[torch.from_numpy(prediction.labels)[:, 0].long()]
    labels = [torch.as_tensor(l, dtype=torch.long) for l in data.labels]
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in data.boxes]
    return pseudo_label_accuracy(proposals, predicted, boxes, labels, iou_threshold)
