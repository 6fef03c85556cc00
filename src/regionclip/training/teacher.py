"""Image-level CLIP training of the embedded world's teacher (plain PyTorch, CPU-friendly).

A small open_clip CLIP (ModifiedResNet + text transformer, OpenAI BPE tokenizer) learns from the pretraining
split's image–caption pairs with CLIP's symmetric contrastive loss and learned logit scale. It never sees a box,
so - like OpenAI's CLIP in the paper - it is expected to be good on whole images and weaker on regions.

Data come from the COCO captions json and the image files rather than the webdataset shards: random access
gives exact, seekable epoch permutations (so a resumed run reproduces an uninterrupted one bit for bit), and all
1-3 captions of an image are available to sample from (the shards' ``.txt`` carries only the first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn
from torch.nn import functional as F

from ..api import RegionCLIP
from ..checkpoints.clip_weights import split_checkpoint
from ..config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, ModelConfig
from ..engine.loop import TrainingRun, batch_indices, cached_training, run_training
from ..engine.optim import build_optimizer
from ..engine.schedules import WarmupCosine
from ..modeling.clip_parts import build_open_clip, encode_text_trimmed
from ..synthetic import World
from ..text.vocabulary import Vocabulary
from .data import SplitData, load_split
from .metrics import retrieval_chance, retrieval_recall_at_1, topk_accuracy

TRAINER_VERSION = "2"  # bump when training changes what a given config produces (part of the cache key)


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Everything that determines a trained teacher (with the world's hash it forms the cache key)."""

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

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherTrainConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown teacher training keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def cache_key(self, world_hash: str) -> str:
        """16 hex digits over this config, the model shape, the world and the trainer version.

        ``checkpoint_every`` is left out: it changes when state is saved, not what is learnt."""
        training = {k: v for k, v in self.to_dict().items() if k != "checkpoint_every"}
        payload = {
            "trainer": TRAINER_VERSION,
            "training": training,
            "model": self.model_config().to_dict(),
            "world": world_hash,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_SIDE = re.compile(r"\b(left|right)\b")


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally flipped image: "left" and "right" swapped."""
    return _SIDE.sub(lambda m: "right" if m.group(1) == "left" else "left", caption)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8/float ``[B, 3, H, W]`` → float ``[B, 3, size, size]`` in 0..255 (bilinear, antialiased), the whole
    image as CLIP sees it."""
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def random_resized_crops(
    images: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Per image, a random box of ``scale`` area fraction and ``ratio`` aspect, resized to ``size``² (float
    0..255). ``scale=(1, 1)``, ``ratio=(1, 1)`` on a square image is `resize_images`."""
    _, _, height, width = images.shape
    out = []
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for image in images:
        u = torch.rand(4, generator=generator).tolist()
        area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = min(width, max(1, round(math.sqrt(area * aspect))))
        h = min(height, max(1, round(math.sqrt(area / aspect))))
        x0 = int(u[2] * (width - w + 1))
        y0 = int(u[3] * (height - h + 1))
        out.append(resize_images(image[None, :, y0 : y0 + h, x0 : x0 + w], size)[0])
    return torch.stack(out)


def crop_sources(images: torch.Tensor, size: int, min_scale: float, batch_size: int = 256) -> torch.Tensor:
    """The images downsized once (uint8) to the smallest side at which every random crop of ``min_scale`` area
    still has at least ``size`` pixels per side, so the per-step crops resize far fewer pixels."""
    side = min(images.shape[-1], math.ceil(size / math.sqrt(min_scale)))
    if side >= images.shape[-1] and images.shape[-2] == images.shape[-1]:
        return images
    return torch.cat(
        [resize_images(images[i : i + batch_size], side).round().clamp(0, 255).to(torch.uint8)
         for i in range(0, len(images), batch_size)]
    )


def to_grayscale(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB → the same shape with every channel the ITU-R 601 luma (as torchvision's grayscale)."""
    luma = 0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    return luma[:, None].expand_as(pixels).clone()


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 RGB → CLIP-normalised."""
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: mean of image→text and text→image cross-entropy with the diagonal as targets."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.T
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


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
        loss = contrastive_loss(clip.encode_image(images), encode_text_trimmed(clip, tokenizer(captions)), clip.logit_scale)
        return loss, round(float(loss.item()), 6)

    def clamp_logit_scale() -> None:
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(config.max_logit_scale))

    return run_training(
        clip, make_optimizer(clip, config), config, step_fn, checkpoint_dir, f"teacher {config.label}",
        schedule=config.schedule(), progress=progress, stop_after=stop_after, after_step=clamp_logit_scale,
    )


def clip_to_regionclip(clip: nn.Module, config: ModelConfig) -> RegionCLIP:
    """The trained CLIP as a `RegionCLIP` (BatchNorms frozen with their running statistics), through the same
    OpenAI-named weights a released checkpoint carries."""
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items() if not k.endswith("num_batches_tracked")}
    parts = split_checkpoint(state)
    return RegionCLIP.from_parts(parts, config)


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


@torch.inference_mode()
def image_embeddings(model: RegionCLIP, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised whole-image embeddings as CLIP computes them: resize to the CLIP input size, then the
    region path on the full-image box (which equals CLIP's image encoder exactly)."""
    size = model.config.vision.image_size
    out = []
    for start in range(0, len(images), batch_size):
        batch = model.normalize(resize_images(images[start : start + batch_size], size))
        boxes = [batch.new_tensor([[0.0, 0.0, size, size]])] * len(batch)
        features = model.head(model.pooler(model.trunk(batch), boxes).contiguous(memory_format=torch.channels_last))
        out.append(F.normalize(features.float(), dim=-1))
    return torch.cat(out).cpu()


def majority_baseline(targets: Sequence[int]) -> float:
    """Accuracy of always answering the most common target (a stronger reference than uniform chance)."""
    targets = list(targets)
    return max(targets.count(t) for t in set(targets)) / len(targets) if targets else float("nan")


@dataclass
class TeacherReport:
    """Image- and region-level figures of a teacher on a split (accuracies are fractions)."""

    num_images: int
    num_captions: int
    num_regions: int
    num_classes: int
    retrieval: dict[str, float]
    retrieval_chance: dict[str, float]
    image_top1: float
    image_top5: float
    image_majority: float
    image_present_top1: float  # top-1 class is one of the image's annotated categories
    image_present_chance: float  # the same for a uniformly random class: mean of (#present classes / #classes)
    region_top1: float
    region_top3: float
    region_majority: float
    region_top1_by_split: dict[str, float] = field(default_factory=dict)
    templates: str = "single"

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "chance": self.chance}


@torch.inference_mode()
def evaluate_teacher(
    model: RegionCLIP,
    data: SplitData,
    templates: str | Sequence[str] = "single",
    batch_size: int = 64,
    progress: bool = False,
) -> TeacherReport:
    """Retrieval R@1 (images vs all their captions), zero-shot classification of each image's largest object
    from the whole image (and whether its top-1 class is any object in the image: images hold 2-6 objects),
    and zero-shot classification of every ground-truth box (`classify_regions`)."""
    if data.images is None:
        raise ValueError("evaluation needs decoded images")
    vocabulary = Vocabulary.from_coco_categories(data.categories, source="synthetic-world")
    class_embeddings = model.embed_vocabulary(vocabulary, templates, use_cache=False)
    class_weights = F.normalize(class_embeddings.float(), dim=-1)
    image_features = image_embeddings(model, data.images, batch_size)

    texts = [c for caps in data.captions for c in caps]
    owners = [i for i, caps in enumerate(data.captions) for _ in caps]
    text_features = F.normalize(model.text_embedder.encode_texts(texts).float(), dim=-1)
    similarity = image_features @ text_features.T
    retrieval = retrieval_recall_at_1(similarity, owners)

    index = data.category_index()
    largest = data.largest_object()
    with_object = [i for i, c in enumerate(largest) if c is not None]
    targets = [index[largest[i]] for i in with_object]
    image_logits = image_features[with_object] @ class_weights.T
    present = [{index[int(c)] for c in data.labels[i]} for i in with_object]
    predicted_image = image_logits.argmax(dim=1).tolist()
    present_top1 = sum(p in s for p, s in zip(predicted_image, present)) / max(1, len(present))
    present_chance = sum(len(s) for s in present) / max(1, len(present)) / len(vocabulary)

    with_boxes = [i for i, b in enumerate(data.boxes) if len(b)]
    predictions = model.classify_regions(
        [data.images[i] for i in with_boxes],
        [data.boxes[i] for i in with_boxes],
        vocabulary,
        top_k=min(3, len(vocabulary)),
        class_embeddings=class_embeddings,
        batch_size=16,
        progress=progress,
    )
    region_targets = torch.tensor([index[int(c)] for i in with_boxes for c in data.labels[i]])
    predicted = torch.cat([torch.from_numpy(p.labels) for p in predictions]) if predictions else torch.zeros(0, 3)
    correct_top1 = predicted[:, 0] == region_targets
    correct_top3 = (predicted == region_targets[:, None]).any(dim=1)
    is_novel = torch.tensor([data.categories[int(t)]["split"] == "novel" for t in region_targets], dtype=torch.bool)
    by_split = {
        name: correct_top1[mask].float().mean().item() if mask.any() else float("nan")
        for name, mask in (("base", ~is_novel), ("novel", is_novel))
    }
    return TeacherReport(
        num_images=len(data),
        num_captions=len(texts),
        num_regions=len(region_targets),
        num_classes=len(vocabulary),
        retrieval=retrieval,
        retrieval_chance=retrieval_chance(owners, len(data)),
        image_top1=topk_accuracy(image_logits, targets, 1),
        image_top5=topk_accuracy(image_logits, targets, 5),
        image_majority=majority_baseline(targets),
        image_present_top1=present_top1,
        image_present_chance=present_chance,
        region_top1=correct_top1.float().mean().item(),
        region_top3=correct_top3.float().mean().item(),
        region_majority=majority_baseline(region_targets.tolist()),
        region_top1_by_split=by_split,
        templates=templates if isinstance(templates, str) else "custom",
    )


# ------------------------------------------------------------------------------------------------
# Cached training
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainedTeacher:
    """A finished, cached teacher: ``weights`` loads with ``RegionCLIP.from_pretrained``."""

    run_dir: Path
    weights: Path
    losses: list[float]
    config: TeacherTrainConfig
    trained_now: bool  # False when the cache already held the finished run
    steps_run: int
    seconds: float  # training wall time of the run that produced it

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
    cached = cached_training(run_dir, weights, description, train, save)
    return TrainedTeacher(
        run_dir, weights, cached.record["losses"], config, cached.trained_now, cached.steps_run, cached.record["seconds"]
    )
