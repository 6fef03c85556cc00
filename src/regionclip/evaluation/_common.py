"""Shared plumbing for the COCO / LVIS box evaluators (input checks, running faster-coco-eval, summaries)."""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

GroundTruth = Union[str, "os.PathLike[str]", Mapping[str, Any]]
"""A COCO/LVIS instances json: a path to the file or the already-parsed dict."""

Result = Mapping[str, Any]
"""One detection: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (original category ids)."""


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """faster-coco-eval prints progress through a callback; we keep evaluation quiet."""


def load_ground_truth(gt: GroundTruth) -> dict[str, Any]:
    """Return a private, validated copy of a COCO-style ground-truth dataset.

    The copy matters: faster-coco-eval writes bookkeeping fields (``ignore``) into the annotations it is given.
    Annotations without ``area`` get ``w * h`` of their box (COCO's area ranges need it).
    """
    if isinstance(gt, (str, os.PathLike)):
        with open(gt, encoding="utf-8") as handle:
            data = json.load(handle)
    elif isinstance(gt, Mapping):
        data = copy.deepcopy(dict(gt))
    else:
        raise TypeError(f"gt must be a path to an instances json or a dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"ground truth has no '{key}' list; expected a COCO/LVIS instances json")
    for ann in data["annotations"]:
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise ValueError(f"ground-truth annotation {ann.get('id', '?')} has no '{key}'")
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return data


def normalize_results(results: Iterable[Result], gt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Validate detections and return fresh plain-python dicts (faster-coco-eval mutates what it loads).

    Raises ValueError for a malformed entry or an ``image_id`` absent from the ground truth. Detections of
    categories the ground truth does not define cannot be scored, so they are dropped with one warning.
    """
    image_ids = {int(img["id"]) for img in gt["images"]}
    category_ids = {int(cat["id"]) for cat in gt["categories"]}
    normalized: list[dict[str, Any]] = []
    unknown_categories: set[int] = set()
    for index, det in enumerate(results):
        if not isinstance(det, Mapping):
            raise ValueError(f"result {index} is a {type(det).__name__}, expected a dict")
        missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in det]
        if missing:
            raise ValueError(f"result {index} lacks {missing}; expected image_id, category_id, bbox, score")
        bbox = [float(v) for v in det["bbox"]]
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"result {index}: bbox must be 4 finite numbers [x, y, w, h], got {det['bbox']}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"result {index}: bbox width/height must be >= 0 (xywh format), got {bbox}")
        score = float(det["score"])
        if not math.isfinite(score):
            raise ValueError(f"result {index}: score must be finite, got {det['score']}")
        image_id, category_id = int(det["image_id"]), int(det["category_id"])
        if image_id not in image_ids:
            raise ValueError(f"result {index}: image_id {image_id} is not in the ground truth")
        if category_id not in category_ids:
            unknown_categories.add(category_id)
            continue
        normalized.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
    if unknown_categories:
        warnings.warn(
            f"dropped detections of {len(unknown_categories)} category id(s) absent from the ground truth: "
            f"{sorted(unknown_categories)[:10]}",
            stacklevel=3,
        )
    return normalized


def run_bbox_eval(
    gt: dict[str, Any], results: list[dict[str, Any]], *, max_dets: Sequence[int], lvis_style: bool
) -> COCOeval_faster:
    """Run faster-coco-eval's bbox evaluation (evaluate + accumulate) and return the evaluator."""
    coco_gt = COCO(gt, print_function=_silent)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_silent, lvis_style=lvis_style)
    evaluator.params.maxDets = list(max_dets)
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def mean_valid(values: np.ndarray) -> float:
    """Mean of entries > -1 (COCO marks undefined cells with -1); NaN when none is defined."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def iou_index(evaluator: COCOeval_faster, threshold: float) -> int:
    """Index of an IoU threshold in ``params.iouThrs``."""
    hits = np.flatnonzero(np.isclose(evaluator.params.iouThrs, threshold))
    if hits.size == 0:
        raise ValueError(f"IoU threshold {threshold} is not evaluated")
    return int(hits[0])


def summary_metrics(evaluator: COCOeval_faster, max_dets: int) -> dict[str, float]:
    """AP/AP50/AP75/APs/APm/APl and AR/ARs/ARm/ARl at ``max_dets``, as fractions (NaN where undefined).

    Read straight from ``eval["precision"]`` [T, R, K, A, M] and ``eval["recall"]`` [T, K, A, M], the same
    slices pycocotools' ``summarize`` averages.
    """
    params = evaluator.params
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]
    m = list(params.maxDets).index(max_dets)
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    t50, t75 = iou_index(evaluator, 0.5), iou_index(evaluator, 0.75)
    return {
        "AP": mean_valid(precision[:, :, :, area["all"], m]),
        "AP50": mean_valid(precision[t50, :, :, area["all"], m]),
        "AP75": mean_valid(precision[t75, :, :, area["all"], m]),
        "APs": mean_valid(precision[:, :, :, area["small"], m]),
        "APm": mean_valid(precision[:, :, :, area["medium"], m]),
        "APl": mean_valid(precision[:, :, :, area["large"], m]),
        "AR": mean_valid(recall[:, :, area["all"], m]),
        "ARs": mean_valid(recall[:, :, area["small"], m]),
        "ARm": mean_valid(recall[:, :, area["medium"], m]),
        "ARl": mean_valid(recall[:, :, area["large"], m]),
    }


def to_percent(metrics: Mapping[str, float]) -> dict[str, float]:
    """Scale fractions to percent, as detectron2 prints them (NaN stays NaN)."""
    return {key: value * 100.0 for key, value in metrics.items()}


def check_max_dets(max_dets: int) -> int:
    """Validate a detections-per-image limit."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive integer, got {max_dets!r}")
    return int(max_dets)
