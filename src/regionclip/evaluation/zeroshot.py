"""Zero-shot evaluation of a RegionCLIP model on a COCO / LVIS annotation file, with GT boxes or RPN proposals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.detection import image_file_name
from ..modeling.roi_heads import DetectionConfig
from ..text.vocabulary import Vocabulary
from ._common import load_ground_truth
from .coco import evaluate_coco
from .lvis import evaluate_lvis


def is_lvis_style(gt: dict[str, Any]) -> bool:
    """LVIS-style ground truth: every category carries a frequency group."""
    return bool(gt["categories"]) and all("frequency" in c for c in gt["categories"])


def ground_truth_boxes(gt: dict[str, Any]) -> dict[int, list[list[float]]]:
    """Non-crowd GT boxes (xyxy) per image id."""
    boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in gt["images"]}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            x, y, w, h = ann["bbox"]
            boxes[ann["image_id"]].append([x, y, x + w, y + h])
    return boxes


def evaluate_zeroshot(
    model: Any,
    annotations: str | Path | dict[str, Any],
    images_dir: str | Path,
    boxes: str = "gt",
    vocabulary: Vocabulary | str | None = None,
    config: DetectionConfig | None = None,
    score_fusion: str = "official",
    soft_nms: bool = False,
    class_embeddings: Any = None,
    max_images: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Run ``model.detect`` over the annotated images and score it: COCO AP/AP50 (+ OV-COCO novel/base/all AP50 when
    the categories carry a base/novel ``split``), or LVIS AP with APr/APc/APf. Returns (metrics, COCO results).

    As the official loader, images without annotations are skipped. ``boxes="gt"`` classifies the GT boxes (official
    GT mode: no score fusion, per-class NMS still applied); ``boxes="rpn"`` uses the model's RPN. Without a
    ``config``, the official COCO or LVIS zero-shot settings apply, with ``score_fusion`` and ``soft_nms``.
    ``class_embeddings`` ([K, D], e.g. an official embedding file) replace the text encoder's."""
    if boxes not in ("gt", "rpn"):
        raise ValueError(f"boxes must be 'gt' or 'rpn', got {boxes!r}")
    gt = load_ground_truth(annotations)
    lvis = is_lvis_style(gt)
    vocabulary = Vocabulary.parse(vocabulary) if vocabulary is not None else Vocabulary.from_coco_categories(gt["categories"])
    unknown = set(vocabulary.category_ids) - {c["id"] for c in gt["categories"]}
    if unknown:
        raise ValueError(f"vocabulary ids {sorted(unknown)[:5]} are not categories of the annotations")
    if config is None:
        options = {"score_fusion": score_fusion, "soft_nms": soft_nms}
        config = DetectionConfig.lvis(**options) if lvis else DetectionConfig(**options)
        if boxes == "gt" and lvis:
            config.score_threshold = 0.0001  # the official GT command's override
    gt_boxes = ground_truth_boxes(gt)
    images = [im for im in gt["images"] if gt_boxes[im["id"]]][: max_images or None]
    if not images:
        raise ValueError("no annotated images to evaluate")
    images_dir = Path(images_dir)
    paths = [images_dir / image_file_name(im) for im in images]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images not found, e.g. {missing[0]}")
    predictions = model.detect(
        [str(p) for p in paths],
        vocabulary,
        boxes=[gt_boxes[im["id"]] for im in images] if boxes == "gt" else None,
        config=config,
        class_embeddings=class_embeddings,
        batch_size=batch_size,
        image_ids=[im["id"] for im in images],
        progress=progress,
    )
    results = [entry for pred in predictions for entry in pred.to_coco()]
    evaluated = {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in {im["id"] for im in images}]}
    metrics = evaluate_lvis(evaluated, results, max_dets=config.max_detections) if lvis else evaluate_coco(
        evaluated, results, max_dets=config.max_detections
    )
    return metrics, results
