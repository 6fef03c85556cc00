"""LVIS v1 box AP (federated protocol) with the rare / common / frequent breakdown."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from regionclip.evaluation._common import (
    GroundTruth,
    Result,
    check_max_dets,
    load_ground_truth,
    mean_valid,
    normalize_results,
    run_bbox_eval,
    summary_metrics,
    to_percent,
)

FREQUENCY_GROUPS = ("r", "c", "f")


def limit_detections_per_image(results: list[dict[str, Any]], max_dets: int) -> list[dict[str, Any]]:
    """Keep each image's ``max_dets`` highest-scoring detections over *all* categories (LVIS' rule).

    COCO instead caps per image *and category*; LVIS' ``LVISResults(max_dets=300)`` caps per image, with a
    stable sort so equal scores keep their input order.
    """
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for det in results:
        by_image[det["image_id"]].append(det)
    kept: list[dict[str, Any]] = []
    for dets in by_image.values():
        kept.extend(sorted(dets, key=lambda det: det["score"], reverse=True)[:max_dets])
    return kept


def _check_frequencies(gt: dict[str, Any]) -> None:
    bad = [cat.get("id") for cat in gt["categories"] if cat.get("frequency") not in FREQUENCY_GROUPS]
    if bad:
        raise ValueError(
            f"{len(bad)} LVIS categories lack a 'frequency' in {FREQUENCY_GROUPS} (e.g. ids {bad[:5]}); "
            "APr/APc/APf need it"
        )


def evaluate_lvis(gt: GroundTruth, results: Iterable[Result], *, max_dets: int = 300) -> dict[str, float]:
    """LVIS bbox evaluation through faster-coco-eval (``lvis_style=True``), in percent (0–100).

    Federated rules, as in the official LVIS API and as faster-coco-eval 1.8 implements them:

    * a detection of category c in image i is **dropped** unless c is annotated in i (has a GT box there) or c
      is in the image's ``neg_category_ids`` (verified absent); an image without that field counts as having
      no verified-absent categories;
    * an **unmatched** detection of a category in the image's ``not_exhaustive_category_ids`` is ignored (not a
      false positive); matched ones still count as true positives;
    * categories without GT in the evaluated images are left out of every mean (APr of a set with no rare GT
      is NaN).

    Before scoring, each image keeps only its ``max_dets`` best detections over all categories, like
    ``LVISResults``; faster-coco-eval then runs with ``maxDets=[max_dets]``. Difference from the LVIS API:
    faster-coco-eval treats GT with ``iscrowd=1`` as ignore regions (LVIS has no crowd boxes, so LVIS jsons are
    unaffected).

    Args:
        gt: LVIS-style instances json (path or dict); every category needs ``frequency`` in ``r``/``c``/``f``.
        results: COCO-style results list with original LVIS category ids (1..1203).
        max_dets: detections kept per image (300 in the LVIS protocol).

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR, ARs, ARm, ARl`` (AR at ``max_dets``). An empty
        ``results`` warns and scores 0.

    Raises:
        ValueError: malformed detections, unknown image ids, or categories without a frequency group.
    """
    max_dets = check_max_dets(max_dets)
    gt_data = load_ground_truth(gt)
    _check_frequencies(gt_data)
    detections = limit_detections_per_image(normalize_results(results, gt_data), max_dets)
    if not detections:
        warnings.warn("no detections to evaluate: every AP/AR is 0", stacklevel=2)
    evaluator = run_bbox_eval(gt_data, detections, max_dets=[max_dets], lvis_style=True)
    metrics = summary_metrics(evaluator, max_dets)

    frequency_of = {int(cat["id"]): cat["frequency"] for cat in gt_data["categories"]}
    precision_all = evaluator.eval["precision"][:, :, :, list(evaluator.params.areaRngLbl).index("all"), 0]
    by_group = {
        group: [k for k, cat_id in enumerate(evaluator.params.catIds) if frequency_of[int(cat_id)] == group]
        for group in FREQUENCY_GROUPS
    }
    for group, columns in by_group.items():
        metrics[f"AP{group}"] = mean_valid(precision_all[:, :, columns]) if columns else float("nan")
    order = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR", "ARs", "ARm", "ARl"]
    return to_percent({key: metrics[key] for key in order})
