"""COCO-format detection data for fine-tuning the open-vocabulary detector (docs/transfer.md, "Data").

`load_detection_split` reads an instances json and keeps, per image, the non-crowd boxes of the training
categories (labels = their index in the training vocabulary, categories sorted by id); images left without a box
are dropped, as detectron2's training loader does. `TrainAugmentation` is the official training resize: a short side
drawn per image from ``min_sizes`` (640..800 step 32), the long side capped at ``max_size`` (1333), and a horizontal
flip with probability 0.5; both draws come from the step's generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..text.vocabulary import Vocabulary
from .images import PreparedImage, prepare_image

OFFICIAL_TRAIN_MIN_SIZES = (640, 672, 704, 736, 768, 800)
OFFICIAL_TRAIN_MAX_SIZE = 1333


@dataclass
class DetectionRecord:
    """One training image: its file, boxes ``[N, 4]`` xyxy in original pixels and labels ``[N]`` (vocabulary indices)."""

    path: Path
    image_id: int
    boxes: torch.Tensor
    labels: torch.Tensor


@dataclass
class DetectionSplit:
    records: list[DetectionRecord]
    vocabulary: Vocabulary  # the training categories, in label order

    def __len__(self) -> int:
        return len(self.records)


def training_vocabulary(gt: dict[str, Any], category_ids: Sequence[int] | None = None) -> Vocabulary:
    """The training categories of an instances json, sorted by id: ``category_ids`` if given, else those whose
    ``split`` is base/seen, else (LVIS, categories with a ``frequency``) the common and frequent ones, else all."""
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    if category_ids is not None:
        wanted = {int(c) for c in category_ids}
        unknown = wanted - {int(c["id"]) for c in categories}
        if unknown:
            raise ValueError(f"category ids {sorted(unknown)[:5]} are not in the annotations")
        categories = [c for c in categories if int(c["id"]) in wanted]
    elif any("split" in c for c in categories):
        categories = [c for c in categories if str(c.get("split", "")).lower() in ("base", "seen")]
        if not categories:
            raise ValueError("the categories carry a split field but none is base/seen")
    elif categories and all("frequency" in c for c in categories):
        categories = [c for c in categories if c["frequency"] in ("c", "f")]  # LVIS: rare categories are novel
    return Vocabulary.from_coco_categories(categories, source="training categories")


def image_file_name(image: dict[str, Any]) -> str:
    """An image's path relative to the image folder: ``file_name``, or for LVIS v1 (which has none) the last two
    parts of ``coco_url`` (``train2017/000000391895.jpg``, relative to the COCO folder)."""
    if "file_name" in image:
        return str(image["file_name"])
    if "coco_url" in image:
        return "/".join(str(image["coco_url"]).split("/")[-2:])
    raise ValueError(f"image {image.get('id')} has neither file_name nor coco_url")


def load_detection_split(
    annotations: str | Path, images_dir: str | Path, category_ids: Sequence[int] | None = None
) -> DetectionSplit:
    """Images with at least one non-crowd box of a training category (`training_vocabulary`)."""
    annotations = Path(annotations)
    if not annotations.is_file():
        raise FileNotFoundError(f"annotation file not found: {annotations}")
    gt = json.loads(annotations.read_text())
    vocabulary = training_vocabulary(gt, category_ids)
    label_of = {cid: index for index, cid in enumerate(vocabulary.category_ids)}
    boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in gt["images"]}
    labels: dict[int, list[int]] = {im["id"]: [] for im in gt["images"]}
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0) or int(ann["category_id"]) not in label_of:
            continue
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            continue
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
        labels[ann["image_id"]].append(label_of[int(ann["category_id"])])
    images_dir = Path(images_dir)
    records = [
        DetectionRecord(
            images_dir / image_file_name(im), int(im["id"]),
            torch.tensor(boxes[im["id"]], dtype=torch.float32), torch.tensor(labels[im["id"]], dtype=torch.int64),
        )
        for im in gt["images"] if boxes[im["id"]]
    ]
    if not records:
        raise ValueError(f"{annotations}: no image has a box of the {len(vocabulary)} training categories")
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} training images not found, e.g. {missing[0]}")
    return DetectionSplit(records, vocabulary)


@dataclass(frozen=True)
class TrainAugmentation:
    """Random short side from ``min_sizes`` (long side ≤ ``max_size``) and horizontal flip, per image."""

    min_sizes: tuple[int, ...] = OFFICIAL_TRAIN_MIN_SIZES
    max_size: int = OFFICIAL_TRAIN_MAX_SIZE
    flip: bool = True

    def draw(self, generator: torch.Generator) -> tuple[int, bool]:
        """One image's (short side, flip)."""
        size = self.min_sizes[int(torch.randint(len(self.min_sizes), (1,), generator=generator))]
        return size, self.flip and bool(torch.rand((), generator=generator) < 0.5)

    def apply(self, record: DetectionRecord, size: int, flip: bool) -> tuple[PreparedImage, dict[str, torch.Tensor]]:
        """The resized (and flipped) image - its ``original_size`` is the file's - and its target in original pixels."""
        with Image.open(record.path) as image:
            image = image.convert("RGB")
        boxes = record.boxes.clone()
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes[:, [0, 2]] = image.width - record.boxes[:, [2, 0]]
        return prepare_image(image, size, self.max_size), {"boxes": boxes, "labels": record.labels}
