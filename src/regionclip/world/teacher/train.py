"""Image-level CLIP training of the embedded world's teacher (plain PyTorch, CPU-friendly).

A small open_clip CLIP (ModifiedResNet + text transformer, OpenAI BPE tokenizer) learns from the pretraining
split's image–caption pairs with CLIP's symmetric contrastive loss and learned logit scale. It never sees a box,
so - like OpenAI's CLIP in the paper - it is expected to be good on whole images and weaker on regions.

Data come from the COCO captions json and the image files rather than the webdataset shards: random access
gives exact, seekable epoch permutations (so a resumed run reproduces an uninterrupted one bit for bit), and all
1-3 captions of an image are available to sample from (the shards' ``.txt`` carries only the first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.loss import ClipLoss
from open_clip.tokenizer import SimpleTokenizer
from torch import nn
from torch.nn import functional as F

from ...api import RegionCLIP
from ...checkpoints.clip_weights import split_checkpoint
from ...config import ModelConfig
from ...engine.caching import CachedRun, cached_training
from ...engine.loop import TrainingRun, batch_indices, run_training
from ...engine.optim import build_optimizer
from ...modeling.backbone.clip_resnet import build_open_clip
from ...modeling.text_encoder import encode_text_trimmed
from ...precision import autocast_dtype
from ...synthetic import World
from ..data import SplitData, load_split
from .augment import crop_sources, mirror_caption, normalize_pixels, random_resized_crops, to_grayscale
from .config import TeacherTrainConfig

def clip_no_decay(name: str, param: nn.Parameter) -> bool:
    """CLIP's convention: no weight decay on gains, biases, norms and the logit scale."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_teacher(config: TeacherTrainConfig) -> nn.Module:
    """A freshly initialised open_clip CLIP of the configured size (seeded), visual tower channels-last."""
    torch.manual_seed(config.seed)
    clip = build_open_clip(config.model_config())
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(config.init_logit_scale))
    # channels-last roughly halves the ResNet's backward time on CPU
    clip.visual.to(memory_format=torch.channels_last)
    return clip


def make_optimizer(clip: nn.Module, config: TeacherTrainConfig) -> torch.optim.Optimizer:
    # β2 = 0.98 and ε = 1e-6 as CLIP uses for its ResNets (large-batch contrastive training is noisy). The fused
    # kernel updates the 49k-row token embedding ~6x faster than the per-tensor loop on CPU.
    return build_optimizer(
        clip, "adamw", config.lr, config.weight_decay, no_decay=clip_no_decay, betas=(0.9, 0.98), eps=1e-6, fused=True
    )


def train_teacher(
    data: SplitData,
    config: TeacherTrainConfig,
    checkpoint_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainingRun:
    """Contrastive image–caption training, resuming from the newest checkpoint in ``checkpoint_dir``
    (`run_training`); the returned run's ``module`` is the open_clip CLIP."""
    if data.images is None:
        raise ValueError("the teacher needs decoded images (load_split(..., with_images=True))")
    usable = [i for i, caps in enumerate(data.captions) if caps]
    if len(usable) < config.batch_size:
        raise ValueError(f"{len(usable)} captioned images cannot fill a batch of {config.batch_size}")
    model_config = config.model_config()
    image_size = model_config.vision.image_size
    tokenizer = SimpleTokenizer(context_length=model_config.text.context_length)  # type: ignore[union-attr]
    clip = build_teacher(config)
    sources = crop_sources(data.images, image_size, config.crop_scale[0])
    contrastive_loss = ClipLoss()

    def step_fn(step: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        chosen = [usable[i] for i in batch_indices(len(usable), config.batch_size, config.seed, step).tolist()]
        pixels = random_resized_crops(sources[chosen], image_size, config.crop_scale, config.crop_ratio, generator)
        flips = (torch.rand(len(chosen), generator=generator) < 0.5).tolist() if config.flip else [False] * len(chosen)
        picks = torch.rand(len(chosen), generator=generator).tolist()
        captions = []
        for k, (index, flip) in enumerate(zip(chosen, flips)):
            options = data.captions[index]
            caption = options[min(len(options) - 1, int(picks[k] * len(options)))]
            captions.append(mirror_caption(caption) if flip else caption)
            if flip:
                pixels[k] = pixels[k].flip(-1)
        if config.grayscale_prob > 0:
            gray = torch.rand(len(chosen), generator=generator) < config.grayscale_prob
            pixels[gray] = to_grayscale(pixels[gray])
        images = normalize_pixels(pixels).contiguous(memory_format=torch.channels_last)
        # CLIP's symmetric InfoNCE on L2-normalised features, scaled by the exponentiated logit scale
        # features leave autocast in fp32: the normalisation and the logits stay exact under bf16 training
        image_features = F.normalize(clip.encode_image(images).float(), dim=-1)
        text_features = F.normalize(encode_text_trimmed(clip, tokenizer(captions)).float(), dim=-1)
        loss = contrastive_loss(image_features, text_features, clip.logit_scale.exp())
        return loss, round(float(loss.item()), 6)

    def clamp_logit_scale() -> None:
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(config.max_logit_scale))

    return run_training(
        clip, make_optimizer(clip, config), config, step_fn, checkpoint_dir, f"teacher {config.label}",
        schedule=config.schedule(), progress=progress, stop_after=stop_after, after_step=clamp_logit_scale,
        autocast=autocast_dtype(config.precision),
    )


def clip_to_regionclip(clip: nn.Module, config: ModelConfig) -> RegionCLIP:
    """The trained CLIP as a `RegionCLIP` (BatchNorms frozen with their running statistics), through the same
    OpenAI-named weights a released checkpoint carries."""
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items() if not k.endswith("num_batches_tracked")}
    parts = split_checkpoint(state)
    return RegionCLIP.from_parts(parts, config)


@dataclass
class TrainedTeacher(CachedRun):
    """A finished, cached teacher: ``weights`` loads with ``RegionCLIP.from_pretrained``."""

    config: TeacherTrainConfig

    def load(self, device: str | None = "cpu") -> RegionCLIP:
        return RegionCLIP.from_pretrained(self.weights, device=device)


def teacher_run_dir(cache_root: str | Path, world: World, config: TeacherTrainConfig) -> Path:
    """``<cache_root>/teacher-<label>-<key>``: one directory per (training config, model, world, seed)."""
    return Path(cache_root).expanduser() / f"teacher-{config.label}-{config.cache_key(world.config.hash())}"


def get_or_train_teacher(
    world: World,
    config: TeacherTrainConfig,
    cache_root: str | Path,
    progress: bool = True,
    data: SplitData | None = None,
) -> TrainedTeacher:
    """The teacher of (config, world) from the cache, training (or resuming) it first if needed."""
    run_dir = teacher_run_dir(cache_root, world, config)
    weights = run_dir / "model.safetensors"

    def train(checkpoint_dir: Path) -> TrainingRun:
        split = data if data is not None else load_split(world, "pretrain", progress=progress)
        return train_teacher(split, config, checkpoint_dir, progress=progress)

    def save(run: TrainingRun) -> dict[str, Any]:
        clip_to_regionclip(run.module, config.model_config()).save_pretrained(weights)
        return {"logit_scale": float(run.module.logit_scale.detach().exp())}

    description = {"training": config.to_dict(), "world": world.config.hash()}
    return cached_training(run_dir, weights, description, train, save, TrainedTeacher, config=config)
