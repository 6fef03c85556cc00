"""Image inputs: loading from paths, PIL, numpy or tensors, and detectron2-style test-time resizing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


def resized_shape(height: int, width: int, min_size: int | None, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` at test time: short side → ``min_size``, long side ≤ ``max_size``,
    each side rounded with ``int(x + 0.5)``. ``min_size=None`` keeps the size."""
    if min_size is None:
        return height, width
    scale = min_size / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def _to_chw_float(image: ImageInput) -> torch.Tensor:
    """PIL, numpy or tensor → RGB float tensor ``[3, H, W]`` with values in [0, 255].

    uint8 inputs are taken as 0–255; float inputs follow torchvision's convention of values in [0, 1].
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"numpy images must be HxW, HxWx3 or HxWx4 (RGB), got shape {image.shape}")
        image = torch.from_numpy(np.array(image[:, :, :3], copy=True)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be [3, H, W] RGB, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float()
        if not image.is_floating_point():
            raise ValueError(f"tensor images must be uint8 or float, got {image.dtype}")
        return image.float() * 255.0
    raise TypeError(f"unsupported image type {type(image).__name__}; use a path, PIL image, numpy array or tensor")


@dataclass
class PreparedImage:
    """An image resized for the model, with what is needed to map boxes back to the original pixels."""

    pixels: torch.Tensor  # [3, h, w] float RGB in [0, 255], resized
    original_size: tuple[int, int]  # (H, W)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Resized / original, per axis."""
        return self.size[1] / self.original_size[1], self.size[0] / self.original_size[0]

    def to_input_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        sx, sy = self.scale_xy
        return boxes * boxes.new_tensor([sx, sy, sx, sy])

    def to_original_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        sx, sy = self.scale_xy
        return boxes / boxes.new_tensor([sx, sy, sx, sy])


def prepare_image(image: ImageInput, min_size: int | None, max_size: int) -> PreparedImage:
    """Load ``image`` and resize it with bilinear interpolation (PIL on uint8 sources, as detectron2 does)."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        height, width = pil.height, pil.width
        new_h, new_w = resized_shape(height, width, min_size, max_size)
        if (new_h, new_w) != (height, width):
            pil = pil.resize((new_w, new_h), Image.BILINEAR)
        return PreparedImage(_to_chw_float(pil), (height, width))
    pixels = _to_chw_float(image)
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    new_h, new_w = resized_shape(height, width, min_size, max_size)
    if (new_h, new_w) != (height, width):
        pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)[0]
    return PreparedImage(pixels, (height, width))
