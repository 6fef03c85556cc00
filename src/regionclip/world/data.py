"""A world split held in memory: decoded images, captions, boxes and categories.

The embedded world is small (a few thousand 160-px images, ~77 kB each decoded), so trainers decode every
JPEG once and sample batches from a uint8 tensor; that keeps the data path out of the 2-core training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data.detection import image_file_name
from ..data.images import load_image_file
from ..synthetic import World
from ..utils import progress as progress_bar


@dataclass
class SplitData:
    """One split of a world. ``boxes[i]`` are xyxy pixels of image i, ``labels[i]`` their category ids."""

    split: str
    image_ids: list[int]
    file_names: list[str]
    images: torch.Tensor | None  # uint8 [N, 3, H, W], or None when loaded without pixels
    captions: list[list[str]]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    areas: list[torch.Tensor]  # visible mask area of each box (pixels)
    categories: list[dict[str, Any]]  # COCO categories with name / frequency / split, in id order

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def category_index(self) -> dict[int, int]:
        """Category id → row in ``categories`` (the vocabulary index)."""
        return {c["id"]: i for i, c in enumerate(self.categories)}

    def category_ids_of(self, group: str) -> set[int]:
        """Ids of the ``"base"`` / ``"novel"`` split or the ``"f"`` / ``"c"`` / ``"r"`` frequency group."""
        if group in ("base", "novel"):
            return {c["id"] for c in self.categories if c["split"] == group}
        if group in ("f", "c", "r"):
            return {c["id"] for c in self.categories if c["frequency"] == group}
        raise ValueError(f"unknown category group {group!r}")

    def largest_object(self) -> list[int | None]:
        """Category id of the annotated object with the largest visible area in each image (None if none)."""
        out: list[int | None] = []
        for labels, areas in zip(self.labels, self.areas):
            out.append(int(labels[int(areas.argmax())]) if len(labels) else None)
        return out

    def subset(self, indices: Sequence[int]) -> SplitData:
        """The images at ``indices`` (in that order)."""
        idx = list(indices)
        return SplitData(
            split=self.split,
            image_ids=[self.image_ids[i] for i in idx],
            file_names=[self.file_names[i] for i in idx],
            images=self.images[idx] if self.images is not None else None,
            captions=[self.captions[i] for i in idx],
            boxes=[self.boxes[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            areas=[self.areas[i] for i in idx],
            categories=self.categories,
        )


def decode_image(path: str) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of an image file, decoded as displayed (EXIF orientation, 16-bit scaled)."""
    return np.asarray(load_image_file(path))


def load_split(world: World, split: str, with_images: bool = True, progress: bool = False) -> SplitData:
    """Read a split's COCO instances and captions json (and decode its images) into memory."""
    instances = world.load_instances(split)
    captions_json = world.load_captions(split)
    images = instances["images"]
    position = {im["id"]: i for i, im in enumerate(images)}
    captions: list[list[str]] = [[] for _ in images]
    for ann in captions_json["annotations"]:
        captions[position[ann["image_id"]]].append(ann["caption"])
    boxes: list[list[list[float]]] = [[] for _ in images]
    labels: list[list[int]] = [[] for _ in images]
    areas: list[list[float]] = [[] for _ in images]
    for ann in instances["annotations"]:
        i = position[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        boxes[i].append([x, y, x + w, y + h])
        labels[i].append(ann["category_id"])
        areas[i].append(ann["area"])
    pixels = None
    if with_images:
        sizes = {(im["height"], im["width"]) for im in images}
        if len(sizes) > 1:
            raise ValueError(f"split {split!r} mixes image sizes {sorted(sizes)}; expected one world image size")
        height, width = sizes.pop() if sizes else (0, 0)
        # numpy per image (no per-call torch overhead), one layout change at the end
        array = np.empty((len(images), height, width, 3), dtype=np.uint8)
        folder = world.images_dir(split)
        bar = progress_bar(images, desc=f"decode {split}", unit="img", disable=not progress, leave=False)
        for i, im in enumerate(bar):
            array[i] = decode_image(str(folder / image_file_name(im)))
        pixels = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    categories = sorted(instances["categories"], key=lambda c: c["id"])
    return SplitData(
        split=split,
        image_ids=[im["id"] for im in images],
        file_names=[image_file_name(im) for im in images],
        images=pixels,
        captions=captions,
        boxes=[torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        labels=[torch.tensor(lab, dtype=torch.int64) for lab in labels],
        areas=[torch.tensor(a, dtype=torch.float32) for a in areas],
        categories=categories,
    )
