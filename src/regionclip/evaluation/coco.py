"""COCO box AP, plus the open-vocabulary COCO split numbers (AP50 on novel / base / all categories)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from regionclip.evaluation._common import (
    GroundTruth,
    Result,
    check_max_dets,
    iou_index,
    load_ground_truth,
    mean_valid,
    normalize_results,
    run_bbox_eval,
    summary_metrics,
    to_percent,
)

# Spellings of the split field in OV-COCO jsons: OVR-CNN says seen/unseen, RegionCLIP's evaluator says target/base.
BASE_SPLIT_NAMES = frozenset({"base", "seen"})
NOVEL_SPLIT_NAMES = frozenset({"novel", "unseen", "target"})


def _resolve_split(
    gt: Mapping[str, Any], novel_ids: Sequence[int] | None, base_ids: Sequence[int] | None
) -> tuple[list[int], list[int]] | None:
    """Work out the (novel, base) category ids, or None when no split is known.

    Explicit ids win; with only one side given the other is every remaining GT category. Without ids, the GT
    categories' ``split`` field is used when present.
    """
    gt_ids = [int(cat["id"]) for cat in gt["categories"]]
    if novel_ids is None and base_ids is None:
        novel, base = [], []
        for cat in gt["categories"]:
            split = cat.get("split")
            if split is None:
                continue
            if str(split).lower() in NOVEL_SPLIT_NAMES:
                novel.append(int(cat["id"]))
            elif str(split).lower() in BASE_SPLIT_NAMES:
                base.append(int(cat["id"]))
            else:
                raise ValueError(
                    f"category {cat['id']} has split {split!r}; expected one of "
                    f"{sorted(BASE_SPLIT_NAMES | NOVEL_SPLIT_NAMES)}"
                )
        return (novel, base) if novel or base else None
    novel = [int(c) for c in novel_ids] if novel_ids is not None else None
    base = [int(c) for c in base_ids] if base_ids is not None else None
    for name, ids in (("novel_category_ids", novel), ("base_category_ids", base)):
        if ids is not None:
            unknown = sorted(set(ids) - set(gt_ids))
            if unknown:
                raise ValueError(f"{name} holds ids absent from the ground-truth categories: {unknown}")
    if novel is None:
        novel = [c for c in gt_ids if c not in set(base or [])]
    if base is None:
        base = [c for c in gt_ids if c not in set(novel)]
    overlap = sorted(set(novel) & set(base))
    if overlap:
        raise ValueError(f"categories cannot be both novel and base: {overlap}")
    return novel, base


def _split_ap50(evaluator: Any, category_ids: Sequence[int], max_dets: int) -> float:
    """Mean per-category AP50 (area all, ``max_dets``) over the given categories that have ground truth.

    Same number as detectron2/RegionCLIP's ``AP50_split_*``: they average every defined precision cell of
    those categories, and a category with GT has all of its 101 recall cells defined, so the two agree.
    """
    params = evaluator.params
    positions = {int(c): k for k, c in enumerate(params.catIds)}
    columns = [positions[c] for c in category_ids if c in positions]
    if not columns:
        return float("nan")
    area_all = list(params.areaRngLbl).index("all")
    m = list(params.maxDets).index(max_dets)
    cells = evaluator.eval["precision"][iou_index(evaluator, 0.5), :, :, area_all, m][:, columns]
    per_category = [mean_valid(cells[:, j]) for j in range(cells.shape[1])]
    defined = [ap for ap in per_category if not np.isnan(ap)]
    return float(np.mean(defined)) if defined else float("nan")


def evaluate_coco(
    gt: GroundTruth,
    results: Iterable[Result],
    *,
    novel_category_ids: Sequence[int] | None = None,
    base_category_ids: Sequence[int] | None = None,
    max_dets: int = 100,
) -> dict[str, float]:
    """COCO bbox evaluation through faster-coco-eval's ``COCOeval_faster``, in percent (0–100).

    Args:
        gt: COCO instances json (path or dict); it is not modified.
        results: COCO results list ``[{"image_id", "category_id" (original id), "bbox" [x,y,w,h], "score"}]``.
        novel_category_ids / base_category_ids: the OV-COCO split. With only one given, the other is every other
            GT category; with neither, a ``split`` field on the GT categories ("base"/"seen", "novel"/"unseen"/
            "target") is used if present.
        max_dets: detections kept per image *and category* (COCO semantics), 100 by default.

    Returns:
        ``AP, AP50, AP75, APs, APm, APl`` and ``AR1, AR10, AR`` (AR at ``max_dets``), ``ARs, ARm, ARl``; with a
        split also ``AP50_novel, AP50_base, AP50_all``: the mean per-category AP at IoU 0.5 (area all,
        ``max_dets``) over the split's categories that have GT, as RegionCLIP's ``AP50_split_{target,base,all}``
        (which it logs as fractions; here in percent like the MODEL_ZOO numbers). A metric with no GT to score
        (e.g. APl without large objects) is NaN, as in detectron2. An empty ``results`` warns and scores 0.

    Raises:
        ValueError: malformed detections, unknown image ids, or an invalid split.
    """
    max_dets = check_max_dets(max_dets)
    gt_data = load_ground_truth(gt)
    split = _resolve_split(gt_data, novel_category_ids, base_category_ids)
    detections = normalize_results(results, gt_data)
    if not detections:
        warnings.warn("no detections to evaluate: every AP/AR is 0", stacklevel=2)
    evaluator = run_bbox_eval(gt_data, detections, max_dets=sorted({1, 10, max_dets}), lvis_style=False)
    metrics = summary_metrics(evaluator, max_dets)
    recall, params = evaluator.eval["recall"], evaluator.params
    area_all = list(params.areaRngLbl).index("all")
    for limit in (1, 10):
        metrics[f"AR{limit}"] = mean_valid(recall[:, :, area_all, list(params.maxDets).index(limit)])
    if split is not None:
        novel, base = split
        metrics["AP50_novel"] = _split_ap50(evaluator, novel, max_dets)
        metrics["AP50_base"] = _split_ap50(evaluator, base, max_dets)
        metrics["AP50_all"] = _split_ap50(evaluator, [*novel, *base], max_dets)
    order = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl"]
    order += [key for key in ("AP50_novel", "AP50_base", "AP50_all") if key in metrics]
    return to_percent({key: metrics[key] for key in order})
