"""What determines a trained teacher: `TeacherTrainConfig` and its cache key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ...config import ConfigBase, ModelConfig
from ...engine.schedules import WarmupCosine
from ...precision import check_precision

TRAINER_VERSION = "2"  # bump when training changes what a given config produces (part of the cache key)


@dataclass(frozen=True)
class TeacherTrainConfig(ConfigBase):
    """Everything that determines a trained teacher (with the world's hash it forms the cache key)."""

    config_label = "teacher training"

    model: str = "small"  # ModelConfig preset
    image_size: int | None = None  # CLIP input side override (multiple of 32): the main compute knob on CPU
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    crop_scale: tuple[float, float] = (0.7, 1.0)  # RandomResizedCrop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True  # horizontal flip; "left"/"right" are swapped in the caption
    grayscale_prob: float = 0.0  # random grayscale (open_clip's gray_scale_prob): pushes towards shape over colour
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0
    seed: int = 0
    checkpoint_every: int = 50
    precision: str = "fp32"  # "bf16": forward passes under CPU/CUDA autocast (AMX / tensor cores), weights fp32

    def __post_init__(self) -> None:
        self.model_config()  # validates the preset name and the image size
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"bad crop_scale {self.crop_scale} or crop_ratio {self.crop_ratio}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not 0 <= self.grayscale_prob <= 1:
            raise ValueError(f"grayscale_prob must be in [0, 1], got {self.grayscale_prob}")
        if check_precision(self.precision) == "fp16":
            raise ValueError("teacher training runs in 'fp32' or 'bf16' (fp16 would need loss scaling)")
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        object.__setattr__(self, "crop_ratio", tuple(float(v) for v in self.crop_ratio))

    @property
    def label(self) -> str:
        """``small`` or ``small@64`` (preset and overridden input size)."""
        return self.model if self.image_size is None else f"{self.model}@{self.image_size}"

    def model_config(self) -> ModelConfig:
        """The preset's shape, with the CLIP input size overridden if asked (the attention-pool grid and the
        RoI pooler follow it)."""
        config = ModelConfig.preset(self.model)
        if self.image_size is not None:
            config.name = self.label
            config.vision = dataclasses.replace(config.vision, image_size=int(self.image_size))
        return config

    def schedule(self) -> WarmupCosine:
        return WarmupCosine(self.lr, self.steps, self.warmup_steps, self.min_lr_ratio)

    def cache_key(self, world_hash: str) -> str:
        """16 hex digits over this config, the model shape, the world and the trainer version.

        ``checkpoint_every`` is left out: it changes when state is saved, not what is learnt; ``precision`` is left
        out when it is fp32, so teachers trained before the field existed keep their keys."""
        training = {k: v for k, v in self.to_dict().items() if k != "checkpoint_every"}
        if training["precision"] == "fp32":
            del training["precision"]
        payload = {
            "trainer": TRAINER_VERSION,
            "training": training,
            "model": self.model_config().to_dict(),
            "world": world_hash,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
