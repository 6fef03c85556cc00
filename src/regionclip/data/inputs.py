"""User inputs of the region model's methods: box arrays checked, clipped to their images, and batched with the
images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image

from ..utils import progress as progress_bar
from .images import ImageInput, PreparedImage


def as_boxes(boxes: object) -> torch.Tensor:
    """One image's boxes as a float ``[N, 4]`` tensor; any other shape (e.g. a row of 8 numbers) is an error."""
    if not isinstance(boxes, torch.Tensor):
        try:
            boxes = np.asarray(boxes, dtype=np.float32)
        except (TypeError, ValueError) as error:  # ragged rows, non-numbers
            raise ValueError(f"boxes must be an [N, 4] array of xyxy numbers: {error}") from None
    tensor = torch.as_tensor(boxes).float()
    if not tensor.numel():
        return tensor.reshape(0, 4)
    if tensor.ndim != 2 or tensor.shape[1] != 4:
        raise ValueError(
            f"boxes must be an [N, 4] array of xyxy boxes (one box: [[x1, y1, x2, y2]]), got shape {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError("boxes contain non-finite values")
    if (tensor[:, 2] < tensor[:, 0]).any() or (tensor[:, 3] < tensor[:, 1]).any():
        raise ValueError("boxes must be xyxy with x2 >= x1 and y2 >= y1 (original-image pixels)")
    return tensor


def clip_to_image(boxes: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes clipped to ``[0, W] x [0, H]`` (torchvision ``clip_boxes_to_image``) and a ``[N]`` flag of those with
    positive width and height afterwards: zero-area and wholly-outside boxes hold no image to recognise."""
    clipped = clip_boxes_to_image(boxes, image_size)
    return clipped, (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])


def pair_images_boxes(images: object, boxes: object) -> tuple[list[ImageInput], list[torch.Tensor]]:
    """Images as a list and one `as_boxes` array per image; a single image takes a single box array."""
    single = not isinstance(images, (list, tuple))
    image_list = [images] if single else list(images)
    if single:
        box_list = [as_boxes(boxes)]
    else:
        if not isinstance(boxes, (list, tuple)) or len(boxes) != len(image_list):
            raise ValueError(f"give one box array per image: {len(image_list)} images")
        box_list = [as_boxes(b) for b in boxes]
    return image_list, box_list


def input_batches(
    images: object,
    boxes: object | None,
    batch_size: int,
    image_ids: Sequence[int] | None,
    progress: bool,
    prepare: Callable[[list[ImageInput]], list[PreparedImage]],
) -> Iterator[tuple[list[tuple[ImageInput, int | None]], list[PreparedImage], list | None, list | None]]:
    """Yield ``(items, prepared, boxes, valid)`` per batch: ``items`` are (image, image id) pairs, ``boxes`` the
    given boxes of each image in original pixels clipped to the image and ``valid`` their non-empty flags
    (both ``None`` when no boxes were given)."""
    image_list = [images] if not isinstance(images, (list, tuple)) else list(images)
    box_list = pair_images_boxes(images, boxes)[1] if boxes is not None else None
    if image_ids is not None and len(image_ids) != len(image_list):
        raise ValueError("image_ids must have one id per image")
    ids = list(image_ids) if image_ids is not None else [None] * len(image_list)
    for start in progress_bar(range(0, len(image_list), batch_size), disable=not progress, desc="images", unit="batch"):
        stop = start + batch_size
        items = list(zip(image_list[start:stop], ids[start:stop]))
        prepared = prepare(image_list[start:stop])
        if box_list is None:
            yield items, prepared, None, None
        else:
            clipped = [clip_to_image(b, p.original_size) for p, b in zip(prepared, box_list[start:stop])]
            yield items, prepared, [c for c, _ in clipped], [v for _, v in clipped]
