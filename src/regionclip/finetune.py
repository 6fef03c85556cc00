"""Fine-tuning the open-vocabulary detector on COCO-format data (docs/transfer.md, "Fine-tuning").

    regionclip finetune --config configs/transfer/coco_rn50.yaml
    torchrun --nproc-per-node 8 -m regionclip.finetune --config configs/transfer/coco_rn50.yaml

The recipe is RegionCLIP's transfer schedule on the engine of `regionclip.engine`: SGD (momentum 0.9, weight decay
1e-4) over the trainable parameters (stem + res2 frozen, BatchNorms frozen, RPN and text encoder frozen),
`WarmupMultiStep`, global batch split over the ranks, resumable atomic checkpoints, then the fine-tuned detector
written as this project's safetensors and as the official ``.pth`` layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ConfigBase, ModelConfig
from .data.detection import OFFICIAL_TRAIN_MAX_SIZE, OFFICIAL_TRAIN_MIN_SIZES, TrainAugmentation, load_detection_split
from .engine import (
    GradientClipping,
    WarmupMultiStep,
    barrier,
    batch_indices,
    build_optimizer,
    get_world_size,
    init_distributed,
    is_main_process,
    run_training,
    shard,
    unwrap_model,
    wrap_model,
)
from .engine.distributed import launch_from_yaml
from .engine.loop import TrainingRun
from .modeling.meta_arch.fast_rcnn import OpenVocabularyDetector
from .modeling.roi_heads import RoIHeadConfig
from .precision import autocast_dtype, check_precision
from .utils import atomic_write_text, write_json


@dataclass
class FinetuneConfig(ConfigBase):
    """A transfer run. Paths are relative to the working directory. Defaults: the official OV-COCO 1x recipe
    (``roi_heads: RoIHeadConfig.lvis()`` values and 180k steps give the LVIS one)."""

    config_label = "finetune config"

    weights: str  # initialisation: RegionCLIP pretraining .pth, CLIP weights, or a detector to continue from
    train_annotations: str  # COCO-format instances json
    train_images: str  # image folder
    output_dir: str
    rpn: str | None = None  # detectron2 / RegionCLIP RPN .pth (required when the weights carry none)
    model: str | None = None  # model preset (e.g. "tiny") for weight files without a stored config
    base_category_ids: list[int] | None = None  # default: categories with split base/seen, else all
    train_embeddings: str | None = None  # official [K, D] .pth; default: the text encoder's ensemble embeddings
    test_embeddings: str | None = None  # stored with the detector for evaluation
    steps: int = 90000
    batch_size: int = 16  # global, split over the ranks
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1
    warmup_steps: int = 5000
    warmup_factor: float = 0.001
    grad_clip: float | None = None  # per-parameter gradient-norm clip; None: off
    train_min_sizes: list[int] = field(default_factory=lambda: list(OFFICIAL_TRAIN_MIN_SIZES))
    train_max_size: int = OFFICIAL_TRAIN_MAX_SIZE
    flip: bool = True
    freeze_at: int = 2
    precision: str = "fp32"  # "bf16" autocast where it pays (GPU; CPUs with native BF16), "fp16" (CUDA only)
    roi_heads: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    seed: int = 0
    checkpoint_every: int = 5000

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("need steps, batch_size and checkpoint_every >= 1")
        check_precision(self.precision)
        if not self.train_min_sizes or min(self.train_min_sizes) < 1 or self.train_max_size < max(self.train_min_sizes):
            raise ValueError("need positive train_min_sizes not above train_max_size")

    def schedule(self) -> WarmupMultiStep:
        return WarmupMultiStep(self.lr, tuple(self.milestones), self.gamma, self.warmup_steps, self.warmup_factor)


def build_detector(config: FinetuneConfig, device: torch.device | str = "cpu") -> tuple[OpenVocabularyDetector, Any]:
    """The detector initialised from ``config.weights`` with the training embeddings set, and the training data."""
    data = load_detection_split(config.train_annotations, config.train_images, config.base_category_ids)
    detector = OpenVocabularyDetector.from_pretrained(
        config.weights,
        train_embeddings=config.train_embeddings,
        test_embeddings=config.test_embeddings,
        rpn=config.rpn,
        config=ModelConfig.preset(config.model) if config.model else None,
        roi_heads_config=config.roi_heads,
        freeze_at=config.freeze_at,
        device=device,
    )
    if config.train_embeddings is None:
        detector.set_embeddings(train=detector.embed_vocabulary(data.vocabulary))
        detector.load_report.notes.append(f"train embeddings: the text encoder's, for {len(data.vocabulary)} categories")
    if detector.train_embeddings.shape[0] != len(data.vocabulary):
        raise ValueError(
            f"{detector.train_embeddings.shape[0]} training embeddings for {len(data.vocabulary)} training categories"
        )
    return detector, data


def finetune(config: FinetuneConfig, progress: bool = True, stop_after: int | None = None) -> TrainingRun:
    """Train (or resume) the run in ``config.output_dir``; the finished detector is written to
    ``<output_dir>/model.safetensors`` and ``<output_dir>/model_final.pth`` (official layout)."""
    device = init_distributed()
    output = Path(config.output_dir)
    if config.batch_size % get_world_size():
        raise ValueError(f"batch_size {config.batch_size} does not split over {get_world_size()} ranks")
    detector, data = build_detector(config, device)
    if is_main_process():
        output.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output / "config.yaml")
        atomic_write_text(output / "load_report.txt", detector.load_report.summary() + "\n")
    augmentation = TrainAugmentation(tuple(config.train_min_sizes), config.train_max_size, config.flip)
    model = wrap_model(detector, device)
    optimizer = build_optimizer(detector, "sgd", config.lr, config.weight_decay, momentum=config.momentum)

    def step_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        chosen = batch_indices(len(data), config.batch_size, config.seed, step).tolist()
        draws = [augmentation.draw(generator) for _ in chosen]  # for the global batch: every rank draws the same
        images, targets = [], []
        for index, (size, flip) in zip(shard(chosen), shard(draws)):
            image, target = augmentation.apply(data.records[index], size, flip)
            images.append(image)
            targets.append(target)
        losses = model(images, targets, None, generator)
        return sum(losses.values()), {k: round(float(v.detach()), 6) for k, v in losses.items()}

    run = run_training(
        model, optimizer, config, step_fn, output / "checkpoints", "finetune",
        schedule=config.schedule(), progress=progress, stop_after=stop_after,
        clip_gradients=GradientClipping("per_parameter", config.grad_clip) if config.grad_clip else None,
        autocast=autocast_dtype(config.precision, device),
        postfix=lambda r: {k.removeprefix("loss_"): f"{v:.3f}" for k, v in r.items()},
    )
    if run.finished and is_main_process():
        trained = unwrap_model(run.module)
        trained.save_pretrained(output / "model.safetensors")
        trained.save_official(output / "model_final.pth")
        write_json(output / "training.json", {"losses": run.losses, "seconds": run.seconds})
    barrier()
    return run


def main(argv: list[str] | None = None) -> None:
    launch_from_yaml("python -m regionclip.finetune", __doc__.splitlines()[0], FinetuneConfig, finetune, argv)


if __name__ == "__main__":
    main()
