"""Pretraining-time image preprocessing and batching (docs/pretraining-data.md, "Images").

The official pretraining data path differs from the detection path (`regionclip.data.images.prepare_image`):
torchvision ``Resize(800, max_size=1333)`` with **bicubic** interpolation and the long side **floored**, a random
horizontal flip, ``ToTensor`` ([0, 1] RGB), then CLIP's mean/std. A batch pads every image bottom/right with zeros to
the batch's largest height and width *after* normalisation, and the whole-image ("global") box spans the padded
tensor, so a small image's global box includes padding. `PretrainBatch.global_boxes` offers that (``"padded"``) and
the image's own extent (``"image"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from .images import ImageInput

PRETRAIN_MIN_SIZE = 800
PRETRAIN_MAX_SIZE = 1333
GLOBAL_BOX_MODES = ("padded", "image")


def pretrain_resized_shape(height: int, width: int, min_size: int | None, max_size: int) -> tuple[int, int]:
    """torchvision ``Resize(min_size, max_size=max_size)``: short side → ``min_size`` and the long side
    ``int(min_size * long / short)`` (floored); if that exceeds ``max_size``, long → ``max_size`` and short →
    ``int(max_size * short / long)``. A 300×451 image becomes 800×1202. ``min_size=None`` keeps the size."""
    if min_size is None:
        return height, width
    short, long = min(height, width), max(height, width)
    new_short, new_long = min_size, int(min_size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _to_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return TF.to_pil_image(image).convert("RGB")
    raise TypeError(f"unsupported image type {type(image).__name__}; use a path, PIL image, numpy array or tensor")


@dataclass
class PretrainImage:
    """One preprocessed image: ``pixels`` ``[3, h, w]`` CLIP-normalised, unpadded."""

    pixels: torch.Tensor
    original_size: tuple[int, int]  # (H, W) before resizing
    flipped: bool

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


@dataclass(frozen=True)
class PretrainTransform:
    """Resize (bicubic, torchvision semantics) → random horizontal flip → ToTensor → CLIP normalisation."""

    min_size: int | None = PRETRAIN_MIN_SIZE
    max_size: int = PRETRAIN_MAX_SIZE
    flip_probability: float = 0.5
    pixel_mean: tuple[float, float, float] = CLIP_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = CLIP_PIXEL_STD

    def __post_init__(self) -> None:
        if self.min_size is not None and not 0 < self.min_size < self.max_size:
            raise ValueError(f"need 0 < min_size < max_size, got {self.min_size}, {self.max_size}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")

    def __call__(self, image: ImageInput, generator: torch.Generator | None = None) -> PretrainImage:
        """Preprocess one image; the flip is drawn as ``torch.rand((), generator=generator) < flip_probability``
        (one draw, always made, so a generator advances the same way whether or not it flips)."""
        pil = _to_pil(image)
        original = (pil.height, pil.width)
        if self.min_size is not None:
            pil = TF.resize(pil, self.min_size, InterpolationMode.BICUBIC, max_size=self.max_size)
        flipped = bool(torch.rand((), generator=generator) < self.flip_probability)
        if flipped:
            pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = TF.normalize(TF.to_tensor(pil), list(self.pixel_mean), list(self.pixel_std))
        return PretrainImage(pixels, original, flipped)


def pad_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Stack ``[3, h_i, w_i]`` tensors into ``[B, 3, H_max, W_max]``, zero-padded at the bottom and right, and
    return each image's unpadded ``(h_i, w_i)``."""
    if not images:
        raise ValueError("cannot pad an empty batch")
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for out, image, (h, w) in zip(batch, images, sizes):
        out[:, :h, :w] = image
    return batch, sizes


def global_boxes(image_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int], mode: str = "padded") -> torch.Tensor:
    """``[B, 4]`` xyxy whole-image boxes: ``[0, 0, W_pad, H_pad]`` for every image (``"padded"``, the official
    choice) or ``[0, 0, w_i, h_i]``, each image's own extent (``"image"``)."""
    if mode == "padded":
        height, width = padded_size
        return torch.tensor([[0.0, 0.0, float(width), float(height)]] * len(image_sizes)).reshape(-1, 4)
    if mode == "image":
        return torch.tensor([[0.0, 0.0, float(w), float(h)] for h, w in image_sizes]).reshape(-1, 4)
    raise ValueError(f"global_box must be one of {GLOBAL_BOX_MODES}, got {mode!r}")


@dataclass
class CaptionSample:
    """One image–caption pair after preprocessing. ``position`` is its global sample index (step × batch + slot)."""

    image: PretrainImage
    caption: str
    key: str
    position: int


@dataclass
class PretrainBatch:
    """A padded batch: ``images`` ``[B, 3, H_pad, W_pad]`` (zeros beyond each image's ``image_sizes[i]``)."""

    images: torch.Tensor
    image_sizes: list[tuple[int, int]]  # (h, w) of each image inside the padded tensor
    original_sizes: list[tuple[int, int]]  # (H, W) before resizing
    flipped: list[bool]
    captions: list[str]
    keys: list[str]
    positions: list[int]

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def global_boxes(self, mode: str = "padded") -> torch.Tensor:
        """See `global_boxes`."""
        return global_boxes(self.image_sizes, self.padded_size, mode)

    def to_input_boxes(self, index: int, boxes: torch.Tensor) -> torch.Tensor:
        """xyxy boxes of image ``index`` in original pixels → the resized (and, if drawn, flipped) image's pixels."""
        (height, width), (orig_h, orig_w) = self.image_sizes[index], self.original_sizes[index]
        scaled = boxes * boxes.new_tensor([width / orig_w, height / orig_h, width / orig_w, height / orig_h])
        if self.flipped[index]:
            scaled = torch.stack([width - scaled[:, 2], scaled[:, 1], width - scaled[:, 0], scaled[:, 3]], dim=1)
        return scaled


def collate_pretrain(samples: Sequence[CaptionSample]) -> PretrainBatch:
    """Pad and stack samples (in order) into a `PretrainBatch`."""
    images, sizes = pad_images([s.image.pixels for s in samples])
    return PretrainBatch(
        images=images,
        image_sizes=sizes,
        original_sizes=[s.image.original_size for s in samples],
        flipped=[s.image.flipped for s in samples],
        captions=[s.caption for s in samples],
        keys=[s.key for s in samples],
        positions=[s.position for s in samples],
    )
