"""The teacher's image and caption augmentation: random resized crops, horizontal flips with the caption's
"left"/"right" swapped, random grayscale, CLIP normalisation."""

from __future__ import annotations

import math
import re

import torch
from torch.nn import functional as F

from ...config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

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
    """``[B, 3, H, W]`` RGB → the same shape with every channel the ITU-R 601 luma (0.299, 0.587, 0.114)."""
    # Not torchvision's rgb_to_grayscale: it weighs red 0.2989, so trained teachers (and their cache) would change.
    luma = 0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    return luma[:, None].expand_as(pixels).clone()


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 RGB → CLIP-normalised."""
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std
