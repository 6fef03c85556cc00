"""Image inputs: loading from paths, PIL, numpy or tensors, and detectron2-style test-time resizing.

Pixel values are decoded as the user sees the image: files get their EXIF orientation applied (as detectron2's
``read_image``), 16-bit samples are scaled to 8 bits over their full range, and ambiguous arrays (floats outside
[0, 1], wide integer types, NaN/Inf) are refused unless the caller states the range with :class:`RangedImage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.nn import functional as F

UINT16_TO_UINT8 = 257  # 65535 / 255: 16-bit full scale maps exactly onto 8-bit full scale


@dataclass(frozen=True)
class RangedImage:
    """Pixels (numpy array, tensor or PIL image of any numeric dtype) with an explicit value range: ``value_range[0]``
    is black and ``value_range[1]`` full intensity; values are mapped linearly to 0–255 and must lie in the range.

    ``RangedImage(array, (0, 255))`` passes a float array that holds 0–255 values; ``RangedImage(t, (0, 4095))`` a
    12-bit camera frame in an int64 tensor.
    """

    pixels: Union[np.ndarray, torch.Tensor, Image.Image]
    value_range: tuple[float, float]

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.value_range)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise ValueError(f"value_range must be two finite numbers (black, white) with white > black, got {self.value_range}")


ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor, RangedImage]


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


def load_image_file(path: str | Path) -> Image.Image:
    """An image file as displayed: EXIF orientation applied (detectron2's ``read_image`` does the same), 8-bit RGB."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as image:
        return to_rgb8(ImageOps.exif_transpose(image))


def to_rgb8(image: Image.Image) -> Image.Image:
    """A PIL image as 8-bit RGB. 16-bit (``I;16*``) and 32-bit integer (``I``, as some 16-bit decoders give) samples
    are scaled from 0–65535, float (``F``) samples from 0–1; PIL's own ``convert`` would saturate them at 255."""
    if _is_wide_mode(image):
        gray = rgb_pixels(image)[0]
        return Image.fromarray(gray.round().to(torch.uint8).numpy() if gray.is_floating_point() else gray.numpy()).convert("RGB")
    return image.convert("RGB")


def _is_wide_mode(image: Image.Image) -> bool:
    return image.mode.startswith("I") or image.mode == "F"


def _wide_mode_samples(image: Image.Image) -> np.ndarray:
    """Samples of an ``I*`` / ``F`` PIL image; ``I`` (int32) must hold 16-bit values and becomes uint16."""
    array = np.asarray(image)
    if image.mode == "I":
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"32-bit integer image with values in [{array.min()}, {array.max()}], outside the 16-bit range "
                "0-65535; wrap it as RangedImage(image, value_range=(black, white))"
            )
        array = array.astype(np.uint16)
    return array


def _to_uint8_or_float(pixels: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """Pixels of any dtype → uint8 (0–255) or float in [0, 255]: uint8 as is, uint16 ÷ 257 rounded, bool → 0/255 (as
    PIL's mode ``1``), floats taken as 0–1; anything else needs ``value_range``. NaN/Inf and out-of-range values raise."""
    if pixels.dtype == torch.uint16:  # few kernels exist for uint16
        if value_range is None:
            return torch.div(pixels.to(torch.int32) + UINT16_TO_UINT8 // 2, UINT16_TO_UINT8, rounding_mode="floor").to(torch.uint8)
        pixels = pixels.to(torch.int32)
    if pixels.is_floating_point() and not torch.isfinite(pixels).all():
        raise ValueError(f"image has {int((~torch.isfinite(pixels)).sum())} NaN/Inf pixel values")
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        _check_range(pixels, low, high, f"value_range {tuple(value_range)}")
        return ((pixels.double() - low) * (255.0 / (high - low))).float()
    if pixels.dtype == torch.uint8:
        return pixels
    if pixels.dtype == torch.bool:
        return pixels.to(torch.uint8) * 255
    if pixels.is_floating_point():
        _check_range(
            pixels, 0.0, 1.0,
            "[0, 1] (the float convention); wrap it as RangedImage(image, value_range=(0, 255)) if it holds 0-255 values",
        )
        return pixels.float() * 255.0
    raise ValueError(
        f"integer images must be uint8 (0-255) or uint16 (0-65535), got {pixels.dtype}; cast them or wrap them as "
        "RangedImage(image, value_range=(black, white))"
    )


def _check_range(pixels: torch.Tensor, low: float, high: float, expected: str) -> None:
    if pixels.numel():
        smallest, largest = pixels.min().item(), pixels.max().item()
        if smallest < low or largest > high:
            raise ValueError(f"image values span [{smallest:g}, {largest:g}], outside {expected}")


def rgb_pixels(image: np.ndarray | torch.Tensor | Image.Image | RangedImage) -> torch.Tensor:
    """PIL, numpy (``HxW``, ``HxWx3``, ``HxWx4``) or tensor (``[3, H, W]``) → RGB ``[3, H, W]`` with values in
    [0, 255]: uint8 (from uint8, uint16 and bool sources) or float (from float sources and :class:`RangedImage`)."""
    value_range = None
    if isinstance(image, RangedImage):
        image, value_range = image.pixels, image.value_range
    if isinstance(image, Image.Image):
        if _is_wide_mode(image):
            image = np.asarray(image) if value_range is not None else _wide_mode_samples(image)
        else:
            image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"numpy images must be HxW, HxWx3 or HxWx4 (RGB), got shape {image.shape}")
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
        image = torch.from_numpy(np.array(image, dtype=image.dtype.newbyteorder("="), copy=True)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be [3, H, W] RGB, got shape {tuple(image.shape)}")
        if image.is_complex():
            raise ValueError(f"tensor images must be real, got {image.dtype}")
        return _to_uint8_or_float(image, value_range)
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
    """Load ``image`` and resize it with bilinear interpolation (PIL on PIL and file sources, as detectron2 does)."""
    if isinstance(image, (str, Path)):
        image = load_image_file(image)
    if isinstance(image, Image.Image):
        pil = to_rgb8(image)
        height, width = pil.height, pil.width
        new_h, new_w = resized_shape(height, width, min_size, max_size)
        if (new_h, new_w) != (height, width):
            pil = pil.resize((new_w, new_h), Image.BILINEAR)
        return PreparedImage(rgb_pixels(pil).float(), (height, width))
    pixels = rgb_pixels(image).float()
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    new_h, new_w = resized_shape(height, width, min_size, max_size)
    if (new_h, new_w) != (height, width):
        pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)[0]
    return PreparedImage(pixels, (height, width))
